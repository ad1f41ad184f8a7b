"""Constrained decoding: write lines that are right in form, one masked next-token step at a time.

The engine knows nothing about text. It sees token ids and, for each line to write, a `LineSpec`: the prompt
ids and the per-position rules that api.py derives from the 上联 (length, punctuation, 重字, no copying, the
final tone). Every rule is a mask on the next-token logits applied *while* decoding, so a candidate is right
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
are topped up with more draws) or beam search (the beams are distinct by construction). Lines of any length
are decoded together: prompts are left-padded (the padding is masked and does not count as positions), a
shorter line's positions past its end are forced to a filler that costs nothing and is cut off, so each
line's candidates are the ones it gets alone. The prompt is prefilled once per line, then its KV cache is
expanded to the candidate rows.

Candidates are ranked by score = mean per-token log-prob (under the constrained distribution) plus
RULE_WEIGHT × rule score (fraction of rhythm positions whose tones oppose the 上联's).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

# Tone classes as stored in Vocab.tone and LineSpec.rhythm (rules.tone_of: None / 平 / 仄).
TONE_NONE, TONE_LEVEL, TONE_OBLIQUE = 0, 1, 2
# Rules for the tone of a line's last character (LineSpec.final_rule).
END_ANY, END_NOT_OBLIQUE, END_OBLIQUE = 0, 1, 2

RULE_WEIGHT = 0.5
"""Weight of the rule score (0..1, tone opposition at rhythm positions) against the mean per-token log-prob
(nats, typically -1 .. -4 for a trained model): full opposition is worth half a nat per token."""
RULE_NEUTRAL = 0.5
"""Rule score of a line with no rhythm position where both tones are known."""
MAX_BATCH_POSITIONS = 4096
"""Most rows × positions decoded together: bounds the KV cache (about 300 MB for the base model; 256 rows of
a 7-character couplet, 61 of a 32-character one) and the [rows, vocab] masks."""
SAMPLE_ROUNDS = 3
"""Sampling draws n rows per line, then up to SAMPLE_ROUNDS - 1 more rounds (twice the number still
missing) for lines whose samples were duplicates."""


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
    """END_ANY, END_NOT_OBLIQUE (the 上联 ends 仄) or END_OBLIQUE (a 藏头 上联)."""
    rhythm: list[int] | None = None
    """Per position: the 上联's tone at rhythm positions (TONE_*), TONE_NONE elsewhere; for the rule score."""
    seed: int | None = None
    """Seeds this line's own generator; None draws from torch's global generator."""

    def __post_init__(self):
        n = self.length
        if n < 1:
            raise ValueError("a line has at least one position")
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
    """Sampling temperature; 0 is greedy (one candidate)."""
    top_k: int = 0
    """Sample among the k most likely allowed tokens; 0 = all."""
    top_p: float = 1.0
    """Nucleus sampling: the smallest set of allowed tokens whose probability reaches top_p; 1 = all."""

    def __post_init__(self):
        if self.method not in ("sample", "beam"):
            raise ValueError(f"method must be 'sample' or 'beam', not {self.method!r}")
        if not 1 <= self.n <= 64:
            raise ValueError(f"n must be between 1 and 64, not {self.n}")
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be >= 0, not {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), not {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], not {self.top_p}")


@dataclass
class Hypothesis:
    """One written line, in vocabulary ids, with its score breakdown."""

    tokens: list[int]
    logprob: float
    """Mean per-token log-prob under the constrained distribution (forced tokens count 0)."""
    rule_score: float
    score: float


# --- the model: GPT-2 with a preallocated KV cache ------------------------------------------------------------------
class LeanGPT2:
    """The forward pass of a transformers GPT2LMHeadModel, written out for decoding: a preallocated KV cache,
    the last position only through the final layer norm, and the output layer for the emittable tokens only.
    Uses the model's own parameters (no copy except the output rows); tests check it against the model.

    quantize="int8" (CPU only) runs the attention and MLP matmuls and the output layer with int8 weights
    (per output channel, symmetric) and activations quantized row by row on the fly (dynamic quantization,
    fbgemm/oneDNN kernels): about 3-5x faster matmuls on a CPU with VNNI, at a small cost in accuracy.
    Embeddings, layer norms, attention and the KV cache stay fp32."""

    def __init__(self, model, vocab: Vocab, quantize: str | None = None):
        cfg = model.config
        if getattr(cfg, "add_cross_attention", False):
            raise ValueError("cross-attention GPT-2 models are not supported")
        if quantize not in QUANTIZE:
            raise ValueError(f"quantize must be one of {QUANTIZE}, not {quantize!r}")
        self.model, self.tr, self.quantize = model, model.transformer, quantize
        self.n_layer, self.n_head, self.d = cfg.n_layer, cfg.n_head, cfg.n_embd
        self.n_positions = cfg.n_positions
        from transformers.activations import ACT2FN

        # GPT-2's gelu_new is the tanh approximation; PyTorch's fused kernel computes it in one op.
        tanh_gelu = ("gelu_new", "gelu_pytorch_tanh")
        self.act = (lambda x: F.gelu(x, approximate="tanh")) if cfg.activation_function in tanh_gelu \
            else ACT2FN[cfg.activation_function]
        hd = self.d // self.n_head
        base = 1 / math.sqrt(hd) if cfg.scale_attn_weights else 1.0
        by_layer = getattr(cfg, "scale_attn_by_inverse_layer_idx", False)
        self.scales = [base / (i + 1) if by_layer else base for i in range(self.n_layer)]
        head = model.get_output_embeddings()
        device = head.weight.device
        self.dtype = head.weight.dtype
        self.vocab_ids = vocab.ids.to(device)
        head_w = head.weight.detach().index_select(0, self.vocab_ids)  # [V', d]
        head_b = None if getattr(head, "bias", None) is None else head.bias.detach()[self.vocab_ids]
        if quantize == "int8":
            if device.type != "cpu":
                raise ValueError(f"int8 weights run on the CPU only, not {device}")
            check_int8_engine()
            # transformers' Conv1D stores the weight as (in, out); a linear layer wants (out, in).
            lin = lambda conv: Int8Linear(conv.weight.detach().T, conv.bias.detach())  # noqa: E731
        else:
            lin = lambda conv: Fp32Linear(conv.weight.detach(), conv.bias.detach())  # noqa: E731
        # Per block: (c_attn, c_proj, c_fc, mlp c_proj), each x [N, in] -> [N, out].
        self.linears = [(lin(b.attn.c_attn), lin(b.attn.c_proj), lin(b.mlp.c_fc), lin(b.mlp.c_proj))
                        for b in self.tr.h]
        self.head = Int8Linear(head_w, head_b) if quantize == "int8" else Fp32Linear(head_w.T, head_b)
        self._device = device

    @property
    def device(self):
        return self._device

    def start(self, prompts: torch.Tensor, new_tokens: int, pad: torch.Tensor | None = None
              ) -> tuple["KVCache", torch.Tensor]:
        """Prefill prompts [B, T] -> (cache with room for new_tokens more, logits [B, V']).

        pad [B] (optional): row b's prompt is left-padded with pad[b] slots, which no query attends to and
        which do not count as positions (the row's first real token is at position 0)."""
        B, T = prompts.shape
        if T + new_tokens > self.n_positions:
            raise ValueError(f"{T} + {new_tokens} tokens exceed the model's {self.n_positions} positions")
        hd = self.d // self.n_head
        shape = (self.n_layer, B, self.n_head, T + new_tokens, hd)
        k = torch.empty(shape, dtype=self.dtype, device=self.device)
        if pad is not None and not bool(pad.any()):
            pad = None  # equal lengths: the plain causal path
        cache = KVCache(self, k, torch.empty_like(k), 0, None if pad is None else pad.to(self.device))
        return cache, cache.forward(prompts.to(self.device))


QUANTIZE = (None, "int8")
"""Weight formats LeanGPT2 (and duilian.load) accept: None keeps the model's own weights."""


def check_int8_engine() -> None:
    """ValueError unless this torch has a CPU kernel for int8 dynamic linear layers."""
    engines = set(torch.backends.quantized.supported_engines) & {"x86", "fbgemm", "onednn"}
    if not engines:
        raise ValueError("int8 weights need torch's x86/fbgemm or onednn quantized engine; this torch has "
                         f"{torch.backends.quantized.supported_engines}")
    if torch.backends.quantized.engine not in engines:
        torch.backends.quantized.engine = "x86" if "x86" in engines else sorted(engines)[0]


class Fp32Linear:
    """y = x @ W + b with the model's own W [in, out] (no copy); x [..., in] -> [..., out]."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        self.weight, self.bias = weight, bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        y = x2 @ self.weight if self.bias is None else torch.addmm(self.bias, x2, self.weight)
        return y.view(*x.shape[:-1], -1)


class Int8Linear:
    """y = x @ W.T + b with W [out, in] stored as int8, one scale per output row (symmetric: the row's largest
    |w| maps to 127), prepacked for the CPU kernel; x is quantized per call to uint8 with its own range."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        w = weight.detach().float().contiguous()
        scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12).double()  # [out]
        with warnings.catch_warnings():  # torch >= 2.12 marks quantized tensors deprecated; the packed op is not
            warnings.simplefilter("ignore", UserWarning)
            qw = torch.quantize_per_channel(w, scale, torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)
        self.packed = torch.ops.quantized.linear_prepack(qw, None if bias is None else bias.detach().float())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # reduce_range=False: the full 8 bits for activations; exact on VNNI CPUs (no 16-bit overflow there).
        y = torch.ops.quantized.linear_dynamic(x.reshape(-1, x.shape[-1]).contiguous(), self.packed, False)
        return y.view(*x.shape[:-1], -1)


class KVCache:
    """Keys and values of the rows being decoded: k, v [n_layer, R, n_head, T_max, head_dim], `length` filled;
    pad [R] or None: the left-padding slots of each row (see LeanGPT2.start)."""

    def __init__(self, net: LeanGPT2, k: torch.Tensor, v: torch.Tensor, length: int, pad: torch.Tensor | None = None):
        self.net, self.k, self.v, self.length, self.pad = net, k, v, length, pad

    def select(self, index: torch.Tensor) -> "KVCache":
        """A new cache whose row i is row index[i] of this one (expand a prompt to its candidates, reorder beams)."""
        index = index.to(self.k.device)
        pad = None if self.pad is None else self.pad.index_select(0, index)
        return KVCache(self.net, self.k.index_select(1, index), self.v.index_select(1, index), self.length, pad)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row (vocabulary ids [R]) -> logits [R, V'] for the next position."""
        return self.forward(tokens.to(self.k.device)[:, None])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        net, tr = self.net, self.net.tr
        R, T = ids.shape
        p0, p1 = self.length, self.length + T
        # Causal masking by is_causal is only right when the queries start at position 0 (the prefill).
        assert T == 1 or p0 == 0, "multi-token steps only for the prefill"
        nh, hd = net.n_head, net.d // net.n_head
        if self.pad is None:
            x = tr.wte.weight[ids] + tr.wpe.weight[p0:p1]  # (R, T, d)
            mask = None
        else:
            # Left padding: row r's slot j holds position j - pad[r]. A query sees the real slots up to its own
            # (and a padding query sees itself, so that no row of the softmax is empty).
            slot = torch.arange(p1, device=ids.device)
            pos = (slot[p0:p1][None, :] - self.pad[:, None]).clamp(min=0)  # (R, T)
            x = tr.wte.weight[ids] + tr.wpe.weight[pos]  # (R, T, d)
            query = slot[p0:p1][:, None]  # (T, 1)
            mask = ((slot[None, None, :] >= self.pad[:, None, None]) & (slot <= query)) | (slot == query)
            mask = mask[:, None]  # (R, 1, T, p1)
        for i, (block, (c_attn, c_proj, c_fc, fc_proj)) in enumerate(zip(tr.h, net.linears)):
            h = _layer_norm(x, block.ln_1)
            qkv = c_attn(h)  # (R, T, 3d)
            q, k, v = (t.view(R, T, nh, hd).transpose(1, 2) for t in qkv.split(net.d, dim=2))  # (R, nh, T, hd)
            self.k[i, :, :, p0:p1] = k
            self.v[i, :, :, p0:p1] = v
            a = F.scaled_dot_product_attention(
                q, self.k[i, :, :, :p1], self.v[i, :, :, :p1], attn_mask=mask, is_causal=T > 1 and mask is None,
                scale=net.scales[i]
            )  # (R, nh, T, hd)
            x = x + c_proj(a.transpose(1, 2).reshape(R, T, net.d))
            h = _layer_norm(x, block.ln_2)
            x = x + fc_proj(net.act(c_fc(h)))
        self.length = p1
        h = _layer_norm(x[:, -1], tr.ln_f)  # (R, d): only the last position is ever needed
        return net.head(h)  # (R, V')


def _layer_norm(x, ln):
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


class Recompute:
    """The reference for LeanGPT2: no cache, the transformers model run over the whole sequence at every step.
    Same interface (start -> state with select/step); used by the tests and the benchmark."""

    def __init__(self, model, vocab: Vocab):
        self.model = model
        self.device = next(model.parameters()).device
        self.vocab_ids = vocab.ids.to(self.device)

    def start(self, prompts: torch.Tensor, new_tokens: int, pad: torch.Tensor | None = None):
        pad = torch.zeros(len(prompts), dtype=torch.long) if pad is None else pad
        state = _RecomputeState(self, prompts.to(self.device), pad.to(self.device))
        return state, state.logits()


class _RecomputeState:
    def __init__(self, net: Recompute, ids: torch.Tensor, pad: torch.Tensor):
        self.net, self.ids, self.pad = net, ids, pad

    def select(self, index):
        index = index.to(self.ids.device)
        return _RecomputeState(self.net, self.ids.index_select(0, index), self.pad.index_select(0, index))

    def step(self, tokens):
        self.ids = torch.cat([self.ids, tokens.to(self.ids.device)[:, None]], dim=1)
        return self.logits()

    def logits(self):
        if self.pad.any():  # left padding: masked out, positions counted from each row's first real token
            slot = torch.arange(self.ids.shape[1], device=self.ids.device)[None, :]
            mask = (slot >= self.pad[:, None]).long()
            pos = (slot - self.pad[:, None]).clamp(min=0)
            out = self.net.model(self.ids, attention_mask=mask, position_ids=pos, use_cache=False).logits[:, -1]
        else:
            out = self.net.model(self.ids, use_cache=False).logits[:, -1]  # (R, V)
        return out.index_select(1, self.net.vocab_ids)


# --- constraints as tensors -------------------------------------------------------------------------------------
@dataclass
class Rules:
    """The LineSpecs of one batch (B lines, the longest L positions) as tensors in sub-vocabulary indices.

    A shorter line's positions past its end force a filler token (log-prob 0, so neither sampling nor beam
    scores feel it) and count for nothing; its tokens there are cut off at the end."""

    forced: torch.Tensor  # (B, L) long, -1 = free
    repeat_of: torch.Tensor  # (B, L) long
    banned_at: torch.Tensor  # (B, L) long, -1 = none
    banned: torch.Tensor  # (B, V') bool
    distinct: torch.Tensor  # (B,) bool
    final_pos: torch.Tensor  # (B,) long, -1 = none
    final_rule: torch.Tensor  # (B,) long
    rhythm: torch.Tensor  # (B, L) int8
    lengths: torch.Tensor  # (B,) long, each line's own length

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
        return cls(
            forced=forced,
            repeat_of=torch.tensor(padded([s.repeat_of for s in specs], None), dtype=torch.long),
            banned_at=ids([s.banned_at for s in specs]),
            banned=banned,
            distinct=torch.tensor([s.distinct for s in specs]),
            final_pos=torch.tensor([s.final_pos for s in specs], dtype=torch.long),
            final_rule=torch.tensor([s.final_rule for s in specs], dtype=torch.long),
            rhythm=torch.tensor(padded([s.rhythm for s in specs], TONE_NONE), dtype=torch.int8),
            lengths=lengths,
        )

    def to(self, device) -> "Rules":
        return Rules(**{k: v.to(device) for k, v in self.__dict__.items()})


def allowed_tokens(rules: Rules, vocab: Vocab, rows: torch.Tensor, t: int, out: torch.Tensor,
                   used: torch.Tensor) -> torch.Tensor:
    """The mask for position t -> allowed [R, V'] bool.

    rows [R]: the line (index into `rules`) of each row; out [R, L]: tokens written so far (sub indices);
    used [R, V']: tokens this row has written. Every row allows at least one token.
    """
    R, V = rows.numel(), len(vocab)
    ar = torch.arange(R, device=rows.device)
    allowed = vocab.han.expand(R, V).clone()  # a free position takes one Han character
    # The softer rules, hardest first. Each is kept for a row only if the row still has a token left.
    at = rules.banned_at[rows, t]  # (R,)
    no_copy_here = torch.ones(R, V, dtype=torch.bool, device=rows.device)
    no_copy_here[ar[at >= 0], at[at >= 0]] = False
    layers = [
        no_copy_here,
        ~(used & rules.distinct[rows, None]),  # 重字 only where the 上联 has them (copies are forced below)
        ~rules.banned[rows],  # none of the 上联's characters
    ]
    final = rules.final_pos[rows] == t
    if final.any():
        rule = torch.where(final, rules.final_rule[rows], END_ANY)[:, None]  # (R, 1)
        tone = vocab.tone[None, :]
        layers.append((rule == END_ANY) | ((rule == END_NOT_OBLIQUE) & (tone != TONE_OBLIQUE))
                      | ((rule == END_OBLIQUE) & (tone == TONE_OBLIQUE)))
    strict = allowed.clone()
    for layer in layers:
        strict &= layer
    stuck = ~strict.any(dim=1)  # rows the rules leave with nothing (only with tiny vocabularies)
    if stuck.any():
        for layer in layers:
            tightened = allowed & layer
            allowed = torch.where(tightened.any(dim=1, keepdim=True), tightened, allowed)
        strict[stuck] = allowed[stuck]
    allowed = strict
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


def rule_scores(rules: Rules, vocab: Vocab, rows: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """[R] fraction of rhythm positions (both tones known) where the row's tone opposes the 上联's."""
    upper = rules.rhythm[rows]  # (R, L)
    lower = vocab.tone[out]  # (R, L)
    counted = (upper != TONE_NONE) & (lower != TONE_NONE)
    opposed = (counted & (upper != lower)).sum(1)
    n = counted.sum(1)
    return torch.where(n > 0, opposed / n.clamp(min=1), torch.full_like(opposed, RULE_NEUTRAL, dtype=torch.float))


# --- search -----------------------------------------------------------------------------------------------------
def pick(logits: torch.Tensor, u: torch.Tensor, search: Search) -> torch.Tensor:
    """Sample one token per row from masked logits [R, V'] (-inf = not allowed) with uniforms u [R] in [0, 1).

    Inverse-CDF sampling: one draw per row keeps seeded rows independent of the rest of the batch.
    """
    if search.temperature == 0:
        return logits.argmax(dim=1)
    probs = torch.softmax(logits / search.temperature, dim=1)
    if search.top_k:
        kth = probs.topk(min(search.top_k, probs.shape[1]), dim=1).values[:, -1:]
        probs = torch.where(probs >= kth, probs, 0.0)
    if search.top_p < 1:
        sorted_p, order = probs.sort(dim=1, descending=True)
        before = sorted_p.cumsum(1) - sorted_p  # mass of the more likely tokens
        sorted_p = torch.where(before < search.top_p * sorted_p.sum(1, keepdim=True), sorted_p, 0.0)
        probs = torch.zeros_like(probs).scatter_(1, order, sorted_p)
    cdf = probs.cumsum(dim=1)
    x = (u.to(cdf) * cdf[:, -1])[:, None]
    token = torch.searchsorted(cdf, x, right=True)[:, 0].clamp(max=probs.shape[1] - 1)
    # Rounding can land on a zero-probability token at the very end of the cdf: take the likeliest instead.
    bad = probs.gather(1, token[:, None])[:, 0] <= 0
    return torch.where(bad, logits.argmax(dim=1), token)


def decode(net, vocab: Vocab, specs: list[LineSpec], search: Search) -> list[list[Hypothesis]]:
    """Write candidates for each spec -> per spec, up to search.n distinct hypotheses, best first.

    net: a LeanGPT2 (or the Recompute reference). Specs are grouped by (prompt length, line length).
    """
    results: list[list[Hypothesis]] = [[] for _ in specs]
    rows_per_line = search.n if search.method == "beam" else 1 if search.temperature == 0 else search.n
    # Lines of any length are decoded together (left-padded prompts, shorter lines padded at the end), sorted
    # by length so that a big input makes batches of nearly equal lengths. Each batch is bounded by rows x
    # positions (MAX_BATCH_POSITIONS).
    order = sorted(range(len(specs)), key=lambda i: (specs[i].length, len(specs[i].prompt)))
    chunks: list[list[int]] = []
    width = 0  # prompt + line positions of the current chunk
    for i in order:
        need = len(specs[i].prompt) + specs[i].length
        if chunks and (len(chunks[-1]) + 1) * rows_per_line * max(width, need) <= MAX_BATCH_POSITIONS:
            chunks[-1].append(i)
            width = max(width, need)
        else:
            chunks.append([i])
            width = need
    device = vocab.ids.device
    run = _beam if search.method == "beam" else _sample
    with torch.inference_mode():
        for chunk in chunks:
            for i, hyps in zip(chunk, run(net, vocab, [specs[i] for i in chunk], search, device)):
                results[i] = hyps
    return results


def _write(state, logits, rules: Rules, vocab: Vocab, rows: torch.Tensor, length: int, choose):
    """The decoding loop shared by sampling and beam search.

    choose(t, logp [R, V']) -> (parent [R] or None, token [R]): parent reorders the rows (beams) first.
    Returns out [R, L], the tokens written (sub-vocabulary indices).
    """
    R = rows.numel()
    out = torch.zeros(R, length, dtype=torch.long, device=rows.device)
    used = torch.zeros(R, len(vocab), dtype=torch.bool, device=rows.device)
    for t in range(length):
        allowed = allowed_tokens(rules, vocab, rows, t, out, used)
        logp = torch.log_softmax(logits.float().masked_fill(~allowed, -math.inf), dim=1)  # (R, V')
        parent, token = choose(t, logp)
        if parent is not None:
            out, used = out[parent], used[parent]
            state = state.select(parent)
        out[:, t] = token
        used[torch.arange(R, device=rows.device), token] = True
        if t + 1 < length:
            logits = state.step(vocab.ids[token])
    return out


def _start(net, specs: list[LineSpec]):
    """Prefill the prompts, left-padded to the longest -> (state, logits [B, V'])."""
    P = max(len(s.prompt) for s in specs)
    prompts = torch.tensor([[0] * (P - len(s.prompt)) + s.prompt for s in specs], dtype=torch.long)
    pad = torch.tensor([P - len(s.prompt) for s in specs], dtype=torch.long)
    return net.start(prompts, max(s.length for s in specs), pad)


def _sample(net, vocab, specs, search, device):
    B, L = len(specs), max(s.length for s in specs)
    rules = Rules.build(specs, vocab).to(device)
    state0, logits0 = _start(net, specs)
    gens = [torch.Generator().manual_seed(s.seed) if s.seed is not None else None for s in specs]
    found: list[dict[tuple, Hypothesis]] = [{} for _ in specs]
    greedy = search.temperature == 0
    want = 1 if greedy else search.n
    counts = [want] * B
    for _ in range(1 if greedy else SAMPLE_ROUNDS):
        if not any(counts):
            break
        rows = torch.repeat_interleave(torch.arange(B), torch.tensor(counts)).to(device)
        # One uniform per row and position, drawn from the line's own generator: batch-independent.
        u = torch.cat([F.pad(torch.rand(k, s.length, generator=g), (0, L - s.length))
                       for k, g, s in zip(counts, gens, specs) if k]).to(device)
        logp_sum = torch.zeros(rows.numel(), device=device)

        def choose(t, logp):
            token = pick(logp, u[:, t], search)
            logp_sum.add_(logp.gather(1, token[:, None])[:, 0])
            return None, token

        out = _write(state0.select(rows), logits0.index_select(0, rows), rules, vocab, rows, L, choose)
        _collect(found, rows, out, logp_sum / rules.lengths[rows], rules, vocab)
        counts = [0 if len(f) >= want else 2 * (want - len(f)) for f in found]
    return [sorted(f.values(), key=lambda h: -h.score)[:want] for f in found]


def _beam(net, vocab, specs, search, device):
    B, L, W = len(specs), max(s.length for s in specs), search.n
    rules = Rules.build(specs, vocab).to(device)
    state, logits = _start(net, specs)
    rows = torch.arange(B, device=device).repeat_interleave(W)  # (B*W,) line of each beam row
    # All beams start as the same empty line; only the first is alive so the first step fans out.
    beam = torch.full((B, W), -math.inf, device=device)
    beam[:, 0] = 0
    first_row = torch.arange(B, device=device)[:, None] * W

    def choose(t, logp):
        nonlocal beam
        V = logp.shape[1]
        total = (beam.view(-1, 1) + logp).view(B, W * V)
        beam, flat = total.topk(W, dim=1)  # (B, W)
        return (first_row + flat // V).view(-1), (flat % V).view(-1)

    out = _write(state.select(rows), logits.index_select(0, rows), rules, vocab, rows, L, choose)
    found: list[dict[tuple, Hypothesis]] = [{} for _ in specs]
    alive = torch.isfinite(beam.view(-1))
    _collect(found, rows[alive], out[alive], beam.view(-1)[alive] / rules.lengths[rows[alive]], rules, vocab)
    return [sorted(f.values(), key=lambda h: -h.score)[:W] for f in found]


def _collect(found, rows, out, logprob, rules, vocab):
    """Add finished rows to found[line] as Hypotheses (deduplicated by tokens)."""
    rule = rule_scores(rules, vocab, rows, out)
    score = logprob + RULE_WEIGHT * rule
    tokens = vocab.ids[out].tolist()
    lengths = rules.lengths[rows].tolist()
    for r, toks, n, lp, rs, sc in zip(rows.tolist(), tokens, lengths, logprob.tolist(), rule.tolist(), score.tolist()):
        toks = toks[:n]  # a shorter line's filler is cut off
        key = tuple(toks)
        if key not in found[r] or found[r][key].score < sc:
            found[r][key] = Hypothesis(tokens=toks, logprob=lp, rule_score=rs, score=sc)
