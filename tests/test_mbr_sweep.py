"""benchmarks/mbr_sweep.py: the overlap is character n-gram precision without punctuation, and α trades the
model's score for agreement with the samples (the beams are candidates, never pseudo-references)."""

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("mbr_sweep", Path(__file__).parents[1] / "benchmarks" / "mbr_sweep.py")
mbr = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mbr)


def test_overlap_counts_clipped_ngrams_and_ignores_punctuation():
    assert mbr.overlap("春风化雨", "春风化雨") == 1.0
    assert mbr.overlap("春风，化雨", "春风化雨") == 1.0  # the comma is not a character of the line
    assert mbr.overlap("天地人和", "山水云月") == 0.0
    # 1-grams 2/4, 2-grams 1/3 (春风), no 3- or 4-grams
    assert mbr.overlap("春风秋月", "春风化雨") == pytest.approx((2 / 4 + 1 / 3) / 4)
    assert mbr.overlap("春春", "春风") == pytest.approx((1 / 2) / 4)  # clipped: 春 counts once


def test_first_moves_from_the_best_score_to_the_samples_consensus():
    pool = [("万象更新", -1.0, 0.0, True),  # the beam's best line, unlike every sample
            ("春风化雨", -2.0, 0.0, False), ("春风化日", -2.5, 0.0, False), ("春风细雨", -2.6, 0.0, False)]
    assert mbr.first(pool, alpha=0.0, beta=0.0) == "万象更新"
    assert mbr.first(pool, alpha=100.0, beta=0.0) == "春风化雨"
    # β subtracts the prior: a line likely everywhere loses its lead
    generic = [("万象更新", -1.0, -0.5, True), ("春风化雨", -1.2, -3.0, False)]
    assert mbr.first(generic, alpha=0.0, beta=0.0) == "万象更新"
    assert mbr.first(generic, alpha=0.0, beta=0.2) == "春风化雨"
    assert mbr.first([], alpha=1.0, beta=0.0) == ""
