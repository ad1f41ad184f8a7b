"""duilian.keywords: the keywords of a keyword line are the couplet's theme words (or a related word it does not
hold), 1 to MAX_KEYWORDS of them, chosen the same way every time."""

from collections import Counter

import numpy as np

from duilian import keywords
from duilian.keywords import KW, MAX_KEYWORDS, Related, candidates, choose, keyword_head, keyword_lines

PAIRS = [("春回大地千山秀", "福满人间万户欢"), ("海阔凭鱼跃", "天高任鸟飞"),
         ("一帆风顺年年好", "万事如意步步高"), ("天增岁月人增寿", "春满乾坤福满门"),
         ("喜气盈门添富贵", "春风入户报平安"), ("花好月圆人长寿", "家和业兴福满门")] * 4


def test_candidates_are_theme_words_of_the_couplet():
    words = candidates("春回大地千山秀", "福满人间万户欢")
    assert words and all(w in "春回大地千山秀福满人间万户欢" or set(w) <= set("春回大地千山秀，福满人间万户欢")
                         for w in words)
    assert not {"的", "了", "在"} & set(words)  # never a function word


def test_choose_picks_one_to_three_and_may_shorten_or_replace():
    related = Related.build(Counter({"春风": 5, "春光": 4, "暖风": 3, "大地": 3, "山河": 3, "江山": 3}))
    seen_single = seen_related = False
    for seed in range(200):
        words = choose(["大地", "山河", "春风", "千山"], "春回大地千山秀福满人间万户欢", related,
                       np.random.default_rng(seed))
        assert 1 <= len(words) <= MAX_KEYWORDS and len(set(words)) == len(words)
        seen_single |= any(len(w) == 1 for w in words)
        seen_related |= any(not set(w) <= set("春回大地千山秀福满人间万户欢") for w in words)
    assert seen_single and seen_related
    assert choose([], "山高水长", related, np.random.default_rng(0)) == []


def test_related_words_share_no_character_and_are_nearest_first():
    related = Related.build(Counter({"婚姻": 3, "姻缘": 3, "佳偶": 3, "新婚": 3, "江山": 3}))
    near = related.neighbours("新婚")
    assert "新婚" not in near and all(not set(w) & set("新婚") for w in near)
    assert near.index("佳偶") < near.index("江山")  # a wedding word before a landscape


def test_keyword_lines_are_deterministic_and_shaped():
    a, stats = keyword_lines(PAIRS, 0.5, seed=3)
    b, _ = keyword_lines(PAIRS, 0.5, seed=3)
    c, _ = keyword_lines(PAIRS, 0.5, seed=4)
    assert a == b and a != c and 0 < len(a) < len(PAIRS)
    for head, lower in a:
        *words, upper = head.split(KW)
        assert 1 <= len(words) <= MAX_KEYWORDS and (upper, lower) in PAIRS
        assert keyword_head(words, upper) == head
    assert stats["lines"] == len(a) and 1 <= stats["keywords_per_line"] <= MAX_KEYWORDS
    assert keyword_lines(PAIRS, 0.0, seed=3)[0] == []
    assert keywords.KEYWORD_CANDIDATES >= MAX_KEYWORDS
