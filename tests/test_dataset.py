import numpy as np
import pytest

from duilian.dataset import TokenizedSplit, encode_pairs, read_meta, write_dataset
from duilian.tokenizer import UnknownCharacterError, default_tokenizer

PAIRS = [("丹枫江冷人初去", "黄叶声从天外来"), ("花开，春去", "月落，秋来"), ("山高", "水长")]


def test_bulk_encoding_equals_encode_pair():
    tok = default_tokenizer()
    tokens, offsets = encode_pairs(tok, PAIRS)
    assert tokens.dtype == np.uint16 and offsets[-1] == len(tokens)
    for i, (u, l) in enumerate(PAIRS):
        assert tokens[offsets[i] : offsets[i + 1]].tolist() == tok.encode_pair(u, l)


def test_unknown_characters_are_named():
    with pytest.raises(UnknownCharacterError, match="😀"):
        encode_pairs(default_tokenizer(), [("山高", "水😀")])


def test_written_splits_read_back(tmp_path):
    tok = default_tokenizer()
    meta = write_dataset(tmp_path, {"train": PAIRS, "val": PAIRS[:1]}, tok, seq_len=64)
    assert read_meta(tmp_path) == meta
    assert meta["splits"]["train"] == {"pairs": 3, "tokens": sum(len(u) + len(l) + 3 for u, l in PAIRS)}
    split = TokenizedSplit.open(tmp_path, "train")
    assert len(split) == 3 and split.lengths.tolist() == [17, 13, 7]
    assert split[1].tolist() == tok.encode_pair(*PAIRS[1])


def test_lines_longer_than_seq_len_are_refused(tmp_path):
    with pytest.raises(ValueError, match="exceed seq_len"):
        write_dataset(tmp_path, {"train": PAIRS}, default_tokenizer(), seq_len=16)
