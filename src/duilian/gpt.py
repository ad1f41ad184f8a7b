"""GPT-2: the one model definition. It trains, and it decodes with a KV cache (fp32 or int8).

It is transformers' GPT2LMHeadModel written out as nanoGPT writes it, with the same parameter names
(`transformer.h.0.attn.c_attn.weight`, ...), the same Conv1D layout of the linear weights ([in, out]) and the
same registration order. So, with no weight map at all:
    - a HuggingFace GPT-2 directory (a duilian export, uer/gpt2-chinese-couplet) loads as it is stored;
    - a checkpoint written when the trainer used GPT2LMHeadModel loads into it, and so does its optimizer state,
      which AdamW keeps by parameter *index* within each group: parameters() must list the tensors in
      GPT2LMHeadModel's order or a resumed run would pair moments with the wrong weights (test_gpt checks both);
    - its logits are GPT2LMHeadModel's on the same weights (test_gpt: within 1e-5).
transformers itself is needed only at the edges (export, convert, the seed-snippet check).

Training runs `forward(idx, targets, keep)`: the loss summed over the positions `keep` (the output layer runs on
those rows only). Dropout sits where GPT-2's does (embeddings, attention probabilities, both residual branches)
and is drawn in the same order, so a run resumed from an old checkpoint continues as the old trainer would.

Decoding (decode.py) runs `start(prompts, new_tokens)` -> (KVCache, logits), then `cache.select(rows)` and
`cache.step(tokens)`: a preallocated cache per run of equal prompt lengths (no padding, no attention mask), the
final layer norm on the last position only, and an output layer cut to the tokens the decoder may emit
(`for_decoding(rows)`). `for_decoding(rows, quantize="int8")` also turns the matmuls int8 (CPU only: dynamic
quantization, fbgemm/oneDNN kernels), about 3-5x faster with VNNI at a small cost in accuracy; embeddings, layer
norms, attention and the cache stay fp32. `Recompute` is the same interface without a cache: the reference the
tests hold the cache to.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

QUANTIZE = (None, "int8")
"""Weight formats for decoding (GPT.for_decoding, duilian.load): None keeps the model's own weights."""

TANH_GELUS = ("gelu_new", "gelu_fast", "gelu_pytorch_tanh")
"""GPT-2's activation (UER's gelu_fast): the tanh approximation of GELU, one fused kernel in torch."""


@dataclass
class GPTConfig:
    """A GPT-2's shape and the few switches GPT-2 checkpoints use (config.json's fields, under their names)."""

    vocab_size: int
    n_layer: int
    n_embd: int
    n_head: int
    n_positions: int = 1024
    n_inner: int | None = None
    """Feed-forward width; None is 4 × n_embd, as in GPT-2."""
    dropout: float = 0.1
    """Dropout on the embeddings, the attention probabilities and both residual branches (GPT-2's three
    probabilities, which duilian always sets equal: config.json's resid_pdrop)."""
    layer_norm_epsilon: float = 1e-5
    activation_function: str = "gelu_new"
    scale_attn_weights: bool = True
    """Attention scores divided by sqrt(head width), as in every GPT-2."""
    scale_attn_by_inverse_layer_idx: bool = False
    """Mistral's GPT-2 variant: scores of layer i also divided by i + 1."""
    tie_word_embeddings: bool = True
    """The output layer is the token embedding (GPT-2's, and every duilian model's)."""
    duilian: dict | None = None
    """config.json's "duilian" entry: which kinds of line the model was trained on (api.Couplets.reverse_weight,
    compose), kept through export and re-export."""

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")

    @property
    def inner(self) -> int:
        return self.n_inner or 4 * self.n_embd

    @classmethod
    def from_hf(cls, config: dict) -> "GPTConfig":
        """From a HuggingFace GPT-2 config.json (or GPT2Config.to_dict())."""
        if config.get("add_cross_attention", False):
            raise ValueError("cross-attention GPT-2 models are not supported")
        names = {f.name for f in fields(cls)} - {"dropout"}
        return cls(**{k: v for k, v in config.items() if k in names}, dropout=config.get("resid_pdrop", 0.1))

    def to_hf(self) -> dict:
        """transformers.GPT2Config's keyword arguments (export writes them into config.json)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("dropout", "duilian")}
        out.update(resid_pdrop=self.dropout, embd_pdrop=self.dropout, attn_pdrop=self.dropout)
        return {**out, "duilian": self.duilian} if self.duilian is not None else out


# --- the layers ---------------------------------------------------------------------------------------------------
class Linear(nn.Module):
    """y = x @ W + b with W [in, out]: transformers' Conv1D layout, kept so that checkpoints and HuggingFace
    directories load without a transpose."""

    def __init__(self, n_in: int, n_out: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out)) if bias else None

    @classmethod
    def of(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> "Linear":
        """A layer over existing tensors (weight [in, out]), shared, not copied."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.weight = nn.Parameter(weight, requires_grad=False)
        layer.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        y = x2 @ self.weight if self.bias is None else torch.addmm(self.bias, x2, self.weight)
        return y.view(*x.shape[:-1], -1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.layer, self.n_head, self.dropout = layer, config.n_head, config.dropout
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = Linear(config.n_embd, config.n_embd)
        head_dim = config.n_embd // config.n_head
        self.scale = head_dim ** -0.5 if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            self.scale /= layer + 1

    def forward(self, x: torch.Tensor, cache: "KVCache | None" = None) -> torch.Tensor:
        B, T, C = x.shape
        qkv = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, -1).transpose(1, 2) for t in qkv)  # (B, nh, T, hs)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                               is_causal=True, scale=self.scale)
        else:
            y = cache.attend(self.layer, q, k, v, self.scale)
        y = self.c_proj(y.transpose(1, 2).reshape(B, T, C))
        # Only in training: decoding takes many small steps, and even a dropout that does nothing costs a call.
        return F.dropout(y, self.dropout) if self.training else y


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = Linear(config.n_embd, config.inner)
        self.c_proj = Linear(config.inner, config.n_embd)
        self.dropout = config.dropout
        self.act = activation(config.activation_function)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c_proj(self.act(self.c_fc(x)))
        return F.dropout(y, self.dropout) if self.training else y


class Block(nn.Module):
    """Pre-LayerNorm: x + attn(ln_1(x)), then + mlp(ln_2(x))."""

    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: "KVCache | None" = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def activation(name: str):
    """The activation function config.json names."""
    if name in TANH_GELUS:
        return gelu_tanh
    if name == "gelu":
        return F.gelu
    from transformers.activations import ACT2FN  # rare in GPT-2 checkpoints: let transformers say what it means

    return ACT2FN[name]


# --- the model ----------------------------------------------------------------------------------------------------
class GPT(nn.Module):
    """GPT-2: token and position embeddings, n_layer pre-LayerNorm blocks, a final layer norm and the output layer
    (tied to the token embedding). forward() trains and scores; start() and its KVCache decode."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        # The embeddings get empty tensors, so that nn.Embedding does not initialise them itself: init_weights does
        # (and on the meta device its normal_ would import torch._dynamo, 1.9 s of the first command).
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd, _weight=torch.empty(config.vocab_size, config.n_embd)),
            wpe=nn.Embedding(config.n_positions, config.n_embd,
                             _weight=torch.empty(config.n_positions, config.n_embd)),
            h=nn.ModuleList(Block(config, i) for i in range(config.n_layer)),
            ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon),
        ))
        tied = config.tie_word_embeddings  # then the output layer is the embedding: its own weight is never made
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False, device="meta" if tied else None)
        if tied:
            self.lm_head.weight = self.transformer.wte.weight
        if self.device.type != "meta":  # on the meta device, a model about to receive its weights (model.load_gpt)
            self.init_weights()
        self.emit: nn.Module | None = None
        """Decoding copies only (for_decoding): the output layer for the emittable tokens, [n_embd] -> [V']."""
        self.quantize: str | None = None

    @property
    def device(self) -> torch.device:
        return self.transformer.wte.weight.device

    @property
    def n_positions(self) -> int:
        return self.config.n_positions

    def init_weights(self) -> None:
        """GPT-2's initialisation: N(0, 0.02) for embeddings and matrices, the two output projections of each block
        scaled by 1/sqrt(2 × n_layer) (the residual stream adds 2 per block), zero biases, unit layer norms."""
        for name, p in self.named_parameters():  # the tied output layer is the embedding: listed once
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * self.config.n_layer) if name.endswith("c_proj.weight") else 0.02
                nn.init.normal_(p, mean=0.0, std=std)
            elif ".ln_" in name and name.endswith(".weight"):
                nn.init.ones_(p)
            else:
                nn.init.zeros_(p)

    def body(self, idx: torch.Tensor, cache: "KVCache | None" = None) -> torch.Tensor:
        """ids (B, T) -> the last block's output (B, T, C), before the final layer norm. With a cache, the ids are
        appended to it (each run of rows at its own position)."""
        T, wpe = idx.shape[1], self.transformer.wpe.weight
        x = self.transformer.wte(idx) + (wpe[:T] if cache is None else cache.positions(wpe, T))  # (B, T, C)
        if self.training:
            x = F.dropout(x, self.config.dropout)
        for block in self.transformer.h:
            x = block(x, cache)
        if cache is not None:
            cache.filled = [f + T for f in cache.filled]
        return x

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        """ids (B, T) -> logits (B, T, V); or, with targets (B, T) and keep (N,), the flat indices of the positions
        whose target is real, the cross-entropy summed over those N positions. The output layer (V × C, a fifth of
        base's FLOPs) then runs on those rows only, so padding costs the body but not the head."""
        x = self.body(idx)
        if targets is None:
            return self.lm_head(self.transformer.ln_f(x))
        x = self.transformer.ln_f(x.reshape(-1, x.shape[-1]).index_select(0, keep))  # (N, C)
        logits = self.lm_head(x)  # (N, V)
        return F.cross_entropy(logits.float(), targets.reshape(-1).index_select(0, keep), reduction="sum")

    def save_pretrained(self, directory) -> None:
        """transformers' save_pretrained of the same weights: config.json and model.safetensors, no vocabulary (what
        the tests build model directories with). export.export_model writes a complete directory."""
        from .model import to_transformers

        to_transformers(self).save_pretrained(str(directory))

    def compile_blocks(self) -> None:
        """torch.compile each block in place (nn.Module.compile): the modules keep their names, so state_dict() has
        no `_orig_mod.` prefix. Embeddings, head and loss stay eager: the head's row count changes every batch."""
        for block in self.transformer.h:
            block.compile()

    # --- decoding -------------------------------------------------------------------------------------------------
    @classmethod
    def over(cls, config: GPTConfig, tensors: dict[str, torch.Tensor]) -> "GPT":
        """A GPT in eval mode over `tensors`, a state dict under GPT2LMHeadModel's names, used as they are, not
        copied. It is built on the meta device: nothing is initialised only to be replaced."""
        with torch.device("meta"):
            net = cls(config)
        net.load_state_dict(tensors, assign=True)
        if config.tie_word_embeddings:
            net.lm_head.weight = net.transformer.wte.weight
        return net.eval()

    def for_decoding(self, rows: torch.Tensor | None = None, quantize: str | None = None) -> "GPT":
        """A copy for the decoder, in eval mode, sharing this model's tensors: its output layer (`emit`) computes
        the vocabulary ids `rows` only (all when None), and with quantize="int8" its matmuls and `emit` are int8.
        full_logits keeps the whole fp32 output layer."""
        if quantize not in QUANTIZE:
            raise ValueError(f"quantize must be one of {QUANTIZE}, not {quantize!r}")
        net = GPT.over(self.config, self.state_dict()).requires_grad_(False)  # the same tensors, not copies
        head = self.lm_head.weight.detach()
        head = head if rows is None else head.index_select(0, rows.to(head.device))  # (V', C)
        if quantize == "int8":
            if self.device.type != "cpu":
                raise ValueError(f"int8 weights run on the CPU only, not {self.device}")
            check_int8_engine()
            for block in net.transformer.h:
                for owner, name in ((block.attn, "c_attn"), (block.attn, "c_proj"), (block.mlp, "c_fc"),
                                    (block.mlp, "c_proj")):
                    setattr(owner, name, Int8Linear.of(getattr(owner, name)))
            net.emit = Int8Linear(head, None)
        else:
            net.emit = Linear.of(head.T)
        net.quantize = quantize
        return net

    def full_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, T] -> logits [B, T, V] over the whole vocabulary at every position (scoring, not decoding; the
        fp32 output layer). Rows may be right-padded: causal attention never lets a real token see the padding
        after it."""
        B, T = ids.shape
        k = torch.empty((self.config.n_layer, B, self.config.n_head, T, self.config.n_embd // self.config.n_head),
                        dtype=self.transformer.wte.weight.dtype, device=self.device)
        x = self.body(ids.to(self.device), KVCache(self, [k], [torch.empty_like(k)], [0]))
        return self.lm_head(self.transformer.ln_f(x))

    def start(self, prompts: torch.Tensor | list[list[int]], new_tokens: int | list[int]
              ) -> tuple["KVCache", torch.Tensor]:
        """Prefill prompts -> (cache with room for new_tokens more per row, logits [B, V'] of `emit`).

        prompts: [B, T] ids, or lists of ids of any lengths with equal lengths next to each other. Each run of
        equal lengths is prefilled on its own and keeps its own cache, so a row computes exactly what it would
        alone (no padding, no attention mask). new_tokens: one count for all, or one per prompt (a run's cache
        holds its longest)."""
        groups = _runs(prompts)
        room = list(new_tokens) if isinstance(new_tokens, (list, tuple)) else [new_tokens] * sum(map(len, groups))
        starts = [0]
        for g in groups:
            starts.append(starts[-1] + len(g))
        room = [max(room[a:b]) for a, b in zip(starts, starts[1:])]  # per run
        longest = max(len(g[0]) + r for g, r in zip(groups, room))
        if longest > self.n_positions:
            raise ValueError(f"{longest} tokens exceed the model's {self.n_positions} positions")
        c = self.config
        ks, vs, logits = [], [], []
        for g, new in zip(groups, room):
            ids = torch.tensor(g, dtype=torch.long, device=self.device)  # (B_g, T_g)
            shape = (c.n_layer, len(g), c.n_head, ids.shape[1] + new, c.n_embd // c.n_head)
            k = torch.empty(shape, dtype=self.transformer.wte.weight.dtype, device=self.device)
            cache = KVCache(self, [k], [torch.empty_like(k)], [0])
            logits.append(cache.forward(ids))
            ks += cache.k
            vs += cache.v
        cache = KVCache(self, ks, vs, [len(g[0]) for g in groups])
        return cache, torch.cat(logits) if len(logits) > 1 else logits[0]


class KVCache:
    """Keys and values of the rows being decoded, one cache per run of rows with equal prompt lengths:
    k[g], v[g] [n_layer, R_g, n_head, T_max_g, head_dim] with filled[g] slots written."""

    def __init__(self, net: GPT, k: list[torch.Tensor], v: list[torch.Tensor], filled: list[int]):
        self.net, self.k, self.v, self.filled = net, k, v, filled

    def select(self, index: torch.Tensor) -> "KVCache":
        """A new cache whose row i is row index[i] of this one (expand a prompt to its candidates, reorder beams)."""
        parts = _split(index.to(self.k[0].device), [k.shape[1] for k in self.k])

        def take(cache, i):  # a group kept whole, in order (finished lines dropped around it), is not copied
            whole = len(i) == cache.shape[1] and bool((i == torch.arange(len(i), device=i.device)).all())
            return cache if whole else cache.index_select(1, i)

        return KVCache(self.net, [take(self.k[g], i) for g, i in parts], [take(self.v[g], i) for g, i in parts],
                       [self.filled[g] for g, _ in parts])

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row (vocabulary ids [R]) -> logits [R, V'] for the next position."""
        return self.forward(tokens.to(self.k[0].device)[:, None])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [R, T] appended to the cache -> logits [R, V'] for the next position after the last."""
        # Causal masking by is_causal is only right when the queries start at position 0 (the prefill).
        assert ids.shape[1] == 1 or self.filled == [0], "multi-token steps only for the prefill of one group"
        net = self.net
        x = net.body(ids, self)
        return net.emit(net.transformer.ln_f(x[:, -1]))  # (R, V'): the last position only

    def positions(self, wpe: torch.Tensor, T: int) -> torch.Tensor:
        """The position embeddings of T new tokens per row: (T, C) for one run, or one token per row (R, 1, C), each
        run at its own position."""
        if len(self.k) == 1:
            return wpe[self.filled[0]:self.filled[0] + T]
        sizes = [k.shape[1] for k in self.k]
        return wpe[torch.cat([torch.full((n,), f, device=wpe.device) for n, f in zip(sizes, self.filled)])][:, None]

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """Write this layer's new keys and values (R, nh, T, hs) into the cache, and attend run by run."""
        T = q.shape[2]
        outs, a = [], 0
        for kc, vc, f in zip(self.k, self.v, self.filled):
            n = kc.shape[1]
            kc[layer, :, :, f:f + T] = k[a:a + n]
            vc[layer, :, :, f:f + T] = v[a:a + n]
            outs.append(F.scaled_dot_product_attention(q[a:a + n], kc[layer, :, :, :f + T], vc[layer, :, :, :f + T],
                                                       is_causal=T > 1, scale=scale))  # (R_g, nh, T, hs)
            a += n
        return torch.cat(outs) if len(outs) > 1 else outs[0]


class Recompute:
    """The reference for the KV cache: no cache, the model run over the whole sequence at every step. Same interface
    (start -> state with select/step); used by the tests and the benchmark."""

    def __init__(self, model: GPT, rows: torch.Tensor):
        self.model, self.device = model, model.device
        self.rows = rows.to(self.device)

    def start(self, prompts, new_tokens):
        groups = [torch.tensor(g, dtype=torch.long, device=self.device) for g in _runs(prompts)]
        state = _RecomputeState(self, groups)
        return state, state.logits()


class _RecomputeState:
    def __init__(self, net: Recompute, ids: list[torch.Tensor]):
        self.net, self.ids = net, ids  # one [R_g, T_g] tensor per run of equal prompt lengths

    def select(self, index):
        parts = _split(index.to(self.net.device), [len(g) for g in self.ids])
        return _RecomputeState(self.net, [self.ids[g].index_select(0, i) for g, i in parts])

    def step(self, tokens):
        tokens, a = tokens.to(self.net.device), 0
        for g, ids in enumerate(self.ids):
            self.ids[g] = torch.cat([ids, tokens[a:a + len(ids), None]], dim=1)
            a += len(ids)
        return self.logits()

    def logits(self):
        out = torch.cat([self.net.model(g)[:, -1] for g in self.ids])  # (R, V)
        return out.index_select(1, self.net.rows)


def _runs(prompts) -> list[list[list[int]]]:
    """Prompts -> runs of consecutive prompts of equal length."""
    prompts = prompts.tolist() if isinstance(prompts, torch.Tensor) else list(prompts)
    runs: list[list[list[int]]] = []
    for p in prompts:
        if runs and len(runs[-1][0]) == len(p):
            runs[-1].append(list(p))
        else:
            runs.append([list(p)])
    if len({len(r[0]) for r in runs}) != len(runs):
        raise ValueError("prompts of equal length must be next to each other")
    return runs


def _split(index: torch.Tensor, sizes: list[int]) -> list[tuple[int, torch.Tensor]]:
    """Global row indices into groups of `sizes` rows -> [(group, local indices)], in order; the rows of a
    group must stay together (expanding lines to candidates and reordering beams within a line do)."""
    ends = torch.tensor(sizes, device=index.device).cumsum(0)
    group = torch.searchsorted(ends, index, right=True)  # (R',)
    out, start = [], 0
    for g, n in zip(*torch.unique_consecutive(group, return_counts=True)):
        g, n = int(g), int(n)
        out.append((g, index[start:start + n] - (ends[g] - sizes[g])))
        start += n
    if len({g for g, _ in out}) != len(out):
        raise ValueError("a group's rows must stay together")
    return out


# --- int8 ---------------------------------------------------------------------------------------------------------
def check_int8_engine() -> None:
    """ValueError unless this torch has a CPU kernel for int8 dynamic linear layers."""
    engines = set(torch.backends.quantized.supported_engines) & {"x86", "fbgemm", "onednn"}
    if not engines:
        raise ValueError("int8 weights need torch's x86/fbgemm or onednn quantized engine; this torch has "
                         f"{torch.backends.quantized.supported_engines}")
    if torch.backends.quantized.engine not in engines:
        torch.backends.quantized.engine = "x86" if "x86" in engines else sorted(engines)[0]


def int8_full_range() -> bool:
    """Whether int8 activations may use all 8 bits on this CPU (else 7: `reduce_range`).

    fbgemm multiplies uint8 activations by int8 weights. With AVX-512 VNNI (vpdpbusd) each product is added
    into 32 bits, exactly. Without it (AVX2, AVX-512 before Cascade Lake) the kernel uses vpmaddubsw, which
    adds pairs of products into *16 bits, saturating*: 255 x 127 x 2 overflows, and a layer's error grows
    from ~1% to ~10% on real activations. Halving the activation range (reduce_range=True, what torch's own
    dynamic quantization does on x86) keeps those sums in range at every ISA, but costs accuracy where VNNI
    makes it needless (relative matmul error ~2.2% instead of ~1.2%). So: the full range only with VNNI.

    The check is torch.cpu._is_vnni_supported() (cpuinfo's avx512_vnni), narrowed by fbgemm's own override
    FBGEMM_ENABLE_INSTRUCTIONS (AVX2 / AVX512 / AVX512_E1 = VNNI), which the tests use to run the non-VNNI
    kernels on a VNNI machine.
    """
    forced = os.environ.get("FBGEMM_ENABLE_INSTRUCTIONS", "").upper()
    if forced and "VNNI" not in forced and "E1" not in forced:
        return False
    is_vnni = getattr(torch.cpu, "_is_vnni_supported", None)  # private: absent -> assume no VNNI (safe)
    return bool(is_vnni()) if is_vnni is not None else False


class Int8Linear(nn.Module):
    """y = x @ W.T + b with W [out, in] stored as int8, one scale per output row (symmetric: the row's largest
    |w| maps to 127), prepacked for the CPU kernel; x is quantized per call to uint8 with its own range (8 bits
    with VNNI, 7 without: see int8_full_range)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        w = weight.detach().float().contiguous()
        scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12).double()  # [out]
        with warnings.catch_warnings():  # torch >= 2.12 marks quantized tensors deprecated; the packed op is not
            warnings.simplefilter("ignore", UserWarning)
            qw = torch.quantize_per_channel(w, scale, torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)
        self.packed = torch.ops.quantized.linear_prepack(qw, None if bias is None else bias.detach().float())
        self.reduce_range = not int8_full_range()

    @classmethod
    def of(cls, layer: Linear) -> "Int8Linear":
        return cls(layer.weight.T, layer.bias)  # Conv1D's (in, out) -> a linear layer's (out, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.quantized.linear_dynamic(x.reshape(-1, x.shape[-1]).contiguous(), self.packed,
                                               self.reduce_range)
        return y.view(*x.shape[:-1], -1)
