"""The `hf` export (docs/export.md "hf"; FORMATS.md §6): OUT/hf is a checkpoint stock transformers
loads, and models pruned to different expert counts per layer are padded or refused.

- Uniform expert pruning (experts-frequency keep 0.5): OUT/hf holds OUT/model's tensors bit for bit
  (per-expert names), and transformers' fp32 logits of OUT/hf equal `lathe forward OUT` within 1e-4.
- DeepSeek-V3 pruned in global mode (different counts per layer), exported with pad-experts: dummy
  experts with zero weights, zero router rows and correction bias -1e4; transformers' logits of the
  padded OUT/hf equal lathe's of the unpadded OUT within 1e-4, the dummies are never selected, and
  `lathe eval OUT/hf` gives `lathe eval OUT`'s perplexity.
- Refusals (exit 2, nothing written): softmax routers with different counts name `mode: uniform`;
  DeepSeek without pad-experts names pad-experts; the GPTQ export obeys the same rule.
- A 4-bit RTN model's OUT/hf equals OUT/model and loads in transformers with `lathe forward`'s
  logits; a padded GPTQ export of the non-uniform DeepSeek evaluates like OUT and verifies."""
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from reference import LATHE_BIN, SOURCE_DIR, recipe_text, THREADS

MODELS = SOURCE_DIR / "data" / "models"
CORPORA = SOURCE_DIR / "data" / "corpora"
HELDOUT = CORPORA / "code" / "heldout.txt"
LENGTHS = [64, 97, 80, 71]
TOLERANCE = 1e-4
CONFIG_ERROR = 2  # compressor/common/errors.h: config errors exit 2
COUNT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")
torch.set_num_threads(THREADS)

pytestmark = pytest.mark.skipif(not (MODELS / "deepseek_v3").is_dir(), reason="data/models not built")


def lathe(*args):
    return subprocess.run([LATHE_BIN, *map(str, args)], capture_output=True, text=True)


def ok(*args):
    proc = lathe(*args)
    assert proc.returncode == 0, proc.stderr
    return proc


def run_recipe(tmp_path, model, passes, export=None):
    """`lathe run` of a recipe with calibration, `passes` (YAML list items) and an export line."""
    out = tmp_path / "out"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(recipe_text(MODELS / model, out, passes, export=export))
    return recipe, out


def token_batch(vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = [torch.randint(0, vocab, (n,), generator=g).tolist() for n in LENGTHS]
    batch = torch.zeros(len(LENGTHS), max(LENGTHS), dtype=torch.long)
    mask = torch.zeros_like(batch)
    for i, row in enumerate(ids):
        batch[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, batch, mask


def lathe_logits(path, ids, tmp_path, shape):
    tokens, out = tmp_path / "tokens.json", tmp_path / "logits.bin"
    tokens.write_text(json.dumps({"ids": ids}))
    ok("forward", path, "--tokens", tokens, "--out", out)
    return torch.from_numpy(np.fromfile(out, dtype=np.float32).reshape(shape))


def max_error(a, b):
    return max((a[i, :n] - b[i, :n]).abs().max().item() for i, n in enumerate(LENGTHS))


def transformers_vs_lathe(hf_dir, lathe_path, tmp_path, hook=None):
    """(max |Δlogit| between transformers' fp32 forward of hf_dir and `lathe forward lathe_path`,
    the transformers model)."""
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    ids, batch, mask = token_batch(model.config.vocab_size)
    handles = hook(model) if hook else []
    with torch.no_grad():
        ref = model(input_ids=batch, attention_mask=mask).logits
    for h in handles:
        h.remove()
    assert ref[0, : LENGTHS[0]].std() > 0.3, "reference logits too flat for the tolerance to mean anything"
    got = lathe_logits(lathe_path, ids, tmp_path, ref.shape)
    return max_error(got, ref), model


def load_dir(path):
    index = json.loads((path / "model.safetensors.index.json").read_text())
    tensors = {}
    for shard in sorted(set(index["weight_map"].values())):
        tensors.update(load_file(str(path / shard)))
    return tensors


def perplexity(path, tmp_path):
    report = tmp_path / "eval.json"
    ok("eval", path, "--text", HELDOUT, "--seq-len", "64", "--json", report)
    return json.loads(report.read_text())["perplexity"]["heldout.txt"]


# ---- uniform counts -----------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", ["mixtral", "qwen2_moe", "olmoe", "deepseek_v3", "qwen3_moe-fused"])
def test_uniform_pruned_hf_export_loads_in_transformers(model_name, tmp_path):
    recipe, out = run_recipe(tmp_path, model_name, ["experts-frequency: {keep: 0.5}"], "[hf]")
    ok("run", recipe)
    hf = out / "hf"
    assert hf.is_dir() and not Path(str(hf) + ".partial").exists()
    config = json.loads((hf / "config.json").read_text())
    source = json.loads((MODELS / model_name / "config.json").read_text())
    key = next(k for k in COUNT_KEYS if k in source)
    assert config[key] == source[key] // 2 and "num_experts_per_layer" not in config
    assert config == json.loads((out / "model" / "config.json").read_text())
    assert (hf / "expert_map.json").read_text() == (out / "model" / "expert_map.json").read_text()
    assert (hf / "tokenizer.json").read_bytes() == (out / "model" / "tokenizer.json").read_bytes()
    with safe_open(str(next(hf.glob("model-00001-of-*.safetensors"))), "pt") as f:
        assert f.metadata()["format"] == "pt" and "experts-frequency" in f.metadata()["lathe.pipeline"]
    exported, stored = load_dir(hf), load_dir(out / "model")
    if model_name.endswith("-fused"):  # OUT/model keeps the fused layout; OUT/hf is per-expert
        assert not any(n.endswith("gate_up_proj") for n in exported)
        assert any(n.endswith("gate_up_proj") for n in stored)
    else:
        assert exported.keys() == stored.keys()
        for name, value in stored.items():
            assert torch.equal(exported[name], value), name
    err, model = transformers_vs_lathe(hf, out, tmp_path)
    print(f"{model_name}: max |Δlogit| transformers(OUT/hf) vs lathe(OUT) = {err:.3g}")
    assert err <= TOLERANCE


# ---- non-uniform counts: DeepSeek-V3 padded -----------------------------------------------------

GLOBAL_PASS = "experts-frequency: {keep: 0.5, mode: global}"


@pytest.fixture(scope="module")
def deepseek_global(tmp_path_factory):
    """DeepSeek-V3 pruned in global mode (counts differ per layer), no export."""
    base = tmp_path_factory.mktemp("deepseek_global")
    recipe, out = run_recipe(base, "deepseek_v3", [GLOBAL_PASS])
    ok("run", recipe)
    counts = [c for c in json.loads((out / "model" / "config.json").read_text())["num_experts_per_layer"] if c]
    assert len(set(counts)) > 1, f"global pruning kept uniform counts {counts}: the test needs different ones"
    return out


def router_selection_hook(selected):
    """Records, per MoE layer, every expert id transformers' router selects."""
    def install(model):
        handles = []
        for i, layer in enumerate(model.model.layers):
            gate = getattr(layer.mlp, "gate", None)
            if gate is None or not hasattr(gate, "e_score_correction_bias"):
                continue

            def fn(module, args, output, i=i):
                selected.setdefault(i, set()).update(output[2].reshape(-1).tolist())
            handles.append(gate.register_forward_hook(fn))
        return handles
    return install


def test_padded_deepseek_loads_in_transformers_and_never_selects_dummies(deepseek_global, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(deepseek_global, out)
    proc = ok("export", out, "--format", "hf", "--pad-experts")
    assert "padded" in proc.stderr
    model_config = json.loads((out / "model" / "config.json").read_text())
    counts = model_config["num_experts_per_layer"]
    most = max(counts)
    hf = out / "hf"
    config = json.loads((hf / "config.json").read_text())
    assert config["n_routed_experts"] == most and "num_experts_per_layer" not in config
    assert config["n_group"] == 1 and config["topk_group"] == 1
    expert_map = json.loads((hf / "expert_map.json").read_text())
    want_padding = {str(i): most - c for i, c in enumerate(counts) if c and c < most}
    assert want_padding and expert_map["padding"] == want_padding
    assert expert_map["layers"] == json.loads((out / "model" / "expert_map.json").read_text())["layers"]
    tensors = load_dir(hf)
    stored = load_dir(out / "model")
    for layer, n in want_padding.items():
        real = counts[int(layer)]
        prefix = f"model.layers.{layer}.mlp."
        bias = tensors[prefix + "gate.e_score_correction_bias"]
        assert bias.shape == (most,) and torch.all(bias[real:] == -1e4)
        assert torch.equal(bias[:real], stored[prefix + "gate.e_score_correction_bias"])
        router = tensors[prefix + "gate.weight"]
        assert router.shape[0] == most and torch.all(router[real:] == 0)
        for e in range(real, most):
            for proj in ("gate_proj", "up_proj", "down_proj"):
                w = tensors[f"{prefix}experts.{e}.{proj}.weight"]
                assert w.dtype == stored[f"{prefix}experts.0.{proj}.weight"].dtype and torch.all(w == 0)
        assert f"{prefix}experts.{most}.gate_proj.weight" not in tensors
    selected = {}
    err, _ = transformers_vs_lathe(hf, out, tmp_path, hook=router_selection_hook(selected))
    print(f"deepseek_v3 padded: max |Δlogit| transformers(OUT/hf) vs lathe(OUT, unpadded) = {err:.3g}")
    assert err <= TOLERANCE
    assert sorted(selected) == [i for i, c in enumerate(counts) if c]
    for i, ids in selected.items():
        assert max(ids) < counts[i], f"layer {i} selected a dummy expert"
    # lathe reads the padded checkpoint too, with the same numbers
    ids, _, _ = token_batch(config["vocab_size"])
    shape = (len(LENGTHS), max(LENGTHS), -1)
    padded, unpadded = lathe_logits(hf, ids, tmp_path, shape), lathe_logits(out, ids, tmp_path, shape)
    assert max_error(padded, unpadded) <= 1e-5
    assert abs(perplexity(hf, tmp_path) / perplexity(out, tmp_path) - 1) < 1e-6
    # lathe verify refuses an hf export clearly: nothing is packed
    proc = lathe("verify", hf)
    assert proc.returncode == CONFIG_ERROR and "nothing packed to verify" in proc.stderr


def test_recipe_pad_experts_runs_and_is_in_the_pipeline_string(tmp_path):
    recipe, out = run_recipe(tmp_path, "deepseek_v3", [GLOBAL_PASS], "{formats: [hf], pad-experts: true}")
    ok("run", recipe)
    manifest = json.loads((out / "lathe_manifest.json").read_text())
    assert manifest["pipeline"].endswith(",export{formats=hf,pad-experts=true}")
    config = json.loads((out / "hf" / "config.json").read_text())
    assert config["n_routed_experts"] == max(json.loads((out / "model" / "config.json").read_text())
                                             ["num_experts_per_layer"])
    assert json.loads((out / "hf" / "expert_map.json").read_text())["padding"]


# ---- refusals -----------------------------------------------------------------------------------


def assert_refused(proc, out, needles):
    assert proc.returncode == CONFIG_ERROR, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)
    for name in ("hf", "gptq", "ct"):
        assert not (out / name).exists() and not (out / (name + ".partial")).exists()


@pytest.mark.parametrize("model_name", ["mixtral", "olmoe"])
def test_softmax_router_with_different_counts_is_refused(model_name, tmp_path):
    recipe, out = run_recipe(tmp_path, model_name, [GLOBAL_PASS])
    ok("run", recipe)
    counts = [c for c in json.loads((out / "model" / "config.json").read_text())["num_experts_per_layer"] if c]
    assert len(set(counts)) > 1
    for pad in ([], ["--pad-experts"]):
        proc = lathe("export", out, "--format", "hf", *pad)
        assert_refused(proc, out, ["the hf export", "mode: uniform", "pad-experts", "no selection bias"])
    # `lathe run` refuses after decide, before apply: no output directory appears
    again = tmp_path / "again"
    again.mkdir()
    recipe2, out2 = run_recipe(again, model_name, [GLOBAL_PASS], "[hf]")
    proc = lathe("run", recipe2)
    assert proc.returncode == CONFIG_ERROR and "mode: uniform" in proc.stderr
    assert not out2.exists()


def test_deepseek_without_pad_experts_is_refused(deepseek_global, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(deepseek_global, out)
    proc = lathe("export", out, "--format", "hf")
    assert_refused(proc, out, ["the hf export", "pad-experts", "mode: uniform"])
    assert "no selection bias" not in proc.stderr


# ---- quantized models ---------------------------------------------------------------------------


def test_hf_export_of_a_4bit_model_is_out_model_and_loads_in_transformers(tmp_path):
    recipe, out = run_recipe(tmp_path, "qwen2_moe",
                             ["experts-frequency: {keep: 0.5}", "rtn: {bits: 4, group-size: 32}"], "[hf, gptq]")
    ok("run", recipe)
    exported, stored = load_dir(out / "hf"), load_dir(out / "model")
    assert exported.keys() == stored.keys()
    for name, value in stored.items():
        assert torch.equal(exported[name], value), name
    assert not (out / "hf" / "verify").exists() and (out / "gptq" / "verify").is_dir()
    err, _ = transformers_vs_lathe(out / "hf", out / "hf", tmp_path)
    print(f"qwen2_moe rtn4: max |Δlogit| transformers(OUT/hf) vs lathe(OUT/hf) = {err:.3g}")
    assert err <= TOLERANCE
    exact, _ = transformers_vs_lathe(out / "hf", out, tmp_path)
    print(f"qwen2_moe rtn4: max |Δlogit| transformers(OUT/hf) vs lathe(OUT, exact dequantized) = {exact:.3g}")
    assert exact > err  # OUT/hf holds the bf16-rounded values, OUT the exact ones


@pytest.fixture(scope="module")
def deepseek_global_rtn(tmp_path_factory):
    base = tmp_path_factory.mktemp("deepseek_global_rtn")
    recipe, out = run_recipe(base, "deepseek_v3", [GLOBAL_PASS, "rtn: {bits: 4, group-size: 32}"])
    ok("run", recipe)
    return out


@pytest.mark.parametrize("fmt,sub", [("gptq", "gptq"), ("compressed-tensors", "ct")])
def test_padded_packed_export_of_non_uniform_deepseek(deepseek_global_rtn, fmt, sub, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(deepseek_global_rtn, out)
    assert_refused(lathe("export", out, "--format", fmt), out, [f"the {fmt} export", "pad-experts", "mode: uniform"])
    ok("export", out, "--format", fmt, "--pad-experts")
    counts = json.loads((out / "model" / "config.json").read_text())["num_experts_per_layer"]
    config = json.loads((out / sub / "config.json").read_text())
    assert config["n_routed_experts"] == max(counts) and "num_experts_per_layer" not in config
    assert "quantization_config" in config
    # the dummies are packed like their layer's real experts (vLLM: one setting per fused MoE layer)
    layer = next(i for i, c in enumerate(counts) if c and c < max(counts))
    tensors = load_dir(out / sub)
    packed_name = "qweight" if fmt == "gptq" else "weight_packed"
    assert f"model.layers.{layer}.mlp.experts.{max(counts) - 1}.down_proj.{packed_name}" in tensors
    ids, _, _ = token_batch(config["vocab_size"])
    shape = (len(LENGTHS), max(LENGTHS), -1)
    packed, exact = lathe_logits(out / sub, ids, tmp_path, shape), lathe_logits(out, ids, tmp_path, shape)
    err = max_error(packed, exact)
    print(f"deepseek_v3 rtn4 padded {fmt}: max |Δlogit| lathe(OUT/{sub}) vs lathe(OUT) = {err:.3g}")
    assert err <= 1e-5
    assert abs(perplexity(out / sub, tmp_path) / perplexity(out, tmp_path) - 1) < 1e-6
    ok("verify", out / sub)
