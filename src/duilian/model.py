"""Model presets, building and loading. The model class is duilian.gpt.GPT, GPT-2 written out under
transformers' names, so every duilian checkpoint and export is interchangeable with the seed's
`uer/gpt2-chinese-couplet`.

`base` is the seed's configuration exactly; the smaller presets are for CPU work, tests and the
shippable default model.

A model directory (any HuggingFace GPT-2 directory, or a Hub id such as `uer/gpt2-chinese-couplet`) is read
straight into a GPT: config.json and the safetensors (or pytorch_model.bin) into tensors, without transformers
(importing it costs seconds). transformers is imported only at the edges: `to_transformers` for export, `load_model`
(transformers' own model of a directory, the reference the tests and benchmarks compare against), conversion.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .gpt import GPT, GPTConfig
from .tokenizer import Tokenizer, default_tokenizer

if TYPE_CHECKING:
    from transformers import GPT2Config, GPT2LMHeadModel


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

    @classmethod
    def of_model_dir(cls, model_dir: str | Path) -> "Preset":
        """The shape of a HuggingFace GPT-2 directory (a duilian export or the seed's model)."""
        c = read_hf_config(model_dir)
        n_inner = c.get("n_inner") or 4 * c["n_embd"]
        if n_inner != 4 * c["n_embd"]:
            raise ValueError(f"{model_dir}: feed-forward width {n_inner} is not 4 x n_embd; duilian's shapes are "
                             "GPT-2's")
        return cls(n_layer=c["n_layer"], n_embd=c["n_embd"], n_head=c["n_head"], n_positions=c["n_positions"])


PRESETS: dict[str, Preset] = {
    "tiny": Preset(n_layer=2, n_embd=64, n_head=2, n_positions=128),  # tests: trains in seconds
    "mini": Preset(n_layer=4, n_embd=256, n_head=4, n_positions=128),  # ~8.6M params, ~17 MB fp16
    # mini grown two blocks deeper (`--init-from` a mini model: block expansion keeps its function at step 0)
    "mini6": Preset(n_layer=6, n_embd=256, n_head=4, n_positions=128),
    "small": Preset(n_layer=6, n_embd=384, n_head=6, n_positions=128),  # ~19M params, ~38 MB fp16
    "base": Preset(n_layer=12, n_embd=768, n_head=12, n_positions=1024),  # the seed: ~102M params
}


def gpt_config(preset: str | Preset, dropout: float = 0.1, tokenizer: "Tokenizer | None" = None) -> GPTConfig:
    """The GPT config for a preset: one embedding row per token of `tokenizer` (default: the BERT vocabulary)."""
    p = PRESETS[preset] if isinstance(preset, str) else preset
    return GPTConfig(vocab_size=len(tokenizer or default_tokenizer()), n_layer=p.n_layer, n_embd=p.n_embd,
                     n_head=p.n_head, n_positions=p.n_positions, n_inner=4 * p.n_embd, dropout=dropout,
                     activation_function="gelu_new")  # UER's gelu_fast


def gpt2_config(preset: str | Preset | GPTConfig, dropout: float = 0.1,
                tokenizer: "Tokenizer | None" = None) -> "GPT2Config":
    """The transformers config for a preset (or a GPT's config), with `tokenizer`'s special-token ids: what an
    export writes into config.json."""
    from transformers import GPT2Config

    config = preset if isinstance(preset, GPTConfig) else gpt_config(preset, dropout, tokenizer)
    tok = tokenizer or default_tokenizer()
    return GPT2Config(**config.to_hf(), bos_token_id=tok.cls_id, eos_token_id=tok.sep_id, pad_token_id=tok.pad_id)


def build_model(preset: str | Preset, dropout: float = 0.1, seed: int | None = None,
                tokenizer: "Tokenizer | None" = None) -> GPT:
    """A freshly initialised GPT (GPT-2's own init) for `tokenizer`'s vocabulary (default BERT's). `seed` makes
    the init reproducible."""
    if seed is not None:
        torch.manual_seed(seed)
    return GPT(gpt_config(preset, dropout, tokenizer))


def write_duilian_section(model_dir: str | Path, name: str, section: dict) -> Path:
    """Put `section` under "duilian" → `name` in model_dir/config.json, the rest kept as it is: where a model carries
    what duilian measured for it (its calibration, its aligned-pair table)."""
    path = Path(model_dir) / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config.setdefault("duilian", {})[name] = section
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def is_hf_model_dir(path: str | Path) -> bool:
    """A HuggingFace model directory. A training run directory has a config.json too (the training
    config); a HF one names its model_type."""
    try:
        return "model_type" in json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def read_hf_config(model_dir: str | Path) -> dict:
    """config.json of a HuggingFace model directory, with a clear error for anything else."""
    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{model_dir} is not a HuggingFace model directory (no readable config.json: {e})") from None
    if config.get("model_type") != "gpt2":
        hint = " (a training run directory? export it first: duilian export)" if "preset" in config else ""
        raise ValueError(f"{model_dir}: config.json is not a GPT-2 model's{hint}")
    return config


def read_hf_weights(model_dir: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a HuggingFace model directory, without transformers: model.safetensors, its shards
    (model.safetensors.index.json), or a pytorch_model.bin read with weights_only=True. Names are
    GPT2LMHeadModel's (`transformer.h.0.attn.c_attn.weight`, ...); files saved from a bare GPT2Model
    (no `transformer.` prefix) get it added."""
    from safetensors.torch import load_file

    directory = Path(model_dir)
    if (directory / "model.safetensors").exists():
        state = load_file(directory / "model.safetensors")
    elif (directory / "model.safetensors.index.json").exists():
        index = json.loads((directory / "model.safetensors.index.json").read_text(encoding="utf-8"))
        shards = sorted(set(index["weight_map"].values()))
        state = {k: v for shard in shards for k, v in load_file(directory / shard).items()}
    elif (directory / "pytorch_model.bin").exists():
        state = torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"{directory} holds no model.safetensors, shard index or pytorch_model.bin")
    return {(k if k.startswith(("transformer.", "lm_head.")) else "transformer." + k): v for k, v in state.items()}


def init_from_model_dir(model: GPT, model_dir: str | Path, tokens: list[str] | tuple[str, ...]) -> dict:
    """Copy a HuggingFace GPT-2 directory's weights into `model`, matching the token embedding's rows by
    token: `tokens` is `model`'s vocabulary, the directory's vocab.txt the source's.

    A token the source lacks gets the mean of the source's rows rather than a random one: the mean is
    close to every row, so the new token starts with an ordinary score instead of shifting the output
    distribution (Hewitt, "Initializing new word embeddings", 2021). Positions beyond the source's keep
    their fresh initialisation.

    `model` may be deeper than the source (same width and heads): the source's blocks are copied in order and
    a copy of a block is inserted after each equal group of them (`grown_layers`), its two output projections
    (attention and MLP c_proj) set to zero, so each new block adds nothing to the residual stream at first and
    the grown model computes exactly the source's function (LLaMA Pro's block expansion, Wu et al. 2024); the
    copies then learn what the extra depth is for. Returns counts: tokens matched and new, blocks copied and new.
    """
    from .tokenizer import Tokenizer

    src = read_hf_weights(model_dir)
    src_tokens = Tokenizer.from_file(Path(model_dir) / "vocab.txt").index
    target = model.state_dict()
    source_layers = 1 + max(int(k.split(".")[2]) for k in src if k.startswith("transformer.h."))
    plan = grown_layers(source_layers, model.config.n_layer)  # target block -> (source block, new?)

    def source_name(name: str) -> str:
        if not name.startswith("transformer.h."):
            return name
        parts = name.split(".")
        parts[2] = str(plan[int(parts[2])][0])
        return ".".join(parts)

    missing = [k for k in target if source_name(k) not in src and k != "lm_head.weight"]  # the head is tied to wte
    if missing:
        raise ValueError(f"{model_dir} lacks weights the model needs: {', '.join(missing[:4])}")
    with torch.no_grad():
        for name, t in target.items():
            if name == "lm_head.weight":
                continue
            s = src[source_name(name)].to(t.dtype)
            if name == "transformer.wte.weight":
                rows = torch.tensor([src_tokens.get(tok, -1) for tok in tokens])
                found = rows >= 0
                t.copy_(s.mean(0).expand_as(t))
                t[found] = s[rows[found]]
            elif name == "transformer.wpe.weight":
                n = min(len(s), len(t))
                t[:n] = s[:n]
            elif s.shape != t.shape:
                raise ValueError(f"{model_dir}: {name} has shape {tuple(s.shape)}, the model {tuple(t.shape)}: "
                                 f"choose the --preset of that model, or leave --preset out")
            elif name.endswith(("c_proj.weight", "c_proj.bias")) and plan[int(name.split(".")[2])][1]:
                t.zero_()  # a new block: its outputs start at zero
            else:
                t.copy_(s)
    matched = int(found.sum())
    new_blocks = sum(new for _, new in plan)
    return {"matched": matched, "new": len(tokens) - matched, "blocks": len(plan) - new_blocks,
            "new_blocks": new_blocks}


def grown_layers(source: int, target: int) -> list[tuple[int, bool]]:
    """Per block of a `target`-deep model grown from a `source`-deep one: (the source block it copies, whether it
    is a new copy). The source's blocks keep their order; a copy of the last block of each of `target - source`
    equal groups follows it: 4 -> 6 gives 0 1 1' 2 3 3'."""
    if target < source:
        raise ValueError(f"cannot initialise a {target}-layer model from a {source}-layer one")
    plan: list[tuple[int, bool]] = []
    extra = target - source
    for i in range(source):
        plan.append((i, False))
        # after block i, as many copies as groups end here (groups of source/extra blocks)
        plan += [(i, True)] * ((i + 1) * extra // source - i * extra // source)
    return plan


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
"""A Hugging Face Hub model id, owner/name (uer/gpt2-chinese-couplet)."""
HUB_FILES = ["config.json", "vocab.txt", "*.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
             "pairs.npz"]
"""What a GPT-2 needs from a Hub repository (and a duilian model's aligned-pair table): no tokenizer.json,
TensorFlow or Flax weights."""


def model_dir(name: str | Path) -> Path:
    """A model directory: a local path as it is, else a Hub id (owner/name) through huggingface_hub: downloaded
    into its cache, or read from that cache when the Hub cannot be reached (offline, HF_HUB_OFFLINE=1)."""
    path = Path(name)
    if path.exists() or not HUB_ID.fullmatch(str(name)):
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(name), allow_patterns=HUB_FILES))
    except Exception as e:  # not cached and offline, no such repository, ...: say what was looked for
        raise FileNotFoundError(f"{name} is neither a local directory nor a Hugging Face Hub model this machine "
                                f"can fetch or has cached ({type(e).__name__}: {e})") from e


def load_gpt(model_dir: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> GPT:
    """Any HuggingFace GPT-2 directory (a duilian export, the seed's model) as a GPT in eval mode, without
    transformers: the tensors are read, converted to `dtype` and `device`, and used as they are."""
    config = GPTConfig.from_hf(read_hf_config(model_dir))
    tensors = {k: _aligned(v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype))
               for k, v in read_hf_weights(model_dir).items()}
    return gpt_from_tensors(config, tensors)


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """t, copied if it does not start on a 64-byte boundary. safetensors hands back the tensors of a file inside
    the file's buffer, at whatever offset they have there, and CPU BLAS multiplies by a misaligned matrix about
    half as fast: a decoding step's [5, 256] x [256, 1024] took 162 µs, against 88 µs for the same weights copied."""
    return t.clone() if t.device.type == "cpu" and t.data_ptr() % 64 else t


def from_transformers(model: "GPT2LMHeadModel") -> GPT:
    """A loaded transformers GPT2LMHeadModel as a GPT over the same tensors (shared, not copied)."""
    return gpt_from_tensors(GPTConfig.from_hf(model.config.to_dict()), dict(model.state_dict()))


def gpt_from_tensors(config: GPTConfig, tensors: dict[str, torch.Tensor]) -> GPT:
    """A GPT (eval mode) over `tensors`, a state dict under GPT2LMHeadModel's names (used as they are, not copied;
    lm_head.weight may be left out when it is tied)."""
    if config.tie_word_embeddings or "lm_head.weight" not in tensors:
        tensors["lm_head.weight"] = tensors["transformer.wte.weight"]
    vocab = tensors["transformer.wte.weight"].shape[0]
    if vocab != config.vocab_size:  # a config.json that disagrees with its weights: the weights are what runs
        config.vocab_size = vocab
    return GPT.over(config, tensors)


def to_transformers(model: GPT, tokenizer: "Tokenizer | None" = None) -> "GPT2LMHeadModel":
    """The GPT as a transformers GPT2LMHeadModel with the same weights (copied): what export saves. Special-token
    ids come from `tokenizer` (default BERT's)."""
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel(gpt2_config(model.config, tokenizer=tokenizer))
    hf.load_state_dict(model.state_dict())
    hf.tie_weights()
    return hf.to(model.transformer.wte.weight.dtype)


def load_model(model_dir: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu") -> "GPT2LMHeadModel":
    """Any HuggingFace GPT-2 directory as transformers' own model: the reference the tests and benchmarks hold a
    GPT to, and the way export re-reads a directory with every field of its config.json."""
    from transformers import GPT2LMHeadModel

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
