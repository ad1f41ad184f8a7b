"""Constrained decoding: write lines that are right in form, one masked next-token step at a time.

The engine knows nothing about text, and nothing of the model but its decoding interface (gpt.GPT.start, then
select and step on the KV cache it returns). It sees token ids and, for each line to write, a `LineSpec`: the prompt
ids and the per-position rules that rules.lower_spec derives from the 上联 (length, punctuation, 重字, no copying,
the final tone). Every rule is a mask on the next-token logits applied *while* decoding, so a candidate is right
in form by construction rather than filtered afterwards:

    step t, row r:   allowed[r] = one Han character                          (never [SEP], Latin, ##, digits)
                                  & not the 上联's character at t              (no copy in place)
                                  & not a token this row already used         (重字 only where the 上联 has it)
                                  & not any 上联 character                     (unless allow_upper_chars)
                                  & tone rule at the final position           (仄 上联 ending -> 平 下联 ending)
                     forced[r]  = the 上联's punctuation mark at t, or the row's own token at the earlier
                                  position the 上联 repeats here              (overrides the mask)

If the softer rules would leave a row with no token at all (possible only with tiny vocabularies), they are
dropped for that row, softest first, so the row still gets a single Han character and never junk.

Search is sampling (temperature, top-k, top-p; one uniform draw per row per step, from a generator seeded per
line so a seeded request gives the same output whatever else is in the batch; lines whose samples repeat
are topped up with more draws; a line with a 重字 copy draws more rows and keeps those whose forced copies the
model finds likely, in proportion) or beam search (the beams are distinct by construction). Lines of any length
are decoded together: the matmuls take all rows at once, attention runs per run of equal prompt lengths
(each with its own KV cache: no padding, no mask), so each line computes what it would alone. A line that
is written leaves the batch (a sampled row, or all the beams of a line), so a short line costs nothing after
its end. The prompt is prefilled once per line, then its KV cache is expanded to the candidate rows.

Sampling draws from the model's distribution over what the masks allow. Candidates are ranked by score = mean
per-token log-prob, each token's among all Han characters (and the punctuation mark forced there), not
renormalised over what the masks leave: a forced 重字 copy, a forced comma or a forbidden character the model
wanted costs what the model says, so lines that fit the form of their own accord rank first; plus RULE_WEIGHT
× rule score (fraction of rhythm positions whose tones oppose the 上联's); plus, where the caller gives one, a
per-token `bias` (api's calibration: characters the model writes far more often than people do cost more). The
bias steers the beam and the ranking, never what a sample draws from, and is kept out of the reported log-prob.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
import torch.nn.functional as F

# Tone classes as stored in Vocab.tone and LineSpec.rhythm (rules.tone_of: None / 平 / 仄).
TONE_NONE, TONE_LEVEL, TONE_OBLIQUE = 0, 1, 2
# Rules for the tone of a line's last character (LineSpec.final_rule).
END_ANY, END_LEVEL, END_OBLIQUE = 0, 1, 2

RULE_WEIGHT = 0.5
"""Weight of the rule score (0..1, tone opposition at rhythm positions) against the mean per-token log-prob
(nats, typically -1 .. -4 for a trained model): full opposition is worth half a nat per token."""
RULE_NEUTRAL = 0.5
"""Rule score of a line with no rhythm position where both tones are known."""
MAX_BATCH_POSITIONS = 4096
"""Most rows × positions decoded together (each row's prompt and line): bounds the KV cache (about 300 MB for
the base model; 256 rows of 7-character couplets, 61 of 32-character ones) and the [rows, vocab] masks."""
MAX_TEMPERATURE = 5.0
"""Highest sampling temperature accepted: at 5 the allowed tokens are already close to equally likely."""
GREEDY_BELOW = 1e-3
"""Temperatures below this sample greedily (the likeliest allowed token, one candidate). Dividing log-probs
by them puts all the mass on the argmax anyway (a 0.01-nat lead becomes a factor e^10), and much smaller
divisors overflow float32 to -inf everywhere, which would turn the softmax into NaN."""
LEAD_BEAM = 5
"""Beam width of the leading candidate with Search(first="beam"): on the test split, beam 5's first candidate
scored higher BLEU than beam 10's (benchmarks/decoding_settings.py)."""
FIRSTS = ("sample", "greedy", "beam")
SAMPLE_ROUNDS = 3
"""Sampling draws n rows per line, then up to SAMPLE_ROUNDS - 1 more rounds (twice the number still
missing) for lines whose samples were duplicates."""
COPY_DRAWS = 4
"""A sampled line with a 重字 copy draws this many rows per candidate and keeps the ones whose copies the model
finds likeliest, in proportion (_sample): on 100 test 上联 with a double, a judge preferred the kept lines 51 to 30."""


# --- inputs -----------------------------------------------------------------------------------------------------
@dataclass
class Vocab:
    """The tokens the decoder may emit, built once per tokenizer (api.vocab_tables). The decoder works in this
    sub-vocabulary (~7.3k of 21,128 ids): the output layer is computed for these rows only."""

    ids: torch.Tensor
    """[V'] long: vocabulary ids of the emittable tokens, single Han characters and punctuation marks."""
    han: torch.Tensor
    """[V'] bool: True for Han characters (free positions); punctuation is emitted only where forced."""
    tone: torch.Tensor
    """[V'] int8: TONE_NONE / TONE_LEVEL / TONE_OBLIQUE."""
    size: int
    """Size of the full vocabulary."""
    to_sub: torch.Tensor = field(init=False)
    """[size] long: sub-vocabulary index of each vocabulary id, -1 where it may not be emitted."""

    def __post_init__(self):
        # Kept on the CPU: it only translates the LineSpecs.
        self.to_sub = torch.full((self.size,), -1, dtype=torch.long)
        self.to_sub[self.ids.cpu()] = torch.arange(len(self.ids))

    def to(self, device) -> "Vocab":
        return Vocab(self.ids.to(device), self.han.to(device), self.tone.to(device), self.size)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class LineSpec:
    """One line to write: its prompt and the rules for each of its `length` positions (vocabulary ids)."""

    prompt: list[int]
    """Token ids the model continues, e.g. [CLS] 上联 '-'."""
    length: int
    """Exactly this many tokens are written, then decoding stops."""
    forced: list[int]
    """Per position: a token id that must be written there (the 上联's punctuation, a 藏头 character) or -1."""
    repeat_of: list[int]
    """Per position: itself, or the earlier position whose token is copied here (the 上联's 重字)."""
    distinct: bool = True
    """Positions that copy nothing may not reuse a token already written in this line."""
    banned_at: list[int] | None = None
    """Per position: a token id not allowed there (the 上联's character at that position) or -1."""
    banned: list[int] = field(default_factory=list)
    """Token ids not allowed anywhere (the 上联's characters, unless allow_upper_chars)."""
    final_pos: int = -1
    """Position the final-tone rule applies to (the first occurrence of the last character), -1 for none."""
    final_rule: int = END_ANY
    """END_ANY, END_LEVEL (the 上联 ends 仄) or END_OBLIQUE (a 藏头 上联)."""
    rhythm: list[int] | None = None
    """Per position: the 上联's tone at rhythm positions (TONE_*), TONE_NONE elsewhere; for the rule score."""
    seed: int | None = None
    """Seeds this line's own generator; None draws from torch's global generator."""
    temperature: float | None = None
    """This line's sampling temperature; None: the Search's. Lines with different temperatures, top_k and top_p
    share a batch (each row samples with its own), but not greedy and sampled lines: see `generate`."""
    top_k: int | None = None
    """This line's top-k; None: the Search's."""
    top_p: float | None = None
    """This line's top-p; None: the Search's."""
    wanted: Callable[[], bool] | None = None
    """Whether the line is still wanted, asked before each decoding step; once it says False the line's rows
    leave the batch and the line gets no candidates (a server's request whose client has left). None: always."""

    def __post_init__(self):
        n = self.length
        if n < 1:
            raise ValueError("a line has at least one position")
        _check_sampling(self.temperature, self.top_k, self.top_p)
        self.banned_at = self.banned_at if self.banned_at is not None else [-1] * n
        self.rhythm = self.rhythm if self.rhythm is not None else [TONE_NONE] * n
        for name in ("forced", "repeat_of", "banned_at", "rhythm"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"LineSpec.{name} has {len(getattr(self, name))} entries for {n} positions")
        if any(not 0 <= j <= i for i, j in enumerate(self.repeat_of)):
            raise ValueError("LineSpec.repeat_of must point at the same or an earlier position")


@dataclass(frozen=True)
class Search:
    """How candidates are searched for."""

    method: str = "sample"
    """"sample" or "beam"."""
    n: int = 5
    """Distinct candidates wanted per line: the beam width, or the rows sampled per line. Fewer come back when
    the rules leave fewer, when SAMPLE_ROUNDS of sampling found no more, and with temperature 0 (greedy: one)."""
    temperature: float = 1.0
    """Sampling temperature in [0, MAX_TEMPERATURE]; below GREEDY_BELOW (0 included) it is greedy (one
    candidate)."""
    top_k: int = 0
    """Sample among the k most likely allowed tokens; 0 = all."""
    top_p: float = 1.0
    """Nucleus sampling: the smallest set of allowed tokens whose probability reaches top_p; 1 = all."""
    first: str = "sample"
    """With sampling, where the first candidate comes from (beam search ignores it): "sample" (like the others),
    "greedy" (one row of each line takes the likeliest allowed token at every step, so the greedy line is always
    a candidate, ranked by score), or "beam" (the best line of a beam search of width LEAD_BEAM leads, then the
    samples that differ from it, best first: the first candidate is the most likely line the search can find,
    the others vary)."""

    leads: int = 1
    """With first="beam": how many of the beam search's lines lead (best first) before the samples. More than one
    gives a reranker (api's noisy channel) the beam's alternatives as well; up to LEAD_BEAM + n - 1 come back."""

    @property
    def greedy(self) -> bool:
        return self.method == "sample" and self.temperature < GREEDY_BELOW

    def __post_init__(self):
        if self.method not in ("sample", "beam"):
            raise ValueError(f"method must be 'sample' or 'beam', not {self.method!r}")
        if not 1 <= self.n <= 64:
            raise ValueError(f"n must be between 1 and 64, not {self.n}")
        if self.first not in FIRSTS:
            raise ValueError(f"first must be one of {', '.join(FIRSTS)}, not {self.first!r}")
        _check_sampling(self.temperature, self.top_k, self.top_p)
        if not 1 <= self.leads <= LEAD_BEAM:
            raise ValueError(f"leads must be between 1 and {LEAD_BEAM}, not {self.leads}")


def _check_sampling(temperature: float | None, top_k: int | None, top_p: float | None) -> None:
    """ValueError for a sampling option out of range (None: not given)."""
    if temperature is not None and not 0 <= temperature <= MAX_TEMPERATURE:  # NaN fails both comparisons
        raise ValueError(f"temperature must be between 0 and {MAX_TEMPERATURE:g}, not {temperature}")
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), not {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], not {top_p}")


@dataclass
class Sampling:
    """The sampling options of each row (R rows): lines with different options share a batch, and each row
    samples exactly as it would alone."""

    temperature: torch.Tensor
    """[R] float32."""
    top_k: torch.Tensor
    """[R] long; 0 = all."""
    top_p: torch.Tensor
    """[R] float32; 1 = all."""

    @classmethod
    def of(cls, specs: list["LineSpec"], search: "Search", device=None) -> "Sampling":
        """One row per spec: its own options where it has them, else the search's."""
        def own(name: str) -> list:
            return [getattr(search, name) if getattr(s, name) is None else getattr(s, name) for s in specs]

        return cls(temperature=torch.tensor(own("temperature"), dtype=torch.float32, device=device),
                   top_k=torch.tensor(own("top_k"), dtype=torch.long, device=device),
                   top_p=torch.tensor(own("top_p"), dtype=torch.float32, device=device))

    @classmethod
    def uniform(cls, search: "Search", rows: int, device=None) -> "Sampling":
        """`rows` rows with the search's own options."""
        full = lambda value, dtype: torch.full((rows,), value, dtype=dtype, device=device)  # noqa: E731
        return cls(full(search.temperature, torch.float32), full(search.top_k, torch.long),
                   full(search.top_p, torch.float32))

    def take(self, index: torch.Tensor) -> "Sampling":
        """The options of rows `index` (a line's options for each of its rows, or the live rows')."""
        return Sampling(self.temperature[index], self.top_k[index], self.top_p[index])


@dataclass
class Hypothesis:
    """One written line, in vocabulary ids, with its score breakdown."""

    tokens: list[int]
    logprob: float
    """Mean per-token log-prob, each token's among all Han characters and the mark forced at its place (the
    masks decide what is written, not how it counts; _write)."""
    rule_score: float
    score: float
    """logprob + the mean bias of its tokens (generate's `bias`, 0 without one) + RULE_WEIGHT × rule_score."""
    beam: bool = False
    """Found by beam search (else sampled): a reranker may pick its lead among the beams, then keeps the samples,
    which differ more from each other, for the rest."""


# --- constraints as tensors -------------------------------------------------------------------------------------
@dataclass
class Rules:
    """The LineSpecs of one batch (B lines, the longest L positions) as tensors in sub-vocabulary indices.

    A shorter line's positions past its end force a filler token; its rows leave the batch at its end (_write),
    so the filler is never decoded or scored and is only the tensors' padding."""

    forced: torch.Tensor  # (B, L) long, -1 = free
    repeat_of: torch.Tensor  # (B, L) long
    banned_at: torch.Tensor  # (B, L) long, -1 = none
    banned: torch.Tensor  # (B, V') bool
    free: torch.Tensor  # (B, V') bool: Han and not banned, where a free position starts from
    distinct: torch.Tensor  # (B,) bool
    final_pos: torch.Tensor  # (B,) long, -1 = none
    final_rule: torch.Tensor  # (B,) long
    rhythm: torch.Tensor  # (B, L) int8
    lengths: torch.Tensor  # (B,) long, each line's own length
    room: torch.Tensor  # (B,) long: fewest tokens `free` leaves at any position (the final one: of the right tone)

    @classmethod
    def build(cls, specs: list[LineSpec], vocab: Vocab) -> "Rules":
        sub = vocab.to_sub
        L = max(s.length for s in specs)
        filler = int(vocab.han.cpu().nonzero()[0])

        def padded(rows, fill):  # per-line lists -> (B, L), positions past a line's end = fill (or own index)
            return [r + [(i if fill is None else fill) for i in range(len(r), L)] for r in rows]

        def ids(rows, per_position=True):  # vocabulary ids -> sub indices, -1 kept (and unknown ids become -1)
            t = torch.tensor(padded(rows, -1) if per_position else rows, dtype=torch.long)
            return torch.where(t >= 0, sub[t.clamp(min=0)], t)

        forced = ids([s.forced for s in specs])
        if ((forced < 0) & (torch.tensor(padded([s.forced for s in specs], -1)) >= 0)).any():
            raise ValueError("a forced token is not one the decoder may emit")
        lengths = torch.tensor([s.length for s in specs], dtype=torch.long)
        forced[torch.arange(L)[None, :] >= lengths[:, None]] = filler
        banned = torch.zeros(len(specs), len(vocab), dtype=torch.bool)
        for b, s in enumerate(specs):
            t = ids(s.banned, per_position=False) if s.banned else torch.empty(0, dtype=torch.long)
            banned[b, t[t >= 0]] = True
        free = vocab.han.cpu() & ~banned
        final_rule = torch.tensor([s.final_rule for s in specs], dtype=torch.long)
        tone_ok = _final_tone_ok(final_rule, Vocab(vocab.ids.cpu(), vocab.han.cpu(), vocab.tone.cpu(), vocab.size))
        return cls(
            forced=forced,
            repeat_of=torch.tensor(padded([s.repeat_of for s in specs], None), dtype=torch.long),
            banned_at=ids([s.banned_at for s in specs]),
            banned=banned,
            free=free,
            distinct=torch.tensor([s.distinct for s in specs]),
            final_pos=torch.tensor([s.final_pos for s in specs], dtype=torch.long),
            final_rule=final_rule,
            rhythm=torch.tensor(padded([s.rhythm for s in specs], TONE_NONE), dtype=torch.int8),
            lengths=lengths,
            room=torch.minimum(free.sum(1), (free & tone_ok).sum(1)),
        )

    def to(self, device) -> "Rules":
        return Rules(**{k: v.to(device) for k, v in self.__dict__.items()})


def allowed_tokens(rules: Rules, vocab: Vocab, rows: torch.Tensor, t: int, out: torch.Tensor) -> torch.Tensor:
    """The mask for position t -> allowed [R, V'] bool.

    rows [R]: the line (index into `rules`) of each row; out [R, L]: tokens written so far (sub indices, the
    first t positions). Every row allows at least one token.
    """
    R = rows.numel()
    ar = torch.arange(R, device=rows.device)
    # All rules at once (few passes over [R, V']: this runs for every row at every step).
    allowed = rules.free[rows]  # one Han character, none of the 上联's
    if t > 0:  # 重字 only where the 上联 has them: clear the row's own t tokens, not a pass over [R, V']
        distinct_rows = rules.distinct[rows].nonzero()[:, 0]
        allowed[distinct_rows[:, None], out[distinct_rows, :t]] = False
    at = rules.banned_at[rows, t]  # (R,) no copy in place
    allowed[ar[at >= 0], at[at >= 0]] = False
    final = (rules.final_pos[rows] == t).nonzero()[:, 0]
    if final.numel():
        allowed[final] &= _final_tone_ok(rules.final_rule[rows[final]], vocab)
    # Rows the rules leave with nothing (only with tiny vocabularies). By step t a row has ruled out at most
    # t used tokens and one banned here, so with more room than that no row needs the pass over [R, V'].
    if int(rules.room[rows].min()) <= t + 1:
        stuck = ~allowed.any(dim=1)
        if stuck.any():
            allowed[stuck] = _relaxed(rules, vocab, rows[stuck], t, out[stuck])
    # Forced tokens override the mask: the 上联's punctuation, fixed characters, and copies of this row's own
    # token where the 上联 repeats a character.
    forced = rules.forced[rows, t]
    src = rules.repeat_of[rows, t]
    if t > 0:
        copy = out.gather(1, src.clamp(max=t - 1)[:, None])[:, 0]
        forced = torch.where(src < t, copy, forced)
    has = forced >= 0
    if has.any():
        allowed[has] = False
        allowed[ar[has], forced[has]] = True
    return allowed


def _final_tone_ok(rule: torch.Tensor, vocab: Vocab) -> torch.Tensor:
    """rule [R] (END_*) -> [R, V'] bool: the tokens whose tone the final-tone rule allows."""
    rule, tone = rule[:, None], vocab.tone[None, :]
    return ((rule == END_ANY) | ((rule == END_LEVEL) & (tone == TONE_LEVEL))
            | ((rule == END_OBLIQUE) & (tone == TONE_OBLIQUE)))


def _relaxed(rules: Rules, vocab: Vocab, rows: torch.Tensor, t: int, out: torch.Tensor) -> torch.Tensor:
    """The mask for rows that the rules leave with no token: the softer rules, hardest first, each kept only
    if the row still has a token left -> [R, V'] bool, at least one Han character per row."""
    R, V = rows.numel(), len(vocab)
    used = torch.zeros(R, V, dtype=torch.bool, device=rows.device)  # tokens each row has written
    used.scatter_(1, out[:, :t], True)
    ar = torch.arange(R, device=rows.device)
    allowed = vocab.han.expand(R, V).clone()  # a free position takes one Han character
    at = rules.banned_at[rows, t]
    no_copy_here = torch.ones(R, V, dtype=torch.bool, device=rows.device)
    no_copy_here[ar[at >= 0], at[at >= 0]] = False
    final = rules.final_pos[rows] == t
    layers = [
        no_copy_here,
        ~(used & rules.distinct[rows, None]),
        ~rules.banned[rows],
        _final_tone_ok(torch.where(final, rules.final_rule[rows], END_ANY), vocab),
    ]
    for layer in layers:
        tightened = allowed & layer
        allowed = torch.where(tightened.any(dim=1, keepdim=True), tightened, allowed)
    return allowed


def rule_scores(rules: Rules, vocab: Vocab, rows: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """[R] fraction of rhythm positions (both tones known) where the row's tone opposes the 上联's."""
    upper = rules.rhythm[rows]  # (R, L)
    lower = vocab.tone[out]  # (R, L)
    counted = (upper != TONE_NONE) & (lower != TONE_NONE)
    opposed = (counted & (upper != lower)).sum(1)
    n = counted.sum(1)
    return torch.where(n > 0, opposed / n.clamp(min=1), torch.full_like(opposed, RULE_NEUTRAL, dtype=torch.float))


# --- search -----------------------------------------------------------------------------------------------------
def pick(logits: torch.Tensor, u: torch.Tensor, search: Search, rows: Sampling | None = None) -> torch.Tensor:
    """Sample one token per row from masked log-probs [R, V'] (log_softmax output, -inf = not allowed) with
    uniforms u [R] in [0, 1), each row with its own temperature, top-k and top-p (`rows`; None: the search's).

    Inverse-CDF sampling: one draw per row keeps seeded rows independent of the rest of the batch. Every step
    below works row by row, with each row's own options, so a row samples what it would sample alone.
    """
    if search.greedy:
        return logits.argmax(dim=1)
    if rows is None:
        rows = Sampling.uniform(search, logits.shape[0], logits.device)
    # The decoder passes log-probs, so at temperature 1 exp() is already the distribution.
    one = rows.temperature == 1
    if bool(one.all()):
        probs = logits.exp()
    else:
        probs = torch.softmax(logits / rows.temperature[:, None], dim=1)
        if bool(one.any()):
            probs[one] = logits[one].exp()
    # top-k: each row with one keeps its k likeliest tokens (ties included); one topk per distinct k, as a
    # small k costs much less than the largest.
    with_k = (rows.top_k > 0).nonzero()[:, 0]
    for k in rows.top_k[with_k].unique().tolist():
        r = with_k[rows.top_k[with_k] == k]
        kept = probs[r]
        kth = kept.topk(min(k, probs.shape[1]), dim=1).values[:, -1:]
        probs[r] = torch.where(kept >= kth, kept, 0.0)
    # top-p: the likeliest tokens until their mass reaches top_p. Rows that top-k has left with few tokens sort
    # only those (the rest are zeros, which sort last), the others their whole distribution.
    nucleus = rows.top_p < 1
    for r in ((nucleus & (rows.top_k > 0)).nonzero()[:, 0], (nucleus & (rows.top_k == 0)).nonzero()[:, 0]):
        if r.numel():
            probs[r] = _nucleus(probs[r], rows.top_p[r])
    cdf = probs.cumsum(dim=1)
    x = (u.to(cdf) * cdf[:, -1])[:, None]
    token = torch.searchsorted(cdf, x, right=True)[:, 0].clamp(max=probs.shape[1] - 1)
    # Rounding can land on a zero-probability token at the very end of the cdf: take the likeliest instead.
    bad = probs.gather(1, token[:, None])[:, 0] <= 0
    return torch.where(bad, logits.argmax(dim=1), token) if bool(bad.any()) else token


def _nucleus(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """probs [R, V] with each row cut to its nucleus: its likeliest tokens, in order, while the mass before each
    is below top_p [R] of the row's total (the token that reaches it included), the others 0.

    Computed as a full descending sort would compute it (the same cumulative sums, and the total summed over
    the whole sorted row) but sorting only the nonzero head when it is short: after top-k, a row holds k
    tokens, and sorting thousands of zeros cost more than the model's step for the row."""
    R, V = probs.shape
    width = int((probs > 0).sum(1).max())
    head, order = probs.topk(width, dim=1) if 4 * width < V else _sort_descending(probs)  # (R, width) descending
    before = head.cumsum(1) - head  # mass of the more likely tokens
    mass = top_p[:, None] * F.pad(head, (0, V - head.shape[1])).sum(1, keepdim=True)  # summed as the whole row
    return torch.zeros_like(probs).scatter_(1, order, torch.where(before < mass, head, 0.0))


def _sort_descending(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """probs [R, V] (>= 0) sorted in each row, largest first, ties by index -> (values, indices).

    The values are exactly those of probs.sort(dim=1, descending=True), but top-p sorts every sampled row's whole
    distribution at every step, and torch's row-wise float sort costs more than the model's own work for that
    row. A non-negative float's bits order like the float, so one int64 key per element (row, then value
    descending, then index) sorts the whole batch in a single 1-D stable sort, which torch does by radix sort:
    2-3x faster for 5-80 rows of 7,000 tokens."""
    R, V = probs.shape
    index_bits = max(1, (V - 1).bit_length())
    value = (~probs.contiguous().view(torch.int32)).to(torch.int64) + (1 << 31)  # larger value: smaller key
    key = (torch.arange(R, device=probs.device)[:, None] << (31 + index_bits)) | (value << index_bits) \
        | torch.arange(V, device=probs.device)
    order = key.view(-1).sort(stable=True).values.view(R, V) & ((1 << index_bits) - 1)
    return probs.gather(1, order), order


def generate(net, vocab: Vocab, specs: list[LineSpec], search: Search,
             bias: torch.Tensor | None = None) -> list[list[Hypothesis]]:
    """Write candidates for each spec -> per spec, up to search.n distinct hypotheses, best first.

    net: a gpt.GPT made for decoding (GPT.for_decoding(vocab.ids), whose output layer computes the vocabulary's
    tokens only), or anything with the same start -> (state, logits), state.select / state.step (gpt.Recompute).
    Specs are grouped by (prompt length, line length). Lines may sample with options of their own
    (LineSpec.temperature, top_k, top_p), but greedy and sampled lines change the search's shape (one row per line,
    no lead beam), so a line's temperature must be greedy exactly when the search's is. A line no longer `wanted` is
    left out, or leaves its pass at the next step; it gets [].
    bias: [V'] added to each written token's score (the beam grows by it, lines rank by it); samples still draw
    from the model's distribution, and Hypothesis.logprob leaves it out. None: no bias.
    """
    if bias is not None and bias.shape != vocab.ids.shape:
        raise ValueError(f"bias has shape {tuple(bias.shape)}, the sub-vocabulary {tuple(vocab.ids.shape)}")
    if search.method == "sample":
        for s in specs:
            if s.temperature is not None and (s.temperature < GREEDY_BELOW) != search.greedy:
                raise ValueError(f"a line's temperature {s.temperature} and the search's {search.temperature} are "
                                 f"not both greedy (below {GREEDY_BELOW:g}) or both sampled: decode them apart")
    if search.method == "sample" and search.first == "beam" and not search.greedy:
        return _beam_then_samples(net, vocab, specs, search, bias)
    results: list[list[Hypothesis]] = [[] for _ in specs]
    device = vocab.ids.device
    run = _beam if search.method == "beam" else _sample
    with torch.inference_mode():
        for chunk in _chunks(specs, 1 if search.greedy else search.n):
            for i, hyps in zip(chunk, run(net, vocab, [specs[i] for i in chunk], search, device, bias=bias)):
                results[i] = hyps if _wanted(specs[i]) else []
    return results


def _chunks(specs: list[LineSpec], rows_per_line: int):
    """The lines still wanted (indices into specs), in chunks to decode together, each sorted by prompt length
    (equal lengths next to each other, as GPT.start wants them).

    A line's rows leave the batch once it is written (samples and beams alike), so one pass costs no more than
    the lines' own steps: all lengths go together, in chunks bounded by the KV cache they allocate,
    MAX_BATCH_POSITIONS rows x positions (each run of equal prompt lengths: its prompt and its longest line).
    A chunk's lines are checked again just before it is yielded: one withdrawn meanwhile is left out."""
    chunks: list[list[int]] = []
    runs: dict[int, int] = {}  # prompt length -> the longest line among the current chunk's
    lines: dict[int, int] = {}  # prompt length -> the current chunk's lines of that prompt length
    size = 0  # positions the current chunk allocates
    kept = [i for i, s in enumerate(specs) if _wanted(s)]  # a line withdrawn already is never decoded
    for i in sorted(kept, key=lambda i: (specs[i].length, len(specs[i].prompt))):
        p, length = len(specs[i].prompt), specs[i].length
        grown = size - lines.get(p, 0) * rows_per_line * (p + runs.get(p, 0)) \
            + (lines.get(p, 0) + 1) * rows_per_line * (p + max(length, runs.get(p, 0)))
        if chunks and grown <= MAX_BATCH_POSITIONS:
            chunks[-1].append(i)
        else:
            chunks.append([i])
            runs, lines = {}, {}
            grown = rows_per_line * (p + length)
        runs[p], lines[p], size = max(length, runs.get(p, 0)), lines.get(p, 0) + 1, grown
    for chunk in chunks:
        chunk = sorted((i for i in chunk if _wanted(specs[i])), key=lambda i: len(specs[i].prompt))
        if chunk:
            yield chunk


def _wanted(spec: LineSpec) -> bool:
    return spec.wanted is None or bool(spec.wanted())


def _withdrawn(specs: list[LineSpec]) -> Callable[[], list[int]] | None:
    """A check for _write: the lines (indices into specs) no longer wanted; None when no line can be withdrawn."""
    asks = [(b, s.wanted) for b, s in enumerate(specs) if s.wanted is not None]
    if not asks:
        return None
    return lambda: [b for b, wanted in asks if not wanted()]


def _beam_then_samples(net, vocab: Vocab, specs: list[LineSpec], search: Search,
                       bias: torch.Tensor | None = None) -> list[list[Hypothesis]]:
    """Search(first="beam"): per line, the best `search.leads` lines of a LEAD_BEAM-wide beam search, then up to
    n - 1 samples that differ from them, best first (n are drawn, so repeats of the leads still leave n - 1). Both
    searches start from one prefill of each chunk's prompts."""
    lead_search, sample_search = Search(method="beam", n=LEAD_BEAM), replace(search, first="sample")
    out: list[list[Hypothesis]] = [[] for _ in specs]
    device = vocab.ids.device
    with torch.inference_mode():
        for chunk in _chunks(specs, max(LEAD_BEAM, search.n)):
            lines = [specs[i] for i in chunk]
            start = _start(net, lines)  # each search expands it to its own rows (a copy): it stays as prefilled
            leads = _beam(net, vocab, lines, lead_search, device, start, bias)
            samples = (_sample(net, vocab, lines, sample_search, device, start, bias) if search.n > 1
                       else [[]] * len(lines))
            for i, lead, rest in zip(chunk, leads, samples):
                head = lead[:search.leads]
                if _wanted(specs[i]):
                    seen = {tuple(h.tokens) for h in head}
                    tail = [h for h in rest if tuple(h.tokens) not in seen]
                    out[i] = head + tail[:search.n - 1 if search.leads > 1 else search.n - len(head)]
    return out


def _write(state, logits, rules: Rules, vocab: Vocab, rows: torch.Tensor, length: int, choose,
           withdrawn: Callable[[], list[int]] | None = None, bias: torch.Tensor | None = None):
    """The decoding loop shared by sampling and beam search.

    choose(t, logp [R_t, V'], score [R_t, V'], live [R_t]) -> (parent or None, token [R_t]) for the live rows
    (global indices `live`): logp is the model's distribution over the allowed tokens (what a sample draws from),
    score each allowed token's log-prob among all Han characters, plus `bias` (what a line scores; -inf where not
    allowed).
    parent (local indices into the live rows) reorders them (beams, within each line) first.
    A row leaves the batch once its line is written, so shorter lines cost nothing after their end (and need no
    cache room past it: GPT.start sizes each prompt-length run's cache to its own longest line).
    withdrawn() -> the lines (indices into `rules`) no longer wanted: asked before each step, their rows leave
    the batch (what they wrote is left unfinished), and the pass ends with the longest line left. Returns
    out [R, L], the tokens written (sub-vocabulary indices).
    """
    R = rows.numel()
    out = torch.zeros(R, length, dtype=torch.long, device=rows.device)
    live = torch.arange(R, device=rows.device)  # rows still in the batch
    row_len = rules.lengths[rows]
    end = length  # the longest line still in the batch
    for t in range(length):
        gone = withdrawn() if withdrawn is not None else None
        if gone:
            keep = ~torch.isin(rows[live], torch.tensor(gone, device=rows.device))
            if not bool(keep.all()):
                keep = keep.nonzero()[:, 0]
                state, live, logits = state.select(keep), live[keep], logits[keep]
                if not live.numel():
                    break
                end = int(row_len[live].max())
        if t >= end:  # the lines left are written
            break
        whole = live.numel() == R
        here = rows if whole else rows[live]
        allowed = allowed_tokens(rules, vocab, here, t, out if whole else out[live])
        logits = logits.float()
        # What the search draws from: the model's distribution over what the rules allow here.
        logp = torch.log_softmax(torch.where(allowed, logits, -math.inf), dim=1)  # (R_t, V')
        # What a line scores: each token's log-prob among all Han characters (and the mark forced here), not
        # renormalised over what the rules leave. The rules decide what is written; the model still says how
        # likely it is: a forced 重字 copy it would not write (柳柳青, 幸幸福福), a forced comma where it did not
        # expect a clause to end, a place where it wanted a character the rules forbid each cost what it says,
        # so the beam and the ranking prefer lines that fit the form of their own accord. (Judged on 63 lines
        # that changed: preferred 44 to 19; the model card has the table.)
        written = torch.where(vocab.han[None, :] | allowed, logits, -math.inf)
        score = torch.where(allowed, torch.log_softmax(written, dim=1), -math.inf)
        if bias is not None:
            score = score + bias
        parent, token = choose(t, logp, score, live)
        if parent is not None:  # beams: the rows of each line are reordered among themselves
            if whole:
                out = out[parent]
            else:
                out[live] = out[live[parent]]
            state = state.select(parent)
        out[live, t] = token
        if t + 1 < end:
            keep = row_len[live] > t + 1
            if not bool(keep.all()):
                keep = keep.nonzero()[:, 0]
                state, live, token = state.select(keep), live[keep], token[keep]
            if not live.numel():  # a top-up round may hold only lines shorter than the batch's longest
                break
            logits = state.step(vocab.ids[token])
    return out


def _start(net, specs: list[LineSpec]):
    """Prefill the prompts (specs come sorted by prompt length) -> (state, logits [B, V']), each with room for its
    own line (rows leave the batch at their line's end)."""
    return net.start([s.prompt for s in specs], [s.length for s in specs])


def _sample(net, vocab, specs, search, device, start=None, bias=None):
    """Sampled candidates for each spec; `start`: its prompts already prefilled (_start), else prefilled here.

    A 重字 copy is forced, so a sample picks a character before it knows it must write it twice (欢欢喜喜 ->
    富富图图). A line with copies draws COPY_DRAWS times the rows it needs, and keeps as many as it needs, chosen
    in proportion to the probability the model gives their forced copies (sampling-importance-resampling, without
    replacement by Gumbel-top-k): the kept lines follow the model's own distribution of lines that make those
    copies, instead of the one that is forced into them. A line still short of candidates after SAMPLE_ROUNDS
    takes the rows it left, best first: each is right in form."""
    B, L = len(specs), max(s.length for s in specs)
    rules = Rules.build(specs, vocab).to(device)
    state0, logits0 = start or _start(net, specs)
    gens = [torch.Generator().manual_seed(s.seed) if s.seed is not None else None for s in specs]
    found: list[dict[tuple, Hypothesis]] = [{} for _ in specs]
    left: list[dict[tuple, Hypothesis]] = [{} for _ in specs]  # rows the resampling did not keep
    copies = rules.repeat_of != torch.arange(L, device=device)[None, :]  # (B, L): a position copying an earlier one
    draws = [1 if search.greedy or not c else COPY_DRAWS for c in copies.any(1).tolist()]
    greedy = search.greedy
    want = 1 if greedy else search.n
    counts = [want * d for d in draws]
    options = Sampling.of(specs, search, device)  # (B,) each line's temperature, top-k, top-p
    withdrawn = _withdrawn(specs)
    for round_ in range(1 if greedy else SAMPLE_ROUNDS):
        if withdrawn is not None:
            for b in withdrawn():
                counts[b] = 0
        if not any(counts):
            break
        rows = torch.repeat_interleave(torch.arange(B), torch.tensor(counts)).to(device)
        # One uniform per row and position, drawn from the line's own generator: batch-independent.
        u = torch.cat([F.pad(torch.rand(k, s.length, generator=g), (0, L - s.length))
                       for k, g, s in zip(counts, gens, specs) if k]).to(device)
        # And one per row of a line with a copy, for choosing among its rows (_resample).
        keep_u = torch.cat([torch.rand(k, generator=g) if d > 1 else torch.zeros(k)
                            for k, g, d in zip(counts, gens, draws) if k]).to(device)
        copy_logp = torch.zeros(rows.numel(), device=device)  # (R,) the model's log-prob of the row's forced copies
        logp_sum = torch.zeros(rows.numel(), device=device)
        argmax_row = torch.zeros(rows.numel(), dtype=torch.bool, device=device)  # (R,) rows written greedily
        if search.first == "greedy" and round_ == 0:
            argmax_row[torch.tensor([0] + counts[:-1]).cumsum(0).to(device)] = True  # each line's first row
        row_options = options.take(rows)

        def choose(t, logp, score, live):
            token = pick(logp, u[live, t], search, row_options.take(live))
            token = torch.where(argmax_row[live], logp.argmax(dim=1), token)
            scored = score.gather(1, token[:, None])[:, 0]
            logp_sum.index_add_(0, live, scored)
            model = scored - bias[token] if bias is not None else scored
            copy_logp.index_add_(0, live, torch.where(copies[rows[live], t], model, 0.0))
            return None, token

        out = _write(state0.select(rows), logits0.index_select(0, rows), rules, vocab, rows, L, choose,
                     withdrawn=withdrawn, bias=bias)
        done = torch.ones_like(rows, dtype=torch.bool)
        if withdrawn is not None:  # rows of lines withdrawn while they were written are unfinished
            done = ~torch.isin(rows, torch.tensor(withdrawn(), dtype=torch.long, device=device))
        resampled = torch.repeat_interleave(torch.tensor([d > 1 for d in draws]), torch.tensor(counts)).to(device)
        kept = done & _resample(rows, copy_logp, keep_u, resampled, argmax_row,
                                [max(0, k // d) for k, d in zip(counts, draws)])
        scored, other = logp_sum / rules.lengths[rows], done & ~kept
        _collect(found, rows[kept], out[kept], scored[kept], rules, vocab, bias)
        _collect(left, rows[other], out[other], scored[other], rules, vocab, bias)
        counts = [0 if len(f) >= want else 2 * (want - len(f)) * d for f, d in zip(found, draws)]
    for f, spare in zip(found, left):
        for key, h in sorted(spare.items(), key=lambda kv: -kv[1].score):
            if len(f) >= want:
                break
            f.setdefault(key, h)
    return [sorted(f.values(), key=lambda h: -h.score)[:want] for f in found]


def _resample(rows, copy_logp, u, resampled, first, wanted: list[int]) -> torch.Tensor:
    """[R] bool: the rows each line keeps. A line whose rows are not `resampled` (no copy) keeps them all; another
    keeps wanted[line] of them, drawn without replacement in proportion to exp(copy_logp) (Gumbel-top-k: the
    largest copy_logp + Gumbel noise made from the uniforms u), its greedy first row (first) always among them."""
    keep = torch.ones_like(rows, dtype=torch.bool)
    if not bool(resampled.any()):
        return keep
    key = torch.where(first, math.inf, copy_logp - torch.log(-torch.log(u.clamp(min=1e-12, max=1 - 1e-7))))
    for line in rows[resampled].unique().tolist():
        mine = (rows == line).nonzero()[:, 0]
        keep[mine] = False
        keep[mine[key[mine].topk(min(wanted[line], mine.numel())).indices]] = True
    return keep


def _beam(net, vocab, specs, search, device, start=None, bias=None):
    """Beam search's candidates for each spec; `start`: its prompts already prefilled (_start), else here."""
    B, L, W = len(specs), max(s.length for s in specs), search.n
    rules = Rules.build(specs, vocab).to(device)
    state, logits = start or _start(net, specs)
    rows = torch.arange(B, device=device).repeat_interleave(W)  # (B*W,) line of each beam row
    # All beams start as the same empty line; only the first is alive so the first step fans out.
    beam = torch.full((B, W), -math.inf, device=device)
    beam[:, 0] = 0
    first_row = torch.arange(B, device=device)[:, None] * W

    def choose(t, logp, score, live):  # the beams grow by what the lines score (logp: what is allowed)
        V = score.shape[1]
        lines = live[::W] // W  # the lines still in the batch (a line's W rows stay together, in order)
        total = (beam[lines].view(-1, 1) + score).view(len(lines), W * V)
        beam[lines], flat = total.topk(W, dim=1)  # (B_t, W)
        return (first_row[:len(lines)] + flat // V).view(-1), (flat % V).view(-1)

    withdrawn = _withdrawn(specs)
    # A written line's beams leave the batch: past its end they would only write fillers, which add nothing to
    # their scores.
    out = _write(state.select(rows), logits.index_select(0, rows), rules, vocab, rows, L, choose, withdrawn=withdrawn,
                 bias=bias)
    found: list[dict[tuple, Hypothesis]] = [{} for _ in specs]
    alive = torch.isfinite(beam.view(-1))
    if withdrawn is not None:  # a withdrawn line's beams are unfinished
        alive &= ~torch.isin(rows, torch.tensor(withdrawn(), dtype=torch.long, device=device))
    _collect(found, rows[alive], out[alive], beam.view(-1)[alive] / rules.lengths[rows[alive]], rules, vocab, bias,
             beam=True)
    return [sorted(f.values(), key=lambda h: -h.score)[:W] for f in found]


def _collect(found, rows, out, scored, rules, vocab, bias=None, beam: bool = False):
    """Add finished rows to found[line] as Hypotheses (deduplicated by tokens). scored: each row's mean written
    score (its tokens' log-probs plus their bias)."""
    rule = rule_scores(rules, vocab, rows, out)
    score = scored + RULE_WEIGHT * rule
    logprob = scored
    if bias is not None:  # the log-prob reported is the model's alone
        length = rules.lengths[rows]
        inside = torch.arange(out.shape[1], device=out.device)[None, :] < length[:, None]
        logprob = scored - torch.where(inside, bias[out], 0.0).sum(1) / length
    tokens = vocab.ids[out].tolist()
    lengths = rules.lengths[rows].tolist()
    for r, toks, n, lp, rs, sc in zip(rows.tolist(), tokens, lengths, logprob.tolist(), rule.tolist(), score.tolist()):
        if not math.isfinite(sc):  # a row that met an impossible token: never a candidate, whatever its form
            continue
        toks = toks[:n]  # a shorter line's filler is cut off
        key = tuple(toks)
        if key not in found[r] or found[r][key].score < sc:
            found[r][key] = Hypothesis(tokens=toks, logprob=lp, rule_score=rs, score=sc, beam=beam)
