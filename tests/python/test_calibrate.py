"""`lathe calibrate` as a user runs it: reuse without forward passes, refusal when one input changes
(a byte of a calibration file, an option, a weight), a SIGKILL mid-run that leaves no store behind
and a re-run equal to an uninterrupted one, the coverage report, and bad command lines."""
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest

from reference import LATHE_BIN, SOURCE_DIR, run_lathe

MODEL = SOURCE_DIR / "data" / "models" / "mixtral"
PROSE = SOURCE_DIR / "data" / "corpora" / "prose" / "train.txt"
CODE = SOURCE_DIR / "data" / "corpora" / "code" / "train.txt"
BASE = ["calibrate"]
SMALL = ["--samples", "4", "--seq-len", "64"]

pytestmark = pytest.mark.skipif(not MODEL.is_dir(), reason="data/models/mixtral not built")


def calibrate(model, out, *extra, data=None, check=True):
    data = data or [f"prose={PROSE}", f"code={CODE}"]
    args = [*BASE, model, "--out", out]
    for d in data:
        args += ["--data", d]
    return run_lathe(*args, *extra, check=check)


def summary(path):
    return json.loads(Path(path).read_text())


def h5_contents(path):
    """Every dataset's values and attributes, keyed by HDF5 path, plus the root attributes."""
    out = {}
    with h5py.File(path, "r") as f:
        out["/"] = {k: np.asarray(v).tolist() for k, v in f.attrs.items()}

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                attrs = {k: (v.decode() if isinstance(v, bytes) else np.asarray(v).tolist()) for k, v in obj.attrs.items()}
                out[name] = (np.asarray(obj[()]).tobytes(), str(obj.dtype), obj.shape, attrs)
        f.visititems(visit)
    return out


def test_rerun_reuses_the_store_without_forward_passes(tmp_path):
    out = tmp_path / "stats.h5"
    calibrate(MODEL, out, *SMALL, "--json", tmp_path / "first.json")
    first = summary(tmp_path / "first.json")
    assert not first["reused"]
    # 4 decoder layers × 1 micro-batch (8 samples ≤ micro-batch 8)
    assert first["layer_forwards"] == 4
    assert first["samples"] == 8 and first["tokens"] == 8 * 64
    before = out.read_bytes()
    proc = calibrate(MODEL, out, *SMALL, "--json", tmp_path / "second.json")
    second = summary(tmp_path / "second.json")
    assert second["reused"] and second["layer_forwards"] == 0
    assert second["statistics"] == first["statistics"]
    assert "no forward pass" in proc.stderr
    assert out.read_bytes() == before  # untouched
    # --check agrees, and a smaller micro-batch does not change what is stored (not an input)
    calibrate(MODEL, out, *SMALL, "--check")
    calibrate(MODEL, out, *SMALL, "--micro-batch", "3", "--check")


def test_one_changed_byte_of_a_calibration_file_is_refused(tmp_path):
    prose = tmp_path / "prose.txt"
    shutil.copy(PROSE, prose)
    out = tmp_path / "stats.h5"
    calibrate(MODEL, out, *SMALL, data=[f"prose={prose}"])
    data = bytearray(prose.read_bytes())
    pos = len(data) // 2
    while not chr(data[pos]).isalpha():
        pos += 1
    data[pos] = ord("x") if data[pos] != ord("x") else ord("y")
    prose.write_bytes(bytes(data))
    before = out.read_bytes()
    proc = calibrate(MODEL, out, *SMALL, "--check", data=[f"prose={prose}"], check=False)
    assert proc.returncode == 3, proc.stderr
    assert "calibration data changed" in proc.stderr and "prose.txt" in proc.stderr, proc.stderr
    # without --check and without --force: refused too, store untouched
    proc = calibrate(MODEL, out, *SMALL, data=[f"prose={prose}"], check=False)
    assert proc.returncode == 3 and "--force" in proc.stderr
    assert out.read_bytes() == before
    calibrate(MODEL, out, *SMALL, "--force", data=[f"prose={prose}"])
    calibrate(MODEL, out, *SMALL, "--check", data=[f"prose={prose}"])


@pytest.mark.parametrize("option,message", [
    (["--atopk", "5"], "collector options changed"),
    (["--seq-len", "32"], "seq_len"),
    (["--seed", "7"], "seed"),
])
def test_one_changed_option_is_refused(tmp_path, option, message):
    out = tmp_path / "stats.h5"
    calibrate(MODEL, out, *SMALL)
    args = list(SMALL)
    if option[0] in args:
        i = args.index(option[0])
        args[i + 1] = option[1]
    else:
        args += option
    proc = calibrate(MODEL, out, *args, "--check", check=False)
    assert proc.returncode == 3, proc.stderr
    assert message in proc.stderr, proc.stderr


def test_one_changed_weight_is_refused_and_names_the_layer(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(MODEL, model)
    out = tmp_path / "stats.h5"
    calibrate(model, out, *SMALL)
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_len])
    begin = header["model.layers.2.self_attn.q_proj.weight"]["data_offsets"][0]
    data[8 + header_len + begin + 34] ^= 1  # lowest mantissa bit of one bf16 weight
    weights.write_bytes(bytes(data))
    proc = calibrate(model, out, *SMALL, "--check", check=False)
    assert proc.returncode == 3, proc.stderr
    assert "model weights changed (first in decoder layer 2" in proc.stderr, proc.stderr
    assert "calibration data changed" not in proc.stderr


def run_until_killed(out, after_layers, extra):
    """Runs lathe calibrate until it SIGKILLs itself once `after_layers` layers are in its temporary
    store (LATHE_FAULT_KILL_AFTER_LAYER, docs/output.md): a kill sent from here would race the run,
    which on a loaded machine can finish first."""
    args = [LATHE_BIN, *BASE, MODEL, "--out", out, "--data", f"prose={PROSE}", "--data", f"code={CODE}", *extra]
    env = dict(os.environ, LATHE_FAULT_KILL_AFTER_LAYER=str(after_layers - 1))
    proc = subprocess.Popen(list(map(str, args)), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    _, stderr = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the run was not killed after layer {after_layers} (rc {proc.returncode})"
    assert stderr.count("[calibrate] layer ") == after_layers, stderr
    return proc.pid


@pytest.mark.parametrize("after_layers", [1, 3])
def test_sigkill_mid_run_leaves_no_store_and_a_rerun_equals_an_uninterrupted_run(tmp_path, after_layers):
    extra = ["--samples", "8", "--seq-len", "128", "--hessians", "attn.in,mlp.in,expert.act"]
    out = tmp_path / "stats.h5"
    pid = run_until_killed(out, after_layers, extra)
    assert not out.exists()
    temp = tmp_path / f"stats.h5.tmp-{pid}"
    assert temp.exists()
    # what the killed run left is not a store: lathe refuses it (incomplete, or an unfinished HDF5 file)
    refused = run_lathe("coverage", temp, check=False)
    assert refused.returncode == 3 and str(temp) in refused.stderr, refused.stderr
    proc = calibrate(MODEL, out, *extra)
    assert not temp.exists() and "interrupted run" in proc.stderr
    reference = tmp_path / "reference.h5"
    calibrate(MODEL, reference, *extra)
    assert h5_contents(out) == h5_contents(reference)
    assert out.read_bytes() == reference.read_bytes()


def test_coverage_report_counts_every_routed_token(tmp_path):
    out = tmp_path / "stats.h5"
    calibrate(MODEL, out, *SMALL, "--min-expert-tokens", "40")
    report = json.loads((tmp_path / "stats.coverage.json").read_text())
    config = json.loads((MODEL / "config.json").read_text())
    k, experts = config["num_experts_per_tok"], config["num_local_experts"]
    assert report["format"] == "lathe-coverage" and report["tasks"] == ["prose", "code"]
    assert [l["layer"] for l in report["layers"]] == list(range(config["num_hidden_layers"]))
    flagged = {(f["layer"], f["expert"], f["task"]) for f in report["flagged"]}
    for layer in report["layers"]:
        assert len(layer["experts"]) == experts
        for task in ("prose", "code"):
            tokens = layer["tokens"][task]
            assert tokens == 4 * 64
            # every token picks exactly k distinct experts
            assert sum(e["tokens"][task] for e in layer["experts"]) == k * tokens
            for e in layer["experts"]:
                threshold = max(40, -(-5 * tokens // 1000))
                assert ((layer["layer"], e["expert"], task) in flagged) == (e["tokens"][task] < threshold)
    # the stand-alone command reads the same numbers from the store
    proc = run_lathe("coverage", out, "--min-expert-tokens", "40", "--json", tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text()) == report
    assert "expert coverage" in proc.stdout


@pytest.mark.parametrize("args,code,needle", [
    (["--data", "prose"], 2, "needs a task label"),          # a text file without TASK= is refused
    (["--data", "=x.txt"], 2, "empty task label"),
    # a missing input is named with the others before anything runs (exit 2, like a recipe's)
    (["--data", "prose=/nonexistent/file.txt"], 2, "--data: no such file: /nonexistent/file.txt"),
    (["--data", f"prose={PROSE}", "--seq-len", "0"], 2, "seq_len"),
    (["--data", f"prose={PROSE}", "--hessians", "mlp.out"], 2, "mlp.out"),
    (["--data", f"prose={PROSE}", "--packing", "zip"], 2, "packing"),
    (["--data", f"prose={PROSE}", "--samples", "100000", "--seq-len", "2048"], 3, "prose"),
])
def test_bad_command_lines_are_refused_with_the_field_named(tmp_path, args, code, needle):
    out = tmp_path / "stats.h5"
    proc = run_lathe(*BASE, MODEL, "--out", out, *args, check=False)
    assert proc.returncode == code, proc.stderr
    assert needle in proc.stderr, proc.stderr
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_check_without_a_store_is_an_error(tmp_path):
    proc = calibrate(MODEL, tmp_path / "missing.h5", *SMALL, "--check", check=False)
    assert proc.returncode == 5 and "no statistics store" in proc.stderr
