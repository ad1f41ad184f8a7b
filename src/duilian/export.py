"""Export: a trained model -> a HuggingFace model directory that the seed's snippet loads as is:

    tokenizer = BertTokenizer.from_pretrained(d); model = GPT2LMHeadModel.from_pretrained(d)
    TextGenerationPipeline(model, tokenizer)("[CLS]丹 枫 江 冷 人 初 去 -", max_length=25, do_sample=True)

The directory holds:
    config.json              GPT2Config; bos = [CLS] 101, eos = [SEP] 102, pad = [PAD] 0
    model.safetensors        weights (or model-0000k-of-0000n.safetensors + index with --max-shard-size)
    generation_config.json   sampling defaults for the pipeline and `model.generate`
    vocab.txt                the vocabulary the model was trained with: a corpus's own, or the 21,128-token
                             Chinese BERT one
    tokenizer_config.json    BertTokenizer, no lower-casing (the vocabulary is the cased Chinese BERT one)
    special_tokens_map.json

Every file gets the mode a new file gets in that directory (0o666 less the umask, usually 0644), the
weights included, which the safetensors library (0.8) leaves 0600.

The tokenizer files are written by hand rather than by `BertTokenizer.save_pretrained`, because that
writes vocab.txt under transformers 4 but only tokenizer.json under transformers 5; the hand-written
files are the ones transformers 4 writes, and transformers 5 (checked on 5.17 and 5.24) loads them too.

This is one of the edges where transformers is used: a gpt.GPT is turned into transformers' GPT2LMHeadModel (the
same names and tensors: model.to_transformers) and saved by its save_pretrained, so the files are exactly what
transformers writes and reads.

Note that transformers 5's BertTokenizer turns the seed's prompt into [CLS] [CLS] 丹 … - [SEP] (it adds
its own [CLS] … [SEP] around the text). We keep that behaviour; the trainer teaches the model to continue
that form too. `seed_snippet_check` measures how well an export does on it.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import GenerationConfig, GPT2LMHeadModel

from .gpt import GPT
from .model import is_hf_model_dir, to_transformers
from .text import MAX_CHARS
from .tokenizer import CLS, MASK, PAD, SEP, SEPARATOR, UNK, Tokenizer, default_tokenizer

DEFAULT_MAX_LENGTH = 2 * MAX_CHARS + 5
"""generation_config.max_length: [CLS] [CLS] 上联 - [SEP] 下联 [SEP] at text.MAX_CHARS per line (capped by
n_positions). Set as a total length, not max_new_tokens, because a max_new_tokens in the generation config
would override the seed snippet's own `max_length=25`."""

WEIGHT_FILES = ("model*.safetensors", "model.safetensors.index.json",
                "pytorch_model*.bin", "pytorch_model.bin.index.json")
"""Weight files of a HuggingFace directory, removed before an export writes its own."""

WRITTEN_FILES = (*WEIGHT_FILES, "config.json", "generation_config.json", "vocab.txt", "tokenizer_config.json",
                 "special_tokens_map.json")
"""Every file an export writes (the weight files as patterns), for setting their mode."""

DEFAULT_TOP_K = 50
"""Sampling default: the 50 most likely characters (transformers' own default, written out)."""


def export_model(
    model: GPT | GPT2LMHeadModel,
    out_dir: str | Path,
    dtype: torch.dtype | None = None,
    max_shard_size: str | int | None = None,
    tokenizer: Tokenizer | None = None,
) -> Path:
    """Write `model` (a gpt.GPT, or transformers' GPT2LMHeadModel of a directory being re-exported) as a HuggingFace
    directory at `out_dir` (created; files of the same name replaced). config.json keeps the model's "duilian" entry.

    dtype: cast the weights (torch.float16 halves the size); None keeps the model's dtype.
    max_shard_size: e.g. "50MB" to split the safetensors file; None keeps transformers' default (one file).
    tokenizer: the vocabulary the model was trained with (a checkpoint's, a dataset's), written as vocab.txt;
    its size must equal the model's vocab_size. Default: the BERT vocabulary.
    The caller's model is not modified.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = tokenizer or default_tokenizer()
    if len(tok) != model.config.vocab_size:
        raise ValueError(
            f"the vocabulary has {len(tok)} tokens but the model has vocab_size {model.config.vocab_size}"
        )

    # 1) A CPU copy in the export dtype, so a model still on the GPU or in training is left alone: transformers'
    #    GPT2LMHeadModel over copies of a GPT's tensors, or a deepcopy (which keeps the lm_head <-> wte tie).
    model = to_transformers(model, tok) if isinstance(model, GPT) else copy.deepcopy(model).to("cpu")
    if dtype is not None:
        model = model.to(dtype)
    model.eval()

    # 2) Special-token ids from the vocabulary that is shipped with the weights.
    model.config.bos_token_id = tok.cls_id
    model.config.eos_token_id = tok.sep_id
    model.config.pad_token_id = tok.pad_id
    model.generation_config = generation_config(model.config.n_positions, tok)

    # 3) Weights + config.json + generation_config.json. Weights of an earlier export go first: a stale
    #    model.safetensors next to a new shard index is what from_pretrained would load.
    #    transformers 5 always writes safetensors and no longer names the flag; transformers 4 needs it.
    for pattern in WEIGHT_FILES:
        for stale in out.glob(pattern):
            stale.unlink()
    kwargs = {}
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        kwargs["safe_serialization"] = True
    if max_shard_size is not None:
        kwargs["max_shard_size"] = max_shard_size
    model.save_pretrained(str(out), **kwargs)

    # 4) The tokenizer: vocab.txt and the two small json files BertTokenizer.from_pretrained reads.
    tok.save(out / "vocab.txt")
    specials = {"unk_token": UNK, "sep_token": SEP, "pad_token": PAD, "cls_token": CLS, "mask_token": MASK}
    tokenizer_config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": False,
        "tokenize_chinese_chars": True,  # one token per Han character
        "strip_accents": None,
        "model_max_length": model.config.n_positions,
        **specials,
    }
    _write_json(out / "tokenizer_config.json", tokenizer_config)
    _write_json(out / "special_tokens_map.json", specials)

    # 5) One mode for every file: the one a new file gets here (a replaced file keeps its old mode, and
    #    safetensors leaves its files 0600), so others may read the export as far as the umask allows.
    mode = new_file_mode(out)
    for pattern in WRITTEN_FILES:
        for path in out.glob(pattern):
            os.chmod(path, mode)
    return out


def new_file_mode(directory: str | Path) -> int:
    """The permission bits a file created in `directory` gets: 0o666 less the umask (or whatever a default
    ACL gives). Found by creating one, since reading the umask means setting it (os.umask), which races
    with other threads creating files."""
    probe = Path(directory) / f".duilian-mode-probe-{uuid.uuid4().hex}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        return os.fstat(fd).st_mode & 0o777
    finally:
        os.close(fd)
        probe.unlink()


def generation_config(n_positions: int, tok: Tokenizer) -> GenerationConfig:
    """Sampling defaults that suit a couplet: stop at [SEP], room for a MAX_CHARS pair."""
    return GenerationConfig(
        bos_token_id=tok.cls_id,
        eos_token_id=tok.sep_id,
        pad_token_id=tok.pad_id,
        do_sample=True,
        top_k=DEFAULT_TOP_K,
        max_length=min(n_positions, DEFAULT_MAX_LENGTH),
    )


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


# --- the seed's snippet on an export -------------------------------------------------------------


@dataclass
class SnippetResult:
    """One 上联 through the seed's pipeline snippet."""

    upper: str
    generated_text: str
    """The pipeline's own output (special tokens skipped, as the seed's snippet shows it)."""
    lower: str
    """The first len(upper) generated tokens joined, if all are characters (no special token before)."""
    starts_ok: bool
    """The first len(upper) generated tokens are Han characters or punctuation."""
    stops_at_length: bool
    """starts_ok, and the next token is [SEP] or generation ended there: the model knew the length."""
    form_valid: bool
    """starts_ok and duilian.rules.check_pair(upper, lower).valid."""


@dataclass
class SnippetReport:
    n: int
    starts_ok: float
    """Fraction of 上联 whose continuation starts with a 下联-shaped run of characters."""
    stops_at_length: float
    form_valid: float
    examples: list[SnippetResult] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def seed_snippet_check(model_dir: str | Path, uppers: list[str], n: int = 100, seed: int = 0) -> dict:
    """Run the seed's TextGenerationPipeline snippet on the first `n` of `uppers` and measure how often
    the continuation starts with a 下联 of the right form.

    The prompt is the seed's "[CLS]上 联 -" string, tokenized by the export's BertTokenizer (under
    transformers 5 that is [CLS] [CLS] 上 联 - [SEP]). max_length is set per line to leave room for the
    下联 plus [SEP] (the seed's fixed 25 only fits a 7-character line). Returns SnippetReport.to_dict():
    fractions starts_ok / stops_at_length / form_valid, and every example.
    """
    from transformers import BertTokenizer, TextGenerationPipeline, set_seed

    from .rules import check_pair
    from .text import is_han, is_punct

    tokenizer = BertTokenizer.from_pretrained(str(model_dir))
    model = GPT2LMHeadModel.from_pretrained(str(model_dir))
    generator = TextGenerationPipeline(model, tokenizer)
    special_ids = set(tokenizer.all_special_ids)
    set_seed(seed)
    results = []
    for upper in uppers[:n]:
        prompt = CLS + " ".join(upper) + " " + SEPARATOR
        prompt_len = len(tokenizer(prompt)["input_ids"])
        max_length = min(model.config.n_positions, prompt_len + len(upper) + 1)
        # return_tensors gives the generated ids, so that a special token is seen where it falls
        # (the text output drops them).
        (out,) = generator(prompt, max_length=max_length, do_sample=True, return_tensors=True)
        ids = list(out["generated_token_ids"])
        new = ids[prompt_len:]
        head = new[: len(upper)]
        chars = tokenizer.convert_ids_to_tokens(head)
        starts_ok = len(head) == len(upper) and all(
            i not in special_ids and len(c) == 1 and (is_han(c) or is_punct(c)) for i, c in zip(head, chars)
        )
        lower = "".join(chars) if starts_ok else ""
        rest = new[len(upper):]
        stops = starts_ok and (not rest or rest[0] == tokenizer.sep_token_id)
        valid = starts_ok and check_pair(upper, lower).valid
        text = prompt + tokenizer.decode(new, skip_special_tokens=True)
        results.append(SnippetResult(upper, text, lower, starts_ok, stops, valid))
    k = max(len(results), 1)
    return SnippetReport(
        n=len(results),
        starts_ok=sum(r.starts_ok for r in results) / k,
        stops_at_length=sum(r.stops_at_length for r in results) / k,
        form_valid=sum(r.form_valid for r in results) / k,
        examples=results,
    ).to_dict()


# --- what to export ------------------------------------------------------------------------------


def model_from_path(path: str | Path) -> tuple[GPT | GPT2LMHeadModel, Tokenizer]:
    """The model behind `path` and its vocabulary: a training checkpoint file, a training run directory (its
    final.pt, else its latest step checkpoint; see duilian.train.load_checkpoint), or a HuggingFace
    directory, to re-export it (e.g. as float16): read by transformers, so every field of its config.json is kept."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint or run directory at {path}")
    if path.is_dir() and is_hf_model_dir(path):
        from .model import load_model

        return load_model(path), Tokenizer.from_dir(path)
    from .train import checkpoint_tokenizer, load_checkpoint, model_from_checkpoint  # the trainer's format

    ckpt = load_checkpoint(path)
    return model_from_checkpoint(ckpt), checkpoint_tokenizer(ckpt)

