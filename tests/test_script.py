"""script.py: traditional and variant characters to simplified and back, length and 重字 kept.

References are OpenCC's own outputs (what the phrase-aware converter does on its own) and real lines whose
simplified and traditional forms are well known.
"""

import opencc
import pytest

from duilian import script
from duilian.rules import repeat_pattern
from duilian.script import answer_script, is_traditional, to_simplified, to_traditional

BASIC_BLOCK = range(0x4E00, 0xA000)
"""CJK Unified Ideographs, the basic block U+4E00–U+9FFF."""


@pytest.mark.parametrize("traditional, simplified", [
    ("風調雨順年年好", "风调雨顺年年好"),
    ("人間四月芳菲盡", "人间四月芳菲尽"),
    ("龍騰虎躍迎新歲", "龙腾虎跃迎新岁"),
    ("兩岸曉煙楊柳綠，一園春雨杏花紅", "两岸晓烟杨柳绿，一园春雨杏花红"),  # 聲律啓蒙, punctuation kept in place
    ("白髮三千丈", "白发三千丈"),
])
def test_to_simplified_real_traditional_lines(traditional, simplified):
    assert to_simplified(traditional) == simplified
    assert to_simplified(simplified) == simplified  # simplified text is left as it is


@pytest.mark.parametrize("variant, simplified", [("簷", "檐"), ("粧", "妆")])
def test_to_simplified_regional_variants(variant, simplified):
    """OpenCC's plain t2s leaves these variant forms alone; the Hong Kong and Taiwan configs undo them."""
    assert opencc.OpenCC("t2s").convert(variant) == variant
    assert to_simplified(variant) == simplified
    assert to_simplified(f"雨打{variant}前") == f"雨打{simplified}前"


def test_every_basic_block_ideograph_keeps_its_length_both_ways():
    for cp in BASIC_BLOCK:
        ch = chr(cp)
        assert len(to_simplified(ch)) == 1 and len(to_traditional(ch)) == 1, hex(cp)


@pytest.fixture
def phrase_rule(monkeypatch):
    """Install a rewrite of what OpenCC returns (every config), as a phrase rule that changes the length
    would. OpenCC 1.4's dictionaries hold no such rule (each entry maps n code points to n), so the
    fallback is reached this way. The per-character cache is cleared before and after."""
    real = script._converter

    def install(rule):
        class Rewritten:
            def __init__(self, config):
                self.inner = real(config)

            def convert(self, text):
                return rule(self.inner.convert(text))

        monkeypatch.setattr(script, "_converter", Rewritten)
        script._convert_char.cache_clear()

    yield install
    script._convert_char.cache_clear()


def test_a_phrase_that_merges_characters_falls_back_to_character_by_character(phrase_rule):
    phrase_rule(lambda text: text.replace("风调", "风"))  # 2 characters -> 1, only in phrase context
    assert script._converter("hk2s").convert("風調雨順年年好") == "风雨顺年年好"  # the rule is in force
    assert to_simplified("風調雨順年年好") == "风调雨顺年年好"
    assert to_simplified("人間四月芳菲盡") == "人间四月芳菲尽"  # lines the rule does not touch: as before


def test_a_character_that_would_become_two_is_kept_as_typed(phrase_rule):
    phrase_rule(lambda text: text.replace("尽", "尽了").replace("風", "風風"))
    assert to_simplified("人間四月芳菲盡") == "人间四月芳菲盡"  # the rest still converted
    assert to_traditional("风调雨顺") == "风調雨順"


@pytest.mark.parametrize("simplified, phrase_output, expected", [
    ("头发发白", "頭髮發白", "頭發發白"),
    ("理发发财", "理髮發財", "理發發財"),
    ("皇后后来", "皇后後來", "皇後後來"),
])
def test_to_traditional_keeps_repeats_where_phrases_would_split_them(simplified, phrase_output, expected):
    """OpenCC's phrase context gives one simplified character two traditional forms in one line (发: 髮 in
    头发, 發 in 发白); the answer keeps the 重字 equal instead."""
    assert opencc.OpenCC("s2t").convert(simplified) == phrase_output
    assert repeat_pattern(phrase_output) != repeat_pattern(simplified)
    assert to_traditional(simplified) == expected
    assert repeat_pattern(expected) == repeat_pattern(simplified)


def test_to_traditional_uses_phrase_context_where_no_repeat_is_at_stake():
    assert to_traditional("头发很长") == "頭髮很長"  # 髮 by phrase, not the character default 發
    assert to_traditional("一发千钧") == "一髮千鈞"
    assert to_traditional("国泰民安岁岁安") == "國泰民安歲歲安"


@pytest.mark.parametrize("simplified", ["余馀", "发發"])
def test_to_traditional_keeps_different_characters_different(simplified):
    assert repeat_pattern(to_traditional(simplified)) == repeat_pattern(simplified)


@pytest.mark.parametrize("text, expected", [
    ("風調雨順年年好", True),
    ("簷", True),  # a variant form counts: simplified script writes it 檐
    ("春風，得意", True),
    ("风调雨顺年年好", False),
    ("春风，得意", False),
    ("乾坤", False),  # 乾 is also simplified script (乾坤); only 乾淨 -> 干净 changes
])
def test_is_traditional(text, expected):
    assert is_traditional(text) is expected


@pytest.mark.parametrize("text, script, expected", [
    ("風調雨順年年好", "auto", "traditional"),
    ("风调雨顺年年好", "auto", "simplified"),
    ("風調雨順年年好", "simplified", "simplified"),
    ("风调雨顺年年好", "traditional", "traditional"),
    ("风调雨顺年年好", "simplified", "simplified"),
    ("風調雨順年年好", "traditional", "traditional"),
])
def test_answer_script(text, script, expected):
    assert answer_script(text, script) == expected


@pytest.mark.parametrize("bad", ["kanji", "Traditional", "", None])
def test_answer_script_refuses_other_values(bad):
    with pytest.raises(ValueError, match="script must be one of auto, simplified, traditional"):
        answer_script("风调雨顺", bad)
