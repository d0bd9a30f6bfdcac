"""ModelSpec against transformers' own config classes, for every family lathe supports.

HF omits a field from config.json when it equals the config class default, so lathe's family
defaults are part of the format: a minimal config and the fully spelled-out default config must
give the same spec, and both must give the parameter counts of the model transformers builds."""
import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from reference import CATEGORIES, inspect_json, reference_counts

FAMILIES = ["llama", "mistral", "qwen2", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2",
            "deepseek_v3", "gemma3_text"]
# Small enough to build on the meta device quickly, while keeping each family's structure.
SHRINK = {"num_hidden_layers": 6, "vocab_size": 1000}
# DeepSeek-V2's class default leaves num_experts_per_tok unset, which no model can run with.
REQUIRED = {"deepseek_v2": {"num_experts_per_tok": 6}}


def write_config(directory, config: dict):
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.mark.parametrize("family", FAMILIES)
def test_minimal_config_equals_full_defaults(tmp_path, family):
    extra = {**SHRINK, **REQUIRED.get(family, {})}
    full = AutoConfig.for_model(family, **extra).to_dict()
    a = inspect_json(write_config(tmp_path / "full", full))
    b = inspect_json(write_config(tmp_path / "minimal", {"model_type": family, **extra}))
    for key in ["params", "experts_per_layer", "attention", "routing", "layers", "tie_word_embeddings"]:
        assert a[key] == b[key], f"{family}: {key} differs between full and minimal config"


@pytest.mark.parametrize("family", FAMILIES)
def test_param_counts_match_transformers(tmp_path, family):
    config = AutoConfig.for_model(family, **SHRINK, **REQUIRED.get(family, {}))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    expected = reference_counts(model)
    got = inspect_json(write_config(tmp_path / family, config.to_dict()))
    assert got["weights"] is False
    for c in CATEGORIES + ["total"]:
        assert got["params"][c] == expected[c], f"{family}: {c}: lathe {got['params'][c]} != {expected[c]}"
    assert got["params"]["other"] == 0


def test_mixed_layouts(tmp_path):
    """qwen2_moe with mlp_only_layers and decoder_sparse_step, deepseek_v3 with first_k_dense_replace."""
    cases = {
        "qwen2_moe": ({"mlp_only_layers": [0, 3], "decoder_sparse_step": 1, "num_experts": 8}, [None, 8, 8, None, 8, 8]),
        "qwen3_moe": ({"decoder_sparse_step": 2, "num_experts": 16}, [None, 16, None, 16, None, 16]),
        "deepseek_v3": ({"first_k_dense_replace": 2, "n_routed_experts": 16}, [None, None, 16, 16, 16, 16]),
    }
    for family, (fields, experts) in cases.items():
        config = AutoConfig.for_model(family, **SHRINK, **fields)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        got = inspect_json(write_config(tmp_path / family, config.to_dict()))
        assert got["experts_per_layer"] == experts, family
        assert got["params"]["total"] == reference_counts(model)["total"], family
