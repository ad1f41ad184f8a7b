"""The couplet as it hangs, as an SVG picture: the 上联 on the right, the 下联 on the left, each read top to
bottom on red paper, and the 横批 above them, read right to left (its first character at the right end).

static/hanging.js builds the same markup in the browser for the web page and its SVG/PNG downloads;
tests/test_browser.py checks that the two give the same string for the same couplet, so a change here is
a change there (same constants, same element order, same attribute formatting). Every coordinate is an
integer so that Python and JavaScript print numbers the same way.

Punctuation is left out of the picture: couplets on a door carry none. Where a line had a mark, its column
leaves half a cell of space, so the clauses still read apart; the API puts the 下联's marks where the
上联's are, so the two columns stay level.
"""

from __future__ import annotations

# --- layout, in SVG pixels --------------------------------------------------------------------------
CELL = 96  # the square cell of one character
FONT_SIZE = 72  # characters are drawn centred in their cell
PAD = 20  # red paper between the characters and the paper's edge
CLAUSE_GAP = 48  # space left in a column where a punctuation mark was
COLUMN_GAP = 160  # between the 下联 and the 上联 strips: the door
BANNER_GAP = 24  # between the 横批 and the strips below it
MARGIN = 32  # wall around the whole picture
BORDER_INSET = 8  # the gold line inside each sheet of paper
BORDER_WIDTH = 3
STRIP_WIDTH = CELL + 2 * PAD

# --- colours and fonts ------------------------------------------------------------------------------
WALL = "#f7f1e3"
PAPER = "#c8161d"  # 中国红
INK = "#1a1a1a"  # black ink reads best on red; the gold is kept for the border line
GOLD = "#d9a520"
FONT_FAMILY = ("'Noto Serif CJK SC', 'Source Han Serif SC', 'Noto Sans CJK SC', 'WenQuanYi Zen Hei', "
               "'WenQuanYi Micro Hei', serif")

# Not drawn: the couplet marks (full-width and ASCII; each leaves a CLAUSE_GAP) and spaces (leave nothing).
MARKS = frozenset("，。？！；：、,.?!;:")
DROPPED = MARKS | frozenset(" \u3000")


def _escape(text: str) -> str:
    """Text for XML content or a double-quoted attribute. Control characters cannot appear in XML at all,
    not even escaped, so they are dropped."""
    text = "".join(ch for ch in text if ord(ch) >= 0x20 and ch not in "\ufffe\uffff")
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _drawn(ch: str) -> bool:
    return ch not in DROPPED and ord(ch) >= 0x20


def _column(line: str) -> tuple[list[tuple[str, int]], int]:
    """[(character, y of its cell from the paper's top)] and the paper's height for one line."""
    cells, y, after_mark = [], PAD, False
    for ch in line:
        if ch in MARKS:
            after_mark = bool(cells)  # a gap before the next character, none at the top or the bottom
        if not _drawn(ch):
            continue
        if after_mark:
            y += CLAUSE_GAP
            after_mark = False
        cells.append((ch, y))
        y += CELL
    return cells, y + PAD


def couplet_svg(upper: str, lower: str, hengpi: str | None = None) -> str:
    """The SVG markup of the couplet as it hangs (see the module docstring); no 横批 when `hengpi` is None
    or has nothing to draw."""
    # 1) sizes: two strips of equal height side by side, the banner centred above them
    upper_cells, upper_h = _column(upper)
    lower_cells, lower_h = _column(lower)
    column_h = max(upper_h, lower_h)
    banner = [ch for ch in (hengpi or "") if _drawn(ch)]
    banner_w, banner_h = len(banner) * CELL + 2 * PAD, CELL + 2 * PAD
    pair_w = 2 * STRIP_WIDTH + COLUMN_GAP
    inner_w = max(pair_w, banner_w if banner else 0)
    top = MARGIN + (banner_h + BANNER_GAP if banner else 0)
    width, height = inner_w + 2 * MARGIN, top + column_h + MARGIN
    pair_x = MARGIN + (inner_w - pair_w) // 2

    # 2) markup: the wall, then the 横批, the 上联 and the 下联 (reading order)
    title = f"上联 {upper} · 下联 {lower}" + (f" · 横批 {hengpi}" if banner else "")
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="{FONT_FAMILY}">',
        f"<title>{_escape(title)}</title>",
        f'<rect class="wall" width="{width}" height="{height}" fill="{WALL}"/>',
    ]
    if banner:
        x, y = MARGIN + (inner_w - banner_w) // 2, MARGIN
        # right to left: the first character's cell is the rightmost
        cells = [(ch, x + banner_w - PAD - (i + 1) * CELL, y + PAD) for i, ch in enumerate(banner)]
        out += _sheet("hengpi", x, y, banner_w, banner_h, cells)
    for name, x, column in (("upper", pair_x + STRIP_WIDTH + COLUMN_GAP, upper_cells), ("lower", pair_x, lower_cells)):
        out += _sheet(name, x, top, STRIP_WIDTH, column_h, [(ch, x + PAD, top + cy) for ch, cy in column])
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _sheet(name: str, x: int, y: int, w: int, h: int, cells: list[tuple[str, int, int]]) -> list[str]:
    """One sheet of red paper with its gold line and one <text> per character; `cells` holds each
    character with the top-left corner of its cell."""
    inset = BORDER_INSET
    lines = [
        f'<g class="{name}" font-size="{FONT_SIZE}" fill="{INK}" text-anchor="middle" dominant-baseline="central">',
        f'<rect x="{x}" y="{y}" width="{w}" height="{h}" fill="{PAPER}"/>',
        f'<rect x="{x + inset}" y="{y + inset}" width="{w - 2 * inset}" height="{h - 2 * inset}" '
        f'fill="none" stroke="{GOLD}" stroke-width="{BORDER_WIDTH}"/>',
    ]
    lines += [f'<text x="{cx + CELL // 2}" y="{cy + CELL // 2}">{_escape(ch)}</text>' for ch, cx, cy in cells]
    lines.append("</g>")
    return lines
