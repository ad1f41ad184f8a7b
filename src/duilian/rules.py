"""What makes a couplet: the form rules and tones, as pure functions of the two lines.

lower_spec turns these rules into the decoder's input for a 上联 (a decode.LineSpec, whose rules decode.py applies
as masks); the evaluator and the server report them (check_pair).
Tones are modern Mandarin tones from pypinyin: tones 1 and 2 are level (平), 3 and 4 oblique (仄).
A neutral-tone reading falls back to the character's first toned reading; a character with no toned
reading at all has no tone class (None) and passes every tone rule.
"""

from __future__ import annotations

import unicodedata
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Collection, Iterable, Mapping

from .text import PUNCTUATION, clauses, is_han

if TYPE_CHECKING:
    from .decode import LineSpec
    from .tokenizer import Tokenizer


def _pinyin_dict() -> dict[int, str]:
    """pypinyin's single-character table (code point -> "zǐ,zi"), most common reading first, read from its
    JSON file. Importing any pypinyin module runs the package's __init__, which loads its phrase dictionary
    (0.3-0.5 s of the first command's start), and single characters never use that."""
    import importlib.util
    import json

    spec = importlib.util.find_spec("pypinyin")  # finds the package without running it
    path = Path(spec.submodule_search_locations[0]) / "pinyin_dict.json" if spec else None
    if path is None or not path.is_file():  # a pypinyin laid out otherwise: the slow way
        from pypinyin.pinyin_dict import pinyin_dict

        return pinyin_dict
    return {int(k): v for k, v in json.loads(path.read_text(encoding="utf-8")).items()}


pinyin_dict = _pinyin_dict()

LEVEL, OBLIQUE = "平", "仄"
_TONE_MARKS = {"\u0304": LEVEL, "\u0301": LEVEL, "\u030c": OBLIQUE, "\u0300": OBLIQUE}  # ā á ǎ à (combining)


@lru_cache(maxsize=None)
def tone_of(ch: str) -> str | None:
    """平, 仄, or None (not a Han character, or no known tone). Uses the most common reading; where that
    is the neutral tone (子 zi, 着 zhe), the first reading that has a tone (子 zǐ, 着 zhāo), since a
    couplet's tones are those of the character's full readings."""
    if not is_han(ch):
        return None
    for reading in pinyin_dict.get(ord(ch), "").split(","):
        for mark in unicodedata.normalize("NFD", reading):  # the tone is a combining mark over a vowel (or n, m)
            if mark in _TONE_MARKS:
                return _TONE_MARKS[mark]
    return None


def last_han(line: str) -> str | None:
    for ch in reversed(line):
        if is_han(ch):
            return ch
    return None


def repeat_pattern(line: str) -> list[int]:
    """For each position, the index of the first position holding the same character.

    "花开花落" -> [0, 1, 0, 3]. Two lines mirror each other's 重字 exactly when their patterns match
    (punctuation positions included, since punctuation is copied mark for mark).
    """
    first: dict[str, int] = {}
    return [first.setdefault(ch, i) for i, ch in enumerate(line)]


def rhythm_positions(line: str) -> list[int]:
    """The positions whose tones should oppose: the 2nd, 4th and 6th character of each clause and each
    clause's last character (0-based indices into `line`)."""
    positions: set[int] = set()
    for start, end in clauses(line):
        positions.update(i for i in (start + 1, start + 3, start + 5) if i < end)
        positions.add(end - 1)
    return sorted(positions)


def rhythm_opposition(upper: str, lower: str) -> float | None:
    """Fraction of rhythm positions (where both tones are known) whose tones oppose; None if none count."""
    pairs = [
        (tone_of(upper[i]), tone_of(lower[i]))
        for i in rhythm_positions(upper)
        if i < len(lower)
    ]
    known = [(a, b) for a, b in pairs if a and b]
    if not known:
        return None
    return sum(a != b for a, b in known) / len(known)


@dataclass(frozen=True)
class FormChecks:
    """The form of one 下联 against its 上联. Hard rules are booleans; `ends_level` is None when the
    上联 does not end oblique (the rule does not apply)."""

    same_length: bool
    punctuation_aligned: bool
    repeats_mirrored: bool
    no_copy: bool
    ends_level: bool | None
    rhythm_opposition: float | None
    final_tone: str | None

    @property
    def valid(self) -> bool:
        return (
            self.same_length
            and self.punctuation_aligned
            and self.repeats_mirrored
            and self.no_copy
            and self.ends_level is not False
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "valid": self.valid}


def check_pair(upper: str, lower: str, allow_upper_chars: bool = False,
               forms: Callable[[str], Collection[str]] | None = None) -> FormChecks:
    """Check `lower` against `upper` (both already normalised).

    no_copy: no Han character of the 上联 at the same position in the 下联, and (unless
    `allow_upper_chars`) none anywhere in the 下联. Punctuation is not a copy: it must match.
    forms: a character's forms in every script (script.char_forms), for lines in two scripts: a 下联
    character copies a 上联 character when their forms meet (云 copies 雲). None: characters as they are.
    """
    forms = forms or (lambda ch: (ch,))
    same_length = len(upper) == len(lower)
    punctuation_aligned = same_length and all(
        (u in PUNCTUATION or l in PUNCTUATION) <= (u == l) for u, l in zip(upper, lower)
    )
    repeats_mirrored = same_length and repeat_pattern(upper) == repeat_pattern(lower)
    upper_forms = {form for ch in upper if is_han(ch) for form in forms(ch)}
    no_copy = not any(is_han(l) and not set(forms(l)).isdisjoint(forms(u)) for u, l in zip(upper, lower))
    if not allow_upper_chars:
        no_copy = no_copy and not any(is_han(ch) and not upper_forms.isdisjoint(forms(ch)) for ch in lower)
    u_last, l_last = last_han(upper), last_han(lower)
    ends_level = None
    if u_last and tone_of(u_last) == OBLIQUE:
        ends_level = tone_of(l_last) == LEVEL if l_last else False
    return FormChecks(
        same_length=same_length,
        punctuation_aligned=punctuation_aligned,
        repeats_mirrored=repeats_mirrored,
        no_copy=no_copy,
        ends_level=ends_level,
        rhythm_opposition=rhythm_opposition(upper, lower) if same_length else None,
        final_tone=tone_of(l_last) if l_last else None,
    )


# --- the rules as the decoder's masks -----------------------------------------------------------------------------
def decoder_tones() -> dict[str | None, int]:
    """Tone classes as tone_of gives them (None, 平, 仄) -> the decoder's (decode.TONE_*)."""
    from . import decode  # the decoder (and torch) only for those who decode

    return {None: decode.TONE_NONE, LEVEL: decode.TONE_LEVEL, OBLIQUE: decode.TONE_OBLIQUE}


def lower_spec(line, tokenizer: "Tokenizer", same_ids: Mapping[str, Iterable[int]], *,
               allow_upper_chars: bool = False, require_level_ending: bool = True, first: str | None = None,
               at: int = 0, seed: int | None = None) -> "LineSpec":
    """The rules for the 下联 of a 上联, position by position, as the decoder's LineSpec (its masks).

    line: the 上联 as the user sent it (`text`), in the answer's script (`shown`) and as the model reads it
    (`model_text`): an api.Line. The prompt is what the model reads (unknown characters as [UNK]). 重字 and no-copy
    come from `text`: simplifying merges characters (雲 and 云 are both 云), and a 下联 that repeated where the
    simplified reading repeats would break the rules for the line that was sent. Every token that is a 上联
    character in either script is banned (script.char_forms; `same_ids`: a character's forms -> the tokens that are
    it), unless allow_upper_chars. Tones come from `shown`; the final rule (a 平 ending) applies when either
    script's last character is 仄, and require_level_ending. `first` forces that character at position `at` (嵌字).
    """
    from . import decode
    from .script import char_forms

    text, shown = line.text, line.shown
    ids = tokenizer.encode_chars(line.model_text, unknown_as_unk=True)
    n = len(text)
    pattern = repeat_pattern(text)
    punct = [ch in PUNCTUATION for ch in text]
    forced = [ids[i] if punct[i] else -1 for i in range(n)]
    if first is not None:
        forced[at] = tokenizer.encode_chars(first, unknown_as_unk=True)[0]
    last = max(i for i, ch in enumerate(text) if is_han(ch))
    ends_oblique = OBLIQUE in (tone_of(text[last]), tone_of(shown[last]))
    rhythm = set(rhythm_positions(shown))
    upper_ids = {ids[i] for i in range(n) if not punct[i]}
    upper_ids.update(t for ch in text if is_han(ch) for form in char_forms(ch) for t in same_ids.get(form, ()))
    tone_code = decoder_tones()
    return decode.LineSpec(
        prompt=[tokenizer.cls_id, *ids, tokenizer.separator_id],  # tokenizer.encode_prompt(upper)
        length=n,
        forced=forced,
        repeat_of=[i if punct[i] else pattern[i] for i in range(n)],
        distinct=True,
        banned_at=[-1 if punct[i] else ids[i] for i in range(n)],
        banned=[] if allow_upper_chars else sorted(upper_ids),
        final_pos=pattern[last],  # a repeated last character gets its tone where it first appears
        final_rule=decode.END_LEVEL if require_level_ending and ends_oblique else decode.END_ANY,
        rhythm=[tone_code[tone_of(ch)] if i in rhythm else decode.TONE_NONE for i, ch in enumerate(shown)],
        seed=seed,
    )
