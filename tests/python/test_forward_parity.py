"""The layer-streaming forward against transformers, in fp32, for every family.

Each committed tiny model, and a second model per family that the test builds itself with other
shapes (heads, kv heads, experts, top-k, dense/MoE layout), must give the same logits as
transformers on a right-padded batch of 4 sequences of >= 64 tokens: max |Δlogit| <= 1e-4 over
the real (non-padding) positions."""
import json

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from reference import SOURCE_DIR, run_lathe

TOLERANCE = 1e-4
LENGTHS = [64, 97, 80, 71]
MODELS = sorted(p.parent for p in (SOURCE_DIR / "data" / "models").glob("*/config.json"))

# Second shapes per family: different heads / kv heads / experts / top-k / layout than data/models.
BASE = dict(vocab_size=300, hidden_size=48, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=3,
            intermediate_size=40, max_position_embeddings=256, tie_word_embeddings=False)
VARIANTS = {
    "llama": dict(num_key_value_heads=2, attention_bias=True, rope_parameters={"rope_type": "llama3", "rope_theta": 5e5,
                  "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    "mistral": dict(num_key_value_heads=1, head_dim=12, sliding_window=40),
    "qwen2": dict(num_key_value_heads=6, tie_word_embeddings=True),
    "mixtral": dict(num_local_experts=6, num_experts_per_tok=3),
    "qwen2_moe": dict(num_experts=10, num_experts_per_tok=3, moe_intermediate_size=16,
                      shared_expert_intermediate_size=24, mlp_only_layers=[1], norm_topk_prob=True),
    "qwen3_moe": dict(num_experts=12, num_experts_per_tok=4, moe_intermediate_size=16, head_dim=10,
                      decoder_sparse_step=2, norm_topk_prob=False),
    "olmoe": dict(num_experts=9, num_experts_per_tok=3, norm_topk_prob=True, clip_qkv=4.0),
    "deepseek_v2": dict(n_routed_experts=8, num_experts_per_tok=3, moe_intermediate_size=16, n_shared_experts=2,
                        first_k_dense_replace=1, topk_method="group_limited_greedy", n_group=4, topk_group=2,
                        routed_scaling_factor=1.5, q_lora_rank=None, kv_lora_rank=20, qk_nope_head_dim=8,
                        qk_rope_head_dim=4, v_head_dim=6, num_key_value_heads=6),
    "deepseek_v3": dict(n_routed_experts=12, num_experts_per_tok=3, moe_intermediate_size=16, n_shared_experts=1,
                        first_k_dense_replace=2, n_group=4, topk_group=2, routed_scaling_factor=2.0,
                        q_lora_rank=24, kv_lora_rank=20, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6,
                        num_key_value_heads=6, num_hidden_layers=4, rope_interleave=False,
                        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                         "original_max_position_embeddings": 64, "beta_fast": 32, "beta_slow": 1,
                                         "mscale": 0.8, "mscale_all_dim": 1.0}),
    # Windows shorter than every sequence, a scalar unlike head_dim, linear-scaled global RoPE, tied head.
    "gemma3_text": dict(num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=20, sliding_window=24,
                        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                        tie_word_embeddings=True,
                        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5},
                                         "sliding_attention": {"rope_type": "default", "rope_theta": 2e4}}),
}


def batch_for(vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = [torch.randint(0, vocab, (n,), generator=g).tolist() for n in LENGTHS]
    batch = torch.zeros(len(ids), max(LENGTHS), dtype=torch.long)
    mask = torch.zeros_like(batch)
    for i, row in enumerate(ids):
        batch[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, batch, mask


def max_logit_error(model_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    vocab = model.config.vocab_size
    ids, batch, mask = batch_for(vocab)
    with torch.no_grad():
        ref = model(input_ids=batch, attention_mask=mask).logits
    tokens, out = tmp_path / "tokens.json", tmp_path / "logits.bin"
    tokens.write_text(json.dumps({"ids": ids}))
    meta = json.loads(run_lathe("forward", model_dir, "--tokens", tokens, "--out", out).stdout)
    assert meta["shape"] == list(ref.shape)
    got = torch.from_numpy(np.fromfile(out, dtype=np.float32).reshape(ref.shape))
    assert ref[0, :LENGTHS[0]].std() > 0.3, "reference logits too flat for the tolerance to mean anything"
    return max((got[i, :n] - ref[i, :n]).abs().max().item() for i, n in enumerate(LENGTHS))


@pytest.mark.parametrize("model_dir", MODELS, ids=[m.name for m in MODELS])
def test_committed_models(model_dir, tmp_path):
    assert max_logit_error(model_dir, tmp_path) <= TOLERANCE


@pytest.mark.parametrize("family", sorted(VARIANTS))
def test_family_variants(family, tmp_path):
    torch.manual_seed(1)
    config = AutoConfig.for_model(family, **{**BASE, **VARIANTS[family]})
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # random routers and norms so routing and norms are really exercised
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
            else:  # O(1) logits, so that the 1e-4 tolerance is a tight one
                p.normal_(0, 0.15)
            if name.endswith("e_score_correction_bias"):
                p.normal_(0, 0.1)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.normal_(0, 0.1)
    model.save_pretrained(tmp_path / family)
    assert max_logit_error(tmp_path / family, tmp_path) <= TOLERANCE


def test_mismatched_weights_fail_at_load(tmp_path):
    """A tensor whose shape disagrees with config.json is named in the error (exit 3)."""
    config = AutoConfig.for_model("mixtral", **BASE, num_local_experts=4, num_experts_per_tok=2)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["num_local_experts"] = 5
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "tokens.json").write_text(json.dumps({"ids": [[1, 2, 3]]}))
    proc = run_lathe("forward", tmp_path / "m", "--tokens", tmp_path / "tokens.json", "--out", tmp_path / "o.bin",
                     check=False)
    assert proc.returncode == 3, proc.stderr
    assert "model.layers.0." in proc.stderr and ("gate" in proc.stderr or "experts.4" in proc.stderr)
