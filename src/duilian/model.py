"""Model presets and loading. The model class is `transformers.GPT2LMHeadModel`, so every duilian
checkpoint is interchangeable with the seed's `uer/gpt2-chinese-couplet`.

`base` is the seed's configuration exactly; the smaller presets are for CPU work, tests and the
shippable default model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from .tokenizer import default_tokenizer


@dataclass(frozen=True)
class Preset:
    """A GPT-2 shape. Feed-forward width is always 4 × n_embd, as in GPT-2."""

    n_layer: int
    n_embd: int
    n_head: int
    n_positions: int = 1024
    """Learned positions. Couplets need at most 32 + 32 + 3 (+2 for the transformers-5 prompt form)."""

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")


PRESETS: dict[str, Preset] = {
    "tiny": Preset(n_layer=2, n_embd=64, n_head=2, n_positions=128),  # tests: trains in seconds
    "mini": Preset(n_layer=4, n_embd=256, n_head=4, n_positions=128),  # ~8.6M params, ~17 MB fp16
    "small": Preset(n_layer=6, n_embd=384, n_head=6, n_positions=128),  # ~19M params, ~38 MB fp16
    "base": Preset(n_layer=12, n_embd=768, n_head=12, n_positions=1024),  # the seed: ~102M params
}


def gpt2_config(preset: str | Preset, dropout: float = 0.1) -> GPT2Config:
    """The transformers config for a preset, with this vocabulary's special-token ids."""
    p = PRESETS[preset] if isinstance(preset, str) else preset
    tok = default_tokenizer()
    return GPT2Config(
        vocab_size=len(tok),
        n_positions=p.n_positions,
        n_embd=p.n_embd,
        n_layer=p.n_layer,
        n_head=p.n_head,
        n_inner=4 * p.n_embd,
        activation_function="gelu_new",  # UER's gelu_fast
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        tie_word_embeddings=True,
        bos_token_id=tok.cls_id,
        eos_token_id=tok.sep_id,
        pad_token_id=tok.pad_id,
    )


def build_model(preset: str | Preset, dropout: float = 0.1, seed: int | None = None) -> GPT2LMHeadModel:
    """A freshly initialised GPT2LMHeadModel (GPT-2's own init). `seed` makes the init reproducible."""
    if seed is not None:
        torch.manual_seed(seed)
    config = gpt2_config(preset, dropout)
    config._attn_implementation = "sdpa"
    return GPT2LMHeadModel(config)


def is_hf_model_dir(path: str | Path) -> bool:
    """A HuggingFace model directory. A training run directory has a config.json too (the training
    config); a HF one names its model_type."""
    try:
        return "model_type" in json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def load_model(model_dir: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu") -> GPT2LMHeadModel:
    """Any HuggingFace GPT-2 directory: a duilian export or a copy of the seed's model."""
    model = GPT2LMHeadModel.from_pretrained(str(model_dir), dtype=dtype) if _has_dtype_kwarg() else \
        GPT2LMHeadModel.from_pretrained(str(model_dir), torch_dtype=dtype)
    return model.to(device).eval()


def _has_dtype_kwarg() -> bool:
    # transformers >= 4.56 renamed torch_dtype to dtype; 5.x warns on the old name.
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return (major, minor) >= (4, 56)


def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters (the tied output layer counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
