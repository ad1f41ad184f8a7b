"""Keywords for a couplet: the few words a user would type to ask for it, taken from the couplet itself.

`duilian compose 春 福` writes a couplet about some words. The model learns that from training lines whose
prompt holds keywords before the couplet (tokenizer: `[CLS] 春 [KW] 平安 [KW] 上联 - 下联 [SEP]`); this
module chooses those keywords for `duilian prepare`. Per couplet chosen for a keyword line:

    1) candidates: jieba's TF-IDF top words of the couplet (nouns, verbs, adjectives, places, times: what a
       theme is made of; never a function word), KEYWORD_CANDIDATES of them;
    2) pick 1 to MAX_KEYWORDS of them, in random order (a user's order means nothing);
    3) SINGLE_CHAR_SHARE of the picked words become one of their own characters: users type 春, 福, 寿;
    4) RELATED_SHARE of them are replaced by a related word the couplet does not contain: one of the
       RELATED_NEIGHBOURS nearest words in the corpus's character co-occurrence space (duilian.hengpi's
       vectors; 婚 sits near 姻 缔 侣), so the model learns to write *about* a word, not only to copy it.

Every random choice is drawn from a generator seeded by (seed, couplet index), so the same corpus and seed
give the same lines whatever the number of processes. jieba is imported only here (it costs ~1.7 s to load
its dictionary), never on the path of `duilian generate`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .tokenizer import KEYWORD, MARKER_CHARS

KEYWORD_CANDIDATES = 5
"""TF-IDF words considered per couplet: a 7-character couplet has 4-6 words in all."""
MAX_KEYWORDS = 3
"""A keyword line has 1 to this many keywords."""
SINGLE_CHAR_SHARE = 0.3
"""Share of keywords shortened to one of their characters (a user asks for 春 as often as for 春风)."""
RELATED_SHARE = 0.2
"""Share of keywords replaced by a related word the couplet does not hold."""
RELATED_NEIGHBOURS = 8
"""A related word is drawn from this many nearest words (cosine of SIF-weighted character vectors)."""
MIN_WORD_COUNT = 3
"""A word must be a candidate in at least this many couplets to serve as another's related word."""
THEME_POS = ("n", "nr", "ns", "nz", "ng", "nt", "t", "s", "v", "vn", "vi", "a", "an", "ad", "i", "l")
"""jieba part-of-speech tags a theme word may have: nouns, names, places, times, verbs, adjectives, idioms."""

KW = MARKER_CHARS[KEYWORD]


def _jieba():
    import jieba
    import jieba.analyse

    jieba.setLogLevel(60)  # its "Building prefix dict" chatter is not ours to print
    return jieba.analyse


def candidates(upper: str, lower: str, k: int = KEYWORD_CANDIDATES) -> list[str]:
    """The couplet's likeliest theme words, best first (jieba TF-IDF over both lines, theme POS only)."""
    return _jieba().extract_tags(upper + "，" + lower, topK=k, allowPOS=THEME_POS)


@dataclass(frozen=True)
class Related:
    """Near neighbours among the words seen as candidates: for a word, words of related meaning."""

    words: list[str]
    vectors: np.ndarray
    """(W, d) float32 unit rows."""
    _near: dict = field(default_factory=dict, compare=False, repr=False)
    """word -> its neighbours: a corpus asks for the same few thousand words again and again."""

    @classmethod
    def build(cls, counts: Counter, min_count: int = MIN_WORD_COUNT) -> "Related":
        from .hengpi import _unit, load_pool

        pool = load_pool()
        words = sorted(w for w, n in counts.items() if n >= min_count)
        vectors = np.stack([cls._embed(pool, w) for w in words]) if words else np.zeros((0, 1), np.float32)
        return cls(words, _unit(vectors).astype(np.float32))

    @staticmethod
    def _embed(pool, word: str) -> np.ndarray:
        return pool.vector(word)

    def neighbours(self, word: str, k: int = RELATED_NEIGHBOURS) -> list[str]:
        """Up to k words nearest `word`, sharing no character with it (a word holding 春 is not news)."""
        if (word, k) not in self._near:
            self._near[word, k] = self._neighbours(word, k)
        return self._near[word, k]

    def _neighbours(self, word: str, k: int) -> list[str]:
        if not self.words:
            return []
        from .hengpi import _unit, load_pool

        v = _unit(self._embed(load_pool(), word)[None])[0]
        if not v.any():
            return []
        sims = self.vectors @ v
        m = min(len(sims), 4 * k + 8)
        top = np.argpartition(-sims, m - 1)[:m]
        order = top[np.lexsort((top, -sims[top]))]  # best first, ties by position: the same list every time
        chars = set(word)
        return [self.words[i] for i in order if not chars & set(self.words[i])][:k]


def choose(cands: list[str], couplet: str, related: Related | None, rng: np.random.Generator) -> list[str]:
    """1 to MAX_KEYWORDS keywords from a couplet's candidates (steps 2-4 of the module docstring)."""
    if not cands:
        return []
    k = int(rng.integers(1, min(MAX_KEYWORDS, len(cands)) + 1))
    picked = [cands[i] for i in rng.permutation(len(cands))[:k]]
    out = []
    for word in picked:
        r = rng.random()
        if r < RELATED_SHARE and related is not None:
            near = [w for w in related.neighbours(word) if not set(w) & set(couplet)]
            if near:
                word = near[int(rng.integers(len(near)))]
        elif r < RELATED_SHARE + SINGLE_CHAR_SHARE and len(word) > 1:
            word = word[int(rng.integers(len(word)))]
        if word not in out:
            out.append(word)
    return out


def keyword_head(words: Sequence[str], upper: str) -> str:
    """The text before '-' of a keyword line: each word followed by the [KW] marker, then the 上联."""
    return "".join(w + KW for w in words) + upper


def _candidates_of(chunk: list[tuple[str, str]]) -> list[list[str]]:
    return [candidates(u, l) for u, l in chunk]


def keyword_lines(pairs: Sequence[tuple[str, str]], share: float, seed: int,
                  processes: int = 1) -> tuple[list[tuple[str, str]], dict]:
    """Keyword lines for about `share` of `pairs` (chosen per pair by a seeded draw) -> (lines as
    (head, 下联) ready for the dataset writer, stats: lines written, keywords per line, related and single-character
    shares, and a few examples). jieba's tagger takes 1-8 ms a couplet (classical lines send it to its HMM), so
    `processes` share that part; the lines do not depend on it."""
    if share <= 0:
        return [], {"lines": 0}
    chosen = [i for i in range(len(pairs)) if np.random.default_rng([seed, i, 17]).random() < share]
    chunks = [[pairs[i] for i in chosen[j:j + 4096]] for j in range(0, len(chosen), 4096)]
    if processes > 1:
        import multiprocessing

        with multiprocessing.Pool(processes) as pool:
            found = [c for part in pool.imap(_candidates_of, chunks) for c in part]
    else:
        found = [c for chunk in chunks for c in _candidates_of(chunk)]
    cands = dict(zip(chosen, found))
    related = Related.build(Counter(w for c in cands.values() for w in c))
    lines, n_words, n_related, n_single = [], 0, 0, 0
    for i in chosen:
        upper, lower = pairs[i]
        words = choose(cands[i], upper + lower, related, np.random.default_rng([seed, i, 19]))
        if not words:
            continue
        lines.append((keyword_head(words, upper), lower))
        n_words += len(words)
        n_related += sum(not set(w) <= set(upper + lower) for w in words)
        n_single += sum(len(w) == 1 for w in words)
    stats = {"lines": len(lines), "share": share, "keywords_per_line": n_words / max(len(lines), 1),
             "related_share": n_related / max(n_words, 1), "single_char_share": n_single / max(n_words, 1),
             "related_vocabulary": len(related.words),
             "examples": [h.replace(KW, "|") + "-" + l for h, l in lines[:5]]}
    return lines, stats
