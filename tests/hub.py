"""A huggingface_hub cache built by the tests themselves: what `duilian.load("owner/name")` reads offline."""

from pathlib import Path

import torch

from duilian.export import export_model
from duilian.gpt import GPT
from duilian.model import build_model


def hub_cache(root: Path, repo: str = "uer/gpt2-chinese-couplet") -> tuple[Path, GPT]:
    """A huggingface_hub cache at `root` holding `repo` as uer/gpt2-chinese-couplet is laid out on the Hub
    (config.json, pytorch_model.bin, vocab.txt), built here from a tiny random model: no download."""
    model = build_model("tiny", dropout=0.0, seed=6).eval()
    folder = root / f"models--{repo.replace('/', '--')}"
    snapshot = export_model(model, folder / "snapshots" / ("0" * 40))
    torch.save(model.state_dict(), snapshot / "pytorch_model.bin")
    (snapshot / "model.safetensors").unlink()
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("0" * 40)
    return root, model
