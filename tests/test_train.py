"""Training: batching (dataset.BatchSchedule / collate), the loss, the loop end to end, DDP equals one
process, kill -9 + --resume equals an uninterrupted run, and checkpoints load with weights_only=True.

All runs use the `tiny` preset on the 240-pair fixture, single-threaded so that runs in different
processes compute bit-identical numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from duilian import train as train_module
from duilian.dataset import IGNORE_INDEX, BatchSchedule, TokenizedSplit, collate, v5_prompt_lines, write_dataset
from duilian.export import export_model
from duilian.model import PRESETS, build_model, init_from_model_dir, to_transformers
from duilian.tokenizer import default_tokenizer
from duilian.train import (
    TrainConfig,
    config_fields,
    latest_checkpoint,
    load_checkpoint,
    lr_multiplier,
    model_from_checkpoint,
    train,
)

FIXTURE = Path(__file__).parent / "fixtures" / "couplets"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
    ENV.pop(k, None)


def fixture_pairs() -> list[tuple[str, str]]:
    read = lambda name: [l.replace(" ", "").strip() for l in (FIXTURE / name).read_text(encoding="utf-8").splitlines()]  # noqa: E731
    return list(zip(read("in.txt"), read("out.txt")))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    pairs = fixture_pairs()
    assert len(pairs) == 240
    out = tmp_path_factory.mktemp("data")
    write_dataset(out, {"train": pairs[:200], "val": pairs[200:]}, default_tokenizer(), seq_len=64)
    return out


@contextmanager
def one_thread():
    """In-process runs use one thread, like the subprocesses (OMP_NUM_THREADS=1), for bit-equal results."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def tiny(data_dir: Path, out: Path, **kw) -> TrainConfig:
    # fp32 unless a test says otherwise: `auto` is bf16 on CPUs with AVX-512 BF16 and fp32 on others, and the
    # comparisons below (eager vs compiled, DDP vs one process) are tolerances for fp32 rounding
    base = dict(data=str(data_dir), out=str(out), preset="tiny", steps=10, batch_size=8, lr=3e-3,
                report_every=5, eval_every=0, eval_batches=2, save_every=1000, dtype="fp32")
    return TrainConfig(**{**base, **kw})


def cli_args(cfg: TrainConfig) -> list[str]:
    """The `duilian train` flags that reproduce `cfg`."""
    args = []
    for f in dataclasses.fields(TrainConfig):
        v = getattr(cfg, f.name)
        if v == f.default:
            continue
        flag = "--" + f.name.replace("_", "-")
        args += [flag] if v is True else [flag, str(v)]
    return args


def final_state(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "final.pt")["model"]


def assert_same_update(a: dict, b: dict) -> None:
    """Weights equal up to float rounding. Adam divides by sqrt(v) + eps, so a rounding-level gradient
    difference on a near-zero gradient moves a weight by up to ~lr × 1e-3 (3e-6 here): atol 1e-5,
    while training moved the weights ~1e-2 from their initialisation (checked, so the test bites)."""
    init = build_model("tiny", dropout=0.0, seed=7).state_dict()
    assert max((a[k] - init[k]).abs().max().item() for k in a) > 1e-3
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)


# --- batching -----------------------------------------------------------------------------------
def test_data_order_is_a_function_of_seed_and_epoch(data_dir):
    lengths = TokenizedSplit.open(data_dir, "train").lengths
    for bucket in (False, True):
        a = BatchSchedule(lengths, 16, seed=3, bucket=bucket, bucket_chunk=4)
        b = BatchSchedule(lengths, 16, seed=3, bucket=bucket, bucket_chunk=4)
        assert np.array_equal(a.epoch(1), b.epoch(1))
        assert not np.array_equal(a.epoch(0), a.epoch(1))
        e = a.epoch(0)
        assert e.shape == (200 // 16, 16) and len(np.unique(e)) == e.size  # no line twice in an epoch
        # the global batch at step s is the one every rank slices: ranks × accum rebuild it exactly
        _, whole = a.global_batch_at(13)
        parts = [a.micro_batches(13, r, 2, 2)[1] for r in range(2)]
        rebuilt = np.concatenate([parts[r][k] for k in range(2) for r in range(2)])
        assert np.array_equal(np.sort(rebuilt), np.sort(whole))


def test_bucketing_cuts_padding(data_dir):
    split = TokenizedSplit.open(data_dir, "train")
    pad = {}
    for bucket in (False, True):
        s = BatchSchedule(split.lengths, 16, seed=0, bucket=bucket, bucket_chunk=12)
        total = real = 0
        for idx in s.epoch(0):
            b = collate(split, idx, pad_to=None)
            total += b.inputs.size
            real += b.n_tokens
        pad[bucket] = 1 - real / total
    assert pad[True] < pad[False] / 2, pad


def test_collate_shows_the_transformers5_prompt_without_teaching_its_tokens(data_dir):
    tok = default_tokenizer()
    split = TokenizedSplit.open(data_dir, "train")
    b = collate(split, np.array([1, 2]), pad_to=64, v5_form=np.array([True, False]))
    upper, lower = fixture_pairs()[1]
    line = tok.v5_prompt_ids(upper) + tok.encode_chars(lower) + [tok.sep_id]
    n = len(line) - 1
    assert b.inputs.shape == (2, 64)
    assert b.inputs[0, :n].tolist() == line[:-1] and (b.inputs[0, n:] == tok.pad_id).all()
    expected = line[1:]
    expected[0] = IGNORE_INDEX  # the second [CLS]
    expected[len(upper) + 2] = IGNORE_INDEX  # the [SEP] after '-'
    assert b.targets[0, :n].tolist() == expected and (b.targets[0, n:] == IGNORE_INDEX).all()
    # either form: a line of L tokens carries L - 1 targets (the trainer's global count relies on it)
    assert b.n_targets == int((split.lengths[[1, 2]] - 1).sum())
    # plain form, padded to the batch's longest rounded to 8
    c = collate(split, np.array([2]), pad_to=None, pad_multiple=8)
    assert c.inputs.shape[1] % 8 == 0 and c.targets[0, split.lengths[2] - 2] == tok.sep_id


def test_v5_choice_is_per_epoch_and_line():
    a, b = v5_prompt_lines(7, 0, 10_000, 0.05), v5_prompt_lines(7, 0, 10_000, 0.05)
    assert np.array_equal(a, b) and 0.03 < a.mean() < 0.07
    assert not np.array_equal(a, v5_prompt_lines(7, 1, 10_000, 0.05))
    assert not v5_prompt_lines(7, 0, 100, 0.0).any()


# --- loss, schedule, config ---------------------------------------------------------------------
def test_loss_ignores_padding(data_dir):
    split = TokenizedSplit.open(data_dir, "train")
    loss = build_model("tiny", dropout=0.0, seed=0).eval()
    idx = np.arange(8)
    sums = []
    for pad_to in (64, None):
        b = collate(split, idx, pad_to=pad_to, pad_id=102)
        keep = torch.from_numpy(np.flatnonzero(b.targets.reshape(-1) != IGNORE_INDEX))
        with torch.no_grad():
            sums.append(loss(torch.from_numpy(b.inputs), torch.from_numpy(b.targets), keep).item())
    assert sums[0] == pytest.approx(sums[1], rel=1e-5)
    # and the sum matches transformers' own loss (mean over the same tokens) on the unpadded lines
    model = to_transformers(loss).eval()
    ref = 0.0
    for i in idx:
        x = torch.from_numpy(split[int(i)])[None]
        with torch.no_grad():
            ref += model(x, labels=x).loss.item() * (x.size(1) - 1)
    assert sums[1] == pytest.approx(ref, rel=1e-4)


def test_lr_schedule_is_uer_warmup_then_linear_decay():
    steps = 1000
    lrs = [lr_multiplier(s, steps, 0.1) for s in range(steps)]
    assert lrs[0] == pytest.approx(0.01) and lrs[99] == pytest.approx(1.0)
    assert lrs[100] == pytest.approx(1.0) and lrs[550] == pytest.approx(0.5) and lrs[-1] == pytest.approx(1 / 900)
    assert all(a <= b for a, b in zip(lrs[:100], lrs[1:100])) and all(a >= b for a, b in zip(lrs[100:], lrs[101:]))


def test_cli_has_a_flag_per_config_field_and_keeps_the_seed_defaults():
    from duilian.cli import train as cli

    p = argparse.ArgumentParser()
    cli.register(p)
    dests = {a.dest for a in p._actions} - {"help"}
    assert set(config_fields()) == dests
    args = p.parse_args(["--data", "D", "--out", "O"])
    cfg = TrainConfig(**vars(args))
    assert cfg == TrainConfig(data="D", out="O")
    assert (cfg.steps, cfg.lr, cfg.batch_size, cfg.warmup, cfg.seq_len, cfg.save_every, cfg.report_every,
            cfg.shape()) == (25_000, 5e-4, 64, 0.1, 64, 5000, 1000, PRESETS["base"])
    args = p.parse_args(["--data", "D", "--out", "O", "--pad", "fixed", "--bucket", "--steps", "7"])
    assert (args.pad, args.bucket, args.steps) == ("fixed", True, 7)
    with pytest.raises(SystemExit):  # choices come from the Literal type
        p.parse_args(["--data", "D", "--out", "O", "--dtype", "fp16"])
    with pytest.raises(ValueError, match="preset"):
        TrainConfig(data="D", out="O", preset="huge")
    with pytest.raises(ValueError, match="pad must be one of fixed, batch"):
        TrainConfig(data="D", out="O", pad="none")


def test_train_help_shows_every_field_with_its_true_default(capsys):
    """`duilian train --help` is generated from TrainConfig: every field's flag, its help text, its choices and its
    default as the dataclass holds it (the help cannot say 0.1 while the field says 0.2)."""
    from duilian.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    squeeze = lambda s: "".join(s.split())  # noqa: E731  (argparse wraps lines, at spaces and after hyphens)
    text = squeeze(capsys.readouterr().out)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        assert flag in text and squeeze(f.metadata["help"]) in text, flag
        if f.default is not dataclasses.MISSING:
            assert squeeze(f"{f.metadata['help']} (default: {f.default!r})") in text, flag
    assert all(squeeze(choices) in text for choices in ("--pad {fixed,batch}", "--device {auto,cpu,cuda}",
                                                        "--dtype {auto,bf16,fp32}"))


@pytest.mark.slow
def test_compiled_training_compiles_and_saves_plain_names(data_dir, tmp_path):
    """--compile: training steps really run the compiled body (inductor, gcc on a CPU; ~1 min cold, ~10 s
    with inductor's cache), train as the eager run does, and save the module's own names: nanoGPT's
    `_orig_mod.` prefix came from wrapping the module, which nn.Module.compile() does not."""
    from torch._dynamo.utils import counters

    # one padded shape and no evaluation (eval mode is another graph): a single compilation
    kw = dict(steps=2, batch_size=4, dropout=0.0, report_every=1, eval_batches=0, pad="fixed")
    graphs = counters["stats"]["unique_graphs"]
    try:
        with one_thread():
            train(tiny(data_dir, tmp_path / "eager", **kw))
            train(tiny(data_dir, tmp_path / "compiled", compile=True, **kw))
        assert counters["stats"]["unique_graphs"] > graphs  # dynamo captured the body and compiled it
    finally:
        torch._dynamo.reset()  # drop the compiled code (it holds the model's tensors)
    names = list(build_model("tiny").state_dict())
    for path in (tmp_path / "compiled" / "final.pt", latest_checkpoint(tmp_path / "compiled")):
        assert list(load_checkpoint(path)["model"]) == names
    # inductor fuses and reorders float operations: equal up to rounding
    assert_same_update(final_state(tmp_path / "eager"), final_state(tmp_path / "compiled"))


# --- the loop -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    with one_thread():
        train(tiny(data_dir, out, steps=30, eval_every=15, save_every=15, report_every=5, bucket=True))
    return out


def test_end_to_end_loss_falls_and_logs_are_written(run_dir):
    recs = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in recs if r["event"] == "train"]
    val = [r for r in recs if r["event"] == "val"]
    assert [r["step"] for r in train_recs] == [5, 10, 15, 20, 25, 30] and [r["step"] for r in val] == [0, 15, 30]
    assert train_recs[-1]["loss"] < train_recs[0]["loss"] - 1.0
    assert val[-1]["val_loss"] < val[0]["val_loss"] - 1.0
    assert val[-1]["val_ppl"] == pytest.approx(np.exp(val[-1]["val_loss"]))
    assert all(r["tokens_per_s"] > 0 and 0 <= r["lr"] <= 3e-3 for r in train_recs)
    assert (run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((run_dir / "config.json").read_text())["global_batch"] == 8


def test_checkpoints_load_with_weights_only_and_rebuild_the_model(run_dir):
    ckpt_dir = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.glob("*.pt")) == ["step_0000015.pt", "step_0000030.pt"]
    assert latest_checkpoint(run_dir).name == "step_0000030.pt"
    assert not list(ckpt_dir.glob("*.tmp"))
    for path in [*ckpt_dir.glob("*.pt"), run_dir / "final.pt"]:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        assert not any("_orig_mod" in k for k in ckpt["model"])
        assert ckpt["preset_name"] == "tiny" and ckpt["config"]["steps"] == 30
    step = torch.load(ckpt_dir / "step_0000030.pt", weights_only=True)
    assert {"optimizer", "scheduler", "step", "world_size", "global_batch"} <= set(step)
    model = model_from_checkpoint(run_dir)  # the run dir means its final.pt
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, step["model"][k]), k


def test_resume_refuses_changed_settings(run_dir, data_dir):
    with pytest.raises(ValueError, match="lr"):
        train(tiny(data_dir, run_dir, steps=30, lr=1e-3, resume=True, bucket=True))


@pytest.mark.slow
def test_kill9_then_resume_ends_with_the_same_weights(data_dir, tmp_path):
    # dropout on, bucketing, v5 lines and an epoch boundary (12 steps/epoch) all in play
    kw = dict(steps=16, batch_size=16, save_every=5, eval_every=5, v5_prompt_frac=0.2, bucket=True, bucket_chunk=3)
    with one_thread():
        train(tiny(data_dir, tmp_path / "whole", **kw))

    killed = tiny(data_dir, tmp_path / "cut", fault_at_step=8, **kw)
    proc = subprocess.run([sys.executable, "-m", "duilian.cli.train", *cli_args(killed)], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert latest_checkpoint(tmp_path / "cut").name == "step_0000005.pt"
    assert not (tmp_path / "cut" / "final.pt").exists()

    with one_thread():
        train(tiny(data_dir, tmp_path / "cut", resume=True, **kw))
    a, b = final_state(tmp_path / "whole"), final_state(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the metrics file holds each step once
    steps = [json.loads(l)["step"] for l in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
             if json.loads(l)["event"] == "train"]
    assert steps == sorted(set(steps))


@pytest.mark.slow
def test_ddp_on_two_processes_equals_one_process_with_the_same_global_batch(data_dir, tmp_path):
    kw = dict(steps=4, dropout=0.0, report_every=2, v5_prompt_frac=0.2, bucket=True, bucket_chunk=3)
    with one_thread():
        train(tiny(data_dir, tmp_path / "one", batch_size=8, **kw))
    two = tiny(data_dir, tmp_path / "two", batch_size=4, **kw)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "duilian.cli.train", *cli_args(two)],
        env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert torch.load(latest_checkpoint(tmp_path / "two"), weights_only=True)["world_size"] == 2
    assert_same_update(final_state(tmp_path / "one"), final_state(tmp_path / "two"))
    # and the logged loss is the same global mean per token
    loss = lambda d: [json.loads(l)["loss"] for l in (d / "metrics.jsonl").read_text().splitlines()  # noqa: E731
                      if '"train"' in l]
    assert loss(tmp_path / "two") == pytest.approx(loss(tmp_path / "one"), rel=1e-5)


def test_grad_accumulation_equals_one_big_batch(data_dir, tmp_path):
    kw = dict(steps=3, dropout=0.0, report_every=3, v5_prompt_frac=0.2)
    with one_thread():
        train(tiny(data_dir, tmp_path / "big", batch_size=8, **kw))
        train(tiny(data_dir, tmp_path / "accum", batch_size=4, grad_accum=2, **kw))
    assert_same_update(final_state(tmp_path / "big"), final_state(tmp_path / "accum"))


def test_a_checkpoint_of_the_transformers_trainer_resumes_and_continues_as_it_would(data_dir, tmp_path, capsys):
    """Runs started before gpt.py trained transformers' GPT2LMHeadModel; their checkpoints hold its state dict and
    an AdamW state kept by parameter *index*. Such a checkpoint (written by save_checkpoint, after 2 steps of that
    model with dropout on) resumes in today's trainer, which then computes what the transformers model would have
    on: the same weights after 3 more steps, up to float rounding. A parameter order other than GPT2LMHeadModel's
    would pair Adam's moments with the wrong tensors (tensors of one shape abound here: every bias and norm)."""
    import torch.nn.functional as F
    from transformers import GPT2LMHeadModel

    from duilian.model import gpt2_config

    cfg = tiny(data_dir, tmp_path / "run", steps=5, save_every=1000, v5_prompt_frac=0.2, bucket=True)
    data = train_module.Data(cfg, train_module.Dist(0, 0, 1, torch.device("cpu")))
    torch.manual_seed(cfg.seed)
    config = gpt2_config("tiny", cfg.dropout)
    config._attn_implementation = "sdpa"
    old = GPT2LMHeadModel(config).train()
    optimizer = train_module.make_optimizer(old, cfg)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(s, cfg.steps, cfg.warmup))

    def old_trainer_steps(start: int, stop: int) -> None:
        """The loop as it ran on GPT2LMHeadModel: its body, then the head on the real positions only."""
        for step in range(start, stop):
            torch.manual_seed(cfg.seed * 1_000_003 * 1_000_003 + step)
            micro, n_global = data.train_step(step)
            for b in micro:
                h = old.transformer(input_ids=b.inputs, use_cache=False).last_hidden_state
                h = h.reshape(-1, h.size(-1)).index_select(0, b.keep)
                loss = F.cross_entropy(old.lm_head(h), b.targets.reshape(-1).index_select(0, b.keep), reduction="sum")
                (loss / n_global).backward()
            torch.nn.utils.clip_grad_norm_(old.parameters(), cfg.grad_clip)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)

    with one_thread():
        old_trainer_steps(0, 2)
        train_module.save_checkpoint(Path(cfg.out), 2, old, optimizer, schedule, cfg)
        old_trainer_steps(2, 5)
        train(dataclasses.replace(cfg, resume=True))
    assert "at step 2" in capsys.readouterr().out and latest_checkpoint(cfg.out).name == "step_0000005.pt"
    assert_same_update(old.state_dict(), final_state(Path(cfg.out)))


@pytest.fixture
def final_pt_at_checkpoints(monkeypatch) -> list[tuple[int, bool]]:
    """(step, whether final.pt existed) at every step checkpoint the trainer writes."""
    seen = []
    save = train_module.save_checkpoint

    def spy(run_dir, step, *args, **kw):
        seen.append((step, (Path(run_dir) / "final.pt").exists()))
        return save(run_dir, step, *args, **kw)

    monkeypatch.setattr(train_module, "save_checkpoint", spy)
    return seen


def test_final_pt_is_written_once_at_the_end(data_dir, tmp_path, final_pt_at_checkpoints):
    with one_thread():
        train(tiny(data_dir, tmp_path, steps=6, save_every=2))
    assert final_pt_at_checkpoints == [(2, False), (4, False), (6, False)]  # mid-run saves are step_*.pt
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pt")) == \
        ["step_0000002.pt", "step_0000004.pt", "step_0000006.pt"]
    final = load_checkpoint(tmp_path / "final.pt")
    assert (final["kind"], final["step"]) == ("final", 6)
    step6 = load_checkpoint(tmp_path / "checkpoints" / "step_0000006.pt")["model"]
    assert all(torch.equal(v, step6[k]) for k, v in final["model"].items())


def test_time_budget_stops_cleanly_and_saves(data_dir, tmp_path, final_pt_at_checkpoints):
    with one_thread():
        last = train(tiny(data_dir, tmp_path, steps=1000, max_minutes=1e-6, save_every=500))
    assert last["step"] == 1
    # the stop writes a step checkpoint (final.pt not there yet), then final.pt at the step it stopped at
    assert final_pt_at_checkpoints == [(1, False)]
    assert latest_checkpoint(tmp_path).name == "step_0000001.pt"
    final = load_checkpoint(tmp_path / "final.pt")
    assert (final["kind"], final["step"], final["config"]["steps"]) == ("final", 1, 1000)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "train"] == [1]


# --- starting from another model (--init-from) --------------------------------------------------
# Lines as they are (no transformers-5 prompt form, no [UNK] hiding where the trainer has it), so the first
# batch is plain lines that transformers can score on its own.
PLAIN_LINES = dict(v5_prompt_frac=0.0, **({"unk_frac": 0.0} if "unk_frac" in config_fields() else {}))


@pytest.fixture(scope="module")
def init_dir(run_dir, tmp_path_factory) -> Path:
    """The 30-step run exported as a HuggingFace directory: a model that knows something."""
    return export_model(model_from_checkpoint(run_dir), tmp_path_factory.mktemp("init") / "hf")


def reference_loss(model_dir: Path, split: TokenizedSplit, lines: np.ndarray) -> float:
    """Mean next-token loss per real token over `lines`, by transformers' own model and loss, line by line."""
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(str(model_dir)).eval()
    total = count = 0.0
    with torch.no_grad():
        for i in lines:
            x = torch.from_numpy(split[int(i)].astype(np.int64))[None]
            total += model(x, labels=x).loss.item() * (x.size(1) - 1)  # labels are shifted inside
            count += x.size(1) - 1
    return total / count


def test_init_from_starts_with_that_models_loss(data_dir, init_dir, tmp_path):
    """The first reported training loss (computed before the first update) is the init model's own loss on
    the first batch, which is far below a fresh model's."""
    with one_thread():
        train(tiny(data_dir, tmp_path, preset="", init_from=str(init_dir), dropout=0.0, steps=2,
                   report_every=1, **PLAIN_LINES))
    first = next(json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"train"' in l)
    split = TokenizedSplit.open(data_dir, "train")
    _, batch = BatchSchedule(split.lengths, 8, seed=7, bucket=False, bucket_chunk=64).global_batch_at(0)
    expected = reference_loss(init_dir, split, batch)
    assert first["step"] == 1 and first["loss"] == pytest.approx(expected, rel=1e-5)  # float rounding only
    fresh = export_model(build_model("tiny", seed=7), tmp_path / "fresh")
    assert reference_loss(fresh, split, batch) > expected + 1.0  # so the equality says the weights came
    # the shape is the init model's; a --preset that differs is refused before anything runs
    assert load_checkpoint(tmp_path / "final.pt")["preset"] == dataclasses.asdict(
        TrainConfig(data="D", out="O", init_from=str(init_dir)).shape())
    with pytest.raises(ValueError, match=r"--preset mini is .*, but --init-from .* is .*leave --preset out"):
        train(tiny(data_dir, tmp_path / "mini", preset="mini", init_from=str(init_dir)))
    assert not (tmp_path / "mini").exists()


def test_init_from_matches_embedding_rows_by_token(init_dir, tmp_path):
    """A source whose vocab.txt orders its tokens otherwise and lacks some: each row goes to its token, a
    token the source lacks gets the mean of the source's rows, and every other tensor is copied."""
    from transformers import GPT2LMHeadModel

    tokens = default_tokenizer().tokens
    source = GPT2LMHeadModel.from_pretrained(str(init_dir)).eval()
    wte = source.transformer.wte.weight.detach()
    # The source's vocabulary: the special tokens and '-' first (a vocab.txt needs them), then the other
    # tokens but every 7th, in reverse order.
    first = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "-"]
    src_tokens = first + [t for i, t in enumerate(tokens) if t not in first and i % 7][::-1]
    index = {t: i for i, t in enumerate(tokens)}
    src_rows = torch.tensor([index[t] for t in src_tokens])  # source row j = our row src_rows[j]
    config = source.config
    config.vocab_size = len(src_tokens)
    reordered = GPT2LMHeadModel(config)
    state = {k: v for k, v in source.state_dict().items() if k != "lm_head.weight"}
    reordered.load_state_dict({**state, "transformer.wte.weight": wte[src_rows]}, strict=False)
    reordered.tie_weights()
    d = tmp_path / "reordered"
    reordered.save_pretrained(d)
    (d / "vocab.txt").write_text("".join(t + "\n" for t in src_tokens), encoding="utf-8")

    target = build_model("tiny", seed=3)
    got = init_from_model_dir(target, d, tokens)
    assert got == {"matched": len(src_tokens), "new": len(tokens) - len(src_tokens), "blocks": 2, "new_blocks": 0}
    assert got["new"] > 2000
    new_wte = target.transformer.wte.weight.detach()
    known = torch.zeros(len(tokens), dtype=torch.bool)
    known[src_rows] = True
    assert torch.equal(new_wte[known], wte[known])  # each token's own row, wherever the source kept it
    mean = wte[src_rows].mean(0)  # the summation order may differ from the trainer's: rounding only
    torch.testing.assert_close(new_wte[~known], mean.expand(int((~known).sum()), -1), rtol=0, atol=1e-7)
    for name, tensor in state.items():
        if name != "transformer.wte.weight":
            assert torch.equal(target.state_dict()[name], tensor), name
    assert target.lm_head.weight.data_ptr() == target.transformer.wte.weight.data_ptr()  # still tied


def test_duilian_train_command(data_dir, tmp_path, capsys):
    from duilian.cli import main

    with one_thread():
        rc = main(["train", "--data", str(data_dir), "--out", str(tmp_path), "--preset", "tiny", "--steps", "2",
                   "--batch-size", "4", "--report-every", "1", "--pad", "fixed", "--eval-batches", "1"])
    assert rc == 0 and (tmp_path / "final.pt").exists()
    out = capsys.readouterr().out
    assert "step      2/2 | loss" in out and "val loss" in out
    assert model_from_checkpoint(tmp_path).config.n_layer == 2



@pytest.mark.parametrize("field", ["save_every", "report_every", "eval_every"])
def test_zero_interval_means_only_at_the_end(data_dir, tmp_path, field):
    run = tmp_path / "run"
    with one_thread():
        train(tiny(data_dir, run, steps=3, **{field: 0}))
    assert (run / "final.pt").exists()
    assert (run / "metrics.jsonl").read_text().strip()


def test_auto_dtype_is_bf16_only_where_the_cpu_multiplies_bf16(data_dir, tmp_path, monkeypatch, capsys):
    """--dtype auto: bf16 autocast on a CPU with native bf16 matmuls (AVX-512 BF16, AMX), fp32 elsewhere, where
    torch would emulate bf16 more slowly than fp32. Decided by train.cpu_has_bf16, faked both ways here."""
    import duilian.train as train_module

    for native, expect in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(train_module, "cpu_has_bf16", lambda native=native: native)
        with one_thread():
            train(tiny(data_dir, tmp_path / expect, steps=1, dtype="auto"))
        assert f"cpu {expect}" in capsys.readouterr().out


@pytest.mark.slow
def test_a_trained_unk_reads_like_the_character_it_hides(tmp_path):
    """--unk-frac: a 上联 with a character the model does not know still gets valid candidates, and the model
    scores a 下联 for it about as it scores the same 下联 for the line with the real character, closer than for
    a random known character in that place. Without --unk-frac [UNK] keeps its random initial row and moves
    the scores far more (measured: 0.02 vs 0.15 nats per token after 300 steps)."""
    import random
    import statistics
    from collections import Counter

    import duilian
    from duilian.export import export_model, model_from_path
    from duilian.text import PUNCTUATION
    from duilian.tokenizer import Tokenizer

    pairs = fixture_pairs()
    tok = Tokenizer.for_corpus(Counter("".join(u + l for u, l in pairs[:200])), 1, "".join(PUNCTUATION))
    write_dataset(tmp_path / "data", {"train": pairs[:200], "val": pairs[200:]}, tok, 64, unknown_as_unk=True)
    gaps = {}
    for frac in (0.0, 0.15):  # a high share, so that 300 steps of a 2-layer model learn it
        with one_thread():
            train(tiny(tmp_path / "data", tmp_path / f"run-{frac}", steps=300, unk_frac=frac, dropout=0.0))
        model, vocab = model_from_path(tmp_path / f"run-{frac}")
        c = duilian.load(export_model(model, tmp_path / f"hf-{frac}", tokenizer=vocab))
        rng = random.Random(0)
        han = [t for t in vocab.tokens[6:] if t not in PUNCTUATION]
        unk, other = [], []
        for u, l in pairs[:40]:
            i = next(i for i, ch in enumerate(u) if i > 0 and ch not in PUNCTUATION)
            hidden, swapped = u[:i] + "\u3400" + u[i + 1:], u[:i] + rng.choice(han) + u[i + 1:]
            real, with_unk, with_other = c.score([u, hidden, swapped], [l, l, l])
            unk.append(abs(real - with_unk) / (len(l) + 1))
            other.append(abs(real - with_other) / (len(l) + 1))
        gaps[frac] = statistics.mean(unk), statistics.mean(other)
        if frac:
            cands = c.complete(pairs[0][0][:2] + "\u3400" + pairs[0][0][3:], n=3, seed=0)
            assert cands and all(x.checks.valid and x.unknown == ("\u3400",) for x in cands)
    trained, untrained = gaps[0.15][0], gaps[0.0][0]
    assert trained < gaps[0.15][1], gaps  # [UNK] moves the scores less than a random known character does
    assert trained < 0.5 * untrained, gaps  # and far less than an [UNK] that was never trained


def test_every_source_s_validation_split_is_scored_and_markers_never_take_the_v5_form(tmp_path):
    """A dataset of two sources with backward and keyword lines: each validation split gets its own loss
    (val_loss for all, val_loss.NAME per source), and the transformers-5 prompt form is drawn only for the
    seed's own lines (a backward or keyword line keeps its marker right after [CLS])."""
    from duilian.corpus import PrepareConfig, prepare
    from duilian.dataset import read_tokenizer

    pairs = fixture_pairs()
    a, b = tmp_path / "a.tsv", tmp_path / "b.tsv"
    a.write_text("".join(f"{u}\t{l}\n" for u, l in pairs[:150]), encoding="utf-8")
    b.write_text("".join(f"{u}\t{l}\n" for u, l in pairs[150:]), encoding="utf-8")
    data = tmp_path / "d"
    prepare(PrepareConfig([str(a), str(b)], str(data), val_fraction=0.1, directions="both", keywords=0.3, min_count=1))
    with one_thread():  # every validation line scored (10 batches of 8), so "val" is a's and b's lines together
        got = train(tiny(data, tmp_path / "run", steps=4, eval_every=2, eval_batches=10, v5_prompt_frac=0.5))
    assert {"val_loss", "val_loss.a", "val_loss.b"} <= set(got)
    assert min(got["val_loss.a"], got["val_loss.b"]) <= got["val_loss"] <= max(got["val_loss.a"], got["val_loss.b"])
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if r.get("event") == "val" and "val_loss.b" in r] == [0, 2, 4]
    # the export says which kinds of line the model read: the API reranks only for a model that read backward
    hf = export_model(model_from_checkpoint(tmp_path / "run"), tmp_path / "hf", tokenizer=read_tokenizer(data))
    lines = json.loads((hf / "config.json").read_text())["duilian"]["lines"]
    assert lines["backward"] == lines["forward"] > 0 and lines["keywords"] > 0
    import duilian

    assert duilian.load(hf).reverse_weight(duilian.api.Options()) > 0

    # The loop's own batches: record each line's v5 choice and its second token.
    tok = read_tokenizer(data)
    seen = []

    def recording_collate(split, indices, pad_to, pad_multiple=1, v5_form=None, *args, **kwargs):
        if v5_form is not None:
            seen.extend((int(split[int(i)][1]), bool(v)) for i, v in zip(indices, v5_form))
        return collate(split, indices, pad_to, pad_multiple, v5_form, *args, **kwargs)

    markers = {tok.reverse_id, tok.keyword_id}
    with one_thread(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_module, "collate", recording_collate)
        train(tiny(data, tmp_path / "run2", steps=6, v5_prompt_frac=0.6))
    assert sum(t in markers for t, _ in seen) > 10 and any(v for t, v in seen if t not in markers)
    assert not any(v for t, v in seen if t in markers)
