"""Gemma 3 text (gemma3_text) against transformers where it differs from the other families: the
sliding window's edge, the older config fields (rope_theta + rope_local_base_freq + rope_scaling,
sliding_window_pattern instead of layer_types), bf16 rounding (the embedding scale), bad configs
refused with the field named, and `lathe run` with rtn and gptq on the committed tiny gemma3. Its
logits in fp32 and a random variant's are in test_forward_parity.py, its statistics in
test_calibrate_parity.py, smoothing in test_smoothquant.py, golden vectors in test_verify.py."""
import json

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from reference import SOURCE_DIR, THREADS, recipe_text, run_lathe
from test_forward_parity import LENGTHS, TOLERANCE, batch_for, max_logit_error

torch.set_num_threads(THREADS)
GEMMA3 = SOURCE_DIR / "data" / "models" / "gemma3"
HELDOUT = SOURCE_DIR / "data" / "corpora" / "prose" / "heldout.txt"
SMALL = dict(vocab_size=300, hidden_size=48, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
             intermediate_size=40, max_position_embeddings=256, query_pre_attn_scalar=24)


def random_gemma3(directory, **fields):
    """A random Gemma 3 with O(1) logits saved to `directory` (fp32); returns the directory."""
    torch.manual_seed(2)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("gemma3_text", **{**SMALL, **fields}),
                                             dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            (p.uniform_(-0.5, 0.5) if p.dim() == 1 else p.normal_(0, 0.15))
    model.save_pretrained(directory)
    return directory


def require_gemma3():
    if not GEMMA3.exists():
        pytest.fail("committed tiny model gemma3 is missing")


def lathe_logits(model_dir, ids, tmp_path, dtype="f32"):
    """lathe forward of equal-length sequences: logits [B, T, V]."""
    (tmp_path / "tokens.json").write_text(json.dumps({"ids": ids}))
    meta = json.loads(run_lathe("forward", model_dir, "--tokens", tmp_path / "tokens.json", "--out",
                                tmp_path / "logits.bin", "--dtype", dtype).stdout)
    return torch.from_numpy(np.fromfile(tmp_path / "logits.bin", dtype=np.float32).reshape(meta["shape"]))


@pytest.mark.parametrize("layer_type", ["sliding_attention", "full_attention"])
def test_window_edge(tmp_path, layer_type):
    """One layer, window 8: the logits at query 15 depend on key 8 (15 − 8 < 8) and not on key 7, as
    transformers' sliding_window_overlay (kv > q − window) says; a full layer depends on both."""
    model_dir = random_gemma3(tmp_path / "m", num_hidden_layers=1, sliding_window=8, layer_types=[layer_type])
    base = torch.randint(0, 300, (20,), generator=torch.Generator().manual_seed(0))
    rows = [base.clone() for _ in range(3)]
    rows[1][7] = (rows[1][7] + 1) % 300  # the last key outside the window of query 15
    rows[2][8] = (rows[2][8] + 1) % 300  # the first key inside it
    ids = torch.stack(rows)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    got = lathe_logits(model_dir, ids.tolist(), tmp_path)
    assert (got - ref).abs().max().item() <= TOLERANCE
    for logits in (ref, got):
        outside = (logits[1, 15] - logits[0, 15]).abs().max().item()
        inside = (logits[2, 15] - logits[0, 15]).abs().max().item()
        assert inside > 1e-3, inside
        assert (outside == 0.0) == (layer_type == "sliding_attention"), outside


def test_older_config_fields(tmp_path):
    """A config.json in the form released Gemma 3 checkpoints use: rope_theta, rope_local_base_freq,
    rope_scaling (global layers only) and sliding_window_pattern; transformers derives the layer
    types and both RoPEs from them, and so must lathe."""
    model_dir = random_gemma3(tmp_path / "m", num_hidden_layers=4, sliding_window=20)
    config = json.loads((model_dir / "config.json").read_text())
    for key in ("layer_types", "rope_parameters", "_sliding_window_pattern"):
        config.pop(key, None)
    config.update(rope_theta=2e5, rope_local_base_freq=5e3, sliding_window_pattern=2,
                  rope_scaling={"rope_type": "linear", "factor": 2.0})
    (model_dir / "config.json").write_text(json.dumps(config))
    loaded = AutoConfig.from_pretrained(model_dir)
    assert loaded.layer_types == ["sliding_attention", "full_attention"] * 2
    assert loaded.rope_parameters["full_attention"]["rope_type"] == "linear"
    assert loaded.rope_parameters["sliding_attention"]["rope_theta"] == 5e3
    assert max_logit_error(model_dir, tmp_path) <= TOLERANCE


def test_bf16_rounds_like_transformers(tmp_path):
    """--dtype bf16 on the committed gemma3 against transformers in bf16 (the embedding scale
    sqrt(128) rounded to bf16, the norms' fp32 product rounded once): far closer than bf16's own
    distance from fp32."""
    require_gemma3()
    ids, batch, mask = batch_for(4096)
    ref = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = AutoModelForCausalLM.from_pretrained(GEMMA3, dtype=dtype).eval()
        with torch.no_grad():
            ref[dtype] = model(input_ids=batch, attention_mask=mask).logits.float()
    (tmp_path / "tokens.json").write_text(json.dumps({"ids": ids}))
    run_lathe("forward", GEMMA3, "--tokens", tmp_path / "tokens.json", "--out", tmp_path / "o.bin", "--dtype", "bf16")
    got = torch.from_numpy(np.fromfile(tmp_path / "o.bin", dtype=np.float32).reshape(ref[torch.float32].shape))

    def error(a, b):
        return max((a[i, :n] - b[i, :n]).abs().max().item() for i, n in enumerate(LENGTHS))

    bf16_noise = error(ref[torch.bfloat16], ref[torch.float32])
    assert bf16_noise > 1e-3  # the comparison below means something
    assert error(got, ref[torch.bfloat16]) <= 0.1 * bf16_noise


BAD_CONFIGS = {
    "layer_types": ({"layer_types": ["full_attention"]}, 2, "expected num_hidden_layers = 2"),
    "layer_types[1]": ({"layer_types": ["full_attention", "global"]}, 2, "global"),
    "sliding_window": ({"sliding_window": None}, 2, "required"),
    "final_logit_softcapping": ({"final_logit_softcapping": 30.0}, 4, "soft-capping"),
    "attn_logit_softcapping": ({"attn_logit_softcapping": 50.0}, 4, "soft-capping"),
}


@pytest.mark.parametrize("field", sorted(BAD_CONFIGS))
def test_bad_config_is_refused_naming_the_field(tmp_path, field):
    edit, code, message = BAD_CONFIGS[field]
    config = {"model_type": "gemma3_text", "num_hidden_layers": 2, "vocab_size": 64, "hidden_size": 32,
              "layer_types": ["sliding_attention", "full_attention"], **edit}
    (tmp_path / "config.json").write_text(json.dumps(config))
    proc = run_lathe("inspect", tmp_path, check=False)
    assert proc.returncode == code, proc.stderr
    assert field in proc.stderr and message in proc.stderr, proc.stderr


def test_rtn_and_gptq_runs(tmp_path):
    """`lathe run` with rtn and with gptq (3 bit, g32) on the tiny Gemma 3: the packed exports verify,
    the HF export loads in transformers with lathe's logits, and GPTQ ends closer to the original
    than RTN (KL on held-out prose)."""
    require_gemma3()
    kl = {}
    for name in ("rtn", "gptq"):
        out, recipe = tmp_path / name, tmp_path / f"{name}.yaml"
        recipe.write_text(recipe_text(GEMMA3, out, f"{name}: {{bits: 3, group-size: 32}}", samples=8, seq_len=128,
                                      export="[hf, gptq]"))
        run_lathe("run", recipe)
        assert "0 failed" in run_lathe("verify", out).stdout
        run_lathe("eval", out, "--reference", GEMMA3, "--text", HELDOUT, "--seq-len", 128, "--json", tmp_path / "e.json")
        kl[name] = json.loads((tmp_path / "e.json").read_text())["divergence"][HELDOUT.name]["kl"]
        assert max_logit_error(out / "hf", tmp_path) <= TOLERANCE
    print(f"\ngemma3 3-bit g32 KL to the original: rtn {kl['rtn']:.4f}, gptq {kl['gptq']:.4f} nats/token")
    assert 0 < kl["gptq"] < kl["rtn"], kl

