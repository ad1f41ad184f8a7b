import pytest
from transformers import BertTokenizer

from duilian.tokenizer import VOCAB_PATH, Tokenizer, UnknownCharacterError, default_tokenizer


def test_vocab_is_the_seed_vocabulary():
    tok = default_tokenizer()
    assert len(tok) == 21128
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.separator_id) == (0, 100, 101, 102, 118)
    assert tok.id("，") == 8024


def test_prompt_is_cls_chars_separator_only():
    tok = default_tokenizer()
    ids = tok.encode_prompt("丹枫江冷人初去")
    assert ids[0] == tok.cls_id and ids[-1] == tok.separator_id
    assert ids.count(tok.cls_id) == 1 and tok.sep_id not in ids
    assert len(ids) == 7 + 2


def test_ids_agree_with_bert_tokenizer(tmp_path):
    """Our char-level encoder gives BertTokenizer's ids for couplet text (the reference)."""
    (tmp_path / "vocab.txt").write_bytes(VOCAB_PATH.read_bytes())
    bert = BertTokenizer.from_pretrained(str(tmp_path))
    tok = default_tokenizer()
    line = "丹枫江冷，人初去？春来！"
    assert tok.encode_chars(line) == bert(" ".join(line), add_special_tokens=False)["input_ids"]
    pair = tok.encode_pair("丹枫江冷人初去", "黄叶声从天外来")
    ref = bert("[CLS]丹 枫 江 冷 人 初 去 - 黄 叶 声 从 天 外 来 [SEP]", add_special_tokens=False)["input_ids"]
    assert pair == ref


def test_unknown_characters_are_named():
    tok = Tokenizer(("[PAD]", "丹", "枫"))
    with pytest.raises(UnknownCharacterError, match="江"):
        tok.encode_chars("丹江枫")
