"""`lathe inspect` on every committed tiny model against transformers and safetensors.

Parameters per category must equal what transformers builds from the same directory; bytes and
experts per layer must equal what the safetensors files hold."""
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from reference import CATEGORIES, SOURCE_DIR, inspect_json, reference_counts, run_lathe

MODELS = sorted(p.parent for p in (SOURCE_DIR / "data" / "models").glob("*/config.json"))
FAMILIES = {"llama", "qwen2", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3", "gemma3_text"}


def test_every_family_has_a_committed_model():
    families = {json.loads((m / "config.json").read_text())["model_type"] for m in MODELS}
    assert FAMILIES <= families, f"missing tiny models for {sorted(FAMILIES - families)}"


def safetensors_files(model_dir: Path):
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        return sorted({model_dir / f for f in json.loads(index.read_text())["weight_map"].values()})
    return [model_dir / "model.safetensors"]


def experts_from_checkpoint(model_dir: Path, num_layers: int):
    """Routed experts per layer read off the tensor names and shapes alone."""
    per_layer = [set() for _ in range(num_layers)]
    fused = [None] * num_layers
    for f in safetensors_files(model_dir):
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                m = re.match(r"model\.layers\.(\d+)\..*experts\.(\d+)\.", name)
                if m:
                    per_layer[int(m.group(1))].add(int(m.group(2)))
                m = re.match(r"model\.layers\.(\d+)\..*experts\.gate_up_proj$", name)
                if m:
                    fused[int(m.group(1))] = st.get_slice(name).get_shape()[0]
    return [fused[i] if fused[i] is not None else (len(s) if s else None) for i, s in enumerate(per_layer)]


@pytest.mark.parametrize("model_dir", MODELS, ids=[m.name for m in MODELS])
def test_inspect_matches_transformers(model_dir):
    got = inspect_json(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    expected = reference_counts(model)
    for c in CATEGORIES + ["total"]:
        assert got["params"][c] == expected[c], f"{model_dir.name}: {c}: lathe {got['params'][c]} != {expected[c]}"
    assert got["params"]["other"] == 0 and got["unrecognised_tensors"] == []
    assert got["num_layers"] == model.config.num_hidden_layers
    assert got["experts_per_layer"] == experts_from_checkpoint(model_dir, got["num_layers"])
    total = 0
    for f in safetensors_files(model_dir):
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                t = st.get_tensor(name)
                total += t.numel() * t.element_size()
    assert got["bytes"]["total"] == total
    assert sum(layer["params"] for layer in got["layers"]) + sum(
        got["params"][c] for c in ("embedding", "lm_head")) + model.config.hidden_size == got["params"]["total"]


@pytest.mark.parametrize("model_dir", MODELS[:1], ids=[m.name for m in MODELS[:1]])
def test_inspect_text_and_check_finite(model_dir):
    out = run_lathe("inspect", model_dir, "--check-finite").stdout
    assert "parameters:" in out and "streaming run: peak" in out


def test_inspect_bad_inputs(tmp_path):
    proc = run_lathe("inspect", tmp_path / "missing", check=False)
    assert proc.returncode == 5 and "not a model directory" in proc.stderr
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{"model_type": "mixtral", "hidden_size": "big"}')
    proc = run_lathe("inspect", tmp_path / "bad", check=False)
    assert proc.returncode == 2 and "hidden_size" in proc.stderr and "expected an integer" in proc.stderr
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text('{"model_type": "gpt2"}')
    proc = run_lathe("inspect", tmp_path / "gpt", check=False)
    assert proc.returncode == 4 and "model_type" in proc.stderr
    proc = run_lathe("inspect", check=False)
    assert proc.returncode == 2
