#!/usr/bin/env python3
"""Parity on the real model (issue 18): `lathe eval gemma-3-270m-q4_k_m.gguf` against transformers
loading the same GGUF file (`from_pretrained(dir, gguf_file=...)`, float32), on the start of each of
the five held-out corpora, on the same windows (BOS + seq_len - 1 tokens, as both tokenizers add BOS).

Reports per corpus: tokens, lathe's and transformers' perplexity and their relative difference; on
one window of `--logit-tokens` tokens per corpus, `lathe forward` of the .gguf against transformers'
logits: max |dlogit| and top-1 agreement. Also checks that the directory lathe imported the file to
(eval's `model_dir`), loaded by stock transformers, has the GGUF model's parameters exactly.

  .venv/bin/python bench/gemma_parity.py [--gguf FILE] [--chars 16000] [--threads 2] [--json OUT]
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gemma_quality import DEFAULT_GGUF, heldout_starts

ROOT = Path(__file__).resolve().parents[1]
LATHE = os.environ.get("LATHE_BIN", str(ROOT / "build" / "lathe"))


def lathe(*args):
    proc = subprocess.run([LATHE, *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"lathe {' '.join(map(str, args[:3]))} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc


def reference_perplexity(model, ids, bos, seq_len):
    nll = 0.0
    with torch.no_grad():
        for begin in range(0, len(ids), seq_len - 1):
            window = torch.tensor([bos] + ids[begin:begin + seq_len - 1]).unsqueeze(0)
            logp = model(window).logits.log_softmax(-1)[0, :-1]
            nll -= logp.gather(-1, window[0, 1:].unsqueeze(-1)).sum().item()
    return math.exp(nll / len(ids))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, default=DEFAULT_GGUF)
    parser.add_argument("--chars", type=int, default=16000, help="characters from the start of each held-out file")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--logit-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        texts = heldout_starts(tmp, args.chars)
        start = time.perf_counter()
        lathe("--threads", args.threads, "eval", args.gguf, *[a for t in texts for a in ("--text", t)],
              "--seq-len", args.seq_len, "--json", tmp / "eval.json")
        lathe_s = time.perf_counter() - start
        got = json.loads((tmp / "eval.json").read_text())

        start = time.perf_counter()
        tok = AutoTokenizer.from_pretrained(args.gguf.parent, gguf_file=args.gguf.name)
        model = AutoModelForCausalLM.from_pretrained(args.gguf.parent, gguf_file=args.gguf.name,
                                                     dtype=torch.float32).eval()
        load_s = time.perf_counter() - start
        imported = AutoModelForCausalLM.from_pretrained(got["model_dir"], dtype=torch.float32).eval()
        ref_params, imp_params = dict(model.named_parameters()), dict(imported.named_parameters())
        same_params = ref_params.keys() == imp_params.keys() and all(
            torch.equal(ref_params[k], imp_params[k]) for k in ref_params)
        del imported
        rows, hf_s = [], 0.0
        for path in texts:
            ids = tok(path.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
            start = time.perf_counter()
            ppl = reference_perplexity(model, ids, tok.bos_token_id, args.seq_len)
            hf_s += time.perf_counter() - start
            window = [tok.bos_token_id] + ids[:args.logit_tokens - 1]
            (tmp / "ids.json").write_text(json.dumps({"ids": [window]}))
            lathe("--threads", args.threads, "forward", args.gguf, "--tokens", tmp / "ids.json", "--out", tmp / "l.f32")
            lathe_logits = torch.from_numpy(np.fromfile(tmp / "l.f32", dtype=np.float32).reshape(len(window), -1))
            with torch.no_grad():
                hf_logits = model(torch.tensor([window])).logits[0]
            name = path.name
            rows.append({"corpus": path.stem, "tokens": got["tokens"][name], "predicted": got["predicted"][name],
                         "ppl_lathe": got["perplexity"][name], "ppl_transformers": ppl,
                         "rel_diff": got["perplexity"][name] / ppl - 1,
                         "max_abs_dlogit": (lathe_logits - hf_logits).abs().max().item(),
                         "top1": (lathe_logits.argmax(-1) == hf_logits.argmax(-1)).float().mean().item()})
    result = {"gguf": str(args.gguf), "seq_len": args.seq_len, "chars": args.chars, "threads": args.threads,
              "bos": got["bos"], "imported_dir_params_equal": same_params, "lathe_eval_s": lathe_s,
              "transformers_load_s": load_s, "transformers_eval_s": hf_s, "rows": rows}
    print(f"Gemma 3 270M Q4_K_M: lathe eval of the .gguf vs transformers' GGUF loader (fp32, seq_len {args.seq_len}, "
          f"BOS {got['bos']}, first {args.chars} chars per file, {args.threads} threads)")
    print(f"{'corpus':<12}{'tokens':>7}{'ppl lathe':>11}{'ppl hf':>11}{'rel diff':>11}{'max|dlogit|':>13}{'top-1':>8}")
    for r in rows:
        print(f"{r['corpus']:<12}{r['tokens']:>7}{r['ppl_lathe']:>11.4f}{r['ppl_transformers']:>11.4f}"
              f"{r['rel_diff']:>11.2e}{r['max_abs_dlogit']:>13.2e}{r['top1']:>8.4f}")
    print(f"imported directory in transformers has the GGUF model's parameters exactly: {same_params}")
    print(f"lathe eval {lathe_s:.0f} s (incl. the one-time import if not cached); transformers: load {load_s:.0f} s, "
          f"eval {hf_s:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    worst = max(abs(r["rel_diff"]) for r in rows)
    if worst > 1e-3 or not same_params:
        sys.exit(f"parity failed: worst relative perplexity difference {worst:.2e}, params equal {same_params}")


if __name__ == "__main__":
    main()
