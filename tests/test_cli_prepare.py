"""`duilian prepare`, run as a user runs it (duilian.cli.main): the 240-pair fixture gives a loadable
dataset, other layouts and a separate val corpus work, and bad input exits 2 with the reason."""

import json
from pathlib import Path

from duilian import corpus
from duilian.cli import main
from duilian.dataset import TokenizedSplit, read_meta
from duilian.text import normalize
from duilian.tokenizer import default_tokenizer

FIXTURE = Path(__file__).parent / "fixtures" / "couplets"


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _fixture_pairs() -> list[tuple[str, str]]:
    uppers = (FIXTURE / "in.txt").read_text(encoding="utf-8").splitlines()
    lowers = (FIXTURE / "out.txt").read_text(encoding="utf-8").splitlines()
    return list(zip(uppers, lowers))


def test_cli_prepare_writes_a_loadable_dataset(tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["prepare", str(FIXTURE), "--out", str(out), "--val-fraction", "0.05", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert "punctuation_mismatch" in printed and "e.g. line" in printed
    meta = read_meta(out)
    train, val = TokenizedSplit.open(out, "train"), TokenizedSplit.open(out, "val")
    assert len(train) == meta["splits"]["train"]["pairs"] and len(val) == meta["splits"]["val"]["pairs"] >= 12
    assert len(train) + len(val) == meta["info"]["train_corpus"]["kept"]
    assert meta["info"]["train_corpus"]["rejected"][corpus.REJECT_PUNCTUATION] == 5
    tok = default_tokenizer()
    line = train[0]
    assert line[0] == tok.cls_id and line[-1] == tok.sep_id and int(train.lengths.max()) <= 64
    upper, lower = tok.decode(line[1:-1]).split("-")
    assert (upper, lower) in {(normalize(u), normalize(l)) for u, l in _fixture_pairs()}
    json.dumps(meta)  # the summary is plain JSON


def test_cli_prepare_errors_exit_2(tmp_path, capsys):
    assert main(["prepare", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "nope" in capsys.readouterr().err
    _write(tmp_path / "in.txt", ["丹 枫", "江 冷"])
    _write(tmp_path / "out.txt", ["黄 叶"])
    assert main(["prepare", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "has 2 lines" in capsys.readouterr().err
    assert main(["prepare", str(FIXTURE), "--out", str(tmp_path / "o"), "--val-fraction", "1.5"]) == 2
    broken = tmp_path / "b"
    broken.mkdir()
    (broken / "in.txt.xz").write_bytes(b"not xz")
    (broken / "out.txt.xz").write_bytes(b"not xz")
    assert main(["prepare", str(broken), "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


def test_cli_prepare_tsv_with_separate_val_and_an_all_bad_corpus(tmp_path, capsys):
    pairs = _fixture_pairs()
    tsv = _write(tmp_path / "train.txt", [f"{u}\t{l}" for u, l in pairs[20:]])
    uer = _write(tmp_path / "val.txt", [f"{u}-{l}" for u, l in pairs[:20]])
    out = tmp_path / "data"
    assert main(["prepare", str(tsv), "--val", str(uer), "--out", str(out), "--processes", "2"]) == 0
    meta = read_meta(out)
    assert meta["info"]["train_corpus"]["format"] == "tsv" and meta["info"]["val_corpus"]["format"] == "uer"
    assert meta["splits"]["val"]["pairs"] == meta["info"]["val_corpus"]["kept"] > 0
    capsys.readouterr()
    bad = _write(tmp_path / "bad.tsv", ["丹枫\t黄", "hello\tworld"])
    assert main(["prepare", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no training pairs" in err and "length_mismatch" in err
    # --format applies to --val too: a uer file read as tsv keeps nothing, which is an error
    assert main(["prepare", str(tsv), "--format", "tsv", "--val", str(uer), "--out", str(tmp_path / "o")]) == 2
    assert "no validation pairs" in capsys.readouterr().err
