"""Another revision of this repository's source, for benchmarks that measure today's code against it in the same
run (bench_serve, bench_startup, bench_train --baseline-rev)."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def export_revision(rev: str, into: Path, path: str = "src") -> Path:
    """`path` (a folder of the repository) as it was at git revision `rev`, written under `into` with
    `git archive`; returns into / "src", the directory to put on PYTHONPATH."""
    tar = subprocess.run(["git", "-C", str(REPO), "archive", rev, path], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(into, filter="data")
    return Path(into) / "src"
