"""`duilian generate` and `duilian acrostic`, run the way a user runs them.

Sampling promises up to n distinct candidates (decode.Search.n), so sampled runs are checked for 1..n
distinct lines; beam search over thousands of allowed characters always fills its n beams."""

import json
from pathlib import Path

import pytest

from duilian import api
from duilian.cli import main
from duilian.model import build_model
from duilian.rules import check_pair

FIXTURE = Path(__file__).parent / "fixtures" / "couplets"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-model")
    build_model("tiny", dropout=0.0, seed=0).save_pretrained(path)
    return str(path)


def test_generate_text(model_dir, capsys):
    assert main(["generate", "丹枫江冷人初去", "--model", model_dir, "-n", "3", "--seed", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    texts = [line.split("\t")[0] for line in lines]
    assert 1 <= len(lines) <= 3 and len(set(texts)) == len(texts)
    assert all(check_pair("丹枫江冷人初去", t).valid and "form relaxed" not in line for t, line in zip(texts, lines))


def test_generate_json(model_dir, capsys):
    args = ["generate", "花开花落，春去春来", "--model", model_dir, "-n", "2", "--json", "--method", "beam"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["upper"] == "花开花落，春去春来" and len(out["candidates"]) == 2  # beams: always n here
    assert len({c["text"] for c in out["candidates"]}) == 2
    assert all(c["valid"] and c["text"][4] == "，" for c in out["candidates"])


def test_generate_seed_is_reproducible(model_dir, capsys):
    args = ["generate", "海阔凭鱼跃", "--model", model_dir, "--temperature", "0.8", "--top-k", "50"]
    assert main([*args, "--seed", "7"]) == 0
    first = capsys.readouterr().out
    assert first.strip()  # two failed runs would both print nothing
    assert main([*args, "--seed", "7"]) == 0
    assert capsys.readouterr().out == first
    assert main([*args, "--seed", "8"]) == 0  # and the seed is what decides
    assert capsys.readouterr().out not in ("", first)


def test_generate_leads_with_beam_search_by_default(model_dir, capsys):
    """Sampling's first candidate is beam search's best line unless --first says otherwise (greedy: the
    temperature-0 line is among them); the others are samples, which the seed decides."""
    def texts(*extra):
        assert main(["generate", "丹枫江冷人初去", "--model", model_dir, "-n", "4", *extra]) == 0
        return [line.split("\t")[0] for line in capsys.readouterr().out.strip().splitlines()]

    best_beam = texts("--method", "beam", "-n", "5")[0]
    for seed in ("1", "2"):
        sampled = texts("--seed", seed)
        assert sampled[0] == best_beam and best_beam not in sampled[1:]
    # greedy leads no ranking (a sample may score higher), it is only sure to be among the candidates
    assert texts("--temperature", "0")[0] in texts("--first", "greedy", "--seed", "3")


@pytest.mark.parametrize("fmt", ["jsonl", "tsv"])
def test_generate_file_skips_bad_lines(model_dir, tmp_path, capsys, fmt):
    src = tmp_path / "in.txt"
    src.write_text("丹 枫 江 冷 人 初 去\nhello\n\n海阔凭鱼跃\n" + "天" * 40 + "\n", encoding="utf-8")
    dst = tmp_path / f"out.{fmt}"
    assert main(["generate", "--input", str(src), "--output", str(dst), "--model", model_dir, "-n", "2",
                 "--seed", "0"]) == 0
    err = capsys.readouterr().err
    assert "in.txt:2: skipped" in err and "in.txt:5: skipped" in err and "the limit is 32" in err
    rows = dst.read_text(encoding="utf-8").strip().splitlines()
    assert len(rows) == 2
    if fmt == "jsonl":
        records = [json.loads(r) for r in rows]
        assert [r["line"] for r in records] == [1, 4] and records[0]["upper"] == "丹枫江冷人初去"
        for r in records:
            texts = [c["text"] for c in r["candidates"]]
            assert 1 <= len(texts) <= 2 and len(set(texts)) == len(texts)
            assert all(c["valid"] and check_pair(r["upper"], c["text"]).valid for c in r["candidates"])
    else:
        cells = [r.split("\t") for r in rows]
        assert [c[0] for c in cells] == ["丹枫江冷人初去", "海阔凭鱼跃"]
        for upper, *lowers in cells:
            assert 1 <= len(lowers) <= 2 and all(check_pair(upper, low).valid for low in lowers)


@pytest.mark.parametrize("argv, reason", [
    (["generate", "hello"], "no Chinese"),
    (["generate", "天" * 40], "the limit is 32"),
    (["generate"], "give either"),
    (["generate", "--input", "/nonexistent/in.txt"], "No such file"),
    (["acrostic", "春"], "exactly two"),
    (["acrostic", "春福", "--length", "1"], "between 2 and 32"),
])
def test_bad_input_exits_2_with_one_line(model_dir, capsys, argv, reason):
    assert main([*argv, "--model", model_dir]) == 2
    err = capsys.readouterr().err.strip()
    assert reason in err and len(err.splitlines()) == 1


def test_no_default_model_exits_2(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(api, "DEFAULT_MODEL_DIR", tmp_path)
    assert main(["generate", "丹枫江冷人初去"]) == 2
    assert "no default model yet" in capsys.readouterr().err


def test_model_may_be_a_hugging_face_hub_id_read_from_its_cache_offline(tmp_path):
    """--model owner/name: the Hub's model through huggingface_hub, here from a cache the test built, with the
    Hub out of reach (HF_HUB_OFFLINE=1), in a fresh process as a user runs it."""
    import os
    import subprocess
    import sys

    from hub import hub_cache

    cache, _ = hub_cache(tmp_path / "hub")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "duilian", "generate", "丹枫江冷人初去", "--model",
                           "uer/gpt2-chinese-couplet", "-n", "2", "--seed", "1"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert all(check_pair("丹枫江冷人初去", line.split("\t")[0]).valid for line in done.stdout.splitlines())


def test_acrostic(model_dir, capsys):
    assert main(["acrostic", "春福", "--length", "5", "-n", "2", "--model", model_dir, "--json", "--seed", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 1 <= len(out["couplets"]) <= 2 and len({x["upper"] for x in out["couplets"]}) == len(out["couplets"])
    for x in out["couplets"]:
        assert x["upper"][0] == "春" and x["lower"][0] == "福" and len(x["lower"]) == 5 and x["valid"]


@pytest.mark.int8
def test_generate_int8_writes_what_fp32_writes_up_to_rounding(model_dir, tmp_path, capsys):
    """--int8 against the fp32 run on 60 real 上联, greedy so each gives one line: mostly the same lines, and
    the same line with nearly the same log-prob. The masks make any weights' lines right in form, so only
    this comparison shows the int8 weights compute what the model does."""
    uppers = (FIXTURE / "in.txt").read_text(encoding="utf-8").splitlines()[:60]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(uppers) + "\n", encoding="utf-8")
    runs = {}
    for name, flags in (("fp32", []), ("int8", ["--int8"])):
        out = tmp_path / f"{name}.jsonl"
        assert main(["generate", "--input", str(src), "--output", str(out), "--model", model_dir, "-n", "1",
                     "--temperature", "0", *flags]) == 0
        records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        assert len(records) == 60 and all(len(r["candidates"]) == 1 for r in records)
        runs[name] = [r["candidates"][0] for r in records]
    assert all(c["valid"] for c in runs["int8"])
    same = [(a["logprob"], b["logprob"]) for a, b in zip(runs["int8"], runs["fp32"]) if a["text"] == b["text"]]
    # The tiny random model's next-token log-probs lie within ~0.3 nats of each other, so int8 rounding
    # (~1e-3 per token) flips some greedy choices: 47-48 of 60 lines agree on AVX2 and VNNI kernels; the
    # saturating AVX2 kernel (8-bit activations without VNNI) agreed on 29.
    assert len(same) >= 0.65 * 60, len(same)
    # The same line's mean log-prob: within 0.0008 on average (max 0.004) with int8 as shipped, 0.0019 with
    # the saturating kernel.
    gaps = [abs(a - b) for a, b in same]
    assert sum(gaps) / len(gaps) < 0.0014 and max(gaps) < 0.02, (sum(gaps) / len(gaps), max(gaps))


def test_generate_hengpi_svg_and_script(model_dir, tmp_path, capsys):
    """--hengpi adds 3 banners per line; --svg draws the best couplet as hanging.couplet_svg does; a traditional
    上联 is answered in traditional, and --script simplified overrides that."""
    import xml.etree.ElementTree as ET

    from duilian.hanging import couplet_svg

    svg = tmp_path / "c.svg"
    assert main(["generate", "天增岁月人增寿", "--model", model_dir, "-n", "2", "--seed", "1", "--hengpi",
                 "--svg", str(svg), "--json"]) == 0
    best = json.loads(capsys.readouterr().out)["candidates"][0]
    assert len(best["hengpi"]) == 3 and all(len(h["text"]) == 4 for h in best["hengpi"])
    drawn = svg.read_text(encoding="utf-8")
    assert drawn == couplet_svg("天增岁月人增寿", best["text"], best["hengpi"][0]["text"])
    ET.fromstring(drawn)  # well-formed
    assert main(["generate", "風調雨順年年好", "--model", model_dir, "-n", "1", "--seed", "1", "--json"]) == 0
    trad = json.loads(capsys.readouterr().out)
    assert trad["script"] == "traditional" and trad["upper"] == "風調雨順年年好" and trad["candidates"][0]["valid"]
    assert main(["generate", "風調雨順年年好", "--model", model_dir, "-n", "1", "--seed", "1", "--json",
                 "--script", "simplified"]) == 0
    simp = json.loads(capsys.readouterr().out)
    assert simp["script"] == "simplified" and simp["upper"] == "风调雨顺年年好"
    assert main(["generate", "--input", str(FIXTURE / "in.txt"), "--model", model_dir, "--svg", str(svg)]) == 2
    assert "--svg draws one couplet" in capsys.readouterr().err


@pytest.fixture(scope="module")
def keyword_model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("kw-model")
    m = build_model("tiny", dropout=0.0, seed=3)
    m.config.duilian = {"lines": {"forward": 10, "backward": 0, "keywords": 5}}
    m.save_pretrained(path)
    return str(path)


def test_compose_json_gives_five_couplets_with_three_banners(keyword_model_dir, capsys):
    args = ["compose", "春", "福", "--length", "7", "--json", "--model", keyword_model_dir, "--seed", "2"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["words"] == ["春", "福"] and len(out["couplets"]) == 5
    for c in out["couplets"]:
        assert c["valid"] and len(c["upper"]) == len(c["lower"]) == 7 and len(c["hengpi"]) == 3
    args = ["compose", "平安", "--occasion", "乔迁", "--year", "2027", "-n", "2", "--model", keyword_model_dir]
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all("横批" in line for line in lines)


@pytest.mark.parametrize("argv, reason", [
    (["compose", "spring"], "Chinese characters only"),
    (["compose", "春", "--occasion", "生日"], "unknown occasion"),
    (["acrostic", "伟娜", "--position", "last"], "cannot end the 下联"),
    (["acrostic", "伟娜", "--position", "8"], "past the end"),
])
def test_compose_and_embedding_refuse_with_the_reason(keyword_model_dir, capsys, argv, reason):
    assert main([*argv, "--model", keyword_model_dir]) == 2
    err = capsys.readouterr().err
    assert reason in err and len(err.strip().splitlines()) == 1


def test_acrostic_position(model_dir, capsys):
    assert main(["acrostic", "伟娜", "--position", "3", "-n", "2", "--model", model_dir, "--json", "--seed", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["couplets"] and all(c["upper"][2] == "伟" and c["lower"][2] == "娜" for c in out["couplets"])


def test_generate_ranking_weights_reach_the_ranking(model_dir, capsys):
    """--lm-weight turns the anti-LM term on (each candidate carries its prior, and its score includes
    -β × prior); 0 leaves it off; a weight out of range is a clear error, exit 2."""
    base = ["generate", "海阔凭鱼跃", "--model", model_dir, "-n", "3", "--seed", "1", "--json"]
    assert main([*base, "--lm-weight", "0"]) == 0
    assert all(c["prior"] is None for c in json.loads(capsys.readouterr().out)["candidates"])
    assert main([*base, "--lm-weight", "0.5"]) == 0
    cands = json.loads(capsys.readouterr().out)["candidates"]
    assert cands and all(isinstance(c["prior"], float) for c in cands)
    assert [c["score"] for c in cands] == sorted((c["score"] for c in cands), reverse=True)
    assert main([*base, "--lm-weight", "-1"]) == 2
    assert "lm_weight" in capsys.readouterr().err
    assert main([*base, "--pair-weight", "9"]) == 2
    assert "pair_weight" in capsys.readouterr().err
