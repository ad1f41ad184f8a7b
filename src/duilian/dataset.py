"""The tokenized dataset: what `duilian prepare` writes and `duilian train` memory-maps.

A dataset directory holds, for each split (train, val):

    {split}.tokens.npy   uint16 [n_tokens]   every training line, concatenated: [CLS] 上联 - 下联 [SEP], or a
                                             backward or keyword line (tokenizer.py) in the train split
    {split}.offsets.npy  int64  [n_pairs+1]  line i is tokens[offsets[i]:offsets[i+1]]
    vocab.txt            the vocabulary the ids index (the corpus's own or BERT's); the model is built with it

Splits are `train`, `val` and, for a dataset of several sources, `val.NAME` per source (forward lines).
    meta.json            vocab size, seq_len, per-split counts and the prepare summary

uint16 holds any vocabulary up to 65,535 tokens (BERT's has 21,128); a flat array plus offsets costs no padding on
disk, and the trainer chooses how to pad (fixed 64 like the seed, or per batch).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .tokenizer import MARKER_CHARS, SEPARATOR, Tokenizer

FORMAT_VERSION = 1


def write_dataset(
    out_dir: str | Path,
    splits: dict[str, Sequence[tuple[str, str]]],
    tokenizer: Tokenizer,
    seq_len: int,
    info: dict | None = None,
    unknown_as_unk: bool = False,
) -> dict:
    """Tokenize each split's (上联, 下联) pairs and write them with the vocabulary. Returns the meta dict (also
    meta.json). unknown_as_unk: characters outside the vocabulary become [UNK] instead of an error."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if len(tokenizer) > np.iinfo(np.uint16).max:
        raise ValueError("vocabulary too large for uint16 token arrays")
    meta = {"format": FORMAT_VERSION, "vocab_size": len(tokenizer), "seq_len": seq_len, "splits": {},
            "info": info or {}}
    for name, pairs in splits.items():
        tokens, offsets = encode_pairs(tokenizer, pairs, unknown_as_unk)
        too_long = int((np.diff(offsets) > seq_len).sum())
        if too_long:
            raise ValueError(f"{too_long} pairs of split {name!r} exceed seq_len {seq_len}; filter them first")
        _save_atomic(out / f"{name}.tokens.npy", tokens)
        _save_atomic(out / f"{name}.offsets.npy", offsets)
        meta["splits"][name] = {"pairs": len(pairs), "tokens": int(offsets[-1])}
    tokenizer.save(out / "vocab.txt.tmp")
    os.replace(out / "vocab.txt.tmp", out / "vocab.txt")
    tmp = out / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, ensure_ascii=False, indent=2), encoding="utf-8")
    os.replace(tmp, out / "meta.json")
    return meta


def read_tokenizer(data_dir: str | Path) -> Tokenizer:
    """The vocabulary a dataset's ids index (BERT's for datasets written before vocab.txt was)."""
    return Tokenizer.from_dir(data_dir)


def encode_pairs(tokenizer: Tokenizer, pairs: Sequence[tuple[str, str]],
                 unknown_as_unk: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """All training lines of `pairs` as (tokens uint16 [n_tokens], offsets int64 [n_pairs+1]).

    Same ids as tokenizer.encode_pair, in one numpy pass: the lines are joined into one string with
    the control characters \\x01/\\x02 standing for [CLS]/[SEP], and every code point is looked up
    in a table indexed by code point. Per-pair Python encoding took ~10 s on the 697k-pair corpus.
    """
    missing = np.iinfo(np.uint16).max
    table = np.full(0x110000, tokenizer.unk_id if unknown_as_unk else missing, dtype=np.uint16)
    for i, tok in enumerate(tokenizer.tokens):
        if len(tok) == 1:
            table[ord(tok)] = i
    table[1], table[2] = tokenizer.cls_id, tokenizer.sep_id
    for marker, ch in MARKER_CHARS.items():  # backward and keyword lines (tokenizer.encode_head)
        if tokenizer.marker_id(marker) is not None:
            table[ord(ch)] = tokenizer.marker_id(marker)
    text = "".join(f"\x01{u}{SEPARATOR}{l}\x02" for u, l in pairs)
    tokens = table[np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)]
    if (tokens == missing).any() or (tokens == tokenizer.cls_id).sum() != len(pairs):
        # An unknown character (or a stray \x01/\x02): encode pair by pair, which names the culprits.
        lines = [tokenizer.encode_pair(u, l) for u, l in pairs]
        tokens = np.array([t for line in lines for t in line], dtype=np.uint16)
    offsets = np.zeros(len(pairs) + 1, dtype=np.int64)
    np.cumsum([len(u) + len(l) + 3 for u, l in pairs], out=offsets[1:])
    return tokens, offsets


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


# --- batching: which lines go into which step, and how a batch is padded ---------------------------
#
# The data order is a pure function of (seed, epoch), so a resumed run needs no loader state: step s
# of any run with the same seed and global batch sees the same lines. A global batch (batch × world
# size × grad-accum lines) is cut into micro-batches; rank r at accumulation step k takes slice
# k × world + r, so one process with the whole global batch sees exactly the same lines.

IGNORE_INDEX = -100  # label of a position that carries no loss (pads, inserted prompt tokens)


@dataclass
class BatchSchedule:
    """Deterministic epochs of global batches over one split.

    Without bucketing an epoch is a seeded permutation cut into global batches (the last, incomplete
    one dropped). With bucketing, the permutation is cut into chunks of `bucket_chunk` global batches;
    each chunk is sorted by line length and cut into global batches, and the order of all the
    epoch's batches is shuffled again, so every batch holds lines of similar length (little padding)
    while batch order stays random.
    """

    lengths: np.ndarray
    """int [n_lines]: tokens per line."""
    global_batch: int
    """Lines per optimizer step, over all ranks and accumulation steps."""
    seed: int
    """Seeds the permutation of every epoch (together with the epoch number)."""
    bucket: bool = False
    """Group lines of similar length into the same batch."""
    bucket_chunk: int = 64
    """Global batches per sorting chunk when bucketing: larger = less padding, less randomness."""
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.global_batch < 1:
            raise ValueError("global batch must be at least 1")
        if len(self.lengths) < self.global_batch:
            raise ValueError(f"split has {len(self.lengths)} lines, fewer than one global batch of {self.global_batch}")

    @property
    def batches_per_epoch(self) -> int:
        return len(self.lengths) // self.global_batch

    def epoch(self, epoch: int) -> np.ndarray:
        """int64 [batches_per_epoch, global_batch]: line indices of each global batch of the epoch."""
        if epoch not in self._cache:
            self._cache.clear()  # keep one epoch: every step of it asks again
            self._cache[epoch] = _compute_epoch(self, epoch)
        return self._cache[epoch]

    def global_batch_at(self, step: int) -> tuple[int, np.ndarray]:
        """(epoch, line indices [global_batch]) of optimizer step `step` (0-based)."""
        epoch, i = divmod(step, self.batches_per_epoch)
        return epoch, self.epoch(epoch)[i]

    def micro_batches(self, step: int, rank: int, world_size: int, grad_accum: int) -> tuple[int, list[np.ndarray]]:
        """(epoch, this rank's `grad_accum` micro-batches of step `step`, each [global_batch / (world × accum)])."""
        parts = world_size * grad_accum
        if self.global_batch % parts:
            raise ValueError(f"global batch {self.global_batch} is not divisible by world × accum = {parts}")
        epoch, batch = self.global_batch_at(step)
        slices = batch.reshape(parts, -1)
        return epoch, [slices[k * world_size + rank] for k in range(grad_accum)]


def _compute_epoch(s: BatchSchedule, epoch: int) -> np.ndarray:
    rng = np.random.default_rng([s.seed, epoch])
    order = rng.permutation(len(s.lengths))
    n_batches, g = s.batches_per_epoch, s.global_batch
    order = order[: n_batches * g]
    if not s.bucket:
        return order.reshape(n_batches, g)
    chunk = s.bucket_chunk * g
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        # stable sort: equal lengths keep their random order
        order[start : start + chunk] = part[np.argsort(s.lengths[part], kind="stable")]
    batches = order.reshape(n_batches, g)
    return batches[rng.permutation(n_batches)]


def v5_prompt_lines(seed: int, epoch: int, n_lines: int, frac: float) -> np.ndarray:
    """bool [n_lines]: which lines this epoch are shown in transformers 5's prompt form (see `collate`).

    Chosen per (seed, epoch, line index), so the choice does not depend on batch size, rank or resume.
    """
    if frac <= 0:
        return np.zeros(n_lines, dtype=bool)
    return np.random.default_rng([seed, epoch, 5]).random(n_lines) < frac


def hide_upper(split: "TokenizedSplit", indices: np.ndarray, seed: int, epoch: int, frac: float,
               hideable: np.ndarray, separator_id: int) -> list[np.ndarray]:
    """Per line of `indices`, the positions (in the line's tokens) of 上联 characters to show as [UNK].

    Each Han character of a 上联 is hidden with probability `frac`, drawn per (seed, epoch, line index), so
    the choice does not depend on batch size, rank or resume. hideable: bool [vocab], True for ids that may
    be hidden (Han characters; never a punctuation mark, which the decoder must see to mirror it).
    """
    out = []
    for i in indices:
        line = split[int(i)]  # [CLS] 上 - 下 [SEP]
        dash = int(np.flatnonzero(line == separator_id)[0])
        draw = np.random.default_rng([seed, epoch, int(i), 11]).random(dash - 1) < frac
        out.append(1 + np.flatnonzero(draw & hideable[line[1:dash]]))
    return out


@dataclass
class Batch:
    """One micro-batch, next-token style: `targets[b, t]` is the token after `inputs[b, t]`."""

    inputs: np.ndarray
    """int64 [B, T]: token ids, right-padded with [PAD]."""
    targets: np.ndarray
    """int64 [B, T]: the next token, or IGNORE_INDEX on pads and on inserted prompt tokens."""
    n_tokens: int
    """Real (non-pad) input positions: what tokens/s counts."""
    n_targets: int
    """Positions that carry loss (targets != IGNORE_INDEX)."""
    attn_sq: int
    """Σ over lines of (real length)²: the attention term of the FLOP count."""


def collate(
    split: TokenizedSplit,
    indices: np.ndarray,
    pad_to: int | None,
    pad_multiple: int = 1,
    v5_form: np.ndarray | None = None,
    cls_id: int = 101,
    sep_id: int = 102,
    separator_id: int = 118,
    pad_id: int = 0,
    unk_id: int | None = None,
    hidden: list[np.ndarray] | None = None,
    marker_ids: tuple[int, ...] = (),
) -> Batch:
    """Build the micro-batch of lines `indices`.

    `pad_to`: pad every row to this length (the seed's fixed 64), or None to pad to the batch's longest
    row rounded up to `pad_multiple`; `pad_id` fills the input pads (their targets are IGNORE_INDEX).
    `v5_form[j]` True shows line j as transformers 5 prompts it,
    [CLS][CLS]上联-[SEP]下联[SEP], with no loss on predicting the two inserted tokens, so the model
    continues that prompt correctly but never learns to emit them.
    `hidden[j]` (see hide_upper): positions of line j shown as `unk_id`. Every target equal to `unk_id`
    (hidden, or a rare character the vocabulary left out) carries no loss: the model learns to read [UNK],
    never to write it (the decoder could not use it anyway).
    `marker_ids` ([REV], [KW]): everything up to a line's last marker is prompt, given by the user at decoding
    time (the keywords, the marker itself), so it carries no loss.
    """
    rows: list[np.ndarray] = []
    masks: list[np.ndarray] = []  # True where the *target* is an inserted token
    for j, i in enumerate(indices):
        line = split[int(i)]  # [CLS] 上 - 下 [SEP]
        if hidden is not None and len(hidden[j]):
            line[hidden[j]] = unk_id  # split[i] is a fresh array: the dataset is not touched
        inserted = np.zeros(len(line) + 2, dtype=bool)
        if marker_ids:
            marks = np.flatnonzero(np.isin(line, marker_ids))
            if len(marks):
                inserted[1 : marks[-1] + 1] = True  # the keywords and markers: given, never predicted
        if v5_form is not None and v5_form[j] and (pad_to is None or len(line) + 2 <= pad_to):
            dash = int(np.flatnonzero(line == separator_id)[0])  # the first '-' ends the 上联
            line = np.concatenate([[cls_id], line[: dash + 1], [sep_id], line[dash + 1 :]])
            inserted[[1, dash + 2]] = True  # the second [CLS]; the [SEP] after '-'
        rows.append(line)
        masks.append(inserted[: len(line)])
    longest = max(len(r) for r in rows) - 1
    width = pad_to if pad_to is not None else -(-longest // pad_multiple) * pad_multiple
    if longest > width:
        raise ValueError(f"a line of {longest + 1} tokens does not fit pad length {width}")
    inputs = np.full((len(rows), width), pad_id, dtype=np.int64)
    targets = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
    for b, (row, inserted) in enumerate(zip(rows, masks)):
        n = len(row) - 1
        inputs[b, :n] = row[:-1]
        no_loss = inserted[1:] if unk_id is None else inserted[1:] | (row[1:] == unk_id)
        targets[b, :n] = np.where(no_loss, IGNORE_INDEX, row[1:])
    n_real = [len(r) - 1 for r in rows]
    return Batch(
        inputs=inputs,
        targets=targets,
        n_tokens=int(sum(n_real)),
        n_targets=int((targets != IGNORE_INDEX).sum()),
        attn_sq=int(sum(n * n for n in n_real)),
    )
