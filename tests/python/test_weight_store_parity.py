"""lathe's WeightStore, through `lathe tensors --json --sha256 [--as f32]`, against the reference
reader (safetensors' `safe_open(..., framework="pt")`): the same tensor names, dtypes, shapes and
shards, the same stored bytes (SHA-256, bit for bit), and the same float32 conversion (SHA-256 of
the little-endian float32 values torch's `tensor.float()` gives).

Runs on synthetic files written here (every dtype, random bit patterns, misaligned data, shards,
malformed files) and on every model under data/models/ (skipped, saying so, before those exist)."""
import hashlib
import json
import struct
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from conftest import MODELS_DIR

DTYPE_NAMES = {
    torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16",
    torch.uint16: "U16", torch.float16: "F16", torch.bfloat16: "BF16", torch.int32: "I32",
    torch.uint32: "U32",
    torch.float32: "F32", torch.float64: "F64", torch.int64: "I64", torch.uint64: "U64",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}


def weight_dirs() -> list:
    """Subdirectories of data/models holding safetensors weights (single file or index)."""
    if not MODELS_DIR.is_dir():
        return []
    return sorted(p for p in MODELS_DIR.iterdir() if p.is_dir() and (
        (p / "model.safetensors").is_file() or (p / "model.safetensors.index.json").is_file()))


def pytest_generate_tests(metafunc):
    if "weights_dir" in metafunc.fixturenames:
        dirs = weight_dirs()
        skip = pytest.mark.skip(
            reason=f"no safetensors models under {MODELS_DIR} yet (run data/build_tiny_models.py)")
        params = [pytest.param(d, id=d.name) for d in dirs]
        params = params or [pytest.param(None, id="none", marks=skip)]
        metafunc.parametrize("weights_dir", params)


def shard_files(path: Path) -> dict:
    """tensor name → shard file, as the reference sees the checkpoint at `path`."""
    index = path / "model.safetensors.index.json"
    if (path / "model.safetensors").is_file() or not index.is_file():
        single = path / "model.safetensors" if path.is_dir() else path
        with safe_open(single, framework="pt") as f:
            return {name: single for name in f.keys()}
    weight_map = json.loads(index.read_text())["weight_map"]
    return {name: path / shard for name, shard in weight_map.items()}


def raw_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def reference_listing(path: Path) -> dict:
    """name → {dtype, shape, shard, bytes, raw, f32} read with safe_open."""
    out = {}
    by_shard = {}
    for name, shard in shard_files(path).items():
        by_shard.setdefault(shard, []).append(name)
    for shard, names in by_shard.items():
        with safe_open(shard, framework="pt") as f:
            assert set(names) <= set(f.keys()), f"{shard}: index lists tensors the shard lacks"
            for name in names:
                t = f.get_tensor(name)
                data = raw_bytes(t)
                out[name] = {
                    "dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "shard": shard.name,
                    "bytes": len(data), "raw": hashlib.sha256(data).hexdigest(),
                    "f32": hashlib.sha256(raw_bytes(t.float())).hexdigest(),
                }
    return out


def lathe_listing(lathe_bin: Path, path: Path, *extra: str) -> dict:
    proc = subprocess.run([str(lathe_bin), "tensors", str(path), "--json", "--sha256", *extra],
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"lathe tensors {path} exited {proc.returncode}: {proc.stderr}"
    return json.loads(proc.stdout)


def assert_parity(lathe_bin: Path, path: Path) -> dict:
    """Compares every tensor; returns lathe's raw listing for further checks."""
    reference = reference_listing(path)
    raw = lathe_listing(lathe_bin, path)
    f32 = lathe_listing(lathe_bin, path, "--as", "f32")
    assert raw["sha256_of"] == "raw" and f32["sha256_of"] == "f32"
    names = [t["name"] for t in raw["tensors"]]
    assert names == sorted(reference), "lathe lists the same tensors, sorted by name"
    mismatches = []
    for mine, mine_f32 in zip(raw["tensors"], f32["tensors"]):
        ref = reference[mine["name"]]
        got = {"dtype": mine["dtype"], "shape": mine["shape"], "shard": mine["shard"],
               "bytes": mine["bytes"], "raw": mine["sha256"], "f32": mine_f32["sha256"]}
        for key, value in got.items():
            if value != ref[key]:
                mismatches.append(f"{mine['name']}: {key} lathe={value} reference={ref[key]}")
    assert not mismatches, f"{path}: {len(mismatches)} mismatches:\n" + "\n".join(mismatches[:20])
    assert raw["total_bytes"] == sum(r["bytes"] for r in reference.values())
    return raw


def random_tensor(dtype: torch.dtype, shape: tuple, gen: torch.Generator) -> torch.Tensor:
    """Random bit patterns of `dtype` (NaN and inf included) in `shape`."""
    numel = 1
    for d in shape:
        numel *= d
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    size = torch.empty((), dtype=dtype).element_size()
    bits = torch.randint(0, 256, (numel * size,), dtype=torch.uint8, generator=gen)
    t = bits.view(dtype).reshape(shape).clone()
    if dtype == torch.float16:
        # torch's own float16 → float32 paths disagree on NaN bits (its scalar path returns
        # 0x7FFFFFFF, the vector path the quieted payload), so the f32 checksum cannot compare
        # them; raw bytes still do. lathe follows IEEE (quieted payload), checked in test_dtype.
        t[t.isnan()] = 0
    return t


def every_dtype_tensors(seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(257,), (3, 5, 7), (), (0, 4), (2, 1, 1, 1, 1, 1, 1, 3)]
    tensors = {}
    for dtype, name in DTYPE_NAMES.items():
        for i, shape in enumerate(shapes):
            tensors[f"t.{name.lower()}.{i}"] = random_tensor(dtype, shape, gen)
    inf, nan = float("inf"), float("nan")
    tensors["special.f32"] = torch.tensor([0.0, -0.0, inf, -inf, nan, 1e-45, 3.4e38, -1.5])
    tensors["special.bf16"] = torch.tensor([1e-40, inf, nan, -0.0], dtype=torch.bfloat16)
    tensors["special.f16"] = torch.tensor([6e-8, 65504.0, -inf, -0.0], dtype=torch.float16)
    tensors["special.f64"] = torch.tensor([1e300, -1e-300, nan, 3.4028235677973366e38],
                                          dtype=torch.float64)
    tensors["special.i64"] = torch.tensor([-(2**63), 2**63 - 1, 2**24 + 1, -3])
    return tensors


def write_raw(path: Path, header: dict, data: bytes, data_misalign: int = 0) -> Path:
    """A safetensors file with `header` space-padded so that the data buffer starts at an absolute
    offset ≡ data_misalign (mod 8)."""
    text = json.dumps(header, separators=(",", ":")).encode()
    while (8 + len(text)) % 8 != data_misalign:
        text += b" "
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


# --- synthetic checkpoints -----------------------------------------------------------------

def test_every_dtype_matches_reference(tmp_path, lathe_bin):
    save_file(every_dtype_tensors(), tmp_path / "model.safetensors", metadata={"format": "pt"})
    listing = assert_parity(lathe_bin, tmp_path)
    assert listing["sharded"] is False
    assert {t["dtype"] for t in listing["tensors"]} == set(DTYPE_NAMES.values())


def test_single_file_path_matches_reference(tmp_path, lathe_bin):
    path = tmp_path / "weights.safetensors"
    save_file(every_dtype_tensors(seed=1), path)
    assert_parity(lathe_bin, path)


@pytest.mark.parametrize("misalign", [1, 2, 3, 5])
def test_misaligned_data_matches_reference(tmp_path, lathe_bin, misalign):
    values = {"a.f32": torch.tensor([1.5, -2.0, 3.25]),
              "b.bf16": torch.tensor([1.0, -3.0], dtype=torch.bfloat16),
              "c.i64": torch.tensor([-(2**40), 7]), "d.f64": torch.tensor([0.1])}
    header, data = {}, b""
    for name, t in values.items():
        chunk = raw_bytes(t)
        header[name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [len(data), len(data) + len(chunk)]}
        data += chunk
    write_raw(tmp_path / "model.safetensors", header, data, misalign)
    assert_parity(lathe_bin, tmp_path)


def test_sharded_model_matches_reference(tmp_path, lathe_bin):
    tensors = every_dtype_tensors(seed=2)
    names = sorted(tensors)
    shards = [names[i::3] for i in range(3)]
    weight_map = {}
    for i, part in enumerate(shards):
        shard = f"model-{i + 1:05d}-of-00003.safetensors"
        save_file({n: tensors[n] for n in part}, tmp_path / shard, metadata={"format": "pt"})
        weight_map.update({n: shard for n in part})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    listing = assert_parity(lathe_bin, tmp_path)
    assert listing["sharded"] is True
    assert listing["shards"] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert listing["total_bytes"] == total


@pytest.mark.parametrize("max_shard_size", [None, "40KB"])
def test_transformers_checkpoint_matches_reference(tmp_path, lathe_bin, max_shard_size):
    """What save_pretrained writes (single file, or shards plus index), read back by both."""
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(tmp_path, **kwargs)
    listing = assert_parity(lathe_bin, tmp_path)
    assert listing["sharded"] is (max_shard_size is not None)
    if max_shard_size:
        assert len(listing["shards"]) > 1


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


MALFORMED = {
    "overlap": ({"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 4, 12)}, 12),
    "gap": ({"a": entry("F32", [1], 0, 4), "b": entry("F32", [1], 8, 12)}, 12),
    "size_mismatch": ({"a": entry("F32", [4], 0, 8)}, 8),
    "past_the_end": ({"a": entry("F32", [4], 0, 16)}, 8),
    "unknown_dtype": ({"a": entry("F17", [1], 0, 4)}, 4),
    "negative_dim": ({"a": entry("F32", [-1], 0, 4)}, 4),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_rejects_what_the_reference_rejects(tmp_path, lathe_bin, case):
    header, data_size = MALFORMED[case]
    path = write_raw(tmp_path / "model.safetensors", header, bytes(data_size))
    with pytest.raises(SafetensorError):
        with safe_open(path, framework="pt") as f:
            for name in f.keys():
                f.get_tensor(name)
    proc = subprocess.run([str(lathe_bin), "tensors", str(path)], capture_output=True, text=True)
    assert proc.returncode == 3, f"{case}: expected a data error (exit 3), got {proc.returncode}"
    assert str(path) in proc.stderr, f"the error names the file: {proc.stderr}"


# --- the test models -----------------------------------------------------------------------

def test_model_matches_reference(lathe_bin, weights_dir):
    assert_parity(lathe_bin, weights_dir)


def test_sharded_fixture_model_is_read_as_sharded(lathe_bin):
    sharded = MODELS_DIR / "llama-sharded"
    if not (sharded / "model.safetensors.index.json").is_file():
        pytest.skip(f"{sharded} does not exist yet (run data/build_tiny_models.py)")
    listing = assert_parity(lathe_bin, sharded)
    assert listing["sharded"] is True and len(listing["shards"]) >= 3
    single = MODELS_DIR / "llama"
    if (single / "model.safetensors").is_file():
        # The same weights, sharded differently: identical names, dtypes, shapes and bytes.
        def strip(tensors):
            return [{k: t[k] for k in ("name", "dtype", "shape", "sha256")} for t in tensors]
        assert strip(listing["tensors"]) == strip(lathe_listing(lathe_bin, single)["tensors"])
