#!/usr/bin/env python3
"""CMoE quality table (issue 19): dense FFNs carved into S2·A·E16 mixtures of experts at 25 %, 50 % and
75 % activation ((S + A) / N), training-free and with router fine-tuning, plus the exactness check at
100 % (every routed expert active), on the tiny dense models and on Gemma 3 270M (the Q4_K_M GGUF,
imported to float32: the "original" is that dequantized model).

Each cell is one `lathe run` whose own evaluation measures it against the dense original on the same
windows: KL(original ‖ carved) and perplexity pooled over the five held-out files (their first --chars
characters). Calibration: --samples samples × --seq-len tokens of each domain's training text, seed 0;
the carve reads all of them (carve-samples = samples × 5). Per run: carve seconds per layer (the
manifest's cmoe record, router fine-tuning included), the apply stage's peak RSS, the run's wall time.
On llama and qwen2 carves the qwen2-moe export (the stock Qwen2-MoE checkpoint with the fitted linear
router) is measured too: its KL to the carved model (`lathe eval EXPORT --reference OUT/model`).

    .venv/bin/python bench/cmoe_table.py [--models llama,qwen2,gemma3,gemma-3-270m] [--only a25,...]

Writes bench/results/cmoe.{md,json}; exits 1 unless every 100 % carve matches its dense model (KL below
1e-6) and, on every model, KL falls as activation rises (25 % > 50 % > 75 %, training-free).
"""
import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gemma_quality import DEFAULT_GGUF, DOMAINS, LATHE, ROOT, heldout_starts, pooled, run_pass_recipe  # noqa: E402

TINY = ["llama", "qwen2", "gemma3"]
N, S = 16, 2
# (key, active routed experts A, fine-tuning)
CONFIGS = [("a25", 2, "none"), ("a50", 6, "none"), ("a75", 10, "none"),
           ("a25-router", 2, "router"), ("a50-router", 6, "router"), ("a75-router", 10, "router"),
           ("a100", N - S, "none")]
STOCK = {"llama", "qwen2"}  # bases the qwen2-moe export takes

def export_kl(out, texts, seq, threads, log):
    """KL(carved ‖ qwen2-moe export), pooled over the texts."""
    report = out / "qwen2-moe-eval.json"
    cmd = [LATHE, "--threads", str(threads), "eval", str(out / "qwen2-moe"), "--reference", str(out / "model"),
           "--seq-len", str(seq), "--json", str(report)] + [a for t in texts for a in ("--text", t)]
    with open(log, "a") as err:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=err)
    return pooled(json.loads(report.read_text()), True)["all"]


def run_one(work, model, key, active, finetune, texts, args, seq):
    out = work / f"{model}-{key}"
    log = out.with_suffix(".log")
    row, manifest = run_pass_recipe(
        out, model, f"cmoe: {{experts: {N}, shared: {S}, active: {active}, carve-samples: "
        f"{args.samples * len(DOMAINS)}, finetune: {finetune}}}", texts, args, seq,
        "export: [qwen2-moe]\n" if model in STOCK else "")
    before, after, wall = row["original"], row["eval"], row["run_seconds"]
    carves = [t["details"]["cmoe"] for t in manifest["tensors"].values()
              if isinstance(t.get("details"), dict) and "cmoe" in t["details"]]
    row["carve_seconds_per_layer"] = sum(c["seconds"] for c in carves) / max(1, len(carves))
    row["layers"] = len(carves)
    fitted = [c["stock_router"] for c in carves if "agreement" in c["stock_router"]]  # not on Gemma
    if fitted:
        row["stock_router_agreement"] = sum(f["agreement"] for f in fitted) / len(fitted)
        row["stock_router_overlap"] = sum(f["overlap"] for f in fitted) / len(fitted)
    tuned = [c["router_finetune"] for c in carves if "router_finetune" in c]
    if tuned:
        row["finetune_loss"] = [sum(t["loss_before"] for t in tuned) / len(tuned),
                                sum(t["loss_after"] for t in tuned) / len(tuned)]
    if model in STOCK:
        row["export_kl"] = export_kl(out, texts, seq, args.threads, log)["kl"]
    a = after["all"]
    print(f"{model:12} {key:11} KL {a['kl']:.5f}  ppl {a['ppl']:9.3f} (orig {before['all']['ppl']:.3f})  "
          f"carve {row['carve_seconds_per_layer']:.2f} s/layer  {wall:.0f} s"
          + (f"  export KL {row['export_kl']:.5f}" if "export_kl" in row else ""), file=sys.stderr, flush=True)
    shutil.rmtree(out, ignore_errors=True)
    return row


def render(rows, models, args):
    lines = ["# CMoE: carving dense FFNs into MoE (bench/cmoe_table.py)", "",
             f"N = {N} experts per FFN, S = {S} shared; activation = (S + A) / N. Each cell: pooled KL(dense ‖ carved) "
             f"in 10⁻³ nats/token / pooled perplexity over the first {args.chars} characters of the five held-out "
             "files (windows of 128 tokens; Gemma 3 270M: 512 with BOS). Calibration: "
             f"{args.samples} samples × {args.seq_len} tokens of each domain's training text, seed 0, all of them "
             f"read by the carve. {args.threads} thread(s). `-router`: router fine-tuning (docs/cmoe.md). "
             "Regenerate with `.venv/bin/python bench/cmoe_table.py`.", "",
             "| configuration | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for key, _, _ in CONFIGS:
        cells = []
        for m in models:
            r = rows.get(m, {}).get(key)
            # max(…, 0): a 100 % carve's KL is rounding noise around 0 (-1e-9), never printed as -0.0
            cells.append("" if not r else f"{1000 * max(r['eval']['all']['kl'], 0.0):.1f} / {r['eval']['all']['ppl']:.2f}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    orig = [rows[m][next(iter(rows[m]))]["original"]["all"]["ppl"] for m in models]
    lines.append("| (dense ppl) | " + " | ".join(f"{p:.2f}" for p in orig) + " |")
    lines += ["", "## Carve cost: seconds per layer (router fine-tuning included) / apply peak RSS MiB", "",
              "| configuration | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for key, _, _ in CONFIGS:
        cells = [f"{rows[m][key]['carve_seconds_per_layer']:.2f} / {rows[m][key]['apply_peak_rss_mib']:.0f}"
                 if key in rows.get(m, {}) else "" for m in models]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    stock = [m for m in models if m in STOCK]
    if stock:
        lines += ["", "## qwen2-moe export: KL(carved ‖ export) 10⁻³ nats/token / the fitted router's choice on "
                  "the carve's rows: exact top-A set agreement, mean overlap with the carve's top A", "",
                  "| configuration | " + " | ".join(stock) + " |", "|---|" + "---|" * len(stock)]
        for key, _, _ in CONFIGS:
            cells = [f"{1000 * rows[m][key]['export_kl']:.1f} / {100 * rows[m][key]['stock_router_agreement']:.0f} % / "
                     f"{100 * rows[m][key]['stock_router_overlap']:.0f} %"
                     if key in rows.get(m, {}) else "" for m in stock]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(TINY + ["gemma-3-270m"]))
    ap.add_argument("--only", help="comma-separated configuration keys")
    ap.add_argument("--gguf", type=Path, default=DEFAULT_GGUF)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--chars", type=int, default=8000)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--merge", action="store_true", help="keep the other models' rows of cmoe.json")
    ap.add_argument("--render", action="store_true", help="run nothing: rewrite cmoe.md from cmoe.json")
    args = ap.parse_args()
    args.gguf = args.gguf.resolve()
    models = args.models.split(",")
    configs = [c for c in CONFIGS if not args.only or c[0] in args.only.split(",")]
    path = args.out / "cmoe.json"
    rows = json.loads(path.read_text())["runs"] if (args.merge or args.render) and path.exists() else {}
    if args.render:
        models = []
    with tempfile.TemporaryDirectory(prefix="lathe-cmoe-") as tmp:
        work = Path(tmp)
        texts = [str(p) for p in heldout_starts(work, args.chars)]
        for model in models:
            rows.setdefault(model, {})
            for key, active, finetune in configs:
                seq = 512 if model == "gemma-3-270m" else 128
                rows[model][key] = run_one(work, model, key, active, finetune, texts, args, seq)
                path.parent.mkdir(parents=True, exist_ok=True)  # after every run: a failure keeps the rest
                path.write_text(json.dumps({"runs": rows}, indent=1) + "\n")
    all_models = [m for m in TINY + ["gemma-3-270m"] if rows.get(m)]
    failures = []
    for m in all_models:
        r = rows[m]
        if "a100" in r and not r["a100"]["eval"]["all"]["kl"] < 1e-6:
            failures.append(f"{m}: the 100 % carve is not the dense model (KL {r['a100']['eval']['all']['kl']:.3g})")
        kls = [r[k]["eval"]["all"]["kl"] for k in ("a25", "a50", "a75") if k in r]
        if len(kls) == 3 and not kls[0] > kls[1] > kls[2]:
            failures.append(f"{m}: KL does not fall with activation: {kls}")
    settings = {"threads": args.threads, "chars_per_file": args.chars, "calibration": {
        "samples_per_domain": args.samples, "seq_len": args.seq_len, "seed": 0}, "gguf": args.gguf.name}
    path.write_text(json.dumps({"settings": settings, "runs": rows}, indent=1) + "\n")
    lines = render(rows, all_models, args)
    lines += ["", "Checks: 100 % carves exact and KL falling with activation on every model: " +
              ("yes" if not failures else "NO"), ""] + [f"- {f}" for f in failures]
    (args.out / "cmoe.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
