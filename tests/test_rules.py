from types import SimpleNamespace

from duilian import decode
from duilian.rules import (
    LEVEL,
    OBLIQUE,
    check_pair,
    lower_spec,
    repeat_pattern,
    rhythm_opposition,
    rhythm_positions,
    tone_of,
)
from duilian.tokenizer import default_tokenizer


def test_tones_follow_modern_mandarin():
    assert tone_of("天") == LEVEL  # tiān, tone 1
    assert tone_of("来") == LEVEL  # lái, tone 2
    assert tone_of("海") == OBLIQUE  # hǎi, tone 3
    assert tone_of("去") == OBLIQUE  # qù, tone 4
    assert tone_of("，") is None and tone_of("a") is None


def test_a_neutral_reading_falls_back_to_the_first_toned_one():
    assert tone_of("子") == OBLIQUE  # zi (neutral) -> zǐ
    assert tone_of("着") == LEVEL  # zhe (neutral) -> zhāo
    assert not check_pair("丹枫江冷人初去", "黄叶声从天外子").ends_level  # 子 is no level ending


def test_repeat_pattern():
    assert repeat_pattern("花开花落") == [0, 1, 0, 3]
    assert repeat_pattern("月圆月缺") == repeat_pattern("花开花落")
    assert repeat_pattern("月圆星缺") != repeat_pattern("花开花落")


def test_rhythm_positions_are_2_4_6_and_clause_ends():
    assert rhythm_positions("丹枫江冷人初去") == [1, 3, 5, 6]
    assert rhythm_positions("花开花落，春去") == [1, 3, 6]


def test_a_good_couplet_passes_every_check():
    checks = check_pair("丹枫江冷人初去", "黄叶声从天外来")
    assert checks.valid and checks.ends_level is True and checks.final_tone == LEVEL
    assert rhythm_opposition("丹枫江冷人初去", "黄叶声从天外来") == 1.0


def test_each_violation_is_caught():
    assert not check_pair("丹枫江冷人初去", "黄叶声从天外").same_length
    assert not check_pair("花开，春去", "月圆春，来").punctuation_aligned
    assert not check_pair("花开花落", "月圆星缺").repeats_mirrored
    assert not check_pair("花开月落", "月圆月缺").repeats_mirrored  # repeats where the 上联 does not
    assert not check_pair("丹枫江冷人初去", "黄枫声从天外来").no_copy  # same position
    assert not check_pair("丹枫江冷人初去", "江叶声从天外来").no_copy  # elsewhere
    assert check_pair("丹枫江冷人初去", "江叶声从天外来", allow_upper_chars=True).no_copy
    bad_end = check_pair("丹枫江冷人初去", "黄叶声从天外到")  # 到 is oblique
    assert bad_end.ends_level is False and not bad_end.valid


def test_level_ending_rule_applies_only_after_an_oblique_upper_line():
    assert check_pair("黄叶声从天外来", "丹枫江冷人初去").ends_level is None


def test_the_tone_table_is_pypinyins_single_character_table():
    """rules reads pypinyin's JSON file itself (the package's import would load its phrase dictionary too)."""
    from pypinyin.pinyin_dict import pinyin_dict

    from duilian import rules

    assert rules.pinyin_dict == pinyin_dict and len(pinyin_dict) > 40_000


def test_the_first_command_imports_neither_transformers_nor_pypinyin(tmp_path):
    """`duilian generate` on the embedded model decodes from safetensors with gpt.GPT: transformers
    (3 s to import), pypinyin's package (its phrase dictionary) and torch._dynamo (1.9 s; a normal_ on the meta
    device imports it) stay out of the process."""
    import subprocess
    import sys

    code = ("import sys\nfrom duilian.cli import main\nrc = main(['generate', '丹枫江冷人初去', '-n', '1'])\n"
            "print(rc, sorted(m for m in ('transformers', 'pypinyin', 'torch._dynamo') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lower, result = done.stdout.strip().splitlines()
    assert len(lower.split("\t")[0]) == 7 and result == "0 []"


def test_lower_spec_is_the_rules_position_by_position():
    """The 下联's LineSpec for 花开花落，春去春来: the mark forced where the 上联 has it, 重字 copied where the 上联
    repeats, no 上联 character in place or anywhere (in either script), no ending rule (来 is 平),
    and the rhythm positions' tones."""
    tok = default_tokenizer()
    upper = "花开花落，春去春来"
    line = SimpleNamespace(text=upper, shown=upper, model_text=upper)
    same = {"花": (tok.id("花"),)}  # the forms of each character -> its tokens (api builds it for the vocabulary)
    spec = lower_spec(line, tok, same)
    ids = [tok.id(ch) for ch in upper]
    assert spec.prompt == [tok.cls_id, *ids, tok.separator_id] and spec.length == 9
    assert spec.forced == [-1, -1, -1, -1, tok.id("，"), -1, -1, -1, -1]
    assert spec.repeat_of == [0, 1, 0, 3, 4, 5, 6, 5, 8]
    assert spec.banned_at == [ids[0], ids[1], ids[2], ids[3], -1, ids[5], ids[6], ids[7], ids[8]]
    assert set(spec.banned) == {i for i, ch in zip(ids, upper) if ch != "，"}
    assert spec.final_rule == decode.END_ANY  # 来 ends 平: the 下联's ending is free
    assert spec.rhythm[1] == decode.TONE_LEVEL and spec.rhythm[0] == decode.TONE_NONE  # 开 (2nd, 平); 花 (1st)
    oblique = lower_spec(SimpleNamespace(text="丹枫江冷人初去", shown="丹枫江冷人初去", model_text="丹枫江冷人初去"),
                         tok, same, allow_upper_chars=True, first="春", at=0, seed=3)
    assert oblique.final_rule == decode.END_LEVEL and oblique.final_pos == 6 and oblique.banned == []
    assert oblique.forced[0] == tok.id("春") and oblique.seed == 3
