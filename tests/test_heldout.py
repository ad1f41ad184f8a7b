"""heldout.py: the key of a held-out line is the README's, and the list loads or fails loudly."""

import hashlib

import opencc
import pytest

from duilian.heldout import HeldoutError, file_sha256, heldout_key, load_heldout


def readme_key(line: str) -> str:
    """The README's own code (shared/data/heldout/README.md), copied as it stands."""
    cc = opencc.OpenCC("t2s")
    s = cc.convert(line)
    han = "".join(ch for ch in s if "\u3400" <= ch <= "\u9fff" or "\U00020000" <= ch <= "\U0003134f"
                  or "\uf900" <= ch <= "\ufaff")
    return hashlib.sha256(han.encode("utf-8")).hexdigest()


@pytest.mark.parametrize("line", [
    "兩岸曉煙楊柳綠",
    "兩鬢風霜，途次早行之客",
    "两 岸 晓 烟 杨 柳 绿",
    "雨打簷前",  # a regional variant plain t2s keeps: the key must keep it too
    "乾坤\u4dc0卦",  # U+4DC0, a hexagram: inside the README's first range, though not Han
    "龍\U00031350門",  # U+31350, extension H: outside the README's range, dropped
    "豈\uf900樂",  # a compatibility ideograph, kept
    "abc，。",
])
def test_key_is_the_readmes(line):
    assert heldout_key(line) == readme_key(line)


def test_key_ignores_script_punctuation_and_spaces():
    assert heldout_key("兩岸曉煙楊柳綠，") == heldout_key("两 岸 晓 烟 杨 柳 绿")
    assert heldout_key("两岸晓烟杨柳绿") == hashlib.sha256("两岸晓烟杨柳绿".encode()).hexdigest()
    assert heldout_key("两岸晓烟杨柳绿") != heldout_key("两岸晓烟杨柳红")


def test_key_keeps_the_readme_range_not_duilian_han_blocks():
    """U+31350 is Han to duilian.text but not to the README: a key with it would never match the list."""
    assert heldout_key("龍\U00031350門") == heldout_key("龍門")
    assert heldout_key("乾坤\u4dc0卦") != heldout_key("乾坤卦")


def test_load_heldout(tmp_path):
    a, b = heldout_key("人間清暑殿"), heldout_key("天上廣寒宮")
    path = tmp_path / "lines.sha256"
    path.write_text(f"{a}\n\n{b}\n{a}\n", encoding="utf-8")
    assert load_heldout(path) == {a, b}
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("bad", ["ABCDEF" + "0" * 58, "0" * 63, "0" * 64 + "\t人間"])
def test_load_heldout_refuses_what_is_not_a_key(tmp_path, bad):
    path = tmp_path / "lines.sha256"
    path.write_text(heldout_key("人間") + "\n" + bad + "\n", encoding="utf-8")
    with pytest.raises(HeldoutError, match="line 2"):
        load_heldout(path)
