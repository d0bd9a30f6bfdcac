"""Decompresses a compressed-tensors checkpoint's sparse-24-bitmask modules with compressed-tensors
0.14, the last release with the sparse compressors (0.15 removed them; the project pins 0.20). Started
by test_ct_sparse.py with LATHE_CT_LEGACY_PYTHONPATH as PYTHONPATH, in the project's Python (0.14
runs with its torch). To get 0.14 without touching the project virtualenv:

    pip download --no-deps compressed-tensors==0.14.0.1 -d /tmp/ct014-wheel
    python3 -m zipfile -e /tmp/ct014-wheel/compressed_tensors-0.14.0.1-py3-none-any.whl ~/.cache/lathe/ct014
    LATHE_CT_LEGACY_PYTHONPATH=~/.cache/lathe/ct014 ctest -R py.test_ct_sparse

(or the `src/` of a checkout of its git tag 0.14.0; pip would refuse to install 0.14 into the
project venv, since it requires transformers < 5, which this module does not import.)

usage: ct_legacy_worker.py CT_DIR OUT.safetensors

Writes `<m>.weight`, the dense weight the sparse decompressor gives for every module stored as
sparse-24-bitmask (int8 for int-quantized ones), and for int-quantized modules `<m>.dequantized`,
the float32 weight of 0.14's int-quantized decompressor on it (with the scale in float32)."""
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import compressed_tensors
from compressed_tensors.compressors import ModelCompressor
from compressed_tensors.compressors.base import BaseCompressor

torch.set_num_threads(1)
ct_dir, out = Path(sys.argv[1]), sys.argv[2]
print("compressed-tensors", compressed_tensors.__version__)
qc = json.loads((ct_dir / "config.json").read_text())["quantization_config"]
compressor = ModelCompressor.from_compression_config(qc)
assert compressor.sparsity_compressor is not None, "no sparsity compressor"
assert compressor.sparsity_config.format == "sparse-24-bitmask", compressor.sparsity_config
index = json.loads((ct_dir / "model.safetensors.index.json").read_text())["weight_map"]
modules = {k[: -len(".bitmask")] for k in index if k.endswith(".bitmask")}
dense = {name: t for name, t in compressor.sparsity_compressor.decompress(str(ct_dir))
         if name.endswith(".weight") and name[: -len(".weight")] in modules}
assert {n[: -len(".weight")] for n in dense} == modules
result = dict(dense)
if compressor.quantization_config is not None:
    groups = [g for g in compressor.quantization_config.config_groups.values() if g.format == "int-quantized"]
    int8 = BaseCompressor.load_from_registry("int-quantized")
    from safetensors import safe_open
    for name, w in dense.items():
        if w.dtype != torch.int8:
            continue
        module = name[: -len(".weight")]
        with safe_open(ct_dir / index[module + ".weight_scale"], framework="pt") as f:
            scale = f.get_tensor(module + ".weight_scale").float()
        (group,) = groups
        result[module + ".dequantized"] = int8.decompress_weight(
            {"weight": w, "weight_scale": scale}, quantization_args=group.weights).float()
save_file({k: v.contiguous() for k, v in result.items()}, out)
