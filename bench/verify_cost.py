#!/usr/bin/env python3
"""Benchmark: what full verification coverage costs (issue 17: golden vectors for every expert and the
SHA-256 of every export file and tensor), on the tiny MoE models.

For each model, one GPTQ-format RTN run (4-bit g16, export gptq) with golden vectors for the 4 most
routed experts per layer (`--verify-experts 4`, the old default) and one for all (the default now);
then `lathe verify` of each export, the minimum wall time of --repeat runs (process start included).

  .venv/bin/python bench/verify_cost.py [--repeat 3] [--threads 2] [--out bench/results/verify_cost.md]
Prints a Markdown table: verify/ bytes, the modules verify replays, and verify's wall time, for both."""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LATHE = os.environ.get("LATHE_BIN", str(ROOT / "build" / "lathe"))
MODELS = ["mixtral", "qwen2_moe", "olmoe", "qwen3_moe", "deepseek_v3"]
RECIPE = """model: {model}
output: {out}
device: cpu
passes:
  - rtn: {{bits: 4, group-size: 16}}
export: [gptq]
"""


def lathe(threads, *args):
    proc = subprocess.run([LATHE, "--threads", str(threads), *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"lathe {' '.join(map(str, args))} failed ({proc.returncode}): {proc.stderr}")
    return proc


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(base: Path, model: str, experts: int, repeat: int, threads: int) -> dict:
    out = base / f"{model}-{experts}"
    recipe = base / f"{model}-{experts}.yaml"
    recipe.write_text(RECIPE.format(model=ROOT / "data" / "models" / model, out=out))
    lathe(threads, "run", recipe, "--verify-experts", experts)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        proc = lathe(threads, "verify", out / "gptq", "--quiet", "--json", base / "v.json")
        times.append(time.perf_counter() - start)
    report = json.loads((base / "v.json").read_text())
    replayed = sum(1 for c in report["cases"] if c["status"] == "ok" and c["format"] != "sha256")
    return {"verify_bytes": dir_bytes(out / "verify"), "export_bytes": dir_bytes(out / "gptq"),
            "replayed": replayed, "skipped": report["skipped"], "seconds": min(times)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rows = ["| model | export KB | verify/ KB, 4 experts → all | modules replayed, 4 → all | "
            "verify s, 4 → all (files hashed in both) |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for model in MODELS:
            few, full = (measure(Path(tmp), model, e, args.repeat, args.threads) for e in (4, -1))
            assert full["skipped"] == 0, f"{model}: modules left without golden vectors"
            rows.append(f"| {model} | {full['export_bytes'] / 1024:.0f} | {few['verify_bytes'] / 1024:.0f} → "
                        f"{full['verify_bytes'] / 1024:.0f} | {few['replayed']} → {full['replayed']} | "
                        f"{few['seconds']:.2f} → {full['seconds']:.2f} |")
    text = "\n".join(rows) + f"\n\n{args.threads} threads, minimum of {args.repeat} runs, lathe process start included.\n"
    print(text)
    if args.out:
        args.out.write_text("# Verification coverage cost (bench/verify_cost.py)\n\n" + text)


if __name__ == "__main__":
    main()
