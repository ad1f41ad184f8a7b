"""A couplet from a few words: a theme, a name or an occasion -> 上联, 下联 and 横批 (`Couplets.compose`).

    c = duilian.load()
    c.compose(["春", "福"], length=7, n=5)                 # -> [ComposedCouplet(upper, lower, hengpi, ...)]
    c.compose(["平安"], occasion="乔迁", year=2027)

The conditioning is learned, not templated: the model was trained on lines whose prompt holds keywords taken
from the couplet itself (duilian.keywords; tokenizer: [CLS] 春 [KW] 福 [KW] 上联 - 下联 [SEP]). Composing asks it
to continue such a prompt:

    1) themes: the user's words, plus an occasion's words (themes.occasion; each candidate draws one, so the
       five candidates are about different sides of it) and a year's animal (themes.year);
    2) 上联: sampled from [CLS] 词 [KW] … under the decoder's masks: exactly `length` Han characters, ending on
       an oblique tone (仄), as a 上联 does;
    3) 下联: for each 上联, the best of a few, under every rule of the 下联 (api.lower_spec), its prompt the
       keywords + the 上联 + '-', so that it too is written about the theme;
    4) ranking: the mean of the two lines' scores, plus THEME_WEIGHT × the share of theme words the couplet
       carries (the word itself or a close relative, `carries`; the user's own words count double), best first;
       with an occasion, the best couplet of each theme set comes before the rest, so the answers are about
       different sides of it;
    5) 横批: three per couplet (duilian.hengpi), with the occasion's and the year's banners favoured.

A model trained without keyword lines cannot do this (it would read [KW] as noise): `compose` refuses it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Sequence

import numpy as np

from . import decode
from .hengpi import Hengpi
from .rules import FormChecks, check_pair
from .script import answer_script, char_forms, to_simplified, to_traditional
from .text import CoupletInputError, is_han, normalize

if TYPE_CHECKING:
    from .api import Couplets, Options

MAX_WORDS = 4
"""Theme words a prompt holds at most (the model was trained on 1-3; the occasion or year may add one)."""
MAX_WORD_CHARS = 4
THEME_WEIGHT = 0.5
"""Ranking bonus for a couplet that carries every theme word (nats per token, like the scores it is added to)."""
RELATIVE = 0.55
"""A character is a close relative of a word when their vectors in the corpus's co-occurrence space (hengpi's)
have at least this cosine: 春 ~ 岁 0.57, 花 0.58, 福 0.57; 春 ~ 秋 0.34, 山 0.29; 婚 ~ 姻 0.82."""
LOWERS_PER_UPPER = 3
"""下联 written per 上联; the best is kept."""
UPPERS_PER_RESULT = 3
"""上联 sampled per couplet asked for: the ranking then has a choice. On benchmarks/bench_compose.py (30 requests,
the `fwd` model) 2, with every theme word counted alike, carried the given words in 61% of the couplets; 3, with
the user's words counted double, in 63%. The server's work limit counts them (serve.COMPOSE_WORK)."""


@dataclass
class ComposedCouplet:
    upper: str
    lower: str
    score: float
    """Mean of the two lines' decoder scores + THEME_WEIGHT × theme coverage."""
    checks: FormChecks
    themes: tuple[str, ...]
    """The words this couplet was written about (the user's, an occasion word, the year's animal)."""
    carried: tuple[str, ...]
    """The themes it carries: the word itself, or a close relative (`carries`)."""
    hengpi: tuple[Hengpi, ...] = ()
    pos: float | None = None
    """词性对仗 of the two lines (Options.pos; see api.Candidate.pos)."""

    def to_dict(self) -> dict:
        return {"upper": self.upper, "lower": self.lower, "score": self.score, "valid": self.checks.valid,
                "checks": self.checks.to_dict(), "themes": list(self.themes), "carried": list(self.carried),
                "pos": self.pos, "hengpi": [{"text": h.text, "score": h.score} for h in self.hengpi]}


def clean_words(words: Sequence[str] | str) -> list[str]:
    """The theme words, normalised and in simplified; CoupletInputError for none, too many, or non-Chinese."""
    if isinstance(words, str):
        words = words.split()
    words = [normalize(w) for w in words]
    words = [w for w in words if w]
    if not words:
        raise CoupletInputError("give at least one theme word, e.g. 春 福")
    for w in words:
        if not all(is_han(ch) for ch in w):
            raise CoupletInputError(f"a theme word is Chinese characters only, not {w!r}")
        if len(w) > MAX_WORD_CHARS:
            raise CoupletInputError(f"a theme word has at most {MAX_WORD_CHARS} characters, not {w!r}")
    words = list(dict.fromkeys(to_simplified(w) for w in words))
    if len(words) > MAX_WORDS:
        raise CoupletInputError(f"give at most {MAX_WORDS} theme words, not {len(words)}")
    return words


@functools.lru_cache(maxsize=4096)
def _word_vector(word: str) -> np.ndarray:
    """A theme word's vector, computed once: a request asks `carries` about the same few words for each of its
    candidates. (Read only: the array is shared.)"""
    from .hengpi import load_pool

    return load_pool().vector(word)


def carries(word: str, couplet: str) -> bool:
    """Whether a couplet carries a theme word: the word itself, or a character that is a close relative of it
    (cosine >= RELATIVE between the character's and the word's co-occurrence vectors)."""
    if word in couplet:
        return True
    from .hengpi import load_pool

    pool = load_pool()
    w = _word_vector(word)
    chars = [ch for ch in dict.fromkeys(couplet) if is_han(ch)]
    if not chars or not w.any():
        return False
    return bool((pool.char_vectors[pool.char_rows("".join(chars))] @ w).max() >= RELATIVE)


def theme_sets(words: list[str], extra: Sequence[str], count: int, seed: int | None) -> list[list[str]]:
    """`count` keyword lists: the user's words, plus one of `extra` (an occasion's words) each, drawn without
    repeats while they last, in a seeded order; the user's words alone when there is no extra."""
    if not extra:
        return [list(words)]
    rng = np.random.default_rng([seed if seed is not None else 0, 31])
    pick = [extra[i] for i in rng.permutation(len(extra))]
    room = MAX_WORDS - len(words)
    if room <= 0:
        return [list(words)]
    return [words + [pick[i % len(pick)]] for i in range(count)]


def compose(c: "Couplets", words: Sequence[str] | str, length: int = 7, n: int = 5, occasion: str | None = None,
            year: int | None = None, opts: "Options | None" = None) -> list[ComposedCouplet]:
    """Up to n couplets about `words`, best first (the module docstring has the steps)."""
    from . import themes
    from .api import Options

    opts = opts or Options(n=n)
    info = c.model.config.duilian or {}
    kw_id = c.tokenizer.keyword_id
    if kw_id is None or not (info.get("lines") or {}).get("keywords"):
        raise CoupletInputError("this model was not trained with keyword lines, so it cannot compose; use a model "
                                "trained with `duilian prepare --keywords` (the default model is)")
    script = answer_script("".join(words) if not isinstance(words, str) else words, opts.script)
    words = clean_words(words)
    if not isinstance(length, int) or not 2 <= length <= c.max_chars:
        raise CoupletInputError(f"the couplet length must be between 2 and {c.max_chars}, not {length}")
    extra, favour = [], []
    if occasion is not None:
        occ = themes.occasion(occasion)  # ValueError naming the occasions
        extra = [w for w in occ.words if w not in words]
        favour += occ.banners
    if year is not None:
        y = themes.year(year)
        if y.animal not in words:
            words = words + [y.animal]
            words = words[:MAX_WORDS]
        favour = list(y.banners) + favour
    sets = theme_sets(words, extra, n, opts.seed)

    # 2) the 上联: about the themes, `length` Han characters, ending 仄
    uppers_per_set = max(1, math.ceil(UPPERS_PER_RESULT * n / len(sets)))
    prompts = [[c.tokenizer.cls_id] + [i for w in s for i in (*c._ids(w), kw_id)] for s in sets]
    specs = [decode.LineSpec(prompt=p, length=length, forced=[-1] * length, repeat_of=list(range(length)),
                             distinct=False, final_pos=length - 1, final_rule=decode.END_OBLIQUE,
                             seed=None if opts.seed is None else opts.seed + k) for k, p in enumerate(prompts)]
    search = replace(opts.search(), n=uppers_per_set, method="sample", first="sample")
    uppers = decode.generate(c.net, c.vocab, specs, search)

    # 3) the 下联 of each 上联, written about the themes too
    lower_opts = replace(opts, n=LOWERS_PER_UPPER)
    jobs, lower_specs = [], []
    for k, hyps in enumerate(uppers):
        for h in hyps:
            text = c.tokenizer.decode(h.tokens)
            spec = c.lower_spec(text, lower_opts)
            spec.prompt = prompts[k] + spec.prompt[1:]  # [CLS] 词 [KW] … 上联 -
            jobs.append((k, h, text))
            lower_specs.append(spec)
    lowers = decode.generate(c.net, c.vocab, lower_specs, lower_opts.search()) if lower_specs else []

    # 4) rank: the two lines' scores and the share of themes carried; one couplet per 上联
    found: dict[tuple[str, str], ComposedCouplet] = {}
    for (k, up, upper), lows in zip(jobs, lowers):
        if not lows:
            continue
        low = lows[0]
        lower = c.tokenizer.decode(low.tokens)
        carried = tuple(w for w in sets[k] if carries(w, upper + lower))
        # the user's own words count double: an occasion's word is a suggestion, the user's are the request
        own = sum(w in carried for w in words)
        score = (up.score + low.score) / 2 + THEME_WEIGHT * (len(carried) + own) / (len(sets[k]) + len(words))
        # checks: None until 5), where only the couplets returned are checked, on the text returned
        found.setdefault((upper, lower), ComposedCouplet(upper, lower, score, None, tuple(sets[k]), carried))
    # the best couplet of each theme set first (so an occasion's five answers are about five of its words), then
    # the rest by score
    ranked = sorted(found.values(), key=lambda x: -x.score)
    leaders = list({x.themes: x for x in reversed(ranked)}.values())  # the best of each set
    leaders.sort(key=lambda x: -x.score)
    best = (leaders + [x for x in ranked if all(x is not y for y in leaders)])[:n]

    # 5) 横批, and the answer's script
    from . import hengpi

    for x in best:
        banners = hengpi.suggest(x.upper, x.lower, k=opts.hengpi or HENGPI, favour=favour)
        if opts.pos:
            from .pos import parallelism

            x.pos = parallelism(x.upper, x.lower)
        if script == "traditional":
            x.upper, x.lower = to_traditional(x.upper), to_traditional(x.lower)
            banners = [Hengpi(to_traditional(h.text), h.score) for h in banners]
        # checked once, on the text the user gets, under the rules the 下联 was decoded with
        x.checks = check_pair(x.upper, x.lower, opts.allow_upper_chars, char_forms)
        x.hengpi = tuple(banners)
    return best


HENGPI = 3
"""横批 per composed couplet unless the options ask for another number."""
