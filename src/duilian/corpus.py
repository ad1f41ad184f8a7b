"""Read a couplet corpus, clean it, split off a validation set and write a tokenized dataset.

This is the first stage: `duilian prepare` is a thin wrapper around `prepare(PrepareConfig(...))`.

Three corpus layouts are read (plain, .xz or .gz, chosen by the file name's suffix):

    parallel  in.txt / out.txt: one 上联 per line in in.txt, its 下联 on the same line of out.txt,
              characters separated by spaces (the public couplet-dataset layout); a directory
              holding in.txt[.xz|.gz] and out.txt[.xz|.gz], or the two paths
    tsv       one pair per line: 上联<TAB>下联
    uer       one pair per line: 上联-下联 (the seed's UER-py corpus; spaces are allowed)

Every pair goes through `clean_pair`, which normalises both lines (duilian.text.normalize) and
either keeps the pair or names the first check it fails (the REJECT_* reasons below). A bad line
is counted, reported with its line number and skipped; it never stops the run. Exact duplicate
pairs are removed after cleaning, keeping the first.

The work is split into chunks of lines that a pool of processes cleans in order, and everything
order-dependent (duplicates, the validation split) happens after the chunks are merged, so the
written dataset is byte-identical for any `processes`.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import lzma
import multiprocessing
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .dataset import write_dataset
from .text import HAN_BLOCKS, PUNCTUATION, is_han, normalize
from .tokenizer import MARKER_CHARS, REVERSE, SEPARATOR, Tokenizer, default_tokenizer

# --- reject reasons, in the order the checks run (a pair is counted under the first it fails) -----
REJECT_MALFORMED = "malformed"  # a tsv line without exactly one tab, a uer line without exactly one '-'
REJECT_EMPTY = "empty"  # a line with nothing left after normalisation
REJECT_CHARACTERS = "characters"  # a character other than Han and the marks in text.PUNCTUATION
REJECT_VOCAB = "not_in_vocab"  # a Han character the BERT vocabulary lacks (with --vocab bert only)
REJECT_LENGTH = "length_mismatch"  # 上联 and 下联 of different lengths
REJECT_PUNCTUATION = "punctuation_mismatch"  # marks not at the same positions, or not the same marks
REJECT_PLACEMENT = "punctuation_placement"  # starts with a mark or has two in a row (clean_upper refuses these)
REJECT_TOO_LONG = "too_long"  # [CLS] 上联 - 下联 [SEP] = 2*len+3 tokens exceeds seq_len
REASONS = (
    REJECT_MALFORMED,
    REJECT_EMPTY,
    REJECT_CHARACTERS,
    REJECT_VOCAB,
    REJECT_LENGTH,
    REJECT_PUNCTUATION,
    REJECT_PLACEMENT,
    REJECT_TOO_LONG,
)

FORMATS = ("auto", "parallel", "tsv", "uer")
DIRECTIONS = ("forward", "both")
VOCABS = ("corpus", "bert")
"""corpus: the training split's own characters (vocab.txt in the dataset; the model gets that many rows);
bert: the seed's 21,128-token vocabulary, pairs with other characters rejected."""
COMPRESSED_SUFFIXES = ("", ".xz", ".gz")  # what a directory's in.txt / out.txt may end with
CHUNK_LINES = 16384  # lines per work item: large enough that pickling is cheap next to cleaning
EXAMPLE_CHARS = 80  # an example in the summary is cut to this many characters


class CorpusError(ValueError):
    """A corpus that cannot be read as asked (missing files, line counts that differ, unknown format)."""


# --- configuration ------------------------------------------------------------------------------
@dataclass
class PrepareConfig:
    inputs: list[str]
    """The training corpora, one source each: a directory with in.txt/out.txt or one tsv/uer file, optionally
    named `NAME=PATH` (default name: the directory's or file's stem). Two paths named in.* and out.* are one
    parallel source, as before several sources existed."""
    out_dir: str
    """Where the dataset (train/val token arrays and meta.json) is written."""
    val: list[str] | None = None
    """A separate validation corpus (same forms as one source of `inputs`); None splits one off each source."""
    seq_len: int = 64
    """Longest training line in tokens, [CLS] 上联 - 下联 [SEP]; longer pairs are rejected."""
    val_fraction: float = 0.01
    """Share of each source's cleaned pairs split off for validation when `val` is None (0 = none)."""
    seed: int = 0
    """Chooses which pairs the validation split takes and the keyword lines; same seed and corpus, same data."""
    processes: int = 1
    """Worker processes that clean chunks of lines; the output does not depend on it."""
    format: str = "auto"
    """auto | parallel | tsv | uer, for `inputs` and `val`; auto: a directory or two paths are
    parallel, one file is tsv or uer by its first line."""
    vocab: str = "corpus"
    """corpus: a vocabulary of the characters the training split holds (about 5.6k of BERT's 21k for the
    public corpus, so the output layer is a quarter the size); bert: the seed's vocabulary."""
    min_count: int = 3
    """With vocab=corpus, characters seen fewer times in the training split are left out and become [UNK]:
    a character seen once or twice gets too few updates to mean anything, while [UNK] is trained."""
    licences: dict[str, str] = field(default_factory=dict)
    """Source name -> its licence, for the summary and the model card; else a source.json beside the source
    ({"licence": ...}), else "unknown"."""
    heldout: str | None = None
    """A held-out list (duilian.heldout: one sha256 key a line): every pair whose 上联 or 下联 is listed is dropped,
    counted per source."""
    directions: str = "forward"
    """forward: the seed's lines only; both: also each training pair backward, [CLS][REV]下联-上联[SEP], so one
    model also scores P(上联 | 下联). Validation keeps the forward lines, comparable across datasets."""
    keywords: float = 0.0
    """Share of training pairs that also get a keyword line, [CLS]词[KW]…上联-下联[SEP] (duilian.keywords): what
    `compose` needs. 0 = none."""

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {self.format!r}")
        if self.vocab not in VOCABS:
            raise ValueError(f"vocab must be one of {', '.join(VOCABS)}, not {self.vocab!r}")
        if self.min_count < 1:
            raise ValueError(f"min_count must be at least 1, not {self.min_count}")
        if not self.inputs:
            raise ValueError("give at least one corpus")
        if self.val is not None and not 1 <= len(self.val) <= 2:
            raise ValueError("--val takes a directory, one tsv/uer file, or in.txt and out.txt")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), not {self.val_fraction}")
        if self.seq_len < 5:
            raise ValueError(f"seq_len {self.seq_len} cannot hold even a one-character couplet (5 tokens)")
        if self.processes < 1:
            raise ValueError(f"processes must be at least 1, not {self.processes}")
        if self.directions not in DIRECTIONS:
            raise ValueError(f"directions must be one of {', '.join(DIRECTIONS)}, not {self.directions!r}")
        if not 0.0 <= self.keywords <= 1.0:
            raise ValueError(f"keywords is a share in [0, 1], not {self.keywords}")


# --- 1) finding and reading the files -------------------------------------------------------------
@dataclass(frozen=True)
class CorpusSource:
    """Resolved input: the layout and its one (tsv, uer) or two (parallel: in, out) files."""

    format: str
    paths: tuple[Path, ...]


def resolve_source(inputs: list[str], format: str = "auto") -> CorpusSource:
    """Work out the layout and the files of a corpus given as a directory, two paths, or one file."""
    paths = [Path(p) for p in inputs]
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"no such file or directory: {p}")
    if len(paths) == 1 and paths[0].is_dir():
        if format not in ("auto", "parallel"):
            raise CorpusError(f"{paths[0]} is a directory; a {format} corpus is one file")
        return CorpusSource("parallel", (_find_in_dir(paths[0], "in.txt"), _find_in_dir(paths[0], "out.txt")))
    if len(paths) == 2:
        if format not in ("auto", "parallel"):
            raise CorpusError(f"two inputs are read as in.txt and out.txt, not as {format}")
        return CorpusSource("parallel", tuple(paths))
    path = paths[0]
    if format == "parallel":
        raise CorpusError(f"a parallel corpus needs in.txt and out.txt; give a directory or both paths, "
                          f"not just {path}")
    if format == "auto":
        format = _sniff_format(path)
    return CorpusSource(format, (path,))


@dataclass(frozen=True)
class NamedSource:
    """One training source of a dataset: its name (for the summary and the per-source validation split),
    files and licence."""

    name: str
    source: CorpusSource
    licence: str


def resolve_sources(inputs: list[str], format: str = "auto",
                    licences: dict[str, str] | None = None) -> list[NamedSource]:
    """The sources of `duilian prepare INPUT...`: each input is one source, `NAME=PATH` or a plain path
    (named after its directory or file stem), except that two plain paths named in.* and out.* are the two
    halves of one parallel corpus. A source's licence is `licences[name]`, else the "licence" of a
    source.json in the source's directory, else "unknown"."""
    plain = [i for i in inputs if "=" not in i]
    if len(inputs) == 2 and len(plain) == 2 and [Path(i).name.split(".")[0] for i in inputs] == ["in", "out"]:
        groups = [(Path(inputs[0]).parent.name or "corpus", inputs)]
    else:
        groups = []
        for item in inputs:
            name, _, path = item.rpartition("=") if "=" in item else ("", "", item)
            groups.append((name or Path(path).name.split(".")[0], [path]))
    names = [n for n, _ in groups]
    if len(set(names)) != len(names):
        raise CorpusError(f"two sources are both named {max(names, key=names.count)!r}; name them: NAME=PATH")
    if any(not re.fullmatch(r"[\w-]+", n) for n in names):
        raise CorpusError(f"a source name is letters, digits, _ and - only: {', '.join(names)}")
    out = []
    for name, paths in groups:
        source = resolve_source(paths, format)
        out.append(NamedSource(name, source, (licences or {}).get(name) or _source_licence(source)))
    unknown = set(licences or {}) - set(names)
    if unknown:
        raise CorpusError(f"a licence is given for {', '.join(sorted(unknown))}, which is not a source")
    return out


def _source_licence(source: CorpusSource) -> str:
    info = source.paths[0].parent / "source.json"
    try:
        return str(json.loads(info.read_text(encoding="utf-8")).get("licence", "unknown"))
    except (OSError, ValueError):
        return "unknown"


def _find_in_dir(directory: Path, name: str) -> Path:
    for suffix in COMPRESSED_SUFFIXES:
        if (directory / (name + suffix)).is_file():
            return directory / (name + suffix)
    tried = ", ".join(name + s for s in COMPRESSED_SUFFIXES)
    raise CorpusError(f"{directory} has none of {tried}")


def _sniff_format(path: Path) -> str:
    """tsv if the first non-blank line has a tab, uer if it has a '-'."""
    if path.name.split(".")[0] in ("in", "out"):
        raise CorpusError(f"{path} looks like one half of a parallel corpus; give the directory or both in.txt "
                          "and out.txt")
    with open_text(path) as f:
        for line in f:
            if line.strip():
                if "\t" in line:
                    return "tsv"
                if SEPARATOR in line:
                    return "uer"
                break
    raise CorpusError(f"cannot tell the format of {path} from its first line; give --format tsv or uer")


def open_text(path: str | Path):
    """Open a plain, .xz or .gz file as UTF-8 text (by its suffix).

    Bytes that are not UTF-8 become U+FFFD, so such a line is rejected for its characters instead of
    stopping the whole run.
    """
    path = Path(path)
    if path.suffix == ".xz":
        return lzma.open(path, "rt", encoding="utf-8", errors="replace")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def read_pairs(source: CorpusSource) -> Iterator[tuple[str | None, str]]:
    """Yield one record per corpus line, in order: (raw 上联, raw 下联), not yet normalised.

    A line that cannot be split into two halves (tsv without exactly one tab, uer without exactly
    one '-') is yielded as (None, the line), so that it is counted as malformed at its line number.
    Raises CorpusError (after the shorter file ends) if in.txt and out.txt have different line counts.
    """
    if source.format == "parallel":
        yield from _read_parallel(*source.paths)
        return
    delimiter = "\t" if source.format == "tsv" else SEPARATOR
    with open_text(source.paths[0]) as f:
        for line in f:
            line = line.rstrip("\r\n")
            parts = line.split(delimiter)
            if len(parts) == 2:
                yield parts[0], parts[1]
            elif not line.strip():
                yield "", ""  # a blank line is empty, not malformed
            else:
                yield None, line


def _read_parallel(upper_path: Path, lower_path: Path) -> Iterator[tuple[str, str]]:
    with open_text(upper_path) as uppers, open_text(lower_path) as lowers:
        for n, pair in enumerate(itertools.zip_longest(uppers, lowers), start=1):
            if pair[0] is None or pair[1] is None:
                n_upper = n - 1 + (pair[0] is not None) + sum(1 for _ in uppers)
                n_lower = n - 1 + (pair[1] is not None) + sum(1 for _ in lowers)
                raise CorpusError(
                    f"{upper_path} has {n_upper} lines but {lower_path} has {n_lower}; "
                    "line i of one must be the pair of line i of the other"
                )
            yield pair


# --- 2) cleaning one pair -------------------------------------------------------------------------
_PUNCT_CLASS = "[" + "".join(sorted(PUNCTUATION)) + "]"
_PUNCT_RE = re.compile(_PUNCT_CLASS)
_PLACEMENT_RE = re.compile(f"^{_PUNCT_CLASS}|{_PUNCT_CLASS}{{2}}")


@lru_cache(maxsize=2)
def _disallowed_re(vocab: str = "bert") -> re.Pattern:
    """A regex that finds any character a kept pair may not hold.

    Allowed is Han or a couplet mark, unchanged by NFC, and with vocab="bert" in the BERT vocabulary. A line made only
    of allowed characters and white space is therefore already normal apart from its spaces, which is
    what lets `clean_pair` skip the slower general `normalize` for almost every corpus line. A regex
    character class scans a line in C, several times faster than a set test per character.
    """
    if vocab == "bert":
        chars = [t for t in default_tokenizer().tokens if len(t) == 1]
    else:
        chars = [chr(cp) for lo, hi in HAN_BLOCKS for cp in range(lo, hi + 1)] + sorted(PUNCTUATION)
    allowed = sorted(
        ord(ch) for ch in chars if (is_han(ch) or ch in PUNCTUATION) and unicodedata.normalize("NFC", ch) == ch
    )
    ranges = []  # runs of consecutive code points -> "a-b", so the class stays short
    for cp in allowed:
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    body = "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges)
    return re.compile(f"[^{body}]")


def clean_pair(upper: str, lower: str, seq_len: int = 64,
               vocab: str = "bert") -> tuple[tuple[str, str] | None, str | None]:
    """Normalise a raw pair and check it: ((上联, 下联), None) to keep, or (None, REJECT_*) to skip.

    The lines come back as duilian.text.normalize makes them (no spaces, full-width marks, NFC).
    vocab="bert" also rejects Han characters outside the BERT vocabulary (REJECT_VOCAB).
    """
    disallowed = _disallowed_re(vocab)
    # 1) normalise: dropping the spaces is all a line of allowed characters needs; any other line
    #    goes through text.normalize (NFC, ASCII marks -> full-width) and is then looked at closely.
    u, l = "".join(upper.split()), "".join(lower.split())
    reason = None
    if disallowed.search(u) or disallowed.search(l):
        u, l = normalize(upper), normalize(lower)
        if disallowed.search(u) or disallowed.search(l):
            if all(is_han(ch) or ch in PUNCTUATION for ch in u + l):
                reason = REJECT_VOCAB
            else:
                reason = REJECT_CHARACTERS
    # 2) the checks, in the order of REASONS
    if not u or not l:
        return None, REJECT_EMPTY
    if reason is not None:
        return None, reason
    if len(u) != len(l):
        return None, REJECT_LENGTH
    if _PUNCT_RE.search(u) or _PUNCT_RE.search(l):  # half the corpus has no marks: skip the scan
        if _punctuation(u) != _punctuation(l):
            return None, REJECT_PUNCTUATION
        if _PLACEMENT_RE.search(u):  # the marks are mirrored, so the 上联 speaks for both
            return None, REJECT_PLACEMENT
    if 2 * len(u) + 3 > seq_len:
        return None, REJECT_TOO_LONG
    return (u, l), None


def _punctuation(line: str) -> list[tuple[int, str]]:
    return [(m.start(), m.group()) for m in _PUNCT_RE.finditer(line)]


# --- 3) cleaning a whole corpus, in chunks, in one or many processes --------------------------------
@dataclass
class CorpusStats:
    """What cleaning one corpus did: counts by reason and the first example of each."""

    inputs: list[str]
    format: str
    name: str = ""
    """The source's name (NamedSource.name); empty for a separate validation corpus."""
    licence: str = "unknown"
    lines: int = 0
    """Records read (one per line of the corpus)."""
    kept: int = 0
    """Pairs that passed every check and are not duplicates."""
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    duplicates: int = 0
    """Pairs equal (after normalisation) to an earlier kept pair."""
    examples: dict[str, dict] = field(default_factory=dict)
    """reason (or "duplicate") -> {"line": 1-based line number, "text": the raw line(s)}, first seen."""
    heldout: int = 0
    """Kept pairs then dropped because the 上联 or the 下联 is on the held-out list."""
    overlap: int = 0
    """Pairs dropped because an earlier source already holds them, or (training) because their 上联 is in the
    separate validation corpus."""
    train_pairs: int = 0
    val_pairs: int = 0

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "licence": self.licence,
            "inputs": self.inputs,
            "format": self.format,
            "lines": self.lines,
            "kept": self.kept,
            "rejected": dict(self.rejected),
            "duplicates": self.duplicates,
            "heldout": self.heldout,
            "overlap": self.overlap,
            "train_pairs": self.train_pairs,
            "val_pairs": self.val_pairs,
            "examples": self.examples,
        }


@dataclass
class _Chunk:
    """One worker's result for lines [start, start+n): kept pairs with their line numbers."""

    pairs: list[tuple[str, str]]
    lines: list[int]
    rejected: Counter
    examples: dict[str, dict]


def _clean_chunk(item: tuple[int, list[tuple[str | None, str]], int, str]) -> _Chunk:
    start, records, seq_len, vocab = item
    pairs, lines, rejected, examples = [], [], Counter(), {}
    for line_no, (upper, lower) in enumerate(records, start=start):
        if upper is None:
            pair, reason = None, REJECT_MALFORMED
        else:
            pair, reason = clean_pair(upper, lower, seq_len, vocab)
        if pair is not None:
            pairs.append(pair)
            lines.append(line_no)
            continue
        rejected[reason] += 1
        if reason not in examples:
            examples[reason] = {"line": line_no, "text": _example_text(upper, lower)}
    return _Chunk(pairs, lines, rejected, examples)


def _example_text(upper: str | None, lower: str) -> str:
    text = lower if upper is None else f"{upper.strip()} | {lower.strip()}"
    return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 1] + "…"


def _chunks(records: Iterable, seq_len: int, vocab: str) -> Iterator[tuple[int, list, int, str]]:
    it = iter(records)
    start = 1
    while batch := list(itertools.islice(it, CHUNK_LINES)):
        yield start, batch, seq_len, vocab
        start += len(batch)


def clean_corpus(source: CorpusSource, seq_len: int, processes: int = 1,
                 vocab: str = "bert") -> tuple[list[tuple[str, str]], CorpusStats]:
    """Read, clean and de-duplicate one corpus. Returns the kept pairs in corpus order and the stats."""
    stats = CorpusStats(inputs=[str(p) for p in source.paths], format=source.format)
    chunks = _chunks(read_pairs(source), seq_len, vocab)
    kept: dict[tuple[str, str], int] = {}  # pair -> line it was first seen on (dicts keep insertion order)
    if processes > 1:
        with multiprocessing.Pool(processes, initializer=_disallowed_re, initargs=(vocab,)) as pool:
            # imap keeps chunk order, so the merge below sees lines in corpus order whatever finishes first.
            _merge(pool.imap(_clean_chunk, chunks), kept, stats)
    else:
        _merge(map(_clean_chunk, chunks), kept, stats)
    stats.kept = len(kept)
    return list(kept), stats


def _merge(results: Iterable[_Chunk], kept: dict, stats: CorpusStats) -> None:
    for chunk in results:
        stats.lines += len(chunk.lines) + sum(chunk.rejected.values())
        for reason, n in chunk.rejected.items():
            stats.rejected[reason] += n
        for reason, example in chunk.examples.items():
            stats.examples.setdefault(reason, example)  # chunks arrive in order: the first is the earliest
        for pair, line_no in zip(chunk.pairs, chunk.lines):
            first = kept.setdefault(pair, line_no)
            if first != line_no:
                stats.duplicates += 1
                if "duplicate" not in stats.examples:
                    stats.examples["duplicate"] = {
                        "line": line_no,
                        "text": _example_text(*pair),
                        "first_line": first,
                    }


# --- 4) the validation split ----------------------------------------------------------------------
def split_validation(
    pairs: list[tuple[str, str]], fraction: float, seed: int
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Split (train, val) off cleaned pairs, deterministically, keeping corpus order in each.

    A pair goes to val when a seeded hash of its 上联 is among the smallest: all 下联 of one 上联 land
    in the same split (no 上联 is both trained on and validated), the split depends only on the
    pairs and the seed (not on their order or on `processes`), and when the corpus grows only pairs
    near the threshold change sides. Val gets at least round(fraction * len(pairs)) pairs (at least
    one when fraction > 0), a few more where 上联 repeat.
    """
    if fraction <= 0 or not pairs:
        return list(pairs), []
    salt = f"{seed}\0".encode()
    keys = {u: _hash_key(salt, u) for u in dict.fromkeys(u for u, _ in pairs)}  # one hash per distinct 上联
    pair_keys = np.fromiter((keys[u] for u, _ in pairs), dtype=np.uint64, count=len(pairs))  # [n_pairs]
    target = max(1, round(fraction * len(pairs)))
    threshold = np.partition(pair_keys, target - 1)[target - 1]  # the target-th smallest key
    in_val = (pair_keys <= threshold).tolist()
    train = [p for p, v in zip(pairs, in_val) if not v]
    val = [p for p, v in zip(pairs, in_val) if v]
    if not train:
        raise CorpusError(f"{len(pairs)} pairs are too few to split off a validation set; give --val or "
                          "--val-fraction 0")
    return train, val


def _hash_key(salt: bytes, upper: str) -> int:
    return int.from_bytes(hashlib.blake2b(salt + upper.encode("utf-8"), digest_size=8).digest(), "big")


# --- 5) the whole stage ---------------------------------------------------------------------------
@dataclass
class PrepareSummary:
    """What `prepare` read, rejected, split and wrote; also stored in the dataset's meta.json."""

    sources: list[CorpusStats]
    """One per training source, in the order given."""
    val_corpus: CorpusStats | None
    """Stats of the separate validation corpus; None when val was split off each source."""
    seq_len: int
    val_fraction: float
    seed: int
    heldout: dict | None = None
    """The held-out list used: its path, its sha256 and how many keys it holds; None when none was given."""
    train_pairs: int = 0
    val_pairs: int = 0
    lines: dict = field(default_factory=dict)
    """Training lines by kind: forward (the pairs), backward, keywords; and the keyword lines' stats."""
    vocab: dict = field(default_factory=dict)
    """The vocabulary written: kind, size, min_count, characters left out and their occurrences as [UNK]."""

    def to_dict(self) -> dict:
        return {
            "sources": [st.to_dict() for st in self.sources],
            "val_corpus": None if self.val_corpus is None else self.val_corpus.to_dict(),
            "seq_len": self.seq_len,
            "val_split": ("separate corpus" if self.val_corpus is not None
                          else {"fraction": self.val_fraction, "seed": self.seed}),
            "heldout": self.heldout,
            "train_pairs": self.train_pairs,
            "val_pairs": self.val_pairs,
            "lines": self.lines,
            "vocab": self.vocab,
        }

    def format(self) -> str:
        """A few lines for a person: what was kept and, for each reject reason, a count and an example."""
        out = []
        named = [(f"source {st.name} [{st.licence}]", st) for st in self.sources] + [("val corpus", self.val_corpus)]
        for title, stats in named:
            if stats is None:
                continue
            out.append(f"{title} ({stats.format}: {', '.join(stats.inputs)}): {stats.lines:,} lines, "
                       f"{stats.kept:,} pairs kept")
            for reason in (*REASONS, "duplicate"):
                n = stats.duplicates if reason == "duplicate" else stats.rejected[reason]
                if n:
                    ex = stats.examples[reason]
                    out.append(f"  {reason:<22} {n:>8,}   e.g. line {ex['line']}: {ex['text']}")
            if self.heldout is not None and stats is not self.val_corpus:
                out.append(f"  {'held out':<22} {stats.heldout:>8,}   (上联 or 下联 on {self.heldout['path']})")
            if stats.overlap:
                out.append(f"  {'overlap':<22} {stats.overlap:>8,}   "
                           "(in an earlier source, or 上联 in the val corpus)")
            if stats is not self.val_corpus:
                out.append(f"  -> {stats.train_pairs:,} train, {stats.val_pairs:,} val pairs")
        split = ("from the val corpus" if self.val_corpus is not None
                 else f"split off {self.val_fraction:g} (seed {self.seed})")
        out.append(f"dataset: {self.train_pairs:,} train pairs, {self.val_pairs:,} val pairs ({split}); "
                   f"seq_len {self.seq_len}")
        lines = self.lines
        if lines.get("backward") or lines.get("keywords"):
            out.append(f"training lines: {lines['forward']:,} forward, {lines['backward']:,} backward, "
                       f"{lines['keywords']:,} with keywords")
        v = self.vocab
        if v.get("kind") == "corpus":
            out.append(f"vocabulary: {v['size']:,} tokens from the training split; {v['dropped_chars']:,} characters "
                       f"seen fewer than {v['min_count']} times left out ({v['unk_train']:,} training and "
                       f"{v['unk_val']:,} validation occurrences become [UNK])")
        elif v:
            out.append(f"vocabulary: the BERT vocabulary ({v['size']:,} tokens)")
        return "\n".join(out)


def prepare(config: PrepareConfig) -> PrepareSummary:
    """Read, clean, de-duplicate, filter and split every source, then write the dataset to config.out_dir."""
    # 1) each source, cleaned and de-duplicated; held-out pairs dropped; a pair an earlier source holds dropped
    sources = resolve_sources(config.inputs, config.format, config.licences)
    heldout = None
    summary = PrepareSummary([], None, config.seq_len, config.val_fraction, config.seed)
    if config.heldout:
        from .heldout import file_sha256, load_heldout

        heldout = load_heldout(config.heldout)
        summary.heldout = {"path": str(config.heldout), "sha256": file_sha256(config.heldout), "keys": len(heldout)}
    per_source: list[list[tuple[str, str]]] = []
    seen: set[tuple[str, str]] = set()
    for src in sources:
        pairs, stats = clean_corpus(src.source, config.seq_len, config.processes, config.vocab)
        stats.name, stats.licence = src.name, src.licence
        if heldout is not None:
            kept = [p for p in pairs if not _held_out(p, heldout)]
            stats.heldout, pairs = len(pairs) - len(kept), kept
        fresh = [p for p in pairs if p not in seen]
        stats.overlap, pairs = len(pairs) - len(fresh), fresh
        seen.update(pairs)
        summary.sources.append(stats)
        per_source.append(pairs)

    # 2) validation: a separate corpus (and no 上联 of it left in train), or a deterministic split of each source
    splits: dict[str, list[tuple[str, str]]] = {}
    train: list[tuple[str, str]] = []
    val: list[tuple[str, str]] = []
    if config.val is not None:
        val, summary.val_corpus = clean_corpus(resolve_source(config.val, config.format), config.seq_len,
                                               config.processes, config.vocab)
        if not val:
            raise CorpusError(f"no validation pairs kept from {', '.join(config.val)}:\n{summary.format()}")
        val_uppers = {u for u, _ in val}
        for pairs, stats in zip(per_source, summary.sources):
            kept = [p for p in pairs if p[0] not in val_uppers]
            stats.overlap += len(pairs) - len(kept)
            stats.train_pairs = len(kept)
            train += kept
    else:
        for pairs, stats in zip(per_source, summary.sources):
            part_train, part_val = split_validation(pairs, config.val_fraction, config.seed) if pairs else ([], [])
            stats.train_pairs, stats.val_pairs = len(part_train), len(part_val)
            train += part_train
            val += part_val
            if len(sources) > 1 and part_val:
                splits[f"val.{stats.name}"] = part_val
    if not train:
        raise CorpusError(f"no training pairs left from {', '.join(config.inputs)}:\n{summary.format()}")
    summary.train_pairs, summary.val_pairs = len(train), len(val)

    # 3) the vocabulary: the training split's characters (validation may hold others: they become [UNK]
    #    as a user's unknown characters will), with every couplet mark so the decoder can mirror any of them
    if config.vocab == "corpus":
        counts = Counter("".join(u + l for u, l in train))
        tokenizer = Tokenizer.for_corpus(counts, config.min_count, marks="".join(PUNCTUATION))
        index = tokenizer.index
        dropped = [ch for ch in counts if ch not in index]
        unk_val = Counter("".join(u + l for u, l in val))
        summary.vocab = {"kind": "corpus", "size": len(tokenizer), "min_count": config.min_count,
                         "dropped_chars": len(dropped), "unk_train": sum(counts[ch] for ch in dropped),
                         "unk_val": sum(n for ch, n in unk_val.items() if ch not in index)}
    else:
        tokenizer = default_tokenizer()
        summary.vocab = {"kind": "bert", "size": len(tokenizer)}

    # 4) the training lines: every pair forward (the seed's lines), and backward and with keywords if asked.
    #    Validation stays forward: its loss means the same whatever the mixture.
    lines = list(train)
    backward = [(MARKER_CHARS[REVERSE] + l, u) for u, l in train] if config.directions == "both" else []
    from .keywords import keyword_lines  # jieba is loaded only when keyword lines are asked for

    keyworded, kw_stats = keyword_lines(train, config.keywords, config.seed, config.processes) \
        if config.keywords else ([], {})
    keyworded = [(h, l) for h, l in keyworded if len(h) + len(l) + 3 <= config.seq_len]
    summary.lines = {"forward": len(lines), "backward": len(backward), "keywords": len(keyworded),
                     "keyword_stats": kw_stats}
    lines += backward + keyworded

    # 5) the token arrays and vocab.txt; the summary goes into meta.json (it holds no timings, so the bytes do
    #    not depend on the machine or on `processes`)
    write_dataset(config.out_dir, {"train": lines, "val": val, **splits}, tokenizer, config.seq_len,
                  info=summary.to_dict(), unknown_as_unk=config.vocab == "corpus")
    # the validation pairs as text too: `duilian evaluate --test DATA/val.NAME.tsv` scores a model on them
    for name, pairs in {"val": val, **splits}.items():
        (Path(config.out_dir) / f"{name}.tsv").write_text("".join(f"{u}\t{l}\n" for u, l in pairs), encoding="utf-8")
    return summary


def _held_out(pair: tuple[str, str], keys: frozenset[str]) -> bool:
    from .heldout import heldout_key

    return heldout_key(pair[0]) in keys or heldout_key(pair[1]) in keys
