"""Training: one loop for a CPU, one GPU, or many processes under torchrun (DDP).

Read top to bottom:

    TrainConfig         every knob, with the seed's values as defaults (UER-py: 25k steps, lr 5e-4,
                        batch 64 per process, 10% linear warm-up then linear decay, lines of 64)
    distributed setup   RANK / WORLD_SIZE / LOCAL_RANK from torchrun (gloo on CPU, nccl on GPU)
    loss                next-token cross-entropy on real tokens only, normalised by the *global*
                        count of real tokens so DDP equals one process with the same global batch
    checkpoints         atomic step_XXXXXXX.pt files + a `latest` marker; final.pt for export
    train(config)       the loop: data order from (seed, epoch), grad accumulation, bf16 autocast,
                        optional torch.compile, eval, logs (stdout, metrics.jsonl, loss.png)

A resumed run continues exactly: the data order is a function of (seed, step), dropout is reseeded
from (seed, rank, step) at every step, and optimizer + scheduler states are restored, so a run killed
with SIGKILL and resumed ends with the same weights as one that never stopped.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .gpt import GPT
from .dataset import IGNORE_INDEX, BatchSchedule, TokenizedSplit, collate, hide_upper, read_tokenizer, v5_prompt_lines
from .model import PRESETS, Preset, build_model, count_parameters, init_from_model_dir
from .text import is_han
from .tokenizer import Tokenizer, default_tokenizer

CHECKPOINT_FORMAT = 1

# Fields that decide the numbers a run computes: a resumed run must keep them, or it would not be
# the same run. (Logging, saving, device, compile and time budget may change between restarts.)
_RESUME_MUST_MATCH = (
    "preset", "init_from", "dropout", "seed", "steps", "lr", "warmup", "weight_decay", "grad_clip",
    "seq_len", "bucket", "bucket_chunk", "v5_prompt_frac", "unk_frac",
)


# --- configuration ------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Everything `duilian train` does. Defaults are the seed's (uer/gpt2-chinese-couplet)."""

    data: str
    """Dataset directory written by `duilian prepare` (train split required, val split optional)."""
    out: str
    """Run directory: checkpoints/, metrics.jsonl, loss.png, config.json and final.pt go here."""

    # model
    preset: str = ""
    """A key of duilian.model.PRESETS; empty means `base` (the seed's GPT-2), or with `init_from` that
    model's own shape."""
    init_from: str = ""
    """A HuggingFace GPT-2 directory (a duilian export, the default model, the seed's converted model)
    whose weights start the run; embedding rows are matched by token. Optimizer and schedule start afresh."""
    dropout: float = 0.1
    """Dropout on embeddings, attention and residuals (GPT-2's / UER's 0.1)."""
    seed: int = 7
    """Seeds the initialisation, the data order and dropout (UER-py's default seed is 7)."""

    # optimisation
    steps: int = 25_000
    """Optimizer steps in the whole run (the seed's 25,000)."""
    batch_size: int = 64
    """Lines per micro-batch per process. Global batch = batch_size × world size × grad_accum."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step (same global batch on fewer GPUs)."""
    lr: float = 5e-4
    """Peak learning rate (the seed's 5e-4)."""
    warmup: float = 0.1
    """Fraction of `steps` spent warming the learning rate up linearly; then it decays linearly to 0
    (UER-py's default schedule, warmup 0.1)."""
    weight_decay: float = 0.01
    """AdamW weight decay on matrices (UER-py's 0.01); biases and LayerNorms get none."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 = off). Not in UER-py; a guard against spikes."""

    # batches
    seq_len: int = 64
    """Longest line in tokens, [CLS]上联-下联[SEP] (the seed's 64); `--pad fixed` pads every row to it."""
    pad: str = "batch"
    """`fixed`: pad every row to seq_len like the seed; `batch`: pad to the batch's longest row."""
    pad_multiple: int = 8
    """With `--pad batch`, round the padded length up to a multiple of this (fewer compiled shapes,
    aligned GPU kernels)."""
    bucket: bool = False
    """Group lines of similar length into batches (see dataset.BatchSchedule): far less padding."""
    bucket_chunk: int = 64
    """Global batches per length-sorting chunk when bucketing."""
    v5_prompt_frac: float = 0.05
    """Fraction of lines shown as transformers 5 prompts them, [CLS][CLS]上联-[SEP]下联[SEP], with no
    loss on the two inserted tokens, so the model also continues that prompt (0 = never)."""

    unk_frac: float = 0.005
    """Share of 上联 characters shown as [UNK] (drawn per line and epoch), with no loss on predicting [UNK]
    anywhere: the model learns to answer a 上联 holding a character it does not know (0 = never)."""

    # evaluation, logging, checkpoints
    eval_every: int = 1000
    """Steps between validation passes (also at the start and the end; 0 = only at the end)."""
    eval_batches: int = 20
    """Validation micro-batches per process per pass (batch_size lines each)."""
    report_every: int = 1000
    """Steps between training-loss reports (the seed's 1,000; 0 = only at the end)."""
    save_every: int = 5000
    """Steps between checkpoints (the seed's 5,000; 0 = only when the run ends, which always writes one)."""
    keep_checkpoints: int = 0
    """Keep only this many newest step checkpoints (0 = keep all)."""
    max_minutes: float = 0.0
    """Wall-clock budget of the training loop in minutes: stop cleanly, checkpoint and write final.pt
    when it is spent (0 = no limit). The learning-rate schedule still assumes `steps`."""
    resume: bool = False
    """Continue from the newest checkpoint in `out` (starts afresh when there is none)."""

    # hardware
    device: str = "auto"
    """`auto` (CUDA when present), `cpu` or `cuda`. Under torchrun each process takes cuda:LOCAL_RANK."""
    dtype: str = "auto"
    """Autocast dtype: `auto` (bf16 where matmuls run natively in it: CUDA, and CPUs with AVX-512 BF16 or
    AMX; fp32 elsewhere), `bf16` or `fp32`. Weights, optimizer state and the loss stay fp32."""
    compile: bool = False
    """torch.compile the transformer body (in place, so saved names carry no `_orig_mod.` prefix)."""
    peak_flops: float = 989e12
    """Peak dense bf16 FLOP/s of one accelerator, for MFU (H100/H200 SXM: 989e12)."""

    # testing aid
    fault_at_step: int = 0
    """Testing aid: SIGKILL this process right after step N completes (0 = never)."""

    def __post_init__(self):
        if self.preset and self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose from {', '.join(PRESETS)}")
        if self.pad not in ("fixed", "batch"):
            raise ValueError(f"pad must be 'fixed' or 'batch', not {self.pad!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, not {self.device!r}")
        if self.dtype not in ("auto", "bf16", "fp32"):
            raise ValueError(f"dtype must be auto, bf16 or fp32, not {self.dtype!r}")
        for name in ("steps", "batch_size", "grad_accum", "seq_len", "pad_multiple", "bucket_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("eval_every", "eval_batches", "report_every", "save_every", "keep_checkpoints",
                     "fault_at_step", "max_minutes", "weight_decay", "grad_clip", "dropout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if not 0 <= self.warmup < 1:
            raise ValueError("warmup is a fraction of the steps, in [0, 1)")
        if not 0 <= self.v5_prompt_frac < 1:
            raise ValueError("v5_prompt_frac is a fraction in [0, 1)")
        if not 0 <= self.unk_frac < 1:
            raise ValueError("unk_frac is a fraction in [0, 1)")
        if self.lr <= 0:
            raise ValueError("lr must be positive")

    def shape(self) -> Preset:
        """The model's shape: the preset, or the `init_from` model's. A preset given with `init_from` must have that
        model's width and heads; it may be deeper (model.init_from_model_dir grows the depth)."""
        if not self.init_from:
            return PRESETS[self.preset or "base"]
        shape = Preset.of_model_dir(self.init_from)
        if self.preset and PRESETS[self.preset] != shape:
            p = PRESETS[self.preset]
            if (p.n_embd, p.n_head, p.n_positions) != (shape.n_embd, shape.n_head, shape.n_positions) \
                    or p.n_layer < shape.n_layer:
                raise ValueError(f"--preset {self.preset} is {p}, but --init-from {self.init_from} is {shape}; leave "
                                 f"--preset out to train that model's shape, or choose one as wide and deeper")
            return p
        return shape


# --- distributed setup --------------------------------------------------------------------------
@dataclass
class Dist:
    """Where this process stands: torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; a plain run is rank 0 of 1."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def master(self) -> bool:
        return self.rank == 0

    @property
    def ddp(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str) -> Dist:
    """Pick the device and, under torchrun, join the process group (nccl on CUDA, gloo on CPU)."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but torch sees no CUDA device")
    if "RANK" not in os.environ:
        return Dist(0, 0, 1, torch.device("cuda" if use_cuda else "cpu"))
    rank, local_rank, world = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None)
    return Dist(rank, local_rank, world, dev)


def _all_reduce_sum(values: list[float], d: Dist) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=d.device)
    if d.ddp:
        dist.all_reduce(t)
    return t.tolist()


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX-512 BF16 or AMX). There a bf16 matmul is ~4x
    faster than fp32 and a `mini` training step 1.7x (benchmarks/bench_train.py); without them torch emulates
    bf16 and it is slower than fp32, so `--dtype auto` keeps fp32 there (AVX2 machines)."""
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


# --- learning rate, loss ------------------------------------------------------------------------
def lr_multiplier(step: int, steps: int, warmup: float) -> float:
    """Multiplier of the peak lr for update `step` (0-based): UER-py's warm-up-linear schedule.

    1) linear warm-up over the first warmup × steps updates, 2) linear decay to 0 at `steps`.
    """
    n_warm = int(warmup * steps)
    if step < n_warm:
        return (step + 1) / n_warm
    return max(0.0, (steps - step) / max(1, steps - n_warm))


class LMLoss(nn.Module):
    """Summed next-token cross-entropy over the real positions of a batch.

    The vocabulary projection (21,128 × n_embd, a fifth of base's FLOPs) runs only on positions that
    carry a target, so padding costs the transformer body but not the head.
    """

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        # inputs, targets: (B, T); keep: (N,) flat indices of positions whose target is real
        return self.model(inputs, targets, keep)


def flops_per_token(model: GPT) -> int:
    """6 × the parameters that do matmuls per token (position embeddings are a lookup; the tied
    token embedding counts once, as the output projection). Attention is added per batch."""
    return 6 * (count_parameters(model) - model.transformer.wpe.weight.numel())


# --- checkpoints --------------------------------------------------------------------------------
def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _model_meta(cfg: TrainConfig) -> dict:
    return {
        "format": CHECKPOINT_FORMAT,
        "preset_name": cfg.preset,
        "preset": asdict(cfg.shape()),
        "dropout": cfg.dropout,
        "tokens": list(read_tokenizer(cfg.data).tokens),  # the vocabulary travels with the weights
        "lines": _dataset_lines(cfg.data),  # which kinds of line the model learned (export: config.json "duilian")
        "config": asdict(cfg),
        "versions": {"torch": str(torch.__version__), "transformers": str(_transformers_version())},
    }


def _dataset_lines(data: str | Path) -> dict:
    """Training lines by kind (forward, backward, keywords) of a dataset; datasets written before the kinds
    existed hold forward lines only."""
    from .dataset import read_meta

    info = read_meta(data).get("info", {})
    lines = info.get("lines") or {"forward": info.get("train_pairs", 0), "backward": 0, "keywords": 0}
    return {k: int(lines.get(k, 0)) for k in ("forward", "backward", "keywords")}


def _transformers_version() -> str:
    """The installed transformers' version, read without importing it (seconds)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transformers")
    except PackageNotFoundError:
        return "none"


def save_checkpoint(run_dir: Path, step: int, model, optimizer, scheduler, cfg: TrainConfig,
                    world_size: int = 1) -> Path:
    """Write RUN_DIR/checkpoints/step_XXXXXXX.pt, then point `latest` at it (both atomically).

    Only plain containers, numbers, strings and tensors go in, so `torch.load(weights_only=True)` reads it.
    """
    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"step_{step:07d}.pt"
    state = {
        **_model_meta(cfg),
        "kind": "checkpoint",
        "step": step,
        "world_size": world_size,
        "global_batch": cfg.batch_size * world_size * cfg.grad_accum,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        # No RNG state: dropout is reseeded from (seed, rank, step) at every step, so none is needed.
    }
    _atomic_save(state, path)
    _atomic_write(ckpt_dir / "latest", path.name + "\n")
    if cfg.keep_checkpoints:
        for old in sorted(ckpt_dir.glob("step_*.pt"))[: -cfg.keep_checkpoints]:
            old.unlink()
    return path


def save_final(run_dir: Path, step: int, model, cfg: TrainConfig, metrics: dict) -> Path:
    """RUN_DIR/final.pt: the weights and what is needed to rebuild the model (no optimizer)."""
    path = run_dir / "final.pt"
    _atomic_save({**_model_meta(cfg), "kind": "final", "step": step, "model": model.state_dict(),
                  "metrics": metrics}, path)
    return path


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest readable step checkpoint of a run (the `latest` marker, else the highest step file)."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    marker = ckpt_dir / "latest"
    if marker.exists():
        path = ckpt_dir / marker.read_text(encoding="utf-8").strip()
        if path.exists():
            return path
    steps = sorted(ckpt_dir.glob("step_*.pt"))
    return steps[-1] if steps else None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint dict with `torch.load(weights_only=True)`.

    `path` may be a checkpoint file (step_XXXXXXX.pt or final.pt) or a run directory, which means its
    final.pt if training finished, else its newest step checkpoint. The dict has at least: `model`
    (state dict of GPT2LMHeadModel), `preset` (Preset fields), `preset_name`, `dropout`, `tokens` (the
    vocabulary; absent from checkpoints older than corpus vocabularies, which used BERT's), `config`
    (TrainConfig as a dict), `step`, `kind` ("final" or "checkpoint"); step checkpoints add
    `optimizer`, `scheduler`, `world_size` and `global_batch`.
    """
    p = Path(path)
    if p.is_dir():
        final = p / "final.pt"
        found = final if final.exists() else latest_checkpoint(p)
        if found is None:
            raise FileNotFoundError(f"{p} holds no final.pt and no checkpoints/step_*.pt")
        p = found
    return torch.load(p, map_location=map_location, weights_only=True)


def checkpoint_tokenizer(ckpt: dict) -> Tokenizer:
    """The vocabulary a checkpoint was trained with (BERT's for checkpoints written before it was stored)."""
    return Tokenizer(tuple(ckpt["tokens"])) if "tokens" in ckpt else default_tokenizer()


def model_from_checkpoint(path: str | Path | dict, device: str | torch.device = "cpu") -> GPT:
    """A GPT (eval mode, fp32) rebuilt from a checkpoint file or run directory (or a checkpoint
    dict already read with load_checkpoint)."""
    ckpt = path if isinstance(path, dict) else load_checkpoint(path)
    model = build_model(Preset(**ckpt["preset"]), dropout=ckpt["dropout"], tokenizer=checkpoint_tokenizer(ckpt))
    model.load_state_dict(ckpt["model"])
    if "lines" in ckpt:  # saved into config.json by export: what decoding may ask of the model (api.Couplets)
        model.config.duilian = {"lines": ckpt["lines"]}
    return model.to(device).eval()


# --- metrics ------------------------------------------------------------------------------------
class Metrics:
    """Appends one JSON object per line to RUN_DIR/metrics.jsonl and draws RUN_DIR/loss.png."""

    def __init__(self, run_dir: Path, resume_step: int | None):
        self.path = run_dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            # Drop what the interrupted run logged after its last checkpoint: it is computed again.
            keep = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            _atomic_write(self.path, "".join(line + "\n" for line in keep))
        elif resume_step is None:
            self.path.write_text("", encoding="utf-8")

    def log(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def plot(self, png: Path) -> None:
        try:
            import matplotlib
        except ImportError:  # a bare GPU image may lack it; the numbers are in metrics.jsonl anyway
            print(f"matplotlib is not installed: no {png.name}", file=sys.stderr)
            return
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        recs = self.records()
        train = [(r["step"], r["loss"]) for r in recs if r.get("event") == "train"]
        val = [(r["step"], r["val_loss"]) for r in recs if r.get("event") == "val"]
        fig, ax = plt.subplots(figsize=(7, 4))
        for pts, label, style in ((train, "train", "-"), (val, "validation", "o-")):
            if pts:
                ax.plot(*zip(*pts), style, label=label)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats / token)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        tmp = png.with_name(png.name + ".tmp.png")
        fig.savefig(tmp, dpi=100)
        plt.close(fig)
        os.replace(tmp, png)


# --- the loop -----------------------------------------------------------------------------------
def train(cfg: TrainConfig) -> dict:
    """Run (or resume) training. Returns the last metrics; rank 0 writes everything under cfg.out."""
    d = setup_distributed(cfg.device)
    try:
        return _train(cfg, d)
    finally:
        if d.ddp and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, d: Dist) -> dict:
    run_dir = Path(cfg.out)
    cuda = d.device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    amp_dtype = torch.bfloat16 if cfg.dtype == "bf16" or (cfg.dtype == "auto" and (cuda or cpu_has_bf16())) else None
    autocast = (lambda: torch.autocast(d.device.type, dtype=amp_dtype)) if amp_dtype else nullcontext
    tok = read_tokenizer(cfg.data)  # the dataset's vocabulary: the model gets one row per token

    # 1) data
    train_split = TokenizedSplit.open(cfg.data, "train")
    # "val" (every source) and, for a dataset of several sources, "val.NAME" per source: all forward lines
    val_splits = {name: TokenizedSplit.open(cfg.data, name) for name in _val_split_names(cfg.data)}
    lengths = train_split.lengths
    if lengths.max() > cfg.seq_len:
        raise ValueError(f"dataset has lines of {lengths.max()} tokens, longer than --seq-len {cfg.seq_len}")
    preset = cfg.shape()
    if preset.n_positions < cfg.seq_len + 2:
        raise ValueError(f"the model has {preset.n_positions} positions, fewer than seq_len + 2")
    global_batch = cfg.batch_size * d.world_size * cfg.grad_accum
    schedule = BatchSchedule(lengths, global_batch, cfg.seed, cfg.bucket, cfg.bucket_chunk)
    pad_to = cfg.seq_len if cfg.pad == "fixed" else None

    hideable = np.array([len(t) == 1 and is_han(t) for t in tok.tokens])  # [V]: what unk_frac may hide
    markers = tuple(m for m in (tok.reverse_id, tok.keyword_id) if m is not None)
    # bool [n_lines]: the seed's own lines, [CLS]上联-下联[SEP] (not backward, no keywords)
    forward = ~np.isin(np.asarray(train_split.tokens[train_split.offsets[:-1] + 1]), markers)

    def make_batch(split: TokenizedSplit, indices: np.ndarray, v5_form: np.ndarray | None, epoch: int | None = None):
        # Pads are filled with [SEP], not [PAD]: right of a line they are never attended to nor scored,
        # and without a [PAD] in sight transformers skips its per-batch padding check (a GPU sync).
        # `epoch` is given for training batches only: validation sees every character as it is.
        hidden = hide_upper(split, indices, cfg.seed, epoch, cfg.unk_frac, hideable, tok.separator_id) \
            if cfg.unk_frac and epoch is not None else None
        b = collate(split, indices, pad_to, cfg.pad_multiple, v5_form,
                    tok.cls_id, tok.sep_id, tok.separator_id, pad_id=tok.sep_id, unk_id=tok.unk_id, hidden=hidden,
                    marker_ids=markers)
        keep = np.flatnonzero(b.targets.reshape(-1) != IGNORE_INDEX)
        # pinned host memory makes the copies asynchronous: the CPU builds the next batch meanwhile
        to = (lambda a: torch.from_numpy(a).pin_memory().to(d.device, non_blocking=True)) if cuda \
            else torch.from_numpy
        return b, to(b.inputs), to(b.targets), to(keep)

    # 2) model, optimizer, schedule (built identically on every rank; DDP also broadcasts rank 0's weights)
    model = build_model(preset, cfg.dropout, seed=cfg.seed, tokenizer=tok)
    if cfg.init_from and not (cfg.resume and latest_checkpoint(run_dir)):
        got = init_from_model_dir(model, cfg.init_from, tok.tokens)
        grown = f"; {got['new_blocks']} new blocks (zero output projections)" if got["new_blocks"] else ""
        _print(d, f"weights from {cfg.init_from}: {got['matched']:,} tokens matched, {got['new']:,} new{grown}")
    model = model.to(d.device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        # fused: one kernel for every parameter's update, on the GPU and (torch >= 2.4) the CPU: 3-5% of a
        # CPU step for `mini` (benchmarks/bench_train.py), more on a GPU
        lr=cfg.lr, betas=(0.9, 0.999), eps=1e-6, fused=True,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(s, cfg.steps, cfg.warmup))
    step = 0
    if cfg.resume and (ckpt_path := latest_checkpoint(run_dir)) is not None:
        ckpt = torch.load(ckpt_path, map_location=d.device, weights_only=True)
        _check_resumable(ckpt, cfg, global_batch)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        step = resumed = ckpt["step"]
        _print(d, f"resuming from {ckpt_path} at step {step}")
    else:
        resumed = None  # a fresh run: earlier metrics in run_dir are not continued
        if cfg.resume:
            _print(d, f"no checkpoint in {run_dir / 'checkpoints'}; starting afresh")

    # Compile the body in place (nn.Module.compile): the module keeps its names, so state_dict() has
    # no `_orig_mod.` prefix. The head + loss stay eager: their row count changes every batch.
    if cfg.compile:
        model.compile_blocks()
    loss_module = LMLoss(model)
    ddp_module = nn.parallel.DistributedDataParallel(loss_module, device_ids=[d.local_rank] if cuda else None) \
        if d.ddp else loss_module
    ddp_module.train()

    n_flops_token = flops_per_token(model)
    attn_flops = 12 * preset.n_layer * preset.n_embd  # × Σ length² of a batch (fwd + bwd, nanoGPT's count)
    if d.master:
        run_dir.mkdir(parents=True, exist_ok=True)
    metrics = Metrics(run_dir, resumed) if d.master else None
    if d.master:
        _atomic_write(run_dir / "config.json", json.dumps(
            {**asdict(cfg), "world_size": d.world_size, "global_batch": global_batch,
             "parameters": count_parameters(model)}, indent=2))
        name = cfg.preset or (f"the shape of {cfg.init_from}" if cfg.init_from else "base")
        _print(d, f"{name}: {count_parameters(model):,} parameters | {len(train_split):,} lines | "
                  f"global batch {global_batch} | {schedule.batches_per_epoch} steps/epoch | {d.device} "
                  f"{'bf16' if amp_dtype else 'fp32'} | world {d.world_size}")

    @torch.no_grad()
    def evaluate() -> dict:
        """Mean loss per real token over the first world × eval_batches × batch_size lines of each val split:
        val_loss / val_ppl for "val", val_loss.NAME for each source's own split."""
        if not val_splits or cfg.eval_batches == 0:
            return {}
        model.eval()
        out = {}
        for name, split in val_splits.items():
            n = min(len(split), d.world_size * cfg.eval_batches * cfg.batch_size)
            mine = np.array_split(np.arange(n), d.world_size)[d.rank]
            total = count = 0.0
            for start in range(0, len(mine), cfg.batch_size):
                b, x, y, keep = make_batch(split, mine[start : start + cfg.batch_size], None)
                with autocast():
                    total += loss_module(x, y, keep).item()
                count += b.n_targets
            total, count = _all_reduce_sum([total, count], d)
            out["val_loss" + name[3:]] = total / max(count, 1)
        model.train()
        if "val_loss" in out:
            out["val_ppl"] = math.exp(min(out["val_loss"], 50))
        return out

    def log_val(at: int) -> dict:
        v = evaluate()
        if v and d.master:
            metrics.log({"event": "val", "step": at, **v})
            parts = " | ".join(f"{k.replace('_', ' ')} {x:.4f}" for k, x in v.items() if k.startswith("val_loss"))
            _print(d, f"step {at:>6} | {parts} | val ppl {v.get('val_ppl', math.nan):.2f}", bar)
        return v

    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.steps, initial=step, disable=not (d.master and sys.stderr.isatty()), dynamic_ncols=True)
    last: dict = {}
    if step == 0 and cfg.eval_every:
        last.update(log_val(0))

    # 3) the loop. `step` counts completed optimizer updates.
    start_time = t0 = time.perf_counter()
    cpu_start = time.process_time()
    paused = 0.0  # seconds of the current report window spent evaluating and saving, not training
    window = torch.zeros((), dtype=torch.float64, device=d.device)  # Σ token losses since the last report
    window_tokens = window_attn = window_targets = 0
    window_steps = 0
    stop_early = False
    v5_epoch, v5_lines = -1, None
    while step < cfg.steps:
        # Dropout: reseeded from (seed, rank, step), so it does not depend on where a run was resumed.
        torch.manual_seed((cfg.seed * 1_000_003 + d.rank) * 1_000_003 + step)
        epoch, micro = schedule.micro_batches(step, d.rank, d.world_size, cfg.grad_accum)
        if epoch != v5_epoch:
            v5_epoch, v5_lines = epoch, v5_prompt_lines(cfg.seed, epoch, len(train_split), cfg.v5_prompt_frac)
            v5_lines &= lengths + 2 <= cfg.seq_len  # the two extra tokens must fit, whatever the padding
            v5_lines &= forward  # the transformers 5 prompt is the seed's, never a backward or keyword one
        # Every rank knows the whole global batch, so the global count of real targets needs no
        # communication: a line of L tokens has L - 1 targets in either prompt form. ([UNK] targets, which
        # carry no loss, are ~0.2% of them at unk_frac 0.005; counting them anyway scales every step alike
        # and keeps the count free, and one process still equals DDP exactly.)
        _, global_idx = schedule.global_batch_at(step)
        n_global = int((lengths[global_idx] - 1).sum())
        for k, idx in enumerate(micro):
            b, x, y, keep = make_batch(train_split, idx, v5_lines[idx], epoch)
            # DDP averages gradients over ranks; × world_size turns that average back into the sum,
            # so the update equals one process on the whole global batch.
            sync = k == len(micro) - 1 or not d.ddp
            with (nullcontext() if sync else ddp_module.no_sync()), autocast():
                loss_sum = ddp_module(x, y, keep)
            (loss_sum * (d.world_size / n_global)).backward()
            window += loss_sum.detach()
            window_tokens += b.n_tokens
            window_attn += b.attn_sq
            window_targets += b.n_targets
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        window_steps += 1
        bar.update(1)

        # Time budget. Under DDP the ranks must stop at the same step, so they vote every 10 steps (a
        # vote is a sync; one process needs none and checks every step).
        if cfg.max_minutes and (not d.ddp or step % 10 == 0):
            over = time.perf_counter() - start_time > 60 * cfg.max_minutes
            if d.ddp:
                over = _all_reduce_sum([float(over)], d)[0] > 0
            stop_early = over and step < cfg.steps
        done = step == cfg.steps or stop_early

        # 4) report
        if (cfg.report_every and step % cfg.report_every == 0) or done:
            loss_total, tokens, attn, targets = _all_reduce_sum(
                [window.item(), window_tokens, window_attn, window_targets], d)
            dt = time.perf_counter() - t0 - paused
            rec = {"event": "train", "step": step, "loss": loss_total / max(targets, 1),
                   "lr": scheduler.get_last_lr()[0], "tokens_per_s": tokens / dt,
                   "steps_per_s": window_steps / dt, "elapsed_s": time.perf_counter() - start_time,
                   "cpu_s": time.process_time() - cpu_start}  # this process's CPU seconds, all threads
            if cuda:
                rec["mfu"] = (n_flops_token * tokens + attn_flops * attn) / dt / (cfg.peak_flops * d.world_size)
            last.update(rec)
            if d.master:
                metrics.log(rec)
                _print(d, f"step {step:>6}/{cfg.steps} | loss {rec['loss']:.4f} | lr {rec['lr']:.2e} | "
                          f"{rec['tokens_per_s']:,.0f} tok/s" + (f" | mfu {rec['mfu']:.1%}" if cuda else ""), bar)
                bar.set_postfix(loss=f"{rec['loss']:.3f}")
            window.zero_()
            window_tokens = window_attn = window_targets = window_steps = 0
            t0, paused = time.perf_counter(), 0.0

        # 5) validate, checkpoint (rank 0 writes; every rank waits so none races ahead and exits first)
        validating = (cfg.eval_every and step % cfg.eval_every == 0) or done
        saving = (cfg.save_every and step % cfg.save_every == 0) or done
        if validating or saving:
            pause_start = _now(cuda)
            if validating:
                last.update(log_val(step))
            if saving:
                if d.master:
                    save_checkpoint(run_dir, step, model, optimizer, scheduler, cfg, d.world_size)
                if d.ddp:
                    dist.barrier()
            paused += _now(cuda) - pause_start
        if cfg.fault_at_step and step == cfg.fault_at_step:
            os.kill(os.getpid(), signal.SIGKILL)  # testing aid: die like a preempted machine
        if stop_early:
            _print(d, f"time budget of {cfg.max_minutes} min spent; stopped at step {step}", bar)
            break
    bar.close()

    if d.master:
        save_final(run_dir, step, model, cfg, {k: v for k, v in last.items() if isinstance(v, (int, float))})
        metrics.plot(run_dir / "loss.png")
        _print(d, f"done: {run_dir / 'final.pt'} (step {step})")
    return {**last, "step": step}


def _now(cuda: bool) -> float:
    # Wait for queued GPU work first, so it is charged to training rather than to what follows.
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter()


def _check_resumable(ckpt: dict, cfg: TrainConfig, global_batch: int) -> None:
    # The world size and per-process batch may change between restarts; the global batch may not.
    saved, now = ckpt["config"], asdict(cfg)
    diff = [f"{k}: checkpoint {saved.get(k)!r}, now {now[k]!r}" for k in _RESUME_MUST_MATCH if saved.get(k) != now[k]]
    if ckpt["global_batch"] != global_batch:
        diff.append(f"global batch (batch × world × accum): checkpoint {ckpt['global_batch']}, now {global_batch}")
    if diff:
        raise ValueError("cannot resume: settings differ from the checkpoint's (" + "; ".join(diff) + ")")


def _print(d: Dist, msg: str, bar=None) -> None:
    if not d.master:
        return
    if bar is not None and not bar.disable:
        bar.write(msg)
    else:
        print(msg, flush=True)


def _val_split_names(data: str | Path) -> list[str]:
    """The validation splits a dataset holds: "val" first, then "val.NAME" per source, in meta.json's order."""
    from .dataset import read_meta

    names = [n for n in read_meta(data).get("splits", {}) if n == "val" or n.startswith("val.")]
    return [n for n in sorted(names, key=lambda n: n != "val") if (Path(data) / f"{n}.offsets.npy").exists()]


def config_fields() -> list[str]:
    """TrainConfig's field names (the CLI has one flag per field)."""
    return [f.name for f in fields(TrainConfig)]
