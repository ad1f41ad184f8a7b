"""The character-level tokenizer: one token per character, from a vocab.txt (one token per line).

Two vocabularies are in use. The seed's: the 21,128-token Chinese BERT vocabulary (`default_tokenizer`),
of which a couplet corpus uses about 5,600 characters. And a corpus's own (`Tokenizer.for_corpus`, what
`duilian prepare` writes by default): the special tokens, '-', the couplet marks and the characters the
corpus holds, most frequent first. Either way the model directory's vocab.txt is the one source of truth:
`transformers.BertTokenizer` reads it and gives the same ids for Han characters and punctuation, so the
seed's snippet works on every export. We keep our own small encoder because duilian's sequences have a
fixed shape that must never drift with a transformers release:

    prompt:        [CLS] 上 联 -            (never a second [CLS], never a trailing [SEP])
    training line: [CLS] 上 联 - 下 联 [SEP]

Two more kinds of line, each told apart by a marker token right after [CLS], so the seed's lines keep
their meaning exactly:

    backward:      [CLS] [REV] 下 联 - 上 联 [SEP]        the 上联 that a 下联 answers: P(上联 | 下联)
    keywords:      [CLS] 春 [KW] 平 安 [KW] 上 联 - 下 联 [SEP]   a couplet about the words before the last [KW]

A corpus vocabulary holds [REV] and [KW] themselves; BERT's vocabulary, which must stay the seed's, lends
two of its unused slots ([unused1], [unused2]).

(transformers 5's BertTokenizer turns the seed's prompt string "[CLS]丹 枫 … -" into
"[CLS] [CLS] 丹 … - [SEP]"; see `v5_prompt_ids`.)
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

VOCAB_PATH = Path(__file__).with_name("vocab.txt")

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SEPARATOR = "-"  # between 上联 and 下联, as in the seed's UER corpus lines
SPECIALS = (PAD, UNK, CLS, SEP, MASK)
"""First in a corpus vocabulary, in BERT's order; BertTokenizer needs all five to be present."""
REVERSE, KEYWORD = "[REV]", "[KW]"
MARKERS = {REVERSE: "[unused1]", KEYWORD: "[unused2]"}
"""The line-kind markers, and the BERT-vocabulary slot each takes where the vocabulary lacks it."""
MARKER_CHARS = {REVERSE: "\x03", KEYWORD: "\x04"}
"""How a marker is written inside a text line handed to the dataset writer (one character, one token)."""
_MARKER_OF_CHAR = {ch: m for m, ch in MARKER_CHARS.items()}


class UnknownCharacterError(ValueError):
    """A character that is not in the vocabulary."""

    def __init__(self, chars: list[str]):
        self.chars = chars
        super().__init__(f"characters not in the vocabulary: {''.join(dict.fromkeys(chars))}")


@dataclass(frozen=True)
class Tokenizer:
    tokens: tuple[str, ...]

    @classmethod
    def from_file(cls, path: str | Path = VOCAB_PATH) -> "Tokenizer":
        with open(path, encoding="utf-8") as f:
            tok = cls(tuple(line.rstrip("\n") for line in f))
        missing = [t for t in (*SPECIALS, SEPARATOR) if t not in tok.index]
        if missing:
            raise ValueError(f"{path} lacks the tokens {' '.join(missing)}: not a duilian / BERT vocabulary")
        return tok

    @classmethod
    def from_dir(cls, directory: str | Path) -> "Tokenizer":
        """The vocab.txt of a model or dataset directory; the BERT vocabulary where there is none (datasets
        written before corpus vocabularies, or a bare transformers save_pretrained of a BERT-vocabulary model)."""
        path = Path(directory) / "vocab.txt"
        return cls.from_file(path) if path.exists() else default_tokenizer()

    @classmethod
    def for_corpus(cls, counts: Counter, min_count: int = 1, marks: str = "") -> "Tokenizer":
        """A corpus's own vocabulary: SPECIALS, '-', `marks` (punctuation the decoder must be able to mirror,
        present in the corpus or not), then every character seen at least `min_count` times, most
        frequent first (ties by code point, so the same counts always give the same file)."""
        fixed = [*SPECIALS, SEPARATOR, *sorted(set(marks)), *MARKERS]
        chars = sorted((ch for ch, n in counts.items() if n >= min_count and ch not in fixed),
                       key=lambda ch: (-counts[ch], ch))
        return cls(tuple(fixed + chars))

    def save(self, path: str | Path) -> None:
        Path(path).write_text("".join(t + "\n" for t in self.tokens), encoding="utf-8")

    # --- the vocabulary -------------------------------------------------------------------------
    @cached_property
    def index(self) -> dict[str, int]:
        # Built once per tokenizer: encoding the 697k-pair corpus calls this for every pair.
        return {tok: i for i, tok in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    def id(self, token: str) -> int:
        return self.index[token]

    @property
    def pad_id(self) -> int:
        return self.index[PAD]

    @property
    def unk_id(self) -> int:
        return self.index[UNK]

    @property
    def cls_id(self) -> int:
        return self.index[CLS]

    @property
    def sep_id(self) -> int:
        return self.index[SEP]

    @property
    def separator_id(self) -> int:
        return self.index[SEPARATOR]

    def marker_id(self, marker: str) -> int | None:
        """The id of [REV] or [KW]: the token itself, else its BERT slot; None when the vocabulary has neither
        (a vocabulary written before markers: such a model was never trained on those lines)."""
        index = self.index
        return index.get(marker, index.get(MARKERS[marker]))

    @property
    def reverse_id(self) -> int | None:
        return self.marker_id(REVERSE)

    @property
    def keyword_id(self) -> int | None:
        return self.marker_id(KEYWORD)

    # --- encoding -------------------------------------------------------------------------------
    def encode_chars(self, text: str, unknown_as_unk: bool = False) -> list[int]:
        """One id per character. A character not in the vocabulary raises UnknownCharacterError naming every
        such character, or with unknown_as_unk becomes [UNK]."""
        index = self.index
        try:
            return list(map(index.__getitem__, text))  # the common case, mapped in C
        except KeyError:
            if unknown_as_unk:
                return [index.get(ch, self.unk_id) for ch in text]
            raise UnknownCharacterError([ch for ch in text if ch not in index]) from None

    def unknown(self, text: str) -> list[str]:
        """The distinct characters of `text` that the vocabulary lacks, in order."""
        return list(dict.fromkeys(ch for ch in text if ch not in self.index))

    def encode_prompt(self, upper: str) -> list[int]:
        """[CLS] + 上联 + '-': what the model continues with the 下联."""
        return [self.cls_id, *self.encode_chars(upper), self.separator_id]

    def encode_pair(self, upper: str, lower: str) -> list[int]:
        """[CLS] + 上联 + '-' + 下联 + [SEP]: one training line. `upper` may hold MARKER_CHARS (a backward or
        keyword line, see the module docstring)."""
        return [self.cls_id, *self.encode_head(upper), self.separator_id, *self.encode_chars(lower), self.sep_id]

    def encode_head(self, text: str) -> list[int]:
        """The ids of what stands before '-': characters, with each of MARKER_CHARS read as its marker."""
        if not any(ch in _MARKER_OF_CHAR for ch in text):
            return self.encode_chars(text)
        ids = []
        for part, ch in re.findall(f"([^{''.join(_MARKER_OF_CHAR)}]*)([{''.join(_MARKER_OF_CHAR)}]?)", text):
            ids += self.encode_chars(part)
            if ch:
                marker = self.marker_id(_MARKER_OF_CHAR[ch])
                if marker is None:
                    raise ValueError(f"this vocabulary has no {_MARKER_OF_CHAR[ch]} marker")
                ids.append(marker)
        return ids

    def v5_prompt_ids(self, upper: str) -> list[int]:
        """What transformers 5's BertTokenizer makes of the seed's prompt "[CLS]上 联 -"."""
        return [self.cls_id, *self.encode_prompt(upper), self.sep_id]

    def decode(self, ids) -> str:
        return "".join(self.tokens[int(i)] for i in ids)


@lru_cache(maxsize=1)
def default_tokenizer() -> Tokenizer:
    return Tokenizer.from_file(VOCAB_PATH)
