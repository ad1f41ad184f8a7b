"""The first command, start to exit: `duilian generate 丹枫江冷人初去` now, against the same command at an
earlier revision (default cd50c53, which built a transformers GPT2LMHeadModel to decode), on the same model
(--model: the warm start, BERT vocabulary, which the old revision can read), alternating runs in one session
so both see the same machine load. Also times the README's first command as a user types it (the embedded
default model, no flags).

    python benchmarks/bench_startup.py                  # 7 rounds
    python benchmarks/bench_startup.py --rounds 15 --baseline-rev cd50c53

Also times `python -c "import torch"`, the floor that no change to duilian can go below. The baseline's src/ is
extracted with `git archive` into a temporary directory and run from there (same interpreter, same installed
packages; no worktree is made); the current tree runs from this checkout's src/.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from revision import export_revision  # benchmarks/revision.py (scripts run from benchmarks/)

ROOT = Path(__file__).resolve().parents[1]
WARMSTART = ROOT.parent / "shared" / "warmstart" / "mini-hf"


def timed(cmd: list[str], src: Path | None) -> float:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--baseline-rev", default="cd50c53", help="the revision to compare against (default cd50c53)")
    ap.add_argument("--upper", default="丹枫江冷人初去")
    ap.add_argument("--model", type=Path, default=WARMSTART,
                    help="the model both revisions decode with (default: ../shared/warmstart/mini-hf)")
    args = ap.parse_args()

    first = [sys.executable, "-m", "duilian", "generate", args.upper]
    generate = [*first, "--seed", "1", "--model", str(args.model)]
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "baseline"
        old.mkdir()
        export_revision(args.baseline_rev, old)
        runs: dict[str, list[float]] = {"import torch": [], "now": [], f"at {args.baseline_rev}": [],
                                        "first command": [], f"first command at {args.baseline_rev}": []}
        timed(generate, ROOT / "src")  # warm the file cache for both sides
        timed(generate, old / "src")
        for _ in range(args.rounds):
            runs["import torch"].append(timed([sys.executable, "-c", "import torch"], None))
            runs["now"].append(timed(generate, ROOT / "src"))
            runs[f"at {args.baseline_rev}"].append(timed(generate, old / "src"))
            runs["first command"].append(timed(first, ROOT / "src"))  # embedded model, no flags
            runs[f"first command at {args.baseline_rev}"].append(timed(first, old / "src"))

    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"`duilian generate {args.upper}` start to exit, median of {args.rounds} alternating runs "
          f"({os.cpu_count()} CPUs):")
    for k, v in med.items():
        print(f"  {k:<16} {v:6.2f} s   (min {min(runs[k]):.2f}, max {max(runs[k]):.2f})")
    base = med[f"at {args.baseline_rev}"]
    print(f"  speed-up {base / med['now']:.2f}x (same model); now minus `import torch`: "
          f"{med['now'] - med['import torch']:.2f} s; the first command as typed: {med['first command']:.2f} s, "
          f"{med[f'first command at {args.baseline_rev}'] / med['first command']:.2f}x against {args.baseline_rev}'s")


if __name__ == "__main__":
    main()
