"""2:4 sparsity in the compressed-tensors export (docs/export.md, "2:4 sparsity: sparse-24-bitmask"),
on the tiny llama and Mixtral, for three recipes:

* prune:  `magnitude` 2:4 only (no quantization): every 2:4 linear becomes the trio `<m>.compressed`
          (model dtype), `<m>.bitmask`, `<m>.shape`; the config has only quant_method and
          sparsity_config;
* w8a8:   `sparsegpt` 2:4, then `smoothquant` (int8 weights per channel, int8 dynamic inputs): the
          int8 weight is bitmask-compressed, `weight_scale` kept;
* w4:     `sparsegpt` 2:4 with 4-bit weights in the same sweep: pack-quantized as without sparsity,
          sparsity_config format "dense" (metadata only).

compressed-tensors ≥ 0.15 has no sparse decompressor (the pinned 0.20 keeps the config classes and
`utils.helpers.unpack_bitmasks`), so every trio is decoded twice: by an independent NumPy decoder
written here from the format (numpy.unpackbits, little bit order), on the raw bit patterns, and with
0.20's unpack_bitmasks; the int8 weights then go through 0.20's `int-quantized` decompressor. The
results are compared bit for bit with lathe's weights (OUT/model; the quant sidecar's exact fp32
dequantization). With LATHE_CT_LEGACY_PYTHONPATH pointing at compressed-tensors 0.14 (the last release
with the sparse compressors; ct_legacy_worker.py says how to get it) its own ModelCompressor decodes
the exports too. `lathe forward OUT/ct` must give `lathe forward OUT`'s logits exactly, `lathe verify`
must pass on the exports and fail, naming the module, for a flipped byte, and a corrupted bitmask read
by `lathe eval OUT/ct` is a data error (exit 3) naming the module."""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from reference import LATHE_BIN, SOURCE_DIR, THREADS, recipe_text, run_lathe
from test_export import load_dir, per_expert, sidecar_weights

torch.set_num_threads(THREADS)
MODELS = SOURCE_DIR / "data" / "models"
PROSE = SOURCE_DIR / "data" / "corpora" / "prose" / "heldout.txt"

pytestmark = pytest.mark.skipif(not (MODELS / "llama").is_dir() or not (MODELS / "mixtral").is_dir(),
                                reason="data/models not built")

RECIPES = {
    "prune": ["magnitude: {pattern: '2:4'}"],
    "w8a8": ["sparsegpt: {pattern: '2:4', group-size: -1}", "smoothquant: {alpha: 0.5}"],
    "w4": ["sparsegpt: {pattern: '2:4', bits: 4, group-size: 32}"],
}
# qwen3_moe-fused: transformers v5's fused 3-D experts, split per expert by the export.
CASES = [(model, case) for model in ("llama", "mixtral") for case in RECIPES] + [("qwen3_moe-fused", "prune"),
                                                                               ("qwen3_moe-fused", "w8a8")]
IDS = [[1, 17, 250, 3999, 42, 7, 99, 1024], [5, 6, 7]]


@pytest.fixture(scope="module")
def outs(tmp_path_factory):
    """lathe run of a (model, recipe) with export [compressed-tensors], once per module."""
    cache = {}

    def get(model, case):
        if (model, case) not in cache:
            base = tmp_path_factory.mktemp(f"{model}-{case}")
            recipe = base / "recipe.yaml"
            recipe.write_text(recipe_text(MODELS / model, base / "out", RECIPES[case], tasks=("prose",), samples=4,
                                          seq_len=64, export="[compressed-tensors]"))
            run_lathe("run", recipe)
            cache[(model, case)] = base / "out"
        return cache[(model, case)]

    return get


def sparse24_weights(out):
    """OUT/model's weights of the tensors lathe_manifest.json records as 2:4, by per-expert name
    (fused 3-D experts split as the exports split them)."""
    manifest = json.loads((out / "lathe_manifest.json").read_text())
    names = {k for k, r in manifest["tensors"].items() if r.get("sparsity", {}).get("pattern") == "2:4"}
    stored = load_dir(out / "model")
    return per_expert({k: stored[k] for k in names}, None)


def sparse24_records(out):
    return set(sparse24_weights(out))


def bit_view(t):
    """The tensor's raw bit patterns as NumPy integers (bf16 has no NumPy dtype)."""
    as_int = {1: torch.int8, 2: torch.int16, 4: torch.int32}[t.element_size()]
    return t.contiguous().view(as_int).numpy()


def numpy_decode(tensors, module):
    """An independent decoder of sparse-24-bitmask: checks dtypes, shapes, exactly 2 bits per group
    of 4 and zero padding bits, then scatters the kept values (row-major) into zeros. Returns the
    dense weight (the values' dtype) and the boolean mask."""
    shape, bitmask, values = (tensors[f"{module}.{p}"] for p in ("shape", "bitmask", "compressed"))
    assert shape.dtype == torch.int64 and tuple(shape.shape) == (2, 1), (module, shape)
    out, n_in = (int(v) for v in shape.reshape(-1))
    assert n_in % 4 == 0
    assert bitmask.dtype == torch.uint8 and tuple(bitmask.shape) == (out, math.ceil(n_in / 8)), module
    assert tuple(values.shape) == (out, n_in // 2), module
    bits = np.unpackbits(bitmask.numpy(), axis=-1, bitorder="little")  # [out, 8·⌈in/8⌉]
    assert not bits[:, n_in:].any(), f"{module}: padding bits set"
    mask = bits[:, :n_in].astype(bool)
    assert (mask.reshape(out, -1, 4).sum(-1) == 2).all(), f"{module}: not 2 bits per group"
    raw = np.zeros((out, n_in), dtype=bit_view(values).dtype)
    raw[mask] = bit_view(values).reshape(-1)
    return torch.from_numpy(raw).view(values.dtype), mask


def library_decode(tensors, module):
    """The same with compressed-tensors 0.20's unpack_bitmasks (the helper its removed
    Sparse24BitMaskCompressor decoded with)."""
    from compressed_tensors.utils.helpers import pack_bitmasks, unpack_bitmasks

    shape, bitmask, values = (tensors[f"{module}.{p}"] for p in ("shape", "bitmask", "compressed"))
    mask = unpack_bitmasks(bitmask, shape.reshape(-1).tolist())
    assert torch.equal(pack_bitmasks(mask), bitmask), module  # what 0.14 wrote for this mask
    dense = torch.zeros(mask.shape, dtype=values.dtype)
    dense[mask] = values.reshape(-1)
    return dense


def positive_zeros(w):
    """−0.0 → +0.0 (the export writes every zero as +0.0)."""
    return w.masked_fill(w == 0, 0) if w.is_floating_point() else w


def decode_export(ct_dir):
    """(quantization_config, tensors, {module: decoded dense}) of a compressed-tensors export."""
    qc = json.loads((ct_dir / "config.json").read_text())["quantization_config"]
    tensors = load_dir(ct_dir)
    modules = sorted(k[: -len(".bitmask")] for k in tensors if k.endswith(".bitmask"))
    decoded = {}
    for module in modules:
        dense, mask = numpy_decode(tensors, module)
        assert torch.equal(library_decode(tensors, module).view(torch.uint8), dense.view(torch.uint8)), module
        assert module + ".weight" not in tensors and module + ".weight_packed" not in tensors, module
        decoded[module] = dense
    return qc, tensors, decoded


def forward_logits(tmp_path, **paths):
    """`lathe forward` logits of each named checkpoint on the same token rows."""
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"ids": IDS}))
    logits = {}
    for name, path in paths.items():
        run_lathe("forward", path, "--tokens", tokens, "--out", tmp_path / f"{name}.bin")
        logits[name] = np.fromfile(tmp_path / f"{name}.bin", dtype=np.float32)
    return logits


def check_sparsity_config(qc, expected_format, modules):
    from compressed_tensors.config import SparsityCompressionConfig
    from compressed_tensors.utils.match import match_name

    sc = qc["sparsity_config"]
    assert set(sc) == {"format", "targets", "ignore", "global_sparsity", "sparsity_structure"}, sc
    assert sc["format"] == expected_format and sc["sparsity_structure"] == "2:4" and sc["ignore"] is None
    assert 0.5 <= sc["global_sparsity"] < 0.75, sc
    config = SparsityCompressionConfig.load_from_registry(sc["format"], **sc)  # 0.20 still parses it
    assert config.format == expected_format
    for module in modules:
        assert any(match_name(module, t) for t in sc["targets"]), module
    for other in ("lm_head", "model.layers.0.block_sparse_moe.gate", "model.layers.0.mlp.gate"):
        assert not any(match_name(other, t) for t in sc["targets"]), other


@pytest.mark.parametrize("model,case", CASES)
def test_the_export_decodes_to_lathes_weights(model, case, outs):
    out = outs(model, case)
    qc, tensors, decoded = decode_export(out / "ct")
    pruned = sparse24_weights(out)  # OUT/model's, fused experts split per expert
    sparse = set(pruned)
    assert sparse and all(m.endswith(".weight") for m in sparse)
    if case == "prune":
        # Sparsity only: no quantization keys at all (compressed-tensors ≤ 0.14 rejects them).
        assert not (out / "quant").exists()
        assert set(qc) == {"quant_method", "sparsity_config"} and qc["quant_method"] == "compressed-tensors"
        assert {m + ".weight" for m in decoded} == sparse
        for module, w in decoded.items():
            ref = pruned[module + ".weight"]
            assert w.dtype == ref.dtype == torch.bfloat16, module
            assert torch.equal(w.view(torch.int16), positive_zeros(ref).view(torch.int16)), module  # bit for bit
        check_sparsity_config(qc, "sparse-24-bitmask", decoded)
    elif case == "w8a8":
        from compressed_tensors.compressors.base import BaseCompressor
        from compressed_tensors.quantization import QuantizationConfig

        config = QuantizationConfig.model_validate(qc)  # 0.20 accepts a config with sparsity_config
        (scheme,) = config.config_groups.values()
        assert scheme.format == "int-quantized" and scheme.input_activations.num_bits == 8
        exact = per_expert(sidecar_weights(out), None)
        assert {m + ".weight" for m in decoded} == sparse and sparse <= set(exact)
        compressor = BaseCompressor.get_value_from_registry("int-quantized")
        for module, w in decoded.items():
            assert w.dtype == torch.int8, module
            scale = tensors[module + ".weight_scale"]
            fp32 = compressor.decompress({"weight": w, "weight_scale": scale.float()}, scheme)["weight"]
            assert torch.equal(fp32, exact[module + ".weight"]), module  # bit for bit, fp32
            got = compressor.decompress({"weight": w, "weight_scale": scale}, scheme)["weight"]
            assert torch.equal(got, pruned[module + ".weight"]), module  # the model dtype, as OUT/model
            assert not any(module == i for i in qc["ignore"])
        check_sparsity_config(qc, "sparse-24-bitmask", decoded)
    else:
        from test_export import ct_decompress

        assert not decoded and qc["format"] == "pack-quantized"
        _, fp32 = ct_decompress(out / "ct", torch.float32)
        exact = per_expert(sidecar_weights(out), None)
        assert set(fp32) == sparse
        for name, w in fp32.items():
            assert torch.equal(w, exact[name]), name
            assert ((w == 0).reshape(w.shape[0], -1, 4).sum(-1) >= 2).all(), name
        check_sparsity_config(qc, "dense", [n[: -len(".weight")] for n in fp32])
    # A dense weight is left only for what is not 2:4: routers, and the head.
    dense_linears = {k for k in tensors if k.endswith("_proj.weight") or ".experts." in k and k.endswith(".weight")}
    assert not dense_linears, sorted(dense_linears)[:4]


MIXED = ["magnitude: {pattern: '2:4'}",
         "rtn: {bits: 8, group-size: -1}\n    overrides:\n      - {match: 'model\\.layers\\.1\\.mlp\\..*', skip: true}"]


def test_a_mixed_export_lists_unquantized_2_4_modules_in_ignore(tmp_path):
    """2:4 everywhere, 8-bit weight-only (pack-quantized) except layer 1's MLP: those three are
    bitmask-compressed and ignored by the quantization config; the others keep their packed layout
    and are sparsity targets too."""
    from compressed_tensors.quantization import QuantizationConfig
    from compressed_tensors.utils.match import match_name

    recipe = tmp_path / "mixed.yaml"
    recipe.write_text(recipe_text(MODELS / "llama", tmp_path / "out", MIXED, tasks=("prose",), samples=4,
                                  seq_len=64, export="[compressed-tensors]"))
    run_lathe("run", recipe)
    out = tmp_path / "out"
    qc, tensors, decoded = decode_export(out / "ct")
    mlp1 = {f"model.layers.1.mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj")}
    assert set(decoded) == mlp1
    pruned = sparse24_weights(out)
    for module, w in decoded.items():
        assert torch.equal(w.view(torch.int16), positive_zeros(pruned[module + ".weight"]).view(torch.int16))
    config = QuantizationConfig.model_validate(qc)
    for module in mlp1:
        assert any(match_name(module, i) for i in config.ignore), module
    packed = {k[: -len(".weight_packed")] for k in tensors if k.endswith(".weight_packed")}
    assert len(packed) == 25 and not packed & mlp1
    check_sparsity_config(qc, "sparse-24-bitmask", packed | mlp1)
    logits = forward_logits(tmp_path, out=out, ct=out / "ct")
    assert np.array_equal(logits["out"], logits["ct"])
    proc = run_lathe("verify", out / "ct", "--json", tmp_path / "verify.json", "--quiet")
    report = json.loads((tmp_path / "verify.json").read_text())
    assert report["failed"] == 0 and report["skipped"] == 0, proc.stdout
    assert {c["format"] for c in report["cases"]} == {"sha256", "ct-sparse24", "ct-packed-int8-g-1"}


@pytest.mark.parametrize("model,case", CASES)
def test_lathe_reads_the_export_back_to_the_same_logits(model, case, outs, tmp_path):
    out = outs(model, case)
    logits = forward_logits(tmp_path, out=out, ct=out / "ct")
    assert np.array_equal(logits["out"], logits["ct"])


def test_eval_perplexity_is_the_same(outs, tmp_path):
    out = outs("llama", "prune")
    got = {}
    for name, path in (("out", out), ("ct", out / "ct")):
        report = tmp_path / f"{name}.json"
        run_lathe("eval", path, "--text", PROSE, "--seq-len", "64", "--json", report)
        got[name] = json.loads(report.read_text())
    assert got["out"]["perplexity"] == got["ct"]["perplexity"], (got["out"], got["ct"])


@pytest.mark.parametrize("model,case", CASES)
def test_verify_passes_on_the_sparse_exports(model, case, outs):
    out = outs(model, case)
    report_file = out.parent / f"verify-{case}.json"
    proc = run_lathe("verify", out, "--json", report_file, "--quiet")
    report = json.loads(report_file.read_text())
    assert report["failed"] == 0, proc.stdout
    cases = [c for c in report["cases"] if c["format"] not in ("sha256", "moe", "moe-w8a8")]
    formats = {c["format"] for c in cases}
    expected = {"prune": {"ct-sparse24"}, "w8a8": {"ct-int8-w8a8-s24"}, "w4": {"ct-packed-int4-g32"}}[case]
    assert formats == expected, formats
    assert all(c["status"] == "ok" for c in report["cases"]), [c for c in report["cases"] if c["status"] != "ok"]
    # Every 2:4 linear has golden vectors, with its sparsity.
    import h5py

    golden = {}
    for path in sorted((out / "verify").glob("layer_*.h5")):
        with h5py.File(path, "r") as f:
            golden.update({m: dict(g.attrs) for m, g in f["linears"].items()})
    assert {m + ".weight" for m in golden} == sparse24_records(out)
    assert all(a["sparsity"] == "2:4" for a in golden.values())
    if case == "prune":
        assert all(a["bits"] == 16 and a["act_bits"] == 0 for a in golden.values())
    if model != "llama":
        assert any(c["format"].startswith("moe") and c["status"] == "ok" for c in report["cases"])


def flip(export, tensor, at):
    from test_verify import flip_byte

    flip_byte(export, tensor, at=at)


@pytest.mark.parametrize("case,tensor", [("prune", "compressed"), ("prune", "bitmask"), ("w8a8", "compressed"),
                                         ("w8a8", "bitmask")])
def test_a_flipped_byte_fails_naming_the_module(case, tensor, outs, tmp_path):
    out = outs("llama", case)
    module = "model.layers.2.mlp.up_proj"
    for manifest in (True, False):
        copy = tmp_path / f"ct-{manifest}"
        shutil.copytree(out / "ct", copy)
        if not manifest:
            (copy / "lathe_export.json").unlink()  # only the decoding and the kernels check
        flip(copy, f"{module}.{tensor}", at=3)
        report_file = tmp_path / f"verify-{manifest}.json"
        proc = run_lathe("verify", copy, "--json", report_file, "--quiet", check=False)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        report = json.loads(report_file.read_text())
        failed = sorted((c["name"], c["format"] == "sha256") for c in report["cases"] if c["status"] == "fail")
        assert failed == ([(module, False), (module, True)] if manifest else [(module, False)]), failed
        assert module in proc.stderr


def test_verify_fails_a_2_4_module_stored_dense(outs, tmp_path):
    """The golden vectors say 2:4: a compressed-tensors export that holds the module as a plain
    weight (the same values) fails, naming it, though its kernels would compute the same."""
    out = outs("llama", "prune")
    copy = tmp_path / "ct"
    shutil.copytree(out / "ct", copy)
    (copy / "lathe_export.json").unlink()
    module = "model.layers.3.self_attn.k_proj"
    index_file = copy / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    shard = copy / index["weight_map"][module + ".bitmask"]
    tensors = load_file(shard)
    dense, _ = numpy_decode(tensors, module)
    for p in ("compressed", "bitmask", "shape"):
        del tensors[f"{module}.{p}"], index["weight_map"][f"{module}.{p}"]
    tensors[module + ".weight"] = dense
    index["weight_map"][module + ".weight"] = shard.name
    save_file(tensors, shard, metadata={"format": "pt"})
    index_file.write_text(json.dumps(index))
    proc = run_lathe("verify", copy, "--json", tmp_path / "verify.json", "--quiet", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    failed = [c for c in json.loads((tmp_path / "verify.json").read_text())["cases"] if c["status"] == "fail"]
    assert [(c["name"], c["note"]) for c in failed] == [
        (module, "lathe pruned it 2:4, but the export does not store it as sparse-24-bitmask")], failed


def test_a_corrupted_bitmask_is_a_data_error_naming_the_module(outs, tmp_path):
    out = outs("llama", "prune")
    copy = tmp_path / "ct"
    shutil.copytree(out / "ct", copy)
    module = "model.layers.1.self_attn.o_proj"
    index = json.loads((copy / "model.safetensors.index.json").read_text())["weight_map"]
    shard = copy / index[module + ".bitmask"]
    tensors = load_file(shard)
    bitmask = tensors[module + ".bitmask"].clone()
    bitmask[0, 0] |= 0x0F  # 4 bits in the first group of 4
    tensors[module + ".bitmask"] = bitmask
    save_file(tensors, shard, metadata={"format": "pt"})
    proc = run_lathe("eval", copy, "--text", PROSE, "--seq-len", "64", check=False)
    assert proc.returncode == 3, proc.stderr
    assert f"{module}.bitmask" in proc.stderr and "row 0, columns 0-3: 4 bits set" in proc.stderr, proc.stderr
    assert shard.name in proc.stderr


def test_an_export_of_nothing_it_can_store_is_refused(tmp_path):
    # Unstructured pruning and no quantization: neither quant/ nor a 2:4 tensor.
    recipe = tmp_path / "unstructured.yaml"
    recipe.write_text(f"model: {MODELS / 'llama'}\noutput: {tmp_path / 'out'}\ndevice: cpu\n"
                      "passes:\n  - magnitude: {sparsity: 0.5}\nexport: [hf]\n")
    run_lathe("run", recipe)
    proc = run_lathe("export", tmp_path / "out", "--format", "compressed-tensors", check=False)
    assert proc.returncode == 2 and "2:4" in proc.stderr and "quantizing pass" in proc.stderr, proc.stderr
    assert not (tmp_path / "out" / "ct").exists()
    proc = run_lathe("export", tmp_path / "out", "--format", "gptq", check=False)
    assert proc.returncode == 2 and "quant/ is missing" in proc.stderr, proc.stderr


def test_padding_dummies_of_2_4_experts_are_valid_bitmasks(tmp_path):
    """DeepSeek-V3 pruned to different expert counts per layer, 2:4 everywhere, exported padded: the
    dummy experts (zero weights) are stored like their layer's real ones, each group keeping its
    first two columns, and the export still gives OUT's logits and passes verify."""
    out = tmp_path / "out"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(recipe_text(MODELS / "deepseek_v3", out,
                                  ["experts-frequency: {keep: 0.5, mode: global}", "magnitude: {pattern: '2:4'}"],
                                  tasks=("prose",), samples=4, seq_len=64,
                                  export="{formats: [hf, compressed-tensors], pad-experts: true}"))
    run_lathe("run", recipe)
    padding = json.loads((out / "ct" / "expert_map.json").read_text())["padding"]
    assert padding and sum(padding.values()) > 0
    config = json.loads((out / "ct" / "config.json").read_text())
    _, tensors, decoded = decode_export(out / "ct")
    dummies = 0
    for layer, n in padding.items():
        for e in range(config["n_routed_experts"] - n, config["n_routed_experts"]):
            for proj in ("gate_proj", "up_proj", "down_proj"):
                module = f"model.layers.{layer}.mlp.experts.{e}.{proj}"
                assert module in decoded and not decoded[module].view(torch.int16).any(), module
                assert (tensors[module + ".bitmask"] == 0x33).all(), module  # columns 0, 1 of each group
                dummies += 1
    assert dummies == 3 * sum(padding.values())
    logits = forward_logits(tmp_path, out=out, hf=out / "hf", ct=out / "ct")
    # The padded exports agree exactly; padding moves OUT's logits by rounding only (docs/export.md).
    assert np.array_equal(logits["hf"], logits["ct"])
    assert np.abs(logits["ct"] - logits["out"]).max() < 1e-4
    proc = run_lathe("verify", out / "ct", "--json", tmp_path / "verify.json", "--quiet")
    report = json.loads((tmp_path / "verify.json").read_text())
    assert report["failed"] == 0, proc.stdout
    skipped = [c for c in report["cases"] if c["status"] == "skip"]
    assert all(".mlp.experts." in c["name"] and "no golden vectors" in c["note"] for c in skipped), skipped


LEGACY = os.environ.get("LATHE_CT_LEGACY_PYTHONPATH", "")


@pytest.mark.skipif(not LEGACY, reason="set LATHE_CT_LEGACY_PYTHONPATH to compressed-tensors 0.14 "
                    "(see ct_legacy_worker.py)")
@pytest.mark.parametrize("model,case", [c for c in CASES if c[1] != "w4"])
def test_compressed_tensors_0_14_decompresses_the_export(model, case, outs, tmp_path):
    """The true reference: compressed-tensors 0.14's ModelCompressor (sparse-24-bitmask decompressor,
    then its int-quantized decompressor) gives lathe's weights bit for bit."""
    out = outs(model, case)
    result = tmp_path / "legacy.safetensors"
    worker = Path(__file__).with_name("ct_legacy_worker.py")
    env = {**os.environ, "PYTHONPATH": LEGACY, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, worker, out / "ct", result], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.startswith("compressed-tensors 0.14"), proc.stdout
    got = load_file(result)
    _, _, decoded = decode_export(out / "ct")
    assert {k[: -len(".weight")] for k in got if k.endswith(".weight")} == set(decoded)
    pruned = sparse24_weights(out)
    exact = per_expert(sidecar_weights(out), None) if case == "w8a8" else {}
    for module, w in decoded.items():
        ref = got[module + ".weight"]
        assert ref.dtype == w.dtype and torch.equal(ref.view(torch.uint8), w.view(torch.uint8)), module
        if case == "prune":
            assert torch.equal(ref.view(torch.int16), positive_zeros(pruned[module + ".weight"]).view(torch.int16))
        else:
            assert torch.equal(got[module + ".dequantized"], exact[module + ".weight"]), module
