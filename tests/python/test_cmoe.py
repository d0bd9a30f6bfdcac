"""The `cmoe` pass end to end through `lathe run` (ALGORITHMS.md §5: CMoE, arXiv 2502.04416).

  - Exactness: with every routed expert active (A = N − S) and extra_scale 0, the carved model is
    the dense one: logits within 1e-5 on llama, qwen2, gemma3 (GeGLU, sliding layers) and a mistral
    built here from the llama's weights with a sliding window shorter than the tokens, plus S = 0 and
    two cmoe passes in one recipe; with A < N − S the logits differ (the check can fail).
  - Structure: the neuron lists partition range(I) in S·m and N − S lists of m, the experts are the
    dense rows / columns they list, Wg / Wc the unit-norm gate / up rows of the representatives.
  - The carve of layer 0 against cmoe_reference.py, an independent NumPy/SciPy reading of §5.1-5.2
    on the same calibration tokens (from `lathe calibrate` with the run's calibration options: the
    first carve-samples windows, ascending) and MLP inputs from transformers: shared set, rates, the
    optimum of the balanced assignment (scipy's linear_sum_assignment), representatives.
  - The carved forward with A < N − S against transformers' Llama with the §5.3 router as a torch
    module, training-free and after router fine-tuning (bias and extra_scale non-zero).
  - Bad recipes and hand-broken carved configs refused with the right exit code, naming the field,
    writing nothing; the composed cmoe → experts-frequency → gptq recipe with three exports and eval;
    router fine-tuning lowering its loss and the KL to the dense model, and its manifest record
    showing the error before and after tuning also with the default (small) number of steps."""
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from transformers import AutoModelForCausalLM

import cmoe_reference as ref
from reference import LATHE_BIN, SOURCE_DIR, THREADS

MODELS = SOURCE_DIR / "data" / "models"
CORPORA = SOURCE_DIR / "data" / "corpora"
TRAIN = CORPORA / "prose" / "train.txt"
HELDOUT = CORPORA / "prose" / "heldout.txt"
EXACT = 1e-5  # max |carved − dense| logit, f32 (measured 4.5e-6 to 6.7e-6)
torch.set_num_threads(THREADS)

pytestmark = pytest.mark.skipif(not (MODELS / "llama").is_dir(), reason="data/models/llama not built")


def lathe(*args):
    return subprocess.run([str(LATHE_BIN), *map(str, args)], capture_output=True, text=True)


def write_recipe(path, model, out, passes, samples=8, seq_len=64, calibration=True, extra=""):
    items = [passes] if isinstance(passes, str) else passes
    text = f"model: {model}\noutput: {out}\ndevice: cpu\ndtype: f32\n"
    if calibration:
        text += (f"calibration:\n  seq-len: {seq_len}\n  samples: {samples}\n  seed: 0\n  sets:\n"
                 f"    - {{task: prose, path: {TRAIN}}}\n")
    text += "passes:\n" + "".join(f"  - {p}\n" for p in items) + extra
    Path(path).write_text(text)
    return path


def run_recipe(tmp, name, model, passes, **kw):
    """Runs a recipe into tmp/name; returns the output directory (asserts exit 0)."""
    out = Path(tmp) / name
    proc = lathe("run", write_recipe(Path(tmp) / f"{name}.yaml", model, out, passes, **kw))
    assert proc.returncode == 0, proc.stderr
    return out


def forward(model_dir, tokens_file, out):
    proc = lathe("forward", model_dir, "--tokens", tokens_file, "--out", out)
    assert proc.returncode == 0, proc.stderr
    return np.fromfile(out, np.float32)


def tokens_file(path, rows=2, length=48, vocab=4096, seed=0):
    ids = np.random.default_rng(seed).integers(3, vocab, (rows, length))
    Path(path).write_text(json.dumps({"ids": ids.tolist()}))
    return path


def carve_record(out, layer):
    manifest = json.loads((Path(out) / "lathe_manifest.json").read_text())
    return manifest["tensors"][f"model.layers.{layer}.mlp.router.gate_proj.weight"]["details"]["cmoe"]


def intermediate_size(model_dir):
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return config.get("intermediate_size") or config["text_config"]["intermediate_size"]


def make_mistral(tmp, window):
    """The tiny llama's files as a Mistral (same sizes, head_dim) with a sliding window."""
    target = Path(tmp) / "mistral"
    shutil.copytree(MODELS / "llama", target)
    config = json.loads((target / "config.json").read_text())
    config.update(model_type="mistral", architectures=["MistralForCausalLM"], sliding_window=window)
    (target / "config.json").write_text(json.dumps(config, indent=2))
    return target


# ---------------------------------------------------------------------------------------------------
# 1. Exactness


@pytest.mark.parametrize("family,experts,shared", [("llama", 16, 2), ("qwen2", 8, 2), ("gemma3", 8, 2),
                                                   ("mistral", 16, 2), ("llama", 8, 0)])
def test_all_experts_active_is_the_dense_model(tmp_path, family, experts, shared):
    toks = tokens_file(tmp_path / "toks.json")  # 48 tokens: past gemma3's and the mistral's windows
    if family == "mistral":
        model = make_mistral(tmp_path, window=16)
        dense = forward(model, toks, tmp_path / "dense.bin")
        # lathe runs the dense Mistral as transformers does, and its window matters on these tokens
        hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
        with torch.no_grad():
            hf_logits = hf(torch.tensor(json.loads(toks.read_text())["ids"])).logits.numpy().reshape(-1)
        assert np.abs(dense - hf_logits).max() <= 1e-4
        llama = forward(MODELS / "llama", toks, tmp_path / "llama.bin")
        assert np.abs(dense - llama).max() > 1e-2
    else:
        model = MODELS / family
        dense = forward(model, toks, tmp_path / "dense.bin")
    width = intermediate_size(model)
    assert width % experts == 0
    routed = experts - shared
    out = run_recipe(tmp_path, "all", model, f"cmoe: {{experts: {experts}, shared: {shared}, active: {routed}}}")
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["model_type"] == "lathe_cmoe"
    base = json.loads((model / "config.json").read_text())["model_type"]
    assert config["lathe_cmoe"]["base_model_type"] == base
    carved = forward(out / "model", toks, tmp_path / "carved.bin")
    err = np.abs(carved - dense).max()
    print(f"{family} S{shared}A{routed}E{experts}: max |carved − dense| = {err:.3g}")
    assert err <= EXACT

    few = run_recipe(tmp_path, "few", model, f"cmoe: {{experts: {experts}, shared: {shared}, active: 1}}")
    sparse = forward(few / "model", toks, tmp_path / "few.bin")
    assert np.abs(sparse - dense).max() > 1e-2


def test_two_cmoe_passes_in_one_recipe_stay_exact(tmp_path):
    """cmoe carves layer 0, a second cmoe carves layer 1 of the carved model (two segments)."""
    toks = tokens_file(tmp_path / "toks.json")
    out = run_recipe(tmp_path, "out", MODELS / "llama",
                     ["cmoe: {experts: 8, shared: 2, active: 6, layers: [0]}",
                      "cmoe: {experts: 16, shared: 2, active: 14, layers: [1]}"])
    layers = json.loads((out / "model" / "config.json").read_text())["lathe_cmoe"]["layers"]
    assert [(l["layer"], l["num_experts"], l["expert_intermediate"]) for l in layers] == [(0, 6, 48), (1, 14, 24)]
    dense = forward(MODELS / "llama", toks, tmp_path / "dense.bin")
    assert np.abs(forward(out / "model", toks, tmp_path / "carved.bin") - dense).max() <= EXACT


# ---------------------------------------------------------------------------------------------------
# 2. Structure


@pytest.fixture(scope="module")
def llama_carve(tmp_path_factory):
    """S2A2E8 on every layer of the tiny llama."""
    tmp = tmp_path_factory.mktemp("carve")
    return run_recipe(tmp, "out", MODELS / "llama", "cmoe: {experts: 8, shared: 2, active: 2}")


def test_carved_checkpoint_structure(llama_carve):
    out, experts, shared, active = llama_carve, 8, 2, 2
    dense = {k: v.float().numpy() for k, v in ref.load_dir(MODELS / "llama").items()}
    raw = ref.load_dir(out / "model")
    carved = {k: v.float().numpy() for k, v in raw.items()}
    config = json.loads((out / "model" / "config.json").read_text())
    width = intermediate_size(MODELS / "llama")
    m, k = width // experts, experts - shared
    assert config["lathe_cmoe"]["version"] == 1 and config["lathe_cmoe"]["base_model_type"] == "llama"
    assert config["lathe_cmoe"]["layers"] == [
        {"layer": i, "num_experts": k, "num_shared_experts": shared, "top_k": active,
         "expert_intermediate": m, "shared_intermediate": shared * m} for i in range(4)]
    plan = json.loads((out / "plan.json").read_text())
    assert sorted(plan["carve"]) == ["0", "1", "2", "3"]
    # everything outside the MLPs is the dense tensor, bit for bit; no dense MLP tensor is left
    for name, value in raw.items():
        if ".mlp." not in name:
            assert np.array_equal(carved[name], dense[name]), name
    assert not any(re.search(r"\.mlp\.(gate|up|down)_proj\.", n) for n in carved)
    for i in range(4):
        d = carve_record(out, i)
        pre = f"model.layers.{i}.mlp."
        assert (d["experts"], d["shared"], d["active"], d["atopk"]) == (experts, shared, active, 10)
        assert d["tokens"] == 8 * 64  # carve-samples 8 × seq-len 64
        shared_ids, routed = d["shared_neurons"], d["routed_neurons"]
        assert len(shared_ids) == shared * m and shared_ids == sorted(shared_ids)
        assert len(routed) == k and all(len(r) == m and r == sorted(r) for r in routed)
        assert sorted(shared_ids + [j for r in routed for j in r]) == list(range(width))
        assert d["mean_rate_shared"] >= d["mean_rate_routed"]
        gate, up, down = (dense[f"{pre}{p}_proj.weight"] for p in ("gate", "up", "down"))
        for e, ids in enumerate(routed):
            assert raw[f"{pre}experts.{e}.gate_proj.weight"].dtype == torch.bfloat16  # the dense dtype
            assert np.array_equal(carved[f"{pre}experts.{e}.gate_proj.weight"], gate[ids])
            assert np.array_equal(carved[f"{pre}experts.{e}.up_proj.weight"], up[ids])
            assert np.array_equal(carved[f"{pre}experts.{e}.down_proj.weight"], down[:, ids])
        assert np.array_equal(carved[f"{pre}shared_expert.gate_proj.weight"], gate[shared_ids])
        assert np.array_equal(carved[f"{pre}shared_expert.up_proj.weight"], up[shared_ids])
        assert np.array_equal(carved[f"{pre}shared_expert.down_proj.weight"], down[:, shared_ids])
        reps = d["representatives"]
        assert len(reps) == k and all(r in routed[e] for e, r in enumerate(reps))
        for tensor, source in (("gate_proj", gate), ("up_proj", up)):
            w = raw[f"{pre}router.{tensor}.weight"]
            assert w.dtype == torch.float32 and tuple(w.shape) == (k, gate.shape[1])
            np.testing.assert_allclose(np.linalg.norm(w.numpy(), axis=1), 1, atol=1e-6)
            np.testing.assert_allclose(w.numpy(), ref.rownorm(source[reps].astype(np.float64)), atol=1e-7)
        for tensor in ("extra_scale", "bias"):
            assert np.array_equal(carved[f"{pre}router.{tensor}"], np.zeros(k, np.float32))


# ---------------------------------------------------------------------------------------------------
# 3. The carve of layer 0 against the NumPy/SciPy reference

DIFF_SAMPLES, DIFF_SEQ, CARVE_SAMPLES = 16, 128, 8


def calibration_ids(tmp):
    """The calibration windows of the run: `lathe calibrate` with the same options stores them."""
    store = Path(tmp) / "ids.h5"
    proc = lathe("calibrate", MODELS / "llama", "--data", f"prose={TRAIN}", "--samples", DIFF_SAMPLES,
                 "--seq-len", DIFF_SEQ, "--no-router", "--no-channels", "--no-neurons", "--out", store)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(store, "r") as f:
        ids = f["calibration_ids/all_layers/input/prose"][()].astype(np.int64)
        lengths = f["calibration_lengths/all_layers/input/prose"][()]
    assert ids.shape == (DIFF_SAMPLES, DIFF_SEQ) and (lengths == DIFF_SEQ).all()  # packed: all real
    return ids


def layer0_mlp_inputs(ids):
    """Layer 0's post-attention-norm output (the MLP input) from transformers, fp32, [T, d]."""
    model = AutoModelForCausalLM.from_pretrained(MODELS / "llama", dtype=torch.float32).eval()
    seen = {}
    model.model.layers[0].post_attention_layernorm.register_forward_hook(
        lambda mod, args, out: seen.setdefault("h", out.detach()))
    with torch.no_grad():
        model(torch.from_numpy(ids))
    mlp = model.model.layers[0].mlp
    return (seen["h"].reshape(-1, seen["h"].shape[-1]).numpy(), mlp.gate_proj.weight.detach().numpy(),
            mlp.up_proj.weight.detach().numpy())


def carve_mismatches(markers, record, experts, shared):
    """What differs between lathe's carve record and the reference on these markers ([] if none)."""
    width = markers.shape[1]
    m = width // experts
    want = ref.carve(markers, experts, shared)
    bad = []
    if record["tokens"] != markers.shape[0]:
        bad.append(f"tokens {record['tokens']} != {markers.shape[0]}")
    if record["shared_neurons"] != want["shared"]:
        bad.append(f"shared differs: {sorted(set(record['shared_neurons']) ^ set(want['shared']))}")
    rates = want["rates"]
    routed = [j for j in range(width) if j not in set(want["shared"])]
    for key, value in (("mean_rate_shared", rates[want["shared"]].mean()),
                       ("mean_rate_routed", rates[routed].mean())):
        if abs(record[key] - value) > 1e-12:
            bad.append(f"{key} {record[key]} != {value}")
    clusters = record["routed_neurons"]
    if sorted(j for c in clusters for j in c) != want["rest"] or any(len(c) != m for c in clusters):
        bad.append("routed lists are not a balanced partition of the non-shared neurons")
        return bad
    # lathe's partition, matched to the seeds at its best, must reach the optimum
    index = {j: i for i, j in enumerate(want["rest"])}
    to_seed = np.array([[want["cost"][[index[j] for j in c], s].sum() for s in range(len(want["seeds"]))]
                        for c in clusters])
    r, c = linear_sum_assignment(to_seed)
    cost = int(to_seed[r, c].sum())
    if cost != want["optimum"]:
        bad.append(f"lathe's clusters cost {cost} > the optimum {want['optimum']}")
    if record["assignment_cost"] != want["optimum"]:
        bad.append(f"assignment_cost {record['assignment_cost']} != the optimum {want['optimum']}")
    for e, members in enumerate(clusters):
        cands = ref.representative_candidates(markers, members)
        if record["representatives"][e] != cands[0]:
            bad.append(f"expert {e}: representative {record['representatives'][e]}, expected {cands[0]} "
                       f"(nearest: {cands})")
    return bad


@pytest.mark.parametrize("experts,shared,atopk", [(16, 2, 10), (8, 1, 48)])
def test_layer0_carve_matches_the_reference(tmp_path, experts, shared, atopk):
    out = run_recipe(tmp_path, "out", MODELS / "llama",
                     f"cmoe: {{experts: {experts}, shared: {shared}, active: 2, atopk: {atopk}, "
                     f"carve-samples: {CARVE_SAMPLES}, layers: [0]}}",
                     samples=DIFF_SAMPLES, seq_len=DIFF_SEQ)
    layers = json.loads((out / "model" / "config.json").read_text())["lathe_cmoe"]["layers"]
    assert [l["layer"] for l in layers] == [0]  # `layers` carves only layer 0
    record = carve_record(out, 0)
    ids = calibration_ids(tmp_path)[:CARVE_SAMPLES]  # kept in ascending window order: the first ones
    h, gate, up = layer0_mlp_inputs(ids)
    markers, near, swaps = ref.atopk_markers(h, gate, up, atopk)
    print(f"S{shared}E{experts} K_a={atopk}: {len(near)} near-tie ATopK row(s); optimum "
          f"{record['assignment_cost']}")
    first = None
    for variant in ref.marker_variants(markers, near, swaps):
        bad = carve_mismatches(variant, record, experts, shared)
        if not bad:
            return
        first = first or bad
    pytest.fail("lathe's carve differs from the reference:\n  " + "\n  ".join(first))


# ---------------------------------------------------------------------------------------------------
# 3b. The carved forward with A < N − S against transformers + the §5.3 router


def clear_positions(mlps, shape):
    """[B, T] bool: positions whose routing in every carved layer, and at every earlier position of
    the sequence, is clear of a near-tie (a flipped choice reaches later positions through attention)."""
    ok = torch.ones(shape, dtype=torch.bool)
    for mlp in mlps.values():
        for clear in mlp.clear:
            ok &= clear
    return torch.cummin(ok.int(), dim=1).values.bool().numpy()


@pytest.mark.parametrize("active,finetune", [(2, "none"), (1, "router"), (2, "router")])
def test_carved_forward_matches_the_reference_router(tmp_path, active, finetune):
    passes = f"cmoe: {{experts: 16, shared: 2, active: {active}, finetune: {finetune}"
    passes += ", finetune-steps: 32}" if finetune == "router" else "}"
    out = run_recipe(tmp_path, "out", MODELS / "llama", passes, samples=16, seq_len=128)
    toks = tokens_file(tmp_path / "toks.json", length=40)
    got = forward(out / "model", toks, tmp_path / "carved.bin").reshape(2, 40, -1)
    model, mlps = ref.carved_llama(MODELS / "llama", out / "model")
    if finetune == "router":  # the reference then checks the bias in the selection and 1 + p·λ
        assert all(m.scale.abs().max() > 0 and m.bias.abs().max() > 0 for m in mlps.values())
    with torch.no_grad():
        want = model(torch.tensor(json.loads(toks.read_text())["ids"])).logits.numpy()
    ok = clear_positions(mlps, got.shape[:2])
    print(f"A={active} finetune={finetune}: {int(ok.sum())}/{ok.size} positions clear of routing near-ties")
    assert ok.mean() >= 0.75
    err = np.abs(got - want).max(-1)
    assert err[ok].max() <= 1e-4, f"max error {err[ok].max():.3g} on positions clear of near-ties"


# ---------------------------------------------------------------------------------------------------
# 4. Bad input

LLAMA_CMOE = "cmoe: {experts: 8, shared: 2, active: 2}"


@pytest.mark.parametrize("model,passes,calibration,code,needles", [
    ("llama", "cmoe: {experts: 7, shared: 2, active: 2}", True, 2,
     ["passes.cmoe.experts", "do not divide the FFN width 384"]),
    ("llama", "cmoe: {experts: 8, shared: 2, active: 7}", True, 2, ["passes.cmoe.active", "S + A"]),
    ("llama", "cmoe: {experts: 8, shared: 8, active: 1}", True, 2, ["passes.cmoe.shared"]),
    ("llama", "cmoe: {experts: 8, shared: 2, active: 2, atopk: 385}", True, 2, ["passes.cmoe.atopk", "385"]),
    ("llama", "cmoe: {experts: 8, shared: 2, active: 2, finetune: lora}", True, 2, ["passes.cmoe.finetune"]),
    ("llama", "cmoe: {experts: 8, shared: 2, active: 2, layers: [99]}", True, 2,
     ["passes.cmoe.layers", "layer 99 is outside [0, 4)"]),
    ("mixtral", LLAMA_CMOE, True, 2, ["passes.cmoe.layers", "layer 0 is an MoE layer"]),
    ("qwen2_moe", "cmoe: {experts: 8, shared: 2, active: 2, layers: [0]}", True, 2,
     ["passes.cmoe.layers", "layer 0 is an MoE layer"]),
    ("llama", LLAMA_CMOE, False, 2, ["passes.cmoe", "calibration"]),
    # the passes after the carve are checked against the carved structure before anything runs
    ("llama", [LLAMA_CMOE, "experts-frequency: {keep-count: 20}"], True, 2,
     ["passes.experts-frequency.keep-count", "6 routed experts"]),
    ("llama", [LLAMA_CMOE, "gptq: {bits: 4, group-size: 128}"], True, 2,
     ["passes.gptq.group-size", "experts.0.down_proj"]),
    ("llama", [LLAMA_CMOE, LLAMA_CMOE], True, 2, ["passes.cmoe.layers", "is an MoE layer"]),
])
def test_bad_recipes_are_refused_naming_the_field(tmp_path, model, passes, calibration, code, needles):
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r.yaml", MODELS / model, out, passes, calibration=calibration)
    proc = lathe("run", recipe)
    assert proc.returncode == code, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr
    assert not out.exists() and not Path(f"{out}.partial").exists() and not Path(f"{out}.segment1").exists()


def test_too_few_calibration_windows_is_a_data_error(tmp_path):
    out = tmp_path / "out"
    proc = lathe("run", write_recipe(tmp_path / "r.yaml", MODELS / "llama", out, LLAMA_CMOE, samples=100000))
    assert proc.returncode == 3, proc.stderr
    assert "prose" in proc.stderr and "100000 samples needed" in proc.stderr
    assert not out.exists()
    # lathe leaves OUT.partial (for a resume) but nothing in it
    partial = Path(f"{out}.partial")
    assert not partial.exists() or not any(p.is_file() for p in partial.rglob("*"))


def test_an_unsupported_export_of_a_carve_exits_4(tmp_path):
    out = tmp_path / "out"
    proc = lathe("run", write_recipe(tmp_path / "r.yaml", MODELS / "llama", out, LLAMA_CMOE,
                                     extra="export: [gguf]\n"))
    assert proc.returncode == 4 and "gguf" in proc.stderr, proc.stderr
    assert not out.exists() and not Path(f"{out}.partial").exists()


def _missing(c):
    del c["lathe_cmoe"]


BROKEN = {
    "lathe_cmoe.base_model_type": lambda c: c["lathe_cmoe"].update(base_model_type="gpt2"),
    "lathe_cmoe.base_model_type ": lambda c: c["lathe_cmoe"].update(base_model_type="mixtral"),
    "lathe_cmoe.layers[1].top_k": lambda c: c["lathe_cmoe"]["layers"][1].update(top_k=7),
    "lathe_cmoe.layers[2].layer": lambda c: c["lathe_cmoe"]["layers"][2].update(layer=0),
    "lathe_cmoe.layers[3].layer": lambda c: c["lathe_cmoe"]["layers"][3].update(layer=4),
    "lathe_cmoe.layers[0].shared_intermediate": lambda c: c["lathe_cmoe"]["layers"][0].update(num_shared_experts=0),
    "lathe_cmoe.version": lambda c: c["lathe_cmoe"].update(version=2),
    "lathe_cmoe.layers": lambda c: c["lathe_cmoe"].update(layers=[]),
    "lathe_cmoe.colour": lambda c: c["lathe_cmoe"].update(colour=1),
    "lathe_cmoe": _missing,
}


@pytest.mark.parametrize("field", list(BROKEN))
def test_a_broken_carved_config_is_refused(tmp_path, llama_carve, field):
    model = tmp_path / "model"
    shutil.copytree(llama_carve / "model", model)
    config = json.loads((model / "config.json").read_text())
    BROKEN[field](config)
    (model / "config.json").write_text(json.dumps(config, indent=2))
    toks = tokens_file(tmp_path / "toks.json")
    for args in (["inspect", model], ["forward", model, "--tokens", toks, "--out", tmp_path / "x.bin"]):
        proc = lathe(*args)
        assert proc.returncode == 2, proc.stderr
        assert f"{field.strip()}:" in proc.stderr, proc.stderr
    assert not (tmp_path / "x.bin").exists()


def test_a_carved_config_that_disagrees_with_the_shards_is_a_data_error(tmp_path, llama_carve):
    model = tmp_path / "model"
    shutil.copytree(llama_carve / "model", model)
    config = json.loads((model / "config.json").read_text())
    config["lathe_cmoe"]["layers"][3]["expert_intermediate"] = 47
    (model / "config.json").write_text(json.dumps(config, indent=2))
    proc = lathe("inspect", model)
    assert proc.returncode == 3, proc.stderr
    assert "model.layers.3.mlp.experts.0.gate_proj.weight" in proc.stderr and "[47, 128]" in proc.stderr


# ---------------------------------------------------------------------------------------------------
# 5. Composed recipe


def test_cmoe_then_expert_pruning_then_gptq_with_exports_and_eval(tmp_path):
    out = tmp_path / "out"
    recipe = write_recipe(
        tmp_path / "r.yaml", MODELS / "llama", out,
        ["cmoe: {experts: 8, shared: 2, active: 4}", "experts-frequency: {keep-count: 5}",
         "gptq: {bits: 4, group-size: 16}"], samples=16, seq_len=128,
        extra=f"export: [hf, gptq, compressed-tensors]\neval:\n  text: [{HELDOUT}]\n  seq-len: 128\n")
    proc = lathe("run", recipe)
    assert proc.returncode == 0, proc.stderr
    verify = re.search(r"\[verify\] (\d+) passed, (\d+) failed", proc.stderr)
    assert verify and int(verify.group(1)) > 0 and verify.group(2) == "0", proc.stderr
    assert (out / "segments" / "1" / "lathe_manifest.json").is_file()
    assert not Path(f"{out}.segment1").exists() and not Path(f"{out}.partial").exists()
    for export in ("hf", "gptq", "ct"):
        assert (out / export / "config.json").is_file()
    layers = json.loads((out / "model" / "config.json").read_text())["lathe_cmoe"]["layers"]
    assert [(l["num_experts"], l["top_k"]) for l in layers] == [(5, 4)] * 4
    kl = json.loads((out / "eval_after.json").read_text())["divergence"]["heldout.txt"]["kl"]
    assert math.isfinite(kl) and 0 < kl < 1
    # the packed exports compute what the output directory does
    toks = tokens_file(tmp_path / "toks.json")
    base = forward(out, toks, tmp_path / "out.bin")
    for export in ("gptq", "ct"):
        assert np.abs(forward(out / export, toks, tmp_path / f"{export}.bin") - base).max() <= 1e-5


# ---------------------------------------------------------------------------------------------------
# 6. Router fine-tuning


def kl_to_dense(model_dir, tmp, name):
    report = Path(tmp) / f"{name}.json"
    proc = lathe("eval", model_dir, "--text", HELDOUT, "--seq-len", 128, "--reference", MODELS / "llama",
                 "--json", report)
    assert proc.returncode == 0, proc.stderr
    return json.loads(report.read_text())["divergence"]["heldout.txt"]["kl"]


def test_router_finetuning_lowers_its_loss_and_the_kl(tmp_path):
    carve = "cmoe: {experts: 16, shared: 2, active: 2"
    free = run_recipe(tmp_path, "free", MODELS / "llama", carve + "}", samples=16, seq_len=128)
    tuned = run_recipe(tmp_path, "tuned", MODELS / "llama", carve + ", finetune: router, finetune-steps: 32}",
                       samples=16, seq_len=128)
    for i in range(4):
        record = carve_record(tuned, i)
        assert record["finetune"] == "router" and "router_finetune" not in carve_record(free, i)
        curve = record["router_finetune"]
        assert curve["steps"] == 32
        assert curve["loss_after"] < curve["loss_before"], f"layer {i}: {curve}"
    # fine-tuning changes only the router: layer 0 (whose inputs no tuned layer changes) keeps the
    # training-free carve's experts
    assert carve_record(tuned, 0)["routed_neurons"] == carve_record(free, 0)["routed_neurons"]
    kl_free, kl_tuned = kl_to_dense(free / "model", tmp_path, "free"), kl_to_dense(tuned / "model", tmp_path, "tuned")
    print(f"KL to the dense llama on heldout.txt: training-free {kl_free:.4f}, router-tuned {kl_tuned:.4f}")
    assert kl_tuned < kl_free


def test_router_finetuning_with_default_steps_reports_a_loss_curve(tmp_path):
    """Default steps: 4 epochs of 512-token batches over the carve inputs (8 × 64 tokens here: 4 steps,
    8 × 128: 8 steps). loss_before / loss_after are the carved block's error on the carve rows
    before and after tuning."""
    out = run_recipe(tmp_path, "out", MODELS / "llama",
                     "cmoe: {experts: 16, shared: 2, active: 2, finetune: router, layers: [0]}",
                     samples=16, seq_len=128)
    curve = carve_record(out, 0)["router_finetune"]
    assert curve["steps"] == 8
    assert curve["loss_after"] < curve["loss_before"], curve


def test_router_statistics_of_a_carve_are_its_softmax_probabilities(tmp_path):
    """`lathe calibrate` on a carved model: the router's probability mass is softmax(s) (§5.3), so
    over the experts it sums to the token count, and the selected experts are A per token."""
    carved = run_recipe(tmp_path, "carved", MODELS / "llama", "cmoe: {experts: 8, shared: 2, active: 2}",
                        samples=8, seq_len=64)
    stats = tmp_path / "stats.h5"
    proc = lathe("calibrate", carved / "model", "--data", f"prose={TRAIN}", "--samples", 4, "--seq-len", 64,
                 "--out", stats)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(stats, "r") as f:
        for layer in range(4):
            tokens = f[f"expert_tokens/layer_{layer}/router/prose"][()]
            mass = f[f"router_prob_mass/layer_{layer}/router/prose"][()]
            assert tokens.shape == mass.shape == (6,)
            assert tokens.sum() == 2 * 4 * 64  # A experts for each of the 256 tokens
            assert mass.sum() == pytest.approx(4 * 64, rel=1e-6)  # fp32 probabilities; sigmoid: ~900
