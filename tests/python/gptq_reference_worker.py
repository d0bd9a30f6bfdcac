"""Runs a GPTQ checkpoint with the reference loaders and writes float32 logits; started by
test_export.py under LATHE_GPTQ_PYTHON, a Python whose environment has gptqmodel (7.7.0 needs
torch >= 2.14.1, so it cannot share the project virtualenv, which pins torch 2.11):

    python3 -m venv ~/.cache/lathe/venv-gptq-ref
    ~/.cache/lathe/venv-gptq-ref/bin/pip install gptqmodel==7.7.0 optimum==2.3.0 transformers==5.23.0
    LATHE_GPTQ_PYTHON=~/.cache/lathe/venv-gptq-ref/bin/python ctest -R py.test_export

usage: gptq_reference_worker.py transformers|gptqmodel CHECKPOINT TOKENS.json OUT.bin

`transformers`: AutoModelForCausalLM (optimum + gptqmodel kernels) in float32; transformers 5.23
and optimum 2.3 ignore `dynamic`, so only uniform checkpoints load. `gptqmodel`: GPTQModel.load
with the pure-torch kernel in bfloat16 (it honours `dynamic`; its torch kernel takes fp16/bf16 only).
"""
import json
import os
import sys

import numpy as np
import torch

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
torch.set_num_threads(int(os.environ.get("LATHE_THREADS", "1")))  # reference.THREADS
mode, checkpoint, tokens, out = sys.argv[1:5]
if mode == "transformers":
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(checkpoint, device_map="cpu", dtype=torch.float32).eval()
else:
    from gptqmodel import BACKEND, GPTQModel
    model = GPTQModel.load(checkpoint, device="cpu", dtype=torch.bfloat16, backend=BACKEND.TORCH).model.eval()
ids = json.loads(open(tokens).read())["ids"]
batch = torch.zeros(len(ids), max(map(len, ids)), dtype=torch.long)
mask = torch.zeros_like(batch)
for i, row in enumerate(ids):
    batch[i, : len(row)] = torch.tensor(row)
    mask[i, : len(row)] = 1
with torch.no_grad():
    logits = model(input_ids=batch, attention_mask=mask).logits.float()
logits.numpy().astype(np.float32).tofile(out)
