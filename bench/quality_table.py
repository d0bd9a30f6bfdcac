#!/usr/bin/env python3
"""Quality table of issue 6: held-out perplexity of every tiny model at full precision, with RTN and
with GPTQ at 8, 4 and 3 bits (group 128, or the largest power of two that divides every linear's
input width), GPTQ with and without act-order (static groups). Same calibration for every run
(prose + code training text, 16 samples × 128 tokens per task, seed 0); perplexity from `lathe eval`
of the output directory, which dequantizes the quant/ sidecar exactly (the compressed model, not the
bf16-rounded HF copy), on the prose and code held-out files.

    .venv/bin/python bench/quality_table.py [--lathe build-lead/lathe] [--models llama,mixtral] [--threads 2]

Writes bench/results/quality_table.{md,json} and exits 1 when GPTQ (either act-order setting) does
not beat RTN at 3 and 4 bits on some model (the issue's requirement).
"""
import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from safetensors import safe_open

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["llama", "qwen2", "mixtral", "qwen2_moe", "olmoe", "qwen3_moe", "qwen3_moe-fused", "deepseek_v3"]
TEXTS = [ROOT / "data/corpora/prose/heldout.txt", ROOT / "data/corpora/code/heldout.txt"]
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "w1", "w2", "w3",
          "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "gate_up_proj")


def group_size(model_dir):
    """128 when it divides every quantizable input width, else the largest power of two that does."""
    g = 0
    for f in Path(model_dir).glob("*.safetensors"):
        with safe_open(str(f), "pt") as s:
            for name in s.keys():
                module = name[:-len(".weight")] if name.endswith(".weight") else name
                if "layers." not in name or not module.split(".")[-1] in LINEAR:
                    continue
                g = math.gcd(g, s.get_slice(name).get_shape()[-1])
    size = 1
    while size < 128 and g % (size * 2) == 0:
        size *= 2
    return size


def recipe_text(model, out, passes):
    sets = "\n".join(f"    - {{task: {t}, path: {ROOT}/data/corpora/{t}/train.txt}}" for t in ("prose", "code"))
    return (f"model: {ROOT}/data/models/{model}\noutput: {out}\ndevice: cpu\n"
            f"calibration:\n  seq-len: 128\n  samples: 16\n  seed: 0\n  sets:\n{sets}\n"
            f"passes:\n{passes}\nexport: [hf]\n")


def heldout_texts(work, chars):
    """The first `chars` characters of each held-out file (cut at a line end), same for every run."""
    out = []
    for t in TEXTS:
        text = t.read_text()
        if chars > 0 and len(text) > chars:
            text = text[:text.rfind("\n", 0, chars) + 1]
        path = work / t.parent.name / "heldout.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        out.append(path)
    return out


def evaluate(lathe, threads, path, work, texts):
    report = work / f"eval-{time.monotonic_ns()}.json"
    args = [lathe, "--threads", str(threads), "eval", str(path), "--seq-len", "128", "--json", str(report)]
    for t in texts:
        args += ["--text", str(t)]
    subprocess.run(args, check=True, capture_output=True, text=True)
    doc = json.loads(report.read_text())
    # Both files are named heldout.txt, so lathe names them "prose/heldout.txt" and "code/heldout.txt".
    return {name.split("/")[0]: ppl for name, ppl in doc["perplexity"].items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lathe", default=str(ROOT / "build-lead" / "lathe"))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--heldout-chars", type=int, default=60000,
                    help="evaluate on the first N characters of each held-out file (0: whole files)")
    args = ap.parse_args()
    configs = [("rtn", b, None) for b in (8, 4, 3)] + [("gptq", b, a) for b in (8, 4, 3) for a in ("none", "static")]
    rows, failures = [], []
    with tempfile.TemporaryDirectory(prefix="lathe-quality-") as tmp:
        work = Path(tmp)
        texts = heldout_texts(work, args.heldout_chars)
        for model in args.models.split(","):
            model_dir = ROOT / "data" / "models" / model
            if not model_dir.is_dir():
                print(f"skip {model}: not built", file=sys.stderr)
                continue
            g = group_size(model_dir)
            row = {"model": model, "group_size": g, "fp": evaluate(args.lathe, args.threads, model_dir, work, texts)}
            for method, bits, act_order in configs:
                key = f"{method}{bits}" + (f"-{act_order}" if act_order else "")
                opts = f"bits: {bits}, group-size: {g}" + (f", act-order: {act_order}" if act_order else "")
                out = work / f"{model}-{key}"
                recipe = work / f"{model}-{key}.yaml"
                recipe.write_text(recipe_text(model, out, f"  - {method}: {{{opts}}}"))
                t0 = time.monotonic()
                proc = subprocess.run([args.lathe, "--threads", str(args.threads), "run", str(recipe)],
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    raise SystemExit(f"{model} {key}: lathe run failed:\n{proc.stderr}")
                row[key] = evaluate(args.lathe, args.threads, out, work, texts)
                row[key]["seconds"] = round(time.monotonic() - t0, 2)
                print(f"{model:16} {key:12} " + "  ".join(f"{d} {p:9.3f}" for d, p in row[key].items() if d != "seconds"),
                      file=sys.stderr)
            for bits in (4, 3):
                for act_order in ("none", "static"):
                    for domain in row["fp"]:
                        gptq, rtn = row[f"gptq{bits}-{act_order}"][domain], row[f"rtn{bits}"][domain]
                        if not gptq < rtn:
                            failures.append(f"{model} {bits}-bit act-order {act_order} on {domain}: GPTQ {gptq:.3f} "
                                            f"≥ RTN {rtn:.3f}")
            rows.append(row)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality_table.json").write_text(json.dumps(rows, indent=2) + "\n")
    keys = ["fp"] + [f"{m}{b}" + (f"-{a}" if a else "") for m, b, a in configs]
    lines = ["# Held-out perplexity: fp vs RTN vs GPTQ (bench/quality_table.py)", "",
             "Calibration: prose + code training text, 16 samples × 128 tokens per task, seed 0. Evaluation: "
             f"`lathe eval` of the output directory (exact dequantization of the quant/ sidecar), 128-token windows over "
             f"the first {args.heldout_chars or 'all'} characters of each held-out file. "
             "`gptqB-none`: natural column order; `gptqB-static`: act-order with static groups. Symmetric.", ""]
    for domain in ("prose", "code"):
        lines += [f"## {domain} held-out", "", "| model | g | " + " | ".join(keys) + " |",
                  "|---|---|" + "---|" * len(keys)]
        for row in rows:
            lines.append(f"| {row['model']} | {row['group_size']} | " +
                         " | ".join(f"{row[k][domain]:.2f}" for k in keys) + " |")
        lines.append("")
    lines += ["GPTQ beats RTN at 3 and 4 bits on every model and domain: " + ("yes" if not failures else "NO"), ""]
    lines += [f"- {f}" for f in failures]
    (out / "quality_table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
