"""duilian.compose and duilian.themes: whole couplets about a few words, right in form, with 横批; occasions and
years; every bad input refused with a reason."""

import pytest

import duilian
from duilian import compose, decode, themes
from duilian.hengpi import blocked
from duilian.model import build_model
from duilian.rules import OBLIQUE, tone_of
from duilian.text import CoupletInputError, is_han


@pytest.fixture(scope="module")
def keyword_model(tmp_path_factory):
    """A tiny model whose config says it read keyword lines (as an export of such a run says)."""
    path = tmp_path_factory.mktemp("kw")
    m = build_model("tiny", dropout=0.0, seed=5)
    m.config.duilian = {"lines": {"forward": 10, "backward": 10, "keywords": 5}}
    m.save_pretrained(path)
    return duilian.load(path)


def test_composed_couplets_are_valid_about_the_words_and_carry_three_banners(keyword_model, monkeypatch):
    prompts = []
    real = decode.generate

    def spy(net, vocab, specs, search):
        prompts.extend(s.prompt for s in specs)
        return real(net, vocab, specs, search)

    monkeypatch.setattr(compose.decode, "generate", spy)
    got = keyword_model.compose(["春", "福"], length=7, n=5, seed=1)
    assert 1 <= len(got) <= 5 and [x.score for x in got] == sorted((x.score for x in got), reverse=True)
    tok = keyword_model.tokenizer
    head = [tok.cls_id, tok.id("春"), tok.keyword_id, tok.id("福"), tok.keyword_id]
    assert prompts and all(p[:5] == head for p in prompts)  # both lines are written about the words
    assert any(len(p) > 5 for p in prompts)  # the 下联's prompts hold their 上联
    for x in got:
        assert len(x.upper) == len(x.lower) == 7 and x.checks.valid
        assert tone_of(x.upper[-1]) == OBLIQUE  # a 上联 ends 仄
        assert len(x.hengpi) == 3 and all(len(h.text) == 4 and not blocked(h.text) for h in x.hengpi)
        runs = {line[i:i + 4] for line in (x.upper, x.lower) for i in range(len(line) - 3)}
        assert not runs & {h.text for h in x.hengpi}
        assert x.themes == ("春", "福") and set(x.carried) <= {"春", "福"}
        d = x.to_dict()
        assert d["valid"] and len(d["hengpi"]) == 3


def test_a_rule_the_request_lifts_is_lifted_in_the_checks_too(keyword_model, monkeypatch):
    """allow_upper_chars lets the 下联 reuse 上联 characters; the checks of what comes back follow the same rules
    (a couplet is never marked invalid for what the request allowed), once per couplet returned, on its text as
    returned."""
    calls = []
    real = compose.check_pair

    def spy(upper, lower, allow_upper_chars=False, forms=None):
        calls.append((upper, lower, allow_upper_chars))
        return real(upper, lower, allow_upper_chars, forms)

    monkeypatch.setattr(compose, "check_pair", spy)
    for allow in (False, True):
        calls.clear()
        got = keyword_model.compose(["春", "福"], length=7, n=5, seed=3, allow_upper_chars=allow)
        assert got and all(x.checks.valid for x in got)
        assert calls == [(x.upper, x.lower, allow) for x in got]


def test_carries_a_word_or_a_close_relative():
    assert compose.carries("春", "东风送暖") is False or compose.carries("春", "岁岁平安")  # 岁 is close to 春
    assert compose.carries("春", "岁月") and compose.carries("平安", "平安") and not compose.carries("春", "桌椅")


@pytest.mark.parametrize("words, reason", [
    ([], "at least one"), (["", " "], "at least one"), (["spring"], "Chinese characters only"),
    (["春😀"], "Chinese characters only"), (["春", "福", "寿", "喜", "财"], "at most 4"),
    (["春夏秋冬四季"], "at most 4 characters"),
])
def test_bad_words_are_refused(keyword_model, words, reason):
    with pytest.raises(CoupletInputError, match=reason):
        keyword_model.compose(words)


def test_bad_length_occasion_and_year_are_refused(keyword_model):
    with pytest.raises(CoupletInputError, match="length"):
        keyword_model.compose(["春"], length=1)
    with pytest.raises(ValueError, match="春节, 婚庆"):
        keyword_model.compose(["春"], occasion="生日")
    with pytest.raises(ValueError, match="year"):
        keyword_model.compose(["春"], year=0)


def test_a_model_without_keyword_lines_cannot_compose(tmp_path):
    build_model("tiny", seed=0).save_pretrained(tmp_path)
    with pytest.raises(CoupletInputError, match="not trained with keyword lines"):
        duilian.load(tmp_path).compose(["春"])


@pytest.mark.parametrize("name", ["春节", "婚庆", "寿诞", "开业", "乔迁", "升学"])
def test_each_occasion_has_words_and_banners_and_composes(keyword_model, name):
    occ = themes.occasion(name)
    assert len(occ.words) >= 10 and all(len(w) == 2 and all(map(is_han, w)) for w in occ.words)
    assert len(occ.banners) >= 10 and all(len(b) == 4 and not blocked(b) for b in occ.banners)
    got = keyword_model.compose(["喜"], length=5, n=3, occasion=name, seed=2)
    assert got and all(x.checks.valid for x in got)
    assert all(x.themes[0] == "喜" and len(x.themes) == 2 and x.themes[1] in occ.words for x in got)
    assert len({x.themes[1] for x in got}) == len(got)  # each candidate draws another of the occasion's words


def test_a_year_brings_its_animal_and_its_banners(keyword_model):
    y = themes.year(2027)
    assert (y.ganzhi, y.animal) == ("丁未", "羊") and y.banners[0] == "三羊开泰"
    assert all("羊" in b for b in y.banners) and not {"顺手牵羊", "羊入虎口"} & set(y.banners)
    assert [themes.ganzhi(n) for n in (1984, 2000, 2024, 2026)] == [("甲子", "鼠"), ("庚辰", "龙"), ("甲辰", "龙"),
                                                                  ("丙午", "马")]
    got = keyword_model.compose(["春"], n=3, year=2027, seed=3)
    assert got and all(x.themes == ("春", "羊") for x in got)
    assert any(h.text in y.banners for x in got for h in x.hengpi)  # the year's banners are favoured
