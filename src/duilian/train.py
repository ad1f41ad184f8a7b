"""Training: one loop for a CPU, one GPU, or many processes under torchrun (DDP).

Read top to bottom:

    TrainConfig         every knob, with the seed's values as defaults (UER-py: 25k steps, lr 5e-4, batch 64 per
                        process, 10% linear warm-up then linear decay, lines of 64); each field's help text is in its
                        metadata, and `duilian train`'s flags are generated from it
    train(config)       the loop, in plain sight: one optimizer step of the global batch (gradients accumulated over
                        micro-batches), then report, validate, checkpoint
    setup(config)       everything the loop touches, as one `Run`: data, model, optimizer, schedule, resume
    Data                batches: data order from (seed, epoch), [UNK] hiding, the transformers-5 prompt form
    Report              the training-loss window's counters in one place; metrics.jsonl, stdout, loss.png
    checkpoints         atomic step_XXXXXXX.pt files + a `latest` marker; final.pt for export

The loss is next-token cross-entropy on real tokens only, normalised by the *global* count of real tokens, so DDP
equals one process with the same global batch. A resumed run continues exactly: the data order is a function of
(seed, step), dropout is reseeded from (seed, rank, step) at every step, and optimizer + scheduler states are
restored, so a run killed with SIGKILL and resumed ends with the same weights as one that never stopped.

The model is duilian.gpt.GPT, whose names, parameter order and training step are transformers' GPT2LMHeadModel's
(the trainer's model before it): checkpoints written with that model resume here, optimizer state included.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .dataset import (
    IGNORE_INDEX,
    Batch,
    BatchSchedule,
    TokenizedSplit,
    collate,
    hide_upper,
    read_tokenizer,
    v5_prompt_lines,
)
from .gpt import GPT
from .knobs import check_literals, knob
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


# --- configuration ------------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Everything `duilian train` does. Defaults are the seed's (uer/gpt2-chinese-couplet)."""

    data: str = knob("dataset directory written by `duilian prepare` (train split required, val splits optional)",
                     group="data and output", metavar="DIR")
    out: str = knob("run directory: checkpoints/, metrics.jsonl, loss.png, config.json and final.pt go here",
                    metavar="RUN_DIR")

    preset: str = knob("model shape, a key of duilian.model.PRESETS: tiny, mini, mini6, small or base; empty means "
                       "base (the seed's GPT-2), or with --init-from that model's own shape", "", group="model")
    init_from: str = knob("a HuggingFace GPT-2 directory (a duilian export, the default model, the seed's converted "
                          "model) whose weights start the run; embedding rows are matched by token; optimizer and "
                          "schedule start afresh", "", metavar="MODEL_DIR")
    dropout: float = knob("dropout on embeddings, attention and residuals (GPT-2's / UER's 0.1)", 0.1)
    seed: int = knob("seeds the initialisation, the data order and dropout (UER-py's default seed is 7)", 7)

    steps: int = knob("optimizer steps in the whole run (the seed's 25,000)", 25_000, group="optimisation")
    batch_size: int = knob("lines per micro-batch per process; global batch = batch size × world size × "
                           "grad accum", 64)
    grad_accum: int = knob("micro-batches accumulated per optimizer step (the same global batch on fewer GPUs)", 1)
    lr: float = knob("peak learning rate (the seed's 5e-4)", 5e-4)
    warmup: float = knob("fraction of the steps spent warming the learning rate up linearly; then it decays "
                         "linearly to 0 (UER-py's schedule)", 0.1)
    weight_decay: float = knob("AdamW weight decay on matrices (UER-py's 0.01); biases and layer norms get none",
                               0.01)
    grad_clip: float = knob("clip the global gradient norm to this; 0 = off (not in UER-py: a guard against "
                            "spikes)", 1.0)

    seq_len: int = knob("longest line in tokens, [CLS]上联-下联[SEP] (the seed's 64); --pad fixed pads every row "
                        "to it", 64, group="batches")
    pad: Literal["fixed", "batch"] = knob("fixed: pad every row to --seq-len like the seed; batch: pad to the "
                                          "batch's longest row", "batch")
    pad_multiple: int = knob("with --pad batch, round the padded length up to a multiple of this (fewer compiled "
                             "shapes, aligned GPU kernels)", 8)
    bucket: bool = knob("group lines of similar length into batches (dataset.BatchSchedule): far less padding", False)
    bucket_chunk: int = knob("global batches per length-sorting chunk when bucketing", 64)
    v5_prompt_frac: float = knob("fraction of lines shown as transformers 5 prompts them, "
                                 "[CLS][CLS]上联-[SEP]下联[SEP], with no loss on the two inserted tokens, so the "
                                 "model also continues that prompt; 0 = never", 0.05)
    unk_frac: float = knob("share of 上联 characters shown as [UNK] (drawn per line and epoch), with no loss on "
                           "predicting [UNK] anywhere: the model learns to answer a 上联 holding a character it "
                           "does not know; 0 = never", 0.005)

    eval_every: int = knob("steps between validation passes (also at the start and the end); 0 = only at the end",
                           1000, group="evaluation, logging, checkpoints")
    eval_batches: int = knob("validation micro-batches per process per pass (batch-size lines each)", 20)
    report_every: int = knob("steps between training-loss reports (the seed's 1,000); 0 = only at the end", 1000)
    save_every: int = knob("steps between checkpoints (the seed's 5,000); 0 = only when the run ends, which always "
                           "writes one", 5000)
    keep_checkpoints: int = knob("keep only this many newest step checkpoints; 0 = keep all", 0)
    max_minutes: float = knob("wall-clock budget of the training loop in minutes: stop cleanly, checkpoint and "
                              "write final.pt when it is spent (the schedule still assumes --steps); 0 = no limit",
                              0.0)
    resume: bool = knob("continue from the newest checkpoint in --out (same data order, optimizer, schedule); "
                        "starts afresh when there is none", False)

    device: Literal["auto", "cpu", "cuda"] = knob("auto: CUDA when present; under torchrun each process takes "
                                                  "cuda:LOCAL_RANK", "auto", group="hardware")
    dtype: Literal["auto", "bf16", "fp32"] = knob(
        "autocast dtype; auto = bf16 where matmuls run natively in it (CUDA, CPUs with AVX-512 BF16 or AMX), "
        "else fp32; weights, optimizer state and the loss stay fp32", "auto")
    compile: bool = knob("torch.compile each transformer block (in place, so saved names carry no `_orig_mod.` "
                         "prefix)", False)
    peak_flops: float = knob("peak dense bf16 FLOP/s of one accelerator, for MFU (H100/H200 SXM: 989e12)", 989e12)

    fault_at_step: int = knob("testing aid: SIGKILL this process right after step N completes, to test --resume; "
                              "0 = never", 0, group="testing aid")

    def __post_init__(self):
        check_literals(self)
        if self.preset and self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose from {', '.join(PRESETS)}")
        for name in ("steps", "batch_size", "grad_accum", "seq_len", "pad_multiple", "bucket_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("eval_every", "eval_batches", "report_every", "save_every", "keep_checkpoints",
                     "fault_at_step", "max_minutes", "weight_decay", "grad_clip", "dropout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        for name in ("warmup", "v5_prompt_frac", "unk_frac"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} is a fraction in [0, 1)")
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


def global_batch(cfg: TrainConfig, world_size: int) -> int:
    """Lines per optimizer step: batch size × world size × grad accum. A resumed run must keep it."""
    return cfg.batch_size * world_size * cfg.grad_accum


def config_fields() -> list[str]:
    """TrainConfig's field names (the CLI has one flag per field)."""
    return [f.name for f in fields(TrainConfig)]


# --- the loop -----------------------------------------------------------------------------------------------------
def train(cfg: TrainConfig) -> dict:
    """Run (or resume) training. Returns the last metrics; rank 0 writes everything under cfg.out."""
    proc = setup_distributed(cfg.device)
    try:
        run = setup(cfg, proc)
        step, last = run.step, {}
        if step == 0 and cfg.eval_every:
            last.update(validate(run, 0))
        run.report.begin()
        while step < cfg.steps:
            # 1) one optimizer step on the global batch; dropout reseeded from (seed, rank, step), so it does not
            #    depend on where a run was resumed
            torch.manual_seed((cfg.seed * 1_000_003 + proc.rank) * 1_000_003 + step)
            micro, n_global = run.data.train_step(step)
            for k, batch in enumerate(micro):
                sync = k == len(micro) - 1 or not proc.ddp  # DDP all-reduces the gradients once, after the last
                with (nullcontext() if sync else run.ddp_model.no_sync()), run.autocast():
                    loss_sum = run.ddp_model(batch.inputs, batch.targets, batch.keep)
                # DDP averages gradients over ranks; × world_size turns that average back into the sum, so the
                # update equals one process on the whole global batch, normalised by its count of real targets.
                (loss_sum * (proc.world_size / n_global)).backward()
                run.report.add(batch.stats, loss_sum)
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
            run.optimizer.step()
            run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
            step += 1
            run.report.stepped()

            # 2) the time budget. Under DDP the ranks must stop at the same step, so they vote every 10 steps (a
            #    vote is a sync; one process needs none and checks every step).
            stop_early = False
            if cfg.max_minutes and (not proc.ddp or step % 10 == 0):
                over = run.report.elapsed() > 60 * cfg.max_minutes
                if proc.ddp:
                    over = _all_reduce_sum([float(over)], proc)[0] > 0
                stop_early = over and step < cfg.steps
            done = step == cfg.steps or stop_early

            # 3) report, validate, checkpoint (rank 0 writes; every rank waits, so none races ahead and exits first)
            if (cfg.report_every and step % cfg.report_every == 0) or done:
                last.update(run.report.train(step, run.scheduler.get_last_lr()[0]))
            validating = (cfg.eval_every and step % cfg.eval_every == 0) or done
            saving = (cfg.save_every and step % cfg.save_every == 0) or done
            if validating or saving:
                with run.report.paused():  # evaluating and saving are not training time
                    if validating:
                        last.update(validate(run, step))
                    if saving:
                        save(run, step)
            if cfg.fault_at_step and step == cfg.fault_at_step:
                os.kill(os.getpid(), signal.SIGKILL)  # testing aid: die like a preempted machine
            if stop_early:
                run.report.say(f"time budget of {cfg.max_minutes} min spent; stopped at step {step}")
                break
        run.report.close()
        if proc.master:
            numbers = {k: v for k, v in last.items() if isinstance(v, (int, float))}
            save_final(Path(cfg.out), step, run.model, cfg, numbers)
            run.report.plot()
            run.report.say(f"done: {Path(cfg.out) / 'final.pt'} (step {step})")
        return {**last, "step": step}
    finally:
        if proc.ddp and dist.is_initialized():
            dist.destroy_process_group()


def validate(run: "Run", step: int) -> dict:
    """Mean loss per real token over the first world × eval_batches × batch_size lines of each val split:
    val_loss.NAME for each source's own split and val_loss over all of them (token-weighted); a dataset of one
    source has only "val". Logged as a "val" record."""
    cfg, proc = run.cfg, run.proc
    if not run.data.val or cfg.eval_batches == 0:
        return {}
    run.model.eval()
    out, totals = {}, []
    # "val" is the sources' splits one after the other: its first lines are the first source's alone, so with
    # per-source splits the overall figure is their token-weighted mean instead
    names = [n for n in run.data.val if n != "val"] or ["val"]
    with torch.no_grad():
        for name in names:
            total = count = 0.0
            for batch in run.data.val_batches(name):
                with run.autocast():
                    total += run.model(batch.inputs, batch.targets, batch.keep).item()
                count += batch.stats.n_targets
            total, count = _all_reduce_sum([total, count], proc)
            out["val_loss" + name[3:]] = total / max(count, 1)
            totals.append((total, count))
    run.model.train()
    out["val_loss"] = sum(t for t, _ in totals) / max(sum(c for _, c in totals), 1)
    out["val_ppl"] = math.exp(min(out["val_loss"], 50))
    run.report.val(step, out)
    return out


def save(run: "Run", step: int) -> None:
    """A step checkpoint, written by rank 0 while the other ranks wait."""
    if run.proc.master:
        save_checkpoint(Path(run.cfg.out), step, run.model, run.optimizer, run.scheduler, run.cfg,
                        run.proc.world_size)
    if run.proc.ddp:
        dist.barrier()


# --- setup --------------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """What the loop touches, as setup() leaves it."""

    cfg: TrainConfig
    proc: "Dist"
    data: "Data"
    model: GPT
    """The model itself: what is saved (never the DDP wrapper, never a compiled wrapper)."""
    ddp_model: nn.Module
    """The model, wrapped in DistributedDataParallel under torchrun: what computes the loss."""
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    autocast: Callable
    """() -> the context the forward passes run in (bf16 autocast, or nothing)."""
    report: "Report"
    step: int
    """Optimizer updates done: 0, or the checkpoint's when resuming."""


def setup(cfg: TrainConfig, proc: "Dist") -> Run:
    """Data, model, optimizer, schedule and, with --resume, the newest checkpoint's state: identically on every
    rank (DDP also broadcasts rank 0's weights)."""
    run_dir = Path(cfg.out)
    cuda = proc.device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    amp_dtype = torch.bfloat16 if cfg.dtype == "bf16" or (cfg.dtype == "auto" and (cuda or cpu_has_bf16())) else None
    data = Data(cfg, proc)
    preset = cfg.shape()
    if preset.n_positions < cfg.seq_len + 2:
        raise ValueError(f"the model has {preset.n_positions} positions, fewer than seq_len + 2")

    model = build_model(preset, cfg.dropout, seed=cfg.seed, tokenizer=data.tokenizer)
    ckpt_path = latest_checkpoint(run_dir) if cfg.resume else None
    if cfg.init_from and ckpt_path is None:
        got = init_from_model_dir(model, cfg.init_from, data.tokenizer.tokens)
        grown = f"; {got['new_blocks']} new blocks (zero output projections)" if got["new_blocks"] else ""
        _print(proc, f"weights from {cfg.init_from}: {got['matched']:,} tokens matched, {got['new']:,} new{grown}")
    model = model.to(proc.device)
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(s, cfg.steps, cfg.warmup))
    step = 0
    if ckpt_path is not None:
        ckpt = torch.load(ckpt_path, map_location=proc.device, weights_only=True)
        _check_resumable(ckpt, cfg, global_batch(cfg, proc.world_size))
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        step = ckpt["step"]
        _print(proc, f"resuming from {ckpt_path} at step {step}")
    elif cfg.resume:
        _print(proc, f"no checkpoint in {run_dir / 'checkpoints'}; starting afresh")
    if cfg.compile:
        model.compile_blocks()
    ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=[proc.local_rank] if cuda else None) \
        if proc.ddp else model
    ddp_model.train()

    if proc.master:
        run_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(run_dir / "config.json", json.dumps(
            {**asdict(cfg), "world_size": proc.world_size, "global_batch": global_batch(cfg, proc.world_size),
             "parameters": count_parameters(model)}, indent=2))
    report = Report(cfg, proc, model, resumed=step if ckpt_path is not None else None, start=step)
    name = cfg.preset or (f"the shape of {cfg.init_from}" if cfg.init_from else "base")
    report.say(f"{name}: {count_parameters(model):,} parameters | {len(data.train):,} lines | global batch "
               f"{global_batch(cfg, proc.world_size)} | {data.schedule.batches_per_epoch} steps/epoch | "
               f"{proc.device} {'bf16' if amp_dtype else 'fp32'} | world {proc.world_size}")
    autocast = (lambda: torch.autocast(proc.device.type, dtype=amp_dtype)) if amp_dtype else nullcontext
    return Run(cfg, proc, data, model, ddp_model, optimizer, scheduler, autocast, report, step)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only. AdamW keeps its state by parameter index within these two groups,
    in parameters() order, so the order is part of the checkpoint format (gpt.GPT lists GPT2LMHeadModel's)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        # fused: one kernel for every parameter's update, on the GPU and (torch >= 2.4) the CPU: 3-5% of a
        # CPU step for `mini` (benchmarks/bench_train.py), more on a GPU
        lr=cfg.lr, betas=(0.9, 0.999), eps=1e-6, fused=True,
    )


def lr_multiplier(step: int, steps: int, warmup: float) -> float:
    """Multiplier of the peak lr for update `step` (0-based): UER-py's warm-up-linear schedule.

    1) linear warm-up over the first warmup × steps updates, 2) linear decay to 0 at `steps`.
    """
    n_warm = int(warmup * steps)
    if step < n_warm:
        return (step + 1) / n_warm
    return max(0.0, (steps - step) / max(1, steps - n_warm))


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX-512 BF16 or AMX). There a bf16 matmul is ~4x
    faster than fp32 and a `mini` training step 1.7x (benchmarks/bench_train.py); without them torch emulates
    bf16 and it is slower than fp32, so `--dtype auto` keeps fp32 there (AVX2 machines)."""
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


# --- distributed setup --------------------------------------------------------------------------------------------
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


def _all_reduce_sum(values: list[float], proc: Dist) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=proc.device)
    if proc.ddp:
        dist.all_reduce(t)
    return t.tolist()


# --- data ---------------------------------------------------------------------------------------------------------
@dataclass
class MicroBatch:
    """One micro-batch on the device: inputs and targets (B, T), keep (N,) the flat indices of the positions whose
    target is real (found on the host, so the device never syncs to find them), and the host batch's counts."""

    inputs: torch.Tensor
    targets: torch.Tensor
    keep: torch.Tensor
    stats: Batch


class Data:
    """The dataset as this process's micro-batches: the training batches of each step (the order a function of
    (seed, epoch)), and its share of each validation split."""

    def __init__(self, cfg: TrainConfig, proc: Dist):
        self.cfg, self.proc = cfg, proc
        self.tokenizer = tok = read_tokenizer(cfg.data)  # the dataset's vocabulary: the model gets one row per token
        self.train = TokenizedSplit.open(cfg.data, "train")
        # "val" (every source) and, for a dataset of several sources, "val.NAME" per source: all forward lines
        self.val = {name: TokenizedSplit.open(cfg.data, name) for name in _val_split_names(cfg.data)}
        self.lengths = self.train.lengths
        if self.lengths.max() > cfg.seq_len:
            raise ValueError(f"dataset has lines of {self.lengths.max()} tokens, longer than --seq-len {cfg.seq_len}")
        self.schedule = BatchSchedule(self.lengths, global_batch(cfg, proc.world_size), cfg.seed, cfg.bucket,
                                      cfg.bucket_chunk)
        self.hideable = np.array([len(t) == 1 and is_han(t) for t in tok.tokens])  # [V]: what unk_frac may hide
        self.markers = tuple(m for m in (tok.reverse_id, tok.keyword_id) if m is not None)
        # bool [n_lines]: the seed's own lines, [CLS]上联-下联[SEP] (not backward, no keywords)
        self.forward = ~np.isin(np.asarray(self.train.tokens[self.train.offsets[:-1] + 1]), self.markers)
        self._v5_epoch, self._v5_lines = -1, None

    def train_step(self, step: int) -> tuple[list[MicroBatch], int]:
        """This process's micro-batches of the global batch of update `step`, and the global count of real targets.

        Every rank knows the whole global batch, so that count needs no communication: a line of L tokens has L - 1
        targets in either prompt form. ([UNK] targets, which carry no loss, are ~0.2% of them at unk_frac 0.005;
        counting them anyway scales every step alike and keeps the count free, and one process still equals DDP.)"""
        cfg = self.cfg
        epoch, micro = self.schedule.micro_batches(step, self.proc.rank, self.proc.world_size, cfg.grad_accum)
        if epoch != self._v5_epoch:
            lines = v5_prompt_lines(cfg.seed, epoch, len(self.train), cfg.v5_prompt_frac)
            lines &= self.lengths + 2 <= cfg.seq_len  # the two extra tokens must fit, whatever the padding
            lines &= self.forward  # the transformers 5 prompt is the seed's, never a backward or keyword one
            self._v5_epoch, self._v5_lines = epoch, lines
        _, global_idx = self.schedule.global_batch_at(step)
        n_global = int((self.lengths[global_idx] - 1).sum())
        return [self.batch(self.train, idx, self._v5_lines[idx], epoch) for idx in micro], n_global

    def val_batches(self, name: str):
        """This process's share of the first world × eval_batches × batch_size lines of a validation split."""
        cfg, split = self.cfg, self.val[name]
        n = min(len(split), self.proc.world_size * cfg.eval_batches * cfg.batch_size)
        mine = np.array_split(np.arange(n), self.proc.world_size)[self.proc.rank]
        for start in range(0, len(mine), cfg.batch_size):
            yield self.batch(split, mine[start:start + cfg.batch_size], None)

    def batch(self, split: TokenizedSplit, indices: np.ndarray, v5_form: np.ndarray | None,
              epoch: int | None = None) -> MicroBatch:
        """Lines `indices` as a MicroBatch on the device. `epoch` is given for training batches only: validation
        sees every character as it is."""
        cfg, tok = self.cfg, self.tokenizer
        hidden = hide_upper(split, indices, cfg.seed, epoch, cfg.unk_frac, self.hideable, tok.separator_id) \
            if cfg.unk_frac and epoch is not None else None
        # Pads are filled with [SEP], not [PAD]: right of a line they are never attended to nor scored.
        b = collate(split, indices, cfg.seq_len if cfg.pad == "fixed" else None, cfg.pad_multiple, v5_form,
                    tok.cls_id, tok.sep_id, tok.separator_id, pad_id=tok.sep_id, unk_id=tok.unk_id, hidden=hidden,
                    marker_ids=self.markers)
        keep = np.flatnonzero(b.targets.reshape(-1) != IGNORE_INDEX)
        if self.proc.device.type == "cuda":  # pinned host memory makes the copies asynchronous: the CPU builds
            to = lambda a: torch.from_numpy(a).pin_memory().to(self.proc.device, non_blocking=True)  # noqa: E731
        else:  # the next batch meanwhile
            to = torch.from_numpy
        return MicroBatch(to(b.inputs), to(b.targets), to(keep), b)


def _val_split_names(data: str | Path) -> list[str]:
    """The validation splits a dataset holds: "val" first, then "val.NAME" per source, in meta.json's order."""
    from .dataset import read_meta

    names = [n for n in read_meta(data).get("splits", {}) if n == "val" or n.startswith("val.")]
    return [n for n in sorted(names, key=lambda n: n != "val") if (Path(data) / f"{n}.offsets.npy").exists()]


# --- reporting ----------------------------------------------------------------------------------------------------
class Report:
    """What the run says: the counters of the current training-loss window (all of them here), the records they
    become (metrics.jsonl on rank 0, a line on stdout, the progress bar), the validation records, loss.png."""

    def __init__(self, cfg: TrainConfig, proc: Dist, model: GPT, resumed: int | None, start: int):
        from tqdm.auto import tqdm

        self.cfg, self.proc = cfg, proc
        self.cuda = proc.device.type == "cuda"
        self.flops_token = flops_per_token(model)
        self.attn_flops = 12 * model.config.n_layer * model.config.n_embd  # × Σ length² (fwd + bwd, nanoGPT's)
        self.metrics = Metrics(Path(cfg.out), resumed) if proc.master else None
        self.bar = tqdm(total=cfg.steps, initial=start, disable=not (proc.master and sys.stderr.isatty()),
                        dynamic_ncols=True)
        self.begin()

    def begin(self) -> None:
        """The loop starts: the clocks of elapsed_s, cpu_s and the first window start now."""
        self.run_start, self.cpu_start = time.perf_counter(), time.process_time()
        self._reset()

    def elapsed(self) -> float:
        return time.perf_counter() - self.run_start

    def _reset(self) -> None:
        self.loss = torch.zeros((), dtype=torch.float64, device=self.proc.device)  # Σ token losses: no sync per step
        self.tokens = self.attn = self.targets = self.steps = 0
        self.paused_s = 0.0  # seconds of the window spent evaluating and saving, not training
        self.t0 = time.perf_counter()

    def add(self, batch: Batch, loss_sum: torch.Tensor) -> None:
        self.loss += loss_sum.detach()
        self.tokens += batch.n_tokens
        self.attn += batch.attn_sq
        self.targets += batch.n_targets

    def stepped(self) -> None:
        self.steps += 1
        self.bar.update(1)

    @contextmanager
    def paused(self):
        """Time spent inside is left out of the window's tokens/s (queued GPU work is charged before it starts)."""
        start = _now(self.cuda)
        try:
            yield
        finally:
            self.paused_s += _now(self.cuda) - start

    def train(self, step: int, lr: float) -> dict:
        """The window's record (loss per real target, tokens/s, MFU on a GPU), logged; the window starts again."""
        loss, tokens, attn, targets = _all_reduce_sum([self.loss.item(), self.tokens, self.attn, self.targets],
                                                      self.proc)
        dt = time.perf_counter() - self.t0 - self.paused_s
        rec = {"event": "train", "step": step, "loss": loss / max(targets, 1), "lr": lr, "tokens_per_s": tokens / dt,
               "steps_per_s": self.steps / dt, "elapsed_s": time.perf_counter() - self.run_start,
               "cpu_s": time.process_time() - self.cpu_start}  # this process's CPU seconds, all threads
        if self.cuda:
            flops = self.flops_token * tokens + self.attn_flops * attn
            rec["mfu"] = flops / dt / (self.cfg.peak_flops * self.proc.world_size)
        if self.proc.master:
            self.metrics.log(rec)
            self.say(f"step {step:>6}/{self.cfg.steps} | loss {rec['loss']:.4f} | lr {lr:.2e} | "
                     f"{rec['tokens_per_s']:,.0f} tok/s" + (f" | mfu {rec['mfu']:.1%}" if self.cuda else ""))
            self.bar.set_postfix(loss=f"{rec['loss']:.3f}")
        self._reset()
        return rec

    def val(self, step: int, values: dict) -> None:
        if values and self.proc.master:
            self.metrics.log({"event": "val", "step": step, **values})
            parts = " | ".join(f"{k.replace('_', ' ')} {x:.4f}" for k, x in values.items() if k.startswith("val_loss"))
            self.say(f"step {step:>6} | {parts} | val ppl {values.get('val_ppl', math.nan):.2f}")

    def say(self, msg: str) -> None:
        """A line on rank 0's stdout (above the progress bar when there is one)."""
        _print(self.proc, msg, self.bar)

    def plot(self) -> None:
        self.metrics.plot(Path(self.cfg.out) / "loss.png")

    def close(self) -> None:
        self.bar.close()


def flops_per_token(model: GPT) -> int:
    """6 × the parameters that do matmuls per token (position embeddings are a lookup; the tied
    token embedding counts once, as the output projection). Attention is added per batch."""
    return 6 * (count_parameters(model) - model.transformer.wpe.weight.numel())


def _now(cuda: bool) -> float:
    # Wait for queued GPU work first, so it is charged to training rather than to what follows.
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter()


def _print(proc: Dist, msg: str, bar=None) -> None:
    if not proc.master:
        return
    if bar is not None and not bar.disable:
        bar.write(msg)
    else:
        print(msg, flush=True)


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
        "versions": {"torch": str(torch.__version__), "transformers": _transformers_version()},
    }


def _dataset_lines(data: str | Path) -> dict:
    """Training lines by kind (forward, backward, keywords) of a dataset; datasets written before the kinds
    existed hold forward lines only."""
    from .dataset import read_meta

    info = read_meta(data).get("info", {})
    lines = info.get("lines") or {"forward": info.get("train_pairs", 0), "backward": 0, "keywords": 0}
    return {k: int(lines.get(k, 0)) for k in ("forward", "backward", "keywords")}


def _transformers_version() -> str:
    """The installed transformers' version, read without importing it (seconds): checkpoints record it, as they did
    when the trainer's model was transformers'."""
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
    (state dict of a gpt.GPT, under GPT2LMHeadModel's names), `preset` (Preset fields), `preset_name`, `dropout`,
    `tokens` (the vocabulary; absent from checkpoints older than corpus vocabularies, which used BERT's), `config`
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
    """A GPT (eval mode, fp32) rebuilt from a checkpoint file or run directory (or a checkpoint dict already read
    with load_checkpoint)."""
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


def _check_resumable(ckpt: dict, cfg: TrainConfig, global_batch: int) -> None:
    # The world size and per-process batch may change between restarts; the global batch may not.
    saved, now = ckpt["config"], asdict(cfg)
    diff = [f"{k}: checkpoint {saved.get(k)!r}, now {now[k]!r}" for k in _RESUME_MUST_MATCH if saved.get(k) != now[k]]
    if ckpt["global_batch"] != global_batch:
        diff.append(f"global batch (batch × world × accum): checkpoint {ckpt['global_batch']}, now {global_batch}")
    if diff:
        raise ValueError("cannot resume: settings differ from the checkpoint's (" + "; ".join(diff) + ")")
