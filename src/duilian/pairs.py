"""Aligned pairs: which character people put against which in a couplet, and what a candidate's pairs are worth.

A couplet answers its 上联 position by position: 天 against 地, 红 against 绿, 辛丑 against 丁未. Counting those
pairs over the training couplets gives a table a small model only half holds, and a ranking term that rewards a
下联 for the pairs people actually write:

    value(x, y) = log(1 + c(x, y) / (K · p(y)))

c(x, y): how often the 下联 puts y where the 上联 has x (characters, and pairs of neighbouring characters: 辛丑 /
丁未); p(y): y's share of the 下联 characters (or bigrams), so that a pair common only because y is common (x
against 人, 风, 春) is worth little, K the smoothing. That is the log of P(y | x) / P(y) under add-K smoothing
towards P(y), less its value for an unseen pair, which depends on x alone and so is the same for every candidate
of one 上联: the term ranks candidates exactly as the smoothed pointwise mutual information does, and a table
keeps only the pairs it has seen (at least `min_count` times). A candidate's pair score is the sum of its character
values plus `bigram` × the sum of its bigram values, over its length (one divisor for both, so the pair score is per
character like the log-probs it is added to); the ranking adds weight × that
(api.Couplets.complete_batch), the way it adds the noisy channel's λ · log P(上联 | 下联): both reward a 下联 that
answers this 上联 rather than any. Unlike a backward model this costs a table lookup, and it needs no training.

The table is counted from a prepared dataset's training split (`duilian pairs --data DIR --model DIR`), so it
never holds a validation, test or held-out pair; it lives beside the weights as pairs.npz, and config.json
("duilian" → "pairs") names it with its weights. On mini-h, the default model, weight 1 and bigram 0.5 raised
BLEU-1/2/4 on the whole classical development split from 9.10 / 4.11 / 0.91 to 9.75 / 4.54 / 1.10 and on the public
test split from 17.55 / 8.63 / 3.24 to 17.93 / 8.80 / 3.24, distinct-2 of the first candidates from 0.717 to 0.731
and 0.508 to 0.520; a blind judge saw the lines as level with those before (91 to 87 where they differ). The
model card has the sweep and the judges.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .knobs import knob

FILENAME = "pairs.npz"
MAX_WEIGHT = 5.0
"""Largest pair weight accepted: at 5 the pairs outweigh the model's own log-prob several times over."""


@dataclass(frozen=True)
class PairsConfig:
    """How the table is counted and what config.json gets."""

    min_count: int = knob("pairs seen fewer times than this are left out (mostly noise, and half the file)", 2,
                          metavar="N")
    smoothing: float = knob("K: how many sightings a pair needs before it counts (add-K towards P(y))", 5.0)
    weight: float = knob("the weight written to config.json: the ranking adds weight x the pair score", 1.0)
    bigram: float = knob("the bigram pairs' share of the pair score, beside the characters'", 0.5)

    def __post_init__(self):
        if self.min_count < 1:
            raise ValueError(f"min_count must be at least 1, not {self.min_count}")
        if self.smoothing <= 0:
            raise ValueError(f"smoothing must be positive, not {self.smoothing}")
        if not 0 <= self.weight <= MAX_WEIGHT:
            raise ValueError(f"weight must be between 0 and {MAX_WEIGHT:g}, not {self.weight}")
        if not 0 <= self.bigram <= MAX_WEIGHT:
            raise ValueError(f"bigram must be between 0 and {MAX_WEIGHT:g}, not {self.bigram}")


@dataclass
class PairCounts:
    """Counts of aligned pairs over couplets given as token ids (a 上联 and a 下联 of the same length)."""

    pairs: Counter
    lowers: Counter
    bigram_pairs: Counter
    lower_bigrams: Counter
    couplets: int = 0

    @classmethod
    def empty(cls) -> "PairCounts":
        return cls(Counter(), Counter(), Counter(), Counter())

    def add(self, upper: list[int], lower: list[int]) -> bool:
        """Count one couplet; False (nothing counted) when the lines differ in length: nothing is aligned."""
        if len(upper) != len(lower) or not upper:
            return False
        self.couplets += 1
        self.lowers.update(lower)
        # A character against itself is punctuation (a copy is forbidden): the same for every candidate, no signal.
        self.pairs.update((x, y) for x, y in zip(upper, lower) if x != y)
        up2, low2 = list(zip(upper, upper[1:])), list(zip(lower, lower[1:]))
        self.lower_bigrams.update(low2)
        self.bigram_pairs.update(zip(up2, low2))
        return True


@dataclass
class PairTable:
    """The values of the pairs seen at least min_count times, as sorted integer keys for a binary search."""

    vocab_size: int
    keys: np.ndarray
    """int64, x · V + y, sorted."""
    values: np.ndarray
    """float32, value(x, y) for each key."""
    bigram_keys: np.ndarray
    """int64, ((x1 · V + x2) · V + y1) · V + y2, sorted."""
    bigram_values: np.ndarray
    couplets: int = 0

    @classmethod
    def from_counts(cls, counts: PairCounts, vocab_size: int, config: PairsConfig = PairsConfig()) -> "PairTable":
        def table(pairs: Counter, lowers: Counter, key) -> tuple[np.ndarray, np.ndarray]:
            total = sum(lowers.values()) or 1
            kept = [(key(x, y), math.log1p(c / (config.smoothing * (lowers[y] + 1) / total)))
                    for (x, y), c in pairs.items() if c >= config.min_count]
            kept.sort()
            return (np.array([k for k, _ in kept], dtype=np.int64),
                    np.array([v for _, v in kept], dtype=np.float32))

        v = vocab_size
        keys, values = table(counts.pairs, counts.lowers, lambda x, y: x * v + y)
        bigram_keys, bigram_values = table(counts.bigram_pairs, counts.lower_bigrams,
                                           lambda x, y: ((x[0] * v + x[1]) * v + y[0]) * v + y[1])
        return cls(vocab_size, keys, values, bigram_keys, bigram_values, counts.couplets)

    def score(self, upper: list[int], lower: list[int], bigram: float) -> float:
        """(Sum of the character values + `bigram` × sum of the bigram values) / the line's length; 0 for lines of
        different lengths (nothing aligned) and for an empty one."""
        if len(upper) != len(lower) or not upper:
            return 0.0
        v, n = self.vocab_size, len(upper)
        up, low = np.asarray(upper, dtype=np.int64), np.asarray(lower, dtype=np.int64)
        one = _lookup(self.keys, self.values, up * v + low)
        two = _lookup(self.bigram_keys, self.bigram_values,
                      ((up[:-1] * v + up[1:]) * v + low[:-1]) * v + low[1:]) if n > 1 else 0.0
        return (one + bigram * two) / n

    def save(self, path: str | Path) -> None:
        np.savez_compressed(path, vocab_size=self.vocab_size, keys=self.keys, values=self.values.astype(np.float16),
                            bigram_keys=self.bigram_keys, bigram_values=self.bigram_values.astype(np.float16),
                            couplets=self.couplets)

    @classmethod
    def load(cls, path: str | Path) -> "PairTable":
        with np.load(path) as z:
            return cls(int(z["vocab_size"]), z["keys"], z["values"].astype(np.float32), z["bigram_keys"],
                       z["bigram_values"].astype(np.float32), int(z["couplets"]))

    def __len__(self) -> int:
        return len(self.keys) + len(self.bigram_keys)


def _lookup(keys: np.ndarray, values: np.ndarray, wanted: np.ndarray) -> float:
    """Sum of the values of `wanted` keys (0 for a key not in the table)."""
    if not len(keys):
        return 0.0
    at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    return float(np.where(keys[at] == wanted, values[at], 0.0).sum())


def count_dataset(data_dir: str | Path, split: str = "train") -> tuple[PairCounts, dict]:
    """Counts over a prepared dataset's split (duilian prepare): every forward couplet, [CLS]上联-下联[SEP].
    Backward lines ([REV]) and keyword lines ([KW]) are skipped: the first repeat the forward ones, the second
    have no whole 上联. Returns the counts and what was skipped, by reason."""
    from .dataset import TokenizedSplit, read_tokenizer

    tok = read_tokenizer(data_dir)
    split_ = TokenizedSplit.open(data_dir, split)
    skip = {i for i in (tok.reverse_id, tok.keyword_id) if i is not None}
    counts, skipped = PairCounts.empty(), Counter()
    for i in range(len(split_)):
        seq = split_[i].tolist()[1:-1]  # without [CLS] and [SEP]
        if skip.intersection(seq):
            skipped["backward or keyword line"] += 1
            continue
        if tok.separator_id not in seq:
            skipped["no separator"] += 1
            continue
        cut = seq.index(tok.separator_id)
        if not counts.add(seq[:cut], seq[cut + 1:]):
            skipped["lines of different lengths"] += 1
    return counts, dict(skipped)


def write(model_dir: str | Path, table: PairTable, config: PairsConfig) -> Path:
    """pairs.npz beside the weights, and config.json "duilian" → "pairs" naming it with its weights."""
    from .model import write_duilian_section

    path = Path(model_dir) / FILENAME
    table.save(path)
    write_duilian_section(model_dir, "pairs", {"file": FILENAME, "weight": config.weight, "bigram": config.bigram,
                                               "min_count": config.min_count, "smoothing": config.smoothing,
                                               "couplets": table.couplets})
    return path
