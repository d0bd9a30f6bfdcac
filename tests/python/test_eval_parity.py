"""`lathe eval` against transformers: perplexity on the same windows within 0.1%, task accuracy
equal to the same log-likelihood rule computed with transformers, and bad-input handling."""
import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from reference import SOURCE_DIR, run_lathe

MODELS = ["llama", "mixtral", "qwen3_moe", "deepseek_v3"]
SEQ_LEN = 128
TEXT = SOURCE_DIR / "data" / "corpora" / "prose" / "heldout.txt"
TASKS = SOURCE_DIR / "data" / "tasks" / "wordnet_definitions.jsonl"


def model_dir(name):
    path = SOURCE_DIR / "data" / "models" / name
    if not path.exists():
        pytest.fail(f"committed tiny model {name} is missing")
    return path


def reference_perplexity(model, ids, seq_len):
    """Consecutive non-overlapping windows, last kept if >= 2 tokens, each predicting tokens 2..n."""
    nll, predicted = 0.0, 0
    for begin in range(0, len(ids), seq_len):
        window = torch.tensor(ids[begin:begin + seq_len]).unsqueeze(0)
        if window.shape[1] < 2:
            continue
        with torch.no_grad():
            logp = model(window).logits.log_softmax(-1)[0, :-1]
        nll -= logp.gather(-1, window[0, 1:].unsqueeze(-1)).sum().item()
        predicted += window.shape[1] - 1
    return math.exp(nll / predicted), len(ids), predicted


@pytest.mark.parametrize("name", MODELS)
def test_perplexity_matches_transformers(name, tmp_path):
    path = model_dir(name)
    text = TEXT.read_text(encoding="utf-8")[:24000]
    (tmp_path / "text.txt").write_text(text, encoding="utf-8")
    run_lathe("eval", path, "--text", tmp_path / "text.txt", "--seq-len", SEQ_LEN, "--json", tmp_path / "r.json")
    got = json.loads((tmp_path / "r.json").read_text())
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ppl, tokens, predicted = reference_perplexity(model, ids, SEQ_LEN)
    assert got["tokens"]["text.txt"] == tokens
    assert got["predicted"]["text.txt"] == predicted
    assert abs(got["perplexity"]["text.txt"] - ppl) <= 1e-3 * ppl, (got["perplexity"], ppl)


def test_task_accuracy_matches_transformers(tmp_path):
    path = model_dir("qwen2")
    items = [json.loads(line) for line in TASKS.read_text().splitlines()[:40]]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(i) for i in items))
    run_lathe("eval", path, "--tasks", tmp_path / "t.jsonl", "--json", tmp_path / "r.json")
    got = json.loads((tmp_path / "r.json").read_text())["tasks"]["t.jsonl"]
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    correct = 0
    for item in items:
        ctx = tok(item["context"], add_special_tokens=False)["input_ids"]
        scores = []
        for choice in item["choices"]:
            whole = tok(item["context"] + choice, add_special_tokens=False)["input_ids"]
            cont = whole[len(ctx):] if whole[:len(ctx)] == ctx else tok(choice, add_special_tokens=False)["input_ids"]
            seq = torch.tensor(ctx + cont).unsqueeze(0)
            with torch.no_grad():
                logp = model(seq).logits.log_softmax(-1)[0, :-1]
            scores.append(logp[len(ctx) - 1:].gather(-1, seq[0, len(ctx):].unsqueeze(-1)).sum().item())
        correct += int(max(range(len(scores)), key=lambda i: (scores[i], -i)) == item["answer"])
    assert got["n"] == len(items)
    assert got["correct"] == correct


def test_bad_inputs(tmp_path):
    path = model_dir("llama")
    (tmp_path / "bad.jsonl").write_text('{"context": "a", "choices": ["b"], "answer": 0}\n')
    proc = run_lathe("eval", path, "--tasks", tmp_path / "bad.jsonl", check=False)
    assert proc.returncode == 3 and "bad.jsonl:1" in proc.stderr and "choices" in proc.stderr
    (tmp_path / "bad2.jsonl").write_text('{"context": "a", "choices": ["b", "c"], "answer": 2}\n')
    proc = run_lathe("eval", path, "--tasks", tmp_path / "bad2.jsonl", check=False)
    assert proc.returncode == 3 and "answer" in proc.stderr
    proc = run_lathe("eval", path, "--text", tmp_path / "missing.txt", check=False)
    assert proc.returncode == 5 and "missing.txt" in proc.stderr
    proc = run_lathe("eval", path, "--text", TEXT, "--seq-len", "1", check=False)
    assert proc.returncode == 2 and "seq-len" in proc.stderr
    proc = run_lathe("eval", path, check=False)
    assert proc.returncode == 2
