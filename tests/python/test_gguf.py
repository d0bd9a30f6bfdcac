"""GGUF reading (export/gguf.h, export/gguf_quants.h; FORMATS.md §5): `lathe tensors FILE.gguf`
lists what the `gguf` package's reader lists, and every tensor type lathe dequantizes (F32, F16,
BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K-Q6_K) gives exactly gguf.quants.dequantize's float32
values, bit for bit, on synthetic blocks that hit edge values (zero, negative zero, subnormal and
largest f16 scales, every code) and on every tensor of the real Gemma 3 270M file when setup has
installed it. Bad files are refused with lathe's exit codes, naming the file and the key or tensor,
and nothing is written."""
import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader
from gguf.quants import dequantize

from reference import SOURCE_DIR, run_lathe

DATA_ERROR, UNSUPPORTED = 3, 4
GEMMA = Path(os.environ.get("LATHE_MODELS_DIR", Path.home() / ".cache" / "lathe" / "models")) / "gemma-3-270m-q4_k_m.gguf"
BLOCK = {T.F32: (1, 4), T.F16: (1, 2), T.BF16: (1, 2), T.Q4_0: (32, 18), T.Q4_1: (32, 20), T.Q5_0: (32, 22),
         T.Q5_1: (32, 24), T.Q8_0: (32, 34), T.Q2_K: (256, 84), T.Q3_K: (256, 110), T.Q4_K: (256, 144),
         T.Q5_K: (256, 176), T.Q6_K: (256, 210)}
# Where each block type keeps its f16 scale fields (byte offsets in the block).
HALF_FIELDS = {T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0], T.Q2_K: [80, 82],
               T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}
EDGE_HALVES = [0x0000, 0x8000, 0x0001, 0x8001, 0x03FF, 0x0400, 0x7BFF, 0xFBFF, 0x3C00, 0xBC00]  # ±0, subnormals, ±max, ±1


# ---- a minimal GGUF writer (independent of lathe; malformed files are made by editing its output) --

def gguf_string(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


def gguf_value(kind: int, value) -> bytes:
    fmt = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
    if kind == 8:
        return gguf_string(value.encode() if isinstance(value, str) else value)
    if kind == 9:
        element, items = value
        return struct.pack("<IQ", element, len(items)) + b"".join(gguf_value(element, v)[0:] for v in items)
    return struct.pack(fmt[kind], value)


def build_gguf(tensors, metadata=(), version=3, alignment=32, offsets=None) -> bytes:
    """tensors: [(name, dims (ggml order), type id, raw bytes)]; metadata: [(key, kind, value)]."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(metadata))
    for key, kind, value in metadata:
        out += gguf_string(key.encode()) + struct.pack("<I", kind) + gguf_value(kind, value)
    data, placed = b"", []
    for name, dims, kind, raw in tensors:
        data += b"\0" * (-len(data) % alignment)
        placed.append(len(data))
        data += raw
    for i, (name, dims, kind, raw) in enumerate(tensors):
        offset = placed[i] if offsets is None else offsets[i]
        out += gguf_string(name.encode()) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        out += struct.pack("<IQ", kind, offset)
    out += b"\0" * (-len(out) % alignment)
    return out + data


def random_blocks(kind, blocks, rng) -> bytes:
    """`blocks` blocks of random bytes whose f16 scales are finite: random, then the edge values."""
    size, nbytes = BLOCK[kind]
    raw = bytearray(rng.integers(0, 256, blocks * nbytes, dtype=np.uint8).tobytes())
    for b in range(blocks):
        for k, at in enumerate(HALF_FIELDS.get(kind, [])):
            if b < len(EDGE_HALVES):
                half = EDGE_HALVES[(b + k) % len(EDGE_HALVES)]
            else:
                half = int(np.float16(rng.normal(0, 0.05)).view(np.uint16))
            raw[b * nbytes + at: b * nbytes + at + 2] = struct.pack("<H", half)
    return bytes(raw)


def plain_values(kind, count, rng) -> bytes:
    values = np.concatenate([np.array([0.0, -0.0, 1e-40, -1e-40, 65504, -65504, 3.4e38, 1.0], np.float32),
                             rng.normal(0, 1, count - 8).astype(np.float32)])
    if kind == T.F32:
        return values.tobytes()
    if kind == T.F16:
        with np.errstate(over="ignore"):  # 3.4e38 becomes inf, on purpose
            return values.astype(np.float16).tobytes()
    return (values.view(np.uint32) >> 16).astype(np.uint16).tobytes()  # BF16 by truncation: any pattern


def reference_values(kind, raw: bytes, dims) -> np.ndarray:
    size, nbytes = BLOCK[kind]
    rows = int(np.prod(dims[1:])) if len(dims) > 1 else 1
    data = np.frombuffer(raw, dtype=np.uint8).reshape(rows, -1)
    return dequantize(data, kind).astype(np.float32).reshape(-1)


def lathe_values(path: Path, name: str, tmp_path: Path) -> np.ndarray:
    out = tmp_path / f"{name}.f32"
    run_lathe("tensors", path, "--dump", name, "--out", out)
    return np.fromfile(out, dtype="<f4")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """One tensor per supported type: 2-D, several rows, blocks with edge-value scales."""
    rng = np.random.default_rng(0)
    tensors, expected = [], {}
    for kind, (size, nbytes) in BLOCK.items():
        dims = [size * (4 if size == 256 else 8), 6] if size > 1 else [48, 5]
        blocks = dims[0] // size * dims[1]
        raw = plain_values(kind, dims[0] * dims[1], rng) if size == 1 else random_blocks(kind, blocks, rng)
        name = f"t.{kind.name.lower()}"
        tensors.append((name, dims, int(kind), raw))
        expected[name] = (kind, dims, raw)
    path = tmp_path_factory.mktemp("gguf") / "synthetic.gguf"
    path.write_bytes(build_gguf(tensors, [("general.architecture", 8, "test"), ("general.alignment", 4, 32)]))
    return path, expected


def test_the_synthetic_file_reads_as_the_gguf_package_reads_it(synthetic):
    path, expected = synthetic
    listing = json.loads(run_lathe("tensors", path, "--json").stdout)
    reader = GGUFReader(path)
    assert listing["format"] == "gguf" and listing["version"] == 3 and listing["metadata_keys"] == 2
    by_name = {t.name: t for t in reader.tensors}
    assert [t["name"] for t in listing["tensors"]] == [t.name for t in reader.tensors]
    for row in listing["tensors"]:
        ref = by_name[row["name"]]
        assert row["type"] == ref.tensor_type.name
        assert row["shape"] == list(reversed([int(d) for d in ref.shape]))
        assert row["offset"] == int(ref.data_offset) and row["bytes"] == int(ref.n_bytes)


def test_every_supported_type_dequantizes_bit_for_bit(synthetic, tmp_path):
    path, expected = synthetic
    for name, (kind, dims, raw) in expected.items():
        got, want = lathe_values(path, name, tmp_path), reference_values(kind, raw, dims)
        assert got.shape == want.shape, name
        same = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
        assert same.all(), f"{name}: {np.flatnonzero(~same)[:5]} {got[~same][:5]} vs {want[~same][:5]}"
        if kind in HALF_FIELDS:  # the edge-value blocks gave what they should: zeros and huge values
            assert (want == 0).any() and np.isfinite(want).all(), name
    # the sha256 of the dequantized values (lathe tensors --sha256 --as f32) is that of the same floats
    listing = json.loads(run_lathe("tensors", path, "--json", "--sha256", "--as", "f32").stdout)
    for row in listing["tensors"]:
        kind, dims, raw = expected[row["name"]]
        want = reference_values(kind, raw, dims)
        assert row["sha256"] == hashlib.sha256(want.astype("<f4").tobytes()).hexdigest(), row["name"]


def require_gemma():
    """The real model: scripts/test.sh (which sets LATHE_MODELS_DIR) fails without it, a bare pytest skips."""
    if GEMMA.is_file():
        return GEMMA
    if "LATHE_MODELS_DIR" in os.environ:
        pytest.fail(f"{GEMMA} is missing: scripts/setup.sh installs it")
    pytest.skip(f"{GEMMA} not installed (scripts/setup.sh)")


def test_every_gemma_tensor_dequantizes_bit_for_bit():
    require_gemma()
    listing = json.loads(run_lathe("tensors", GEMMA, "--json", "--sha256", "--as", "f32").stdout)
    reader = GGUFReader(GEMMA)
    rows = {r["name"]: r for r in listing["tensors"]}
    assert len(rows) == len(reader.tensors) == 236
    types = set()
    for t in reader.tensors:
        values = dequantize(t.data, t.tensor_type).astype("<f4")
        assert rows[t.name]["sha256"] == hashlib.sha256(values.tobytes()).hexdigest(), t.name
        types.add(t.tensor_type.name)
    assert {"F32", "Q8_0", "Q5_0", "Q4_K", "Q6_K"} <= types


# ---- bad files ------------------------------------------------------------------------------------

def small_file(**kw) -> bytes:
    raw = random_blocks(T.Q8_0, 2, np.random.default_rng(1))
    return build_gguf([("w", [32, 2], int(T.Q8_0), raw), ("b", [4], int(T.F32), b"\0" * 16)],
                      [("general.architecture", 8, "test")], **kw)


def refused(tmp_path, data: bytes, code: int, field: str, *words, args=()):
    """lathe tensors on `data` exits `code`, naming the file and `field` (lathe's `FILE: FIELD: message`)
    and saying `words`; nothing is written and the file is unchanged."""
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    before = sorted(tmp_path.iterdir())
    proc = run_lathe("tensors", path, *args, check=False)
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert f"{path}: {field}: " in proc.stderr and all(w in proc.stderr for w in words), proc.stderr
    assert sorted(tmp_path.iterdir()) == before and path.read_bytes() == data  # nothing written or changed
    return proc


def test_bad_files_are_refused_naming_file_and_field(tmp_path):
    good = small_file()
    refused(tmp_path, b"GGML" + good[4:], DATA_ERROR, "magic")
    refused(tmp_path, small_file(version=2), UNSUPPORTED, "version", "GGUF version 2")
    refused(tmp_path, small_file(version=7), DATA_ERROR, "version")
    refused(tmp_path, good[:40], DATA_ERROR, "metadata key 0", "truncated")
    refused(tmp_path, good[:-10], DATA_ERROR, "b", "past the end")                       # data cut short
    refused(tmp_path, small_file(offsets=[0, 1 << 40]), DATA_ERROR, "b", "past the end")  # offset out of range
    refused(tmp_path, small_file(offsets=[0, 8]), DATA_ERROR, "b", "alignment")
    refused(tmp_path, small_file(offsets=[0, 32]), DATA_ERROR, "b", "overlaps that of w")
    with_unknown_type = good.replace(struct.pack("<I", int(T.F32)) + struct.pack("<Q", 96), struct.pack("<I", 5) + struct.pack("<Q", 96))
    assert with_unknown_type != good
    refused(tmp_path, with_unknown_type, DATA_ERROR, "b", "unknown ggml type id 5")
    wrong_type = build_gguf([], [("general.alignment", 8, "32")])
    refused(tmp_path, wrong_type, DATA_ERROR, "general.alignment", "u32")
    refused(tmp_path, build_gguf([], [("general.alignment", 4, 24)]), DATA_ERROR, "general.alignment", "power of two")
    unknown_value = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + gguf_string(b"k") + struct.pack("<II", 13, 0)
    refused(tmp_path, unknown_value, DATA_ERROR, "k", "value type 13")
    refused(tmp_path, build_gguf([], [("k", 8, "x"), ("k", 8, "y")]), DATA_ERROR, "k", "duplicate")
    huge = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + gguf_string(b"k") + struct.pack("<IIQ", 9, 6, 1 << 60)
    refused(tmp_path, huge, DATA_ERROR, "k", "array of")
    refused(tmp_path, build_gguf([("w", [30, 2], int(T.Q8_0), b"\0" * 68)]), DATA_ERROR, "w", "block")
    refused(tmp_path, build_gguf([("w", [2**40, 2**40], int(T.F32), b"")]), DATA_ERROR, "w", "overflow")
    refused(tmp_path, build_gguf([("w", [4], 0, b"\0" * 16), ("w", [4], 0, b"\0" * 16)]), DATA_ERROR, "w", "duplicate")


def test_an_unsupported_type_is_listed_but_refused_when_its_values_are_needed(tmp_path):
    iq = build_gguf([("blk.0.ffn_down.weight", [256, 1], int(T.IQ2_XXS), b"\0" * 66)])
    path = tmp_path / "iq.gguf"
    path.write_bytes(iq)
    listing = json.loads(run_lathe("tensors", path, "--json").stdout)
    assert listing["tensors"][0]["type"] == "IQ2_XXS"
    refused(tmp_path, iq, UNSUPPORTED, "blk.0.ffn_down.weight", "IQ2_XXS", args=("--sha256", "--as", "f32"))


def test_a_tensor_with_a_zero_dimension_is_empty_not_an_error(tmp_path):
    """Found by fuzz_gguf: dequantizing [0, 32] F32 passed a null pointer to memcpy."""
    path = tmp_path / "empty.gguf"
    path.write_bytes(build_gguf([("w", [32, 0], int(T.F32), b""), ("q", [32, 0], int(T.Q8_0), b"")]))
    listing = json.loads(run_lathe("tensors", path, "--json", "--sha256", "--as", "f32").stdout)
    assert [(t["shape"], t["bytes"]) for t in listing["tensors"]] == [([0, 32], 0), ([0, 32], 0)]
    assert all(t["sha256"] == hashlib.sha256(b"").hexdigest() for t in listing["tensors"])
    run_lathe("tensors", path, "--dump", "q", "--out", tmp_path / "q.f32")
    assert (tmp_path / "q.f32").read_bytes() == b""
