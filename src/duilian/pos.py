"""词性对仗, part-of-speech parallelism: position by position, do the two lines put words of the same kind
face to face? Noun against noun, verb against verb, number against number, 虚词 against 虚词.

    from duilian import pos
    pos.classes("春风送暖千家乐")                     # ['名', '名', '动', '动', '数', '数', '形']
    pos.parallelism("春风送暖千家乐", "喜气盈门万户欢")   # 0.71: the share of positions whose classes agree

Each line is cut into words and tagged by jieba's tagger (jieba.posseg); every character takes its word's
class. jieba's tags are folded into the classes a couplet writer opposes (CLASSES): the noun family (names,
places, times, directions) is one class, as 天 faces 地 and 春 faces 秋 whatever a tagger calls them. A
position where either side has no class (punctuation, an idiom tagged as a whole, a word jieba does not know)
does not count. Like the tone score it is a soft score: jieba tags modern prose, and a couplet's compressed
syntax fools it often enough that it cannot be a rule.

jieba takes 1-2 s to load its dictionary, so this module is imported only where the score is asked for (the
server, `--pos`, evaluation), never on the path of a plain `duilian generate`.
"""

from __future__ import annotations

from functools import lru_cache

from .text import is_han

CLASSES = {
    "名": ("n", "nr", "nrfg", "nrt", "ns", "nt", "nz", "ng", "s", "f", "t", "tg"),  # things, names, places, times
    "动": ("v", "vd", "vn", "vg", "vi", "vq"),
    "形": ("a", "ad", "an", "ag", "b", "z"),  # qualities, 区别词, 状态词
    "数": ("m", "mq", "q"),  # numbers and measure words
    "代": ("r", "rr", "rz", "rg"),
    "副": ("d", "dg"),
    "虚": ("p", "c", "u", "uj", "ul", "uz", "uv", "ud", "ug", "y", "e", "o", "k", "h"),  # function words
}
"""The classes a couplet opposes, and the jieba tags of each. Tags not listed (i, l, j: idioms and set
phrases tagged whole; x: unknown) give no class."""
_CLASS_OF = {tag: name for name, tags in CLASSES.items() for tag in tags}


@lru_cache(maxsize=1)
def _tagger():
    import jieba
    import jieba.posseg

    jieba.setLogLevel(60)  # its "Building prefix dict" chatter is not ours to print
    return jieba.posseg.cut


@lru_cache(maxsize=65536)
def classes(line: str) -> tuple[str | None, ...]:
    """Per character of `line`, the class (a key of CLASSES) of the word it is part of, or None."""
    out: list[str | None] = []
    for word, tag in _tagger()(line):
        cls = _CLASS_OF.get(tag)
        out += [cls if is_han(ch) else None for ch in word]
    return tuple(out)


def parallelism(upper: str, lower: str) -> float | None:
    """The share of positions, among those where both lines have a class, whose classes agree; None when the
    lines differ in length or no position counts."""
    if len(upper) != len(lower):
        return None
    pairs = [(a, b) for a, b in zip(classes(upper), classes(lower)) if a is not None and b is not None]
    if not pairs:
        return None
    return sum(a == b for a, b in pairs) / len(pairs)
