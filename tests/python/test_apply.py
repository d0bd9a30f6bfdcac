"""`lathe apply` on hand-written plans: expert surgery is exact against transformers (the pruned
checkpoint loads as the stock family and computes what the original computes with the removed
experts excluded from routing), RTN equals an independent implementation of ALGORITHMS.md §1.4 bit for
bit, a SIGKILL after any layer resumes to byte-identical output, and bad plans are refused."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from near_ties import before_near_ties, least_margins
from reference import LATHE_BIN, SOURCE_DIR, run_lathe, THREADS

MODELS = SOURCE_DIR / "data" / "models"
torch.set_num_threads(THREADS)

# kept experts per family: a quarter removed, every DeepSeek group keeping the same share (§4.4)
KEEP = {
    "mixtral": [0, 1, 2, 3, 5, 7],
    "qwen2_moe": None,
    "qwen3_moe": None,
    "qwen3_moe-fused": None,
    "olmoe": None,
    "deepseek_v3": [0, 2, 3, 4, 5, 7, 8, 9, 10, 13, 14, 15],
}


def expert_count(config):
    for key in ("num_local_experts", "num_experts", "n_routed_experts"):
        if key in config:
            return config[key]
    raise KeyError("no expert count")


def keep_for(name):
    config = json.loads((MODELS / name / "config.json").read_text())
    if KEEP[name] is not None:
        return KEEP[name]
    e = expert_count(config)
    return [i for i in range(e) if i % 4 != 1]


def write_plan(path, experts=None, tensors=None):
    plan = {"format": "lathe-plan", "version": 1, "pipeline": "test", "model": "m",
            "experts": experts or {}, "tensors": tensors or {}}
    Path(path).write_text(json.dumps(plan))
    return path


def apply(model, plan, out, *extra, check=True, env=None):
    args = [LATHE_BIN, "apply", model, "--plan", plan, "--out", out, *extra]
    proc = subprocess.run(list(map(str, args)), capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"lathe apply exited {proc.returncode}: {proc.stderr}")
    return proc


def load_hf(path):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


class mask_removed_experts:
    """Makes the original model never select the removed experts: −inf router logits for softmax
    routers (the routers compute them with F.linear(x, self.weight), patched while active), −inf
    selection bias for DeepSeek-V3's sigmoid router (its combine weights use the raw scores)."""

    def __init__(self, model, removed):
        self.removed = removed
        self.weights = set()
        for layer in model.model.layers:
            gate = getattr(layer.mlp, "gate", None)
            if gate is None or not hasattr(gate, "weight") or gate.weight.dim() != 2:
                continue
            if hasattr(gate, "e_score_correction_bias"):
                with torch.no_grad():
                    gate.e_score_correction_bias[removed] = float("-inf")
            else:
                self.weights.add(id(gate.weight))

    def __enter__(self):
        self.original = torch.nn.functional.linear
        original, weights, removed = self.original, self.weights, self.removed

        def linear(x, weight, bias=None):
            out = original(x, weight, bias)
            if id(weight) in weights:
                out = out.clone()
                out[..., removed] = float("-inf")
            return out
        torch.nn.functional.linear = linear
        return self

    def __exit__(self, *exc):
        torch.nn.functional.linear = self.original


@pytest.mark.parametrize("name", list(KEEP))
def test_drop_experts_is_exact_against_transformers(tmp_path, name):
    model_dir = MODELS / name
    if not model_dir.is_dir():
        pytest.skip(f"{model_dir} not built")
    config = json.loads((model_dir / "config.json").read_text())
    keep = keep_for(name)
    removed = [e for e in range(expert_count(config)) if e not in keep]
    ref = load_hf(model_dir)
    moe_layers = [i for i, layer in enumerate(ref.model.layers) if hasattr(layer.mlp, "experts")]
    plan = write_plan(tmp_path / "plan.json", experts={str(i): keep for i in moe_layers})
    out = tmp_path / "out"
    apply(model_dir, plan, out)
    new_config = json.loads((out / "model" / "config.json").read_text())
    assert expert_count(new_config) == len(keep)
    if "n_group" in config:
        assert new_config["n_group"] == config["n_group"]  # every group kept 3 of 4: groups stay
    expert_map = json.loads((out / "model" / "expert_map.json").read_text())
    assert expert_map["layers"][str(moe_layers[0])] == keep

    pruned = load_hf(out / "model")  # loads as the stock family
    ids = torch.randint(0, config["vocab_size"], (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        unmasked = ref(ids).logits
        with mask_removed_experts(ref, removed) as masked:
            assert masked.weights or hasattr(ref.model.layers[moe_layers[0]].mlp.gate, "e_score_correction_bias")
            expected, margins = least_margins([ref.model.layers[i].mlp.gate for i in moe_layers],
                                              lambda: ref(ids).logits, ids.shape)
        got = pruned(ids).logits
    assert (expected - unmasked).abs().max().item() > 1e-3  # the removed experts mattered
    assert torch.isfinite(got).all()
    # The pruned model computes with other matrix shapes (~1e-7 apart): a token whose top-k choice
    # in the masked original is within NEAR_TIE (near_ties.py) may route the other way there, and so
    # may change every later position. 1e-5 as before at the positions before any such token (all,
    # when there is none).
    keep = before_near_ties(margins, torch.ones_like(ids))
    print(f"{name}: least routing margin {margins.min().item():.2e}; compared {int(keep.sum())} of {ids.numel()}")
    assert keep.sum() >= ids.numel() // 2, "most positions follow a near-tie: change the token seed"
    diff = (got - expected).abs()[keep].max().item()
    assert diff <= 1e-5, f"max |Δlogit| {diff}"
    # lathe's own forward on the pruned checkpoint agrees too
    tokens = tmp_path / "ids.json"
    tokens.write_text(json.dumps({"ids": ids.tolist()}))
    run_lathe("forward", out / "model", "--tokens", tokens, "--out", tmp_path / "logits.bin")
    lathe_logits = torch.frombuffer(bytearray((tmp_path / "logits.bin").read_bytes()), dtype=torch.float32)
    assert (lathe_logits.view_as(got) - got).abs()[keep].max().item() < 1e-4  # the same positions


def round_scale(scale, dtype):
    """lathe's scale storage rule (docs/output.md): clamp to [2^-14, 65504], round to the model dtype
    when it is bf16 (else fp16), so GPTQ (fp16) and compressed-tensors (model dtype) store it exactly."""
    return scale.clamp(2.0 ** -14, 65504.0).to(torch.bfloat16 if dtype == torch.bfloat16 else torch.float16).float()


def reference_rtn(w, bits, group, sym, codes=False):
    """ALGORITHMS.md §1.4, written from the text: per row and group, range → scale/zero → codes."""
    dtype = w.dtype
    w = w.float()
    out_f, in_f = w.shape
    g = in_f if group == -1 else group
    x = w.reshape(-1, g)
    maxq = 2 ** bits - 1
    xmin = torch.clamp(x.min(1).values, max=0)
    xmax = torch.clamp(x.max(1).values, min=0)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = -xmax
    zero_range = (xmin == 0) & (xmax == 0)
    xmin[zero_range], xmax[zero_range] = -1.0, 1.0
    scale = round_scale((xmax - xmin) / maxq, dtype)
    if sym:
        zero = torch.full_like(scale, (maxq + 1) / 2)
    else:
        zero = torch.round(-xmin / scale)
        low = zero < 1
        zero = zero.clamp(1, maxq)
        scale = torch.where(low, torch.maximum(scale, round_scale(xmax / (maxq - 1), dtype)), scale)
    q = torch.clamp(torch.round(x / scale[:, None]) + zero[:, None], 0, maxq)
    if codes:
        return q.reshape(out_f, in_f).to(torch.uint8)
    return (scale[:, None] * (q - zero[:, None])).reshape(out_f, in_f)


@pytest.mark.parametrize("bits,group,sym", [(4, 32, True), (3, -1, False), (8, 64, False), (2, 16, True)])
def test_rtn_equals_an_independent_reference_bit_for_bit(tmp_path, bits, group, sym):
    model_dir = MODELS / "llama"
    if not model_dir.is_dir():
        pytest.skip("data/models/llama not built")
    names = ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight",
             "model.layers.3.mlp.gate_proj.weight"]
    plan = write_plan(tmp_path / "plan.json",
                      tensors={n: {"method": "rtn", "bits": bits, "group_size": group, "sym": sym} for n in names})
    out = tmp_path / "out"
    apply(model_dir, plan, out)
    original = {}
    for f in model_dir.glob("*.safetensors"):
        original.update(load_file(f))
    result = {}
    for f in (out / "model").glob("*.safetensors"):
        result.update(load_file(f))
    assert set(result) == set(original)
    for name, w in original.items():
        if name in names:
            expected = reference_rtn(w, bits, group, sym).to(w.dtype)
            assert torch.equal(result[name], expected), name
            assert not torch.equal(result[name], w)
        else:
            assert torch.equal(result[name], w), name  # untouched tensors are copied bit for bit
    # The sidecar holds the same codes, and its exact dequantization rounds to the shard's values.
    quant = {}
    for f in (out / "quant").glob("*.safetensors"):
        quant.update(load_file(f))
    for name in names:
        assert torch.equal(quant[name + ".codes"], reference_rtn(original[name], bits, group, sym, codes=True)), name
        assert quant[name + ".qparams"].tolist() == [bits, group, int(sym), 0]
    manifest = json.loads((out / "lathe_manifest.json").read_text())
    entry = manifest["tensors"][names[0]]
    assert entry["format"] == f"rtn-int{bits}-g{group}-{'sym' if sym else 'asym'}"
    w0 = original[names[0]].float()
    # fp64 sums like lathe's (the fp32 difference, squared and summed in fp64)
    rel = ((w0 - reference_rtn(original[names[0]], bits, group, sym)).double() ** 2).sum() / (w0.double() ** 2).sum()
    assert abs(entry["rel_err"] - rel.item()) <= 1e-6 * max(rel.item(), 1e-12) + 1e-12


def tree(path):
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(Path(path).rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kill_after", [0, 1, 2, 3])
def test_sigkill_after_any_layer_resumes_to_byte_identical_output(tmp_path, kill_after):
    model_dir = MODELS / "mixtral"
    if not model_dir.is_dir():
        pytest.skip("data/models/mixtral not built")
    tensors = {f"model.layers.{i}.self_attn.{p}_proj.weight": {"method": "rtn", "bits": 4, "group_size": 32, "sym": True}
               for i in range(4) for p in "qkvo"}
    plan = write_plan(tmp_path / "plan.json", experts={str(i): [0, 2, 3, 4, 6, 7] for i in range(4)}, tensors=tensors)
    reference = tmp_path / "reference"
    apply(model_dir, plan, reference)
    out = tmp_path / "out"
    env = dict(os.environ, LATHE_FAULT_KILL_AFTER_LAYER=str(kill_after))
    proc = apply(model_dir, plan, out, check=False, env=env)
    assert proc.returncode == -9, proc.stderr
    assert not out.exists()
    assert (tmp_path / "out.partial" / ".lathe" / "state.json").exists()
    proc = apply(model_dir, plan, out)
    assert f"{kill_after + 1} resumed" in proc.stderr, proc.stderr
    assert not (tmp_path / "out.partial").exists()
    assert tree(out) == tree(reference)


def test_a_partial_run_of_another_plan_is_refused_unless_fresh(tmp_path):
    model_dir = MODELS / "mixtral"
    if not model_dir.is_dir():
        pytest.skip("data/models/mixtral not built")
    plan_a = write_plan(tmp_path / "a.json", experts={str(i): [0, 1, 2, 3] for i in range(4)})
    plan_b = write_plan(tmp_path / "b.json", experts={str(i): [0, 1, 2, 4] for i in range(4)})
    out = tmp_path / "out"
    env = dict(os.environ, LATHE_FAULT_KILL_AFTER_LAYER="1")
    assert apply(model_dir, plan_a, out, check=False, env=env).returncode == -9
    proc = apply(model_dir, plan_b, out, check=False)
    assert proc.returncode == 3 and "the plan changed" in proc.stderr and "--fresh" in proc.stderr
    apply(model_dir, plan_b, out, "--fresh")
    assert json.loads((out / "model" / "expert_map.json").read_text())["layers"]["0"] == [0, 1, 2, 4]
    # an existing result is never overwritten without --force
    proc = apply(model_dir, plan_a, out, check=False)
    assert proc.returncode == 2 and "--force" in proc.stderr
    apply(model_dir, plan_a, out, "--force")
    assert json.loads((out / "model" / "expert_map.json").read_text())["layers"]["0"] == [0, 1, 2, 3]


Q = "model.layers.0.self_attn.q_proj.weight"


@pytest.mark.parametrize("plan,code,needle", [
    ({"format": "lathe-plan", "version": 1, "experts": {"0": [0, 9]}}, 3, "experts.0"),
    ({"format": "lathe-plan", "version": 1, "experts": {"0": [3]}}, 3, "top_k"),
    ({"format": "lathe-plan", "version": 1, "experts": {"0": [2, 1]}}, 3, "ascending"),
    ({"format": "lathe-plan", "version": 1, "expert": {}}, 3, "expert"),
    ({"format": "lathe-plan", "version": 2}, 4, "version"),
    ({"format": "lathe-plan", "version": 1, "tensors": {"model.layers.0.input_layernorm.weight":
                                                         {"method": "rtn", "bits": 4, "group_size": 32, "sym": True}}},
     3, "model.layers.0.input_layernorm.weight"),
    ({"format": "lathe-plan", "version": 1, "tensors": {"model.layers.0.self_attn.q_proj.weight":
                                                         {"method": "rtn", "bits": 4, "group_size": 48, "sym": True}}},
     3, "group_size"),
    ({"format": "lathe-plan", "version": 1, "tensors": {"model.layers.0.self_attn.q_proj.weight":
                                                         {"method": "rtn", "bits": 9}}}, 3, "bits"),
    # gptq entries: the method, act_order, damp and act_bits are checked before anything is written
    ({"format": "lathe-plan", "version": 1, "tensors": {"model.layers.0.self_attn.q_proj.weight":
                                                         {"method": "awq"}}}, 3, ".method"),
    ({"format": "lathe-plan", "version": 1, "tensors": {"model.layers.0.self_attn.q_proj.weight":
                                                         {"method": "gptq", "act_order": "desc"}}}, 3, ".act_order"),
    ({"format": "lathe-plan", "version": 1, "tensors": {"model.layers.0.self_attn.q_proj.weight":
                                                         {"method": "gptq", "damp": 2}}}, 3, ".damp"),
    ({"format": "lathe-plan", "version": 1, "tensors": {"model.layers.0.self_attn.q_proj.weight":
                                                         {"method": "gptq", "act_bits": 4}}}, 3, ".act_bits"),
    # sparsity entries (docs/plan.md): method, pattern, ratio, quantize, names and widths
    ({"format": "lathe-plan", "version": 1, "sparsity": {Q: {"method": "obs", "ratio": 0.5}}}, 3, ".method"),
    ({"format": "lathe-plan", "version": 1, "sparsity": {Q: {"method": "wanda", "pattern": "4:4"}}}, 3, ".pattern"),
    ({"format": "lathe-plan", "version": 1, "sparsity": {Q: {"method": "wanda", "ratio": 1.0}}}, 3, ".ratio"),
    ({"format": "lathe-plan", "version": 1, "sparsity": {Q: {"method": "wanda"}}}, 3, ".ratio"),
    ({"format": "lathe-plan", "version": 1, "sparsity": {Q: {"method": "wanda", "ratio": 0.5, "quantize": True}}},
     3, ".quantize"),
    ({"format": "lathe-plan", "version": 1, "sparsity": {Q: {"method": "sparsegpt", "ratio": 0.5, "quantize": True}}},
     3, "method \"gptq\""),
    ({"format": "lathe-plan", "version": 1, "sparsity": {Q: {"method": "wanda", "ratio": 0.5, "mask": 1}}}, 3, "mask"),
    ({"format": "lathe-plan", "version": 1, "sparsity": {Q: {"method": "magnitude", "pattern": "3:7"}}},
     3, "7 does not divide the input width 128"),
    ({"format": "lathe-plan", "version": 1, "sparsity": {"model.norm.weight": {"method": "wanda", "ratio": 0.5}}},
     3, "sparsity.model.norm.weight"),
])
def test_bad_plans_are_refused_and_nothing_is_written(tmp_path, plan, code, needle):
    model_dir = MODELS / "mixtral"
    if not model_dir.is_dir():
        pytest.skip("data/models/mixtral not built")
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    proc = apply(model_dir, path, tmp_path / "out", check=False)
    assert proc.returncode == code, proc.stderr
    assert needle in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_every_missing_input_of_apply_and_calibrate_is_named_at_once(tmp_path):
    """lathe apply / calibrate check the model, plan and --data files before anything runs, and
    name every missing one in one error (exit 2), writing nothing."""
    plan = tmp_path / "plan.json"
    proc = run_lathe("apply", tmp_path / "no-model", "--plan", plan, "--out", tmp_path / "out",
                     "--data", f"prose={tmp_path / 'a.txt'}", "--data", str(tmp_path / "b.jsonl"),
                     check=False)
    assert proc.returncode == 2, proc.stderr
    assert "4 unusable inputs" in proc.stderr, proc.stderr
    for line in (f"model: no such model directory or .gguf file: {tmp_path / 'no-model'}",
                 f"--plan: no such file: {plan}",
                 f"--data: no such file: {tmp_path / 'a.txt'}",
                 f"--data: no such file: {tmp_path / 'b.jsonl'}"):
        assert line in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
    # A model that exists: only the data file is named.
    proc = run_lathe("calibrate", MODELS / "llama", "--data", f"prose={tmp_path / 'a.txt'}",
                     "--out", tmp_path / "stats.h5", check=False)
    assert proc.returncode == 2, proc.stderr
    assert f"--data: no such file: {tmp_path / 'a.txt'}" in proc.stderr, proc.stderr
    assert "model:" not in proc.stderr and not (tmp_path / "stats.h5").exists()
