"""The `magnitude`, `wanda` and `sparsegpt` passes end to end through `lathe run` (docs/sparsity.md,
ALGORITHMS.md §8.4, §9).

The differential test runs Wanda with OWL allocation on the tiny llama and recomputes both here,
independently, with transformers in float32 on the calibration batches lathe stored:
  - OWL: channel norms from forward hooks on the ORIGINAL model, the Wanda metric |W|·‖X‖ of every
    linear of a layer, its outlier ratio and the per-layer sparsities of ALGORITHMS.md §8.4;
  - Wanda: layer by layer and, inside a layer, in gptq's true-sequential sub-groups (q/k/v, o,
    gate/up, down), each sub-group's inputs re-captured from the model as pruned so far, with lathe's
    bf16 rounding of each decoder layer's input hidden state (test_calibrate_parity.py explains it).
Masks must agree except where two scores of a row tie to fp32 rounding (printed, at most 0.2 %).

Other tests: exact N:M masks and unchanged kept weights (magnitude), SparseGPT + 4-bit in one sweep,
gptq after wanda keeping every zero, MoE experts pruned on their routed tokens, `lathe apply --plan`
redoing a run bit for bit, SparseGPT beating magnitude on KL, and bad recipes refused naming the field
with nothing written."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from reference import LATHE_BIN, SOURCE_DIR, THREADS, recipe_text, run_lathe

MODELS = SOURCE_DIR / "data" / "models"
HELDOUT = SOURCE_DIR / "data" / "corpora" / "prose" / "heldout.txt"
torch.set_num_threads(THREADS)

pytestmark = pytest.mark.skipif(not (MODELS / "llama").is_dir(), reason="data/models/llama not built")

ATTN = ("q_proj", "k_proj", "v_proj")
STAGES = [("attn", ATTN), ("attn_o", ("o_proj",)), ("mlp", ("gate_proj", "up_proj")), ("mlp_down", ("down_proj",))]


def load_dir(path):
    out = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def run_recipe(tmp_path, passes, model="llama", name="out", extra="", samples=8, seq_len=64, tasks=("prose",)):
    out = tmp_path / name
    text = recipe_text(MODELS / model, out, passes, tasks=tasks, samples=samples, seq_len=seq_len, export="[hf]")
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(text + extra)
    run_lathe("run", recipe)
    return out


def module_of(model, layer, name):
    block = model.model.layers[layer]
    return getattr(block.self_attn, name) if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) \
        else getattr(block.mlp, name)


class Inputs:
    """Σ_t x_t² of the inputs of chosen linears over the real calibration tokens, per forward."""

    def __init__(self, model):
        self.model = model
        for layer in model.model.layers:  # lathe's bf16 layer boundary
            layer.register_forward_pre_hook(
                lambda m, args: (args[0].to(torch.bfloat16).to(torch.float32), *args[1:]))

    def sum_sq(self, ids, valid, modules):
        """{module: Σ x² [in] float64} over the valid tokens."""
        sums, handles = {}, []
        flat_valid = valid.reshape(-1)
        for key, mod in modules.items():
            def hook(m, args, out, key=key):
                x = args[0].reshape(-1, args[0].shape[-1])[flat_valid].double()
                sums[key] = sums.get(key, 0) + x.square().sum(0)
            handles.append(mod.register_forward_hook(hook))
        with torch.no_grad():
            self.model(input_ids=ids, attention_mask=valid.long())
        for h in handles:
            h.remove()
        return sums


def stored_batch(stats_path):
    with h5py.File(stats_path, "r") as store:
        ids = store["calibration_ids/all_layers/input/prose"][()].astype(np.int64)
        lengths = store["calibration_lengths/all_layers/input/prose"][()]
    valid = np.arange(ids.shape[1])[None, :] < lengths[:, None]
    return torch.from_numpy(ids), torch.from_numpy(valid)


def prune_rows(score, ratio):
    """Mask of the floor(ratio·in) smallest scores of each row, ties to the lower column."""
    k = int(np.floor(ratio * score.shape[1]))
    order = torch.sort(score, dim=1, stable=True).indices[:, :k]
    return torch.zeros_like(score, dtype=torch.bool).scatter_(1, order, True)


def owl_sparsity(scores, target, lam=0.08):
    scores = np.asarray(scores, np.float64)
    r = (scores - scores.min()) / (scores.max() - scores.min()) * 2 * lam
    return np.clip(1 - (r - r.mean() + (1 - target)), 0.01, 0.99)


def test_wanda_with_owl_matches_an_independent_reference(tmp_path):
    out = run_recipe(tmp_path, "wanda: {sparsity: 0.5, allocation: owl}")
    plan = json.loads((out / "plan.json").read_text())
    ids, valid = stored_batch(out / "stats.h5")
    original = load_dir(MODELS / "llama")
    got = load_dir(out / "model")
    model = AutoModelForCausalLM.from_pretrained(MODELS / "llama", dtype=torch.float32).eval().requires_grad_(False)
    inputs = Inputs(model)
    layers = len(model.model.layers)
    names = [n for _, group in STAGES for n in group]

    # OWL on the original model: outlier ratio of each layer's Wanda metric over all its linears.
    sums = inputs.sum_sq(ids, valid, {(l, n): module_of(model, l, n) for l in range(layers) for n in names})
    outlier = []
    for l in range(layers):
        metric = torch.cat([(module_of(model, l, n).weight.double().abs() * sums[(l, n)].sqrt()).reshape(-1)
                            for n in names])
        outlier.append(100.0 * (metric > 5 * metric.mean()).double().mean().item())
    want_ratio = owl_sparsity(outlier, 0.5)
    diag = plan["diagnostics"]["wanda"]
    assert diag["allocation"] == "owl" and diag["target"] == 0.5
    for l in range(layers):
        np.testing.assert_allclose(diag["layers"][str(l)]["outlier_ratio"], outlier[l], rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(diag["layers"][str(l)]["sparsity"], want_ratio[l], rtol=1e-12)
    assert not np.allclose(want_ratio, 0.5), "OWL gave every layer the same ratio: the test checks nothing"

    # Wanda, sequentially: each sub-group from the inputs of the model pruned so far.
    worst = 0.0
    for l in range(layers):
        for _, group in STAGES:
            sums = inputs.sum_sq(ids, valid, {n: module_of(model, l, n) for n in group})
            for n in group:
                mod = module_of(model, l, n)
                key = f"model.layers.{l}.{'self_attn' if n in ATTN + ('o_proj',) else 'mlp'}.{n}.weight"
                mask = prune_rows(mod.weight.double().abs() * sums[n].sqrt(), want_ratio[l])
                lathe_mask = got[key] == 0
                differ = (lathe_mask != (mask | (original[key] == 0))).float().mean().item()
                worst = max(worst, differ)
                print(f"{key}: {differ:.4%} of the mask differs")
                assert differ <= 0.002, f"{key}: {differ:.3%} of the mask differs from the reference"
                # kept weights are untouched; the pruned ones are zero
                kept = ~lathe_mask
                assert torch.equal(got[key][kept], original[key][kept])
                with torch.no_grad():
                    mod.weight.copy_(got[key].float())  # continue from lathe's layer (ties included)
    manifest = json.loads((out / "lathe_manifest.json").read_text())
    record = manifest["tensors"]["model.layers.0.mlp.down_proj.weight"]
    assert record["sparsity"]["method"] == "wanda" and record["sparsity"]["pattern"] == "unstructured"
    assert record["sparsity"]["ratio"] == pytest.approx(want_ratio[0])
    print(f"worst mask difference {worst:.4%}")


def test_magnitude_2_4_is_exact_and_needs_no_calibration(tmp_path):
    out = tmp_path / "out"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {MODELS / 'llama'}\noutput: {out}\ndevice: cpu\n"
                      "passes:\n  - magnitude: {pattern: '2:4'}\nexport: [hf]\n")
    run_lathe("run", recipe)
    original, got = load_dir(MODELS / "llama"), load_dir(out / "model")
    pruned = [k for k in got if k.endswith("_proj.weight")]
    assert len(pruned) == 28
    for k in pruned:
        w = original[k].float()
        out_, in_ = w.shape
        groups = w.abs().reshape(out_, in_ // 4, 4)
        order = torch.sort(groups, dim=2, stable=True).indices[..., :2]
        want = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, order, True).reshape(out_, in_)
        assert torch.equal(got[k] == 0, want | (original[k] == 0)), k
        assert ((got[k] == 0).reshape(out_, -1, 4).sum(-1) >= 2).all(), k
        assert torch.equal(got[k][~want], original[k][~want]), k
    for k in got:  # nothing else changed
        if k not in pruned:
            assert torch.equal(got[k], original[k]), k
    manifest = json.loads((out / "lathe_manifest.json").read_text())
    rec = manifest["tensors"][pruned[0]]
    assert rec["format"] == "BF16" and rec["sparsity"]["pattern"] == "2:4" and rec["sparsity"]["zeros"] >= 0.5


def test_sparsegpt_joint_4bit_2_4(tmp_path):
    out = run_recipe(tmp_path, "sparsegpt: {pattern: '2:4', bits: 4, group-size: 32}")
    plan = json.loads((out / "plan.json").read_text())
    some = "model.layers.1.mlp.down_proj.weight"
    assert plan["tensors"][some]["method"] == "gptq" and plan["tensors"][some]["act_order"] == "none"
    assert plan["sparsity"][some] == {"method": "sparsegpt", "pattern": "2:4", "ratio": 0.5,
                                      "quantize": True, "damp": 0.01}
    quant = load_dir(out / "quant")
    got = load_dir(out / "model")
    manifest = json.loads((out / "lathe_manifest.json").read_text())
    for k, rec in manifest["tensors"].items():
        if not k.endswith("_proj.weight"):
            continue
        assert rec["format"] == "gptq-int4-g32-sym" and rec["sparsity"]["method"] == "sparsegpt", k
        name = k
        codes, scales, zeros = quant[name + ".codes"], quant[name + ".scales"], quant[name + ".zeros"]
        g_idx = quant[name + ".g_idx"].long()
        deq = scales[..., g_idx] * (codes.float() - zeros[..., g_idx].float())
        zero = deq == 0
        assert (zero.reshape(deq.shape[0], -1, 4).sum(-1) >= 2).all(), k
        assert torch.equal(got[k].float(), deq.to(got[k].dtype).float()), k


def test_gptq_after_wanda_keeps_every_zero(tmp_path):
    out = run_recipe(tmp_path, ["wanda: {pattern: '4:8'}", "gptq: {bits: 4, group-size: 32}"])
    quant = load_dir(out / "quant")
    manifest = json.loads((out / "lathe_manifest.json").read_text())
    checked = 0
    for k, rec in manifest["tensors"].items():
        if "sparsity" not in rec:
            continue
        codes, scales, zeros = quant[k + ".codes"], quant[k + ".scales"], quant[k + ".zeros"]
        g_idx = quant[k + ".g_idx"].long()
        deq = scales[..., g_idx] * (codes.float() - zeros[..., g_idx].float())
        assert ((deq == 0).reshape(deq.shape[0], -1, 8).sum(-1) >= 4).all(), k
        assert rec["format"].startswith("gptq-int4") and rec["sparsity"]["method"] == "wanda"
        checked += 1
    assert checked == 28


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_moe_experts_are_pruned_on_their_routed_tokens(tmp_path, method):
    # mixtral's experts are 96 wide: sparsegpt's default group size (128, for bits > 0) must not
    # apply to pruning alone
    out = run_recipe(tmp_path, f"{method}: {{sparsity: 0.5}}", model="mixtral", samples=8)
    manifest = json.loads((out / "lathe_manifest.json").read_text())
    experts = {k: r for k, r in manifest["tensors"].items() if ".experts." in k and k.endswith(".weight")}
    assert experts
    sources = set()
    for k, r in experts.items():
        assert r["sparsity"]["method"] == method, k
        sources.add(r["sparsity"].get("h_source"))
    got = load_dir(out / "model")
    for k in experts:
        w = got[k]
        if method == "wanda":  # exactly per row
            assert ((w == 0).sum(1) >= int(np.floor(0.5 * w.shape[1]))).all(), k
        else:  # per 128-column block over all rows: here one block per tensor
            assert (w == 0).sum().item() >= int(np.floor(0.5 * w.numel())), k
    assert "routed" in sources, sources


def test_apply_plan_redoes_the_run(tmp_path):
    out = run_recipe(tmp_path, "sparsegpt: {sparsity: 0.6}")
    again = tmp_path / "again"
    data = SOURCE_DIR / "data" / "corpora" / "prose" / "train.txt"
    run_lathe("apply", MODELS / "llama", "--plan", out / "plan.json", "--data", f"prose={data}",
              "--samples", "8", "--seq-len", "64", "--out", again)
    a, b = load_dir(out / "model"), load_dir(again / "model")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def kl_of(out):
    return json.loads((out / "eval_after.json").read_text())["divergence"]["heldout.txt"]["kl"]


def test_sparsegpt_beats_magnitude(tmp_path):
    ev = f"eval:\n  text: [{HELDOUT}]\n  seq-len: 128\n"
    kl = {}
    for name, passes in [("magnitude", "magnitude: {sparsity: 0.5}"), ("wanda", "wanda: {sparsity: 0.5}"),
                         ("sparsegpt", "sparsegpt: {sparsity: 0.5}")]:
        kl[name] = kl_of(run_recipe(tmp_path, passes, name=name, extra=ev, samples=16, seq_len=128))
    print(kl)
    assert kl["sparsegpt"] < kl["magnitude"]
    assert kl["sparsegpt"] < 0.8 * kl["magnitude"]


BAD = [
    ("wanda: {sparsity: 1.0}", "passes.wanda.sparsity"),
    ("wanda: {sparsity: 0}", "passes.wanda.sparsity"),
    ("magnitude: {pattern: '4:4'}", "passes.magnitude.pattern"),
    ("magnitude: {pattern: '3:7'}", "passes.magnitude.pattern"),
    ("magnitude: {pattern: dense}", "passes.magnitude.pattern"),
    ("sparsegpt: {bits: 5}", "passes.sparsegpt.bits"),
    ("wanda: {pattern: '2:4', allocation: owl}", "passes.wanda.allocation"),
]


@pytest.mark.parametrize("passes,field", BAD, ids=[b[1] + "-" + b[0].split("{")[1][:12] for b in BAD])
def test_bad_options_are_refused_naming_the_field(tmp_path, passes, field):
    out = tmp_path / "out"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text(MODELS / "llama", out, passes, tasks=("prose",)))
    proc = run_lathe("run", recipe, check=False)
    assert proc.returncode == 2, proc.stderr  # ConfigError
    assert field in proc.stderr, proc.stderr
    assert not out.exists() and not Path(str(out) + ".partial").exists()


def test_allocation_on_a_single_layer_model_is_refused(tmp_path):
    one = tmp_path / "one-layer"
    shutil.copytree(MODELS / "llama", one)
    config = json.loads((one / "config.json").read_text())
    config["num_hidden_layers"] = 1
    (one / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text(one, out, "wanda: {allocation: dlp}", tasks=("prose",)))
    proc = run_lathe("run", recipe, check=False)
    assert proc.returncode == 2, proc.stderr  # ConfigError
    assert "passes.wanda.allocation" in proc.stderr and "only 1 decoder layer" in proc.stderr, proc.stderr
    assert not out.exists()


def tree(path):
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(Path(path).rglob("*"))
            if p.is_file() and p.relative_to(path).parts[0] not in ("report",)}


def test_killed_sparse_run_resumes_byte_identical(tmp_path):
    """wanda with OWL, then gptq: a run killed after layer 1 resumes to the same bytes (the resumed
    layers' inputs come from the pruned and quantized layers before them)."""
    text = recipe_text(MODELS / "llama", tmp_path / "unused", ["wanda: {sparsity: 0.6, allocation: owl}",
                                                                "gptq: {bits: 4, group-size: 32}"],
                       tasks=("prose",), samples=8, seq_len=64, export="[hf]")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    reference, out = tmp_path / "reference", tmp_path / "out"
    run_lathe("run", recipe, "--set", f"output={reference}")
    killed = subprocess.run([LATHE_BIN, "run", str(recipe), "--set", f"output={out}"], capture_output=True,
                            text=True, env=dict(os.environ, LATHE_FAULT_KILL_AFTER_LAYER="1"))
    assert killed.returncode == -9, killed.stderr
    run_lathe("run", recipe, "--set", f"output={out}")
    assert tree(out) == tree(reference)
