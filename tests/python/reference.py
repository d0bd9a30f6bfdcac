"""Reference helpers shared by the Python tests: an independent classification of transformers'
parameter names into lathe's inspect categories, and a runner for the lathe binary."""
import json
import math
import os
import subprocess
from pathlib import Path

SOURCE_DIR = Path(os.environ.get("LATHE_SOURCE_DIR", Path(__file__).resolve().parents[2]))
LATHE_BIN = os.environ.get("LATHE_BIN", str(SOURCE_DIR / "build" / "lathe"))
# Threads of every lathe process the tests start and of the reference torch (LATHE_THREADS, default 1:
# ctest runs two test files at once on two cores). The suite must give the same results at any count;
# `LATHE_THREADS=2 scripts/test.sh` checks that. Set in os.environ so that lathe subprocesses inherit it.
THREADS = int(os.environ.setdefault("LATHE_THREADS", "1"))
CATEGORIES = ["embedding", "attention", "dense_mlp", "routed_experts", "shared_experts", "router",
              "norm", "lm_head"]


def category_of(name: str) -> str:
    """Category of a transformers parameter name (written from the module names, not lathe's table)."""
    leaf = name.rsplit(".", 2)[-2] if name.endswith((".weight", ".bias")) else name.rsplit(".", 1)[-1]
    if "embed_tokens" in name:
        return "embedding"
    if name.startswith("lm_head"):
        return "lm_head"
    if leaf.endswith("norm") or leaf.endswith("layernorm"):
        return "norm"
    if ".self_attn." in name:
        return "attention"
    if "shared_expert_gate" in name:
        return "router"
    if ".shared_expert." in name or ".shared_experts." in name:
        return "shared_experts"
    if ".experts." in name:
        return "routed_experts"
    if name.endswith(".gate.weight") or name.endswith("e_score_correction_bias"):
        return "router"
    if ".mlp." in name:
        return "dense_mlp"
    raise AssertionError(f"unclassified parameter {name}")


def reference_counts(model) -> dict:
    """Parameters per category of a transformers model: parameters (tied ones once) plus the
    persistent buffers that checkpoints store (DeepSeek's e_score_correction_bias)."""
    counts = {c: 0 for c in CATEGORIES}
    seen = set()
    for name, p in model.named_parameters():
        counts[category_of(name)] += p.numel()
        seen.add(name)
    state_keys = set(model.state_dict().keys())
    for name, b in model.named_buffers():
        if name in state_keys and name not in seen:
            counts[category_of(name)] += b.numel()
    counts["total"] = sum(counts[c] for c in CATEGORIES)
    return counts


def recipe_text(model_dir, out, passes, tasks=("prose", "code"), samples=4, seq_len=64, export=None) -> str:
    """A recipe on a model directory with a calibration set of the corpora's training text (one set per
    task, seed 0), `passes` (YAML list items, or one item as a string) and an optional export line."""
    corpora = SOURCE_DIR / "data" / "corpora"
    sets = "".join(f"    - {{task: {t}, path: {corpora / t / 'train.txt'}}}\n" for t in tasks)
    items = [passes] if isinstance(passes, str) else passes
    text = (f"model: {model_dir}\noutput: {out}\ndevice: cpu\ncalibration:\n  seq-len: {seq_len}\n"
            f"  samples: {samples}\n  seed: 0\n  sets:\n{sets}passes:\n" + "".join(f"  - {p}\n" for p in items))
    return text + (f"export: {export}\n" if export else "")


def run_lathe(*args, check=True):
    """Runs the lathe binary; returns the CompletedProcess (text mode)."""
    proc = subprocess.run([LATHE_BIN, *map(str, args)], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"lathe {' '.join(map(str, args))} exited {proc.returncode}: {proc.stderr}")
    return proc


def inspect_json(model_dir) -> dict:
    return json.loads(run_lathe("inspect", model_dir, "--json").stdout)


def hf_perplexity(model_dir, text_path, seq_len):
    """Perplexity as docs/eval.md defines it (non-overlapping windows, each predicting its tokens
    2..n), computed with transformers and tokenizers."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM
    ids = Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode(Path(text_path).read_text(),
                                                                        add_special_tokens=False).ids
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids), seq_len):
            window = ids[start:start + seq_len]
            if len(window) < 2:
                continue
            x = torch.tensor([window])
            logp = torch.log_softmax(model(x).logits[0, :-1].double(), -1)
            nll -= logp.gather(1, x[0, 1:, None]).sum().item()
            count += len(window) - 1
    return math.exp(nll / count)
