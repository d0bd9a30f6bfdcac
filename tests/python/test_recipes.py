"""Every example recipe in recipes/ dry-runs (validated, plan decided, nothing written); the
per-layer expert-map recipe also runs fully and its output evaluates with lathe."""
import json
import subprocess
from pathlib import Path

import pytest

from reference import LATHE_BIN, SOURCE_DIR

RECIPES = sorted((SOURCE_DIR / "recipes").glob("*.yaml"))


def lathe(*args):
    return subprocess.run([str(LATHE_BIN), *map(str, args)], capture_output=True, text=True)


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_every_example_recipe_dry_runs(tmp_path, recipe):
    out = tmp_path / "out"
    proc = lathe("run", recipe, "--dry-run", "--set", f"output={out}")
    assert proc.returncode == 0, proc.stderr
    assert "[run] pipeline: " in proc.stderr
    assert "size:" in proc.stdout
    assert not out.exists() and not Path(str(out) + ".partial").exists()


def test_per_layer_expert_map_recipe_runs(tmp_path):
    recipe = SOURCE_DIR / "recipes" / "tiny-qwen3-moe-map.yaml"
    out = tmp_path / "out"
    proc = lathe("run", recipe, "--set", f"output={out}", "--set", "eval.seq-len=64")
    assert proc.returncode == 0, proc.stderr
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["num_experts_per_layer"] == [10, 8, 8, 10]
    manifest = json.loads((out / "lathe_manifest.json").read_text())
    q = manifest["tensors"]["model.layers.2.self_attn.q_proj.weight"]
    assert q["format"] == "rtn-int3-g32-asym"
    # layer 2 keeps [1, 2, 3, 5, …]: output expert 0 is input expert 1, input expert 0 is removed
    renamed = manifest["tensors"]["model.layers.2.mlp.experts.0.gate_proj.weight"]
    assert renamed["format"] == "BF16" and renamed["source"] == "model.layers.2.mlp.experts.1.gate_proj.weight"
    assert "model.layers.2.mlp.experts.0.gate_proj.weight" in manifest["removed"]
    assert len(manifest["removed"]) == 3 * (2 + 4 + 4 + 2)
    # lathe evaluates the non-uniform checkpoint: the output directory (quant/ dequantized exactly)
    # as `lathe run` did, and the bf16 copy in model/ within its rounding
    after = json.loads((out / "eval_after.json").read_text())["perplexity"]["heldout.txt"]
    for path, tolerance in ((out, 1e-9), (out / "model", 1e-3)):
        ev = lathe("eval", path, "--text", SOURCE_DIR / "data/corpora/code/heldout.txt", "--seq-len", "64",
                   "--json", tmp_path / "e.json")
        assert ev.returncode == 0, ev.stderr
        ppl = json.loads((tmp_path / "e.json").read_text())["perplexity"]["heldout.txt"]
        assert abs(ppl / after - 1) < tolerance, (path, ppl, after)


@pytest.mark.parametrize("content,code,needle", [
    # a missing map is a recipe mistake found before anything runs, named at its --set text
    (None, 2, "passes.drop-experts.map: no such file"),
    ("{", 3, "map.json"),
    ('{"format": "other"}', 3, "format"),
    ('{"format": "lathe-expert-map", "layers": {"9": [0, 1, 2, 3]}}', 3, "layers.9"),
    ('{"format": "lathe-expert-map", "layers": {"x": [0, 1, 2, 3]}}', 3, "layers.x"),
    ('{"format": "lathe-expert-map", "layers": {"1": [0, 1, 12, 3]}}', 3, "outside [0, 12)"),
    ('{"format": "lathe-expert-map", "layers": {"1": [0, 1, 2]}}', 3, "top_k = 4"),
    ('{"format": "lathe-expert-map", "layers": {"1": [0, 1, 1, 2]}}', 3, "repeat"),
    ('{"format": "lathe-expert-map", "layers": {"1": "all"}}', 3, "layers.1"),
])
def test_bad_expert_maps_are_refused(tmp_path, content, code, needle):
    recipe = SOURCE_DIR / "recipes" / "tiny-qwen3-moe-map.yaml"
    path = tmp_path / "map.json"
    if content is not None:
        path.write_text(content)
    proc = lathe("run", recipe, "--dry-run", "--set", f"output={tmp_path / 'out'}",
                 "--set", f"passes.drop-experts.map={path}")
    assert proc.returncode == code, proc.stderr
    assert needle in proc.stderr, proc.stderr
