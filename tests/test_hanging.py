"""couplet_svg: the couplet as it hangs. Valid XML; the 上联 column right of the 下联's; one <text> per
character, top to bottom; the 横批 above, right to left; punctuation not drawn; text escaped; the picture
grows with the lines. (That the web page draws the same string: tests/test_browser.py.)"""

import xml.etree.ElementTree as ET

import pytest

from duilian.hanging import CELL, CLAUSE_GAP, couplet_svg

NS = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == NS + "svg"
    return root


def group(root: ET.Element, name: str) -> ET.Element | None:
    return root.find(f"{NS}g[@class='{name}']")


def cells(root: ET.Element, name: str) -> list[tuple[str, int, int]]:
    """(character, x, y) of each <text> of a column or the banner, in document order."""
    return [(t.text, int(t.get("x")), int(t.get("y"))) for t in group(root, name).iter(NS + "text")]


def paper(root: ET.Element, name: str) -> tuple[int, int, int, int]:
    rect = group(root, name).find(NS + "rect")
    return tuple(int(rect.get(k)) for k in ("x", "y", "width", "height"))


def test_upper_hangs_right_lower_left_one_text_per_character_top_to_bottom():
    root = parse(couplet_svg("丹枫江冷人初去", "绿柳堤新燕复来"))
    upper, lower = cells(root, "upper"), cells(root, "lower")
    assert "".join(ch for ch, _, _ in upper) == "丹枫江冷人初去"
    assert "".join(ch for ch, _, _ in lower) == "绿柳堤新燕复来"
    assert len({x for _, x, _ in upper}) == len({x for _, x, _ in lower}) == 1  # one column each
    assert upper[0][1] > lower[0][1]  # the 上联 on the right
    for column in (upper, lower):
        ys = [y for _, _, y in column]
        assert ys == sorted(ys) and all(b - a == CELL for a, b in zip(ys, ys[1:]))  # top to bottom
    assert [y for *_, y in upper] == [y for *_, y in lower]  # level with each other
    assert group(root, "hengpi") is None
    # Every character sits on its paper.
    for name, column in (("upper", upper), ("lower", lower)):
        x, y, w, h = paper(root, name)
        assert all(x < cx < x + w and y < cy < y + h for _, cx, cy in column)


def test_hengpi_hangs_above_and_reads_right_to_left():
    root = parse(couplet_svg("海阔凭鱼跃", "天高任鸟飞", "四季平安"))
    banner = cells(root, "hengpi")
    assert [ch for ch, _, _ in banner] == list("四季平安")  # in reading order in the markup ...
    xs = [x for _, x, _ in banner]
    assert xs == sorted(xs, reverse=True)  # ... and drawn from the right end
    assert len({y for _, _, y in banner}) == 1
    bx, by, bw, bh = paper(root, "hengpi")
    assert by + bh <= min(paper(root, "upper")[1], paper(root, "lower")[1])  # above the strips
    # centred over the pair of strips
    left, right = paper(root, "lower")[0], sum(paper(root, "upper")[0::2])
    assert abs((bx + bw / 2) - (left + right) / 2) <= 1
    assert "横批 四季平安" in root.find(NS + "title").text


@pytest.mark.parametrize("hengpi", [None, "", "，"])
def test_no_hengpi_no_banner(hengpi):
    root = parse(couplet_svg("海阔凭鱼跃", "天高任鸟飞", hengpi))
    assert group(root, "hengpi") is None and "横批" not in root.find(NS + "title").text


def test_punctuation_is_not_drawn_and_leaves_a_gap_between_clauses():
    root = parse(couplet_svg("花开花落，春去春来。", "月缺月圆，年增年减。"))
    upper = cells(root, "upper")
    assert "".join(ch for ch, _, _ in upper) == "花开花落春去春来"
    steps = [b[2] - a[2] for a, b in zip(upper, upper[1:])]
    assert steps == [CELL] * 3 + [CELL + CLAUSE_GAP] + [CELL] * 3  # a gap at the comma, none after the end
    assert "花开花落，春去春来。" in root.find(NS + "title").text  # the title keeps the line as written


def test_text_that_looks_like_markup_is_escaped():
    svg = couplet_svg('<script>&"', "</svg><x>", "<&>")
    root = parse(svg)  # still well-formed
    assert "<script>" not in svg and "</svg><x>" not in svg
    assert "".join(ch for ch, _, _ in cells(root, "upper")) == '<script>&"'
    assert "".join(ch for ch, _, _ in cells(root, "lower")) == "</svg><x>"
    assert "".join(ch for ch, _, _ in cells(root, "hengpi")) == "<&>"
    assert root.find(f".//{NS}script") is None
    # Control characters cannot be in XML at all: they are dropped, not drawn.
    assert "".join(ch for ch, _, _ in cells(parse(couplet_svg("春\x00\x1b风", "秋月")), "upper")) == "春风"


def test_the_picture_grows_with_the_lines():
    sizes = []
    for n in (5, 7, 11):
        root = parse(couplet_svg("春" * n, "秋" * n))
        sizes.append((int(root.get("width")), int(root.get("height"))))
        assert root.get("viewBox") == f"0 0 {sizes[-1][0]} {sizes[-1][1]}"
    assert sizes[0][0] == sizes[1][0] == sizes[2][0]  # two columns whatever the length
    assert sizes[1][1] - sizes[0][1] == 2 * CELL and sizes[2][1] - sizes[1][1] == 4 * CELL
    # A 横批 adds height; a long one widens the picture to fit.
    plain = parse(couplet_svg("春" * 5, "秋" * 5))
    banner = parse(couplet_svg("春" * 5, "秋" * 5, "四季平安"))
    assert int(banner.get("height")) > int(plain.get("height"))
    wide = parse(couplet_svg("春" * 5, "秋" * 5, "一二三四五六七八"))
    assert int(wide.get("width")) >= 8 * CELL and paper(wide, "hengpi")[0] >= 0


def test_traditional_characters_and_characters_outside_the_bmp_are_one_cell_each():
    root = parse(couplet_svg("萬象更新𠀀", "風調雨順年"))
    assert [ch for ch, _, _ in cells(root, "upper")] == ["萬", "象", "更", "新", "𠀀"]


def test_the_svg_names_a_cjk_font_stack():
    family = parse(couplet_svg("春风", "秋月")).get("font-family")
    assert "Noto Serif CJK SC" in family and "WenQuanYi Zen Hei" in family and family.endswith("serif")
