#!/usr/bin/env python3
"""Benchmark (issue 6): lathe's GPTQ against llm-compressor's GPTQ (W4A16) on the same tiny models and
the same calibration tokens, on CPU with the same thread count.

For each model:
  1. Calibration tokens: --samples documents of the corpus (--corpus, default prose train.txt), each a
     run of consecutive paragraphs starting at evenly spaced paragraphs, long enough to give
     --seq-len tokens; each document is encoded with the model's tokenizer.json (the `tokenizers`
     package, add_special_tokens=True, i.e. as lathe encodes a calibration document) and cut to its
     first --seq-len tokens. Those ids go to llm-compressor; the documents go to lathe as a JSONL
     file with `packing: document` and `samples` = the number of documents, so lathe takes every
     document, cut to the same length. The ids lathe used are read back from its stats.h5
     (calibration_ids) and must equal the ids given to llm-compressor, or the run stops.
  2. Group size: 128 when it divides the input width of every quantized linear, else the largest
     power of two that does (tiny MoE experts are 48 … 96 wide). The same for both tools.
  3. lathe: `lathe --threads N run RECIPE` with `passes: [{gptq: {bits: 4, group-size: G, sym: true,
     act-order: static, damp: 0.01, mse: false}}]` (or the `rtn` pass where the binary has no gptq pass yet: --pass).
  4. llm-compressor (bench/llmc_gptq_worker.py in its own venv, bench/setup_llmcompressor.sh):
     oneshot + GPTQModifier (int4 symmetric, group G, targets Linear, ignore lm_head and the routers,
     dampening 0.01, act-order static, block 128), sequential pipeline, the same token ids, model
     loaded in float32 (lathe's working precision), saved compressed (pack-quantized). Afterwards,
     untimed, the compressed checkpoint is decompressed with compressed-tensors into a dense checkpoint
     with the original tensor names and dtype.
  5. Perplexity: `lathe eval` of the original model, lathe's output and llm-compressor's dense
     checkpoint, on the same held-out text (--heldout) and --eval-seq-len.

Timings (each tool runs as its own child process, niced, OMP/MKL threads = --threads):
  - *_wall_s / *_cpu_s: the whole quantization process, wall clock and user+sys CPU (wait4 rusage).
    lathe: start-up, tokenizing, calibration statistics, GPTQ, writing the dequantized checkpoint,
    manifest and report. llm-compressor: Python imports (torch, transformers, llmcompressor), model
    load, oneshot (tracing, calibration, GPTQ), save of the compressed checkpoint.
  - *_core_s: without start-up and model loading. lathe: the sum of its report's stage seconds
    (calibrate, decide, the quantization pass including writing shards). llm-compressor: oneshot +
    save_pretrained (imports and from_pretrained excluded).
  - peak RSS: the child's ru_maxrss (whole process, so llm-compressor's includes its imports).
  - --repeat N: the tools alternate N times; each timing is the minimum over the runs, RSS the max.
The headline ratios are llmc / lathe (time: > 1 means lathe is faster) for wall and core time, and
lathe / llmc for RSS. Neither side's perplexity evaluation is timed.

  .venv/bin/python bench/gptq_vs_llmcompressor.py [--models llama qwen2 mixtral qwen2_moe]
      [--samples 32] [--seq-len 128] [--threads 2] [--repeat 1] [--pass auto|gptq|rtn] [--lathe build-bench/lathe]
      [--llmc-python ~/.cache/lathe/bench-llmc-venv/bin/python] [--workdir /tmp/lathe-bench-gptq]
      [--json bench/results/gptq_vs_llmcompressor.json]
"""
import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "bench" / "llmc_gptq_worker.py"
DEFAULT_MODELS = ["llama", "qwen2", "mixtral", "qwen2_moe", "olmoe", "qwen3_moe", "deepseek_v3"]
# Linears that stay in full precision in both tools (ALGORITHMS.md §1.6): MoE routers.
ROUTER = re.compile(r".*(\.mlp\.gate|\.block_sparse_moe\.gate|\.shared_expert_gate)\.weight$")


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_measured(cmd, env, log_file):
    """Runs cmd as a child (stdout captured, stderr to log_file); returns stdout, wall s, CPU s and
    peak RSS bytes of that child alone (wait4)."""
    start = time.perf_counter()
    with open(log_file, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = Path(log_file).read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(map(str, cmd[:6]))} … exited {code}:\n{tail}")
    return out, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024


def thread_env(threads):
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               TOKENIZERS_PARALLELISM="false", TQDM_DISABLE="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return env


def group_size_for(model_dir):
    """128, or the largest power of two dividing the input width of every quantized linear."""
    from safetensors import safe_open
    widths = set()
    for shard in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            for name in f.keys():
                shape = f.get_slice(name).get_shape()
                if (name.startswith("model.layers.") and name.endswith(".weight") and len(shape) == 2
                        and not ROUTER.match(name)):
                    widths.add(shape[1])
    for g in (128, 64, 32, 16, 8, 4, 2):
        if all(w % g == 0 for w in widths):
            return g, sorted(widths)
    return -1, sorted(widths)


def paragraphs(text):
    """Runs of non-blank lines (blank: only spaces, tabs, \\r), as lathe splits a text file."""
    out, cur = [], []
    for line in text.split("\n"):
        if line.strip(" \t\r") == "":
            if cur:
                out.append("\n".join(cur))
                cur = []
        else:
            cur.append(line)
    if cur:
        out.append("\n".join(cur))
    return out


def calibration_documents(tokenizer_file, corpus, samples, seq_len):
    """`samples` documents, each consecutive paragraphs from an evenly spaced start, with at least
    seq_len tokens; returns (texts, ids cut to seq_len)."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(tokenizer_file))
    paras = paragraphs(Path(corpus).read_text(encoding="utf-8"))
    texts, ids = [], []
    for i in range(samples):
        j = i * len(paras) // samples
        end = (i + 1) * len(paras) // samples
        text = paras[j]
        enc = tok.encode(text, add_special_tokens=True).ids
        while len(enc) < seq_len and j + 1 < end:
            j += 1
            text += "\n\n" + paras[j]
            enc = tok.encode(text, add_special_tokens=True).ids
        if len(enc) < seq_len:
            raise SystemExit(f"{corpus}: document {i} has only {len(enc)} tokens (< {seq_len}); "
                             "use fewer --samples or a shorter --seq-len")
        texts.append(text)
        ids.append(enc[:seq_len])
    return texts, ids


def lathe_passes(lathe):
    out = subprocess.run([lathe, "passes"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line and not line[0].isspace()}


def write_recipe(path, model_dir, out_dir, calib_jsonl, samples, seq_len, pass_name, group, actorder):
    if pass_name == "gptq":
        opts = (f"{{bits: 4, group-size: {group}, sym: true, act-order: {actorder}, damp: 0.01, "
                "mse: false}")
    else:
        opts = f"{{bits: 4, group-size: {group}, sym: true}}"
    q = json.dumps
    path.write_text(
        f"model: {q(str(model_dir))}\noutput: {q(str(out_dir))}\ndevice: cpu\n"
        f"calibration:\n  seq-len: {seq_len}\n  samples: {samples}\n  seed: 0\n  packing: document\n"
        f"  sets:\n    - {{task: prose, path: {q(str(calib_jsonl))}}}\n"
        f"passes:\n  - {pass_name}: {opts}\n")


def lathe_calibration_ids(stats_h5):
    import h5py
    with h5py.File(stats_h5, "r") as f:
        ids = f["calibration_ids/all_layers/input/prose"][()]
        lengths = f["calibration_lengths/all_layers/input/prose"][()]
    return [list(map(int, row[:n])) for row, n in zip(ids, lengths)]


def lathe_eval(lathe, model_dir, heldout, seq_len, threads, json_out, env, reference=None):
    """Perplexity, or with `reference` (perplexity, KL(reference ‖ model), top-1 agreement)."""
    if not Path(json_out).exists():
        cmd = ["nice", "-n", "5", lathe, "--threads", str(threads), "eval", str(model_dir),
               "--text", str(heldout), "--seq-len", str(seq_len), "--json", str(json_out)]
        run_measured(cmd + (["--reference", str(reference)] if reference else []), env, str(json_out) + ".log")
    report = json.loads(Path(json_out).read_text())
    ppl = next(iter(report["perplexity"].values()))
    if not reference:
        return ppl
    d = next(iter(report["divergence"].values()))
    return ppl, d["kl"], d["top1"]


def bench_model(name, args, pass_name, env):
    """`name`: a committed tiny model (data/models/NAME) or any HF model directory."""
    model_dir = Path(name).resolve() if Path(name).is_dir() else (ROOT / "data" / "models" / name).resolve()
    name = model_dir.name
    work = Path(args.workdir) / name
    work.mkdir(parents=True, exist_ok=True)
    group, widths = group_size_for(model_dir)
    if group < 1:
        raise RuntimeError(f"no group size divides the widths {widths}")
    log(f"{name}: group size {group} (input widths {widths})")

    texts, ids = calibration_documents(model_dir / "tokenizer.json", args.corpus, args.samples,
                                       args.seq_len)
    calib = work / "calibration.jsonl"
    calib.write_text("".join(json.dumps({"text": t, "task": "prose"}) + "\n" for t in texts))
    tokens_json = work / "tokens.json"
    tokens_json.write_text(json.dumps({"input_ids": ids}))

    # The two tools alternate --repeat times; each timing is the minimum over the repeats (the
    # machine is shared, so the least disturbed run is the best estimate), RSS the maximum.
    lathe_out = work / "lathe-out"
    recipe = work / "recipe.yaml"
    write_recipe(recipe, model_dir, lathe_out, calib, args.samples, args.seq_len, pass_name, group,
                 args.actorder)
    llmc_out = work / "llmc-out"
    lathe_runs, llmc_runs = [], []
    for rep in range(args.repeat):
        log(f"{name}: lathe run ({pass_name}) {rep + 1}/{args.repeat}")
        cmd = ["nice", "-n", "5", args.lathe, "--threads", str(args.threads), "run", str(recipe), "--force"]
        _, wall, cpu, rss = run_measured(cmd, env, work / "lathe-run.log")
        report = json.loads((lathe_out / "report" / "report.json").read_text())
        stages = {p["name"]: p["seconds"] for p in report["passes"]}
        lathe_runs.append({"wall_s": wall, "cpu_s": cpu, "core_s": sum(stages.values()),
                           "stages_s": stages, "peak_rss_bytes": rss})
        if rep == 0:
            # `lathe run` writes stats.h5 only for passes that read statistics (gptq streams the
            # calibration set through apply); `lathe calibrate` with the same options builds the
            # same set (untimed) so the ids can be checked.
            stats = lathe_out / "stats.h5"
            if not stats.exists():
                stats = work / "ids.h5"
                subprocess.run([args.lathe, "--threads", str(args.threads), "calibrate", str(model_dir),
                                "--data", f"prose={calib}", "--packing", "document", "--samples", str(args.samples),
                                "--seq-len", str(args.seq_len), "--seed", "0", "--out", str(stats), "--force"],
                               check=True, capture_output=True, env=env)
            lathe_ids = lathe_calibration_ids(stats)
            if lathe_ids != ids:
                raise RuntimeError(f"{name}: lathe's calibration ids differ from llm-compressor's")

        if llmc_out.exists():
            shutil.rmtree(llmc_out)
        log(f"{name}: llm-compressor oneshot GPTQ {rep + 1}/{args.repeat}")
        cmd = ["nice", "-n", "5", args.llmc_python, str(WORKER), "quantize", str(model_dir),
               str(tokens_json), str(llmc_out), "--group-size", str(group), "--threads",
               str(args.threads), "--actorder", args.actorder] + (
                   [] if args.llmc_all_experts else ["--routed-experts"])
        out, wall, cpu, rss = run_measured(cmd, env, work / "llmc-run.log")
        phases = json.loads(out.strip().splitlines()[-1])
        llmc_runs.append({"wall_s": wall, "cpu_s": cpu, "core_s": phases["oneshot_s"] + phases["save_s"],
                          "phases_s": phases, "peak_rss_bytes": rss})
    n_tokens = sum(map(len, ids))
    best = lambda runs, key: min(r[key] for r in runs)  # noqa: E731
    lathe_wall, lathe_cpu, lathe_core = (best(lathe_runs, k) for k in ("wall_s", "cpu_s", "core_s"))
    llmc_wall, llmc_cpu, llmc_core = (best(llmc_runs, k) for k in ("wall_s", "cpu_s", "core_s"))
    lathe_rss = max(r["peak_rss_bytes"] for r in lathe_runs)
    llmc_rss = max(r["peak_rss_bytes"] for r in llmc_runs)
    stages = min(lathe_runs, key=lambda r: r["core_s"])["stages_s"]
    phases = min(llmc_runs, key=lambda r: r["core_s"])["phases_s"]
    log(f"{name}: decompressing llm-compressor's checkpoint (untimed)")
    dense = subprocess.run([args.llmc_python, str(WORKER), "dense", str(llmc_out / "compressed"),
                            str(model_dir), str(llmc_out / "dense")], env=env, capture_output=True, text=True)
    if dense.returncode != 0:
        raise RuntimeError(f"decompressing llm-compressor's checkpoint failed:\n{dense.stderr[-3000:]}")

    # perplexity
    log(f"{name}: lathe eval x3")
    tag = f"{Path(args.heldout).stem}-T{args.eval_seq_len}"
    ppl_fp = lathe_eval(args.lathe, model_dir, args.heldout, args.eval_seq_len, args.threads,
                        work / f"eval-fp-{tag}.json", env)
    for stale in (work / f"eval-lathe-{tag}.json", work / f"eval-llmc-{tag}.json"):
        stale.unlink(missing_ok=True)
    # KL to the original on the same windows: lathe's output directory (its quant/ sidecar, exact)
    # and llm-compressor's decompressed checkpoint.
    ppl_lathe, kl_lathe, top1_lathe = lathe_eval(args.lathe, lathe_out, args.heldout, args.eval_seq_len,
                                                 args.threads, work / f"eval-lathe-{tag}.json", env, model_dir)
    ppl_llmc, kl_llmc, top1_llmc = lathe_eval(args.lathe, llmc_out / "dense", args.heldout, args.eval_seq_len,
                                              args.threads, work / f"eval-llmc-{tag}.json", env, model_dir)

    return {
        "model": name, "group_size": group, "pass": pass_name, "calibration_tokens": n_tokens,
        "lathe_wall_s": lathe_wall, "lathe_cpu_s": lathe_cpu, "lathe_core_s": lathe_core,
        "lathe_stages_s": stages, "lathe_peak_rss_bytes": lathe_rss,
        "llmc_wall_s": llmc_wall, "llmc_cpu_s": llmc_cpu, "llmc_core_s": llmc_core,
        "llmc_phases_s": phases, "llmc_peak_rss_bytes": llmc_rss,
        "time_ratio_wall": llmc_wall / lathe_wall, "time_ratio_core": llmc_core / lathe_core,
        "time_ratio_cpu": llmc_cpu / lathe_cpu, "rss_ratio": lathe_rss / llmc_rss,
        "ppl_fp": ppl_fp, "ppl_lathe": ppl_lathe, "ppl_llmc": ppl_llmc,
        "ppl_rel_diff": ppl_lathe / ppl_llmc - 1,
        "kl_lathe": kl_lathe, "kl_llmc": kl_llmc, "kl_rel_diff": kl_lathe / kl_llmc - 1,
        "top1_lathe": top1_lathe, "top1_llmc": top1_llmc,
        "lathe_runs": lathe_runs, "llmc_runs": llmc_runs,
    }


def print_table(rows, file=sys.stdout):
    head = ("model", "G", "lathe s", "llmc s", "x wall", "lathe core", "llmc core", "x core",
            "x cpu", "lathe RSS", "llmc RSS", "RSS ratio", "ppl fp", "ppl lathe", "ppl llmc", "Δppl",
            "KL lathe", "KL llmc", "ΔKL")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | failed: {r['error'][:200]} |")
            continue
        mib = 2**20
        lines.append("| " + " | ".join([
            r["model"], str(r["group_size"]), f"{r['lathe_wall_s']:.1f}", f"{r['llmc_wall_s']:.1f}",
            f"{r['time_ratio_wall']:.1f}×", f"{r['lathe_core_s']:.1f}", f"{r['llmc_core_s']:.1f}",
            f"{r['time_ratio_core']:.1f}×", f"{r['time_ratio_cpu']:.1f}×",
            f"{r['lathe_peak_rss_bytes'] / mib:.0f} MiB", f"{r['llmc_peak_rss_bytes'] / mib:.0f} MiB",
            f"{r['rss_ratio']:.2f}", f"{r['ppl_fp']:.3f}", f"{r['ppl_lathe']:.3f}", f"{r['ppl_llmc']:.3f}",
            f"{100 * r['ppl_rel_diff']:+.2f}%", f"{r['kl_lathe']:.5f}", f"{r['kl_llmc']:.5f}",
            f"{100 * r['kl_rel_diff']:+.1f}%"]) + " |")
    print("\n".join(lines), file=file)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--corpus", default=str(ROOT / "data/corpora/prose/train.txt"))
    ap.add_argument("--heldout", default=str(ROOT / "data/corpora/prose/heldout.txt"))
    ap.add_argument("--eval-seq-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1,
                    help="quantization runs per tool (alternating); timings are the minimum")
    ap.add_argument("--pass", dest="pass_name", choices=["auto", "gptq", "rtn"], default="auto")
    ap.add_argument("--actorder", choices=["static", "none"], default="static")
    ap.add_argument("--llmc-routed-experts", dest="llmc_all_experts", action="store_false",
                    help="llm-compressor: moe_calibrate_all_experts=False (default: its default, True)")
    ap.add_argument("--lathe", default=os.environ.get("LATHE_BIN", str(ROOT / "build-bench" / "lathe")))
    ap.add_argument("--llmc-python",
                    default=str(Path.home() / ".cache/lathe/bench-llmc-venv/bin/python"))
    ap.add_argument("--workdir", default="/tmp/lathe-bench-gptq")
    ap.add_argument("--json", default=str(ROOT / "bench/results/gptq_vs_llmcompressor.json"))
    args = ap.parse_args()

    if not Path(args.llmc_python).exists():
        raise SystemExit(f"{args.llmc_python}: missing; run bash bench/setup_llmcompressor.sh")
    passes = lathe_passes(args.lathe)
    pass_name = args.pass_name
    if pass_name == "auto":
        pass_name = "gptq" if "gptq" in passes else "rtn"
        if pass_name == "rtn":
            log("WARNING: this lathe has no gptq pass; comparing lathe RTN against llm-compressor GPTQ")
    elif pass_name not in passes:
        raise SystemExit(f"{args.lathe} has no {pass_name} pass (it has: {sorted(passes)})")

    env = thread_env(args.threads)
    vers = subprocess.run([args.llmc_python, "-c", "import importlib.metadata as m; print(' '.join("
                           "f'{p}={m.version(p)}' for p in ('llmcompressor','compressed-tensors',"
                           "'transformers','torch')))"], capture_output=True, text=True).stdout.strip()
    settings = {"samples": args.samples, "seq_len": args.seq_len, "corpus": args.corpus,
                "heldout": args.heldout, "eval_seq_len": args.eval_seq_len, "threads": args.threads,
                "repeat": args.repeat, "pass": pass_name, "actorder": args.actorder,
                "llmc_moe_calibrate_all_experts": args.llmc_all_experts, "bits": 4, "sym": True,
                "damp": 0.01, "llmc_versions": vers, "lathe": str(args.lathe),
                "cpu_count": os.cpu_count()}
    rows, summary = [], {}
    for name in args.models:
        try:
            rows.append(bench_model(name, args, pass_name, env))
        except Exception as e:  # one model's failure (e.g. an architecture a tool rejects) is reported
            log(f"{name}: FAILED: {e}")
            lines = str(e).strip().splitlines()
            rows.append({"model": name, "error": lines[-1] if lines else repr(e)})
        print_table(rows[-1:], file=sys.stderr)
        ok = [r for r in rows if "error" not in r]
        if ok:
            geo = lambda xs: math.exp(sum(map(math.log, xs)) / len(xs))  # noqa: E731
            summary = {"geomean_time_ratio_wall": geo([r["time_ratio_wall"] for r in ok]),
                       "geomean_time_ratio_core": geo([r["time_ratio_core"] for r in ok]),
                       "geomean_time_ratio_cpu": geo([r["time_ratio_cpu"] for r in ok]),
                       "geomean_rss_ratio": geo([r["rss_ratio"] for r in ok]),
                       "max_ppl_rel_diff": max(r["ppl_rel_diff"] for r in ok),
                       "max_kl_rel_diff": max(r["kl_rel_diff"] for r in ok)}
        # Written after every model, so an interrupted run keeps what it measured.
        result = {"format": "lathe-bench-gptq-vs-llmcompressor", "version": 1,
                  "settings": dict(settings, load_average=os.getloadavg()),
                  "models": rows, "summary": summary}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")

    ok = [r for r in rows if "error" not in r]
    print_table(rows)
    if summary:
        print(f"\ngeomean llmc/lathe time: wall {summary['geomean_time_ratio_wall']:.2f}×, core "
              f"{summary['geomean_time_ratio_core']:.2f}×, cpu {summary['geomean_time_ratio_cpu']:.2f}×; "
              f"geomean lathe/llmc RSS {summary['geomean_rss_ratio']:.2f}; worst ppl lathe vs llmc "
              f"{100 * summary['max_ppl_rel_diff']:+.2f}%, worst KL lathe vs llmc {100 * summary['max_kl_rel_diff']:+.1f}%")
    print(f"JSON: {args.json}")
    return 0 if len(ok) == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
