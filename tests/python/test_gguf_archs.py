"""`lathe import FILE.gguf` (export/gguf_model.h, export/gguf_tokenizer.h, docs/gguf.md) for the
architectures other than Gemma 3, on GGUF files made from lathe's tiny models by llama.cpp's own
converter (convert_hf_to_gguf.py --outtype f32, from the llama-cpp-python sdist that
scripts/setup.sh unpacks; LATHE_LLAMA_CPP_DIR, set by scripts/test.sh):

- every imported tensor equals the original safetensors tensor bit for bit: llama.cpp's q/k row
  interleave (arch llama: Llama, Mistral, Mixtral) undone, stacked `ffn_*_exps` experts split,
  Qwen2-MoE's shared expert and its gate, Qwen2's q/k/v biases, Qwen3-MoE's and OLMoE's q/k norms;
- config.json is transformers' GGUF config field for field where transformers reads the
  architecture (except the MoE widths it leaves at class defaults), and the original config's where
  it matters;
- `lathe forward` of the imported directory gives the original model's logits exactly, and
  transformers' within 1e-4, also transformers loading the GGUF itself where it can;
- tokenizer.json is transformers' GGUF tokenizer entry for entry ("llama" sentencepiece BPE with
  merges derived from the scores, and "gpt2" byte-level BPE with the file's merges and the split of
  tokenizer.ggml.pre), and lathe's ids equal transformers' on every committed corpus file;
- bad files (written with the gguf package) are refused by name before anything is written.

The tiny vocabularies were trained here, so llama.cpp cannot recognise their pre-tokenizer by its
hash; tests/python/llama_cpp_convert.py lets the converter write the split they use (qwen2)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from reference import SOURCE_DIR, THREADS, run_lathe
from test_gguf_import import DATA_ERROR, UNSUPPORTED, refused

torch.set_num_threads(THREADS)
MODELS = SOURCE_DIR / "data" / "models"
CORPORA = sorted(p for p in (SOURCE_DIR / "data" / "corpora").glob("*/*") if p.suffix in (".txt", ".tsv"))
CONVERTER = Path(__file__).with_name("llama_cpp_convert.py")

# name: (tiny model it comes from, what transformers' GGUF loader takes from the file: "model" all of
# it; "lathe-config" its config, and its tensors only with lathe's config (it leaves Qwen3-MoE's
# expert width at a class default); "config" its config and tokenizer (gguf-py has no "mistral"
# tensor map); "tokenizer" only that (it reads Mixtral as a dense llama, and reshapes Qwen2-MoE's
# shared_expert_gate to [1, 1, d]); None: nothing (it refuses OLMoE).
CASES = {
    "llama": ("llama", "model"),
    "mistral": ("llama", "config"),  # the llama weights under MistralForCausalLM, --model-name mistral
    "mixtral": ("mixtral", "tokenizer"),
    "qwen2": ("qwen2", "model"),
    "qwen2_moe": ("qwen2_moe", "tokenizer"),  # every layer MoE: llama.cpp cannot write mlp_only_layers
    "qwen3_moe": ("qwen3_moe", "lathe-config"),
    "olmoe": ("olmoe", None),
}
TRANSFORMERS_CONFIG = [name for name, (_, how) in CASES.items() if how in ("model", "lathe-config", "config")]
SPEC_FIELDS = ["model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
               "num_attention_heads", "num_key_value_heads", "tie_word_embeddings", "num_experts",
               "num_local_experts", "num_experts_per_tok", "moe_intermediate_size",
               "shared_expert_intermediate_size", "norm_topk_prob", "decoder_sparse_step", "mlp_only_layers",
               "qkv_bias", "attention_bias", "bos_token_id", "eos_token_id"]


def llama_cpp_dir() -> Path:
    """scripts/test.sh sets LATHE_LLAMA_CPP_DIR (fails when setup did not unpack it); a bare pytest skips."""
    if "LATHE_LLAMA_CPP_DIR" not in os.environ:
        pytest.skip("LATHE_LLAMA_CPP_DIR is not set: scripts/setup.sh unpacks llama.cpp's converter and "
                    "scripts/test.sh points at it")
    path = Path(os.environ["LATHE_LLAMA_CPP_DIR"])
    if not (path / "convert_hf_to_gguf.py").is_file():
        pytest.fail(f"{path}/convert_hf_to_gguf.py is missing: scripts/setup.sh unpacks it")
    return path


def source_model(name: str, root: Path) -> Path:
    """The HF directory `name` converts: a committed tiny model, or a variant of one made here."""
    source = MODELS / CASES[name][0]
    if name not in ("mistral", "qwen2_moe"):
        return source
    out = root / f"{name}-source"
    shutil.copytree(source, out)
    config = json.loads((source / "config.json").read_text())
    if name == "mistral":
        config.update(model_type="mistral", architectures=["MistralForCausalLM"], sliding_window=None)
        for llama_only in ("attention_bias", "mlp_bias", "pretraining_tp"):
            config.pop(llama_only)
    else:  # layer 1 (dense in the fixture) gets a copy of layer 0's MoE block
        config["mlp_only_layers"] = []
        tensors = load_file(source / "model.safetensors")
        tensors = {k: v for k, v in tensors.items() if not k.startswith("model.layers.1.mlp.")}
        tensors |= {k.replace("layers.0.", "layers.1."): v.clone() for k, v in tensors.items()
                    if k.startswith("model.layers.0.mlp.")}
        save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """name → (source HF dir, GGUF file, imported f32 dir), made on first use."""
    cache = {}

    def get(name):
        if name not in cache:
            root = tmp_path_factory.mktemp(name)
            source = source_model(name, root)
            path = root / "gguf" / f"{name}.gguf"
            path.parent.mkdir()
            extra = ["--model-name", "mistral"] if name == "mistral" else []
            subprocess.run([sys.executable, CONVERTER, llama_cpp_dir(), "qwen2", source, "--outtype", "f32",
                            "--outfile", path, *extra], check=True, capture_output=True)
            run_lathe("import", path, "--out", root / "imported", "--dtype", "f32")
            cache[name] = (source, path, root / "imported")
        return cache[name]

    return get


def tensors_of(model_dir: Path) -> dict:
    out = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        out |= load_file(shard)
    return out


@pytest.mark.parametrize("name", CASES)
def test_every_tensor_is_the_original_bit_for_bit(converted, name):
    source, path, imported = converted(name)
    want, got = tensors_of(source), tensors_of(imported)
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert got[key].dtype == torch.float32 and torch.equal(got[key], value.float()), key
    stored = next(t for t in gguf.GGUFReader(path).tensors if t.name == "blk.0.attn_q.weight")
    q = want["model.layers.0.self_attn.q_proj.weight"].float().numpy()
    # arch llama files hold q's rows in llama.cpp's interleaved order, the others in HF's
    assert np.array_equal(np.asarray(stored.data), q) == (name not in ("llama", "mistral", "mixtral"))


@pytest.mark.parametrize("name", CASES)
def test_config_states_what_the_original_does(converted, name):
    from transformers import AutoConfig
    source, _, imported = converted(name)
    ours, original = AutoConfig.from_pretrained(imported), AutoConfig.from_pretrained(source)
    for field in SPEC_FIELDS:
        assert getattr(ours, field, None) == getattr(original, field, None), field
    head_dim = lambda c: getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads  # noqa: E731
    assert head_dim(ours) == head_dim(original)
    assert ours.rope_parameters["rope_theta"] == original.rope_parameters["rope_theta"]
    # GGUF stores the epsilon as f32; llama.cpp's OLMoE converter always writes 1e-5.
    eps = 1e-5 if name == "olmoe" else original.rms_norm_eps
    assert np.float32(ours.rms_norm_eps) == np.float32(eps)


@pytest.mark.parametrize("name", TRANSFORMERS_CONFIG)
def test_config_is_transformers_gguf_config(converted, name):
    from transformers import AutoConfig
    _, path, imported = converted(name)
    ours = AutoConfig.from_pretrained(imported).to_dict()
    theirs = AutoConfig.from_pretrained(path.parent, gguf_file=path.name).to_dict()
    ignored = {"_name_or_path", "_model_name_or_path", "architectures", "dtype", "transformers_version"}
    # transformers' loader does not read the expert widths the file states (expert_feed_forward_length)
    # and keeps Qwen3-MoE-30B-A3B's default, which does not fit these tensors.
    if name == "qwen3_moe":
        ignored.add("moe_intermediate_size")
        assert theirs["moe_intermediate_size"] == 768 and ours["moe_intermediate_size"] == 64
    if name == "mistral":  # general.name "mistral" makes transformers read an arch llama file as Mistral
        assert ours["model_type"] == "mistral"
    for key in sorted((set(ours) | set(theirs)) - ignored):
        assert ours.get(key) == theirs.get(key), key


def forward(model_dir: Path, ids, tmp_path: Path) -> torch.Tensor:
    tokens = tmp_path / "ids.json"
    tokens.write_text(json.dumps({"ids": [ids]}))
    out = tmp_path / f"{model_dir.name}.bin"
    run_lathe("forward", model_dir, "--tokens", tokens, "--out", out)
    return torch.from_numpy(np.fromfile(out, dtype=np.float32).reshape(len(ids), -1))


@pytest.mark.parametrize("name", CASES)
def test_logits_are_the_original_models(converted, name, tmp_path):
    from tokenizers import Tokenizer
    from transformers import AutoConfig, AutoModelForCausalLM
    source, path, imported = converted(name)
    text = (SOURCE_DIR / "data" / "corpora" / "prose" / "heldout.txt").read_text()[:2000]
    ids = Tokenizer.from_file(str(imported / "tokenizer.json")).encode(text).ids[:128]
    got = forward(imported, ids, tmp_path)
    assert got.std() > 1.0, "logits too flat for the tolerance to mean anything"
    if name != "olmoe":  # the same weights and config (lathe's sums may differ with the shard layout)
        assert (got - forward(source, ids, tmp_path)).abs().max().item() <= 1e-4
    x = torch.tensor([ids])
    with torch.no_grad():
        # OLMoE: the file's epsilon (1e-5, see above) in the original model.
        extra = {"rms_norm_eps": AutoConfig.from_pretrained(imported).rms_norm_eps} if name == "olmoe" else {}
        original = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **extra).eval()
        want = original(x).logits[0]
        assert (got - want).abs().max().item() <= 1e-4
        assert torch.equal(got.argmax(-1), want.argmax(-1))
        hf = AutoModelForCausalLM.from_pretrained(imported, dtype=torch.float32).eval()
        assert torch.equal(hf(x).logits[0], want)
        how = CASES[name][1]
        if how in ("model", "lathe-config"):
            config = {"config": AutoConfig.from_pretrained(imported)} if how == "lathe-config" else {}
            from_gguf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                             **config).eval()
            assert torch.equal(from_gguf(x).logits[0], want)


@pytest.mark.parametrize("name", [n for n, (_, how) in CASES.items() if how])
def test_tokenizer_is_transformers_gguf_tokenizer(converted, name):
    from transformers import AutoTokenizer
    _, path, imported = converted(name)
    ours = json.loads((imported / "tokenizer.json").read_text())
    theirs = json.loads(AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name).backend_tokenizer.to_str())
    assert ours == theirs
    assert ours["model"]["byte_fallback"] == (name in ("llama", "mistral", "mixtral"))
    assert len(ours["model"]["merges"]) > 3000


def test_olmoe_tokenizer_is_the_same_metadatas_tokenizer(converted):
    """transformers refuses OLMoE files; the tiny OLMoE has Qwen3-MoE's tokenizer, checked above."""
    assert (converted("olmoe")[2] / "tokenizer.json").read_text() == (converted("qwen3_moe")[2] / "tokenizer.json").read_text()


@pytest.fixture(scope="module")
def gguf_tokenizer(converted):
    """name → (transformers' tokenizer of the GGUF file, of the imported directory), made once."""
    from transformers import AutoTokenizer
    cache = {}

    def get(name):
        if name not in cache:
            _, path, imported = converted(name)
            cache[name] = (AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name),
                           AutoTokenizer.from_pretrained(imported))
        return cache[name]

    return get


@pytest.mark.parametrize("name", ["llama", "qwen2"])  # sentencepiece BPE and byte-level BPE
@pytest.mark.parametrize("corpus", CORPORA, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_lathe_tokenizes_every_corpus_file_as_transformers(converted, gguf_tokenizer, name, corpus):
    imported = converted(name)[2]
    reference, stock = gguf_tokenizer(name)
    want = reference(corpus.read_text(), add_special_tokens=False).input_ids
    got = json.loads(run_lathe("tokenize", imported, "--file", corpus, "--json").stdout)["ids"]
    assert got == want, next(i for i, (a, b) in enumerate(zip(got + [None], want + [None])) if a != b)
    # stock transformers loads the imported directory's tokenizer with the same ids
    assert stock(corpus.read_text()[:5000]).input_ids == reference(corpus.read_text()[:5000]).input_ids


# ---- bad files, written with the gguf package --------------------------------------------------

def tiny_qwen3moe(path: Path, experts_in_tensor=4, used=2, pre="qwen2", merges=("a b",), arch="qwen3moe",
                  tokenizer="gpt2", **metadata):
    """A one-layer Qwen3-MoE-shaped file (hidden 16, 2 heads of 8, 1 KV head, 4 experts of width 8)
    with a byte-level vocabulary of 8 tokens; `metadata` adds string keys."""
    d, heads, head_dim, experts, width, vocab = 16, 2, 8, 4, 8, 8
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(1), w.add_context_length(64), w.add_embedding_length(d), w.add_feed_forward_length(32)
    w.add_head_count(heads), w.add_head_count_kv(1), w.add_key_length(head_dim), w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1e4), w.add_expert_count(experts), w.add_expert_used_count(used)
    w.add_expert_feed_forward_length(width)
    w.add_tokenizer_model(tokenizer)
    if pre is not None:
        w.add_tokenizer_pre(pre)
    w.add_token_list(["a", "b", "ab", "Ġ", "Ġa", "c", "<|endoftext|>", "d"])
    w.add_token_types([1, 1, 1, 1, 1, 1, 3, 1])
    if merges is not None:
        w.add_token_merges(list(merges))
    w.add_eos_token_id(6)
    for key, value in metadata.items():
        w.add_string(key, value)
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (vocab, d), "output_norm.weight": (d,), "output.weight": (vocab, d),
              "blk.0.attn_norm.weight": (d,), "blk.0.attn_q.weight": (heads * head_dim, d),
              "blk.0.attn_k.weight": (head_dim, d), "blk.0.attn_v.weight": (head_dim, d),
              "blk.0.attn_output.weight": (d, heads * head_dim), "blk.0.attn_q_norm.weight": (head_dim,),
              "blk.0.attn_k_norm.weight": (head_dim,), "blk.0.ffn_norm.weight": (d,),
              "blk.0.ffn_gate_inp.weight": (experts, d), "blk.0.ffn_gate_exps.weight": (experts_in_tensor, width, d),
              "blk.0.ffn_up_exps.weight": (experts, width, d), "blk.0.ffn_down_exps.weight": (experts, d, width)}
    for name, shape in shapes.items():
        w.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    return path.read_bytes()


def test_a_tiny_qwen3moe_file_imports_with_its_experts_split(tmp_path):
    path = tmp_path / "tiny.gguf"
    tiny_qwen3moe(path)
    run_lathe("import", path, "--out", tmp_path / "out", "--dtype", "f32")
    stacked = load_file(next((tmp_path / "out").glob("model-00001-*.safetensors")))
    reader = gguf.GGUFReader(path)
    down = next(t for t in reader.tensors if t.name == "blk.0.ffn_down_exps.weight")
    for e in range(4):
        assert torch.equal(stacked[f"model.layers.0.mlp.experts.{e}.down_proj.weight"],
                           torch.from_numpy(np.asarray(down.data)[e].copy()))
    tokenizer = json.loads((tmp_path / "out" / "tokenizer.json").read_text())
    assert tokenizer["model"]["merges"] == [["a", "b"]] and tokenizer["added_tokens"][0]["content"] == "<|endoftext|>"


def test_bad_files_are_refused_by_name_before_anything_is_written(tmp_path):
    scratch = tmp_path / "scratch.gguf"
    refused(tmp_path, tiny_qwen3moe(scratch, experts_in_tensor=3), DATA_ERROR, "blk.0.ffn_gate_exps.weight")
    refused(tmp_path, tiny_qwen3moe(scratch, pre="no-such-pre"), UNSUPPORTED, "tokenizer.ggml.pre")
    refused(tmp_path, tiny_qwen3moe(scratch, pre=None), DATA_ERROR, "tokenizer.ggml.pre")
    refused(tmp_path, tiny_qwen3moe(scratch, merges=None), DATA_ERROR, "tokenizer.ggml.merges")
    refused(tmp_path, tiny_qwen3moe(scratch, merges=("a zz",)), DATA_ERROR, "tokenizer.ggml.merges")
    refused(tmp_path, tiny_qwen3moe(scratch, merges=("a b c",)), DATA_ERROR, "tokenizer.ggml.merges")
    refused(tmp_path, tiny_qwen3moe(scratch, used=5), DATA_ERROR, "num_experts_per_tok")
    refused(tmp_path, tiny_qwen3moe(scratch, **{"qwen3moe.rope.scaling.type": "yarn"}), UNSUPPORTED,
            "qwen3moe.rope.scaling.type")
    refused(tmp_path, tiny_qwen3moe(scratch, tokenizer="rwkv"), UNSUPPORTED, "tokenizer.ggml.model")
    refused(tmp_path, tiny_qwen3moe(scratch, arch="qwen3"), UNSUPPORTED, "general.architecture")
