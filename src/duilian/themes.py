"""Themes for `compose`: the words of an occasion and of a year, and the 横批 that suit them.

    from duilian import themes
    themes.occasion("婚庆").words[:4]     # ('鸾凤', '良缘', '佳偶', '新婚')
    themes.year(2027)                     # Year(number=2027, ganzhi='丁未', animal='羊', banners=(...))

Occasions (春节, 婚庆, 寿诞, 开业, 乔迁, 升学) come from data/occasions.json, which scripts/build_occasions.py
reads off the couplet corpus: per occasion, the words that stand far more often in its couplets than in the
rest, and the 横批 pool phrases nearest its couplets in meaning.

A year's 干支 is the 60-year cycle counted from 甲子 (year 4 of the common era was 甲子, so (year - 4) mod 10
and mod 12 give the stem and the branch); its animal is the branch's. A 春联 of that year names the animal or
plays on its sound (谐音): the banners of a year are the pool phrases holding the animal (金猴献瑞, 马到成功),
most common first, after the year's own puns (PUNS: 三羊开泰 for 三阳开泰 in a year of the goat). Puns are
listed by hand: replacing every character that sounds like the animal gives mostly nonsense (承前启猴).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

DATA = Path(__file__).with_name("data") / "occasions.json"
STEMS = "甲乙丙丁戊己庚辛壬癸"
BRANCHES = "子丑寅卯辰巳午未申酉戌亥"
ANIMALS = "鼠牛虎兔龙蛇马羊猴鸡狗猪"
YEAR_BANNERS = 8
"""Banners of a year offered to the 横批 ranker."""
PUNS = {"羊": ("三羊开泰",), "鸡": ("金鸡报晓",), "猪": ("金猪纳福",)}
"""The Spring Festival's set banners for a year's animal that a pool of idioms and corpus lines may lack."""
FESTIVE_FLOOR = 0.4
"""A phrase naming the animal is a year's banner only if it is this festive (cosine with the 春节 banners plus its
prior): 三羊开泰 1.35, 金猴献瑞 1.15, 猪朋狗友 0.32, 泥猪瓦狗 0.16."""


@dataclass(frozen=True)
class Occasion:
    name: str
    words: tuple[str, ...]
    """Theme words, most typical of the occasion first."""
    banners: tuple[str, ...]
    """横批 that suit it, best first."""


@dataclass(frozen=True)
class Year:
    number: int
    ganzhi: str
    """The year's stem and branch, e.g. 丁未 for 2027."""
    animal: str
    """The branch's animal, e.g. 羊."""
    banners: tuple[str, ...]
    """Pool phrases naming the animal, or playing on its sound, most common first."""


@lru_cache(maxsize=1)
def _occasions() -> dict[str, Occasion]:
    data = json.loads(DATA.read_text(encoding="utf-8"))["occasions"]
    return {name: Occasion(name, tuple(o["words"]), tuple(o["banners"])) for name, o in data.items()}


def occasions() -> tuple[str, ...]:
    """The occasions compose knows, in the data's order."""
    return tuple(_occasions())


def occasion(name: str) -> Occasion:
    """The occasion called `name`, or ValueError naming the ones there are."""
    found = _occasions().get(name)
    if found is None:
        raise ValueError(f"unknown occasion {name!r}; choose from {', '.join(occasions())}")
    return found


def ganzhi(number: int) -> tuple[str, str]:
    """(干支, animal) of a year of the common era: 2027 -> (丁未, 羊)."""
    return STEMS[(number - 4) % 10] + BRANCHES[(number - 4) % 12], ANIMALS[(number - 4) % 12]


@lru_cache(maxsize=16)
def year(number: int) -> Year:
    """The year's 干支, animal and banners. Years before 1 or after 9999 are refused."""
    if not isinstance(number, int) or not 1 <= number <= 9999:
        raise ValueError(f"a year is a number from 1 to 9999, not {number!r}")
    gz, animal = ganzhi(number)
    return Year(number, gz, animal, _year_banners(animal))


def _year_banners(animal: str) -> tuple[str, ...]:
    import numpy as np

    from .hengpi import _unit, load_pool

    pool = load_pool()
    rows = np.flatnonzero(np.char.find(pool.texts, animal) >= 0)
    # festive first: the cosine with the Spring Festival's own banners, plus the phrase's prior (commonness, omen),
    # so 金猴献瑞 comes before 尖嘴猴腮 and 画蛇添足 sinks
    festive = _unit(pool.vectors[np.searchsorted(pool.texts, list(occasion("春节").banners))].sum(0))
    score = pool.vectors[rows] @ festive + pool.prior[rows]
    keep = rows[score >= FESTIVE_FLOOR]
    order = [pool.texts[r] for r in keep[np.lexsort((keep, -score[score >= FESTIVE_FLOOR]))]]
    return tuple(dict.fromkeys([*PUNS.get(animal, ()), *order]))[:YEAR_BANNERS]
