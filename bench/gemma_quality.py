#!/usr/bin/env python3
"""Real-model quality table (issue 18): Gemma 3 270M (the Q4_K_M GGUF, imported to float32: the
"original" below is that dequantized model) quantized by lathe with RTN and GPTQ at 4 bits (groups
of 128 and 32) and 3 bits (group 128), and SmoothQuant W8A8.

Each configuration is one `lathe run` of a recipe whose model is the .gguf file itself, so the run's
own evaluation measures it: `eval_before.json` (the original) and `eval_after.json` (the compressed
model from its quant/ sidecar, exactly dequantized, with W8A8's int8 inputs; KL(original ‖
compressed) and top-1 agreement per file, on the same windows). Evaluation text: the first --chars
characters of each of the five held-out files (the full files would take ~10x longer on 2 cores),
windows of --eval-seq-len tokens with BOS (Gemma's tokenizer adds it). Calibration (GPTQ, SmoothQuant):
--samples samples x --seq-len tokens of each domain's training text, seed 0. Per run: wall time, and
peak RSS of the `lathe run` process (calibration, passes, apply, export and both evaluations).

    .venv/bin/python bench/gemma_quality.py [--gguf FILE] [--threads 2] [--chars 8000] [--samples 8]

Writes bench/results/gemma_quality.{md,json}; exits 1 unless GPTQ has a lower pooled KL than RTN
at every bit width / group size.
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LATHE = os.environ.get("LATHE_BIN", str(ROOT / "build" / "lathe"))
DOMAINS = ["prose", "code", "math", "german", "definitions"]
DEFAULT_GGUF = Path(os.environ.get("LATHE_MODELS_DIR", Path.home() / ".cache/lathe/models")) / "gemma-3-270m-q4_k_m.gguf"
# (key, pass YAML, the RTN key GPTQ must beat)
CONFIGS = [
    ("rtn4-g128", "rtn: {bits: 4, group-size: 128}", None),
    ("gptq4-g128", "gptq: {bits: 4, group-size: 128}", "rtn4-g128"),
    ("rtn4-g32", "rtn: {bits: 4, group-size: 32}", None),
    ("gptq4-g32", "gptq: {bits: 4, group-size: 32}", "rtn4-g32"),
    ("rtn3-g128", "rtn: {bits: 3, group-size: 128}", None),
    ("gptq3-g128", "gptq: {bits: 3, group-size: 128}", "rtn3-g128"),
    ("smoothquant-w8a8", "smoothquant: {alpha: 0.5}", None),
]


def heldout_starts(directory, chars):
    """The first `chars` characters of each domain's held-out file, written to directory/<domain>.txt."""
    paths = []
    for d in DOMAINS:
        path = Path(directory) / f"{d}.txt"
        path.write_text((ROOT / "data/corpora" / d / "heldout.txt").read_text(encoding="utf-8")[:chars],
                        encoding="utf-8")
        paths.append(path)
    return paths


def run_measured(cmd, log):
    """Runs cmd in its own process, stderr to `log`: (exit status, wall seconds, peak RSS bytes from
    wait4's rusage of that process alone)."""
    start = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
    return os.waitstatus_to_exitcode(status), time.perf_counter() - start, usage.ru_maxrss * 1024


STAGE_LINE = r"^\[(\w+)\] done in ([0-9.]+) s, peak RSS ([0-9.]+) MiB"


def model_path(name, gguf):
    """A model of the table scripts: "gemma-3-270m" is the GGUF, any other name data/models/<name>."""
    return gguf if name == "gemma-3-270m" else ROOT / "data" / "models" / name


def run_pass_recipe(out, model, pass_yaml, texts, args, eval_seq_len, extra=""):
    """Writes out.yaml (the model, calibration on every domain's training text — args.samples ×
    args.seq_len, seed 0 —, one pass, `extra` top-level YAML, eval on `texts`) and runs it with
    args.threads threads, stderr to out.log. Returns (the row's measurements: eval after, original,
    run seconds, peak RSS, apply seconds and peak RSS MiB as lathe's stage log says; the manifest)."""
    recipe = out.with_suffix(".yaml")
    sets = "\n".join(f"    - {{task: {d}, path: {ROOT}/data/corpora/{d}/train.txt}}" for d in DOMAINS)
    recipe.write_text(f"model: {model_path(model, args.gguf)}\noutput: {out}\ndevice: cpu\n"
                      f"calibration:\n  seq-len: {args.seq_len}\n  samples: {args.samples}\n  seed: 0\n"
                      f"  sets:\n{sets}\npasses:\n  - {pass_yaml}\n{extra}"
                      f"eval:\n  text: [{', '.join(texts)}]\n  seq-len: {eval_seq_len}\n")
    log = out.with_suffix(".log")
    code, wall, rss = run_measured([LATHE, "--threads", str(args.threads), "run", str(recipe)], log)
    if code != 0:
        raise SystemExit(f"{model}: lathe run {recipe} failed ({code}):\n{log.read_text()[-3000:]}")
    stages = {m[0]: (float(m[1]), float(m[2])) for m in re.findall(STAGE_LINE, log.read_text(), re.M)}
    row = {"eval": pooled(json.loads((out / "eval_after.json").read_text()), True),
           "original": pooled(json.loads((out / "eval_before.json").read_text()), False),
           "run_seconds": round(wall, 1), "peak_rss_bytes": rss,
           "apply_seconds": stages.get("apply", (0, 0))[0], "apply_peak_rss_mib": stages.get("apply", (0, 0))[1]}
    return row, json.loads((out / "lathe_manifest.json").read_text())


def pooled(doc, divergence):
    """{domain: {...}} and the pooled "all" entry of an eval JSON."""
    out = {}
    for name, ppl in doc["perplexity"].items():
        domain = Path(name).stem
        out[domain] = {"ppl": ppl, "predicted": doc["predicted"][name]}
        if divergence:
            out[domain]["kl"] = doc["divergence"][name]["kl"]
            out[domain]["top1"] = doc["divergence"][name]["top1"]
    files = list(out.values())
    total = sum(v["predicted"] for v in files)
    out["all"] = {"ppl": math.exp(sum(math.log(v["ppl"]) * v["predicted"] for v in files) / total),
                  "predicted": total}
    if divergence:
        out["all"]["kl"] = sum(v["kl"] * v["predicted"] for v in files) / total
        out["all"]["top1"] = sum(v["top1"] * v["predicted"] for v in files) / total
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=Path, default=DEFAULT_GGUF)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chars", type=int, default=8000, help="characters from the start of each held-out file")
    ap.add_argument("--eval-seq-len", type=int, default=512)
    ap.add_argument("--samples", type=int, default=8, help="calibration samples per domain")
    ap.add_argument("--seq-len", type=int, default=512, help="calibration tokens per sample")
    ap.add_argument("--only", help="comma-separated configuration keys")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    args.gguf = args.gguf.resolve()
    configs = [c for c in CONFIGS if not args.only or c[0] in args.only.split(",")]
    rows = {}
    with tempfile.TemporaryDirectory(prefix="lathe-gemma-") as tmp:
        work = Path(tmp)
        texts = [str(p) for p in heldout_starts(work, args.chars)]
        sets = "\n".join(f"    - {{task: {d}, path: {ROOT}/data/corpora/{d}/train.txt}}" for d in DOMAINS)
        fp, bos = None, None
        for key, pass_yaml, _ in configs:
            out = work / key
            recipe = work / f"{key}.yaml"
            recipe.write_text(f"model: {args.gguf}\noutput: {out}\ndevice: cpu\n"
                              f"calibration:\n  seq-len: {args.seq_len}\n  samples: {args.samples}\n  seed: 0\n"
                              f"  sets:\n{sets}\n"
                              f"passes:\n  - {pass_yaml}\n"
                              f"eval:\n  text: [{', '.join(texts)}]\n  seq-len: {args.eval_seq_len}\n")
            log = work / f"{key}.log"
            code, wall, rss = run_measured([LATHE, "--threads", str(args.threads), "run", str(recipe)], log)
            if code != 0:
                raise SystemExit(f"{key}: lathe run failed ({code}):\n{log.read_text()[-3000:]}")
            before_doc = json.loads((out / "eval_before.json").read_text())
            bos = before_doc.get("bos")
            before = pooled(before_doc, False)
            after = pooled(json.loads((out / "eval_after.json").read_text()), True)
            fp = fp or before
            rows[key] = {"eval": after, "run_seconds": round(wall, 1), "peak_rss_bytes": rss}
            a = after["all"]
            print(f"{key:18} ppl {a['ppl']:9.3f} ({100 * (a['ppl'] / before['all']['ppl'] - 1):+.2f}%)  "
                  f"KL {a['kl']:.5f}  top-1 {100 * a['top1']:.2f}%  {wall:.0f} s  peak RSS {rss / 2**30:.2f} GiB",
                  file=sys.stderr, flush=True)
            subprocess.run(["rm", "-rf", str(out)], check=True)
    failures = []
    for key, _, rtn in configs:
        if rtn and rtn in rows and not rows[key]["eval"]["all"]["kl"] < rows[rtn]["eval"]["all"]["kl"]:
            failures.append(f"{key}: pooled KL {rows[key]['eval']['all']['kl']:.6g} >= {rtn}'s "
                            f"{rows[rtn]['eval']['all']['kl']:.6g}")
    settings = {"model": args.gguf.name, "threads": args.threads,
                "eval": {"chars_per_file": args.chars, "seq_len": args.eval_seq_len, "files": DOMAINS, "bos": bos},
                "calibration": {"samples_per_domain": args.samples, "seq_len": args.seq_len, "seed": 0}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gemma_quality.json").write_text(json.dumps({"settings": settings, "fp": fp, "runs": rows}, indent=2) + "\n")
    lines = ["# Gemma 3 270M: RTN vs GPTQ vs SmoothQuant W8A8 (bench/gemma_quality.py)", "",
             f"Model: `{args.gguf.name}` as lathe reads a .gguf (imported once to float32: the original here is the "
             f"dequantized GGUF model). Calibration: training text of {', '.join(DOMAINS)}, {args.samples} samples × "
             f"{args.seq_len} tokens per domain, seed 0. Evaluation: `lathe run`'s own (eval_after vs the original on "
             f"the same windows), the first {args.chars} characters of each held-out file, {args.eval_seq_len}-token "
             f"windows {'with BOS' if bos is not None else 'without BOS'}, pooled over the five files. GPTQ: symmetric, act-order static. {args.threads} threads. "
             "Regenerate with `.venv/bin/python bench/gemma_quality.py`.", "",
             "| configuration | pooled ppl (Δ vs original) | KL, 10⁻³ nats/token | top-1 | " +
             " | ".join(f"{d} ppl" for d in DOMAINS) + " | run wall | peak RSS |",
             "|---|---|---|---|" + "---|" * len(DOMAINS) + "---|---|",
             f"| original | {fp['all']['ppl']:.3f} | | | " + " | ".join(f"{fp[d]['ppl']:.2f}" for d in DOMAINS) + " | | |"]
    for key, _, _ in configs:
        r = rows[key]
        e = r["eval"]
        lines.append(f"| {key} | {e['all']['ppl']:.3f} ({100 * (e['all']['ppl'] / fp['all']['ppl'] - 1):+.2f}%) | "
                     f"{1000 * e['all']['kl']:.2f} | {100 * e['all']['top1']:.1f}% | " +
                     " | ".join(f"{e[d]['ppl']:.2f}" for d in DOMAINS) +
                     f" | {r['run_seconds']:.0f} s | {r['peak_rss_bytes'] / 2**30:.2f} GiB |")
    lines += ["", "GPTQ has a lower pooled KL than RTN at every setting: " + ("yes" if not failures else "NO"), ""]
    lines += [f"- {f}" for f in failures]
    (args.out / "gemma_quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
