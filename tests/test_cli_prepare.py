"""`duilian prepare`, run as a user runs it (duilian.cli.main): the 240-pair fixture gives a loadable
dataset, other layouts and a separate val corpus work, and bad input exits 2 with the reason."""

import json
from pathlib import Path

from duilian import corpus
from duilian.cli import main
from duilian.dataset import TokenizedSplit, read_meta, read_tokenizer
from duilian.text import PUNCTUATION, normalize
from duilian.tokenizer import MARKERS, SPECIALS, default_tokenizer

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
    assert main(["prepare", str(FIXTURE), "--out", str(out), "--val-fraction", "0.05", "--seed", "3",
                 "--min-count", "1"]) == 0
    printed = capsys.readouterr().out
    assert "punctuation_mismatch" in printed and "e.g. line" in printed
    meta = read_meta(out)
    train, val = TokenizedSplit.open(out, "train"), TokenizedSplit.open(out, "val")
    assert len(train) == meta["splits"]["train"]["pairs"] and len(val) == meta["splits"]["val"]["pairs"] >= 12
    assert len(train) + len(val) == meta["info"]["sources"][0]["kept"]
    assert meta["info"]["sources"][0]["rejected"][corpus.REJECT_PUNCTUATION] == 5
    tok = read_tokenizer(out)
    line = train[0]
    assert line[0] == tok.cls_id and line[-1] == tok.sep_id and int(train.lengths.max()) <= 64
    upper, lower = tok.decode(line[1:-1]).split("-")
    assert (upper, lower) in {(normalize(u), normalize(l)) for u, l in _fixture_pairs()}
    json.dumps(meta)  # the summary is plain JSON


def test_corpus_vocabulary_is_the_training_split_s_characters(tmp_path, capsys):
    """--vocab corpus (the default): vocab.txt holds the special tokens, '-', every couplet mark and exactly
    the characters of the training split seen at least --min-count times, most frequent first; rarer ones
    and validation-only ones are [UNK] in the arrays. --vocab bert keeps the seed's vocabulary."""
    out = tmp_path / "data"
    assert main(["prepare", str(FIXTURE), "--out", str(out), "--val-fraction", "0.05", "--min-count", "2"]) == 0
    assert "vocabulary:" in capsys.readouterr().out
    tok, meta = read_tokenizer(out), read_meta(out)
    train, val = TokenizedSplit.open(out, "train"), TokenizedSplit.open(out, "val")
    assert tok.tokens[:6] == (*SPECIALS, "-") and PUNCTUATION <= set(tok.tokens)
    assert meta["vocab_size"] == len(tok) == meta["info"]["vocab"]["size"] < 21128 // 4
    from collections import Counter

    train_chars = Counter(ch for i in range(len(train)) for ch in tok.decode(train[i][1:-1]) if ch != "-")
    kept = [t for t in tok.tokens[6:] if t not in PUNCTUATION and t not in MARKERS]
    assert set(MARKERS) <= set(tok.tokens[6:])  # [REV] and [KW] ride along, whether used or not
    counts = Counter()
    for i in range(len(train)):
        counts.update(int(t) for t in train[i])
    assert all(counts[tok.id(ch)] >= 2 for ch in kept)  # every kept character is seen twice or more
    assert [counts[tok.id(ch)] for ch in kept] == sorted((counts[tok.id(ch)] for ch in kept), reverse=True)
    assert counts[tok.unk_id] == meta["info"]["vocab"]["unk_train"] > 0  # the once-seen ones became [UNK]
    assert "[UNK]" not in train_chars or counts[tok.unk_id] > 0
    val_unk = sum(int((val[i] == tok.unk_id).sum()) for i in range(len(val)))
    assert val_unk == meta["info"]["vocab"]["unk_val"]
    # the seed's vocabulary, as before
    bert = tmp_path / "bert"
    assert main(["prepare", str(FIXTURE), "--out", str(bert), "--vocab", "bert"]) == 0
    assert read_tokenizer(bert) == default_tokenizer() and read_meta(bert)["vocab_size"] == 21128


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
    assert meta["info"]["sources"][0]["format"] == "tsv" and meta["info"]["val_corpus"]["format"] == "uer"
    assert meta["splits"]["val"]["pairs"] == meta["info"]["val_corpus"]["kept"] > 0
    capsys.readouterr()
    bad = _write(tmp_path / "bad.tsv", ["丹枫\t黄", "hello\tworld"])
    assert main(["prepare", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no training pairs" in err and "length_mismatch" in err
    # --format applies to --val too: a uer file read as tsv keeps nothing, which is an error
    assert main(["prepare", str(tsv), "--format", "tsv", "--val", str(uer), "--out", str(tmp_path / "o")]) == 2
    assert "no validation pairs" in capsys.readouterr().err
