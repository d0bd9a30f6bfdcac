"""Parity of `lathe tokenize` with the `tokenizers` library (issue 3, item 4).

Tokenizers compared:
  * the committed tiny models' tokenizer.json files (data/models/*/tokenizer.json, one per distinct file);
  * tokenizers this test trains with `tokenizers` that mimic each family's pipeline: GPT-2, Llama 3
    (its split regex, ignore_merges, whole words in the vocab that merges cannot build, BOS template),
    Qwen2 (NFC + its regex), DeepSeek-V3 (empty normalizer Sequence, three Splits, BOS template) and
    Llama 2 (Prepend/Replace normalizer, byte fallback, Llama 2 decoder chain, BOS template); plus a
    BPE with continuing_subword_prefix/end_of_word_suffix;
  * pipeline variants on those vocabularies (no training) that exercise the other components:
    NFKC/NFD/NFKD, Lowercase, Strip, Replace with a regex, Digits, every Split behavior and invert,
    possessive quantifiers, Metaspace (Mistral's prepend_scheme "first", split), unk + fuse_unk
    without byte fallback, and added tokens with lstrip/rstrip/single_word/normalized.

Text: >= 1 MB of each domain (prose, code, math, german) for the family tokenizers, 100 KB per domain
for the variants, and adversarial strings for all. The 1 MB comes from the full train splits of
data/build_corpora.py: data/corpora/full/ when it exists (it is gitignored), else the script is run
into a temporary directory (about 8 s; it needs the Debian source packages that scripts/setup.sh
installs). Training uses the committed held-out splits, so the compared text is not training text.

Checked: identical ids (with and without add_special_tokens), lathe's decode equal to tokenizers'
decode (with and without skip_special_tokens), and decode(encode(x)) == x for the lossless
tokenizers (NFC(x) for Qwen2's NFC normalizer) on text without special-token strings. Each tokenizer
costs four lathe runs (--jsonl batches every text into one process); the reference encodings run
through encode_batch on all cores.
"""
import json
import tempfile
import os
import subprocess
import sys
import unicodedata
from collections import Counter
from pathlib import Path

import pytest

from reference import SOURCE_DIR, run_lathe

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers  # noqa: E402
from tokenizers import pre_tokenizers, processors, trainers  # noqa: E402

# The reference encodings use encode_batch across the CPU's threads; "true" keeps them parallel
# after the test forks lathe (tokenizers would otherwise turn parallelism off with a warning).
os.environ["TOKENIZERS_PARALLELISM"] = "true"

DOMAINS = ["prose", "code", "math", "german"]
FULL_BYTES = 1_050_000
VARIANT_BYTES = 100_000
VOCAB = 2500

GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LLAMA3_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"""
                r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
               r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
# DeepSeek-V3's tokenizer.json, verbatim (the third pattern holds literal CR and LF characters).
DEEPSEEK_SPLITS = [
    r"\p{N}{1,3}",
    "[一-龥぀-ゟ゠-ヿ]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
    " ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
]
# o200k-style pattern with possessive quantifiers and a case-insensitive class.
POSSESSIVE_SPLIT = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}|"""
                    r""" ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""")

ADVERSARIAL = [
    "", " ", "   ", "\t", "\n", "\r\n", "a\r\nb\r\n\r\nc", " " * 1000, "\n" * 300, " \t \n\u3000\u00a0 " * 50,
    "trailing spaces   ", "   leading spaces", "two  spaces  between", "x" * 20000,
    "Supercalifragilisticexpialidocious" * 300, "https://example.com/" + "a1b2c3" * 2000,
    "👨‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 👍🏽 thumbs, 🇩🇪🇫🇷 flags, 😀😃😄",
    "e\u0301 a\u0308\u0301 \u0301leading mark, Z\u0351\u0352\u0357a\u0300\u0301l\u0342g\u0303o",
    "\u1100\u1161\u11a8 한국어 텍스트 Hangul", "日本語のテキストと漢字、カタカナ。中文文本，标点！",
    "مرحبا بالعالم \u200fשלום עולם\u200e mixed RTL", "\x00\x01\x07\x1b[31mred\x1b[0m\x7f\x85\x9f",
    "\x0b\x0c\x1c\x1d\x1e\x1f", "I'm you're WE'LL it'S 'ſ 'K they've I'd", "1234567890 ١٢٣٤ ½ ² Ⅻ ⁵ 12,345.67",
    "İstanbul ΣΑΣ ǅ ﬁ ẞ ß ﬃ Å K", "\ufeffBOM \ufffd \uffff \U0010ffff \ue000 \U0001d400",
    "tab\tseparated\tvalues\n  indented\n\tcode()", "<|endoftext|> and <s>hello</s> a<s>b [SEP]x <mask>",
    "Hello World! HELLO world cat concatenate cat. ing singing", "∀x∈ℝ: x² ≥ 0 ⟹ √x ∈ ℝ ∪ {∞}",
    "def f(x):\n    return x ** 2  # comment\n\n\n", "ä ö ü Ä Ö Ü ß Straße über Öl",
    "\u2028line sep\u2029para sep\u0085nel", "a\u200db\u200cc\u2060d", "▁ ▁▁ leading▁metaspace",
    "<0x41> <0xZZ> <0x+a>", "-- --- - a-b-c 1-2", "..., ;; ,", "\u0300\u0301\u0302",
]

# Tokenizers that give the text back: byte-level BPE without normalizer, and Llama 2's byte fallback
# with the decoder undoing Prepend/Replace; Qwen2 gives back the NFC form.
LOSSLESS = {"gpt2": "exact", "llama3": "exact", "deepseek_v3": "exact", "llama2": "exact",
            "qwen2": "nfc"}


# --------------------------------------------------------------------------------------------
# text


def cut(text: str, n_bytes: int) -> str:
    """The first n_bytes of text (UTF-8), extended to the end of that line."""
    data = text.encode()
    if len(data) <= n_bytes:
        return text
    end = data.find(b"\n", n_bytes)
    return data[: end + 1 if end >= 0 else len(data)].decode()


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict:
    full = SOURCE_DIR / "data" / "corpora" / "full"
    if not all((full / d / "train.txt").is_file() for d in DOMAINS):
        out = tmp_path_factory.mktemp("corpora")
        subprocess.run([sys.executable, str(SOURCE_DIR / "data" / "build_corpora.py"), "--out", str(out)],
                       check=True, capture_output=True)
        full = out / "full"
    texts = {d: cut((full / d / "train.txt").read_text(encoding="utf-8"), FULL_BYTES) for d in DOMAINS}
    for d, t in texts.items():
        assert len(t.encode()) >= 1_000_000, f"{d}: only {len(t.encode())} bytes of text"
    return texts


@pytest.fixture(scope="module")
def training_text() -> list:
    chunks = []
    for d in DOMAINS:
        text = (SOURCE_DIR / "data" / "corpora" / d / "heldout.txt").read_text(encoding="utf-8")
        chunks += [text[i:i + 4000] for i in range(0, len(text), 4000)]
    return chunks


# --------------------------------------------------------------------------------------------
# tokenizers built by the test


def bpe_trainer(**kw):
    return trainers.BpeTrainer(vocab_size=VOCAB, min_frequency=2, show_progress=False, **kw)


def byte_level_family(chunks, pre_tokenizer, normalizer=None, **model_kw):
    tk = Tokenizer(models.BPE(**model_kw))
    if normalizer is not None:
        tk.normalizer = normalizer
    tk.pre_tokenizer = pre_tokenizer
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(chunks, bpe_trainer(initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tk


def bos_template(bos: str, bos_id: int):
    return processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, bos_id)])


def build_gpt2(chunks):
    tk = byte_level_family(chunks, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    tk.add_special_tokens(["<|endoftext|>"])
    return tk


def build_llama3(chunks):
    split = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk = byte_level_family(chunks, split)
    # Whole frequent pre-tokens that merges do not build: ignore_merges takes them as one token.
    data = json.loads(tk.to_str())
    vocab = data["model"]["vocab"]
    counts = Counter(w for c in chunks[::3] for w, _ in split.pre_tokenize_str(c))
    extra = [w for w, _ in counts.most_common(3000) if w not in vocab and len(w) > 3][:300]
    assert len(extra) >= 100
    for w in extra:
        vocab[w] = len(vocab)
    data["model"]["ignore_merges"] = True
    tk = Tokenizer.from_str(json.dumps(data))
    tk.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>"] +
                          [f"<|reserved_special_token_{i}|>" for i in range(4)])
    bos = tk.token_to_id("<|begin_of_text|>")
    tk.post_processor = processors.Sequence([processors.ByteLevel(trim_offsets=False),
                                             bos_template("<|begin_of_text|>", bos)])
    return tk


def build_qwen2(chunks):
    split = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk = byte_level_family(chunks, split, normalizers.NFC())
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    tk.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    return tk


def build_deepseek_v3(chunks):
    splits = [pre_tokenizers.Split(Regex(p), behavior="isolated") for p in DEEPSEEK_SPLITS]
    split = pre_tokenizers.Sequence(splits + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk = byte_level_family(chunks, split, normalizers.Sequence([]))
    tk.add_special_tokens(["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"])
    tk.post_processor = bos_template("<｜begin▁of▁sentence｜>", tk.token_to_id("<｜begin▁of▁sentence｜>"))
    return tk


LLAMA2_NORMALIZER = [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]


def llama2_decoder():
    return decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                              decoders.Strip(" ", 1, 0)])


def build_llama2(chunks, byte_fallback=True):
    """SentencePiece-converted BPE as in Llama 2's tokenizer.json: trained on SentencePiece-like
    pieces, then rebuilt with <unk>, <s>, </s>, the 256 byte tokens and no pre-tokenizer."""
    tk = Tokenizer(models.BPE())
    tk.normalizer = normalizers.Sequence(LLAMA2_NORMALIZER)
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"▁+(?=▁)|▁?[^▁\n]+|▁|\n"), behavior="isolated")
    tk.train_from_iterator(chunks, bpe_trainer(limit_alphabet=120))
    model = json.loads(tk.to_str())["model"]
    merges = [tuple(m) for m in model["merges"] if "\n" not in m[0] + m[1]]
    merged = {a + b for a, b in merges}
    alphabet = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])
                if t not in merged and "\n" not in t]
    specials = ["<unk>", "<s>", "</s>"]
    tokens = list(dict.fromkeys(specials + [f"<0x{b:02X}>" for b in range(256)] + alphabet +
                                [a + b for a, b in merges]))
    final = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                                 unk_token="<unk>", byte_fallback=byte_fallback, fuse_unk=True))
    final.normalizer = normalizers.Sequence(LLAMA2_NORMALIZER)
    final.decoder = llama2_decoder()
    final.add_special_tokens(specials)
    final.post_processor = bos_template("<s>", 1)
    return final


def build_affixes(chunks):
    tk = Tokenizer(models.BPE(continuing_subword_prefix="##", end_of_word_suffix="</w>", unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"\s+"), behavior="removed")
    tk.train_from_iterator(chunks, bpe_trainer(continuing_subword_prefix="##", end_of_word_suffix="</w>",
                                               special_tokens=["[UNK]"], limit_alphabet=200))
    return tk


def variant(base: Tokenizer, normalizer=None, pre_tokenizer=None, decoder=None, post=None,
            added=(), model_patch=None) -> Tokenizer:
    """A copy of base with other components (unset arguments keep base's)."""
    data = json.loads(base.to_str())
    if model_patch:
        data["model"].update(model_patch)
    tk = Tokenizer.from_str(json.dumps(data))
    for name, value in (("normalizer", normalizer), ("pre_tokenizer", pre_tokenizer),
                        ("decoder", decoder), ("post_processor", post)):
        if value is not None:
            setattr(tk, name, value)
    if added:
        tk.add_tokens(list(added))
    return tk


def build_all(chunks) -> dict:
    gpt2, llama3, qwen2 = build_gpt2(chunks), build_llama3(chunks), build_qwen2(chunks)
    deepseek, llama2 = build_deepseek_v3(chunks), build_llama2(chunks)
    family = {"gpt2": gpt2, "llama3": llama3, "qwen2": qwen2, "deepseek_v3": deepseek, "llama2": llama2}
    variants = {
        "affixes": build_affixes(chunks),
        "qwen2-nfkc-lower-strip": variant(
            qwen2, normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase(),
                                         normalizers.Replace(Regex(" {2,}"), " "), normalizers.Strip()]),
            pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                     pre_tokenizers.Split(Regex(POSSESSIVE_SPLIT), behavior="isolated"),
                                     pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=False)])),
        "qwen2-nfd-behaviors": variant(
            qwen2, normalizers.NFD(),
            pre_tokenizers.Sequence([pre_tokenizers.Split("-", behavior="merged_with_previous"),
                                     pre_tokenizers.Split(Regex(r"\d+"), behavior="merged_with_next"),
                                     pre_tokenizers.Split(Regex(r"[.,;]"), behavior="removed"),
                                     pre_tokenizers.Split(Regex(r"\s+"), behavior="contiguous", invert=True),
                                     pre_tokenizers.Digits(individual_digits=False),
                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])),
        "gpt2-nfkd-lower": variant(gpt2, normalizers.Sequence([normalizers.NFKD(), normalizers.Lowercase()])),
        "mistral-metaspace-first": variant(
            llama2, normalizers.Sequence([]),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)),
        "metaspace-always-split": variant(
            llama2, normalizers.Sequence([]),
            pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                     pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]),
            decoders.Sequence([decoders.Metaspace(replacement="▁", prepend_scheme="always"),
                               decoders.ByteFallback(), decoders.Fuse()])),
        "llama2-unk-no-fallback": variant(llama2, model_patch={"byte_fallback": False}),
        "gpt2-added-tokens": variant(
            gpt2, normalizers.Lowercase(),
            added=[AddedToken("<mask>", lstrip=True, special=True, normalized=False),
                   AddedToken("[SEP]", rstrip=True, special=True, normalized=False),
                   AddedToken("cat", single_word=True, normalized=True),
                   AddedToken("hello world", normalized=True),
                   AddedToken("  ", normalized=True),
                   AddedToken("ing", normalized=False),
                   AddedToken("the", special=True, normalized=False)]),
    }
    return family, variants


@pytest.fixture(scope="module")
def built(training_text):
    return build_all(training_text)


# --------------------------------------------------------------------------------------------
# comparison


def lathe_jsonl(tokenizer_path: Path, inputs: list, *flags) -> list:
    """Runs `lathe tokenize --jsonl` on inputs (strings, or id lists with --decode)."""
    # A temporary file: the tokenizer may sit in a committed model directory, which tests never write.
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", encoding="utf-8", delete=False) as f:
        f.write("".join(json.dumps(x) + "\n" for x in inputs))
        batch = Path(f.name)
    try:
        out = run_lathe("tokenize", tokenizer_path, "--jsonl", batch, *flags).stdout
    finally:
        batch.unlink()
    # Not splitlines(): U+0085 and U+2028 stay unescaped in JSON and are not line ends here.
    results = [json.loads(line) for line in out.split("\n") if line]
    assert len(results) == len(inputs)
    return results


def first_difference(a: list, b: list) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"first difference at token {i}: tokenizers {a[max(0, i - 3):i + 4]} lathe {b[max(0, i - 3):i + 4]}"
    return f"lengths differ: tokenizers {len(a)} lathe {len(b)}"


def check_parity(label: str, tk: Tokenizer, path: Path, texts: dict, lossless: str = "") -> dict:
    """Compares lathe on the tokenizer file `path` with tk (loaded from the same file) on every text
    (name -> str); returns the bytes compared per text. Texts under 10 KB are also compared with
    add_special_tokens (the post-processor only adds tokens at the ends, so long texts would repeat
    the same check at a high cost). lossless: "exact" when decode(encode(x)) must give x back,
    "nfc" when it must give NFC(x) back, "" when the tokenizer is lossy."""
    names, inputs = list(texts), list(texts.values())
    short = [i for i, t in enumerate(inputs) if len(t) < 10_000]
    ids = [e.ids for e in tk.encode_batch(inputs, add_special_tokens=False)]
    with_special = {i: e.ids for i, e in
                    zip(short, tk.encode_batch([inputs[i] for i in short], add_special_tokens=True))}
    runs = [(range(len(inputs)), ids, ()),
            (short, [with_special[i] for i in short], ("--add-special-tokens",))]
    for indices, wanted, flags in runs:
        got = lathe_jsonl(path, [inputs[i] for i in indices], *flags)
        for i, want, result in zip(indices, wanted, got):
            assert result["ids"] == want, \
                f"{label} on {names[i]!r} {flags}: {first_difference(want, result['ids'])}"
            assert result["count"] == len(want)
    to_decode = ids + [with_special[i] for i in short]
    sources = list(range(len(inputs))) + short
    for skip in (False, True):
        flags = ("--decode",) + (("--skip-special-tokens",) if skip else ())
        got = lathe_jsonl(path, to_decode, *flags)
        wanted = tk.decode_batch(to_decode, skip_special_tokens=skip)
        for i, want, result in zip(sources, wanted, got):
            assert result["text"] == want, f"{label} decode of {names[i]!r} {flags} differs"
            if lossless and skip and is_plain(inputs[i]):
                original = unicodedata.normalize("NFC", inputs[i]) if lossless == "nfc" else inputs[i]
                assert result["text"] == original, f"{label}: decode(encode(x)) != x for {names[i]!r}"
    return {name: len(text.encode()) for name, text in texts.items()}


def check_built(name: str, tk: Tokenizer, texts: dict, work: Path) -> dict:
    path = work / f"{name}.json"
    tk.save(str(path))
    return check_parity(name, Tokenizer.from_file(str(path)), path, texts, LOSSLESS.get(name, ""))


def is_plain(text: str) -> bool:
    """No special-token strings and no metaspace character: text a lossless tokenizer restores."""
    return not any(s in text for s in ("<s>", "</s>", "<|", "<｜", "▁"))


def adversarial_texts() -> dict:
    return {f"adversarial[{i}]": s for i, s in enumerate(ADVERSARIAL)}


def test_family_tokenizers_on_1mb_per_domain(built, corpora, tmp_path):
    family, _ = built
    texts = dict(corpora, **adversarial_texts())
    for name, tk in family.items():
        compared = check_built(name, tk, texts, tmp_path)
        assert all(compared[d] >= 1_000_000 for d in DOMAINS)


def test_pipeline_variants(built, corpora, tmp_path):
    _, variants = built
    texts = {d: cut(t, VARIANT_BYTES) for d, t in corpora.items()}
    texts.update(adversarial_texts())
    for name, tk in variants.items():
        check_built(name, tk, texts, tmp_path)


def committed_tokenizers() -> list:
    seen, out = set(), []
    for path in sorted((SOURCE_DIR / "data" / "models").glob("*/tokenizer.json")):
        data = path.read_bytes()
        if data not in seen:
            seen.add(data)
            out.append(path)
    return out


@pytest.mark.parametrize("path", committed_tokenizers(), ids=lambda p: p.parent.name)
def test_committed_model_tokenizers(path, corpora, tmp_path):
    """The files as committed (not re-saved); lossless on plain text unless they normalise."""
    tk = Tokenizer.from_file(str(path))
    normalizer = json.loads(path.read_text(encoding="utf-8")).get("normalizer") or {}
    lossless = {"NFC": "nfc", "Sequence": "exact", "": "exact"}.get(normalizer.get("type", ""), "")
    if normalizer.get("type") == "Sequence" and any(
            n["type"] not in ("Prepend", "Replace") for n in normalizer["normalizers"]):
        lossless = ""
    texts = dict(corpora, **adversarial_texts())
    compared = check_parity(path.parent.name, tk, path, texts, lossless)
    assert all(compared[d] >= 1_000_000 for d in DOMAINS)
    # A model directory works in place of its tokenizer.json.
    ids = json.loads(run_lathe("tokenize", path.parent, "--text", "Hello world", "--json").stdout)["ids"]
    assert ids == tk.encode("Hello world", add_special_tokens=False).ids


def test_invalid_utf8_is_a_data_error_naming_the_offset(built, tmp_path):
    family, _ = built
    path = tmp_path / "gpt2.json"
    family["gpt2"].save(str(path))
    bad = tmp_path / "bad.txt"
    bad.write_bytes("ok text ünd".encode() + b"\xff\xfe more")
    proc = run_lathe("tokenize", path, "--file", bad, check=False)
    assert proc.returncode == 3, proc.stderr
    assert f"byte {len('ok text ünd'.encode())}" in proc.stderr and "invalid UTF-8" in proc.stderr
