"""`lathe compare` on crafted eval JSONs, reports and output directories: the table, the --json
output and the exit codes 0 (pass), 1 (regression), 2 (usage), 3 (malformed input), 5 (missing)."""
import json
import shutil

import pytest

from reference import SOURCE_DIR, run_lathe

SAMPLE = SOURCE_DIR / "tests" / "data" / "report_sample.json"


def eval_json(path, perplexity, tasks, tokens=None):
    doc = {"model": "m", "seq_len": 512, "stride": 512, "perplexity": perplexity,
           "tokens": tokens or {name: 1000 for name in perplexity},
           "predicted": {name: 999 for name in perplexity},
           "tasks": {name: {"accuracy": acc, "n": 400, "correct": round(acc * 400)} for name, acc in tasks.items()},
           "lathe_version": "0.1.0"}
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def pair(tmp_path):
    a = eval_json(tmp_path / "base.json", {"wiki.txt": 10.0, "code.txt": 4.0}, {"cloze.jsonl": 0.75})
    b = eval_json(tmp_path / "new.json", {"wiki.txt": 10.25, "code.txt": 4.2}, {"cloze.jsonl": 0.7425})
    return a, b


def test_no_thresholds_only_prints(pair):
    proc = run_lathe("compare", *pair)
    lines = proc.stdout.splitlines()
    assert lines[3].split() == ["kind", "name", "A", "B", "change", "limit", "result"]
    rows = {line.split()[1]: line.split() for line in lines[4:7]}
    assert rows["wiki.txt"] == ["perplexity", "wiki.txt", "10.0000", "10.2500", "+2.50%", "-", "-"]
    assert rows["code.txt"][4] == "+5.00%"
    assert rows["cloze.jsonl"] == ["accuracy", "cloze.jsonl", "75.00%", "74.25%", "-0.75", "pp", "-", "-"]
    assert "nothing gated" in lines[-1]


def test_pass_and_regression_exit_codes(pair, tmp_path):
    a, b = pair
    ok = run_lathe("compare", a, b, "--max-ppl-increase", "5%", "--max-acc-drop", "1")
    assert ok.stdout.splitlines()[-1] == "PASS: 3 metric(s) within limits"
    bad = run_lathe("compare", a, b, "--max-ppl-increase", "0.03", "--max-acc-drop", "0.5",
                    "--json", tmp_path / "cmp.json", check=False)
    assert bad.returncode == 1, bad.stderr
    assert "REGRESSION: perplexity code.txt: +5.00% > +3.00% allowed (4.0000 -> 4.2000)" in bad.stdout
    assert "REGRESSION: accuracy cloze.jsonl: -0.75 pp exceeds the allowed drop of 0.50 pp" in bad.stdout
    assert "wiki.txt" not in "".join(l for l in bad.stdout.splitlines() if l.startswith("REGRESSION"))
    assert "gate failed: 2 metric(s) regressed" in bad.stderr
    doc = json.loads((tmp_path / "cmp.json").read_text())
    assert doc["passed"] is False
    assert doc["thresholds"] == {"max_ppl_increase": 0.03, "max_acc_drop": 0.5}
    by_name = {m["name"]: m for m in doc["metrics"]}
    assert by_name["code.txt"]["regression"] is True and by_name["wiki.txt"]["regression"] is False
    assert by_name["code.txt"]["delta"] == pytest.approx(0.05)
    assert by_name["cloze.jsonl"]["kind"] == "accuracy" and by_name["cloze.jsonl"]["delta"] == pytest.approx(-0.75)


def test_boundary_is_not_a_regression(tmp_path):
    a = eval_json(tmp_path / "a.json", {"wiki.txt": 10.0}, {"t.jsonl": 0.75})
    b = eval_json(tmp_path / "b.json", {"wiki.txt": 10.3}, {"t.jsonl": 0.74})
    assert run_lathe("compare", a, b, "--max-ppl-increase", "3%", "--max-acc-drop", "1").returncode == 0
    c = eval_json(tmp_path / "c.json", {"wiki.txt": 10.3001}, {"t.jsonl": 0.74})
    assert run_lathe("compare", a, c, "--max-ppl-increase", "3%", check=False).returncode == 1


@pytest.mark.parametrize("flag,value", [("--max-ppl-increase", "3%%"), ("--max-ppl-increase", "3"),
                                        ("--max-ppl-increase", "-1%"), ("--max-acc-drop", "1%"),
                                        ("--max-acc-drop", "one")])
def test_bad_threshold_is_a_usage_error(pair, flag, value):
    proc = run_lathe("compare", *pair, flag, value, check=False)
    assert proc.returncode == 2, proc.stderr
    assert flag in proc.stderr


def test_missing_argument_is_a_usage_error():
    assert run_lathe("compare", check=False).returncode == 2


def test_malformed_and_missing_inputs(pair, tmp_path):
    a, _ = pair
    broken = tmp_path / "broken.json"
    broken.write_text('{"perplexity": {"wiki.txt": "high"}}')
    proc = run_lathe("compare", a, broken, check=False)
    assert proc.returncode == 3 and "perplexity.wiki.txt" in proc.stderr, proc.stderr
    dup = tmp_path / "dup.json"
    dup.write_text('{"perplexity": {"w": 1.0, "w": 2.0}}')
    assert run_lathe("compare", a, dup, check=False).returncode == 3
    assert run_lathe("compare", a, tmp_path / "absent.json", check=False).returncode == 5
    empty_dir = tmp_path / "not-an-output"
    empty_dir.mkdir()
    proc = run_lathe("compare", a, empty_dir, check=False)
    assert proc.returncode == 5 and "report/report.json" in proc.stderr


def test_only_in_one_side_and_token_warning(tmp_path):
    a = eval_json(tmp_path / "a.json", {"wiki.txt": 10.0, "old.txt": 3.0}, {}, tokens={"wiki.txt": 1000, "old.txt": 5})
    b = eval_json(tmp_path / "b.json", {"wiki.txt": 10.0, "new.txt": 3.0}, {"t.jsonl": 0.5},
                  tokens={"wiki.txt": 998, "new.txt": 5})
    out = run_lathe("compare", a, b, "--max-ppl-increase", "1%").stdout
    assert "only in A: perplexity old.txt" in out
    assert "only in B: perplexity new.txt" in out
    assert "only in B: accuracy t.jsonl" in out
    assert "warning: wiki.txt: A has 1000 tokens, B 998" in out
    # thresholds but no shared metric: refuse to pass vacuously
    c = eval_json(tmp_path / "c.json", {"other.txt": 1.0}, {})
    assert run_lathe("compare", a, c, "--max-ppl-increase", "1%", check=False).returncode == 3


def test_output_directory_and_report_inputs(tmp_path):
    out = tmp_path / "out"
    (out / "report").mkdir(parents=True)
    shutil.copy(SAMPLE, out / "report" / "report.json")
    sample = json.loads(SAMPLE.read_text())
    base = tmp_path / "base.json"
    base.write_text(json.dumps(sample["eval"]["before"]))
    # thresholds from the report's gate (5%, 2 pp): prose.txt +4.30%, accuracies -1.00 pp pass
    proc = run_lathe("compare", base, out)
    assert f"B: {out / 'report' / 'report.json'} (eval.after)" in proc.stdout
    assert "+4.30%" in proc.stdout and proc.stdout.splitlines()[-1] == "PASS: 4 metric(s) within limits"
    # a flag overrides the report's limit for its kind only
    proc = run_lathe("compare", base, out / "report" / "report.json", "--max-ppl-increase", "4%", check=False)
    assert proc.returncode == 1 and "REGRESSION: perplexity prose.txt" in proc.stdout
    # one argument: the report's own before against after
    assert "PASS: 4 metric(s)" in run_lathe("compare", out).stdout
    # a report without an evaluation
    sample["eval"]["after"] = None
    (out / "report" / "report.json").write_text(json.dumps(sample))
    proc = run_lathe("compare", base, out, check=False)
    assert proc.returncode == 3 and "eval.after" in proc.stderr


def test_report_command_rerenders(tmp_path):
    (tmp_path / "report").mkdir()
    shutil.copy(SAMPLE, tmp_path / "report" / "report.json")
    proc = run_lathe("report", tmp_path)
    assert (tmp_path / "report" / "report.md").is_file() and (tmp_path / "report" / "report.html").is_file()
    assert "report.html" in proc.stdout
    bad = json.loads(SAMPLE.read_text())
    bad["layers"][2]["experts_kept"] = "five"
    (tmp_path / "report" / "report.json").write_text(json.dumps(bad))
    proc = run_lathe("report", tmp_path, check=False)
    assert proc.returncode == 3 and "layers[2].experts_kept" in proc.stderr
