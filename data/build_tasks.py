#!/usr/bin/env python3
"""Builds the multiple-choice task files used by `lathe eval --tasks` from the held-out corpora.

  cloze_persuasion.jsonl   last-word cloze on held-out Persuasion (prose): the context is the
                           preceding sentence and the current one up to its last word; the answer
                           is that word, against 3 distractor words of similar frequency in the
                           held-out text (so frequency alone does not give the answer away).
  wordnet_definitions.jsonl  WordNet definition -> word: the held-out glosses of
                           data/corpora/definitions/heldout.txt, the defined word against 3 other
                           held-out words of the same part of speech.

Each line is {"context": str, "choices": [str, ...], "answer": int}; choices start with a space so
that context + choice is the natural text (the lm-eval convention). Deterministic (seed 0)."""
import argparse
import json
import random
import re
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent
WORD = re.compile(r"^[A-Za-z]{3,}$")


def sentences(text: str):
    flat = re.sub(r"\s+", " ", text)
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", flat) if s.strip()]


def cloze_items(text: str, count: int, rng: random.Random):
    words = Counter(w.lower() for w in re.findall(r"[A-Za-z]+", text))
    ranked = [w for w, _ in words.most_common() if WORD.match(w)]
    rank = {w: i for i, w in enumerate(ranked)}
    candidates = []
    sents = sentences(text)
    for prev, sent in zip(sents, sents[1:]):
        m = re.match(r"^(.*\S)\s+([A-Za-z]+)([.!?])$", sent)
        if not m or len(sent.split()) < 8 or not WORD.match(m.group(2)):
            continue
        answer = m.group(2)
        if answer.lower() not in rank:
            continue
        candidates.append((f"{prev} {m.group(1)}", answer))
    rng.shuffle(candidates)
    items = []
    for context, answer in candidates[:count]:
        r = rank[answer.lower()]
        pool = [w for w in ranked[max(0, r - 40): r + 40] if w != answer.lower()]
        distractors = rng.sample(pool, 3)
        choices = [answer] + [d if answer[0].islower() else d.capitalize() for d in distractors]
        rng.shuffle(choices)
        items.append({"context": context, "choices": [" " + c for c in choices], "answer": choices.index(answer)})
    return items


def wordnet_items(lines, count: int, rng: random.Random):
    entries = []
    for line in lines:
        m = re.match(r"^([A-Za-z]+) \((noun|verb|adj|adv)\): ([^;\"]+)", line)
        if m:
            entries.append((m.group(1), m.group(2), m.group(3).strip()))
    by_pos = {}
    for word, pos, _ in entries:
        by_pos.setdefault(pos, set()).add(word)
    rng.shuffle(entries)
    items, used = [], set()
    for word, pos, gloss in entries:
        if word in used or len(by_pos[pos]) < 4:
            continue
        used.add(word)
        distractors = rng.sample(sorted(by_pos[pos] - {word}), 3)
        choices = [word] + distractors
        rng.shuffle(choices)
        items.append({"context": f"Definition: {gloss}\nWord:", "choices": [" " + c for c in choices],
                      "answer": choices.index(word)})
        if len(items) == count:
            break
    return items


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "tasks")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    prose = (ROOT / "corpora" / "prose" / "heldout.txt").read_text(encoding="utf-8")
    defs = (ROOT / "corpora" / "definitions" / "heldout.txt").read_text(encoding="utf-8").splitlines()
    tasks = {"cloze_persuasion.jsonl": cloze_items(prose, args.count, random.Random(args.seed)),
             "wordnet_definitions.jsonl": wordnet_items(defs, args.count, random.Random(args.seed))}
    for name, items in tasks.items():
        if len(items) < args.count:
            raise SystemExit(f"{name}: only {len(items)} items could be built, {args.count} requested")
        with open(args.out / name, "w", encoding="utf-8") as f:
            for item in items:
                f.write(json.dumps(item, ensure_ascii=False) + "\n")
        print(f"{name}: {len(items)} items")


if __name__ == "__main__":
    main()
