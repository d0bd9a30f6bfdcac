#!/usr/bin/env python3
"""Benchmark: `lathe eval` against transformers on the same model, text and thread count.

Both sides run as separate processes measured end to end (load + tokenize + forward), and each
reports its own forward-only time too. Peak RSS comes from wait4's rusage of each child. Models: the
given directories (default: the committed tiny models) and, with --large, a random-weight
Mixtral-shaped model of >= 1 GB generated into a temporary directory (never committed).

  .venv/bin/python bench/eval_vs_transformers.py [--large] [--threads 2] [--tokens 8192]
Prints one table: tokens/s and peak RSS for each side and their ratios (lathe / transformers)."""
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

HF_SCRIPT = r"""
import json, math, sys, time, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
path, text_file, seq_len, batch, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
tok = AutoTokenizer.from_pretrained(path)
ids = tok(open(text_file, encoding="utf-8").read(), add_special_tokens=False)["input_ids"]
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
# lathe's windows (docs/eval.md): BOS + seq_len - 1 tokens where tokenizer_config.json says
# add_bos_token: true (Gemma)
import os
config_path = os.path.join(path, "tokenizer_config.json")
adds_bos = os.path.exists(config_path) and json.load(open(config_path)).get("add_bos_token") is True
bos = [tok.bos_token_id] if adds_bos else []
step = seq_len - len(bos)
windows = [bos + ids[b:b + step] for b in range(0, len(ids), step) if len(bos + ids[b:b + step]) >= 2]
start, nll, predicted = time.perf_counter(), 0.0, 0
with torch.no_grad():
    for i in range(0, len(windows), batch):
        group = windows[i:i + batch]
        width = max(map(len, group))
        x = torch.zeros(len(group), width, dtype=torch.long); m = torch.zeros_like(x)
        for r, w in enumerate(group):
            x[r, :len(w)] = torch.tensor(w); m[r, :len(w)] = 1
        logp = model(input_ids=x, attention_mask=m).logits.log_softmax(-1)
        for r, w in enumerate(group):
            nll -= logp[r, :len(w) - 1].gather(-1, x[r, 1:len(w)].unsqueeze(-1)).sum().item()
            predicted += len(w) - 1
print(json.dumps({"perplexity": math.exp(nll / predicted), "tokens": len(ids), "forward_s": time.perf_counter() - start}))
"""


def peak_rss(cmd, env):
    """Runs cmd under its own process and returns (stdout, wall, max RSS in bytes)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{' '.join(map(str, cmd[:3]))} failed: {err[-2000:]}")
    return out, wall, usage.ru_maxrss * 1024


GENERATE_SCRIPT = r"""
import sys, torch
from transformers import AutoConfig, AutoModelForCausalLM
config = AutoConfig.for_model("mixtral", vocab_size=4096, hidden_size=1024, intermediate_size=3584,
                              num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=4,
                              num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=2048)
torch.manual_seed(0)
AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(sys.argv[1])
"""


def make_large_model(directory: Path):
    # In a child process: Linux keeps ru_maxrss across fork+exec, so a parent grown by building the
    # model would inflate every later child's measured peak RSS.
    subprocess.run([sys.executable, "-c", GENERATE_SCRIPT, str(directory)], check=True, capture_output=True)
    tok_src = ROOT / "data" / "models" / "mixtral"
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (directory / name).write_bytes((tok_src / name).read_bytes())
    size = sum(f.stat().st_size for f in directory.glob("*.safetensors"))
    print(f"generated Mixtral-shaped random model: {size / 2**30:.2f} GiB bf16", file=sys.stderr)


def bench(model_dir: Path, text_file: Path, args, env):
    lathe_cmd = [LATHE, "--threads", str(args.threads), "eval", str(model_dir), "--text", str(text_file),
                 "--seq-len", str(args.seq_len), "--micro-batch", str(args.batch), "--json", str(text_file) + ".json"]
    _, lathe_wall, lathe_rss = peak_rss(lathe_cmd, env)
    lathe_json = json.loads(Path(str(text_file) + ".json").read_text())
    hf_cmd = [sys.executable, "-c", HF_SCRIPT, str(model_dir), str(text_file), str(args.seq_len), str(args.batch),
              str(args.threads)]
    out, hf_wall, hf_rss = peak_rss(hf_cmd, env)
    hf = json.loads(out.strip().splitlines()[-1])
    name = text_file.name
    tokens = lathe_json["tokens"][name]
    return {"model": model_dir.name, "tokens": tokens, "lathe_tok_s": tokens / lathe_wall, "hf_tok_s": tokens / hf_wall,
            "hf_forward_tok_s": tokens / hf["forward_s"], "lathe_rss": lathe_rss, "hf_rss": hf_rss,
            "ppl_lathe": lathe_json["perplexity"][name], "ppl_hf": hf["perplexity"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--large", action="store_true", help="also a generated >= 1 GB Mixtral-shaped model")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--tokens", type=int, default=8192, help="approximate text length in tokens")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    models = args.models or [ROOT / "data" / "models" / m for m in ("llama", "mixtral", "qwen3_moe", "deepseek_v3")]
    text = (ROOT / "data" / "corpora" / "prose" / "heldout.txt").read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        text_file = Path(tmp) / "heldout.txt"
        text_file.write_text(text[: args.tokens * 4], encoding="utf-8")
        if args.large:
            make_large_model(Path(tmp) / "mixtral-large")
            models.append(Path(tmp) / "mixtral-large")
        rows = [bench(m, text_file, args, env) for m in models if m.exists()]
    print(f"threads={args.threads} seq_len={args.seq_len} batch={args.batch}")
    print(f"{'model':<14}{'tokens':>8}{'lathe tok/s':>13}{'hf tok/s':>10}{'speed ratio':>13}"
          f"{'lathe RSS':>11}{'hf RSS':>9}{'RSS ratio':>11}{'ppl lathe':>11}{'ppl hf':>9}")
    for r in rows:
        print(f"{r['model']:<14}{r['tokens']:>8}{r['lathe_tok_s']:>13.0f}{r['hf_tok_s']:>10.0f}"
              f"{r['lathe_tok_s'] / r['hf_tok_s']:>13.2f}{r['lathe_rss'] / 2**20:>9.0f}Mi{r['hf_rss'] / 2**20:>7.0f}Mi"
              f"{r['lathe_rss'] / r['hf_rss']:>11.2f}{r['ppl_lathe']:>11.3f}{r['ppl_hf']:>9.3f}")


if __name__ == "__main__":
    main()
