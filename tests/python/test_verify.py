"""`lathe verify` (docs/verify.md): the golden vectors that apply writes into verify/ replayed
through the packed GPTQ and compressed-tensors exports of every tiny model, on the CPU kernel
backends, must pass; one flipped byte of a packed weight or of a scale must fail, naming the
module. The golden outputs themselves are checked against an independent NumPy decoding of the
GPTQ export (test_export.gptq_decode), so they are the exported weights' own arithmetic.

Coverage: every file and tensor of an export is hashed in its lathe_export.json, and golden vectors
cover every expert, so one flipped byte in any packed tensor of a MoE export fails, naming its
module, by the hash check and (for the weights and scales of every expert) by the kernels alone.
"""
import hashlib
import json
import shutil
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest

from reference import SOURCE_DIR, run_lathe
from test_export import gptq_decode

MODELS_DIR = SOURCE_DIR / "data" / "models"
MODELS = ["llama", "qwen2", "mixtral", "qwen2_moe", "olmoe", "qwen3_moe", "qwen3_moe-fused", "deepseek_v3", "gemma3"]

pytestmark = pytest.mark.skipif(not (MODELS_DIR / "llama").is_dir(), reason="data/models not built")

# 4-bit g16 everywhere, layer 1 at 8 bits per channel, layer 0's attention at 2 bits: every
# packed width of both formats (modules a format cannot express stay unquantized there and are
# reported as skipped).
RTN_RECIPE = """
model: {model}
output: {out}
device: cpu
passes:
  - rtn: {{bits: 4, group-size: 16}}
    overrides:
      - {{match: 'model\\.layers\\.1\\..*', bits: 8, group-size: -1}}
      - {{match: 'model\\.layers\\.0\\.self_attn\\..*', bits: 2, group-size: -1}}
export: [gptq, compressed-tensors]
"""

GPTQ_RECIPE = """
model: {model}
output: {out}
device: cpu
calibration:
  seq-len: 64
  samples: 4
  seed: 0
  sets:
    - {{task: prose, path: {prose}}}
passes:
  - gptq: {{bits: 4, group-size: 32, act-order: dynamic, sym: false}}
export: [gptq, compressed-tensors]
"""


def lathe(*args, check=True):
    return run_lathe(*args, check=check)


def run_recipe(base: Path, text: str, model: str, *extra) -> Path:
    recipe = base / f"{model}.yaml"
    out = base / f"out-{model}"
    recipe.write_text(text.format(model=MODELS_DIR / model, out=out, prose=SOURCE_DIR / "data/corpora/prose/train.txt"))
    lathe("run", recipe, *extra)
    return out


def verify_json(path: Path, *extra, check=True):
    report = path.parent / f"verify-{path.name}.json"
    proc = lathe("verify", path, "--json", report, "--quiet", *extra, check=check)
    return proc, json.loads(report.read_text()) if report.exists() else None


def tree_digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def llama_rtn(tmp_path_factory):
    return run_recipe(tmp_path_factory.mktemp("verify-llama"), RTN_RECIPE, "llama")


@pytest.mark.parametrize("model", MODELS)
def test_verify_passes_on_both_exports_of_every_tiny_model(model, tmp_path):
    out = run_recipe(tmp_path, RTN_RECIPE, model)
    before = tree_digest(out)
    proc, report = verify_json(out)
    assert report["failed"] == 0, proc.stdout
    assert sorted(Path(e).name for e in report["exports"]) == ["ct", "gptq"]
    config = json.loads((out / "model" / "config.json").read_text())
    golden = sorted((out / "verify").glob("layer_*.h5"))
    assert len(golden) == config["num_hidden_layers"]
    for export in ("gptq", "ct"):
        files = [c for c in report["cases"] if Path(c["export"]).name == export and c["format"] == "sha256"]
        assert [c["status"] for c in files] == ["ok"] and "lathe_export.json" in files[0]["note"], files
        cases = [c for c in report["cases"] if Path(c["export"]).name == export and c["format"] != "sha256"]
        passed = [c for c in cases if c["status"] == "ok"]
        # Every golden linear of every layer appears once per export; most are packed and pass.
        expected = sum(len(h5py.File(g, "r")["linears"]) + ("moe" in h5py.File(g, "r")) for g in golden)
        assert len(cases) == expected
        assert len(passed) >= 0.75 * expected, [c for c in cases if c["status"] != "ok"]
        for c in passed:
            assert [k["backend"] for k in c["checks"]][:2] == ["cpu-ref", "cpu-fast"]
            assert all(k["nmse"] <= k["bound"] for k in c["checks"])
        # Every format width appears: 2, 4 and 8 bits.
        formats = {c["format"] for c in passed}
        assert any("int4" in f for f in formats) and any("int8" in f for f in formats), formats
    moe_layers = [g for g in golden if "moe" in h5py.File(g, "r")]
    if "num_local_experts" in config or "num_experts" in config or "n_routed_experts" in config:
        assert moe_layers, "an MoE model must have golden MoE blocks"
        assert all(c["status"] == "ok" for c in report["cases"] if c["format"] == "moe")
    assert tree_digest(out) == before, "verify must not modify its inputs"


def test_golden_outputs_are_the_exported_weights_arithmetic(llama_rtn):
    """y = x · Wᵀ with W decoded from OUT/gptq by NumPy (not lathe's code), within fp32 rounding."""
    _, _, decoded = gptq_decode(llama_rtn / "gptq")
    checked = 0
    for path in sorted((llama_rtn / "verify").glob("layer_*.h5")):
        with h5py.File(path, "r") as f:
            assert f.attrs["format"] == "lathe-golden" and "seed 0" in f.attrs["source"]
            for module, group in f["linears"].items():
                if module + ".weight" not in decoded:
                    continue  # stored unquantized in the GPTQ export
                x = f["inputs"][group.attrs["input"]][()].astype(np.float64)
                w = decoded[module + ".weight"].numpy().astype(np.float64)
                y = group["y"][()]
                assert y.shape == (x.shape[0], w.shape[0])
                ref = x @ w.T
                assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max(), module
                checked += 1
    assert checked >= 20


def test_gptq_act_order_dynamic_asym_exports_verify(tmp_path):
    out = run_recipe(tmp_path, GPTQ_RECIPE, "mixtral")
    proc, report = verify_json(out)
    assert report["failed"] == 0 and report["passed"] > 100, proc.stdout
    with h5py.File(out / "verify" / "layer_00000.h5", "r") as f:
        assert f.attrs["source"].startswith("calibration sample 0")
    gptq_config = json.loads((out / "gptq" / "config.json").read_text())["quantization_config"]
    assert gptq_config["desc_act"] is True  # g_idx is not trivial: the permuted-group path ran


@pytest.mark.parametrize("model", ["llama", "mixtral"])
def test_w8a8_int8_export_verifies(model, tmp_path):
    out = tmp_path / "out"
    lathe("run", SOURCE_DIR / "recipes" / "tiny-llama-w8a8.yaml", "--set", f"model={MODELS_DIR / model}", "--set",
          f"output={out}", "--set", "calibration.samples=4", "--set", "calibration.seq-len=64", "--set", "eval.text=[]",
          "--set", "eval.tasks=[]", "--set", "export=[compressed-tensors]")
    proc, report = verify_json(out / "ct")
    assert report["failed"] == 0 and report["passed"] >= 28, proc.stdout
    expected = {"ct-int8-w8a8", "sha256"} | ({"moe-w8a8"} if model == "mixtral" else set())
    assert {c["format"] for c in report["cases"]} == expected


def safetensors_offset(path: Path, name: str) -> tuple:
    """(absolute byte offset, byte length) of tensor `name` in a safetensors file."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    begin, end = header[name]["data_offsets"]
    return 8 + n + begin, end - begin


def flip_byte(export: Path, tensor: str, at: int = 0):
    index = json.loads((export / "model.safetensors.index.json").read_text())["weight_map"]
    shard = export / index[tensor]
    offset, length = safetensors_offset(shard, tensor)
    data = bytearray(shard.read_bytes())
    data[offset + min(at, length - 1)] ^= 0x5A
    shard.write_bytes(bytes(data))


@pytest.mark.parametrize("export,tensor", [("gptq", "model.layers.2.mlp.down_proj.qweight"),
                                           ("gptq", "model.layers.3.self_attn.o_proj.scales"),
                                           ("ct", "model.layers.2.mlp.up_proj.weight_packed"),
                                           ("ct", "model.layers.3.mlp.gate_proj.weight_scale")])
def test_one_flipped_byte_fails_naming_the_module(llama_rtn, tmp_path, export, tensor):
    copy = tmp_path / "out"
    shutil.copytree(llama_rtn, copy)
    flip_byte(copy / export, tensor, at=5)
    module = tensor.rsplit(".", 1)[0]
    proc, report = verify_json(copy / export, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    failed = [(c["name"], c["format"] == "sha256") for c in report["cases"] if c["status"] == "fail"]
    assert sorted(failed) == [(module, False), (module, True)], failed  # the kernels, and the file hash
    assert module in proc.stderr and "do not compute what lathe measured" in proc.stderr
    assert f"FAIL {module}" in proc.stdout.replace("  ", " ").replace("  ", " ")


def test_verify_refuses_what_it_cannot_check(llama_rtn, tmp_path):
    # A plain HF model is not an export.
    proc = lathe("verify", MODELS_DIR / "llama", check=False)
    assert proc.returncode == 2 and "quantization_config" in proc.stderr
    # An export without golden vectors (--verify-rows 0).
    base = tmp_path / "norows"
    base.mkdir()
    out = run_recipe(base, RTN_RECIPE, "llama", "--verify-rows", "0")
    assert not (out / "verify").exists() and not (out / "gptq" / "verify").exists()
    proc = lathe("verify", out, check=False)
    assert proc.returncode == 2 and "no golden vectors" in proc.stderr
    # A truncated golden file is a data error naming it.
    copy = tmp_path / "copy"
    shutil.copytree(llama_rtn, copy)
    golden = copy / "gptq" / "verify" / "layer_00002.h5"
    golden.write_bytes(golden.read_bytes()[:1000])
    proc = lathe("verify", copy / "gptq", check=False)
    assert proc.returncode == 3 and "layer_00002.h5" in proc.stderr
    # Backends: unknown, and cuda where this build or machine has none.
    proc = lathe("verify", llama_rtn, "--backend", "cpu-ref,tpu", check=False)
    assert proc.returncode == 2 and "tpu" in proc.stderr
    proc = lathe("verify", llama_rtn, "--backend", "cuda", check=False)
    if proc.returncode != 0:
        assert proc.returncode == 2 and "cuda" in proc.stderr


def test_a_single_backend_and_the_output_dir_form(llama_rtn):
    proc, report = verify_json(llama_rtn, "--backend", "cpu-fast")
    assert report["failed"] == 0
    assert all([k["backend"] for k in c["checks"]] == ["cpu-fast"] for c in report["cases"]
               if c["status"] == "ok" and c["format"] != "sha256")
    assert "verify: 2 export(s)" in proc.stdout


# ---- coverage: every packed tensor of a MoE export ------------------------------------------------

PACKED_SUFFIXES = ("qweight", "qzeros", "scales", "g_idx")


@pytest.fixture(scope="module")
def moe_gptq(tmp_path_factory):
    """The GPTQ export of the tiny qwen2_moe (shared expert, 4-bit g16, layer 1 at 8 bits)."""
    return run_recipe(tmp_path_factory.mktemp("verify-moe"), RTN_RECIPE, "qwen2_moe") / "gptq"


def packed_tensors(export: Path) -> list:
    index = json.loads((export / "model.safetensors.index.json").read_text())["weight_map"]
    return sorted(t for t in index if t.rsplit(".", 1)[1] in PACKED_SUFFIXES)


def flip_rounds(export: Path, tensors, tmp_path):
    """One round per tensor kind (qweight, qzeros, scales, g_idx): in a copy of `export`, flips the
    middle byte of every tensor of that kind at once, runs lathe verify, and restores the bytes;
    yields (flipped tensors, exit code, report). Every check reads one module's tensors (the file
    check hashes each tensor on its own; a golden case replays one module on fixed inputs; a MoE
    block case is named by its block), so a round is as strict as flipping its tensors one by one,
    in ~4 verify runs instead of ~400: the round passes only when every flipped module is named."""
    copy = tmp_path / export.name
    shutil.copytree(export, copy)
    index = json.loads((copy / "model.safetensors.index.json").read_text())["weight_map"]
    for suffix in PACKED_SUFFIXES:
        flipped = [t for t in tensors if t.endswith("." + suffix)]
        if not flipped:
            continue
        originals = {index[t]: (copy / index[t]).read_bytes() for t in flipped}
        data = {shard: bytearray(raw) for shard, raw in originals.items()}
        for t in flipped:
            offset, length = safetensors_offset(copy / index[t], t)
            data[index[t]][offset + length // 2] ^= 0x5A
        for shard, raw in data.items():
            (copy / shard).write_bytes(bytes(raw))
        proc, report = verify_json(copy, check=False)
        for shard, raw in originals.items():
            (copy / shard).write_bytes(raw)
        yield flipped, proc.returncode, report


def moe_block_of(module: str) -> str:
    return ".".join(module.split(".")[:3]) + ".moe"


def test_every_flipped_packed_tensor_fails_naming_its_module(moe_gptq, tmp_path):
    tensors = packed_tensors(moe_gptq)
    experts = [t for t in tensors if ".mlp.experts." in t]
    config = json.loads((moe_gptq / "config.json").read_text())
    moe_layers = config["num_hidden_layers"] - len(config.get("mlp_only_layers", []))
    assert moe_layers >= 2 and len({t.rsplit(".", 2)[0] for t in experts}) == moe_layers * config["num_experts"]
    rounds = 0
    for flipped, rc, report in flip_rounds(moe_gptq, tensors, tmp_path):
        rounds += 1
        modules = {t.rsplit(".", 1)[0] for t in flipped}
        failed = {c["name"] for c in report["cases"] if c["status"] == "fail"}
        # every flipped module, and the MoE blocks that compute with a flipped expert
        assert rc == 1 and modules <= failed <= modules | {moe_block_of(m) for m in modules}, modules ^ failed
        hashed = {c["name"] + "." + c["note"].split(":")[0] for c in report["cases"]
                  if c["status"] == "fail" and c["format"] == "sha256"}
        assert hashed == set(flipped), set(flipped) ^ hashed
    assert rounds == len(PACKED_SUFFIXES)


def test_golden_vectors_alone_catch_a_flipped_weight_of_every_expert(moe_gptq, tmp_path):
    """Without the manifest only the kernels check: every expert of every layer has golden vectors
    (the original gap: a byte flipped in an expert the golden rows did not route to passed)."""
    bare = tmp_path / "bare"
    shutil.copytree(moe_gptq, bare)
    (bare / "lathe_export.json").unlink()
    proc, report = verify_json(bare)
    files = [c for c in report["cases"] if c["format"] == "sha256"]
    assert [c["status"] for c in files] == ["skip"] and "not checked" in files[0]["note"]
    assert not [c for c in report["cases"] if "no golden vectors" in c["note"]]
    weights = [t for t in packed_tensors(bare) if t.endswith((".qweight", ".scales")) and ".mlp.experts." in t]
    for flipped, rc, report in flip_rounds(bare, weights, tmp_path / "flips"):
        modules = {t.rsplit(".", 1)[0] for t in flipped}
        failed = {c["name"] for c in report["cases"] if c["status"] == "fail"}
        assert rc == 1 and modules <= failed, modules - failed


def test_fewer_golden_experts_are_reported_not_hidden(tmp_path):
    out = run_recipe(tmp_path, RTN_RECIPE, "qwen2_moe", "--verify-experts", "1")
    proc, report = verify_json(out / "gptq")
    skipped = [c for c in report["cases"] if "no golden vectors" in c["note"]]
    assert skipped and all(c["status"] == "skip" and ".mlp.experts." in c["name"] for c in skipped)
    assert report["failed"] == 0, proc.stdout


def test_a_changed_side_file_fails_naming_it(moe_gptq, tmp_path):
    copy = tmp_path / "gptq"
    shutil.copytree(moe_gptq, copy)
    config = copy / "config.json"
    config.write_text(config.read_text().replace('"num_hidden_layers"', ' "num_hidden_layers"', 1))
    proc, report = verify_json(copy, check=False)
    assert proc.returncode == 1 and {"config.json"} == {c["name"] for c in report["cases"] if c["status"] == "fail"}


@pytest.mark.parametrize("edit,field", [
    (lambda m: m.update(format="other"), "format"),
    (lambda m: m.update(version=2), "version"),
    (lambda m: m.pop("files"), "files"),
    (lambda m: m["tensors"].update({"x": {"file": 1}}), "tensors.x"),
    (lambda m: m["files"].update({"config.json": {"sha256": "sha256:00"}}), "files.config.json"),
])
def test_a_malformed_export_manifest_is_a_data_error_naming_the_field(moe_gptq, tmp_path, edit, field):
    copy = tmp_path / "gptq"
    shutil.copytree(moe_gptq, copy)
    manifest = json.loads((copy / "lathe_export.json").read_text())
    edit(manifest)
    (copy / "lathe_export.json").write_text(json.dumps(manifest))
    proc = lathe("verify", copy, check=False)
    assert proc.returncode == 3 and "lathe_export.json" in proc.stderr and field in proc.stderr, proc.stderr
