"""Convert GPT-2 weights between UER-py (which trained the seed model) and HuggingFace transformers.

One declarative map, WEIGHT_MAP, is read in both directions. Each rule names a HuggingFace tensor (as in a
GPT2LMHeadModel state dict), the UER tensor(s) it comes from, and a transform. "{}" is the layer index.
The map is written in the older UER names (the seed's era); LAYOUT_NAMES lists the three names that the
newer UER-py (2023 on) spells differently.

Shapes (H = hidden, V = vocab, P = positions, F = feed-forward width):
    UER nn.Linear weights are [out, in]; HF Conv1D weights are [in, out], so every linear is transposed.
    UER keeps Q, K, V as three [H, H] linears; HF fuses them into one c_attn of [H, 3H] (Q | K | V along out).

Both models are pre-LayerNorm GPT-2 with a final LayerNorm, UER's gelu_fast is HF's gelu_new, and the
output layer is tied to the word embedding. The outputs are close, not equal: UER-py's LayerNorm is
gamma * (x - mean) / (std + 1e-6) + beta with the *unbiased* standard deviation (divided by H - 1) and eps
outside the square root, where HF's is (x - mean) / sqrt(var + 1e-5) with the biased variance. Each
LayerNorm's output is thus smaller in UER by a factor sqrt((H - 1) / H), about 1 - 1/(2H) (6.5e-4 at
H = 768; the eps difference is far smaller), and through the layers logits end up about 1e-2 apart at
width 768 (measured: ~7e-3, and at most 1.2e-2 on a random model; test_convert checks the cause).

UER files do not record the number of attention heads. It is taken from --heads, from a UER-py config
file (its "heads_num"), or for the seed's width of 768 as the seed's 12; any other width is refused rather
than guessed, since a wrong head count gives a model that loads and runs but computes something else.

UER checkpoints are read with torch.load(weights_only=True): a file that needs any code to unpickle is
refused, never run.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .gpt import GPTConfig

# --- the map -------------------------------------------------------------------------------------

COPY = "copy"  # same tensor
TRANSPOSE = "transpose"  # nn.Linear [out, in] <-> Conv1D [in, out]
FUSE_QKV_WEIGHT = "fuse_qkv_weight"  # three [H, H] nn.Linear weights <-> one [H, 3H] Conv1D weight
FUSE_QKV_BIAS = "fuse_qkv_bias"  # three [H] biases <-> one [3H] bias


@dataclass(frozen=True)
class Rule:
    hf: str
    """HuggingFace name; "{}" is the layer index."""
    uer: tuple[str, ...]
    """UER name(s) in the older layout; three for the fused Q, K, V."""
    transform: str
    """How the UER tensor(s) become the HF tensor (the inverse is applied the other way)."""


_L = "encoder.transformer.{}."  # a UER layer
_QKV = tuple(f"{_L}self_attn.linear_layers.{j}" for j in range(3))

WEIGHT_MAP: tuple[Rule, ...] = (
    Rule("transformer.wte.weight", ("embedding.word_embedding.weight",), COPY),  # [V, H]
    Rule("transformer.wpe.weight", ("embedding.position_embedding.weight",), COPY),  # [P, H]
    Rule("transformer.h.{}.ln_1.weight", (f"{_L}layer_norm_1.gamma",), COPY),  # [H]
    Rule("transformer.h.{}.ln_1.bias", (f"{_L}layer_norm_1.beta",), COPY),
    Rule("transformer.h.{}.attn.c_attn.weight", tuple(f"{q}.weight" for q in _QKV), FUSE_QKV_WEIGHT),  # [H, 3H]
    Rule("transformer.h.{}.attn.c_attn.bias", tuple(f"{q}.bias" for q in _QKV), FUSE_QKV_BIAS),  # [3H]
    Rule("transformer.h.{}.attn.c_proj.weight", (f"{_L}self_attn.final_linear.weight",), TRANSPOSE),  # [H, H]
    Rule("transformer.h.{}.attn.c_proj.bias", (f"{_L}self_attn.final_linear.bias",), COPY),
    Rule("transformer.h.{}.ln_2.weight", (f"{_L}layer_norm_2.gamma",), COPY),
    Rule("transformer.h.{}.ln_2.bias", (f"{_L}layer_norm_2.beta",), COPY),
    Rule("transformer.h.{}.mlp.c_fc.weight", (f"{_L}feed_forward.linear_1.weight",), TRANSPOSE),  # HF [H, F]
    Rule("transformer.h.{}.mlp.c_fc.bias", (f"{_L}feed_forward.linear_1.bias",), COPY),  # [F]
    Rule("transformer.h.{}.mlp.c_proj.weight", (f"{_L}feed_forward.linear_2.weight",), TRANSPOSE),  # HF [F, H]
    Rule("transformer.h.{}.mlp.c_proj.bias", (f"{_L}feed_forward.linear_2.bias",), COPY),
    Rule("transformer.ln_f.weight", ("encoder.layer_norm.gamma",), COPY),
    Rule("transformer.ln_f.bias", ("encoder.layer_norm.beta",), COPY),
)

OUTPUT_LAYER = Rule("lm_head.weight", ("target.output_layer.weight",), COPY)
"""The output layer [V, H]. Tied to the word embedding, so optional in a UER file; always written to one."""

LAYOUTS = ("old", "new")
LAYOUT_NAMES: dict[str, dict[str, str]] = {
    "old": {},
    "new": {
        "embedding.word_embedding.weight": "embedding.word.embedding.weight",
        "embedding.position_embedding.weight": "embedding.pos.embedding.weight",
        "target.output_layer.weight": "target.lm.output_layer.weight",
    },
}
"""Older-layout name -> the name in each layout (unlisted names are the same)."""


class ConversionError(ValueError):
    """A checkpoint that does not fit the map, or that cannot be read safely."""


# --- the transforms ------------------------------------------------------------------------------


def _to_hf(transform: str, tensors: list[torch.Tensor]) -> torch.Tensor:
    if transform == COPY:
        return tensors[0]
    if transform == TRANSPOSE:
        return tensors[0].t().contiguous()
    if transform == FUSE_QKV_WEIGHT:
        return torch.cat(tensors, dim=0).t().contiguous()  # 3 × [H, H] -> [3H, H] -> [H, 3H]
    if transform == FUSE_QKV_BIAS:
        return torch.cat(tensors, dim=0)  # 3 × [H] -> [3H]
    raise ValueError(f"unknown transform {transform!r}")


def _to_uer(transform: str, tensor: torch.Tensor) -> list[torch.Tensor]:
    if transform == COPY:
        return [tensor]
    if transform == TRANSPOSE:
        return [tensor.t().contiguous()]
    if transform == FUSE_QKV_WEIGHT:
        return [t.contiguous() for t in tensor.t().chunk(3, dim=0)]  # [H, 3H] -> [3H, H] -> 3 × [H, H]
    if transform == FUSE_QKV_BIAS:
        return [t.clone() for t in tensor.chunk(3, dim=0)]
    raise ValueError(f"unknown transform {transform!r}")


def _names(rule: Rule, layer: int | None, layout: str) -> tuple[str, list[str]]:
    """The rule's HF name and UER names for one layer (layer None for rules without "{}")."""
    fmt = (lambda s: s.format(layer)) if layer is not None else (lambda s: s)
    rename = LAYOUT_NAMES[layout]
    return fmt(rule.hf), [fmt(rename.get(u, u)) for u in rule.uer]


def _expanded(layers: int):
    """Every (rule, layer) pair for a model of `layers` layers."""
    for rule in WEIGHT_MAP:
        if "{}" in rule.hf:
            for i in range(layers):
                yield rule, i
        else:
            yield rule, None


# --- state dicts ---------------------------------------------------------------------------------


def detect_layout(uer: dict[str, torch.Tensor]) -> str:
    """"old" or "new", from the word-embedding name."""
    for layout in LAYOUTS:
        _, (name,) = _names(WEIGHT_MAP[0], None, layout)
        if name in uer:
            return layout
    raise ConversionError(
        "not a UER GPT-2 checkpoint: no embedding.word_embedding.weight (older UER) or "
        "embedding.word.embedding.weight (newer UER)"
    )


def count_layers(names, prefix: str) -> int:
    """Transformer layers in a state dict: 1 + the largest index after `prefix` ("encoder.transformer."
    for UER, "transformer.h." for HF)."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for n in names if (m := pattern.match(n))}
    if not found:
        raise ConversionError(f"no layers named {prefix}N. in the checkpoint")
    return max(found) + 1


def uer_to_hf_state_dict(
    uer: dict[str, torch.Tensor], layers: int | None = None, layout: str | None = None
) -> tuple[dict[str, torch.Tensor], bool]:
    """UER tensors -> (HF GPT2LMHeadModel state dict, tied). `tied` is False only when the file has an
    output layer that differs from the word embedding; the state dict then holds lm_head.weight."""
    found_layout = detect_layout(uer)
    if layout is not None and layout != found_layout:
        raise ConversionError(f"--layout {layout} given, but the checkpoint uses the {found_layout} UER names")
    layout = found_layout
    in_file = count_layers(uer, "encoder.transformer.")
    if layers is None:
        layers = in_file
    elif layers != in_file:
        raise ConversionError(f"--layers {layers} given, but the checkpoint has {in_file} layers")

    hf, used = {}, set()
    missing = []
    for rule, i in _expanded(layers):
        hf_name, uer_names = _names(rule, i, layout)
        absent = [n for n in uer_names if n not in uer]
        if absent:
            missing += absent
            continue
        hf[hf_name] = _to_hf(rule.transform, [uer[n] for n in uer_names])
        used.update(uer_names)
    if missing:
        raise ConversionError(f"the checkpoint lacks {len(missing)} tensor(s): {', '.join(missing[:6])}")

    # The output layer: tied unless the file says otherwise.
    _, (out_name,) = _names(OUTPUT_LAYER, None, layout)
    tied = True
    if out_name in uer:
        used.add(out_name)
        if not torch.equal(uer[out_name], hf["transformer.wte.weight"]):
            tied = False
            hf[OUTPUT_LAYER.hf] = uer[out_name]

    unknown = sorted(set(uer) - used)
    if unknown:
        raise ConversionError(
            f"the checkpoint has {len(unknown)} tensor(s) that a UER GPT-2 does not: {', '.join(unknown[:6])}"
        )
    return hf, tied


def hf_to_uer_state_dict(
    hf: dict[str, torch.Tensor], layout: str = "new", layers: int | None = None
) -> dict[str, torch.Tensor]:
    """HF GPT2LMHeadModel state dict -> UER names of `layout`, output layer included."""
    if layout not in LAYOUTS:
        raise ConversionError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    in_model = count_layers(hf, "transformer.h.")
    if layers is None:
        layers = in_model
    elif layers != in_model:
        raise ConversionError(f"--layers {layers} given, but the model has {in_model} layers")
    uer = {}
    for rule, i in _expanded(layers):
        hf_name, uer_names = _names(rule, i, layout)
        if hf_name not in hf:
            raise ConversionError(f"the model lacks {hf_name}")
        uer.update(zip(uer_names, _to_uer(rule.transform, hf[hf_name])))
    # Written even when tied, so that both older UER (which may expect it) and newer UER load the file.
    _, (out_name,) = _names(OUTPUT_LAYER, None, layout)
    uer[out_name] = hf.get(OUTPUT_LAYER.hf, hf["transformer.wte.weight"])
    return uer


# --- files ---------------------------------------------------------------------------------------


def load_uer_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A UER .bin/.pt state dict, read without running any pickled code."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"no such UER checkpoint file: {path}")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for code, RuntimeError for a corrupt zip, ...
        raise ConversionError(
            f"refused to load {path}: it is not a plain tensor state dict that loads with "
            f"weights_only=True ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from err
    if not isinstance(obj, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        raise ConversionError(f"{path} is not a state dict of name -> tensor")
    return obj


SEED_HEADS = {768: 12}
"""Widths whose head count is known without being told: the seed's GPT-2 base (768 wide, 12 heads)."""


def read_uer_config(path: str | Path) -> dict:
    """A UER-py model config file (e.g. UER-py's models/gpt2/config.json): its "heads_num", and the
    "hidden_size" and "layers_num" it states, which are checked against the checkpoint."""
    path = Path(path)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConversionError(f"cannot read the UER config {path}: {err}") from None
    if not isinstance(config, dict) or not isinstance(config.get("heads_num"), int):
        raise ConversionError(f"{path} is not a UER-py model config: it has no integer \"heads_num\"")
    return config


def config_from_uer(hf: dict[str, torch.Tensor], layers: int, heads: int | None, tied: bool = True,
                    uer_config: dict | None = None) -> "GPTConfig":
    """A gpt.GPTConfig for HF tensors converted from UER: sizes from the shapes; heads from `heads`, else from
    `uer_config` (a UER-py config's "heads_num"), else 12 for the seed's width of 768 (SEED_HEADS), else
    ConversionError; everything else (ids, gelu_new, dropout) from duilian.model."""
    from .model import Preset, gpt_config

    vocab, hidden = hf["transformer.wte.weight"].shape
    positions = hf["transformer.wpe.weight"].shape[0]
    inner = hf["transformer.h.0.mlp.c_fc.weight"].shape[1]
    if uer_config is not None:
        for key, found in (("hidden_size", hidden), ("layers_num", layers), ("heads_num", heads)):
            stated = uer_config.get(key)
            if stated is not None and found is not None and stated != found:
                what = "--heads says" if key == "heads_num" else "the checkpoint has"
                raise ConversionError(f"the UER config says {key} {stated}, but {what} {found}")
        heads = uer_config["heads_num"]
    if heads is None:
        if hidden not in SEED_HEADS:
            raise ConversionError(
                f"UER checkpoints do not record the number of attention heads, and hidden size {hidden} is not "
                f"the seed's 768 (12 heads): give --heads N, or --config with the UER-py config file the model "
                f"was trained with (its \"heads_num\")"
            )
        heads = SEED_HEADS[hidden]
    if heads < 1:
        raise ConversionError(f"the number of heads must be at least 1, not {heads}")
    if hidden % heads:
        raise ConversionError(f"hidden size {hidden} is not divisible by {heads} heads")
    config = gpt_config(Preset(n_layer=layers, n_embd=hidden, n_head=heads, n_positions=positions))
    return replace(config, vocab_size=vocab, n_inner=inner, tie_word_embeddings=tied)


def convert_uer_to_hf(
    input_path: str | Path,
    output_dir: str | Path,
    layout: str | None = None,
    layers: int | None = None,
    heads: int | None = None,
    dtype: torch.dtype | None = None,
    vocab_path: str | Path | None = None,
    uer_config: str | Path | None = None,
) -> Path:
    """A UER checkpoint file -> a complete HuggingFace model directory (via duilian.export.export_model).

    The number of heads comes from `heads`, or the UER-py config file `uer_config`; either may be left out
    only for the seed's width (see config_from_uer)."""
    from .export import export_model
    from .model import gpt_from_tensors
    from .tokenizer import Tokenizer

    stated = read_uer_config(uer_config) if uer_config is not None else None
    uer = load_uer_checkpoint(input_path)
    hf, tied = uer_to_hf_state_dict(uer, layers=layers, layout=layout)
    layers = count_layers(hf, "transformer.h.")
    model = gpt_from_tensors(config_from_uer(hf, layers, heads, tied, stated), hf)  # strict: every tensor used
    tokenizer = Tokenizer.from_file(vocab_path) if vocab_path is not None else None  # None: BERT's, the seed's
    return export_model(model, output_dir, dtype=dtype, tokenizer=tokenizer)


def convert_hf_to_uer(
    input_dir: str | Path, output_path: str | Path, layout: str = "new", layers: int | None = None
) -> Path:
    """A HuggingFace GPT-2 directory (a duilian export or the seed's model) -> a UER .bin state dict. The tensors are
    read as stored (model.read_hf_weights), under the names WEIGHT_MAP maps."""
    from .gpt import TANH_GELUS
    from .model import is_hf_model_dir, read_hf_config, read_hf_weights

    input_dir = Path(input_dir)
    if not is_hf_model_dir(input_dir):
        raise ConversionError(f"{input_dir} is not a HuggingFace model directory (no config.json naming a model_type)")
    activation = read_hf_config(input_dir).get("activation_function", "gelu_new")
    if activation not in TANH_GELUS:
        raise ConversionError(f"the model uses {activation}; UER's GPT-2 uses gelu_fast (= gelu_new)")
    hf = {k: v.float() for k, v in read_hf_weights(input_dir).items()}  # fp32, as UER-py trains (an export may be fp16)
    uer = hf_to_uer_state_dict(hf, layout=layout, layers=layers)
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    # clone: the tied lm_head and wte share storage; saved separately so each UER name is its own tensor.
    torch.save({k: v.detach().clone() for k, v in uer.items()}, str(output_path))
    return output_path
