"""The README's training path, command by command, on the 240-couplet fixture:
prepare -> train a tiny model on CPU -> the loss falls -> export -> the seed's snippet, evaluate, generate."""

import json
import math
from pathlib import Path

import pytest

from duilian.cli import main
from duilian.rules import check_pair
from duilian.tokenizer import Tokenizer

FIXTURE = Path(__file__).parent / "fixtures" / "couplets"


@pytest.mark.slow
@pytest.mark.parametrize("vocab", ["corpus", "bert"])
def test_prepare_train_export_and_use(tmp_path, capsys, vocab):
    """Once with the corpus's own vocabulary (the default) and once with the seed's BERT vocabulary."""
    data, run, hf = tmp_path / "data", tmp_path / "run", tmp_path / "hf"

    assert main(["prepare", str(FIXTURE), "--out", str(data), "--val-fraction", "0.15", "--vocab", vocab]) == 0
    meta = json.loads((data / "meta.json").read_text())
    assert meta["splits"]["train"]["pairs"] >= 190 and meta["splits"]["val"]["pairs"] >= 20

    assert main(["train", "--data", str(data), "--out", str(run), "--preset", "tiny", "--steps", "40",
                 "--batch-size", "16", "--lr", "3e-3", "--report-every", "10", "--eval-every", "20",
                 "--save-every", "20", "--bucket"]) == 0
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [m["val_loss"] for m in metrics if "val_loss" in m]
    tokens = list(Tokenizer.from_dir(data).tokens)  # the vocabulary the model gets (one token per \n-line)
    if vocab == "corpus":
        assert 300 < len(tokens) < 2000 and tokens[:6] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "-"]
    else:
        assert len(tokens) == 21128 and tokens[101:103] == ["[CLS]", "[SEP]"]
    # the loss falls, from about ln(vocabulary) (a ~uniform untrained model) by over half a nat
    assert len(val) >= 2 and val[0] > math.log(len(tokens)) - 0.5 and val[-1] < val[0] - 0.5, val
    assert (run / "loss.png").stat().st_size > 0

    assert main(["export", "--checkpoint", str(run), "--out", str(hf)]) == 0
    assert list(Tokenizer.from_dir(hf).tokens) == tokens  # the export ships it
    assert json.loads((hf / "config.json").read_text())["vocab_size"] == len(tokens)
    from transformers import BertTokenizer, GPT2LMHeadModel, TextGenerationPipeline

    tokenizer = BertTokenizer.from_pretrained(str(hf))
    model = GPT2LMHeadModel.from_pretrained(str(hf))
    text_generator = TextGenerationPipeline(model, tokenizer)
    out = text_generator("[CLS]丹 枫 江 冷 人 初 去 -", max_length=25, do_sample=True)
    assert out[0]["generated_text"].replace(" ", "").startswith("[CLS]丹枫江冷人初去-")

    capsys.readouterr()
    assert main(["generate", "丹枫江冷，人初去", "--model", str(hf), "-n", "3", "--json", "--seed", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    cands = result["candidates"] if isinstance(result, dict) else result[0]["candidates"]
    # up to n distinct lines (Search.n: sampling may find fewer), each right in form
    assert 1 <= len(cands) <= 3 and len({c["text"] for c in cands}) == len(cands)
    for c in cands:
        assert len(c["text"]) == 8 and c["text"][4] == "，" and c["checks"]["valid"]
        assert check_pair("丹枫江冷，人初去", c["text"]).valid and math.isfinite(c["score"])

    report = tmp_path / "report"
    assert main(["evaluate", "--model", str(hf), "--test", str(FIXTURE), "--limit", "12", "--out", str(report),
                 "--quiet"]) == 0
    numbers = json.loads((report / "report.json").read_text())
    assert numbers["pairs"] + sum(numbers["skipped"].values()) == 12 and numbers["pairs"] >= 10
    # every 上联 got a 下联 right in form (the masks), and the figures are what they claim to be
    assert numbers["no_candidate"] == 0 and numbers["form"]["duilian"]["valid"] == 1.0
    assert len((report / "hypotheses.txt").read_text(encoding="utf-8").splitlines()) == numbers["pairs"]
    assert len(numbers["examples"]) == 10
    assert all(check_pair(e["upper"], e["duilian"]).valid for e in numbers["examples"])
    assert set(numbers["bleu"]) == {"1", "2", "4"}
    assert all(0 <= b <= 100 for b in numbers["bleu"].values())
    # Perplexity of the references: the untrained model is ~uniform over the vocabulary; 40 steps bring the
    # validation loss down by over half a nat, so the references are at least e^0.5 times likelier.
    assert 1 < numbers["perplexity"] < len(tokens) / math.exp(0.5)
    assert numbers["form"]["reference"]["pairs"] == numbers["pairs"]
    assert 0 < numbers["form"]["duilian"]["distinct_1"] <= 1
    assert numbers["throughput"]["uppers_per_s"] > 0
    assert "BLEU" in (report / "report.md").read_text(encoding="utf-8")
