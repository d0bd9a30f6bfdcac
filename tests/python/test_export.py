"""The packed exports of `lathe run` (recipe `export: [hf, gptq, compressed-tensors]`) against
reference decoders:

* compressed-tensors: the `compressed-tensors` package (pinned in requirements.txt) validates the
  quantization_config and decompresses every module with its own compressors; the result equals
  lathe's dequantized weights bit for bit (in fp32 from the sidecar out/quant, and in the model
  dtype as stored in out/model).
* GPTQ: an independent NumPy decoder of FORMATS.md §3 written here (not lathe's code) gives
  lathe's weights bit for bit, and a transformers model carrying them gives the logits of
  `lathe forward OUT/gptq` within 1e-3. The reference loaders need gptqmodel, which cannot share
  the project virtualenv (gptqmodel 7.7 needs torch >= 2.14.1; the project pins 2.11): with
  LATHE_GPTQ_PYTHON set (gptq_reference_worker.py says how), transformers + optimum + gptqmodel
  load a uniform export on the CPU and GPTQModel.load the mixed-precision one (`dynamic`), and
  both must give `lathe forward`'s logits within 1e-3 (measured: identical).
"""
import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file as load_torch

from reference import LATHE_BIN, SOURCE_DIR, THREADS

torch.set_num_threads(THREADS)
MIXTRAL_RECIPE = SOURCE_DIR / "recipes" / "tiny-mixtral-rtn.yaml"
LLAMA = SOURCE_DIR / "data" / "models" / "llama"

pytestmark = pytest.mark.skipif(not LLAMA.is_dir() or not (SOURCE_DIR / "data" / "models" / "mixtral").is_dir(),
                                reason="data/models not built")

LLAMA_RECIPE = """
model: {model}
output: {out}
device: cpu
passes:
  - rtn: {{bits: 4, group-size: 32}}
    overrides:
      - {{match: 'model\\.layers\\.0\\.mlp\\.down_proj', bits: 8, group-size: -1}}
      - {{match: 'model\\.layers\\.1\\.mlp\\..*', sym: false}}
      - {{match: 'model\\.layers\\.2\\.self_attn\\.k_proj', skip: true}}
      - {{match: 'model\\.layers\\.3\\.self_attn\\..*', bits: 2, group-size: 64}}
export: [hf, gptq, compressed-tensors]
"""


def lathe(*args):
    proc = subprocess.run([LATHE_BIN, *map(str, args)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def mixtral_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("mixtral") / "out"
    lathe("run", MIXTRAL_RECIPE, "--set", f"output={out}", "--set", "calibration.samples=4", "--set",
          "calibration.seq-len=64", "--set", "eval.text=[]", "--set", "eval.tasks=[]", "--set",
          "export=[hf,gptq,compressed-tensors]")
    return out


@pytest.fixture(scope="module")
def llama_out(tmp_path_factory):
    base = tmp_path_factory.mktemp("llama")
    recipe = base / "llama-rtn.yaml"
    recipe.write_text(LLAMA_RECIPE.format(model=LLAMA, out=base / "out"))
    lathe("run", recipe)
    return base / "out"


def load_dir(path):
    """Every tensor of a sharded checkpoint directory, as torch tensors."""
    index = json.loads((path / "model.safetensors.index.json").read_text())
    tensors = {}
    for shard in sorted(set(index["weight_map"].values())):
        tensors.update(load_torch(str(path / shard)))
    return tensors


def sidecar_weights(out):
    """lathe's exact fp32 value of every quantized tensor: scales[g_idx] * (codes - zeros)."""
    t = load_dir(out / "quant")
    result = {}
    for key in t:
        if not key.endswith(".qparams"):
            continue
        name = key[: -len(".qparams")]
        codes, scales, zeros = t[name + ".codes"].long(), t[name + ".scales"], t[name + ".zeros"].long()
        g = t[name + ".g_idx"].long()
        index = g.unsqueeze(-2).expand(*codes.shape)
        result[name] = torch.gather(scales, -1, index) * (codes - torch.gather(zeros, -1, index)).float()
    return result


def per_expert(sidecar, config):
    """Fused 3-D records split into per-expert names (the exports' layout)."""
    out = {}
    for name, w in sidecar.items():
        if w.dim() == 2:
            out[name] = w
            continue
        prefix = name.rsplit(".", 1)[0]
        for e in range(w.shape[0]):
            if name.endswith("gate_up_proj"):
                half = w.shape[1] // 2
                out[f"{prefix}.{e}.gate_proj.weight"] = w[e, :half]
                out[f"{prefix}.{e}.up_proj.weight"] = w[e, half:]
            else:
                out[f"{prefix}.{e}.down_proj.weight"] = w[e]
    return out


# ---- compressed-tensors -------------------------------------------------------------------


def ct_decompress(ct_dir, scale_dtype=None):
    """Decompress every quantized module of a compressed-tensors directory with the library."""
    from compressed_tensors.compressors.base import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig
    from compressed_tensors.utils.match import match_name

    qc = json.loads((ct_dir / "config.json").read_text())["quantization_config"]
    config = QuantizationConfig.model_validate(qc)
    tensors = load_dir(ct_dir)
    modules = {k[: -len(".weight_packed")] for k in tensors if k.endswith(".weight_packed")}
    modules |= {k[: -len(".weight")] for k, v in tensors.items() if k.endswith(".weight") and v.dtype == torch.int8}
    result = {}
    for module in sorted(modules):
        assert not any(match_name(module, t) for t in config.ignore), module
        schemes = [s for s in config.config_groups.values() if any(match_name(module, t) for t in s.targets)]
        assert len(schemes) == 1, (module, schemes)
        scheme = schemes[0]
        local = {k[len(module) + 1:]: v for k, v in tensors.items() if k.startswith(module + ".")}
        if scale_dtype is not None:
            local["weight_scale"] = local["weight_scale"].to(scale_dtype)
        compressor = BaseCompressor.get_value_from_registry(scheme.format)
        result[module + ".weight"] = compressor.decompress(local, scheme)["weight"]
    return qc, result


@pytest.mark.parametrize("which", ["mixtral", "llama"])
def test_compressed_tensors_decompresses_to_lathes_weights(which, request):
    out = request.getfixturevalue(f"{which}_out")
    qc, fp32 = ct_decompress(out / "ct", torch.float32)
    _, stored = ct_decompress(out / "ct")
    config = json.loads((out / "model" / "config.json").read_text())
    exact = per_expert(sidecar_weights(out), config)
    model = load_dir(out / "model")
    assert set(fp32) <= set(exact) and len(fp32) > 0
    for name, w in fp32.items():
        assert torch.equal(w, exact[name]), name  # bit for bit, fp32
        ref = model.get(name)
        if ref is None:  # fused source checkpoints store the 3-D tensor
            continue
        assert stored[name].dtype == ref.dtype and torch.equal(stored[name], ref), name  # model dtype
    # Modules lathe quantized but compressed-tensors cannot hold are ignored and stored dense.
    assert "lm_head" in qc["ignore"]
    if which == "llama":
        assert qc["format"] == "pack-quantized"
        assert "model.layers.2.self_attn.k_proj" in qc["ignore"]
        strategies = {(g["weights"]["num_bits"], g["weights"]["strategy"], g["weights"]["symmetric"])
                      for g in qc["config_groups"].values()}
        assert {(4, "group", True), (8, "channel", True), (4, "group", False), (2, "group", True)} <= strategies


# ---- GPTQ ---------------------------------------------------------------------------------


def unpack_bits(words, bits, count, axis):
    """FORMATS.md §3: along `axis`, value j lives at stream bits [bits*j, bits*j + bits) of the
    little-endian 32-bit words (3 bits straddle words)."""
    w = np.ascontiguousarray(np.moveaxis(words.astype(np.uint32), axis, -1))
    bitstream = np.unpackbits(w.view(np.uint8), axis=-1, bitorder="little")
    bitstream = bitstream[..., : count * bits].reshape(*bitstream.shape[:-1], count, bits)
    values = (bitstream.astype(np.int64) << np.arange(bits)).sum(-1)
    return np.moveaxis(values, -1, axis)


def gptq_decode(gptq_dir):
    """Every packed module of a GPTQ v1 directory, decoded with NumPy: W = s[g] * (q - (z + 1))."""
    qc = json.loads((gptq_dir / "config.json").read_text())["quantization_config"]
    tensors = {k: v.numpy() for k, v in load_dir(gptq_dir).items() if v.dtype in (torch.int32, torch.float16)}
    result = {}
    for key in sorted(k for k in tensors if k.endswith(".qweight")):
        module = key[: -len(".qweight")]
        bits = qc["bits"]
        for pattern, override in qc["dynamic"].items():
            if re.match(pattern[2:] if pattern[:2] in ("+:", "-:") else pattern, module):
                assert not pattern.startswith("-:"), (module, pattern)
                bits = override.get("bits", bits)
                break
        g_idx = tensors[module + ".g_idx"].astype(np.int64)
        scales = tensors[module + ".scales"].astype(np.float32)  # [G, out] fp16
        n_in, n_out = g_idx.shape[0], scales.shape[1]
        q = unpack_bits(tensors[key], bits, n_in, 0)  # [in, out]
        z = unpack_bits(tensors[module + ".qzeros"], bits, n_out, 1) + 1  # [G, out]
        w = scales[g_idx] * (q - z[g_idx]).astype(np.float32)
        result[module + ".weight"] = torch.from_numpy(np.ascontiguousarray(w.T))
    return qc, tensors, result


@pytest.mark.parametrize("which", ["mixtral", "llama"])
def test_gptq_decodes_to_lathes_weights(which, request):
    out = request.getfixturevalue(f"{which}_out")
    qc, _, decoded = gptq_decode(out / "gptq")
    config = json.loads((out / "model" / "config.json").read_text())
    exact = per_expert(sidecar_weights(out), config)
    assert set(decoded) == set(exact)
    for name, w in decoded.items():
        assert torch.equal(w, exact[name]), name
    assert json.loads((out / "gptq" / "quantize_config.json").read_text()) == qc
    assert qc["checkpoint_format"] == "gptq" and qc["meta"]["quantizer"][0].startswith("lathe:")
    assert list(qc["dynamic"])[-2:] == ["-:.*mlp\\.gate$", "-:.*shared_expert_gate$"]
    if which == "mixtral":
        # Layer 0's w2 experts are 8-bit under a base of 4-bit g32.
        assert (qc["bits"], qc["group_size"]) == (4, 32)
        assert qc["dynamic"]["+:model\\.layers\\.0\\.block_sparse_moe\\.experts\\.\\d+\\.w2$"]["bits"] == 8
    else:
        assert "-:model\\.layers\\.2\\.self_attn\\.k_proj$" in qc["dynamic"]


def test_gptq_logits_match_a_transformers_model_with_the_decoded_weights(llama_out, tmp_path):
    from transformers import AutoModelForCausalLM

    _, _, decoded = gptq_decode(llama_out / "gptq")
    model = AutoModelForCausalLM.from_pretrained(llama_out / "model", dtype=torch.float32).eval()
    state = model.state_dict()
    for name, w in decoded.items():
        assert state[name].shape == w.shape, name
        state[name].copy_(w)
    ids = [[1, 17, 250, 3999, 42, 7, 99, 1024], [5, 6, 7]]
    batch = torch.zeros(2, 8, dtype=torch.long)
    mask = torch.zeros_like(batch)
    for i, row in enumerate(ids):
        batch[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    with torch.no_grad():
        ref = model(input_ids=batch, attention_mask=mask).logits
    tokens, logits = tmp_path / "tokens.json", tmp_path / "logits.bin"
    tokens.write_text(json.dumps({"ids": ids}))
    lathe("forward", llama_out / "gptq", "--tokens", tokens, "--out", logits)
    got = torch.from_numpy(np.fromfile(logits, dtype=np.float32).reshape(ref.shape))
    err = max((got[i, :n] - ref[i, :n]).abs().max().item() for i, n in enumerate(map(len, ids)))
    assert err < 1e-3, err
    # The same forward on the lathe output directory (sidecar) and on the compressed-tensors export.
    for other in (llama_out, llama_out / "ct"):
        out_file = tmp_path / "other.bin"
        lathe("forward", other, "--tokens", tokens, "--out", out_file)
        assert np.array_equal(np.fromfile(out_file, dtype=np.float32), np.fromfile(logits, dtype=np.float32)), other


GPTQ_PYTHON = os.environ.get("LATHE_GPTQ_PYTHON", "")
needs_gptqmodel = pytest.mark.skipif(not GPTQ_PYTHON, reason="set LATHE_GPTQ_PYTHON to a Python with gptqmodel "
                                     "(see gptq_reference_worker.py)")
IDS = [[1, 17, 250, 3999, 42, 7, 99, 1024], [5, 6, 7]]


def reference_vs_lathe(mode, checkpoint, tmp_path, dtype):
    tokens, ref_file, got_file = tmp_path / "tokens.json", tmp_path / "ref.bin", tmp_path / "lathe.bin"
    tokens.write_text(json.dumps({"ids": IDS}))
    worker = Path(__file__).with_name("gptq_reference_worker.py")
    proc = subprocess.run([GPTQ_PYTHON, worker, mode, checkpoint, tokens, ref_file], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    lathe("forward", checkpoint, "--tokens", tokens, "--out", got_file, "--dtype", dtype)
    ref = np.fromfile(ref_file, dtype=np.float32).reshape(len(IDS), -1, 4096)
    got = np.fromfile(got_file, dtype=np.float32).reshape(ref.shape)
    assert ref[0].std() > 0.3
    return max(np.abs(got[i, :n] - ref[i, :n]).max() for i, n in enumerate(map(len, IDS)))


@needs_gptqmodel
def test_transformers_loads_a_uniform_gptq_export_on_cpu(tmp_path):
    base = tmp_path / "uniform"
    base.mkdir()
    recipe = base / "uniform.yaml"
    recipe.write_text(f"model: {LLAMA}\noutput: {base / 'out'}\ndevice: cpu\n"
                      "passes:\n  - rtn: {bits: 4, group-size: 32}\nexport: [hf, gptq]\n")
    lathe("run", recipe)
    assert reference_vs_lathe("transformers", base / "out" / "gptq", tmp_path, "f32") < 1e-3


@needs_gptqmodel
def test_gptqmodel_loads_the_mixed_precision_export_with_dynamic(llama_out, tmp_path):
    # 2-, 4- and 8-bit modules, asymmetric ones and a skipped k_proj: GPTQModel builds each from
    # `dynamic`; in bf16 both forwards round at the same places.
    assert reference_vs_lathe("gptqmodel", llama_out / "gptq", tmp_path, "bf16") < 1e-3


def test_export_cli_refuses_existing_target(llama_out):
    proc = subprocess.run([LATHE_BIN, "export", llama_out, "--format", "gptq"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--force" in proc.stderr
