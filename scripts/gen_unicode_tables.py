#!/usr/bin/env python3
"""Generate calibrate/tokenizer/unicode_tables.cpp: the Unicode data lathe's tokenizer needs.

The tables come from the `unicodedata` module of the Python that runs this script, so their
Unicode version is that Python's `unicodedata.unidata_version` (Python 3.11: Unicode 14.0.0). The
generated file records the version; the build never runs this script. Re-run it only to move to a
newer Unicode version, and commit the output together with this script:

    .venv/bin/python scripts/gen_unicode_tables.py > calibrate/tokenizer/unicode_tables.cpp

What is generated (see calibrate/tokenizer/unicode_tables.h for the C++ side):
  - general category of every code point (two-stage table, 128-code-point blocks)
  - canonical combining class (two-stage table)
  - per code point "may change under normalisation" flags for NFD, NFKD, NFC, NFKC, used to skip the
    full algorithm on text that cannot change
  - full canonical (NFD) and compatibility (NFKD) decompositions, Hangul syllables excluded (they are
    decomposed algorithmically)
  - canonical composition pairs (first, second) -> primary composite, exclusions already applied
  - full lowercase mapping of single code points (str.lower(), so U+0130 -> "i\u0307")
  - simple case folding (one code point to one), for case-insensitive regex literals
"""
import sys
import unicodedata

MAX_CP = 0x110000
BLOCK = 128
CATEGORIES = ["Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No", "Pc", "Pd", "Ps",
              "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So", "Zs", "Zl", "Zp", "Cc", "Cf", "Cs",
              "Co", "Cn"]
S_BASE, S_COUNT = 0xAC00, 11172


def is_hangul_syllable(cp):
    return S_BASE <= cp < S_BASE + S_COUNT


def two_stage(values):
    """Split a per-code-point byte list into (stage1 block indices, deduplicated stage2 blocks)."""
    blocks, index, stage1 = [], {}, []
    for start in range(0, MAX_CP, BLOCK):
        block = tuple(values[start:start + BLOCK])
        if block not in index:
            index[block] = len(blocks)
            blocks.append(block)
        stage1.append(index[block])
    return stage1, blocks


def emit_array(out, ctype, name, values, fmt="{}"):
    out.append(f"const {ctype} {name}[{len(values)}] = {{")
    width = max(len(fmt.format(v)) for v in values) + 2
    per_line = max(1, 96 // width)  # lines within the 100-column limit
    for i in range(0, len(values), per_line):
        out.append("    " + ", ".join(fmt.format(v) for v in values[i:i + per_line]) + ",")
    out.append("};")


def emit_two_stage(out, name, values):
    stage1, blocks = two_stage(values)
    emit_array(out, "uint16_t", f"{name}_stage1", stage1)
    flat = [v for block in blocks for v in block]
    emit_array(out, "uint8_t", f"{name}_stage2", flat)


def mapping_table(entries):
    """entries: sorted list of (cp, [cps]) -> (keys, offsets, pool) with offsets[i]..offsets[i+1]."""
    keys, offsets, pool = [], [0], []
    for cp, seq in entries:
        keys.append(cp)
        pool.extend(seq)
        offsets.append(len(pool))
    return keys, offsets, pool


def main():
    chars = [chr(cp) for cp in range(MAX_CP)]
    category = [CATEGORIES.index(unicodedata.category(c)) for c in chars]
    ccc = [unicodedata.combining(c) for c in chars]

    nfd, nfkd, pairs = [], [], []
    for cp in range(MAX_CP):
        if 0xD800 <= cp < 0xE000 or is_hangul_syllable(cp):
            continue
        c = chars[cp]
        d = unicodedata.normalize("NFD", c)
        if d != c:
            nfd.append((cp, [ord(x) for x in d]))
        k = unicodedata.normalize("NFKD", c)
        if k != c:
            nfkd.append((cp, [ord(x) for x in k]))
        raw = unicodedata.decomposition(c)
        if raw and not raw.startswith("<"):
            parts = [int(p, 16) for p in raw.split()]
            # A primary composite: a two-code-point canonical decomposition that NFC keeps composed
            # (singletons, non-starter decompositions and the exclusion list all fail this test).
            if len(parts) == 2 and unicodedata.normalize("NFC", c) == c:
                pairs.append((parts[0], parts[1], cp))
    pairs.sort()
    second = {b for _, b, _ in pairs} | set(range(0x1161, 0x1176)) | set(range(0x11A8, 0x11C3))

    flags = []
    for cp in range(MAX_CP):
        if 0xD800 <= cp < 0xE000:
            flags.append(0)
            continue
        c = chars[cp]
        f = 0
        nonstarter = ccc[cp] != 0
        if nonstarter or unicodedata.normalize("NFD", c) != c:
            f |= 1
        if nonstarter or unicodedata.normalize("NFKD", c) != c:
            f |= 2
        if nonstarter or unicodedata.normalize("NFC", c) != c or cp in second:
            f |= 4
        if nonstarter or unicodedata.normalize("NFKC", c) != c or cp in second:
            f |= 8
        flags.append(f)

    lower, fold = [], []
    for cp in range(MAX_CP):
        if 0xD800 <= cp < 0xE000:
            continue
        c = chars[cp]
        lo = c.lower()
        if lo != c:
            lower.append((cp, [ord(x) for x in lo]))
        cf = c.casefold()
        if len(cf) != 1:
            cf = lo if len(lo) == 1 else c  # full folding expands; simple folding keeps one code point
        if cf != c:
            fold.append((cp, ord(cf)))

    out = [
        "// GENERATED by scripts/gen_unicode_tables.py from Python's unicodedata; do not edit.",
        "// clang-format off",
        f"// Unicode version {unicodedata.unidata_version}.",
        '#include "calibrate/tokenizer/unicode_tables.h"',
        "",
        "namespace lathe::unicode_data {",
        "",
        f'const char* const kUnicodeVersion = "{unicodedata.unidata_version}";',
        "",
    ]
    emit_two_stage(out, "kCategory", category)
    emit_two_stage(out, "kCombiningClass", ccc)
    emit_two_stage(out, "kNormalizationFlags", flags)
    for name, entries in (("kCanonical", nfd), ("kCompatibility", nfkd), ("kLowercase", lower)):
        keys, offsets, pool = mapping_table(entries)
        out.append(f"const size_t {name}Count = {len(keys)};")
        emit_array(out, "uint32_t", f"{name}Keys", keys, fmt="0x{:X}")
        emit_array(out, "uint32_t", f"{name}Offsets", offsets)
        emit_array(out, "uint32_t", f"{name}Pool", pool, fmt="0x{:X}")
    out.append(f"const size_t kCompositionCount = {len(pairs)};")
    emit_array(out, "uint32_t", "kCompositionFirst", [a for a, _, _ in pairs], fmt="0x{:X}")
    emit_array(out, "uint32_t", "kCompositionSecond", [b for _, b, _ in pairs], fmt="0x{:X}")
    emit_array(out, "uint32_t", "kCompositionResult", [r for _, _, r in pairs], fmt="0x{:X}")
    out.append(f"const size_t kSimpleFoldCount = {len(fold)};")
    emit_array(out, "uint32_t", "kSimpleFoldKeys", [a for a, _ in fold], fmt="0x{:X}")
    emit_array(out, "uint32_t", "kSimpleFoldValues", [b for _, b in fold], fmt="0x{:X}")
    out += ["", "}  // namespace lathe::unicode_data", ""]
    sys.stdout.write("\n".join(out))


if __name__ == "__main__":
    main()
