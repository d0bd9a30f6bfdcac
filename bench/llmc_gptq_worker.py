"""llm-compressor side of bench/gptq_vs_llmcompressor.py; runs in the llm-compressor virtualenv
(bench/setup_llmcompressor.sh), never in the project's .venv.

  python llmc_gptq_worker.py quantize MODEL TOKENS.json OUT_DIR --group-size G [--threads 2]
      [--actorder static|none] [--all-experts|--routed-experts] [--dtype float32]
      GPTQ W4A16 (symmetric int4, group G) with llm-compressor's `oneshot` on exactly the token ids in
      TOKENS.json ({"input_ids": [[...], ...]}), sequential pipeline; saves the compressed-tensors
      checkpoint to OUT_DIR/compressed and prints one JSON line of phase timings (seconds since the
      interpreter started, so imports count): import_s, load_s, oneshot_s, save_s, total_s.
  python llmc_gptq_worker.py dense COMPRESSED_DIR ORIGINAL_MODEL DENSE_DIR
      Decompresses the compressed checkpoint with compressed-tensors (ModelCompressor.decompress on
      the safetensors: each quantized weight becomes scale · (q − zero) in the scale's dtype) and
      writes a dense HF checkpoint whose tensors have the ORIGINAL checkpoint's names, shapes and
      dtype (every tensor that was not quantized is copied from the original), plus the original
      config, so that `lathe eval` reads it exactly like the input model.
"""
import time

START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402


def quantize(args):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor import oneshot
    from llmcompressor.modeling.moe.linearize import load_quantizable_moe
    from llmcompressor.modifiers.gptq import GPTQModifier

    torch.set_num_threads(args.threads)
    t_import = time.perf_counter()

    ids = json.loads(Path(args.tokens).read_text())["input_ids"]
    dtype = getattr(torch, args.dtype)
    with load_quantizable_moe():
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    model.eval()
    t_load = time.perf_counter()

    dataset = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]})
    scheme = QuantizationScheme(
        targets=["Linear"],
        weights=QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group",
                                 group_size=args.group_size))
    recipe = GPTQModifier(
        config_groups={"group_0": scheme},
        # The same full-precision set as lathe's gptq pass (ALGORITHMS.md §1.6): the LM head and the
        # MoE routers (mlp.gate, Mixtral's block_sparse_moe.gate, Qwen2-MoE's shared_expert_gate).
        ignore=["lm_head", "re:.*mlp\\.gate$", "re:.*block_sparse_moe\\.gate$",
                "re:.*shared_expert_gate$"],
        dampening_frac=0.01,
        block_size=128,
        actorder=None if args.actorder == "none" else args.actorder)
    oneshot(model=model, dataset=dataset, recipe=recipe, tokenizer=args.model,
            num_calibration_samples=len(ids), max_seq_length=max(map(len, ids)),
            shuffle_calibration_samples=False, pipeline="sequential",
            moe_calibrate_all_experts=args.all_experts)
    t_oneshot = time.perf_counter()

    out = Path(args.out) / "compressed"
    model.save_pretrained(out, save_compressed=True)
    t_save = time.perf_counter()
    quantized = sum(1 for m in model.modules() if hasattr(m, "weight_scale"))
    print(json.dumps({"import_s": t_import - START, "load_s": t_load - t_import,
                      "oneshot_s": t_oneshot - t_load, "save_s": t_save - t_oneshot,
                      "total_s": t_save - START, "quantized_modules": quantized}))


# llm-compressor saves linearized MoE experts under gate_proj/up_proj/down_proj; checkpoints that name
# them otherwise (Mixtral: w1 = gate, w3 = up, w2 = down) get their own names back.
EXPERT_RENAMES = [(re.compile(r"(block_sparse_moe\.experts\.\d+\.)gate_proj\."), r"\1w1."),
                  (re.compile(r"(block_sparse_moe\.experts\.\d+\.)up_proj\."), r"\1w3."),
                  (re.compile(r"(block_sparse_moe\.experts\.\d+\.)down_proj\."), r"\1w2.")]


def original_name(key):
    for pattern, repl in EXPERT_RENAMES:
        key = pattern.sub(repl, key)
    return key


def dense(args):
    import torch
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationScheme
    from safetensors import safe_open
    from safetensors.torch import save_file

    compressed, original, out = Path(args.compressed), Path(args.original), Path(args.dense)
    qconfig = json.loads((compressed / "config.json").read_text())["quantization_config"]
    if qconfig["format"] != "pack-quantized" or len(qconfig["config_groups"]) != 1:
        raise SystemExit(f"unexpected quantization_config: {qconfig}")
    group = dict(next(iter(qconfig["config_groups"].values())))
    group.pop("format", None)
    scheme = QuantizationScheme.model_validate(group)

    # Every module with a weight_packed: decompress its local state dict (weight_packed,
    # weight_scale, weight_shape[, weight_zero_point]) with compressed-tensors' own compressor.
    tensors = {}
    for shard in sorted(compressed.glob("*.safetensors")):
        with safe_open(shard, "pt") as f:
            for k in f.keys():
                tensors[k] = f.get_tensor(k)
    decompressed = {}
    for key in tensors:
        if key.endswith(".weight_packed"):
            module = key[: -len(".weight_packed")]
            local = {n: tensors[f"{module}.{n}"] for n in
                     ("weight_packed", "weight_scale", "weight_shape", "weight_zero_point")
                     if f"{module}.{n}" in tensors}
            decompressed[module] = PackedQuantizationCompressor.decompress(local, scheme)["weight"]
    orig = {}
    for shard in sorted(original.glob("*.safetensors")):
        with safe_open(shard, "pt") as f:
            for k in f.keys():
                orig[k] = f.get_tensor(k)
    replaced, missing = 0, []
    for name, tensor in decompressed.items():
        key = name if name.endswith(".weight") else name + ".weight"
        if key not in orig:
            key = original_name(key)
        if key not in orig:
            missing.append(key)
            continue
        if tuple(orig[key].shape) != tuple(tensor.shape):
            raise SystemExit(f"{key}: shape {tuple(tensor.shape)} != original {tuple(orig[key].shape)}")
        orig[key] = tensor.to(orig[key].dtype).contiguous()
        replaced += 1
    if missing:
        raise SystemExit(f"decompressed tensors without an original counterpart: {missing[:5]} "
                         f"({len(missing)} in all)")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    save_file(orig, str(out / "model.safetensors"), metadata={"format": "pt"})
    for f in original.iterdir():
        if f.suffix == ".json" and f.name != "model.safetensors.index.json":
            shutil.copy(f, out / f.name)
    print(json.dumps({"replaced": replaced, "tensors": len(orig)}))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="command", required=True)
    q = sub.add_parser("quantize")
    q.add_argument("model")
    q.add_argument("tokens")
    q.add_argument("out")
    q.add_argument("--group-size", type=int, required=True)
    q.add_argument("--threads", type=int, default=2)
    q.add_argument("--actorder", choices=["static", "none"], default="static")
    q.add_argument("--all-experts", dest="all_experts", action="store_true", default=True)
    q.add_argument("--routed-experts", dest="all_experts", action="store_false")
    q.add_argument("--dtype", default="float32")
    d = sub.add_parser("dense")
    d.add_argument("compressed")
    d.add_argument("original")
    d.add_argument("dense")
    args = ap.parse_args()
    quantize(args) if args.command == "quantize" else dense(args)


if __name__ == "__main__":
    sys.exit(main())
