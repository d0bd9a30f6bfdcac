"""A .gguf file wherever lathe takes MODEL (export/gguf_model_cache.h, docs/gguf.md): eval, forward,
inspect, tokenize, calibrate, run and plan read the directory the file imports to, imported once into
$LATHE_CACHE/gguf/ and found again by the file's path, size and modification time.

- a tiny Gemma-like file with random values: every command gives what it gives on the directory
  `lathe import --dtype f32` writes (perplexity, logits and tokens equal), the second command
  imports nothing, a touched file is imported again, concurrent first uses import once (a process
  finding the import's lock held waits for it), a bad file is refused naming the key with
  nothing left in the cache, an unusable cache is a resource error;
- the real Gemma 3 270M: `lathe eval FILE.gguf` on the start of the prose held-out file equals
  transformers loading the same GGUF file (`from_pretrained(dir, gguf_file=...)`) on the same
  BOS-prefixed windows, perplexity within 0.1 %."""
import json
import math
import os

import numpy as np
import pytest
import torch

from reference import SOURCE_DIR, THREADS, run_lathe
from test_gguf import GEMMA, require_gemma
from test_gguf_import import gemma_like

torch.set_num_threads(THREADS)
HELDOUT = SOURCE_DIR / "data" / "corpora" / "prose" / "heldout.txt"
DATA_ERROR, CONFIG_ERROR, UNSUPPORTED, RESOURCE_ERROR = 3, 2, 4, 5


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("LATHE_CACHE", str(path))
    return path


def cached(cache):
    root = cache / "gguf"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_a_gguf_file_works_as_model_in_every_command(tmp_path, cache):
    model = tmp_path / "tiny.gguf"
    model.write_bytes(gemma_like(np.random.default_rng(0)))
    reference = tmp_path / "imported"
    run_lathe("import", model, "--out", reference, "--dtype", "f32")
    text = tmp_path / "text.txt"
    text.write_text("ab a b ab ba " * 60)

    first = run_lathe("eval", model, "--text", text, "--seq-len", 32, "--json", tmp_path / "a.json")
    assert "importing it once" in first.stderr
    assert len(cached(cache)) == 1 and cached(cache)[0].startswith("tiny-")
    again = run_lathe("eval", model, "--text", text, "--seq-len", 32, "--json", tmp_path / "b.json")
    assert "importing" not in again.stderr and len(cached(cache)) == 1
    run_lathe("eval", reference, "--text", text, "--seq-len", 32, "--json", tmp_path / "r.json")
    got, want = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "r.json"))
    assert got["perplexity"] == want["perplexity"] and got["predicted"]["text.txt"] > 100
    assert math.isfinite(got["perplexity"]["text.txt"]) and got["perplexity"]["text.txt"] > 1.5
    assert got["model"] == str(model) and got["model_dir"] == str(cache / "gguf" / cached(cache)[0])

    ids = run_lathe("tokenize", model, "--text", "ab a b", "--json").stdout
    assert json.loads(ids) == json.loads(run_lathe("tokenize", reference, "--text", "ab a b", "--json").stdout)
    (tmp_path / "ids.json").write_text(json.dumps({"ids": [json.loads(ids)["ids"]]}))
    run_lathe("forward", model, "--tokens", tmp_path / "ids.json", "--out", tmp_path / "a.f32")
    run_lathe("forward", reference, "--tokens", tmp_path / "ids.json", "--out", tmp_path / "r.f32")
    assert (tmp_path / "a.f32").read_bytes() == (tmp_path / "r.f32").read_bytes()
    inspected = json.loads(run_lathe("inspect", model, "--json").stdout)
    assert inspected["family"] == "gemma3_text" and inspected["num_layers"] == 1

    run_lathe("calibrate", model, "--data", f"prose={text}", "--out", tmp_path / "stats.h5", "--samples", 4,
              "--seq-len", 16)
    assert (tmp_path / "stats.h5").stat().st_size > 0
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: {model}\noutput: {tmp_path / 'out'}\n"
                      f"calibration: {{seq-len: 16, samples: 4, sets: [{{task: prose, path: {text}}}]}}\n"
                      "passes:\n  - gptq: {bits: 4, group-size: 32}\n"
                      f"eval: {{text: [{text}], seq-len: 32}}\n")
    run_lathe("plan", recipe, "--out", tmp_path / "plan.json")
    assert json.loads((tmp_path / "plan.json").read_text())["tensors"]
    run_lathe("run", recipe)
    after = json.loads((tmp_path / "out" / "eval_after.json").read_text())
    assert after["divergence"]["text.txt"]["kl"] > 0  # 4-bit weights moved the outputs, a little
    assert after["divergence"]["text.txt"]["kl"] < 0.1
    assert len(cached(cache)) == 1  # every command found the same import

    os.utime(model, ns=(model.stat().st_atime_ns, model.stat().st_mtime_ns + 1_000_000_000))
    assert "importing it once" in run_lathe("inspect", model).stderr
    assert len(cached(cache)) == 2


def test_concurrent_first_uses_import_once(tmp_path, cache):
    """Four processes given the same new file at once: one imports, the others wait for its lock and
    read the same directory; no partial directory or lock is left."""
    import subprocess
    from reference import LATHE_BIN
    model = tmp_path / "tiny.gguf"
    model.write_bytes(gemma_like(np.random.default_rng(2)))
    procs = [subprocess.Popen([str(LATHE_BIN), "inspect", str(model), "--json"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [p.communicate() + (p.returncode,) for p in procs]
    assert all(code == 0 for _, _, code in results), [err for _, err, _ in results]
    assert sum("importing it once" in err for _, err, _ in results) == 1
    assert len({json.loads(out)["path"] for out, _, _ in results}) == 1
    assert cached(cache) == [cached(cache)[0]] and not cached(cache)[0].endswith((".partial", ".lock"))

    # While another process holds the import's lock, a first use waits, then imports.
    import fcntl
    import shutil
    import time
    directory = cache / "gguf" / cached(cache)[0]
    shutil.rmtree(directory)
    with open(str(directory) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.Popen([str(LATHE_BIN), "inspect", str(model)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        assert proc.poll() is None, proc.communicate()  # waiting for the lock
        fcntl.flock(lock, fcntl.LOCK_UN)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "importing it once" in err, err
    assert directory.is_dir()


def test_bad_gguf_models_and_caches(tmp_path, cache):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(gemma_like(**{"general.architecture": (8, "no-such-arch")}))
    text = tmp_path / "text.txt"
    text.write_text("ab a b " * 20)
    proc = run_lathe("eval", bad, "--text", text, check=False)
    assert proc.returncode == UNSUPPORTED and f"{bad}: general.architecture: " in proc.stderr, proc.stderr
    proc = run_lathe("inspect", tmp_path / "missing.gguf", check=False)  # not a file: read as a directory
    assert proc.returncode == RESOURCE_ERROR and "missing.gguf" in proc.stderr
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(gemma_like()[:200])
    proc = run_lathe("eval", truncated, "--text", text, check=False)
    assert proc.returncode == DATA_ERROR and str(truncated) in proc.stderr, proc.stderr
    assert cached(cache) == []  # no directory, no partial directory, no lock left behind
    assert bad.read_bytes() == gemma_like(**{"general.architecture": (8, "no-such-arch")})

    good = tmp_path / "good.gguf"
    good.write_bytes(gemma_like(np.random.default_rng(1)))
    (tmp_path / "file").write_text("a file where the cache should be")
    os.environ["LATHE_CACHE"] = str(tmp_path / "file")  # restored by the fixture's monkeypatch
    proc = run_lathe("eval", good, "--text", text, check=False)
    assert proc.returncode == RESOURCE_ERROR and "cache" in proc.stderr, proc.stderr


def test_eval_of_the_real_gguf_equals_transformers(tmp_path, cache):
    """The done-when parity of issue 18 on one corpus start (bench/gemma_parity.py does all five)."""
    require_gemma()
    from transformers import AutoModelForCausalLM, AutoTokenizer
    text = HELDOUT.read_text(encoding="utf-8")[:2500]
    (tmp_path / "text.txt").write_text(text, encoding="utf-8")
    seq_len = 256
    run_lathe("eval", GEMMA, "--text", tmp_path / "text.txt", "--seq-len", seq_len, "--json", tmp_path / "r.json")
    got = json.loads((tmp_path / "r.json").read_text())
    tok = AutoTokenizer.from_pretrained(GEMMA.parent, gguf_file=GEMMA.name)
    model = AutoModelForCausalLM.from_pretrained(GEMMA.parent, gguf_file=GEMMA.name, dtype=torch.float32).eval()
    ids = tok(text, add_special_tokens=False)["input_ids"]
    nll = 0.0
    for begin in range(0, len(ids), seq_len - 1):
        window = torch.tensor([tok.bos_token_id] + ids[begin:begin + seq_len - 1]).unsqueeze(0)
        with torch.no_grad():
            logp = model(window).logits.log_softmax(-1)[0, :-1]
        nll -= logp.gather(-1, window[0, 1:].unsqueeze(-1)).sum().item()
    ppl = math.exp(nll / len(ids))
    assert got["bos"] == tok.bos_token_id == 2
    assert got["predicted"]["text.txt"] == len(ids)
    assert abs(got["perplexity"]["text.txt"] - ppl) <= 1e-3 * ppl, (got["perplexity"], ppl)
    assert 10 < ppl < 60  # a real model on English prose (37 on the first 4.7 k tokens)
