"""duilian.corpus: reading the three layouts, every reject reason, duplicates, the validation split,
and one process == many, byte for byte. The CLI is tested in test_cli_prepare.py."""

import gzip
import lzma
from pathlib import Path

import pytest

from duilian import corpus
from duilian.corpus import (
    REASONS,
    CorpusError,
    PrepareConfig,
    clean_corpus,
    clean_pair,
    prepare,
    read_pairs,
    resolve_source,
    split_validation,
)
from duilian.dataset import read_meta
from duilian.text import normalize

FIXTURE = Path(__file__).parent / "fixtures" / "couplets"
NOT_IN_VOCAB = "丂"  # a CJK ideograph the BERT vocabulary lacks

# (上联, 下联, the reason clean_pair gives, or None to keep); one line per check, in REASONS order
CASES = [
    ("", "黄叶声从天", corpus.REJECT_EMPTY),
    ("丹 枫 江 冷", "   ", corpus.REJECT_EMPTY),
    ("丹枫abc", "黄叶声从天", corpus.REJECT_CHARACTERS),
    ("丹枫😀江冷", "黄叶声从天", corpus.REJECT_CHARACTERS),
    ("丹枫江冷〇", "黄叶声从天", corpus.REJECT_CHARACTERS),  # 〇 is not Han to text.is_han (nor to clean_upper)
    (f"丹枫江{NOT_IN_VOCAB}", "黄叶声从", corpus.REJECT_VOCAB),
    ("丹枫江冷", "黄叶声", corpus.REJECT_LENGTH),
    ("丹枫，江冷", "黄叶声从天", corpus.REJECT_PUNCTUATION),  # a mark on one side only
    ("丹枫？江冷", "黄叶，声从", corpus.REJECT_PUNCTUATION),  # not the same mark
    ("丹枫，江冷", "黄叶声，从", corpus.REJECT_PUNCTUATION),  # not the same position
    ("，丹枫", "，黄叶", corpus.REJECT_PLACEMENT),
    ("丹枫？！江冷", "黄叶？！声从", corpus.REJECT_PLACEMENT),
    ("丹" * 31, "枫" * 31, corpus.REJECT_TOO_LONG),  # 2*31+3 = 65 tokens > 64
    ("丹" * 30, "枫" * 30, None),  # 63 tokens
    ("丹 枫 江 冷 , 人 初 去 ", "黄 叶 声 从 , 天 外 来 ", None),  # ASCII comma -> ，
    ("\uf900丹", "黄叶", None),  # a compatibility ideograph, NFC -> 豈
]


@pytest.mark.parametrize("upper, lower, reason", CASES)
def test_clean_pair_reasons(upper, lower, reason):
    pair, got = clean_pair(upper, lower, seq_len=64)
    assert got == reason
    if reason is None:
        assert pair == (normalize(upper), normalize(lower))  # the fast path agrees with text.normalize
    else:
        assert pair is None


def test_seq_len_boundary():
    assert clean_pair("丹枫江", "黄叶声", seq_len=9)[1] is None  # [CLS] 3 - 3 [SEP] = 9 tokens
    assert clean_pair("丹枫江", "黄叶声", seq_len=8)[1] == corpus.REJECT_TOO_LONG


def test_kept_pairs_equal_text_normalize_on_the_fixture():
    for upper, lower in read_pairs(resolve_source([str(FIXTURE)])):
        pair, reason = clean_pair(upper, lower)
        if pair is not None:
            assert pair == (normalize(upper), normalize(lower))


def _write(path: Path, lines: list[str], opener=open) -> Path:
    with opener(path, "wt", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
    return path


def _fixture_pairs() -> list[tuple[str, str]]:
    uppers = (FIXTURE / "in.txt").read_text(encoding="utf-8").splitlines()
    lowers = (FIXTURE / "out.txt").read_text(encoding="utf-8").splitlines()
    return list(zip(uppers, lowers))


def test_every_reason_is_counted_with_an_example(tmp_path):
    bad = [f"{u}\t{l}" for u, l, reason in CASES]
    lines = ["丹枫江冷人初去\t黄叶声从天外来", "no tab here", *bad, "a\tb\tc"]
    pairs, stats = clean_corpus(resolve_source([str(_write(tmp_path / "c.tsv", lines))]), seq_len=64)
    expected = {r: sum(1 for *_, reason in CASES if reason == r) for r in REASONS}
    expected[corpus.REJECT_MALFORMED] = 2
    assert stats.rejected == expected
    assert stats.lines == len(lines)
    assert stats.kept == len(pairs) == 1 + sum(1 for *_, r in CASES if r is None)
    # the example of each reason is its first line (1-based)
    assert stats.examples[corpus.REJECT_MALFORMED] == {"line": 2, "text": "no tab here"}
    assert stats.examples[corpus.REJECT_EMPTY]["line"] == 3
    assert set(stats.examples) == set(REASONS)


def test_bad_bytes_are_a_rejected_line_not_a_crash(tmp_path):
    path = tmp_path / "c.tsv"
    path.write_bytes("丹枫\t黄叶\n".encode() + b"\xff\xfe\t\xff\xfe\n" + "江冷\t人去\n".encode())
    pairs, stats = clean_corpus(resolve_source([str(path)]), seq_len=64)
    assert pairs == [("丹枫", "黄叶"), ("江冷", "人去")]
    assert stats.rejected[corpus.REJECT_CHARACTERS] == 1 and stats.examples[corpus.REJECT_CHARACTERS]["line"] == 2


def test_compressed_files_and_directories_read_like_plain(tmp_path):
    plain, _ = clean_corpus(resolve_source([str(FIXTURE)]), seq_len=64)
    pairs = _fixture_pairs()
    for suffix, opener in ((".xz", lzma.open), (".gz", gzip.open)):
        d = tmp_path / suffix[1:]
        d.mkdir()
        _write(d / f"in.txt{suffix}", [u for u, _ in pairs], opener)
        _write(d / f"out.txt{suffix}", [l for _, l in pairs], opener)
        source = resolve_source([str(d)])
        assert source.format == "parallel" and source.paths[0].name == f"in.txt{suffix}"
        assert clean_corpus(source, seq_len=64)[0] == plain
        # two paths work too, and may mix compressed and plain
        assert clean_corpus(resolve_source([str(d / f"in.txt{suffix}"), str(FIXTURE / "out.txt")]), 64)[0] == plain


def test_tsv_and_uer_read_like_parallel(tmp_path):
    plain, _ = clean_corpus(resolve_source([str(FIXTURE)]), seq_len=64)
    pairs = _fixture_pairs()
    tsv = _write(tmp_path / "c.tsv", [f"{u}\t{l}" for u, l in pairs])
    uer = _write(tmp_path / "c.txt.gz", [f"{u}-{l}" for u, l in pairs], gzip.open)
    assert resolve_source([str(tsv)]).format == "tsv"
    assert resolve_source([str(uer)]).format == "uer"
    assert clean_corpus(resolve_source([str(tsv)]), 64)[0] == plain
    assert clean_corpus(resolve_source([str(uer)]), 64)[0] == plain
    # a uer line needs exactly one '-'
    _, stats = clean_corpus(resolve_source([str(_write(tmp_path / "u.txt", ["丹枫-黄叶", "丹-枫-黄"]))]), 64)
    assert stats.kept == 1 and stats.rejected[corpus.REJECT_MALFORMED] == 1


def test_line_count_mismatch_is_an_error(tmp_path):
    _write(tmp_path / "in.txt", ["丹 枫", "江 冷", "人 去"])
    _write(tmp_path / "out.txt", ["黄 叶", "声 从"])
    with pytest.raises(CorpusError, match=r"has 3 lines but .* has 2"):
        clean_corpus(resolve_source([str(tmp_path)]), 64)


def test_missing_and_ambiguous_inputs(tmp_path):
    with pytest.raises(FileNotFoundError):
        resolve_source([str(tmp_path / "nope")])
    with pytest.raises(CorpusError, match="in.txt"):
        resolve_source([str(tmp_path)])  # an empty directory
    with pytest.raises(CorpusError, match="both"):
        resolve_source([str(FIXTURE / "in.txt")])
    with pytest.raises(CorpusError, match="--format"):
        resolve_source([str(_write(tmp_path / "c.txt", ["丹枫黄叶"]))])


def test_duplicates_are_removed_keeping_the_first(tmp_path):
    pairs = _fixture_pairs()
    lines = [f"{u}\t{l}" for u, l in pairs] + [f"{u.replace(' ', '')}\t{l}" for u, l in pairs]
    kept, stats = clean_corpus(resolve_source([str(_write(tmp_path / "c.tsv", lines))]), 64)
    once, once_stats = clean_corpus(resolve_source([str(FIXTURE)]), 64)
    assert kept == once
    assert stats.duplicates == once_stats.kept
    assert stats.examples["duplicate"]["line"] == len(pairs) + 1
    assert stats.examples["duplicate"]["first_line"] == 1


def test_validation_split_is_deterministic_and_groups_uppers():
    pairs = [(f"上{i % 300}", f"下{i}") for i in range(1000)]  # each 上联 has 3-4 下联
    train, val = split_validation(pairs, 0.05, seed=1)
    assert (train, val) == split_validation(pairs, 0.05, seed=1)
    assert sorted(train + val) == sorted(pairs)
    assert train == [p for p in pairs if p in set(train)]  # corpus order kept
    assert 50 <= len(val) < 60
    assert not {u for u, _ in train} & {u for u, _ in val}
    assert split_validation(pairs, 0.05, seed=2)[1] != val
    # the split depends on the pairs, not on their order
    rev_train, rev_val = split_validation(pairs[::-1], 0.05, seed=1)
    assert set(rev_val) == set(val)
    assert split_validation(pairs, 0.0, seed=1) == (pairs, [])
    assert len(split_validation(pairs[:10], 0.01, seed=1)[1]) >= 1


def _dataset_bytes(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_many_processes_write_the_same_bytes_as_one(tmp_path, monkeypatch):
    # small chunks, so that rejects, duplicates and the split cross chunk boundaries
    monkeypatch.setattr(corpus, "CHUNK_LINES", 37)
    pairs = _fixture_pairs()
    lines = [f"{u}\t{l}" for u, l in pairs] + [f"{u}\t{l}" for u, l, _ in CASES] + [f"{u}\t{l}" for u, l in pairs[::3]]
    tsv = _write(tmp_path / "c.tsv", lines)
    summaries = {}
    for n in (1, 3):
        summaries[n] = prepare(PrepareConfig([str(tsv)], str(tmp_path / f"p{n}"), processes=n, val_fraction=0.05))
    assert _dataset_bytes(tmp_path / "p1") == _dataset_bytes(tmp_path / "p3")
    assert summaries[1].to_dict() == summaries[3].to_dict()
    repeated_good = sum(clean_pair(u, l)[0] is not None for u, l in pairs[::3])  # a repeated reject is a reject
    assert summaries[1].sources[0].duplicates == repeated_good > 0


def test_separate_val_corpus_removes_its_uppers_from_train(tmp_path):
    pairs = _fixture_pairs()
    val_dir = tmp_path / "val"
    val_dir.mkdir()
    _write(val_dir / "in.txt", [u for u, _ in pairs[:10]])
    _write(val_dir / "out.txt", ["天 " * len(u.split()) for u, _ in pairs[:10]])  # other 下联, same 上联
    summary = prepare(PrepareConfig([str(FIXTURE)], str(tmp_path / "out"), val=[str(val_dir)]))
    info = read_meta(tmp_path / "out")["info"]
    assert info["val_split"] == "separate corpus"
    val_kept = summary.val_corpus.kept
    assert summary.val_pairs == val_kept > 0
    assert summary.sources[0].overlap == val_kept  # every kept val 上联 was also a training 上联
    assert summary.train_pairs == summary.sources[0].kept - summary.sources[0].overlap



def test_several_sources_are_named_filtered_and_split_each(tmp_path):
    """Two sources: each is counted under its name and licence, loses its held-out pairs (上联 or 下联 listed,
    in either script) and the pairs an earlier source holds, and gets its own validation split; the dataset's
    `val` is their union, and both directions double the training lines, forward first."""
    import hashlib
    import json

    from duilian.dataset import TokenizedSplit, read_tokenizer
    from duilian.heldout import heldout_key

    pairs = _fixture_pairs()
    second = [("兩岸曉煙楊柳綠", "一園春雨杏花紅"), ("人間清暑殿", "天上廣寒宮"), ("三尺劍", "六鈞弓")] + \
             [(u.replace(" ", ""), l.replace(" ", "")) for u, l in pairs[:4]]  # 4 pairs the first source holds
    classical = tmp_path / "classical"
    classical.mkdir()
    _write(classical / "train.tsv", [f"{u}\t{l}" for u, l in second])
    (classical / "source.json").write_text(json.dumps({"licence": "MIT"}), encoding="utf-8")
    held = tmp_path / "heldout.sha256"
    held.write_text(heldout_key("天上广寒宫") + "\n" + heldout_key(normalize(pairs[7][0])) + "\n", encoding="utf-8")

    summary = prepare(PrepareConfig([f"modern={FIXTURE}", str(classical / "train.tsv")], str(tmp_path / "d"),
                                    val_fraction=0.1, heldout=str(held), directions="both",
                                    licences={"modern": "AGPL-3.0"}, min_count=1))
    modern, cls = summary.sources
    assert (modern.name, modern.licence, cls.name, cls.licence) == ("modern", "AGPL-3.0", "train", "MIT")
    assert modern.heldout == 1 and cls.heldout == 1  # pairs[7]; 人間清暑殿/天上廣寒宮 (traditional, listed simplified)
    assert cls.overlap == 4 and cls.kept == 7 and cls.train_pairs + cls.val_pairs == 7 - 1 - 4
    meta = read_meta(tmp_path / "d")
    assert meta["info"]["heldout"]["sha256"] == hashlib.sha256(held.read_bytes()).hexdigest()
    assert set(meta["splits"]) == {"train", "val", "val.modern", "val.train"}
    assert meta["splits"]["val"]["pairs"] == (meta["splits"]["val.modern"]["pairs"]
                                              + meta["splits"]["val.train"]["pairs"])
    val_text = (tmp_path / "d" / "val.train.tsv").read_text(encoding="utf-8").splitlines()
    assert len(val_text) == meta["splits"]["val.train"]["pairs"] and all(line.count("\t") == 1 for line in val_text)
    n = summary.train_pairs
    assert summary.lines["forward"] == summary.lines["backward"] == n and meta["splits"]["train"]["pairs"] == 2 * n
    tok, train = read_tokenizer(tmp_path / "d"), TokenizedSplit.open(tmp_path / "d", "train")
    first, back = tok.decode(train[0][1:-1]), tok.decode(train[n][1:-1])
    assert back == "[REV]" + first.split("-")[1] + "-" + first.split("-")[0]
    with pytest.raises(CorpusError, match="both named"):
        prepare(PrepareConfig([f"a={FIXTURE}", f"a={classical / 'train.tsv'}"], str(tmp_path / "e")))


def test_keyword_lines_join_the_training_split(tmp_path):
    summary = prepare(PrepareConfig([str(FIXTURE)], str(tmp_path / "d"), keywords=0.5, min_count=1))
    from duilian.dataset import TokenizedSplit, read_tokenizer

    tok, train = read_tokenizer(tmp_path / "d"), TokenizedSplit.open(tmp_path / "d", "train")
    k = summary.lines["keywords"]
    assert 0.3 * summary.train_pairs < k < 0.7 * summary.train_pairs and len(train) == summary.train_pairs + k
    line = tok.decode(train[len(train) - 1])
    assert line.startswith("[CLS]") and "[KW]" in line and line.endswith("[SEP]")
    assert 1 <= summary.lines["keyword_stats"]["keywords_per_line"] <= 3
