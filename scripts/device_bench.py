"""Training throughput on one GPU, measured in one process: a plain transformers baseline against
duilian's trainer, as real (non-pad) tokens/s and MFU.

    baseline   GPT2LMHeadModel(input_ids, attention_mask, labels): every row padded to 64 like the
               seed, bf16 autocast, eager, torch.optim.AdamW (default foreach), random batches
    duilian    duilian.train.train: --pad batch --bucket, bf16 autocast, --compile, fused AdamW,
               vocabulary projection on real positions only

MFU counts useful work only: (6 × matmul parameters × real tokens + 12 × layers × width × Σ length²)
/ time / peak, so padding shows up as lost MFU. Writes a JSON summary (also printed). On a CPU (for
testing the script) MFU is null.

    python scripts/device_bench.py --data DIR --out DIR [--presets base small] [--steps 200]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from duilian.dataset import IGNORE_INDEX, BatchSchedule, TokenizedSplit  # noqa: E402
from duilian.model import PRESETS, build_model, to_transformers  # noqa: E402
from duilian.train import TrainConfig, flops_per_token, train  # noqa: E402


def baseline(data: str, preset: str, steps: int, batch: int, device: torch.device, peak: float) -> dict:
    """The plain-transformers loop; the second half of `steps` is timed."""
    split = TokenizedSplit.open(data, "train")
    schedule = BatchSchedule(split.lengths, batch, seed=0)
    model = to_transformers(build_model(preset, dropout=0.1, seed=0)).to(device).train()  # transformers' own model
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.01)
    cuda = device.type == "cuda"
    p = PRESETS[preset]
    per_token, attn = flops_per_token(model), 12 * p.n_layer * p.n_embd
    tokens = attn_sq = 0
    t0 = None
    for step in range(steps):
        if step == steps // 2:  # warm-up done: start the clock
            if cuda:
                torch.cuda.synchronize()
            t0, tokens, attn_sq = time.perf_counter(), 0, 0
        _, idx = schedule.global_batch_at(step)
        # what a plain script does: every line padded to 64, an attention mask, labels -100 on pads
        x = np.zeros((len(idx), 64), dtype=np.int64)
        mask = np.zeros_like(x)
        for r, i in enumerate(idx):
            line = split[int(i)]
            x[r, : len(line)], mask[r, : len(line)] = line, 1
            tokens += len(line) - 1
            attn_sq += (len(line) - 1) ** 2
        labels = np.where(mask == 1, x, IGNORE_INDEX)  # transformers shifts them itself
        xt, mt, lt = (torch.from_numpy(a).to(device) for a in (x, mask, labels))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = model(input_ids=xt, attention_mask=mt, labels=lt).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    timed = steps - steps // 2
    out = {"tokens_per_s": tokens / dt, "steps_per_s": timed / dt, "loss": loss.item(),
           "mfu": (per_token * tokens + attn * attn_sq) / dt / peak if cuda else None}
    del model, opt
    if cuda:
        torch.cuda.empty_cache()
    return out


def ours(data: str, out: Path, preset: str, steps: int, batch: int, device: str, compile: bool, peak: float) -> dict:
    cfg = TrainConfig(data=data, out=str(out), preset=preset, steps=steps, batch_size=batch, pad="batch",
                      bucket=True, compile=compile, device=device, report_every=max(1, steps // 2), eval_every=0,
                      save_every=10**9, peak_flops=peak)
    last = train(cfg)
    return {k: last.get(k) for k in ("tokens_per_s", "steps_per_s", "loss", "mfu")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="dataset directory (duilian prepare)")
    ap.add_argument("--out", required=True, help="where throughput.json and the runs go")
    ap.add_argument("--presets", nargs="+", default=["base"],
                    help="presets to time with duilian's trainer; the first is also run as the baseline")
    ap.add_argument("--steps", type=int, default=200, help="steps per measurement, first half is warm-up")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-compile", action="store_true", help="time duilian's trainer without torch.compile")
    ap.add_argument("--peak-flops", type=float, default=989e12, help="peak bf16 FLOP/s (H100/H200: 989e12)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True

    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": str(torch.__version__), "steps": args.steps, "batch_size": args.batch_size, "runs": {}}
    first = args.presets[0]
    result["runs"][f"baseline/{first}"] = baseline(args.data, first, args.steps, args.batch_size, device,
                                                   args.peak_flops)
    print(json.dumps(result["runs"][f"baseline/{first}"]), flush=True)
    for preset in args.presets:
        compile = not args.no_compile
        try:
            r = ours(args.data, out / f"ours-{preset}", preset, args.steps, args.batch_size, args.device, compile,
                     args.peak_flops)
        except Exception as err:  # noqa: BLE001 - a compile failure must not cost the rest of the session
            print(f"duilian/{preset} with compile={compile} failed: {err!r}; retrying without compile", flush=True)
            compile = False
            r = ours(args.data, out / f"ours-{preset}-eager", preset, args.steps, args.batch_size, args.device,
                     False, args.peak_flops)
        result["runs"][f"duilian/{preset}"] = {**r, "compile": compile}
        print(json.dumps(result["runs"][f"duilian/{preset}"]), flush=True)
    base, mine = result["runs"][f"baseline/{first}"], result["runs"][f"duilian/{first}"]
    result["speedup_tokens_per_s"] = mine["tokens_per_s"] / base["tokens_per_s"]
    (out / "throughput.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
