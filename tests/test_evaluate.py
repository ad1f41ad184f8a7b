"""duilian.evaluate: metric functions against hand-computed values, the reference ceiling on the fixture
split, the report renderer, the glue against a stand-in API, and an end-to-end run on a tiny random model."""

from __future__ import annotations

import lzma
import math
from pathlib import Path

import pytest

from duilian.evaluate import (
    EvalConfig,
    bleu,
    distinct,
    form_metrics,
    perplexity,
    read_pairs,
    render_markdown,
    write_report,
)

FIXTURE = Path(__file__).parent / "fixtures" / "couplets"


# --- distinct ------------------------------------------------------------------------------------

def test_distinct_by_hand():
    lines = ["花开花落", "花开"]
    # unigrams: 花 开 花 落 花 开 -> 3 distinct of 6; bigrams: 花开 开花 花落 | 花开 -> 3 distinct of 4
    assert distinct(lines, 1) == pytest.approx(3 / 6)
    assert distinct(lines, 2) == pytest.approx(3 / 4)


def test_distinct_ngrams_do_not_cross_lines():
    # Joined, "天地" + "地天" would add the bigram 地地; per line there are only 天地 and 地天.
    assert distinct(["天地", "地天"], 2) == 1.0
    assert distinct(["天"], 2) == 0.0  # no bigram at all


# --- BLEU ----------------------------------------------------------------------------------------

def test_bleu_identical_is_100_and_disjoint_is_0():
    pairs, _ = read_pairs(FIXTURE, limit=20)
    refs = [l for _, l in pairs]
    for n in (1, 2, 4):
        assert bleu(refs, refs, n) == pytest.approx(100.0)
    disjoint = ["甲乙丙丁戊己庚"] * len(refs)  # none of these characters is in the fixture's 下联
    assert not set("".join(disjoint)) & set("".join(refs))
    for n in (1, 2, 4):
        assert bleu(disjoint, refs, n) == 0.0


def test_bleu_by_hand():
    # BLEU-2 of 天地人和 against 天地和人: unigram precision 4/4, bigram precision 1/3 (天地), no brevity
    # penalty -> 100 * sqrt(1 * 1/3).
    assert bleu(["天地人和"], ["天地和人"], 2) == pytest.approx(100 * math.sqrt(1 / 3))
    # BLEU-1 of a perfect but short hypothesis: precision 1, brevity penalty exp(1 - 4/2).
    assert bleu(["天地"], ["天地人和"], 1) == pytest.approx(100 * math.exp(-1))


def test_bleu_rejects_mismatched_lists():
    with pytest.raises(ValueError):
        bleu(["天地"], ["天地", "人和"], 1)


# --- perplexity ----------------------------------------------------------------------------------

def test_perplexity_by_hand():
    # Two lines of 3 and 1 tokens, each token with probability 1/2 -> perplexity 2.
    assert perplexity([3 * math.log(0.5), math.log(0.5)], [3, 1]) == pytest.approx(2.0)
    # It is a per-token mean over the corpus, not a mean of per-line perplexities.
    assert (perplexity([math.log(0.5), 3 * math.log(0.25)], [1, 3])
            == pytest.approx(math.exp(-(math.log(0.5) + 3 * math.log(0.25)) / 4)))
    with pytest.raises(ValueError):
        perplexity([], [])


# --- form metrics --------------------------------------------------------------------------------

HAND_PAIRS = [
    # all rules hold; 乱 (仄) -> 闲 (平); rhythm points 1,3,5,6: 弦/幕 拨/沉 先/更 乱/闲 oppose 3 of 4
    ("风弦未拨心先乱", "夜幕已沉梦更闲"),
    # repeats mirrored, but 落 (仄) -> 去 (仄): ends_level False
    ("花开花落", "水流水去"),
    # 天 copied at the same position; 地 (仄) -> 人 (平)
    ("天地", "天人"),
    # ， against 。: punctuation not aligned; 开 is level, so ends_level does not apply
    ("春来，花开", "秋去。叶落"),
    # lengths differ: same_length, punctuation and repeats all fail; 高 is level
    ("山高", "水长长"),
]


def test_form_metrics_on_hand_made_pairs():
    m = form_metrics(HAND_PAIRS)
    assert m["pairs"] == 5
    assert m["same_length"] == pytest.approx(4 / 5)
    assert m["punctuation_aligned"] == pytest.approx(3 / 5)
    assert m["repeats_mirrored"] == pytest.approx(4 / 5)
    assert m["no_copy"] == pytest.approx(4 / 5)
    assert m["ends_level_applicable"] == 3
    assert m["ends_level"] == pytest.approx(2 / 3)  # over applicable pairs only
    assert m["valid"] == pytest.approx(1 / 5)
    assert m["rhythm_defined"] == 4  # not for the pair of different lengths
    assert m["rhythm_opposition"] == pytest.approx((0.75 + 0.0 + 1.0 + 1.0) / 4)
    lowers = [l for _, l in HAND_PAIRS]
    assert m["distinct_1"] == pytest.approx(distinct(lowers, 1))
    assert m["distinct_2"] == pytest.approx(distinct(lowers, 2))


def test_form_metrics_allow_upper_chars():
    # 地 reused at another position: a copy only in the strict reading.
    pairs = [("天地", "地人")]
    assert form_metrics(pairs)["no_copy"] == 0.0
    assert form_metrics(pairs, allow_upper_chars=True)["no_copy"] == 1.0


def test_form_metrics_undefined_parts_are_none():
    m = form_metrics([("山高", "水长")])  # 高 is level: ends_level does not apply
    assert m["ends_level"] is None and m["ends_level_applicable"] == 0


def test_reference_ceiling_on_fixture():
    pairs, skipped = read_pairs(FIXTURE)
    assert len(pairs) == 240 and skipped == {}
    m = form_metrics(pairs)
    # Human couplets: always the same length, almost always right in form, but not always.
    assert m["same_length"] == 1.0
    assert 0.9 < m["valid"] < 1.0
    assert 0.9 < m["ends_level"] <= 1.0
    assert 0.5 < m["rhythm_opposition"] < 1.0


# --- reading a split -----------------------------------------------------------------------------

def test_read_pairs_public_layout_and_xz(tmp_path):
    (tmp_path / "in.txt").write_text("晚 风 摇 树 \n\n春 来 , 花 开 \n", encoding="utf-8")
    with lzma.open(tmp_path / "out.txt.xz", "wt", encoding="utf-8") as f:
        f.write("晨 露 润 花 \n天 地 \n秋 去 , 叶 落 \n")
    pairs, skipped = read_pairs(tmp_path)
    assert pairs == [("晚风摇树", "晨露润花"), ("春来，花开", "秋去，叶落")]  # ASCII comma made full-width
    assert skipped == {"empty line": 1}
    assert read_pairs(tmp_path, limit=1)[0] == [("晚风摇树", "晨露润花")]


def test_read_pairs_errors(tmp_path):
    with pytest.raises(ValueError, match="has none of in.txt"):
        read_pairs(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_pairs(tmp_path / "missing")
    (tmp_path / "in.txt").write_text("天\n地\n", encoding="utf-8")
    (tmp_path / "out.txt").write_text("人\n", encoding="utf-8")
    with pytest.raises(ValueError, match="2 lines"):
        read_pairs(tmp_path)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError):
        EvalConfig(method="nucleus")
    with pytest.raises(ValueError):
        EvalConfig(n=0)
    with pytest.raises(ValueError):
        EvalConfig(limit=0)


# --- the report ----------------------------------------------------------------------------------

def _fake_report() -> dict:
    pairs, _ = read_pairs(FIXTURE, limit=5)
    hyps = [l for _, l in pairs]
    return {
        "model": "m", "test": "t", "config": vars(EvalConfig()), "pairs": 5, "skipped": {"empty line": 1},
        "no_candidate": 0, "bleu": {"1": 100.0, "2": 100.0, "4": 100.0}, "perplexity": 12.5,
        "perplexity_tokens": 40, "candidates": {"per_upper": 4.5, "distinct_2": 0.625},
        "form": {"duilian": form_metrics(pairs), "reference": form_metrics(HAND_PAIRS)},
        "throughput": {"uppers_per_s": 3.0, "decode_seconds": 1.7, "device": "cpu"},
        "examples": [{"upper": u, "reference": l, "duilian": l} for u, l in pairs],
        "definitions": {"bleu": "..."}, "versions": {}, "hypotheses": hyps,
    }


def test_render_markdown_table():
    md = render_markdown(_fake_report())
    assert "| metric | duilian | reference |" in md
    assert "| BLEU-4 (characters) | 100.00 | — |" in md
    assert "| perplexity of the reference 下联 | 12.50 | — |" in md
    assert "| fully valid form | 100.0% | 20.0% |" in md
    assert "| ends level when 上联 ends oblique | 100.0% | 66.7% |" in md
    assert "empty line × 1" in md
    assert ("| candidates per 上联 | 4.50 | — |" in md
            and "| distinct-2 among a 上联's candidates (mean) | 0.625 | — |" in md)


def test_write_report(tmp_path):
    import json

    out = write_report(_fake_report(), tmp_path / "r")
    data = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert data["perplexity"] == 12.5 and "hypotheses" not in data
    assert (out / "report.md").read_text(encoding="utf-8").startswith("# duilian evaluation")
    assert len((out / "hypotheses.txt").read_text(encoding="utf-8").splitlines()) == 5


# --- end to end on a tiny random model -----------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    import shutil

    import torch

    from duilian.model import build_model
    from duilian.tokenizer import VOCAB_PATH

    d = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    build_model("tiny", dropout=0.0, seed=0).save_pretrained(d)
    shutil.copy(VOCAB_PATH, d / "vocab.txt")
    return d


def _reference_perplexity(model_dir, pairs) -> float:
    """Teacher-forced perplexity one pair at a time, straight from the model: the reference for the
    batched Couplets.score path."""
    import torch

    from duilian.model import load_model
    from duilian.tokenizer import default_tokenizer

    model, tok = load_model(model_dir), default_tokenizer()
    total, count = 0.0, 0
    with torch.no_grad():
        for u, l in pairs:
            ids = tok.encode_pair(u, l)
            start = len(tok.encode_prompt(u))  # first 下联 token
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)  # (T, V)
            # logits at t predict token t+1
            total += sum(logp[t - 1, ids[t]].item() for t in range(start, len(ids)))
            count += len(ids) - start
    return math.exp(-total / count)


@pytest.mark.slow
def test_evaluate_end_to_end_tiny_model(tiny_model_dir, tmp_path):
    import json

    from duilian.cli import main

    out = tmp_path / "report"
    assert main(["evaluate", "--model", str(tiny_model_dir), "--test", str(FIXTURE), "--limit", "20",
                 "--batch-size", "10", "--out", str(out), "--quiet"]) == 0

    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    md = (out / "report.md").read_text(encoding="utf-8")
    assert report["pairs"] == 20 and "| metric | duilian | reference |" in md
    for score in report["bleu"].values():
        assert 0.0 <= score <= 100.0
    # A random model is bad but finite; batched scoring equals one-at-a-time scoring.
    assert 1.0 < report["perplexity"] < float("inf")
    pairs, _ = read_pairs(FIXTURE, limit=20)
    assert report["perplexity"] == pytest.approx(_reference_perplexity(tiny_model_dir, pairs), rel=1e-4)
    # The decoder's masks make every line right in form, even from random weights.
    ours = report["form"]["duilian"]
    assert report["no_candidate"] == 0
    assert ours["valid"] == 1.0 and ours["ends_level"] == 1.0
    assert report["form"]["reference"] == form_metrics(pairs)
    assert report["throughput"]["uppers_per_s"] > 0
    hyps = (out / "hypotheses.txt").read_text(encoding="utf-8").splitlines()
    assert [len(h) for h in hyps] == [len(u) for u, _ in pairs]


def test_cli_missing_test_split_exits_2(tmp_path, capsys):
    from duilian.cli import main

    assert main(["evaluate", "--test", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "no such file or directory" in err and "nowhere" in err
    assert not (tmp_path / "r").exists()


def test_default_out_dir():
    from duilian.evaluate import default_out_dir

    assert default_out_dir("runs/mini-v1/") == Path("eval-mini-v1")
    assert default_out_dir(None) == Path("eval-default")


# --- the glue, against a stand-in for the API ----------------------------------------------------

class _FakeCouplets:
    """Answers with the reference 下联 (or nothing, for 晚风摇树树还挺) and scores every token at p = 1/2."""

    max_chars = 8

    def __init__(self, refs: dict[str, str]):
        from duilian.tokenizer import default_tokenizer

        self.tokenizer, self.refs, self.calls = default_tokenizer(), refs, []

    def complete_batch(self, uppers, n=5, **options):
        from types import SimpleNamespace

        self.calls.append((list(uppers), n, options))
        return [[] if u == "晚风摇树树还挺" else [SimpleNamespace(text=self.refs[u]), SimpleNamespace(text="x")]
                for u in uppers]

    def score(self, uppers, lowers):
        return [self.known_tokens(l) * math.log(0.5) for l in lowers]

    def known_tokens(self, lower):
        return 1 + sum(ch in self.tokenizer.index for ch in lower)


def test_evaluate_glue_with_a_stand_in_api(tmp_path, monkeypatch):
    import duilian.api
    from duilian.evaluate import evaluate

    split = [("晚风摇树树还挺", "晨露润花花更红"), ("丹枫江冷人初去", "绿柳堤新燕复来"),
             ("一二三四五六七八九", "甲乙丙丁戊己庚辛壬"),  # 9 > max_chars
             ("闲来野钓人稀处", "兴起高歌酒醉中"),
             ("龘来野钓人稀处", "兴起高歌酒醉中")]  # 龘: not in vocab, read as [UNK]
    (tmp_path / "in.txt").write_text("".join(" ".join(u) + " \n" for u, _ in split), encoding="utf-8")
    (tmp_path / "out.txt").write_text("".join(" ".join(l) + " \n" for _, l in split), encoding="utf-8")
    fake = _FakeCouplets(dict(split))
    monkeypatch.setattr(duilian.api, "load", lambda model_dir, device="cpu", quantize=None: fake)

    report = evaluate("m", tmp_path, EvalConfig(method="greedy", n=3, batch_size=2, seed=7))
    assert report["pairs"] == 4
    assert report["skipped"] == {"上联 longer than 8 characters": 1}
    assert report["unknown_characters"] == {"pairs": 1, "distinct": 1}
    # Batches of 2; greedy is the decoder's temperature-0 sampling; n is passed through.
    assert [len(c[0]) for c in fake.calls] == [2, 2]
    assert fake.calls[0][1] == 3
    assert fake.calls[0][2] == {"method": "sample", "temperature": 0.0, "allow_upper_chars": False, "lm_weight": None,
                                "reverse_weight": None, "calibration_weight": None, "pair_weight": None}
    # the candidates: the fake gives 2 per 上联 (the reference and "x") but none for the first
    assert report["candidates"]["per_upper"] == pytest.approx((0 + 2 + 2 + 2) / 4)
    assert report["candidates"]["distinct_2"] == pytest.approx(1.0)  # "x" has no bigram; the reference's are distinct
    # The top candidate is the hypothesis; a 上联 without candidates counts as an empty, invalid line.
    assert report["hypotheses"] == ["", "绿柳堤新燕复来", "兴起高歌酒醉中", "兴起高歌酒醉中"]
    assert report["no_candidate"] == 1
    assert report["form"]["duilian"]["valid"] == pytest.approx(3 / 4)
    refs = ["晨露润花花更红", "绿柳堤新燕复来", "兴起高歌酒醉中", "兴起高歌酒醉中"]
    assert 0 < report["bleu"]["1"] < 100
    assert report["bleu"]["1"] == pytest.approx(bleu(report["hypotheses"], refs, 1))
    assert report["perplexity"] == pytest.approx(2.0)
    assert report["perplexity_tokens"] == 4 * 8
    assert "| 上联 with no candidate | 1 | — |" in render_markdown(report)


@pytest.mark.slow
def test_evaluate_greedy_and_seeded_sampling(tiny_model_dir):
    from duilian.evaluate import evaluate

    greedy = evaluate(tiny_model_dir, FIXTURE, EvalConfig(limit=4, method="greedy"))
    assert greedy["form"]["duilian"]["valid"] == 1.0
    sample = [evaluate(tiny_model_dir, FIXTURE, EvalConfig(limit=4, method="sample", n=2, seed=3, batch_size=s))
              for s in (4, 1)]
    # Same seed, same hypotheses, whatever the batching.
    assert sample[0]["hypotheses"] == sample[1]["hypotheses"]
    assert sample[0]["form"]["duilian"]["valid"] == 1.0


def test_cli_broken_xz_test_split_exits_2(tmp_path, capsys):
    from duilian.cli import main

    for name in ("in.txt.xz", "out.txt.xz"):
        (tmp_path / name).write_bytes(b"not xz at all")
    assert main(["evaluate", "--test", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.startswith("duilian evaluate: ")
    assert not (tmp_path / "r").exists()


def test_cli_model_flags_are_generate_s(monkeypatch):
    """--model/--device/--int8 come from generate.add_model_options; --int8 reaches duilian.load."""
    import argparse

    from duilian.cli import evaluate as evaluate_cli

    parser = argparse.ArgumentParser()
    evaluate_cli.register(parser)
    args = parser.parse_args(["--test", "t", "--int8", "--device", "cpu"])
    seen = {}

    def stand_in(model, test, config, progress):
        seen["config"] = config
        raise ValueError("stop here")

    monkeypatch.setattr("duilian.evaluate.evaluate", stand_in)
    assert evaluate_cli.run(args) == 2
    assert seen["config"].quantize == "int8" and seen["config"].device == "cpu" and args.model is None


def test_genericness_counts_lines_and_endings_that_answer_many_uppers():
    from duilian.evaluate import GENERIC_TOP, genericness

    varied = [f"{chr(0x4E00 + i)}{chr(0x5E00 + i)}{chr(0x6E00 + i)}" for i in range(300)]
    g = genericness(varied)
    assert g["top_share"] == pytest.approx(3 / 300) and g["distinct_lines"] == 1.0  # ceil(1% of 300) = 3 lines
    generic = ["万马奔腾步步高"] * 30 + ["百鸟争鸣步步高"] * 30 + varied[:240]
    g = genericness(generic)
    assert g["top_share"] == pytest.approx((30 + 30 + 1) / 300)  # the 3 most frequent of 242 distinct lines
    assert g["tail_share"] == pytest.approx(60 / 300 + 2 / 300)  # 步步高 ends 60 lines
    assert g["common_tails"][0] == ["步步高", 60]
    assert GENERIC_TOP == 0.01
    with pytest.raises(ValueError):
        genericness(["", ""])


@pytest.mark.parametrize("field", ["method", "first"])
def test_eval_config_refuses_a_value_its_literal_type_lacks(field):
    with pytest.raises(ValueError, match=f"{field} must be one of"):
        EvalConfig(**{field: "nucleus"})
