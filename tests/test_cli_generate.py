"""`duilian generate` and `duilian acrostic`, run the way a user runs them."""

import json

import pytest

from duilian import api
from duilian.cli import main
from duilian.model import build_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-model")
    build_model("tiny", dropout=0.0, seed=0).save_pretrained(path)
    return str(path)


def test_generate_text(model_dir, capsys):
    assert main(["generate", "丹枫江冷人初去", "--model", model_dir, "-n", "3", "--seed", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(len(line.split("\t")[0]) == 7 for line in lines)


def test_generate_json(model_dir, capsys):
    args = ["generate", "花开花落，春去春来", "--model", model_dir, "-n", "2", "--json", "--method", "beam"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["upper"] == "花开花落，春去春来" and len(out["candidates"]) == 2
    assert all(c["valid"] and c["text"][4] == "，" for c in out["candidates"])


def test_generate_seed_is_reproducible(model_dir, capsys):
    args = ["generate", "海阔凭鱼跃", "--model", model_dir, "--seed", "7", "--temperature", "0.8", "--top-k", "50"]
    main(args)
    first = capsys.readouterr().out
    main(args)
    assert capsys.readouterr().out == first


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
        assert all(len(r["candidates"]) == 2 for r in records)
    else:
        assert [len(r.split("\t")) for r in rows] == [3, 3] and rows[1].startswith("海阔凭鱼跃\t")


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


def test_acrostic(model_dir, capsys):
    assert main(["acrostic", "春福", "--length", "5", "-n", "2", "--model", model_dir, "--json", "--seed", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["couplets"]) == 2
    for x in out["couplets"]:
        assert x["upper"][0] == "春" and x["lower"][0] == "福" and len(x["lower"]) == 5 and x["valid"]


def test_generate_int8(model_dir, capsys):
    from duilian.decode import check_int8_engine

    try:
        check_int8_engine()
    except ValueError as e:
        pytest.skip(f"no int8 engine in this torch build: {e}")
    assert main(["generate", "花开花落，春去春来", "--model", model_dir, "-n", "3", "--json", "--int8", "--seed", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["candidates"]) == 3
    assert all(c["valid"] and len(c["text"]) == 9 for c in out["candidates"])
