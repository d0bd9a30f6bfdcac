"""`lathe run` end to end on the tiny Mixtral recipe: the output directory, a compressed model that
transformers loads and whose perplexity equals `lathe eval`'s within 0.1%, kill-and-resume through
`lathe run` with byte-identical results (the killed run's lock taken over), a changed recipe refused,
one writer per output (run, apply, calibrate and export refuse an output another process holds),
--dry-run, and the gate's exit 1."""
import fcntl
import json
import math
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from reference import LATHE_BIN, SOURCE_DIR, hf_perplexity, THREADS

RECIPE = SOURCE_DIR / "recipes" / "tiny-mixtral-rtn.yaml"
MODEL = SOURCE_DIR / "data" / "models" / "mixtral"
HELDOUT = SOURCE_DIR / "data" / "corpora" / "prose" / "heldout.txt"
torch.set_num_threads(THREADS)

pytestmark = pytest.mark.skipif(not MODEL.is_dir(), reason="data/models/mixtral not built")


@pytest.fixture(scope="module")
def small_text(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "heldout-small.txt"
    path.write_text(HELDOUT.read_text()[:6000])
    return path


def run(out, *sets, env=None, extra=(), text=None, recipe=RECIPE):
    args = [LATHE_BIN, "run", recipe, "--set", f"output={out}", "--set", "calibration.samples=4",
            "--set", "calibration.seq-len=64"]
    if text:
        args += ["--set", f"eval.text=[{text}]", "--set", "eval.tasks=[]"]
    for s in sets:
        args += ["--set", s]
    return subprocess.run(list(map(str, [*args, *extra])), capture_output=True, text=True, env=env)


def tree(path, skip=("report", "eval_before.json", "eval_after.json")):
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(Path(path).rglob("*"))
            if p.is_file() and p.relative_to(path).parts[0] not in skip}


def test_run_writes_a_model_transformers_loads_with_lathe_eval_perplexity(tmp_path, small_text):
    out = tmp_path / "out"
    proc = run(out, text=small_text)
    assert proc.returncode == 0, proc.stderr
    assert "[run] pipeline: calibrate{" in proc.stderr and "drop-experts{keep=0:1:2:3:4:5}" in proc.stderr
    for name in ("model/config.json", "model/model.safetensors.index.json", "model/expert_map.json", "plan.json",
                 "lathe_manifest.json", "report/report.json", "report/report.md", "report/report.html"):
        assert (out / name).is_file(), name
    assert not (out / "stats.h5").exists()  # neither drop-experts nor rtn reads statistics: no observe stage
    assert not Path(str(out) + ".partial").exists()
    manifest = json.loads((out / "lathe_manifest.json").read_text())
    assert manifest["pipeline"].startswith("calibrate{")
    formats = {t["format"] for t in manifest["tensors"].values()}
    assert {"rtn-int4-g32-sym", "rtn-int8-g32-sym", "BF16"} <= formats
    assert manifest["tensors"]["model.layers.0.block_sparse_moe.experts.0.w2.weight"]["format"] == "rtn-int8-g32-sym"
    assert manifest["tensors"]["model.layers.1.block_sparse_moe.experts.0.w2.weight"]["format"] == "rtn-int4-g32-sym"
    assert "model.layers.1.block_sparse_moe.experts.7.w1.weight" in manifest["removed"]
    assert len(manifest["removed"]) == 4 * 2 * 3
    report = json.loads((out / "report" / "report.json").read_text())
    assert [l["experts_kept"] for l in report["layers"]] == [6, 6, 6, 6]
    assert report["eval"]["after"]["perplexity"]
    eval_after = json.loads((out / "eval_after.json").read_text())
    lathe_ppl = eval_after["perplexity"][small_text.name]
    hf_ppl = hf_perplexity(out / "model", small_text, eval_after["seq_len"])
    assert abs(lathe_ppl / hf_ppl - 1) < 1e-3, (lathe_ppl, hf_ppl)
    before = json.loads((out / "eval_before.json").read_text())["perplexity"][small_text.name]
    assert lathe_ppl != before  # compression changed the model


def recipe_without_eval(tmp_path):
    """The example recipe minus its eval and gate sections (resume is about the apply stage)."""
    text = RECIPE.read_text().split("\neval:")[0]
    text = text.replace("../", str(RECIPE.parent.parent) + "/")
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("kill_after", [0, 2])
def test_run_killed_during_apply_resumes_byte_identical(tmp_path, kill_after):
    recipe = recipe_without_eval(tmp_path)
    reference = tmp_path / "reference"
    proc = run(reference, recipe=recipe)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    env = dict(os.environ, LATHE_FAULT_KILL_AFTER_LAYER=str(kill_after))
    killed = run(out, env=env, recipe=recipe)
    assert killed.returncode == -9, killed.stderr
    assert not out.exists() and Path(str(out) + ".partial").exists()
    lock = Path(str(out) + ".lock")  # the killed run's: its PID inside, its flock gone with the process
    assert lock.read_text().strip().isdigit()
    # a changed recipe refuses to resume
    changed = run(out, "passes.rtn.bits=3", recipe=recipe)
    assert changed.returncode == 3 and "the pipeline changed" in changed.stderr, changed.stderr
    resumed = run(out, recipe=recipe)  # takes over the stale lock
    assert resumed.returncode == 0, resumed.stderr
    assert "[calibrate]" not in resumed.stderr  # no pass of this recipe reads statistics: no observe stage
    assert tree(out) == tree(reference)
    assert not lock.exists()


@contextmanager
def held_lock(output):
    """Holds the lock of `output` as another lathe would: flock on OUTPUT.lock, this PID inside."""
    with open(str(output) + ".lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield


def test_a_second_writer_of_one_output_is_refused_naming_the_first(tmp_path):
    """run, apply, calibrate and export each refuse an output another process is writing (exit 5,
    the holder's PID named) and write nothing; --dry-run and calibrate --check write nothing, so
    they do not lock."""
    out = tmp_path / "out"
    done = tmp_path / "done"
    assert run(done, recipe=recipe_without_eval(tmp_path)).returncode == 0
    pid = f"PID {os.getpid()}"
    with held_lock(out):
        proc = run(out)
        assert proc.returncode == 5 and pid in proc.stderr and str(out) in proc.stderr, proc.stderr
        proc = subprocess.run([LATHE_BIN, "apply", MODEL, "--plan", done / "plan.json", "--out", out],
                              capture_output=True, text=True)
        assert proc.returncode == 5 and pid in proc.stderr, proc.stderr
        assert not out.exists() and not Path(str(out) + ".partial").exists()
        assert run(out, extra=["--dry-run"]).returncode == 0
    stats = tmp_path / "stats.h5"
    with held_lock(stats):
        proc = subprocess.run([LATHE_BIN, "calibrate", MODEL, "--out", stats, "--data", f"prose={HELDOUT}",
                               "--samples", "2", "--seq-len", "32"], capture_output=True, text=True)
        assert proc.returncode == 5 and pid in proc.stderr, proc.stderr
        assert not list(tmp_path.glob("stats.h5*tmp*")) and not stats.exists()
    export = [LATHE_BIN, "export", done, "--format", "compressed-tensors"]  # the recipe wrote only hf
    with held_lock(done):
        proc = subprocess.run(export, capture_output=True, text=True)
        assert proc.returncode == 5 and pid in proc.stderr, proc.stderr
        assert not (done / "ct").exists() and not (done / "ct.partial").exists()
    proc = subprocess.run(export, capture_output=True, text=True)
    assert proc.returncode == 0 and (done / "ct").is_dir() and not Path(str(done) + ".lock").exists(), proc.stderr


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    proc = run(out, extra=["--dry-run"])
    assert proc.returncode == 0, proc.stderr
    assert "keep 6/8 experts, remove [6,7]" in proc.stdout
    assert "rtn-int4-g32-sym" in proc.stdout and "rtn-int8-g32-sym" in proc.stdout
    assert "MB →" in proc.stdout
    assert not out.exists() and not Path(str(out) + ".partial").exists()


def test_gate_failure_exits_1_and_keeps_the_output(tmp_path, small_text):
    out = tmp_path / "out"
    proc = run(out, "gate.max-ppl-increase=0.1%", text=small_text)
    assert proc.returncode == 1, proc.stderr
    assert "gate failed" in proc.stderr and "perplexity" in proc.stderr
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["gate"]["passed"] is False


def test_eval_after_has_the_kl_to_the_original_and_max_kl_gates_it(tmp_path, small_text):
    out = tmp_path / "out"
    proc = run(out, "gate.max-kl=1000", text=small_text)
    assert proc.returncode == 0, proc.stderr
    d = json.loads((out / "eval_after.json").read_text())["divergence"][small_text.name]
    assert d["kl"] > 1e-4 and 0 < d["top1"] < 1  # the compressed model really moved
    # The same numbers as `lathe eval OUT --reference ORIGINAL`, and the reference's perplexity is eval_before's.
    alone = tmp_path / "alone.json"
    proc_eval = subprocess.run([LATHE_BIN, "eval", out, "--reference", MODEL, "--text", small_text,
                                "--seq-len", str(json.loads((out / "eval_after.json").read_text())["seq_len"]),
                                "--json", alone], capture_output=True, text=True)
    assert proc_eval.returncode == 0, proc_eval.stderr
    assert json.loads(alone.read_text())["divergence"][small_text.name]["kl"] == pytest.approx(d["kl"], rel=1e-9)
    before = json.loads((out / "eval_before.json").read_text())["perplexity"][small_text.name]
    assert d["reference_perplexity"] == pytest.approx(before, rel=1e-9)
    # eval_before's perplexity (the reference's, from the same stream) equals a plain `lathe eval ORIGINAL`.
    plain = tmp_path / "plain.json"
    proc_plain = subprocess.run([LATHE_BIN, "eval", MODEL, "--text", small_text, "--seq-len",
                                 str(json.loads((out / "eval_after.json").read_text())["seq_len"]), "--json", plain],
                                capture_output=True, text=True)
    assert proc_plain.returncode == 0, proc_plain.stderr
    assert json.loads(plain.read_text())["perplexity"][small_text.name] == pytest.approx(before, rel=1e-9)
    assert f"KL to the original {small_text.name}" in proc.stdout
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["gate"]["max_kl"] == 1000 and report["gate"]["passed"] is True
    # A limit below the measured KL fails the gate (exit 1) with the file and both numbers named.
    out2 = tmp_path / "out2"
    proc = run(out2, f"gate.max-kl={d['kl'] / 2}", "gate.max-ppl-increase=1000%", text=small_text)
    assert proc.returncode == 1, proc.stderr
    assert f"KL to the original {small_text.name}" in proc.stderr and "nats/token" in proc.stderr
    report = json.loads((out2 / "report" / "report.json").read_text())
    assert report["gate"]["passed"] is False and any("KL" in f for f in report["gate"]["failures"])
    assert "max KL to the original" in (out2 / "report" / "report.md").read_text()
    # A negative limit is a recipe error naming the field.
    proc = run(tmp_path / "out3", "gate.max-kl=-1", text=small_text)
    assert proc.returncode == 2 and "max-kl" in proc.stderr, proc.stderr
