#!/usr/bin/env python3
"""Weight-sparsity quality table (issue 20): magnitude vs Wanda vs SparseGPT at 50 % unstructured and
2:4, SparseGPT 2:4 + 4-bit in one sweep, and OWL / DLP layerwise allocation vs uniform (with Wanda)
at 50 % and 70 %, on the tiny dense and MoE models and on Gemma 3 270M (the Q4_K_M GGUF, imported
to float32: the "original" is that dequantized model).

Each cell is one `lathe run` whose own evaluation measures it (eval_after vs eval_before on the same
windows): KL(original ‖ pruned) and perplexity pooled over the five held-out files (their first
--chars characters). Calibration: --samples samples × --seq-len tokens of each domain's training
text, seed 0. Per run: the apply stage's seconds and peak RSS as lathe's own stage log reports them
(the stage where the passes prune; OWL / DLP add the observe stage for channel norms), and the whole
run's wall time.

    .venv/bin/python bench/sparsity_table.py [--models llama,mixtral,gemma-3-270m] [--only wanda-50,...]

Writes bench/results/sparsity.{md,json}; exits 1 unless SparseGPT has a lower pooled KL than
magnitude pruning at 50 % and at 2:4 on every model.
"""
import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gemma_quality import DEFAULT_GGUF, ROOT, heldout_starts, run_pass_recipe  # noqa: E402

TINY = ["llama", "qwen2", "gemma3", "mixtral", "olmoe", "qwen2_moe"]
# (key, pass YAML)
CONFIGS = [
    ("magnitude-50", "magnitude: {sparsity: 0.5}"),
    ("wanda-50", "wanda: {sparsity: 0.5}"),
    ("sparsegpt-50", "sparsegpt: {sparsity: 0.5}"),
    ("magnitude-2:4", "magnitude: {pattern: '2:4'}"),
    ("wanda-2:4", "wanda: {pattern: '2:4'}"),
    ("sparsegpt-2:4", "sparsegpt: {pattern: '2:4'}"),
    ("sparsegpt-2:4+int4", "sparsegpt: {pattern: '2:4', bits: 4, group-size: GROUP}"),
    ("wanda-owl-50", "wanda: {sparsity: 0.5, allocation: owl}"),
    ("wanda-dlp-50", "wanda: {sparsity: 0.5, allocation: dlp}"),
    ("wanda-70", "wanda: {sparsity: 0.7}"),
    ("wanda-owl-70", "wanda: {sparsity: 0.7, allocation: owl}"),
    ("wanda-dlp-70", "wanda: {sparsity: 0.7, allocation: dlp}"),
    ("sparsegpt-70", "sparsegpt: {sparsity: 0.7}"),
]
# SparseGPT must beat magnitude at the same sparsity on every model.
MUST_BEAT = [("sparsegpt-50", "magnitude-50"), ("sparsegpt-2:4", "magnitude-2:4")]


def run_one(work, model, key, pass_yaml, texts, args, eval_seq_len):
    # 4-bit groups: 32 on Gemma; 16 on the tiny models, whose experts are 48 (olmoe) or 96 wide
    pass_yaml = pass_yaml.replace("GROUP", "32" if model == "gemma-3-270m" else "16")
    out = work / f"{model}-{key.replace(':', '')}"
    row, manifest = run_pass_recipe(out, model, pass_yaml, texts, args, eval_seq_len)
    zeros = [t["sparsity"]["zeros"] for t in manifest["tensors"].values() if "sparsity" in t]
    row["mean_zeros"] = sum(zeros) / max(1, len(zeros))
    before, after, wall = row["original"], row["eval"], row["run_seconds"]
    plan = json.loads((out / "plan.json").read_text())
    for diag in plan.get("diagnostics", {}).values():
        if "allocation" in diag:
            row["layer_sparsity"] = [diag["layers"][k]["sparsity"] for k in sorted(diag["layers"], key=int)]
    a = after["all"]
    print(f"{model:12} {key:20} KL {a['kl']:.5f}  ppl {a['ppl']:9.3f} (orig {before['all']['ppl']:.3f})  "
          f"apply {row['apply_seconds']:.1f} s  {wall:.0f} s", file=sys.stderr, flush=True)
    shutil.rmtree(out, ignore_errors=True)
    return row


def table(rows, models, configs):
    lines = ["| configuration | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for key, _ in configs:
        cells = []
        for m in models:
            r = rows.get(m, {}).get(key)
            cells.append("" if not r else f"{1000 * r['eval']['all']['kl']:.1f} / {r['eval']['all']['ppl']:.2f}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    orig = [rows[m][next(iter(rows[m]))]["original"]["all"]["ppl"] for m in models]
    lines.append("| (original ppl) | " + " | ".join(f"{p:.2f}" for p in orig) + " |")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(TINY + ["gemma-3-270m"]))
    ap.add_argument("--only", help="comma-separated configuration keys")
    ap.add_argument("--gguf", type=Path, default=DEFAULT_GGUF)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chars", type=int, default=8000)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--merge", action="store_true", help="keep the other models' rows of sparsity.json")
    ap.add_argument("--render", nargs="*", type=Path, metavar="JSON",
                    help="run nothing: write sparsity.md from sparsity.json and these other result files")
    args = ap.parse_args()
    args.gguf = args.gguf.resolve()
    models = args.models.split(",")
    configs = [c for c in CONFIGS if not args.only or c[0] in args.only.split(",")]
    path = args.out / "sparsity.json"
    rows = json.loads(path.read_text())["runs"] if (args.merge or args.render is not None) and path.exists() else {}
    for other in args.render or []:
        rows.update({m: r for m, r in json.loads(other.read_text())["runs"].items() if r})
    with tempfile.TemporaryDirectory(prefix="lathe-sparsity-") as tmp:
        work = Path(tmp)
        texts = [str(p) for p in heldout_starts(work, args.chars)]
        for model in models if args.render is None else []:
            rows[model] = {}
            for key, pass_yaml in configs:
                seq = 512 if model == "gemma-3-270m" else 128
                rows[model][key] = run_one(work, model, key, pass_yaml, texts, args, seq)
                path.parent.mkdir(parents=True, exist_ok=True)  # after every run: a failure keeps the rest
                path.write_text(json.dumps({"runs": rows}, indent=1) + "\n")
    all_models = [m for m in TINY + ["gemma-3-270m"] if rows.get(m)]
    failures = [f"{m}: {a} KL {rows[m][a]['eval']['all']['kl']:.5g} >= {b} {rows[m][b]['eval']['all']['kl']:.5g}"
                for m in all_models for a, b in MUST_BEAT
                if a in rows[m] and b in rows[m] and not rows[m][a]["eval"]["all"]["kl"] < rows[m][b]["eval"]["all"]["kl"]]
    settings = {"threads": args.threads, "chars_per_file": args.chars, "calibration": {
        "samples_per_domain": args.samples, "seq_len": args.seq_len, "seed": 0}, "gguf": args.gguf.name}
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"settings": settings, "runs": rows}, indent=1) + "\n")
    lines = ["# Weight sparsity: magnitude vs Wanda vs SparseGPT, OWL / DLP (bench/sparsity_table.py)", "",
             f"Each cell: pooled KL(original ‖ pruned) in 10⁻³ nats/token / pooled perplexity over the first "
             f"{args.chars} characters of the five held-out files (windows of 128 tokens; Gemma 3 270M: 512 with BOS). "
             f"Calibration: {args.samples} samples × {args.seq_len} tokens of each domain's training text, seed 0. "
             f"{args.threads} thread(s). sparsegpt-2:4+int4 quantizes in the same sweep, symmetric, groups of 16 on the "
             "tiny models (their experts are 48 or 96 wide) and 32 on Gemma. Regenerate with "
             "`.venv/bin/python bench/sparsity_table.py`.", ""]
    lines += table(rows, all_models, CONFIGS)
    lines += ["", "SparseGPT has a lower pooled KL than magnitude at 50 % and 2:4 on every model: " +
              ("yes" if not failures else "NO"), ""] + [f"- {f}" for f in failures]
    lines += ["", "## Apply stage (the pruning) per run: seconds / peak RSS MiB", ""]
    lines += ["| configuration | " + " | ".join(all_models) + " |", "|---|" + "---|" * len(all_models)]
    for key, _ in CONFIGS:
        cells = [f"{rows[m][key]['apply_seconds']:.1f} / {rows[m][key]['apply_peak_rss_mib']:.0f}"
                 if key in rows[m] else "" for m in all_models]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += ["", "## Layer sparsities chosen by OWL / DLP", ""]
    for m in all_models:
        for key in ("wanda-owl-50", "wanda-dlp-50", "wanda-owl-70", "wanda-dlp-70"):
            if key in rows[m] and "layer_sparsity" in rows[m][key]:
                lines.append(f"- {m} {key}: " + " ".join(f"{s:.3f}" for s in rows[m][key]["layer_sparsity"]))
    (args.out / "sparsity.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
