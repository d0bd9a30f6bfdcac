#!/usr/bin/env python3
"""Folder-level include graph of lathe's sources and its cycles (issue 26: "no include cycle
between top-level folders or compressor/ subfolders").

A node is a top-level source folder (calibrate, export, kernels, search) or a subfolder of
compressor/ (compressor/model, compressor/quant, ...); an edge A -> B means some file in A includes
a header in B with a quoted project path ("compressor/quant/gptq.h"). Prints every edge with one
example, then the strongly connected components with more than one node; exits 1 when there is
any, so CI can run it.

    python3 scripts/include_cycles.py [--edges] [--allowed docs/architecture.md]

With --allowed FILE, every edge must also be one of the `a -> b` lines of FILE's "Allowed arrows"
block (docs/architecture.md), so the documented architecture and the code cannot drift apart.
"""
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOP = ["calibrate", "compressor", "export", "kernels", "search"]
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def node_of(path):
    parts = Path(path).parts
    if not parts or parts[0] not in TOP:
        return None
    if parts[0] == "compressor" and len(parts) > 2:
        return "compressor/" + parts[1]
    return parts[0]


def graph():
    edges = defaultdict(dict)  # a -> b -> example "file: include"
    for top in TOP:
        for f in sorted((ROOT / top).rglob("*")):
            if f.suffix not in {".h", ".hpp", ".cpp", ".cc", ".cu", ".cuh"}:
                continue
            rel = f.relative_to(ROOT).as_posix()
            a = node_of(rel)
            for inc in INCLUDE.findall(f.read_text(errors="replace")):
                b = node_of(inc)
                if b and b != a and b not in edges[a]:
                    edges[a][b] = f"{rel}: {inc}"
    return edges


def cycles(edges):
    """Tarjan's strongly connected components; those with more than one node."""
    index, low, stack, on, out = {}, {}, [], set(), []
    nodes = sorted(set(edges) | {b for a in edges for b in edges[a]})

    def visit(v, counter=[0]):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, {})):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in nodes:
        if v not in index:
            visit(v)
    return out


def allowed_arrows(path):
    text = Path(path).read_text()
    block = text[text.index("## Allowed arrows"):]
    return set(re.findall(r"^(\S+) -> (\S+)$", block, re.M))


def main():
    edges = graph()
    status = 0
    if "--allowed" in sys.argv:
        allowed = allowed_arrows(sys.argv[sys.argv.index("--allowed") + 1])
        for a in sorted(edges):
            for b in sorted(edges[a]):
                if (a, b) not in allowed:
                    print(f"not an allowed arrow: {a} -> {b}    ({edges[a][b]})")
                    status = 1
    if "--edges" in sys.argv:
        for a in sorted(edges):
            for b in sorted(edges[a]):
                print(f"{a} -> {b}    ({edges[a][b]})")
    found = cycles(edges)
    for comp in found:
        print("cycle among: " + ", ".join(comp))
        for a in comp:
            for b in comp:
                if b in edges.get(a, {}):
                    print(f"  {a} -> {b}    ({edges[a][b]})")
    if not found:
        print("no include cycles between folders")
    return 1 if found or status else 0


if __name__ == "__main__":
    sys.exit(main())
