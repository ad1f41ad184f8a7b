"""Traditional and simplified script: the model reads simplified, the user gets their own script back.

The training corpus is simplified Chinese, so a model has never seen 風, 調 or 盡: a traditional 上联 is read
through OpenCC (the maintained converter, not a hand-written table) before tokenizing, and the 下联 is
turned back into traditional when the user wrote traditional (`script="auto"`) or asked for it.

    to_simplified("風調雨順年年好")  -> "风调雨顺年年好"   (also variant forms: 簷 -> 檐, 粧 -> 妆)
    to_traditional("国泰民安岁岁安") -> "國泰民安歲歲安"

Conversions here always keep the length, character for character: the form rules (length, punctuation,
重字) are checked position by position, so a phrase rule that merged or split characters would break them.
Where OpenCC's phrase-aware output has another length, or (for the answer) changes which positions repeat,
each character is converted on its own instead.
"""

from __future__ import annotations

from functools import lru_cache

from .rules import repeat_pattern

SCRIPTS = ("auto", "simplified", "traditional")
"""The script of the answer: auto follows the 上联, or always simplified, or always traditional."""

# OpenCC configs, applied in order. tw2s and hk2s each do traditional -> simplified and also undo their
# region's variant forms (簷 -> 檐 via Taiwan's, 粧 -> 妆 via Hong Kong's), which plain t2s leaves alone.
_TO_SIMPLIFIED = ("hk2s", "tw2s")
_TO_TRADITIONAL = "s2t"


@lru_cache(maxsize=None)
def _converter(config: str):
    import opencc  # imported on first use: a few tens of milliseconds that most commands never need

    return opencc.OpenCC(config)


def _convert(text: str, configs: tuple[str, ...]) -> str:
    out = text
    for config in configs:
        out = _converter(config).convert(out)
    if len(out) != len(text):  # a phrase rule changed the length: convert character by character
        out = "".join(_convert_char(ch, configs) for ch in text)
    return out


@lru_cache(maxsize=65536)
def _convert_char(ch: str, configs: tuple[str, ...]) -> str:
    out = ch
    for config in configs:
        out = _converter(config).convert(out)
    return out if len(out) == 1 else ch


def to_simplified(text: str) -> str:
    """The simplified form of `text` (traditional characters and regional variants converted), same length."""
    return _convert(text, _TO_SIMPLIFIED)


def to_traditional(text: str) -> str:
    """The traditional form of `text`, same length and with the same positions repeating: 重字 stay 重字, and
    different characters stay different. Phrase context can give one simplified character two forms (头发发白:
    髮, 發), and two simplified characters can share one (余, 馀 -> 餘); where a form would break the pattern,
    each character is converted on its own, and a character that would still merge into another keeps its
    simplified form (or, if even that collides, the line stays as it is)."""
    out = _convert(text, (_TO_TRADITIONAL,))
    if repeat_pattern(out) == repeat_pattern(text):
        return out
    chars, taken = [], {}  # traditional form -> the simplified character that has it
    for ch in text:
        form = _convert_char(ch, (_TO_TRADITIONAL,))
        if taken.setdefault(form, ch) != ch:
            form = ch  # another character already took this form
        chars.append(form)
    out = "".join(chars)
    return out if repeat_pattern(out) == repeat_pattern(text) else text  # (发發: both are already 發)


def to_simplified_apart(text: str) -> str:
    """to_simplified, with the same positions repeating as in `text`. Simplifying merges characters (雲 and 云
    are both 云, 後 and 后 both 后), so a line that holds two characters of one simplified form would show a
    重字 the user never wrote; those characters stay as typed (天高雲淡人云亦云 -> 天高雲淡人云亦云, 風雲 -> 风云)."""
    out = to_simplified(text)
    typed: dict[str, set[str]] = {}  # simplified form -> the characters typed for it
    for ch, simple in zip(text, out):
        typed.setdefault(simple, set()).add(ch)
    out = "".join(ch if len(typed[simple]) > 1 else simple for ch, simple in zip(text, out))
    return out if repeat_pattern(out) == repeat_pattern(text) else text


@lru_cache(maxsize=65536)
def char_forms(ch: str) -> frozenset[str]:
    """One character in both scripts, each converted on its own: itself, its simplified and its traditional
    form (雲 -> 雲 云; 干 -> 干 幹; 乾 -> 乾 干). Two characters whose forms meet are the same character in one
    script or the other, so a 下联 that holds one in the other's place copies it (rules.check_pair's `forms`)."""
    return frozenset((ch, _convert_char(ch, _TO_SIMPLIFIED), _convert_char(ch, (_TO_TRADITIONAL,))))


def each_simplified(chars: list[str]) -> list[str]:
    """to_simplified of each single character, in one OpenCC call per config (a vocabulary's thousands of
    characters in ~0.05 s instead of ~1 s one by one). A newline between characters keeps phrase rules,
    which match runs of Han characters only, from reaching across them."""
    return _each(chars, _TO_SIMPLIFIED)


def each_traditional(chars: list[str]) -> list[str]:
    """to_traditional of each single character, as each_simplified does it."""
    return _each(chars, (_TO_TRADITIONAL,))


def _each(chars: list[str], configs: tuple[str, ...]) -> list[str]:
    out = "\n".join(chars)
    for config in configs:
        out = _converter(config).convert(out)
    parts = out.split("\n")
    if len(parts) != len(chars):  # cannot happen with OpenCC's dictionaries; stay correct if it ever does
        return [_convert_char(ch, configs) for ch in chars]
    return [p if len(p) == 1 else ch for p, ch in zip(parts, chars)]


def is_traditional(text: str) -> bool:
    """Whether `text` holds characters that simplified script writes differently."""
    return to_simplified(text) != text


def answer_script(text: str, script: str) -> str:
    """"simplified" or "traditional": the script to answer a 上联 `text` in, for script = one of SCRIPTS."""
    if script not in SCRIPTS:
        raise ValueError(f"script must be one of {', '.join(SCRIPTS)}, not {script!r}")
    if script == "auto":
        return "traditional" if is_traditional(text) else "simplified"
    return script

