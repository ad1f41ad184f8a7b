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


def test_marker_lines_encode_in_bulk_as_encode_pair_does():
    """Backward and keyword lines (MARKER_CHARS in the head) take the fast path and give encode_pair's ids, in the
    BERT vocabulary (its unused slots) and in a corpus vocabulary (the markers themselves)."""
    from collections import Counter

    from duilian.tokenizer import KEYWORD, MARKER_CHARS, REVERSE, Tokenizer

    rev, kw = MARKER_CHARS[REVERSE], MARKER_CHARS[KEYWORD]
    lines = [(rev + "黄叶声从天外来", "丹枫江冷人初去"), ("春" + kw + "平安" + kw + "山高", "水长"), *PAIRS]
    corpus_tok = Tokenizer.for_corpus(Counter("".join(u + l for u, l in lines)), 1, "，")
    for tok in (default_tokenizer(), corpus_tok):
        tokens, offsets = encode_pairs(tok, lines)
        for i, (u, l) in enumerate(lines):
            assert tokens[offsets[i]: offsets[i + 1]].tolist() == tok.encode_pair(u, l)
        assert tokens[offsets[0] + 1] == tok.reverse_id != tok.keyword_id
        assert tok.decode(tokens[offsets[1]: offsets[2]]) == "[CLS]春{0}平安{0}山高-水长[SEP]".format(
            "[KW]" if tok is corpus_tok else "[unused2]")


def test_collate_puts_no_loss_on_keywords_and_markers():
    """Everything up to a line's last marker is prompt: the keywords and the markers carry no loss; the 上联, '-',
    the 下联 and [SEP] do, as in a seed line."""
    from collections import Counter

    from duilian.dataset import IGNORE_INDEX, collate
    from duilian.tokenizer import KEYWORD, MARKER_CHARS, REVERSE, Tokenizer

    kw, rev = MARKER_CHARS[KEYWORD], MARKER_CHARS[REVERSE]
    lines = [("春" + kw + "平安" + kw + "山高", "水长"), (rev + "水长", "山高"), ("山高", "水长")]
    tok = Tokenizer.for_corpus(Counter("春平安山高水长"), 1, "，")
    tokens, offsets = encode_pairs(tok, lines)
    split = TokenizedSplit(tokens, offsets)
    b = collate(split, np.arange(3), None, cls_id=tok.cls_id, sep_id=tok.sep_id, separator_id=tok.separator_id,
                pad_id=tok.pad_id, marker_ids=(tok.reverse_id, tok.keyword_id))
    scored = [tok.decode(b.targets[r][b.targets[r] != IGNORE_INDEX]) for r in range(3)]
    assert scored == ["山高-水长[SEP]", "水长-山高[SEP]", "山高-水长[SEP]"]
    plain = collate(split, np.arange(3), None, cls_id=tok.cls_id, sep_id=tok.sep_id, separator_id=tok.separator_id,
                    pad_id=tok.pad_id)
    # without markers: all of it
    assert (plain.targets[2] == b.targets[2]).all() and (plain.targets[0] != IGNORE_INDEX).sum() == 11
