"""`lathe import FILE.gguf --out DIR` (export/gguf_import.h, docs/gguf.md) on the real Gemma 3 270M
(Q4_K_M) that scripts/setup.sh installs, against transformers loading the same GGUF file
(`from_pretrained(dir, gguf_file=...)`, its own dequantization and tokenizer conversion):

- tokenizer.json is transformers' GGUF tokenizer, entry for entry (262,144 tokens, 514,906 merges
  derived from the vocabulary, 6,384 added tokens), and lathe's tokenizer on the imported directory
  gives transformers' ids on every committed held-out corpus file;
- stock transformers loads the imported f32 directory with the GGUF model's logits, and
  `lathe forward` of it gives them too (fp32, both within 1e-4; 0 measured);
- bad files are refused before anything is written: another architecture (exit 4), a missing
  metadata key and a tensor whose shape disagrees with the metadata (exit 3), an existing output
  (exit 2)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from reference import SOURCE_DIR, THREADS, run_lathe
from test_gguf import GEMMA, build_gguf, require_gemma

torch.set_num_threads(THREADS)
CORPORA = SOURCE_DIR / "data" / "corpora"
DATA_ERROR, CONFIG_ERROR, UNSUPPORTED = 3, 2, 4


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    require_gemma()
    out = tmp_path_factory.mktemp("import") / "gemma3"
    run_lathe("import", GEMMA, "--out", out, "--dtype", "f32")
    return out


@pytest.fixture(scope="module")
def reference_tokenizer():
    from transformers import AutoTokenizer
    require_gemma()
    return AutoTokenizer.from_pretrained(GEMMA.parent, gguf_file=GEMMA.name)


def test_the_directory_is_complete_and_hashed(imported):
    config = json.loads((imported / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and config["num_hidden_layers"] == 18
    assert config["tie_word_embeddings"] is True and config["dtype"] == "float32"
    index = json.loads((imported / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(index) == 236 and "lm_head.weight" not in index
    assert len(set(index.values())) == 19  # 18 layers + embedding and final norm
    proc = run_lathe("verify", imported, check=False)  # an unquantized checkpoint: nothing to replay
    assert proc.returncode == CONFIG_ERROR
    manifest = json.loads((imported / "lathe_export.json").read_text())
    assert set(manifest["files"]) >= {"config.json", "tokenizer.json", *index.values()}
    assert not Path(str(imported) + ".partial").exists() and not Path(str(imported) + ".lock").exists()


def test_tokenizer_is_transformers_gguf_tokenizer(imported, reference_tokenizer):
    ours = json.loads((imported / "tokenizer.json").read_text())
    theirs = json.loads(reference_tokenizer.backend_tokenizer.to_str())
    for key in ("normalizer", "pre_tokenizer", "post_processor", "decoder", "added_tokens"):
        assert ours[key] == theirs[key], key
    for key in theirs["model"]:
        assert ours["model"][key] == theirs["model"][key], key
    assert len(ours["model"]["merges"]) == 514906 and len(ours["added_tokens"]) == 6384


@pytest.mark.parametrize("domain", ["prose", "code", "math", "german", "definitions"])
def test_lathe_tokenizes_every_corpus_as_transformers(imported, reference_tokenizer, domain, tmp_path):
    text = (CORPORA / domain / "heldout.txt").read_text()
    want = reference_tokenizer(text, add_special_tokens=False).input_ids
    got = json.loads(run_lathe("tokenize", imported, "--file", CORPORA / domain / "heldout.txt", "--json").stdout)["ids"]
    assert got == want, next(i for i, (a, b) in enumerate(zip(got + [None], want + [None])) if a != b)


def test_logits_equal_the_gguf_model_in_transformers_and_in_lathe(imported, reference_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM
    ids = reference_tokenizer((CORPORA / "prose" / "heldout.txt").read_text()[:3000]).input_ids[:160]
    x = torch.tensor([ids])
    with torch.no_grad():
        gguf_model = AutoModelForCausalLM.from_pretrained(GEMMA.parent, gguf_file=GEMMA.name, dtype=torch.float32).eval()
        want = gguf_model(x).logits[0]
        del gguf_model
        hf = AutoModelForCausalLM.from_pretrained(imported, dtype=torch.float32).eval()
        assert (hf(x).logits[0] - want).abs().max().item() <= 1e-4
    tokens = tmp_path / "ids.json"
    tokens.write_text(json.dumps({"ids": [ids]}))
    run_lathe("forward", imported, "--tokens", tokens, "--out", tmp_path / "logits.bin")
    got = torch.from_numpy(np.fromfile(tmp_path / "logits.bin", dtype=np.float32).reshape(want.shape))
    assert want[0].std() > 1.0, "logits too flat for the tolerance to mean anything"
    assert (got - want).abs().max().item() <= 1e-4
    assert torch.equal(got.argmax(-1), want.argmax(-1))


def gemma_like(rng=None, **edits) -> bytes:
    """A tiny file with Gemma 3's metadata keys and tensor names (1 layer, hidden 32), F32 zeros or,
    with a numpy Generator `rng`, N(0, 0.5) values; `edits` replace metadata values or drop them (None)."""
    d, ff, heads, kv, head_dim, vocab = 32, 64, 2, 1, 16, 8
    meta = {"general.architecture": (8, "gemma3"), "gemma3.block_count": (4, 1), "gemma3.embedding_length": (4, d),
            "gemma3.feed_forward_length": (4, ff), "gemma3.attention.head_count": (4, heads),
            "gemma3.attention.head_count_kv": (4, kv), "gemma3.attention.key_length": (4, head_dim),
            "gemma3.context_length": (4, 64), "gemma3.attention.layer_norm_rms_epsilon": (6, 1e-6),
            "gemma3.attention.sliding_window": (4, 16), "gemma3.rope.freq_base": (6, 1e6),
            "tokenizer.ggml.model": (8, "llama"), "tokenizer.ggml.tokens": (9, (8, ["<pad>", "<eos>", "<bos>", "<unk>", "a", "b", "ab", " "]))}
    for key, value in edits.items():
        if value is None:
            meta.pop(key)
        else:
            meta[key] = value
    shapes = {"token_embd.weight": (d, vocab), "output_norm.weight": (d,), "blk.0.attn_norm.weight": (d,),
              "blk.0.attn_q.weight": (d, heads * head_dim), "blk.0.attn_k.weight": (d, kv * head_dim),
              "blk.0.attn_v.weight": (d, kv * head_dim), "blk.0.attn_output.weight": (heads * head_dim, d),
              "blk.0.attn_q_norm.weight": (head_dim,), "blk.0.attn_k_norm.weight": (head_dim,),
              "blk.0.post_attention_norm.weight": (d,), "blk.0.ffn_norm.weight": (d,),
              "blk.0.ffn_gate.weight": (d, ff), "blk.0.ffn_up.weight": (d, ff), "blk.0.ffn_down.weight": (ff, d),
              "blk.0.post_ffw_norm.weight": (d,)}
    def values(dims):
        n = int(np.prod(dims))
        return b"\0" * 4 * n if rng is None else rng.normal(0, 0.5, n).astype(np.float32).tobytes()
    tensors = [(name, list(dims), 0, values(dims)) for name, dims in shapes.items()]
    return build_gguf(tensors, [(k, kind, v) for k, (kind, v) in meta.items()])


def refused(tmp_path, data: bytes, code: int, field: str):
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    out = tmp_path / "out"
    proc = run_lathe("import", path, "--out", out, check=False)
    assert proc.returncode == code and f"{path}: {field}: " in proc.stderr, proc.stderr
    assert not out.exists() and not Path(str(out) + ".partial").exists() and not Path(str(out) + ".lock").exists()


def test_a_tiny_gemma_like_file_imports(tmp_path):
    path = tmp_path / "tiny.gguf"
    path.write_bytes(gemma_like())
    run_lathe("import", path, "--out", tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["layer_types"] == ["sliding_attention"] and config["dtype"] == "bfloat16"
    proc = run_lathe("import", path, "--out", tmp_path / "out", check=False)
    assert proc.returncode == CONFIG_ERROR and "--force" in proc.stderr
    run_lathe("import", path, "--out", tmp_path / "out", "--force")


def test_bad_files_are_refused_before_anything_is_written(tmp_path):
    refused(tmp_path, gemma_like(**{"general.architecture": (8, "phi3")}), UNSUPPORTED, "general.architecture")
    refused(tmp_path, gemma_like(**{"gemma3.feed_forward_length": None}), DATA_ERROR, "gemma3.feed_forward_length")
    refused(tmp_path, gemma_like(**{"gemma3.feed_forward_length": (8, "64")}), DATA_ERROR, "gemma3.feed_forward_length")
    refused(tmp_path, gemma_like(**{"gemma3.feed_forward_length": (4, 48)}), DATA_ERROR, "blk.0.ffn_gate.weight")
    refused(tmp_path, gemma_like(**{"tokenizer.ggml.model": (8, "rwkv")}), UNSUPPORTED, "tokenizer.ggml.model")
    path = tmp_path / "ok.gguf"
    path.write_bytes(gemma_like())
    proc = run_lathe("import", path, "--out", tmp_path / "out", "--dtype", "f16", check=False)
    assert proc.returncode == CONFIG_ERROR and "--dtype" in proc.stderr and not (tmp_path / "out").exists()
