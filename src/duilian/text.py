"""Character classes and normalisation shared by the corpus reader, the decoder and the server.

A couplet is a string of Han characters and a few full-width punctuation marks. Everything that
reads user or corpus text goes through `normalize` first, so that "丹 枫, 江冷" and "丹枫，江冷" are
the same line everywhere.
"""

from __future__ import annotations

import unicodedata

MAX_CHARS = 32
"""Longest line duilian accepts or writes: the longest line in the public corpus."""

# Full-width marks a couplet may carry. The public corpus uses ，？：！； (plus 。、 elsewhere).
PUNCTUATION = frozenset("，。？！；：、")

# ASCII (and a few common half-width look-alikes) to the full-width mark used in couplets.
_TO_FULL_WIDTH = {
    ",": "，", ".": "。", "?": "？", "!": "！", ";": "；", ":": "：",
    "､": "、", "｡": "。",
}
_TRANSLATE = str.maketrans(_TO_FULL_WIDTH)


def normalize(text: str) -> str:
    """Drop all white space and map ASCII punctuation to full-width.

    NFC first so that composed and decomposed forms of the same character compare equal.
    """
    text = unicodedata.normalize("NFC", text)
    text = "".join(ch for ch in text if not ch.isspace())
    return text.translate(_TRANSLATE)


HAN_BLOCKS = (
    (0x3400, 0x4DBF),  # extension A
    (0x4E00, 0x9FFF),  # the basic block
    (0xF900, 0xFAFF),  # compatibility ideographs
    (0x20000, 0x2A6DF),  # extension B
    (0x2A700, 0x2EE5F),  # extensions C, D, E, F, I (contiguous)
    (0x30000, 0x323AF),  # extensions G, H
)
"""Every block of CJK unified ideographs. The extensions matter even for common input: OpenCC simplifies some
basic-block characters to them (僤 -> U+2B8B8, 暐 -> U+2C029)."""


def is_han(ch: str) -> bool:
    """True for a CJK unified ideograph (any block of HAN_BLOCKS)."""
    cp = ord(ch)
    return 0x4E00 <= cp <= 0x9FFF or any(lo <= cp <= hi for lo, hi in HAN_BLOCKS)  # the common case first


def is_punct(ch: str) -> bool:
    return ch in PUNCTUATION


def punctuation_positions(line: str) -> dict[int, str]:
    """{position: mark} for every punctuation mark in `line`."""
    return {i: ch for i, ch in enumerate(line) if ch in PUNCTUATION}


def clauses(line: str) -> list[tuple[int, int]]:
    """Half-open [start, end) spans of the clauses of `line`, split at punctuation."""
    spans, start = [], 0
    for i, ch in enumerate(line):
        if ch in PUNCTUATION:
            if i > start:
                spans.append((start, i))
            start = i + 1
    if start < len(line):
        spans.append((start, len(line)))
    return spans


class CoupletInputError(ValueError):
    """A 上联 (or 藏头 pair) that duilian will not write a couplet for; the message says why."""


def clean_upper(text: str, max_chars: int) -> str:
    """Normalise a user's 上联 and check it, raising CoupletInputError with a reason a person can act on.

    Allowed: Han characters and the full-width marks in PUNCTUATION (ASCII marks are mapped first).
    """
    if not isinstance(text, str):
        raise CoupletInputError(f"the 上联 must be a string, not {type(text).__name__}")
    control = [ch for ch in text if unicodedata.category(ch) in ("Cc", "Cf") and not ch.isspace()]
    if control:
        raise CoupletInputError(f"the 上联 contains control characters: {', '.join(repr(c) for c in control[:5])}")
    line = normalize(text)
    if not line:
        raise CoupletInputError("the 上联 is empty")
    if not any(is_han(ch) for ch in line):
        raise CoupletInputError("the 上联 has no Chinese characters")
    other = [ch for ch in line if not (is_han(ch) or is_punct(ch))]
    if other:
        shown = "".join(dict.fromkeys(other))[:20]
        raise CoupletInputError(f"the 上联 may hold only Chinese characters and ，。？！；：、; found: {shown!r}")
    if line[0] in PUNCTUATION:
        raise CoupletInputError("the 上联 may not start with punctuation")
    if any(a in PUNCTUATION and b in PUNCTUATION for a, b in zip(line, line[1:])):
        raise CoupletInputError("the 上联 has two punctuation marks in a row")
    if len(line) > max_chars:
        raise CoupletInputError(f"the 上联 is {len(line)} characters long; the limit is {max_chars}")
    return line
