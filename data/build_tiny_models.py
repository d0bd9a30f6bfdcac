#!/usr/bin/env python3
"""Build and train lathe's tiny test models in exact Hugging Face format (see data/README.md).

1. Trains two tokenizers with `tokenizers` on the mixed full train corpora (data/corpora/full/, made by
   data/build_corpora.py):
     bytelevel  GPT-2/Qwen2 style byte-level BPE (Qwen2 split regex, ByteLevel pre-tokenizer + decoder),
                4093 BPE tokens + <|endoftext|> <|im_start|> <|im_end|> = 4096
     llama      Llama/SentencePiece style BPE with byte fallback: normalizer Prepend("▁") + Replace(" ", "▁"),
                no pre-tokenizer, <unk> <s> </s> + 256 <0xNN> tokens + BPE = 4096, decoder
                Replace/ByteFallback/Fuse/Strip (the layout of the Llama-2 / Mixtral tokenizer.json)
2. Trains one tiny model per family with `transformers` (seed 0, fp32, AdamW, warmup + cosine, a fixed
   number of steps), saves it in bf16 with save_pretrained (per-expert tensor names, the default
   save_original_format=True), reloads the saved files with AutoModelForCausalLM.from_pretrained and
   evaluates held-out loss / perplexity per task against a unigram baseline.
3. Extra fixtures: llama-sharded/ (llama's weights in >= 3 shards + index) and qwen3_moe-fused/ (qwen3_moe
   saved with save_original_format=False: fused 3-D expert tensors).
4. Writes data/models/training_log.json and data/models/TRAINING_LOG.md.

Usage:
  python data/build_tiny_models.py                      # everything (~30 min on 2 cores)
  python data/build_tiny_models.py --only llama         # one model (+ its fixtures); log entries merged
  python data/build_tiny_models.py --steps-scale 0.05   # quick smoke run (use --out elsewhere)

Determinism: every random choice is seeded (torch.manual_seed(SEED), a seeded torch.Generator for the
batches), torch.use_deterministic_algorithms(True) (needed for the MoE models); tokenizer training is
deterministic (the llama tokenizer's alphabet is chosen by the script, not by the trainer's tie-breaking). With the same torch build, CPU type and thread count the
saved weights are bit-identical run to run; across CPUs (different SIMD kernels in oneDNN/MKL) or
thread counts float rounding differs, so weights differ in the last bits and losses in the ~3rd decimal.
"""

import argparse
import collections
import datetime
import hashlib
import json
import math
import os
import platform
import re
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 0
TASKS = ["prose", "code", "math", "german", "definitions"]
BATCH_MIX = {"prose": 4, "code": 3, "math": 3, "german": 4, "definitions": 2}  # sequences per batch (16)
SEQ_LEN = 256
VOCAB = 4096
EVAL_WINDOWS = 64  # per task, non-overlapping 256-token windows from the committed heldout.txt
LR, WARMUP, MIN_LR_FRAC, WEIGHT_DECAY, CLIP = 3e-3, 20, 0.1, 0.1, 1.0
DSV3_BIAS_RATE = 0.005  # DeepSeek-V3 aux-loss-free balancing: bias += rate * sign(mean_load - load)

COMMON = dict(vocab_size=VOCAB, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-6, initializer_range=0.02,
              tie_word_embeddings=False)

# name: (family config class, tokenizer, config fields, training steps)
MODELS = {
    "llama": ("LlamaConfig", "llama", dict(intermediate_size=384), 500),
    "qwen2": ("Qwen2Config", "bytelevel", dict(intermediate_size=384, tie_word_embeddings=True), 500),
    "mixtral": ("MixtralConfig", "llama", dict(intermediate_size=96, num_local_experts=8,
                                               num_experts_per_tok=2), 450),
    "qwen2_moe": ("Qwen2MoeConfig", "bytelevel", dict(
        intermediate_size=384, moe_intermediate_size=64, shared_expert_intermediate_size=256, num_experts=8,
        num_experts_per_tok=2, norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[1]), 450),
    "qwen3_moe": ("Qwen3MoeConfig", "bytelevel", dict(
        head_dim=32, intermediate_size=384, moe_intermediate_size=64, num_experts=12, num_experts_per_tok=4,
        norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[]), 450),
    "olmoe": ("OlmoeConfig", "bytelevel", dict(intermediate_size=48, num_experts=16, num_experts_per_tok=4,
                                               norm_topk_prob=False), 450),
    "deepseek_v3": ("DeepseekV3Config", "bytelevel", dict(
        num_key_value_heads=4, intermediate_size=384, moe_intermediate_size=64, n_routed_experts=16,
        n_shared_experts=1, num_experts_per_tok=4, n_group=4, topk_group=2, routed_scaling_factor=2.5,
        norm_topk_prob=True, first_k_dense_replace=1, moe_layer_freq=1, scoring_func="sigmoid",
        topk_method="noaux_tc", q_lora_rank=64, kv_lora_rank=32, qk_nope_head_dim=32, qk_rope_head_dim=16,
        v_head_dim=32, num_nextn_predict_layers=0), 450),
    # Gemma 3 text: 1 KV head (as in Gemma 3 270M), a 32-token window so that the 256-token windows
    # of the tests cross it, and query_pre_attn_scalar != head_dim so that the attention scale is tested.
    "gemma3": ("Gemma3TextConfig", "llama", dict(
        num_key_value_heads=1, head_dim=32, intermediate_size=384, query_pre_attn_scalar=48, sliding_window=32,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
        tie_word_embeddings=True), 500),
}


def log(msg):
    print(f"[tiny {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------
# Tokenizers

QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
BYTELEVEL_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA_SPECIAL = ["<unk>", "<s>", "</s>"]
LLAMA_ALPHABET = 150  # characters with a token of their own; all others go through byte fallback


def corpus_iter(texts):
    for t in texts:
        for i in range(0, len(t), 4000):
            yield t[i:i + 4000]


def train_bytelevel(texts):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    tk = Tokenizer(models.BPE())
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tk.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - len(BYTELEVEL_SPECIAL), min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(corpus_iter(texts), trainer)
    tk.add_special_tokens(BYTELEVEL_SPECIAL)  # ids 4093.. like Qwen's added tokens after the BPE vocab
    assert tk.get_vocab_size() == VOCAB
    return wrap_tokenizer("bytelevel", tk)


def wrap_tokenizer(kind, tk):
    """The transformers tokenizer saved with the models: special tokens as the family's releases set them."""
    from transformers import PreTrainedTokenizerFast
    if kind == "bytelevel":
        return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=None, eos_token="<|endoftext|>",
                                       pad_token="<|endoftext|>", unk_token=None, model_max_length=2048,
                                       additional_special_tokens=BYTELEVEL_SPECIAL[1:])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=2048)


def committed_tokenizer(kind):
    """--reuse-tokenizers: the tokenizer of the committed fixture of the first model using `kind`, so
    that a model added later shares it even where the full corpora differ slightly from the ones the
    committed tokenizers were trained on (other Debian package versions change the code split)."""
    from tokenizers import Tokenizer
    source = HERE / "models" / next(n for n, m in MODELS.items() if m[1] == kind) / "tokenizer.json"
    if not source.exists():
        sys.exit(f"build_tiny_models: --reuse-tokenizers: {source} is missing")
    return wrap_tokenizer(kind, Tokenizer.from_file(str(source)))


def train_llama(texts):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    n_bpe = VOCAB - len(LLAMA_SPECIAL) - len(byte_tokens)
    sp_normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tk = Tokenizer(models.BPE())
    tk.normalizer = sp_normalizer
    # Training only: SentencePiece-like pieces ("▁word", runs of "▁", newline alone).
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"▁+(?=▁)|▁?[^▁\n]+|▁|\n"), behavior="isolated")
    # A fixed alphabet: the 150 most frequent characters, ties broken by code point (the trainer's own
    # limit_alphabet breaks ties arbitrarily, which made the vocabulary differ from run to run).
    counts = collections.Counter()
    for t in texts:
        counts.update(t.replace(" ", "▁"))
    counts.pop("\n", None)
    alphabet = [c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:LLAMA_ALPHABET]]
    trainer = trainers.BpeTrainer(vocab_size=n_bpe + 64, min_frequency=2, show_progress=False,
                                  initial_alphabet=alphabet, limit_alphabet=LLAMA_ALPHABET)
    tk.train_from_iterator(corpus_iter(texts), trainer)
    m = json.loads(tk.to_str())["model"]
    merges = [tuple(x) for x in m["merges"]]
    merged = {a + b for a, b in merges}
    # "\n" is left to byte fallback (<0x0A>), as in Llama's vocabulary
    alphabet = [t for t, _ in sorted(m["vocab"].items(), key=lambda kv: kv[1]) if t not in merged and "\n" not in t]
    merges = [mg for mg in merges if "\n" not in mg[0] + mg[1]][:n_bpe - len(alphabet)]
    tokens = LLAMA_SPECIAL + byte_tokens + alphabet + [a + b for a, b in merges]
    if len(tokens) != VOCAB or len(set(tokens)) != VOCAB:
        raise RuntimeError(f"llama tokenizer: {len(tokens)} tokens ({len(set(tokens))} distinct), want {VOCAB}")
    final = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, unk_token="<unk>",
                                 byte_fallback=True, fuse_unk=True))
    final.normalizer = sp_normalizer
    final.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                       decoders.Strip(" ", 1, 0)])
    final.add_special_tokens(LLAMA_SPECIAL)
    final.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                         special_tokens=[("<s>", 1)])
    return wrap_tokenizer("llama", final)


def encode(tok, text):
    """Token ids of a text without special tokens; encoded in paragraph-aligned chunks (~8 KB)."""
    chunks, cur = [], ""
    for para in re.split(r"(?<=\n\n)", text):
        cur += para
        if len(cur) >= 8000:
            chunks.append(cur)
            cur = ""
    if cur:
        chunks.append(cur)
    ids = []
    for enc in tok._tokenizer.encode_batch(chunks, add_special_tokens=False):
        ids.extend(enc.ids)
    return ids


# ------------------------------------------------------------------------------------------------
# Training and evaluation

def lr_at(step, steps):
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    p = (step - WARMUP) / max(1, steps - WARMUP)
    return LR * (MIN_LR_FRAC + (1 - MIN_LR_FRAC) * 0.5 * (1 + math.cos(math.pi * p)))


def router_modules(model):
    return [(n, m) for n, m in model.named_modules() if re.search(r"Top[Kk]Router$", type(m).__name__)]


def make_config(name):
    import transformers
    cls_name, tok_kind, fields, _ = MODELS[name]
    special = dict(bos_token_id=1, eos_token_id=2) if tok_kind == "llama" else \
        dict(bos_token_id=VOCAB - 3, eos_token_id=VOCAB - 3)  # <|endoftext|> as in Qwen2
    cfg = getattr(transformers, cls_name)(**{**COMMON, **special, **fields})
    return cfg


def config_summary(cfg):
    keys = ["model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "intermediate_size", "moe_intermediate_size",
            "shared_expert_intermediate_size", "num_local_experts", "num_experts", "n_routed_experts",
            "n_shared_experts", "num_experts_per_tok", "norm_topk_prob", "decoder_sparse_step", "mlp_only_layers",
            "first_k_dense_replace", "n_group", "topk_group", "routed_scaling_factor", "scoring_func",
            "topk_method", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
            "tie_word_embeddings", "router_aux_loss_coef", "max_position_embeddings", "rms_norm_eps",
            "bos_token_id", "eos_token_id", "query_pre_attn_scalar", "sliding_window", "layer_types",
            "hidden_activation"]
    d = cfg.to_dict()
    out = {k: d[k] for k in keys if k in d and d[k] is not None}
    rp = d.get("rope_parameters") or {}
    if "rope_theta" in rp:
        out["rope_theta"] = rp["rope_theta"]
    elif all(isinstance(v, dict) for v in rp.values()) and rp:  # per layer type (Gemma 3)
        out["rope_theta"] = {k: v.get("rope_theta") for k, v in sorted(rp.items())}
    if "attention_bias" in d:
        out["attention_bias"] = d["attention_bias"]
    return out


def train_model(name, streams, steps, threads):
    import torch
    from transformers import AutoModelForCausalLM
    torch.manual_seed(SEED)
    cfg = make_config(name)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    has_aux = hasattr(cfg, "router_aux_loss_coef") and cfg.model_type != "deepseek_v3"
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                             {"params": no_decay, "weight_decay": 0.0}], lr=LR, betas=(0.9, 0.95), eps=1e-8)
    routers = router_modules(model)
    picked = {}
    if cfg.model_type == "deepseek_v3":  # record the selected experts for the bias update
        for n, m in routers:
            m.register_forward_hook(lambda mod, inp, out, n=n: picked.__setitem__(n, out[2].detach()))
    gen = torch.Generator().manual_seed(SEED)
    tensors = {t: torch.tensor(streams[t], dtype=torch.long) for t in TASKS}
    curve, t0 = [], time.time()
    log(f"{name}: {n_params:,d} params, {steps} steps, batch {sum(BATCH_MIX.values())}x{SEQ_LEN}")
    for step in range(steps):
        rows = []
        for task, k in BATCH_MIX.items():
            data = tensors[task]
            starts = torch.randint(0, len(data) - SEQ_LEN, (k,), generator=gen)
            rows += [data[s:s + SEQ_LEN] for s in starts.tolist()]
        x = torch.stack(rows)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps)
        kwargs = {"output_router_logits": True} if has_aux else {}
        out = model(input_ids=x, labels=x, use_cache=False, **kwargs)
        loss = out.loss
        lm_loss = loss.item()
        aux = None
        if has_aux and getattr(out, "aux_loss", None) is not None:
            aux = out.aux_loss.item()
            lm_loss -= cfg.router_aux_loss_coef * aux
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if picked:
            with torch.no_grad():
                for n, m in routers:
                    load = torch.bincount(picked[n].flatten(), minlength=m.num_experts).float()
                    m.e_score_correction_bias += DSV3_BIAS_RATE * torch.sign(load.mean() - load)
        curve.append([round(lm_loss, 4)] + ([round(aux, 4)] if aux is not None else []))
        if step % 10 == 0 or step == steps - 1:
            el = time.time() - t0
            log(f"{name} step {step + 1}/{steps} loss {lm_loss:.4f}" + (f" aux {aux:.3f}" if aux is not None else "")
                + f" lr {lr_at(step, steps):.2e} {el:.0f}s ({el / (step + 1):.2f} s/step)")
    seconds = time.time() - t0
    return model, cfg, n_params, curve, seconds


def save_model(model, cfg, tok, out_dir):
    import torch
    from transformers import GenerationConfig
    if out_dir.exists():
        shutil.rmtree(out_dir)
    model.eval()
    model.config.output_router_logits = False  # an inference checkpoint, like the released ones
    # e_score_correction_bias stays fp32 (as in DeepSeek-V3 checkpoints; _keep_in_fp32_modules_strict)
    keep = {n: b.detach().clone() for n, b in model.named_buffers() if n.endswith("e_score_correction_bias")}
    model.to(torch.bfloat16)
    for n, buf in model.named_buffers():
        if n in keep:
            buf.data = keep[n]
    model.config.dtype = torch.bfloat16
    model.generation_config = GenerationConfig(bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id)
    model.save_pretrained(out_dir)  # save_original_format=True (default): per-expert tensor names
    tok.save_pretrained(out_dir)


def eval_model(out_dir, windows, unigram):
    """Reload the saved bf16 checkpoint (computing in fp32) and score the held-out windows per task."""
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
    model.eval()
    loads = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: loads.setdefault(n, []).append(out[2].flatten()))
             for n, m in router_modules(model)]
    res = {}
    with torch.no_grad():
        for task in TASKS:
            w = torch.tensor(windows[task], dtype=torch.long)
            nll, count = 0.0, 0
            for i in range(0, len(w), 16):
                x = w[i:i + 16]
                logits = model(input_ids=x, use_cache=False).logits.float()
                lp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, x[:, 1:, None])
                nll -= lp.sum().item()
                count += lp.numel()
            loss = nll / count
            res[task] = dict(loss=round(loss, 4), ppl=round(math.exp(loss), 2), tokens=count,
                             unigram_ppl=round(unigram["mix"][task], 2), unigram_task_ppl=round(unigram["task"][task], 2))
    for h in hooks:
        h.remove()
    balance = {}
    for n, idx in loads.items():
        m = dict(model.named_modules())[n]
        c = torch.bincount(torch.cat(idx), minlength=m.num_experts).float()
        frac = c / c.sum()
        balance[n] = dict(min_frac=round(frac.min().item(), 4), max_frac=round(frac.max().item(), 4),
                          uniform=round(1 / m.num_experts, 4))
    return res, balance


def same_logits(dir_a, dir_b, windows):
    """The two checkpoints load with from_pretrained and give bit-identical logits."""
    import torch
    from transformers import AutoModelForCausalLM
    x = torch.tensor(windows, dtype=torch.long)
    with torch.no_grad():
        a, b = (AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()(input_ids=x).logits
                for d in (dir_a, dir_b))
    return bool(torch.equal(a, b))


def unigram_ppl(streams, windows):
    """Add-one smoothed unigram perplexity on the held-out targets (positions 1.. of every window)."""
    import torch
    mix = torch.zeros(VOCAB, dtype=torch.float64)
    per = {}
    for t in TASKS:
        c = torch.bincount(torch.tensor(streams[t]), minlength=VOCAB).double()
        per[t] = c
        mix += c
    out = {"mix": {}, "task": {}}
    for t in TASKS:
        tgt = torch.tensor(windows[t])[:, 1:].flatten()
        for key, c in (("mix", mix), ("task", per[t])):
            logp = torch.log((c + 1) / (c.sum() + VOCAB))
            out[key][t] = math.exp(-logp[tgt].mean().item())
    return out


def dir_bytes(d, pattern="*.safetensors"):
    return sum(f.stat().st_size for f in d.glob(pattern))


def sha256_dir(d, pattern="*.safetensors"):
    h = hashlib.sha256()
    for f in sorted(d.glob(pattern)):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def tensor_listing(d, layer):
    """Names, shapes and dtypes of one decoder layer's tensors as stored on disk."""
    from safetensors import safe_open
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        with safe_open(f, "pt") as st:
            for k in st.keys():
                if k.startswith(f"model.layers.{layer}."):
                    s = st.get_slice(k)
                    out[k] = [list(s.get_shape()), s.get_dtype()]
    return dict(sorted(out.items()))


def write_markdown(logd, path):
    lines = ["# Tiny trained models: training log", "",
             "Generated by `data/build_tiny_models.py` (do not edit). Held-out: the committed "
             "`data/corpora/<task>/heldout.txt`, up to 64 non-overlapping 256-token windows per task, scored "
             "on the saved bf16 weights (reloaded with `from_pretrained`, fp32 compute). Unigram: add-one "
             "smoothed unigram model of the mixed training tokens, same held-out targets.", "",
             f"Seed {logd['seed']}; {logd['batch']}; {logd['optimizer']}; torch {logd['versions']['torch']}, "
             f"transformers {logd['versions']['transformers']}, tokenizers {logd['versions']['tokenizers']}; "
             f"{logd['threads']} threads.", "",
             "| model | family | tokenizer | params | safetensors bytes | steps | seconds | train loss | "
             + " | ".join(f"{t} ppl (unigram)" for t in TASKS) + " |",
             "|---" * (8 + len(TASKS)) + "|"]
    for name, m in logd["models"].items():
        cells = [name, m["family"], m["tokenizer"], f"{m['params']:,d}", f"{m['safetensors_bytes']:,d}",
                 str(m["steps"]), f"{m['seconds']:.0f}", f"{m['final_train_loss']:.3f}"]
        cells += [f"{m['heldout'][t]['ppl']:.1f} ({m['heldout'][t]['unigram_ppl']:.0f})" for t in TASKS]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Configurations", ""]
    for name, m in logd["models"].items():
        lines.append(f"- **{name}**: " + ", ".join(f"{k}={v}" for k, v in m["config"].items()))
    lines += ["", "## Expert load on held-out text (fraction of routed slots; uniform = 1/E)", ""]
    for name, m in logd["models"].items():
        if m.get("expert_balance"):
            lo = min(v["min_frac"] for v in m["expert_balance"].values())
            hi = max(v["max_frac"] for v in m["expert_balance"].values())
            u = next(iter(m["expert_balance"].values()))["uniform"]
            lines.append(f"- {name}: min {lo:.3f}, max {hi:.3f}, uniform {u:.3f} (over all MoE layers)")
    if logd.get("fixtures"):
        lines += ["", "## Fixtures", ""]
        for name, f in logd["fixtures"].items():
            lines.append(f"- **{name}**: {f['what']}")
    lines += ["", "Determinism: " + logd["determinism"], ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", help="model name(s) to build (repeatable or comma-separated)")
    ap.add_argument("--steps-scale", type=float, default=1.0, help="multiply every model's step count")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reuse-tokenizers", action="store_true",
                    help="load each tokenizer from its committed fixture instead of training it")
    ap.add_argument("--out", type=Path, default=HERE / "models")
    ap.add_argument("--corpora", type=Path, default=HERE / "corpora")
    args = ap.parse_args()
    names = list(MODELS)
    if args.only:
        names = [n for o in args.only for n in o.split(",")]
        bad = [n for n in names if n not in MODELS]
        if bad:
            sys.exit(f"build_tiny_models: unknown model(s) {bad}; known: {list(MODELS)}")

    import tokenizers
    import torch
    import transformers
    import safetensors
    torch.set_num_threads(args.threads)
    # CPU index_add_/index_put_ backward (the MoE expert dispatch) sums in a thread-dependent order
    # otherwise: MoE training with 2 threads was not bit-reproducible without this.
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(SEED)
    transformers.logging.set_verbosity_error()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

    full = args.corpora / "full"
    missing = [str(full / t / "train.txt") for t in TASKS if not (full / t / "train.txt").exists()]
    if missing:
        sys.exit(f"build_tiny_models: missing {missing}: run data/build_corpora.py first")
    train_texts = [(full / t / "train.txt").read_text(encoding="utf-8") for t in TASKS]
    heldout_texts = {t: (args.corpora / t / "heldout.txt").read_text(encoding="utf-8") for t in TASKS}

    kinds = sorted({MODELS[n][1] for n in names})
    toks, streams, windows, unigram = {}, {}, {}, {}
    for kind in kinds:
        t0 = time.time()
        if args.reuse_tokenizers:
            toks[kind] = committed_tokenizer(kind)
        else:
            toks[kind] = (train_llama if kind == "llama" else train_bytelevel)(train_texts)
        streams[kind] = {t: encode(toks[kind], txt) for t, txt in zip(TASKS, train_texts)}
        windows[kind] = {}
        for t in TASKS:
            ids = encode(toks[kind], heldout_texts[t])
            n = min(EVAL_WINDOWS, len(ids) // SEQ_LEN)
            windows[kind][t] = [ids[i * SEQ_LEN:(i + 1) * SEQ_LEN] for i in range(n)]
        unigram[kind] = unigram_ppl(streams[kind], windows[kind])
        tj = toks[kind]._tokenizer.to_str()
        log(f"tokenizer {kind}: vocab {toks[kind]._tokenizer.get_vocab_size()}, sha256 "
            f"{hashlib.sha256(tj.encode()).hexdigest()[:16]}, train tokens "
            + ", ".join(f"{t} {len(streams[kind][t]):,d}" for t in TASKS) + f" ({time.time() - t0:.0f}s)")

    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.out / "training_log.json"
    logd = json.loads(log_path.read_text()) if log_path.exists() else {}
    logd.update({
        "generator": "data/build_tiny_models.py", "seed": SEED, "threads": args.threads,
        "batch": f"{sum(BATCH_MIX.values())} x {SEQ_LEN} tokens per step, sequences per task {BATCH_MIX}",
        "optimizer": f"AdamW lr {LR} betas (0.9, 0.95) wd {WEIGHT_DECAY} (matrices), warmup {WARMUP}, cosine to "
                     f"{MIN_LR_FRAC} x lr, grad clip {CLIP}; fp32 training, bf16 checkpoint",
        "eval": f"committed data/corpora/<task>/heldout.txt, up to {EVAL_WINDOWS} non-overlapping {SEQ_LEN}-token "
                f"windows per task (no BOS), saved bf16 weights reloaded with from_pretrained, fp32 compute; "
                f"unigram_ppl: add-one smoothed unigram of all training tokens; unigram_task_ppl: of the task's own",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__, "safetensors": safetensors.__version__,
                     "python": platform.python_version()},
        "determinism": ("seeded (torch.manual_seed(0), seeded batch generator), torch.use_deterministic_algorithms(True); bit-identical weights on the same "
                        "machine type, torch build and thread count; across CPUs/thread counts float rounding "
                        "differs (last bits of weights, ~3rd decimal of losses). Tokenizers are deterministic."),
    })
    logd.setdefault("models", {})
    logd.setdefault("fixtures", {})
    logd.setdefault("tokenizers", {})
    if not args.reuse_tokenizers:  # a reused tokenizer keeps the entry of the run that trained it
        logd["tokenizers"].update({k: {"vocab": VOCAB, "sha256_tokenizer_json": hashlib.sha256(
            toks[k]._tokenizer.to_str().encode()).hexdigest(), "train_tokens": {t: len(streams[k][t]) for t in TASKS}}
            for k in kinds})

    for name in names:
        cls_name, kind, _, steps = MODELS[name]
        steps = max(1, round(steps * args.steps_scale))
        model, cfg, n_params, curve, seconds = train_model(name, streams[kind], steps, args.threads)
        out_dir = args.out / name
        save_model(model, cfg, toks[kind], out_dir)
        del model
        log(f"{name}: saved {out_dir} ({dir_bytes(out_dir):,d} bytes); evaluating the reloaded checkpoint")
        heldout, balance = eval_model(out_dir, windows[kind], unigram[kind])
        tail = [c[0] for c in curve[-20:]]
        entry = {
            "family": cfg.model_type, "config_class": cls_name, "tokenizer": kind, "config": config_summary(cfg),
            "params": n_params, "safetensors_bytes": dir_bytes(out_dir), "safetensors_sha256": sha256_dir(out_dir),
            "steps": steps, "seconds": round(seconds, 1), "seed": SEED,
            "final_train_loss": round(sum(tail) / len(tail), 4), "heldout": heldout, "expert_balance": balance,
            "layer2_tensors": tensor_listing(out_dir, 2),
            "tokenizer_source": "committed fixture (--reuse-tokenizers)" if args.reuse_tokenizers else "trained",
            "train_tokens": {t: len(streams[kind][t]) for t in TASKS},
            "loss_curve": curve, "loss_curve_columns": ["lm_loss"] + (["aux_loss"] if curve and len(curve[0]) > 1 else []),
            "date": datetime.date.today().isoformat(),
        }
        logd["models"][name] = entry
        log(f"{name}: train loss {entry['final_train_loss']:.3f}; held-out ppl " + ", ".join(
            f"{t} {heldout[t]['ppl']:.1f} (unigram {heldout[t]['unigram_ppl']:.0f})" for t in TASKS))
        worse = [t for t in TASKS if heldout[t]["ppl"] >= 0.8 * heldout[t]["unigram_ppl"]]
        if worse:
            log(f"WARNING {name}: held-out ppl not clearly below the unigram baseline for {worse}")

        from transformers import AutoModelForCausalLM
        if name == "llama":
            d = args.out / "llama-sharded"
            if d.exists():
                shutil.rmtree(d)
            m = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.bfloat16)
            m.save_pretrained(d, max_shard_size="1MB")
            toks[kind].save_pretrained(d)
            shards = sorted(p.name for p in d.glob("*.safetensors"))
            assert len(shards) >= 3 and (d / "model.safetensors.index.json").exists(), shards
            logd["fixtures"]["llama-sharded"] = {
                "what": f"llama's bf16 weights re-saved with max_shard_size='1MB': {len(shards)} shards + "
                        f"model.safetensors.index.json", "shards": shards, "safetensors_bytes": dir_bytes(d)}
            log(f"llama-sharded: {len(shards)} shards")
        if name == "qwen3_moe":
            d = args.out / "qwen3_moe-fused"
            if d.exists():
                shutil.rmtree(d)
            m = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.bfloat16)
            m.save_pretrained(d, save_original_format=False)
            toks[kind].save_pretrained(d)
            logd["fixtures"]["qwen3_moe-fused"] = {
                "what": "qwen3_moe's bf16 weights re-saved with save_original_format=False (fused 3-D experts: "
                        "mlp.experts.gate_up_proj [E, 2I, d], mlp.experts.down_proj [E, d, I])",
                "safetensors_bytes": dir_bytes(d), "layer2_tensors": tensor_listing(d, 2)}
            log("qwen3_moe-fused: saved")
        for fx in {"llama": ["llama-sharded"], "qwen3_moe": ["qwen3_moe-fused"]}.get(name, []):
            same = same_logits(out_dir, args.out / fx, windows[kind]["prose"][:2])
            logd["fixtures"][fx]["same_logits_as_" + name] = same
            log(f"{fx}: logits identical to {name}: {same}")
            if not same:
                sys.exit(f"build_tiny_models: {fx} does not reproduce {name}")
        log_path.write_text(json.dumps(logd, indent=1) + "\n")
        write_markdown(logd, args.out / "TRAINING_LOG.md")

    total = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    log(f"done: {args.out} holds {total:,d} bytes")


if __name__ == "__main__":
    main()
