"""The tokenized dataset: what `duilian prepare` writes and `duilian train` memory-maps.

A dataset directory holds, for each split (train, val):

    {split}.tokens.npy   uint16 [n_tokens]   every training line, concatenated: [CLS] 上联 - 下联 [SEP]
    {split}.offsets.npy  int64  [n_pairs+1]  line i is tokens[offsets[i]:offsets[i+1]]
    meta.json            vocab size, seq_len, per-split counts and the prepare summary

uint16 holds the 21,128-token vocabulary; a flat array plus offsets costs no padding on disk, and the
trainer chooses how to pad (fixed 64 like the seed, or per batch).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .tokenizer import Tokenizer

FORMAT_VERSION = 1


def write_dataset(
    out_dir: str | Path,
    splits: dict[str, Sequence[tuple[str, str]]],
    tokenizer: Tokenizer,
    seq_len: int,
    info: dict | None = None,
) -> dict:
    """Tokenize each split's (上联, 下联) pairs and write them. Returns the meta dict (also meta.json)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if len(tokenizer) > np.iinfo(np.uint16).max:
        raise ValueError("vocabulary too large for uint16 token arrays")
    meta = {"format": FORMAT_VERSION, "vocab_size": len(tokenizer), "seq_len": seq_len, "splits": {}, "info": info or {}}
    for name, pairs in splits.items():
        lines = [tokenizer.encode_pair(u, l) for u, l in pairs]
        too_long = sum(len(x) > seq_len for x in lines)
        if too_long:
            raise ValueError(f"{too_long} pairs of split {name!r} exceed seq_len {seq_len}; filter them first")
        offsets = np.zeros(len(lines) + 1, dtype=np.int64)
        np.cumsum([len(x) for x in lines], out=offsets[1:])
        tokens = np.fromiter((t for x in lines for t in x), dtype=np.uint16, count=int(offsets[-1]))
        _save_atomic(out / f"{name}.tokens.npy", tokens)
        _save_atomic(out / f"{name}.offsets.npy", offsets)
        meta["splits"][name] = {"pairs": len(lines), "tokens": int(offsets[-1])}
    tmp = out / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, ensure_ascii=False, indent=2), encoding="utf-8")
    os.replace(tmp, out / "meta.json")
    return meta


def _save_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def read_meta(data_dir: str | Path) -> dict:
    return json.loads((Path(data_dir) / "meta.json").read_text(encoding="utf-8"))


@dataclass
class TokenizedSplit:
    """One split, memory-mapped: `split[i]` is the token array of line i."""

    tokens: np.ndarray
    offsets: np.ndarray

    @classmethod
    def open(cls, data_dir: str | Path, split: str) -> "TokenizedSplit":
        d = Path(data_dir)
        return cls(
            tokens=np.load(d / f"{split}.tokens.npy", mmap_mode="r"),
            offsets=np.load(d / f"{split}.offsets.npy"),
        )

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.tokens[self.offsets[i] : self.offsets[i + 1]], dtype=np.int64)
