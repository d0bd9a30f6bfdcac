"""Regex features beyond the GPT-2-style split patterns, matched like `tokenizers` (issue 26, item 6).

lathe's tokenizer runs Split and Replace patterns through Oniguruma in the syntax the `tokenizers`
library uses, so the features its earlier hand-written engine refused (lookbehind, backreferences,
scripts such as \\p{Han}, POSIX brackets, class intersection, (?x), multi-character case folding,
grapheme clusters) now load and split text exactly as tokenizers does. Each pattern becomes one
Split of the committed Qwen2 tokenizer (byte-level BPE), and a Replace normalizer with a lookbehind
is checked too; the ids of lathe and tokenizers must agree on held-out text of every domain and on
strings written for the patterns.
"""
import json
import tempfile
from pathlib import Path

import pytest

from reference import SOURCE_DIR, run_lathe

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers  # noqa: E402

BASE = SOURCE_DIR / "data" / "models" / "qwen2" / "tokenizer.json"
DOMAINS = ["prose", "code", "math", "german", "definitions"]
TEXT_BYTES = 50_000

# Each pattern uses syntax the hand-written engine rejected with an UnsupportedError.
FEATURE_SPLITS = {
    "lookbehind": r"(?<=[a-z])(?=[A-Z])|(?<=\d)(?=(?:\d{3})+(?!\d))|(?<![\p{L}\p{N}])\p{N}+",
    "backreference": r"(\p{L})\1+|([!?.\-=*])\2+",
    "scripts": r"\p{Han}+|\p{Hiragana}+|\p{Katakana}+|\p{Greek}+|\p{Cyrillic}+|\p{Arabic}+|\p{Hebrew}+",
    # Not [[:punct:]]: Debian 12's Oniguruma 6.9.8 reads it as \p{P}, tokenizers' as \p{P} + \p{S}
    # (lathe refuses it there, tests/unit/test_tokenizer_unicode.cpp).
    "posix-and-intersection": r"[[:upper:][:digit:]]{2,}|[\p{L}&&[^\p{Ll}]]+|[a-z&&[^aeiou]]{2,}",
    "extended-and-case-folding": r"(?x) (?i: strasse | ss | ǆ ) | \s{2,}  # runs of white space",
    "graphemes": r"\X(?<=\p{M}|\p{Emoji_Modifier}|\p{Regional_Indicator})",
    "absent-operator": r"(?~\n\n)\n\n",
}

TEXTS = [
    "camelCaseWordsAndHTTPServer 1234567 12,345 x12y 1000000",
    "aaa bbbb Mississippi balloon !!! ?? ... --- === ***",
    "日本語のテキストと漢字、カタカナ。中文文本 Ελληνικά и русский مرحبا שלום",
    "Hello, World! ÄÖÜ Straße STRASSE strasse ǅ ǆ Ǆ ﬀ ß ẞ",
    "e\u0301 a\u0308\u0301 Z\u0351\u0352a\u0300l\u0342g\u0303o 👍🏽 🇩🇪 \u1100\u1161\u11a8",
    "para one\n\npara two\n\n\nthree\r\n\r\nend",
]


def read_texts() -> dict:
    texts = {}
    for d in DOMAINS:
        text = (SOURCE_DIR / "data" / "corpora" / d / "heldout.txt").read_text(encoding="utf-8")
        texts[d] = text.encode()[:TEXT_BYTES].decode(errors="ignore")
    texts.update({f"text[{i}]": t for i, t in enumerate(TEXTS)})
    return texts


def with_pipeline(normalizer, split_pattern: str) -> Tokenizer:
    tk = Tokenizer.from_file(str(BASE))
    tk.normalizer = normalizer
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split_pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    return tk


def lathe_ids(path: Path, texts: list) -> list:
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", encoding="utf-8", delete=False) as f:
        f.write("".join(json.dumps(t) + "\n" for t in texts))
        batch = Path(f.name)
    try:
        out = run_lathe("tokenize", path, "--jsonl", batch).stdout
    finally:
        batch.unlink()
    return [json.loads(line)["ids"] for line in out.split("\n") if line]


def check(tk: Tokenizer, path: Path):
    tk.save(str(path))
    tk = Tokenizer.from_file(str(path))
    texts = read_texts()
    wanted = [e.ids for e in tk.encode_batch(list(texts.values()), add_special_tokens=False)]
    got = lathe_ids(path, list(texts.values()))
    assert len(got) == len(wanted)
    for name, want, ids in zip(texts, wanted, got):
        assert ids == want, f"{path.name} on {name!r}: tokenizers {want[:40]} lathe {ids[:40]}"


@pytest.mark.parametrize("name", list(FEATURE_SPLITS))
def test_split_pattern_matches_tokenizers(name, tmp_path):
    # The split must change the pieces, or the test would compare nothing new.
    pattern = FEATURE_SPLITS[name]
    pieces = pre_tokenizers.Split(Regex(pattern), behavior="isolated").pre_tokenize_str(" ".join(TEXTS))
    assert len(pieces) > 2
    check(with_pipeline(normalizers.NFC(), pattern), tmp_path / f"{name}.json")


def test_replace_normalizer_with_lookbehind(tmp_path):
    replace = normalizers.Replace(Regex(r"(?<=\d) (?=\d)|(?<!\p{L})'"), "_")
    assert replace.normalize_str("1 2 3 it's 'x") == "1_2_3 it's _x"
    qwen2_split = json.loads(BASE.read_text(encoding="utf-8"))["pre_tokenizer"]["pretokenizers"][0]
    tk = with_pipeline(normalizers.Sequence([normalizers.NFC(), replace]), qwen2_split["pattern"]["Regex"])
    check(tk, tmp_path / "replace.json")
