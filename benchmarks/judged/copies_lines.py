"""Remake copies.tsv: 100 public test 上联 with an adjacent double, and the shipped default's second candidate (the
best sample) with the samples resampled by their 重字 copies (decode.COPY_DRAWS = 4) and without (1, as before).
Run from the repository root: python benchmarks/judged/copies_lines.py > copies.tsv"""

import random

import duilian
from duilian import decode
from duilian.evaluate import read_pairs

MARKS = "，。！？；：、"


def adjacent_double(line: str) -> bool:
    return any(a == b and a not in MARKS for a, b in zip(line, line[1:]))


def main() -> None:
    c = duilian.load()
    pairs, _ = read_pairs("../shared/data/couplet/test")
    chosen = [p for p in pairs if adjacent_double(p[0])]
    chosen = [chosen[i] for i in sorted(random.Random(3).sample(range(len(chosen)), 100))]
    uppers = [u for u, _ in chosen]
    second = {}
    for draws in (4, 1):
        decode.COPY_DRAWS = draws
        got = []
        for s in range(0, len(uppers), 32):
            batch = uppers[s:s + 32]
            got += [cands[1].text for cands in c.complete_batch(batch, n=5, seed=list(range(s, s + len(batch))))]
        second[draws] = got
    print("upper\thuman\tnew\told")
    for (upper, human), new, old in zip(chosen, second[4], second[1]):
        print(f"{upper}\t{human}\t{new}\t{old}")


if __name__ == "__main__":
    main()
