#!/usr/bin/env python3
"""Build lathe's real-text corpora from Debian packages (see /work/shared/DATA.md and data/README.md).

Tasks (one directory each under data/corpora/):
  prose        Jane Austen (r-cran-janeaustenr; *Persuasion* held out) + KJV Bible + fortunes + Jargon File
  code         C headers (libc6-dev), C++ headers (libstdc++-12-dev), Python 3.11 stdlib .py files
  math         metamath set.mm: comments and statements, proofs removed
  german       fortunes-de records and manpages-de pages (groff markup stripped)
  definitions  WordNet glosses "word (pos): gloss" (+ wordnet.tsv for a definition -> word task)

Outputs:
  data/corpora/full/<task>/{train,heldout}.txt   larger version, gitignored (training the tiny models)
  data/corpora/<task>/{train,heldout}.txt        small committed subset of the full version
  data/corpora/definitions/wordnet.tsv           word<TAB>pos<TAB>gloss, held-out words only
  data/corpora/MANIFEST.json                     task, split, sources, bytes, lines, sha256 of every file

Held-out text is disjoint from train *by document*: Persuasion (prose); files whose path hash falls in a
fixed bucket (code, German); the last main parts of set.mm (math); words whose hash falls in a fixed
bucket (definitions). Everything is deterministic: no randomness, sorted file lists, fixed byte budgets,
truncation only at document or line boundaries. Run it twice and the outputs are byte-identical.

Usage: python data/build_corpora.py [--out DIR]
"""

import argparse
import gzip
import hashlib
import json
import math
import os
import re
import struct
import subprocess
import sys
import unicodedata
import zlib
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Byte budgets (UTF-8 bytes). Full: per source for train (below), per task for held-out.
COMMITTED_TRAIN = 400_000
COMMITTED_HELDOUT = 120_000
FULL_HELDOUT = 600_000
WORDNET_TSV = 250_000
SEP = "\n\n"  # between documents


class MissingSource(Exception):
    pass


def require(path, package):
    p = Path(path)
    if not p.exists():
        raise MissingSource(f"missing source {p}: install the Debian package '{package}' "
                            f"(apt-get install {package}, or run scripts/setup.sh)")
    return p


def package_files(package):
    """Files of an installed Debian package (dpkg -L), sorted."""
    try:
        out = subprocess.run(["dpkg", "-L", package], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        raise MissingSource(f"Debian package '{package}' is not installed (apt-get install {package})")
    return sorted(line for line in out.splitlines() if line)


# ------------------------------------------------------------------------------------------------
# Text normalisation

_CTRL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def clean(text, keep_tabs=False):
    """NFC, \\n line endings, no overstrike/control characters, no trailing spaces, <= 1 blank line."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[^\n]\x08", "", text)  # overstrike (x\bx bold, _\bx underline) -> keep last char
    if not keep_tabs:
        text = text.replace("\t", "    ")
    text = _CTRL.sub("", text)
    text = unicodedata.normalize("NFC", text)
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n")


def nbytes(s):
    return len(s.encode("utf-8"))


def truncate_lines(text, limit):
    """Longest prefix of whole lines with at most `limit` UTF-8 bytes."""
    if nbytes(text) <= limit:
        return text
    out, used = [], 0
    for line in text.split("\n"):
        cost = nbytes(line) + 1
        if used + cost > limit:
            break
        out.append(line)
        used += cost
    return "\n".join(out).rstrip("\n")


def bucket(name, n=10):
    """Deterministic hash bucket of a document name (held-out rule)."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:4], "big") % n


@dataclass
class Doc:
    source: str  # source label, e.g. "austen", "kjv"
    name: str  # document name (file, chapter, ...)
    text: str


def chunk_paragraphs(text, size):
    """Split text at blank lines into chunks of about `size` bytes (for sources without documents)."""
    chunks, cur, used = [], [], 0
    for para in text.split("\n\n"):
        cur.append(para)
        used += nbytes(para) + 2
        if used >= size:
            chunks.append("\n\n".join(cur))
            cur, used = [], 0
    if cur:
        chunks.append("\n\n".join(cur))
    return chunks


def pick(docs, quota, max_doc=None, min_tail=1000):
    """Deterministic spread selection of docs (one source) within `quota` bytes.

    Visits documents with a stride so that the selection covers the whole source (0, s, 2s, ...,
    then 1, 1+s, ...); a document that does not fit is truncated at a line boundary (if at least
    `min_tail` bytes are left) and selection stops. Returns docs in their original order."""
    docs = [Doc(d.source, d.name, truncate_lines(d.text, max_doc) if max_doc else d.text) for d in docs]
    docs = [d for d in docs if d.text]
    total = sum(nbytes(d.text) + len(SEP) for d in docs)
    if total <= quota:
        return docs
    stride = max(1, math.ceil(total / quota))
    order = [i for r in range(stride) for i in range(r, len(docs), stride)]
    chosen, used = {}, 0
    for i in order:
        cost = nbytes(docs[i].text) + len(SEP)
        if used + cost > quota:
            room = quota - used - len(SEP)
            if room >= min_tail:
                t = truncate_lines(docs[i].text, room)
                if t:
                    chosen[i] = Doc(docs[i].source, docs[i].name, t)
            break
        chosen[i] = docs[i]
        used += cost
    return [chosen[i] for i in sorted(chosen)]


def pick_task(docs, budget, max_doc=None):
    """Split a task's budget over its sources in proportion to their sizes, then pick() per source."""
    sources = []
    for d in docs:
        if d.source not in sources:
            sources.append(d.source)
    sizes = {s: sum(nbytes(d.text) + len(SEP) for d in docs if d.source == s) for s in sources}
    total = sum(sizes.values())
    out = []
    for s in sources:
        quota = budget * sizes[s] // total if total > budget else sizes[s]
        out += pick([d for d in docs if d.source == s], quota, max_doc)
    return out


# ------------------------------------------------------------------------------------------------
# R serialization (XDR, format 2/3) -- just enough to read janeaustenr's character vectors.

class RReader:
    NILVALUE, SYMSXP, LISTSXP, CHARSXP, LGLSXP, INTSXP, REALSXP, STRSXP, VECSXP = 254, 1, 2, 9, 10, 13, 14, 16, 19
    REFSXP, GLOBALENV, EMPTYENV, BASEENV, MISSINGARG, BASENAMESPACE = 255, 253, 242, 241, 251, 247

    def __init__(self, data):
        self.b, self.p, self.refs = data, 0, []

    def int(self):
        (v,) = struct.unpack_from(">i", self.b, self.p)
        self.p += 4
        return v

    def read(self):
        if self.b[:2] != b"X\n":
            raise ValueError("not an XDR R serialization (expected 'X\\n')")
        self.p = 2
        version = self.int()
        self.int(), self.int()  # writer R version, minimal reader version
        if version == 3:
            n = self.int()
            self.p += n  # native encoding name
        elif version != 2:
            raise ValueError(f"unsupported R serialization version {version}")
        return self.item()

    def item(self):
        flags = self.int()
        t, has_attr, has_tag = flags & 0xFF, bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if t in (self.NILVALUE, self.GLOBALENV, self.EMPTYENV, self.BASEENV, self.MISSINGARG,
                 self.BASENAMESPACE):
            return None
        if t == self.REFSXP:
            idx = flags >> 8
            if idx == 0:
                idx = self.int()
            return self.refs[idx - 1]
        if t == self.SYMSXP:
            name = self.item()  # a CHARSXP
            self.refs.append(("symbol", name))
            return ("symbol", name)
        if t == self.LISTSXP:  # pairlist: [attr] [tag] car cdr
            attr = self.item() if has_attr else None
            tag = self.item() if has_tag else None
            car = self.item()
            cdr = self.item()
            rest = cdr if isinstance(cdr, list) else []
            return [(tag[1] if tag else None, car)] + rest
        if t == self.CHARSXP:
            n = self.int()
            if n == -1:
                return None  # NA_character_
            s = self.b[self.p:self.p + n]
            self.p += n
            latin1 = bool(flags & (1 << 12 + 2))  # LATIN1_MASK (gp bit 2)
            return s.decode("latin-1" if latin1 else "utf-8")
        if t in (self.LGLSXP, self.INTSXP):
            n = self.int()
            v = list(struct.unpack_from(f">{n}i", self.b, self.p))
            self.p += 4 * n
        elif t == self.REALSXP:
            n = self.int()
            v = list(struct.unpack_from(f">{n}d", self.b, self.p))
            self.p += 8 * n
        elif t in (self.STRSXP, self.VECSXP):
            n = self.int()
            v = [self.item() for _ in range(n)]
        else:
            raise ValueError(f"R serialization: unsupported SEXP type {t} at byte {self.p - 4}")
        if has_attr:
            self.item()  # attributes pairlist (names, class, ...): not needed here
        return v


def rdb_objects(path):
    """Objects of an R lazy-load database: blocks of 4-byte big-endian length + zlib stream."""
    data = path.read_bytes()
    p, out = 0, []
    while p < len(data):
        (n,) = struct.unpack_from(">I", data, p)
        d = zlib.decompressobj()
        raw = d.decompress(data[p + 4:])
        if len(raw) != n:
            raise ValueError(f"{path}: block at {p}: length {len(raw)} != header {n}")
        out.append(RReader(raw).read())
        p = len(data) - len(d.unused_data)
    return out


# ------------------------------------------------------------------------------------------------
# Tasks. Each returns (train_docs, heldout_docs, sources) with sources = {package: [files]}.

AUSTEN_TITLES = {
    "SENSE AND SENSIBILITY": "sense_and_sensibility", "PRIDE AND PREJUDICE": "pride_and_prejudice",
    "MANSFIELD PARK": "mansfield_park", "EMMA": "emma", "NORTHANGER ABBEY": "northanger_abbey",
    "PERSUASION": "persuasion",
}
FORTUNE_FILES = ["fortunes", "literature", "wisdom", "people", "humorists", "science", "platitudes",
                 "work", "education", "love", "politics", "law", "pets", "food"]
PROSE_QUOTA = {"austen": 3_400_000, "kjv": 800_000, "fortunes": 500_000, "jargon": 500_000}


def austen_novels():
    rdb = require("/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb", "r-cran-janeaustenr")
    novels = {}
    for obj in rdb_objects(rdb):
        if not isinstance(obj, list) or not all(isinstance(s, (str, type(None))) for s in obj):
            raise ValueError(f"{rdb}: expected character vectors")
        lines = [s or "" for s in obj]
        title = next(s for s in lines if s.strip()).strip().upper()
        if title not in AUSTEN_TITLES:
            raise ValueError(f"{rdb}: unknown novel {title!r}")
        novels[AUSTEN_TITLES[title]] = lines
    if len(novels) != 6:
        raise ValueError(f"{rdb}: expected 6 novels, found {sorted(novels)}")
    return rdb, novels


def split_chapters(name, lines):
    docs, cur = [], []
    for line in lines:
        if re.match(r"^\s*(CHAPTER|Chapter)\s+[0-9IVXLC]+\.?\s*$", line) and any(x.strip() for x in cur):
            docs.append(cur)
            cur = []
        cur.append(line)
    docs.append(cur)
    return [Doc("austen", f"{name}/{i:03d}", clean("\n".join(d))) for i, d in enumerate(docs)]


def kjv_books():
    exe = Path("/usr/bin/bible")
    require(exe, "bible-kjv")
    require("/usr/lib/bible.data", "bible-kjv-text")
    out = subprocess.run([str(exe), "-f", "gen1:1-rev22:21"], check=True, capture_output=True,
                         text=True, encoding="utf-8", env={**os.environ, "PAGER": "cat"}).stdout
    books, order = {}, []
    for line in out.splitlines():
        m = re.match(r"^(\d?[A-Za-z]+)(\d+:\d+) (.*)$", line)
        if not m:
            continue
        book, ref, text = m.groups()
        if book not in books:
            books[book] = []
            order.append(book)
        books[book].append(f"{ref} {text}")
    if len(order) < 60:
        raise ValueError(f"bible: expected 66 books, got {len(order)}")
    return [Doc("kjv", f"kjv/{i:02d}-{b}", clean("\n".join(books[b]))) for i, b in enumerate(order)]


def fortune_records(path):
    text = path.read_bytes().decode("utf-8", errors="replace")
    return [clean(r) for r in re.split(r"(?m)^%\s*$", text) if clean(r)]


def prose():
    rdb, novels = austen_novels()
    train = []
    for name in ["sense_and_sensibility", "pride_and_prejudice", "mansfield_park", "emma",
                 "northanger_abbey"]:
        train += split_chapters(name, novels[name])
    heldout = split_chapters("persuasion", novels["persuasion"])
    train += kjv_books()
    fdir = Path("/usr/share/games/fortunes")
    ffiles = [require(fdir / f, "fortunes") for f in FORTUNE_FILES]
    for f in ffiles:
        for i, c in enumerate(chunk_paragraphs("\n\n".join(fortune_records(f)), 8000)):
            train.append(Doc("fortunes", f"fortunes/{f.name}/{i:03d}", c))
    jargon = require("/usr/share/doc/jargon-text/jargon.txt.gz", "jargon-text")
    jtext = clean(gzip.decompress(jargon.read_bytes()).decode("utf-8", errors="replace"))
    for i, c in enumerate(chunk_paragraphs(jtext, 8000)):
        train.append(Doc("jargon", f"jargon/{i:03d}", c))
    full = []
    for src, quota in PROSE_QUOTA.items():
        full += pick([d for d in train if d.source == src], quota)
    sources = {"r-cran-janeaustenr": [str(rdb)], "bible-kjv-text": ["/usr/lib/bible.data"],
               "bible-kjv": ["/usr/bin/bible -f gen1:1-rev22:21"],
               "fortunes": [str(f) for f in ffiles], "jargon-text": [str(jargon)]}
    notes = "held-out: Persuasion (Austen); train: the other five novels + KJV + fortunes + Jargon File"
    return full, heldout, sources, notes


CODE_QUOTA = {"python": 2_000_000, "c": 1_000_000, "cpp": 1_000_000}
CODE_MAX_DOC = 30_000


def code():
    pyroot = require("/usr/lib/python3.11", "libpython3.11-stdlib")
    py = sorted(p for p in pyroot.glob("*.py") if p.is_file())
    c = [Path(f) for f in package_files("libc6-dev") if f.startswith("/usr/include/") and f.endswith(".h")]
    c = sorted(p for p in c if p.is_file() and not p.is_symlink())
    cpproot = require("/usr/include/c++/12", "libstdc++-12-dev")
    cpp = [Path(f) for f in package_files("libstdc++-12-dev") if f.startswith(str(cpproot) + "/")]
    cpp = sorted(p for p in cpp if p.is_file() and not p.is_symlink()
                 and (p.parent == cpproot or p.parent.name == "bits"))
    if len(py) < 100 or len(c) < 100 or len(cpp) < 100:
        raise MissingSource(f"code: too few files (python {len(py)}, C {len(c)}, C++ {len(cpp)})")
    train, heldout = [], []
    for src, files in (("python", py), ("c", c), ("cpp", cpp)):
        for f in files:
            d = Doc(src, str(f), clean(f.read_bytes().decode("utf-8", errors="replace"), keep_tabs=True))
            (heldout if bucket(str(f)) == 0 else train).append(d)
    full = []
    for src, quota in CODE_QUOTA.items():
        full += pick([d for d in train if d.source == src], quota, CODE_MAX_DOC)
    sources = {"libpython3.11-stdlib": [f"{pyroot}/*.py ({len(py)} files)"],
               "libc6-dev": [f"/usr/include/**/*.h ({len(c)} files)"],
               "libstdc++-12-dev": [f"{cpproot}/{{*,bits/*}} ({len(cpp)} files)"]}
    notes = (f"held-out: files whose sha256(path) bucket (mod 10) is 0; documents truncated at "
             f"{CODE_MAX_DOC} bytes (line boundary)")
    return full, heldout, sources, notes


MATH_TRAIN_QUOTA = 3_500_000
MATH_HELDOUT_PARTS = ("ELEMENTARY GEOMETRY", "GRAPH THEORY")
MATH_END_PART = "GUIDES AND MISCELLANEA"


def math_task():
    mm = require("/usr/share/metamath/databases/set.mm", "metamath-databases")
    lines = mm.read_text(encoding="utf-8").split("\n")
    deco = re.compile(r"^\s*(#{20,}|(#\*){10,}#?|(=-){10,}=?|(-\.){10,}-?)\s*$")
    # Section starts: a "$(" line followed by a decoration line; remember the part (#### headers).
    starts = []
    for i in range(len(lines) - 2):
        if lines[i].strip() == "$(" and deco.match(lines[i + 1]):
            starts.append(i)
    first_part = next(i for i in starts if lines[i + 1].lstrip().startswith("####"))
    starts = [i for i in starts if i >= first_part] + [len(lines)]
    docs, part = [], None
    for a, b in zip(starts, starts[1:]):
        title = lines[a + 2].strip()
        if lines[a + 1].lstrip().startswith("####"):
            part = title
        if part == MATH_END_PART:
            break
        text = "\n".join(lines[a:b])
        text = re.sub(r"\$=.*?\$\.", "$.", text, flags=re.S)  # drop proofs, keep statements
        docs.append((part, Doc("setmm", f"set.mm:{a + 1}:{title}", clean(text))))
    train = [d for p, d in docs if p not in MATH_HELDOUT_PARTS]
    heldout = [d for p, d in docs if p in MATH_HELDOUT_PARTS]
    full = pick(train, MATH_TRAIN_QUOTA)
    notes = (f"comments + statements of set.mm (proofs '$= ... $.' removed), split at section headers; "
             f"held-out: parts {', '.join(MATH_HELDOUT_PARTS)}; train: earlier parts; stops before "
             f"'{MATH_END_PART}' (no deprecated material or mathboxes)")
    return full, heldout, {"metamath-databases": [str(mm)]}, notes


# groff -> text, good enough for language-model text (not a renderer)
GROFF_GLYPHS = {
    "em": "—", "en": "–", "aq": "'", "dq": '"', "co": "©", "bu": "•", "lq": "“", "rq": "”", "oq": "‘",
    "cq": "’", "Fo": "«", "Fc": "»", "fo": "‹", "fc": "›", "Bq": "„", "bq": "‚", "ga": "`", "ha": "^",
    "ti": "~", "rs": "\\", "pc": "·", "mu": "×", "->": "→", "<-": "←", "de": "°", "hy": "-", "mi": "-",
    "pl": "+", "eq": "=", "<=": "≤", ">=": "≥", "!=": "≠", "sl": "/", "ba": "|", "br": "|", "or": "|",
    "ss": "ß", ":a": "ä", ":o": "ö", ":u": "ü", ":A": "Ä", ":O": "Ö", ":U": "Ü", "'e": "é", "`e": "è",
    "rg": "®", "tm": "™", "sc": "§", "ps": "¶", "dg": "†", "lA": "⇐", "rA": "⇒", "hA": "⇔",
    "Eu": "€", "eu": "€", "ct": "¢", "Po": "£", "12": "½", "14": "¼", "34": "¾", "ua": "↑", "da": "↓",
    "lB": "[", "rB": "]", "lC": "{", "rC": "}", "la": "⟨", "ra": "⟩", "at": "@", "sh": "#", "Do": "$",
    "dA": "⇓", "uA": "⇑", "OK": "✓", "tno": "¬", "no": "¬", "+-": "±", "**": "∗", "sq": "□",
}
FONT_MACROS = {"B", "I", "SM", "SB"}
ALT_MACROS = {"BR", "RB", "IR", "RI", "BI", "IB"}
HEADING_MACROS = {"SH", "SS"}
TEXT_ARG_MACROS = {"IP", "TP", "UR", "MT"}
# mdoc (BSD) macros: callable ones inside a line are dropped, Fl prefixes its argument with '-'
MDOC_MACROS = set("""Ad An Ao Ac Ap Aq Ar At Bc Bo Bq Brc Bro Brq Bsx Bx Cd Cm Dc Do Dq Dv Dx Ec Em En Eo Er
Es Ev Fa Fc Fl Fn Fo Fr Ft Fx Hf Ic In It Lb Li Lk Ms Mt Nd Nm No Ns Nx Oc Oo Op Ox Pa Pc Pf Po Pq Qc Ql Qo
Qq Re Rs Rv Sc Sm So Sq St Sx Sy Ta Tn Ux Va Vt Xc Xo Xr""".split())
MDOC_SKIP = {"Bl", "El", "Bd", "Ed", "Bf", "Ef", "Bk", "Ek", "Dd", "Os", "Ud", "Ft"}


def groff_args(s):
    args, cur, q, i = [], "", False, 0
    while i < len(s):
        ch = s[i]
        if ch == '"':
            if q and i + 1 < len(s) and s[i + 1] == '"':
                cur += '"'
                i += 2
                continue
            q = not q
        elif ch in " \t" and not q:
            if cur:
                args.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    if cur:
        args.append(cur)
    return args


def groff_escapes(s):
    def glyph(m):
        name = m.group(1) or m.group(2)
        return GROFF_GLYPHS.get(name, "")
    s = s.replace("\\\\", "\x00")
    s = re.sub(r'\\".*$', "", s)  # comment
    s = re.sub(r"\\\((..)|\\\[([^\]]*)\]", glyph, s)
    s = re.sub(r"\\[fF](\[[^\]]*\]|\(..|.)", "", s)  # fonts
    s = re.sub(r"\\\*(\[[^\]]*\]|\(..|.)", "", s)  # strings
    s = re.sub(r"\\[nk](\[[^\]]*\]|\(..|.)", "", s)  # registers
    s = re.sub(r"\\s[-+]?(\d+|\[[^\]]*\]|\(..)", "", s)  # size
    s = re.sub(r"\\[hvwlLDoXYbxZS]'[^']*'", "", s)  # motions and drawing
    s = re.sub(r"\\[-]", "-", s)
    s = re.sub(r"\\[ ~0]", " ", s)
    s = re.sub(r"\\e", "\\\\", s)
    s = re.sub(r"\\[&,/:%|^)!cdupartz{}]", "", s)
    s = re.sub(r"\\(.)", r"\1", s)
    return s.replace("\x00", "\\")


def strip_groff(src):
    out, skip_until, table_fmt = [], None, False
    for raw in src.split("\n"):
        line = raw
        if skip_until:
            if line.startswith(skip_until):
                skip_until = None
            continue
        if table_fmt:  # tbl options and format lines end with '.'
            if line.rstrip().endswith("."):
                table_fmt = False
            continue
        if line.startswith((".\\\"", "'\\\"", '\\"')) or line.strip() in (".", "'"):
            continue
        if line.startswith((".", "'")):
            m = re.match(r"^[.']\s*(\S+)\s*(.*)$", line)
            if not m:
                continue
            mac, rest = m.group(1), m.group(2)
            if mac in ("de", "ig", "am", "ds"):
                if mac in ("de", "ig", "am"):
                    skip_until = ".."
                continue
            if mac == "TS":
                table_fmt = True
                continue
            if mac == "TH":
                a = groff_args(rest)
                out.append(groff_escapes(f"{a[0]}({a[1]})" if len(a) >= 2 else " ".join(a)))
                out.append("")
            elif mac in HEADING_MACROS:
                out += ["", groff_escapes(" ".join(groff_args(rest))), ""]
            elif mac in FONT_MACROS:
                out.append(groff_escapes(" ".join(groff_args(rest))))
            elif mac in ALT_MACROS:
                out.append(groff_escapes("".join(groff_args(rest))))
            elif mac in TEXT_ARG_MACROS:
                a = groff_args(rest)
                if mac == "TP":
                    out.append("")
                elif a:
                    out.append(groff_escapes(" ".join(a)))
            elif mac in ("PP", "LP", "P", "sp", "Pp"):
                out.append("")
            elif mac in ("Sh", "Ss"):
                out += ["", groff_escapes(" ".join(groff_args(rest))), ""]
            elif mac == "Dt":
                a = groff_args(rest)
                out += [groff_escapes(f"{a[0]}({a[1]})" if len(a) >= 2 else " ".join(a)), ""]
            elif mac in MDOC_MACROS:
                words, prefix = [], ""
                for tok in [mac] + groff_args(rest):
                    if tok in MDOC_MACROS:
                        prefix = "-" if tok == "Fl" else ""
                        if tok == "Fl" and words == [] and mac == "Fl" and not groff_args(rest):
                            words.append("-")
                        continue
                    words.append(prefix + tok)
                    prefix = ""
                if words:
                    out.append(groff_escapes(" ".join(words)))
            elif mac in ("UE", "ME") and rest.strip():
                out[-1:] = [(out[-1] if out else "") + groff_escapes(rest.strip())]
            continue
        line = line.replace("T{", "").replace("T}", "").replace("\t", " ")
        out.append(groff_escapes(line))
    return "\n".join(out)


def manpage_text(path):
    raw = gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace")
    if re.match(r"^\.so\s", raw.lstrip()):
        return ""  # link to another page
    text = strip_groff(raw)
    # drop the translators' boilerplate that every page ends with
    text = re.split(r"\n(ÜBERSETZUNG|Übersetzung)\n", text)[0]
    return clean(text)


GERMAN_QUOTA = {"fortunes-de": 1_500_000, "manpages-de": 2_500_000}


def german():
    fdir = require("/usr/share/games/fortunes/de", "fortunes-de")
    ffiles = sorted(Path(f) for f in package_files("fortunes-de")
                    if f.startswith(str(fdir) + "/") and "." not in Path(f).name)
    ffiles = [f for f in ffiles if f.is_file() and not f.is_symlink()]
    pages = sorted(Path(f) for f in package_files("manpages-de")
                   if f.startswith("/usr/share/man/de/man") and f.endswith(".gz"))
    pages = [p for p in pages if p.is_file() and not p.is_symlink()]
    if len(ffiles) < 20 or len(pages) < 200:
        raise MissingSource(f"german: too few files (fortunes-de {len(ffiles)}, manpages-de {len(pages)})")
    train, heldout = [], []
    for f in ffiles:
        chunks = chunk_paragraphs("\n\n".join(fortune_records(f)), 8000)
        docs = [Doc("fortunes-de", f"{f}/{i:03d}", c) for i, c in enumerate(chunks)]
        (heldout if bucket(str(f)) == 0 else train).extend(docs)
    for p in pages:
        t = manpage_text(p)
        if nbytes(t) < 200:
            continue
        (heldout if bucket(str(p)) == 0 else train).append(Doc("manpages-de", str(p), t))
    full = []
    for src, quota in GERMAN_QUOTA.items():
        full += pick([d for d in train if d.source == src], quota, 30_000)
    sources = {"fortunes-de": [f"{fdir}/* ({len(ffiles)} files)"],
               "manpages-de": [f"/usr/share/man/de/man*/*.gz ({len(pages)} pages)"]}
    notes = ("held-out: files whose sha256(path) bucket (mod 10) is 0; groff markup stripped and the "
             "translators' boilerplate section dropped; man pages truncated at 30000 bytes")
    return full, heldout, sources, notes


WN_POS = {"noun": "noun", "verb": "verb", "adj": "adj", "adv": "adv"}
DEF_TRAIN_QUOTA = 3_000_000


def wordnet_entries():
    """(word, pos, gloss, examples) per synset; word = first lemma of the synset."""
    entries, files = [], []
    for pos in WN_POS:
        f = require(f"/usr/share/wordnet/data.{pos}", "wordnet-base")
        files.append(str(f))
        for line in f.read_text(encoding="utf-8", errors="replace").split("\n"):
            if not line or line.startswith(" ") or " | " not in line:
                continue
            head, gloss = line.split(" | ", 1)
            fields = head.split()
            n_words = int(fields[3], 16)
            word = fields[4]
            word = re.sub(r"\([a-z]+\)$", "", word).replace("_", " ")  # adjective markers (a) (p) (ip)
            gloss = gloss.strip()
            parts = [p.strip() for p in gloss.split(";")]
            definition = "; ".join(p for p in parts if not p.startswith('"'))
            examples = [p.strip('"') for p in parts if p.startswith('"')]
            if n_words >= 1 and definition:
                entries.append((word, WN_POS[pos], definition, examples))
    return entries, files


def definitions():
    entries, files = wordnet_entries()
    train, heldout = [], []
    for word, pos, definition, examples in entries:
        line = f"{word} ({pos}): {definition}"
        if examples:
            line += "; " + "; ".join(f'"{e}"' for e in examples)
        d = Doc(pos, f"{word}/{pos}", clean(line))
        (heldout if bucket(word.lower()) == 0 else train).append(d)
    # one document per synset is too fine for budgets and separators: group 50 lines per document
    def group(docs):
        out = []
        for src in WN_POS.values():
            ds = [d for d in docs if d.source == src]
            for i in range(0, len(ds), 50):
                out.append(Doc(src, f"{src}/{i:06d}", "\n".join(d.text for d in ds[i:i + 50])))
        return out
    full_train = pick_task(group(train), DEF_TRAIN_QUOTA)
    # TSV for a definition -> word multiple-choice task: held-out words only, single lowercase words,
    # first synset per word (noun, verb, adj, adv order), definitions that do not contain the word.
    seen, rows = set(), []
    for word, pos, definition, _ in entries:
        if bucket(word.lower()) != 0 or not re.fullmatch(r"[a-z]{3,}", word) or word in seen:
            continue
        if re.search(rf"\b{re.escape(word)}", definition.lower()):
            continue
        seen.add(word)
        rows.append(Doc(pos, word, f"{word}\t{pos}\t{clean(definition)}"))
    rows = pick_task(rows, WORDNET_TSV)
    tsv = "word\tpos\tgloss\n" + "\n".join(r.text for r in rows) + "\n"
    notes = ("one line per synset 'word (pos): definition; \"examples\"' (word = first lemma); held-out: "
             "words whose sha256 bucket (mod 10) is 0, so no held-out word is a headword in train; "
             "wordnet.tsv: held-out words, one row per word")
    return full_train, group(heldout), {"wordnet-base": files}, notes, tsv


# ------------------------------------------------------------------------------------------------

def join_docs(docs):
    return SEP.join(d.text for d in docs) + "\n"


def write(path, text, manifest, root, **info):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8")
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    manifest[str(path.relative_to(root))] = dict(
        info, bytes=len(data), lines=data.count(b"\n"), sha256=hashlib.sha256(data).hexdigest())
    nl = data.count(b"\n")
    print(f"  {str(path.relative_to(root)):45s} {len(data):>10,d} bytes {nl:>8,d} lines", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE / "corpora", help="output directory (data/corpora)")
    args = ap.parse_args()
    out = args.out.resolve()
    manifest = {}
    builders = [("prose", prose), ("code", code), ("math", math_task), ("german", german),
                ("definitions", definitions)]
    try:
        for task, fn in builders:
            print(f"[corpora] {task}", flush=True)
            res = fn()
            full_train, full_heldout, sources, notes = res[:4]
            full_heldout = pick_task(full_heldout, FULL_HELDOUT)
            committed_train = pick_task(full_train, COMMITTED_TRAIN)
            committed_heldout = pick_task(full_heldout, COMMITTED_HELDOUT)
            common = dict(task=task, sources=sources, notes=notes)
            for split, docs, path in (
                    ("train", full_train, out / "full" / task / "train.txt"),
                    ("heldout", full_heldout, out / "full" / task / "heldout.txt"),
                    ("train", committed_train, out / task / "train.txt"),
                    ("heldout", committed_heldout, out / task / "heldout.txt")):
                committed = "/full/" not in str(path)
                write(path, join_docs(docs), manifest, out, split=split, committed=committed,
                      documents=len(docs), **common)
            if task == "definitions":
                write(out / task / "wordnet.tsv", res[4], manifest, out, split="heldout", committed=True,
                      format="TSV with header: word<TAB>pos<TAB>gloss", **common)
    except MissingSource as e:
        sys.exit(f"build_corpora: {e}")
    doc = {"generator": "data/build_corpora.py", "document_separator": "blank line",
           "budgets": {"committed_train": COMMITTED_TRAIN, "committed_heldout": COMMITTED_HELDOUT,
                       "full_heldout": FULL_HELDOUT, "wordnet_tsv": WORDNET_TSV},
           "files": dict(sorted(manifest.items()))}
    (out / "MANIFEST.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    committed = sum(v["bytes"] for v in manifest.values() if v["committed"])
    print(f"[corpora] done: committed {committed:,d} bytes; manifest {out / 'MANIFEST.json'}")


if __name__ == "__main__":
    main()
