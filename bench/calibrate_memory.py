#!/usr/bin/env python3
"""Benchmark: peak resident memory of a layer-streaming lathe run on a MoE model larger than 8 GB.

DESIGN.md "Memory model": one decoder layer is resident at a time, plus the boundary activations. This
script checks that on a random-weight Qwen3-MoE-shaped checkpoint (bf16; by default hidden 2048, 14
layers of 64 experts with intermediate 768, top-k 8, 32 query heads x 128 / 4 kv heads, vocab 32000:
about 9.2 GB on disk), the peak RSS of `lathe calibrate` (or `lathe eval`) stays under 2 GiB plus the
activation buffer, i.e. flat in the model size.

The model is generated once (in a child process, so the generator's memory never shows up in a
measurement: Linux carries ru_maxrss across fork+exec) into --model-dir, written tensor by tensor so
the generator stays small too, and reused by later runs; --cleanup deletes it afterwards. Peak RSS is
the measured child's own ru_maxrss from wait4.

  .venv/bin/python bench/calibrate_memory.py [--command calibrate|eval] [--samples 4] [--seq-len 128]
      [--model-dir /tmp/lathe-bench-qwen3moe-8g] [--layers 14] [--threads 2] [--cleanup]
Prints: model size on disk, peak RSS, activation buffer size (N x T x d x bytes per element), RSS
minus buffer, wall time, and whether RSS < 2 GiB + buffer (exit status 1 when not)."""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_SOURCE = ROOT / "data" / "models" / "qwen3_moe"
GIB = 2**30

# Runs in its own process: writes a safetensors shard per layer (plus one for embeddings and head),
# header first, then each tensor generated and written on its own, so memory stays at one tensor.
GENERATE_SCRIPT = r"""
import json, os, struct, sys, torch
out, cfg = sys.argv[1], json.loads(sys.argv[2])
d, hd, h, kv = cfg["hidden_size"], cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
E, I, V, L = cfg["num_local_experts"], cfg["moe_intermediate_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
torch.manual_seed(0)
torch.set_num_threads(int(sys.argv[3]))

def layer_tensors(i):
    p = f"model.layers.{i}."
    t = [(p + "input_layernorm.weight", [d], "ones"), (p + "post_attention_layernorm.weight", [d], "ones"),
         (p + "self_attn.q_proj.weight", [h * hd, d], "w"), (p + "self_attn.k_proj.weight", [kv * hd, d], "w"),
         (p + "self_attn.v_proj.weight", [kv * hd, d], "w"), (p + "self_attn.o_proj.weight", [d, h * hd], "w"),
         (p + "self_attn.q_norm.weight", [hd], "ones"), (p + "self_attn.k_norm.weight", [hd], "ones"),
         (p + "mlp.gate.weight", [E, d], "w")]
    for e in range(E):
        q = f"{p}mlp.experts.{e}."
        t += [(q + "gate_proj.weight", [I, d], "w"), (q + "up_proj.weight", [I, d], "w"), (q + "down_proj.weight", [d, I], "w")]
    return t

shards = [("model.embed_tokens.weight", [V, d], "w"), ("model.norm.weight", [d], "ones"), ("lm_head.weight", [V, d], "w")]
shards = [shards] + [layer_tensors(i) for i in range(L)]
names = [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))]
weight_map, total = {}, 0
for name, tensors in zip(names, shards):
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for tname, shape, _ in tensors:
        n = 2
        for s in shape: n *= s
        header[tname] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
        weight_map[tname] = name
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)
    with open(f"{out}/{name}.tmp", "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for tname, shape, kind in tensors:
            w = torch.ones(shape) if kind == "ones" else torch.randn(shape) * 0.02
            f.write(w.to(torch.bfloat16).view(torch.int16).numpy().tobytes())
    total += offset
    os.replace(f"{out}/{name}.tmp", f"{out}/{name}")
    print(f"wrote {name}", file=sys.stderr, flush=True)
with open(f"{out}/model.safetensors.index.json", "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
"""


def model_config(args):
    config = json.loads((TOKENIZER_SOURCE / "config.json").read_text())
    config.update({
        "hidden_size": args.hidden, "head_dim": 128, "num_attention_heads": 32, "num_key_value_heads": 4,
        "num_local_experts": args.experts, "num_experts_per_tok": 8, "moe_intermediate_size": args.expert_intermediate,
        "intermediate_size": 6144, "num_hidden_layers": args.layers, "vocab_size": 32000, "tie_word_embeddings": False,
        "max_position_embeddings": 4096, "mlp_only_layers": [], "decoder_sparse_step": 1,
    })
    return config


def model_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.glob("*.safetensors"))


def ensure_model(directory: Path, args) -> int:
    config = model_config(args)
    stamp = directory / "config.json"
    if stamp.exists() and json.loads(stamp.read_text()) == config and (directory / "model.safetensors.index.json").exists():
        print(f"reusing {directory}", file=sys.stderr)
        return model_bytes(directory)
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    start = time.perf_counter()
    # A child process: its memory must not count in (or be inherited by) the measured run.
    subprocess.run([sys.executable, "-c", GENERATE_SCRIPT, str(directory), json.dumps(config), str(args.threads)],
                   check=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (TOKENIZER_SOURCE / name).exists():
            shutil.copyfile(TOKENIZER_SOURCE / name, directory / name)
    stamp.write_text(json.dumps(config, indent=2))  # last: marks the model complete
    size = model_bytes(directory)
    print(f"generated {directory}: {size / GIB:.2f} GiB bf16 in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return size


def run_measured(cmd, env):
    """Runs cmd as a child; returns (wall seconds, its peak RSS in bytes). Exits on failure."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (Popen.wait would reap it)
        wall = time.perf_counter() - start
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        if code != 0:
            out.seek(0), err.seek(0)
            raise SystemExit(f"{' '.join(map(str, cmd))}\nfailed with status {code}:\n{err.read()[-4000:]}\n"
                             f"{out.read()[-2000:]}")
    return wall, usage.ru_maxrss * 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--command", choices=("calibrate", "eval"), default="calibrate")
    parser.add_argument("--lathe", default=os.environ.get("LATHE_BIN", str(ROOT / "build" / "lathe")))
    parser.add_argument("--model-dir", type=Path, default=Path(tempfile.gettempdir()) / "lathe-bench-qwen3moe-8g")
    parser.add_argument("--cleanup", action="store_true", help="delete --model-dir at the end")
    parser.add_argument("--layers", type=int, default=14)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--expert-intermediate", type=int, default=768)
    parser.add_argument("--samples", type=int, default=4, help="N sequences")
    parser.add_argument("--seq-len", type=int, default=128, help="T tokens per sequence")
    parser.add_argument("--data", default=f"prose={ROOT / 'data' / 'corpora' / 'prose' / 'train.txt'}",
                        help="calibrate: TASK=PATH")
    parser.add_argument("--text", type=Path, default=ROOT / "data" / "corpora" / "prose" / "heldout.txt",
                        help="eval: held-out text (cut to about samples x seq-len tokens)")
    parser.add_argument("--dtype", choices=("f32", "bf16"), default=None, help="eval: --dtype (default: lathe's f32)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-gib", type=float, default=8.0, help="refuse a generated model smaller than this")
    args = parser.parse_args()

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    size = ensure_model(args.model_dir, args)
    if size < args.min_gib * 1e9:
        print(f"warning: the model is only {size / 1e9:.2f} GB (< {args.min_gib} GB)", file=sys.stderr)
    d = args.hidden
    try:
        with tempfile.TemporaryDirectory() as tmp:
            base = [args.lathe, "--threads", str(args.threads), args.command, str(args.model_dir)]
            if args.command == "calibrate":
                out = Path(tmp) / "stats.h5"
                cmd = base + ["--data", args.data, "--samples", str(args.samples), "--seq-len", str(args.seq_len),
                              "--out", str(out)]
                n, t, element = args.samples, args.seq_len, 2  # calibration activations are bf16
            else:
                text = args.text.read_text(encoding="utf-8")
                # ~3 characters per token for the 4096-token tokenizer; the JSON gives the true count.
                cut = Path(tmp) / "heldout.txt"
                cut.write_text(text[: args.samples * args.seq_len * 3], encoding="utf-8")
                report = Path(tmp) / "eval.json"
                cmd = base + ["--text", str(cut), "--seq-len", str(args.seq_len), "--micro-batch", str(args.samples),
                              "--json", str(report)]
                if args.dtype:
                    cmd += ["--dtype", args.dtype]
                element = 2 if args.dtype == "bf16" else 4  # eval keeps boundary activations in working precision
            print("running: " + " ".join(cmd), file=sys.stderr)
            wall, rss = run_measured(cmd, env)
            if args.command == "eval":
                tokens = json.loads(report.read_text())["tokens"][cut.name]
                n, t = math.ceil(tokens / args.seq_len), args.seq_len
    finally:
        if args.cleanup:
            shutil.rmtree(args.model_dir, ignore_errors=True)
    buffer = n * t * d * element
    limit = 2 * GIB + buffer
    ok = rss < limit
    print(f"command          : lathe {args.command} (threads={args.threads})")
    print(f"model on disk    : {size / GIB:.2f} GiB ({size} bytes, {args.layers} layers x {args.experts} experts)")
    print(f"peak RSS         : {rss / GIB:.3f} GiB ({rss // 2**20} MiB)")
    print(f"activation buffer: {buffer / 2**20:.1f} MiB (N={n} x T={t} x d={d} x {element} B)")
    print(f"RSS - buffer     : {(rss - buffer) / GIB:.3f} GiB")
    print(f"wall time        : {wall:.1f} s")
    print(f"RSS < 2 GiB + buffer ({limit / GIB:.3f} GiB): {'yes' if ok else 'NO'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
