"""Lines no training set of this project may hold: the shared held-out list and its key.

`shared/data/heldout/lines.sha256` lists, one a line, the SHA-256 (lower-case hex) of lines kept for an
outside evaluation of classical couplets and 律诗 couplets. Every corpus added to training drops a pair whose
上联 or 下联 is listed:

    keys = load_heldout("shared/data/heldout/lines.sha256")
    heldout_key("兩岸曉煙楊柳綠") in keys

The key is the README's, to the letter: the line through OpenCC's plain `t2s` (not duilian.script's
hk2s + tw2s, which also undoes regional variants and so could give another string), then only the
characters in the README's Han ranges kept, UTF-8, SHA-256. Those ranges are not duilian.text.HAN_BLOCKS:
U+3400-U+9FFF also takes in U+4DC0-U+4DFF (the Yijing hexagrams), and U+20000-U+3134F stops short of
extension H. A key made with any other rule would silently miss listed lines, so the ranges are copied,
not reused.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path

KEY_CONFIG = "t2s"
"""The OpenCC config of the key (the README's `opencc.OpenCC("t2s")`)."""

_NOT_HAN = re.compile("[^\u3400-\u9fff\U00020000-\U0003134f\uf900-\ufaff]")
"""Everything outside the README's three ranges: U+3400-U+9FFF, U+20000-U+3134F, U+F900-U+FAFF."""

_HEX_KEY = re.compile("[0-9a-f]{64}")


class HeldoutError(ValueError):
    """A held-out list that is not one SHA-256 hex digest a line."""


@lru_cache(maxsize=1)
def _t2s():
    import opencc  # imported on first use, as duilian.script does

    return opencc.OpenCC(KEY_CONFIG)


def heldout_key(line: str) -> str:
    """The held-out key of `line`: sha256 hex of its OpenCC t2s form with only Han characters kept.

    Traditional or simplified, with or without punctuation and spaces, the same line gets the same key:
    "兩岸曉煙楊柳綠，" and "两岸晓烟杨柳绿" both give the key of 两岸晓烟杨柳绿.
    """
    han = _NOT_HAN.sub("", _t2s().convert(line))
    return hashlib.sha256(han.encode("utf-8")).hexdigest()


def load_heldout(path: str | Path) -> frozenset[str]:
    """The keys listed in `path`, one 64-character lower-case hex digest a line (blank lines ignored).

    Raises HeldoutError naming the first line that is not a key: a list read wrongly (upper-case hex,
    a stray column) would match nothing and let every held-out line into training without a sound.
    """
    keys = set()
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            if not _HEX_KEY.fullmatch(line):
                raise HeldoutError(f"{path}, line {n}: not a lower-case sha256 hex digest: {line[:80]!r}")
            keys.add(line)
    return frozenset(keys)


def file_sha256(path: str | Path) -> str:
    """sha256 hex of a file's bytes: which held-out list a dataset was built against."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
