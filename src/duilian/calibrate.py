"""Calibration: the characters a model writes far more often than people do, and what each costs in the search.

Beam search seeks the likeliest line, and a small model's likeliest lines lean on a few safe characters: mini-g's
first candidates use 崛 (崛起), 寞 (寂寞), 焕, 宏 (宏图), 谐 (和谐), 绣 (锦绣) four to ten times as often as the human
下联 of its own training corpus do, and the same endings (展宏图, 总关情) answer many different 上联.
A penalty per character that the model over-writes, measured once per model, corrects that bias:

    penalty[c] = max(0, log(q_c / p_c))     for characters c the model wrote at least `min_count` times

q_c: c's share of the characters of the model's first candidates for a seeded sample of the corpus's 上联 (the
default decoding, with no calibration); p_c: c's share of the characters of the corpus's human 下联 (+1 to both
counts, so a character people never write is not infinitely over-written). Only over-writing is penalised: a
character the model writes less often than people is not pushed, so no rare character is forced in.

The search adds -weight × penalty[c] to the score of each character c it writes (decode.generate's `bias`): the
beam and the ranking move away from the over-written characters, samples still draw from the model, and the
log-prob a candidate reports is the model's own. The table and its weight live in the model's config.json
("duilian" → "calibration"), so a model carries its own; `duilian calibrate` writes them. On mini-h, the default
model, at weight 0.7, distinct-2 of the first candidates rises from 0.458 to 0.508 on the public test split and
from 0.655 to 0.717 on the classical one, with BLEU-4 3.22 → 3.24 and 0.75 → 0.91; on mini-g a blind judge
preferred the calibrated line in 108 of the 197 that changed (the model card has the sweeps,
`benchmarks/calibration_sweep.py`, and the judge's split by source).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .knobs import knob
from .text import is_han

MAX_WEIGHT = 3.0
"""Largest calibration weight accepted: at 3 an over-written character costs three times its log ratio, enough to
keep it out of almost every line."""


@dataclass(frozen=True)
class CalibrationConfig:
    """How the table is measured."""

    lines: int = knob("上联 sampled from the corpus and decoded to measure what the model writes", 2000, metavar="N")
    seed: int = knob("seed of the sample of 上联 (and of their decoding)", 0)
    min_count: int = knob("characters the model wrote fewer times than this get no penalty (too few to tell)", 5,
                          metavar="N")
    weight: float = knob("the weight written to config.json: the search adds -weight x penalty per character", 0.5)
    batch_size: int = knob("上联 per decoding pass", 32, metavar="B")

    def __post_init__(self):
        if self.lines < 1:
            raise ValueError(f"lines must be at least 1, not {self.lines}")
        if self.min_count < 1:
            raise ValueError(f"min_count must be at least 1, not {self.min_count}")
        if not 0 <= self.weight <= MAX_WEIGHT:
            raise ValueError(f"weight must be between 0 and {MAX_WEIGHT:g}, not {self.weight}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {self.batch_size}")


def han_counts(lines) -> Counter:
    """How often each Han character occurs in `lines` (punctuation and anything else left out)."""
    counts: Counter = Counter()
    for line in lines:
        counts.update(ch for ch in line if is_han(ch))
    return counts


def penalties(written: Counter, human: Counter, min_count: int = 5) -> dict[str, float]:
    """max(0, log(q_c / p_c)) for each character the model wrote at least min_count times, where q and p are the
    characters' shares (count + 1 over the total) of `written` (the model's lines) and `human` (people's); only
    the characters with a penalty above 0, rounded to 3 decimals."""
    q_total, p_total = sum(written.values()), sum(human.values())
    if not q_total or not p_total:
        raise ValueError("calibration needs lines from both the model and people")
    out = {}
    for ch, n in written.items():
        if n < min_count:
            continue
        ratio = math.log((n + 1) / q_total) - math.log((human.get(ch, 0) + 1) / p_total)
        if ratio > 0:
            out[ch] = round(ratio, 3)
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


def calibrate(couplets, pairs: list[tuple[str, str]], config: CalibrationConfig = CalibrationConfig()) -> dict:
    """The "calibration" section of a model's config.json, measured on `pairs` (the corpus's (上联, 下联), normalised):
    {"weight", "lines", "seed", "min_count", "penalty": {character: penalty}}. The 上联 are decoded with the
    default options and the calibration off (weight 0), whatever the model already carries."""
    if not pairs:
        raise ValueError("calibration needs at least one pair")
    rng = random.Random(config.seed)
    sample = rng.sample(range(len(pairs)), min(config.lines, len(pairs)))
    uppers = [pairs[i][0] for i in sample]
    firsts = []
    for start in range(0, len(uppers), config.batch_size):
        batch = uppers[start:start + config.batch_size]
        seeds = [config.seed + start + i for i in range(len(batch))]
        firsts += [cands[0].text for cands in couplets.complete_batch(batch, seed=seeds, calibration_weight=0.0)
                   if cands]
    table = penalties(han_counts(firsts), han_counts(lower for _, lower in pairs), config.min_count)
    return {"weight": config.weight, "lines": len(uppers), "seed": config.seed, "min_count": config.min_count,
            "penalty": table}


def write_calibration(model_dir: str | Path, section: dict) -> Path:
    """Put `section` under "duilian" → "calibration" in model_dir/config.json (the rest is kept as it is)."""
    from .model import write_duilian_section

    return write_duilian_section(model_dir, "calibration", section)
