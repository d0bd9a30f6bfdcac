"""The real Gemma 3 270M (the Q4_K_M GGUF scripts/setup.sh installs) through a whole recipe: `lathe run`
with the .gguf as model, GPTQ 4-bit g128 on a little calibration text, the hf, gptq and
compressed-tensors exports, then `lathe verify` (golden vectors of every packed export), the run's
own before/after evaluation, and the HF export loaded by stock transformers with the logits lathe
computes from the same directory. (bench/gemma_quality.py measures the quality; this checks that
the path works on a real model and stays working.)"""
import json

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from reference import SOURCE_DIR, THREADS, recipe_text, run_lathe
from test_gguf import GEMMA, require_gemma

torch.set_num_threads(THREADS)
HELDOUT = SOURCE_DIR / "data" / "corpora" / "prose" / "heldout.txt"


def test_gptq_recipe_on_the_real_gemma_exports_verifies_and_loads(tmp_path):
    require_gemma()
    text = tmp_path / "heldout.txt"
    text.write_text(HELDOUT.read_text(encoding="utf-8")[:3000], encoding="utf-8")
    out, recipe = tmp_path / "out", tmp_path / "recipe.yaml"
    recipe.write_text(recipe_text(GEMMA, out, "gptq: {bits: 4, group-size: 128}", tasks=("prose",), samples=4,
                                  seq_len=256, export="[hf, gptq, compressed-tensors]") +
                      f"eval: {{text: [{text}], seq-len: 256}}\n")
    run_lathe("run", recipe)
    verified = run_lathe("verify", out).stdout
    assert "0 failed" in verified, verified

    before = json.loads((out / "eval_before.json").read_text())
    after = json.loads((out / "eval_after.json").read_text())
    assert before["bos"] == 2 and 10 < before["perplexity"]["heldout.txt"] < 80
    d = after["divergence"]["heldout.txt"]
    print(f"\nGemma 3 270M gptq4-g128 (4 x 256 calibration tokens): ppl {before['perplexity']['heldout.txt']:.3f} -> "
          f"{after['perplexity']['heldout.txt']:.3f}, KL {d['kl']:.4f}, top-1 {d['top1']:.3f}")
    # Gemma 3 270M is sensitive to 4-bit weights: measured KL 0.28, top-1 0.68 here; RTN at the same
    # setting is at KL 0.67, top-1 0.58 (bench/results/gemma_quality.md), so this bound catches a GPTQ
    # that does no better than rounding.
    assert 0 < d["kl"] < 0.45 and d["top1"] > 0.6, d

    # The HF export in stock transformers: lathe's logits from the same directory.
    tok = AutoTokenizer.from_pretrained(out / "hf")
    ids = [tok.bos_token_id] + tok(text.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"][:95]
    model = AutoModelForCausalLM.from_pretrained(out / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0]
    (tmp_path / "ids.json").write_text(json.dumps({"ids": [ids]}))
    run_lathe("forward", out / "hf", "--tokens", tmp_path / "ids.json", "--out", tmp_path / "logits.f32")
    got = torch.from_numpy(np.fromfile(tmp_path / "logits.f32", dtype=np.float32).reshape(want.shape))
    assert want.std() > 1.0
    assert (got - want).abs().max().item() <= 1e-3, (got - want).abs().max().item()
    assert torch.equal(got.argmax(-1), want.argmax(-1))
