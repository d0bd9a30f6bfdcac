#!/usr/bin/env python3
"""Expert-pruning comparison table (issue 8): every method × tiny MoE model × kept fraction.

For each model (mixtral, qwen2_moe, olmoe, deepseek_v3) and keep ∈ {0.75, 0.5}, runs `lathe run` with
one expert-pruning pass (baselines, experts-naee where its enumeration is allowed, diep layerwise and
end-to-end, tcess pruned for `code`), then `lathe eval` on the held-out text of every domain and the
multiple-choice task files. The original model is measured in the same run. Results go to
bench/results/expert_pruning.json (each finished run is kept, so an interrupted table resumes) and
bench/results/expert_pruning.md.

  python3 bench/expert_pruning_table.py [--lathe build-lead/lathe] [--models mixtral,olmoe] [--keep 0.5]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["mixtral", "qwen2_moe", "olmoe", "deepseek_v3"]
DOMAINS = ["prose", "code", "math", "german"]
METHODS = {
    "frequency": "experts-frequency: {{keep: {keep}}}",
    "mass": "experts-mass: {{keep: {keep}}}",
    "router-norm": "experts-router-norm: {{keep: {keep}}}",
    "random": "experts-random: {{keep: {keep}, seed: 0}}",
    "naee": "experts-naee: {{keep: {keep}}}",
    "diep-layerwise": "diep: {{keep: {keep}, mode: layerwise, steps: 100, lr: 0.05}}",
    "diep-end-to-end": "diep: {{keep: {keep}, mode: end-to-end, steps: 200, lr: 0.05}}",
    "tcess-code": "tcess: {{keep: {keep}, task: code}}",
}


def recipe(model, pass_yaml, out, samples):
    sets = "\n".join(f"    - {{task: {d}, path: {ROOT / 'data/corpora' / d / 'train.txt'}}}" for d in DOMAINS)
    return f"""model: {ROOT / 'data/models' / model}
output: {out}
device: cpu
calibration:
  seq-len: 128
  samples: {samples}
  seed: 0
  sets:
{sets}
passes:
  - {pass_yaml}
"""


def evaluate(lathe, model_dir, links, threads):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "eval.json"
        cmd = [lathe, "--threads", str(threads), "eval", str(model_dir), "--seq-len", "128", "--json", str(out)]
        for d in DOMAINS:
            cmd += ["--text", str(links / f"{d}.txt")]
        for t in sorted((ROOT / "data/tasks").glob("*.jsonl")):
            cmd += ["--tasks", str(t)]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        doc = json.loads(out.read_text())
    row = {d: doc["perplexity"][f"{d}.txt"] for d in DOMAINS}
    for name, t in doc.get("tasks", {}).items():
        row[Path(name).stem] = t["accuracy"]
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lathe", default=str(ROOT / "build-lead" / "lathe"))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--keep", default="0.75,0.5")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--samples", type=int, default=8, help="calibration samples per domain (128 tokens each)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--results", default=str(ROOT / "bench/results/expert_pruning.json"))
    args = ap.parse_args()
    results_path = Path(args.results)
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    work = Path(tempfile.mkdtemp(prefix="lathe-ep-"))
    links = work / "heldout"
    links.mkdir()
    for d in DOMAINS:
        (links / f"{d}.txt").symlink_to(ROOT / "data/corpora" / d / "heldout.txt")
    for model in args.models.split(","):
        key = f"{model}/original"
        if key not in results:
            results[key] = evaluate(args.lathe, ROOT / "data/models" / model, links, args.threads)
        for keep in args.keep.split(","):
            for method in args.methods.split(","):
                key = f"{model}/{keep}/{method}"
                if key in results:
                    continue
                out = work / f"{model}-{keep}-{method}"
                path = work / "recipe.yaml"
                path.write_text(recipe(model, METHODS[method].format(keep=keep), out, args.samples))
                t0 = time.time()
                run = subprocess.run([args.lathe, "--threads", str(args.threads), "run", str(path), "--force"],
                                     capture_output=True, text=True)
                seconds = time.time() - t0
                if run.returncode != 0:
                    last = [l for l in run.stderr.strip().splitlines() if l.strip()][-1:]
                    results[key] = {"error": last[0] if last else f"exit {run.returncode}", "exit": run.returncode}
                else:
                    row = evaluate(args.lathe, out, links, args.threads)
                    plan = json.loads((out / "plan.json").read_text())
                    row["experts_per_layer"] = [len(v) for _, v in sorted(plan["experts"].items(), key=lambda kv: int(kv[0]))]
                    row["seconds"] = round(seconds, 1)
                    results[key] = row
                print(key, json.dumps(results[key]), file=sys.stderr, flush=True)
                results_path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
        results_path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    write_markdown(results, results_path.with_suffix(".md"))


def write_markdown(results, path):
    tasks = sorted({k for r in results.values() for k in r if k not in DOMAINS and k not in ("experts_per_layer", "seconds", "error", "exit")})
    lines = ["# Expert pruning: held-out perplexity per domain and task accuracy", "",
             "Generated by `bench/expert_pruning_table.py` (calibration: 8 × 128 tokens of each of prose, code, math, "
             "german; eval seq-len 128 on data/corpora/<domain>/heldout.txt). Lower perplexity is better; "
             "`mean ppl` is the geometric mean over the four domains; `s` is the `lathe run` time (2 cores shared "
             "with other work, 1 thread). Accuracy columns: multiple-choice tasks of data/tasks. naee is refused "
             "where a layer would need more than 10,000 keep sets. Passes as run:", ""]
    lines += [f"- `{m}`: `{METHODS[m].replace('{{', '{').replace('}}', '}')}`" for m in METHODS] + [""]
    for model in MODELS:
        if f"{model}/original" not in results:
            continue
        lines += [f"## {model}", "", "| keep | method | " + " | ".join(DOMAINS) + " | mean ppl | " + " | ".join(tasks) +
                  " | experts per layer | s |", "|" + "---|" * (len(DOMAINS) + len(tasks) + 5)]
        rows = [("1", "original", results[f"{model}/original"])]
        for key, r in results.items():
            parts = key.split("/")
            if parts[0] == model and len(parts) == 3:
                rows.append((parts[1], parts[2], r))
        order = list(METHODS)
        rows.sort(key=lambda x: (-float(x[0]), order.index(x[1]) if x[1] in order else -1))
        for keep, method, r in rows:
            if "error" in r:
                lines.append(f"| {keep} | {method} | refused: {r['error'][:120]} |")
                continue
            import math
            mean = math.exp(sum(math.log(r[d]) for d in DOMAINS) / len(DOMAINS))
            lines.append(f"| {keep} | {method} | " + " | ".join(f"{r[d]:.2f}" for d in DOMAINS) + f" | {mean:.2f} | " +
                         " | ".join(f"{r.get(t, float('nan')):.3f}" for t in tasks) +
                         f" | {r.get('experts_per_layer', '')} | {r.get('seconds', '')} |")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
