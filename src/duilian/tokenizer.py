"""The character-level tokenizer: the 21,128-token Chinese BERT vocabulary, one token per character.

`transformers.BertTokenizer` reads the same vocab.txt and gives the same ids for Han characters and
punctuation. We keep our own small encoder because duilian's sequences have a fixed shape that must
never drift with a transformers release:

    prompt:        [CLS] 上 联 -            (never a second [CLS], never a trailing [SEP])
    training line: [CLS] 上 联 - 下 联 [SEP]

(transformers 5's BertTokenizer turns the seed's prompt string "[CLS]丹 枫 … -" into
"[CLS] [CLS] 丹 … - [SEP]"; see `v5_prompt_ids`.)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

VOCAB_PATH = Path(__file__).with_name("vocab.txt")

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SEPARATOR = "-"  # between 上联 and 下联, as in the seed's UER corpus lines


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
            return cls(tuple(line.rstrip("\n") for line in f))

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

    # --- encoding -------------------------------------------------------------------------------
    def encode_chars(self, text: str) -> list[int]:
        """One id per character; raises UnknownCharacterError naming every character not in the vocab."""
        index = self.index
        try:
            return list(map(index.__getitem__, text))  # the common case, mapped in C
        except KeyError:
            raise UnknownCharacterError([ch for ch in text if ch not in index]) from None

    def encode_prompt(self, upper: str) -> list[int]:
        """[CLS] + 上联 + '-': what the model continues with the 下联."""
        return [self.cls_id, *self.encode_chars(upper), self.separator_id]

    def encode_pair(self, upper: str, lower: str) -> list[int]:
        """[CLS] + 上联 + '-' + 下联 + [SEP]: one training line."""
        return [*self.encode_prompt(upper), *self.encode_chars(lower), self.sep_id]

    def v5_prompt_ids(self, upper: str) -> list[int]:
        """What transformers 5's BertTokenizer makes of the seed's prompt "[CLS]上 联 -"."""
        return [self.cls_id, *self.encode_prompt(upper), self.sep_id]

    def decode(self, ids) -> str:
        return "".join(self.tokens[int(i)] for i in ids)


@lru_cache(maxsize=1)
def default_tokenizer() -> Tokenizer:
    return Tokenizer.from_file(VOCAB_PATH)
