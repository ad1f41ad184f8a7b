import pytest

from duilian.text import CoupletInputError, clauses, clean_upper, is_han, normalize, punctuation_positions


def test_normalize_drops_spaces_and_maps_ascii_punctuation():
    assert normalize(" 丹 枫 江 冷 , 人 初 去 ") == "丹枫江冷，人初去"
    assert normalize("春来?\t花开!\n") == "春来？花开！"


def test_is_han():
    assert is_han("丹") and is_han("㐀")
    assert not any(is_han(c) for c in "a1，😀-")


def test_punctuation_and_clauses():
    line = "花开花落，春去春来"
    assert punctuation_positions(line) == {4: "，"}
    assert clauses(line) == [(0, 4), (5, 9)]


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("hello", "no Chinese"),
        ("丹枫<script>alert(1)</script>", "only Chinese"),
        ("丹枫😀", "only Chinese"),
        ("丹\x00枫", "control"),
        ("，丹枫", "start with punctuation"),
        ("丹，，枫", "two punctuation"),
        ("丹" * 33, "limit is 32"),
    ],
)
def test_clean_upper_rejects_with_a_reason(text, reason):
    with pytest.raises(CoupletInputError, match=reason):
        clean_upper(text, max_chars=32)


def test_clean_upper_normalises():
    assert clean_upper(" 丹枫江冷, 人初去 ", max_chars=32) == "丹枫江冷，人初去"
