"""The `gptq` pass end to end through `lathe run`: every quantizable linear quantized with the recipe's
settings and overrides, the quant/ sidecar consistent with the HF shards, Hessians from every
calibration token, the MoE coverage rule of ALGORITHMS.md §1.7 per expert (counts that add up to
tokens × top-k), an expert without tokens handled by the all-token Hessian with a warning,
kill-and-resume byte-identical although each layer's inputs come from the compressed layers before it,
and bad recipes refused naming the field."""
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reference import LATHE_BIN, SOURCE_DIR, THREADS

RECIPE = SOURCE_DIR / "recipes" / "tiny-llama-gptq.yaml"
MODELS = SOURCE_DIR / "data" / "models"
torch.set_num_threads(THREADS)

pytestmark = pytest.mark.skipif(not (MODELS / "llama").is_dir(), reason="data/models/llama not built")


def recipe(tmp_path, model="llama", passes=None, calibration=True, name="recipe.yaml"):
    """The example recipe without eval and gate, optionally for another model or other passes."""
    text = RECIPE.read_text().split("\neval:")[0]
    text = text.replace("../", str(RECIPE.parent.parent) + "/")
    text = text.replace("/data/models/llama", f"/data/models/{model}")
    if passes is not None:
        text = text.split("\npasses:")[0] + "\npasses:\n" + passes + "\nexport: [hf]\n"
    if not calibration:
        text = re.sub(r"\ncalibration:\n(  .*\n|    .*\n)*", "\n", text)
    path = tmp_path / name
    path.write_text(text)
    return path


def run(recipe_path, out, *sets, env=None, samples=8, seq_len=64):
    args = [LATHE_BIN, "run", recipe_path, "--set", f"output={out}",
            "--set", f"calibration.samples={samples}", "--set", f"calibration.seq-len={seq_len}"]
    for s in sets:
        args += ["--set", s]
    return subprocess.run(list(map(str, args)), capture_output=True, text=True, env=env)


def load_dir(path):
    out = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def dequantize(quant, name):
    codes, scales, zeros = quant[name + ".codes"], quant[name + ".scales"], quant[name + ".zeros"]
    g_idx = quant[name + ".g_idx"].long()
    return scales[..., g_idx] * (codes.float() - zeros[..., g_idx].float())


def tree(path):
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(Path(path).rglob("*"))
            if p.is_file() and p.relative_to(path).parts[0] not in ("report",)}


def test_every_linear_quantized_and_the_sidecar_matches_the_shards(tmp_path):
    out = tmp_path / "out"
    proc = run(recipe(tmp_path), out)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "lathe_manifest.json").read_text())
    model = load_dir(out / "model")
    quant = load_dir(out / "quant")
    original = load_dir(MODELS / "llama")
    linears = [n for n in original if re.search(r"(q|k|v|o|gate|up|down)_proj\.weight$", n)]
    assert len(linears) == 4 * 7
    tokens = 2 * 8 * 64  # two tasks × samples × seq-len, packed: every token real
    for name in linears:
        entry = manifest["tensors"][name]
        bits = 8 if name == "model.layers.0.mlp.down_proj.weight" else 4
        assert entry["format"] == f"gptq-int{bits}-g32-sym", name
        assert entry["details"]["tokens"] == tokens and entry["details"]["h_source"] == "all"
        assert entry["details"]["retries"] == 0 and not entry["details"]["fallback"]
        assert quant[name + ".qparams"].tolist() == [bits, 32, 1, 0]
        exact = dequantize(quant, name)
        # The shard holds the exact dequantization rounded to the model dtype; scales are bf16 values.
        assert torch.equal(model[name], exact.to(original[name].dtype)), name
        assert torch.equal(quant[name + ".scales"], quant[name + ".scales"].bfloat16().float())
        assert not torch.equal(model[name], original[name])
        # Act-order with static groups keeps g_idx trivial (FORMATS §3 DECISION).
        assert torch.equal(quant[name + ".g_idx"].long(), torch.arange(exact.shape[1]) // 32)
        # fp64 sums like lathe's (the fp32 difference, squared and summed in fp64)
        rel = ((original[name].float() - exact).double() ** 2).sum() / (original[name].double() ** 2).sum()
        assert abs(entry["rel_err"] - rel.item()) <= 1e-6 * rel.item()
    for name, w in original.items():
        if name not in linears:
            assert torch.equal(model[name], w), name  # norms, embeddings, head untouched
            assert name + ".codes" not in quant


def test_moe_coverage_rule_per_expert(tmp_path):
    if not (MODELS / "mixtral").is_dir():
        pytest.skip("data/models/mixtral not built")
    out = tmp_path / "out"
    passes = "  - gptq: {bits: 4, group-size: 32}"
    proc = run(recipe(tmp_path, "mixtral", passes), out, samples=4, seq_len=64)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "lathe_manifest.json").read_text())
    tokens = 2 * 4 * 64
    threshold = max(256, -(-5 * tokens // 1000))
    config = json.loads((MODELS / "mixtral" / "config.json").read_text())
    for layer in range(config["num_hidden_layers"]):
        total = 0
        for e in range(config["num_local_experts"]):
            for w in ("w1", "w2", "w3"):
                d = manifest["tensors"][f"model.layers.{layer}.block_sparse_moe.experts.{e}.{w}.weight"]["details"]
                assert d["rule"].endswith(f"= {threshold}")
                assert d["h_source"] == ("routed" if d["routed_tokens"] >= threshold else "all"), d
                assert d["tokens"] == (d["routed_tokens"] if d["h_source"] == "routed" else tokens), d
            total += d["routed_tokens"]
        # Every token picks top-k experts: the counts add up.
        assert total == tokens * config["num_experts_per_tok"], layer
        attn = manifest["tensors"][f"model.layers.{layer}.self_attn.q_proj.weight"]["details"]
        assert attn["tokens"] == tokens
    # The report carries each tensor's Hessian source and tokens, and a per-layer summary.
    report = json.loads((out / "report" / "report.json").read_text())
    by_name = {t["name"]: t for t in report["tensors"]}
    routed_in_layer0 = 0
    for name, entry in manifest["tensors"].items():
        d = entry.get("details")
        if d is None:
            continue
        assert by_name[name]["h_source"] == d["h_source"]
        assert by_name[name]["tokens"] == d.get("routed_tokens", d["tokens"])
        if name.startswith("model.layers.0.") and d["h_source"] == "routed":
            routed_in_layer0 += 1
    md = (out / "report" / "report.md").read_text()
    assert "## Calibration behind the quantized tensors" in md
    assert re.search(rf"^\| 0 \| {routed_in_layer0} \| ", md, re.M), md


def test_an_expert_without_tokens_gets_the_all_token_hessian(tmp_path):
    if not (MODELS / "mixtral").is_dir():
        pytest.skip("data/models/mixtral not built")
    out = tmp_path / "out"
    passes = "  - gptq: {bits: 4, group-size: 32}"
    proc = run(recipe(tmp_path, "mixtral", passes), out, samples=1, seq_len=8)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "lathe_manifest.json").read_text())
    starved = [(n, t["details"]) for n, t in manifest["tensors"].items()
               if "details" in t and t["details"].get("routed_tokens") == 0]
    assert starved, "16 tokens × top-2 over 8 experts × 4 layers leave some expert without tokens"
    for name, d in starved:
        assert d["h_source"] == "all" and d["tokens"] == 16 and not d["fallback"], (name, d)
        assert f"gptq: {name} (expert" in proc.stderr and "received no calibration tokens" in proc.stderr


def test_apply_on_the_plan_with_the_same_data_reproduces_the_run(tmp_path):
    """`lathe apply --plan` (no passes: the plan's gptq entries drive the built-in step) with the
    recipe's calibration data gives byte-identical model/ and quant/."""
    out = tmp_path / "run"
    assert run(recipe(tmp_path), out).returncode == 0
    applied = tmp_path / "applied"
    corpora = SOURCE_DIR / "data" / "corpora"
    proc = subprocess.run(list(map(str, [
        LATHE_BIN, "apply", MODELS / "llama", "--plan", out / "plan.json", "--out", applied,
        "--data", f"prose={corpora / 'prose' / 'train.txt'}", "--data", f"code={corpora / 'code' / 'train.txt'}",
        "--samples", "8", "--seq-len", "64"])), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for sub in ("model", "quant"):
        assert tree(applied / sub) == tree(out / sub), sub
    # Without data the plan cannot be applied (the layers' inputs are needed).
    proc = subprocess.run(list(map(str, [LATHE_BIN, "apply", MODELS / "llama", "--plan",
                                         out / "plan.json", "--out", tmp_path / "nodata"])), capture_output=True, text=True)
    assert proc.returncode == 2 and "--data" in proc.stderr, proc.stderr


@pytest.mark.parametrize("kill_after", [1])
def test_killed_gptq_run_resumes_byte_identical(tmp_path, kill_after):
    path = recipe(tmp_path)
    reference = tmp_path / "reference"
    assert run(path, reference).returncode == 0
    out = tmp_path / "out"
    killed = run(path, out, env=dict(os.environ, LATHE_FAULT_KILL_AFTER_LAYER=str(kill_after)))
    assert killed.returncode == -9, killed.stderr
    changed = run(path, out, "calibration.seed=1")
    assert changed.returncode == 3 and "changed" in changed.stderr, changed.stderr
    resumed = run(path, out)
    assert resumed.returncode == 0, resumed.stderr
    assert tree(out) == tree(reference)


@pytest.mark.parametrize("passes,field,message", [
    ("  - gptq: {bits: 5}", "gptq.bits", "GPTQ checkpoints pack 2, 3, 4 or 8 bits"),
    ("  - gptq: {group-size: 48}", "gptq.group-size", "does not divide the input width 128"),
    ("  - gptq: {bits: 4}\n    overrides:\n      - {match: 'model\\.layers\\.9\\..*', bits: 8}",
     "gptq.overrides[0].match", "matches no quantizable tensor"),
])
def test_bad_gptq_settings_are_refused(tmp_path, passes, field, message):
    out = tmp_path / "out"
    proc = run(recipe(tmp_path, passes=passes), out)
    assert proc.returncode == 2, proc.stderr
    assert field in proc.stderr and message in proc.stderr, proc.stderr
    # Nothing is published; only the calibration statistics are kept in the partial dir for reuse.
    assert not out.exists() and not (Path(str(out) + ".partial") / "model").exists()


def test_gptq_without_calibration_is_refused(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([str(LATHE_BIN), "run", str(recipe(tmp_path, calibration=False)),
                           "--set", f"output={out}"], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "calibration" in proc.stderr
