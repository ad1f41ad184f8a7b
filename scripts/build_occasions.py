"""Build src/duilian/data/occasions.json: for each occasion of `duilian compose --occasion`, the theme words and
the 横批 pool, read off the couplet corpus.

    python scripts/build_occasions.py --corpus ../shared/data/couplet/train --out src/duilian/data/occasions.json

Per occasion, a few seed words say what it is about (SEEDS: written by hand, the only hand-made part). Then:
1) its couplets: every corpus couplet holding a seed word;
2) words: jieba's words of those couplets, ranked by how much more often they stand there than in the whole
   corpus (a log-odds ratio with a prior, Monroe et al. 2008, "Fightin' Words"): common nouns, verbs and adjectives
   of two characters (one character is usually part of a longer word, a name or a place) seen in at least
   MIN_COUNT of the occasion's couplets; the top WORDS of them;
3) banners: the 横批 pool of duilian.hengpi ranked by the cosine between each phrase and the occasion's couplets
   (the sum of their SIF-weighted character vectors), plus the phrase's own prior; the top BANNERS that are not
   blocked and do not repeat characters of a better one.
Deterministic: the same corpus gives the same file.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from pathlib import Path

SEEDS = {
    "春节": ["春节", "新春", "迎春", "除夕", "新年", "春联", "辞旧", "贺岁"],
    "婚庆": ["新婚", "婚", "佳偶", "良缘", "鸾凤", "琴瑟", "合卺", "喜结", "新娘", "新郎", "洞房"],
    "寿诞": ["寿", "福寿", "南山", "松鹤", "期颐", "耄耋", "华诞", "椿萱", "鹤算"],
    "开业": ["开业", "开张", "生意", "财源", "兴隆", "商号", "顾客", "店"],
    "乔迁": ["乔迁", "新居", "迁居", "华堂", "新宅", "安居", "新屋", "宅"],
    "升学": ["金榜", "高考", "学子", "状元", "蟾宫", "鹏程", "寒窗", "及第", "升学", "学府"],
}
"""What each occasion is about: a couplet holding one of these belongs to it."""
EXCLUDE = frozenset("方才 局面 汇聚 地利 意气 书生 天下 日月 尚书 兄弟 建邦 倾情 百姓 可延 寿者 仁者 无量 "
                    "寂寞 今朝 骏业 茅店 酒店 春风 八方".split())
"""Read by eye in the lists this script wrote: words of those couplets that are not about the occasion (方才 and
局面 stand in many 春联 but say nothing of spring), and 酒店 / 茅店, which are not a user's shop."""
WORDS = 24
BANNERS = 30
MIN_COUNT = 30
PRIOR = 100.0
"""Pseudo-count of the log-odds prior: words seen a handful of times cannot top the list by chance."""
THEME_TAGS = ("n", "ng", "t", "s", "v", "vn", "a", "an", "i")
"""jieba tags a theme word may have (no names: nr, ns, nz)."""


def read_corpus(path: str) -> list[str]:
    from duilian.corpus import clean_corpus, resolve_source

    pairs, _ = clean_corpus(resolve_source([path]), 64)
    return [u + "，" + l for u, l in pairs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import jieba
    import jieba.posseg
    import numpy as np

    from duilian import hengpi
    from duilian.text import is_han

    jieba.setLogLevel(60)
    couplets = read_corpus(args.corpus)
    # Words of every couplet (jieba without its HMM: the same cut every time, and fast), with their tags.
    words = [[(w, t) for w, t in jieba.posseg.cut(c, HMM=False) if all(map(is_han, w))] for c in couplets]
    background = Counter(w for ws in words for w, _ in ws)
    tag_of = {}
    for ws in words:
        for w, t in ws:
            tag_of.setdefault(w, t)
    total = sum(background.values())
    pool = hengpi.load_pool()
    out = {}
    for name, seeds in SEEDS.items():
        mine = [i for i, c in enumerate(couplets) if any(s in c for s in seeds)]
        counts = Counter(w for i in mine for w in {w for w, _ in words[i]})
        n_mine = sum(counts.values())

        def log_odds(w: str) -> float:
            # Monroe et al.'s log-odds with an informative Dirichlet prior (the corpus frequency)
            a = PRIOR * background[w] / total
            mine_w, rest_w = counts[w], background[w] - counts[w]
            return (math.log((mine_w + a) / (n_mine - mine_w + PRIOR - a))
                    - math.log((rest_w + a) / (total - n_mine - rest_w + PRIOR - a)))

        ranked = sorted((w for w, n in counts.items() if n >= MIN_COUNT and len(w) == 2 and w not in EXCLUDE
                         and tag_of.get(w, "x") in THEME_TAGS), key=lambda w: (-log_odds(w), w))
        chosen = [w for w in ranked if not any(w != v and w in v for v in ranked[:WORDS])][:WORDS]
        text = "".join(couplets[i] for i in mine)
        centre = pool.vector("".join(ch for ch in text if is_han(ch)))
        scores = pool.vectors @ centre + pool.prior
        banners = [h.text for h in hengpi._best(pool, scores.astype(np.float32), BANNERS)]
        out[name] = {"seeds": seeds, "couplets": len(mine), "words": chosen, "banners": banners}
        print(name, len(mine), " ".join(chosen), "|", " ".join(banners[:12]))
    Path(args.out).write_text(json.dumps({"source": str(args.corpus), "occasions": out}, ensure_ascii=False,
                                         indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
