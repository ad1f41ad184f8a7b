"""pairs.py: the aligned-pair counts, the value of a pair against a hand computation, the table's lookups, and what
`duilian pairs` and the API do with a table."""

import json
import math
import shutil
from collections import Counter
from pathlib import Path

import pytest

import duilian
from duilian.cli import main
from duilian.dataset import read_tokenizer
from duilian.model import build_model
from duilian.pairs import FILENAME, PairCounts, PairsConfig, PairTable, count_dataset

FIXTURE = Path(__file__).parent / "fixtures" / "couplets"


def counts_of(pairs: list[tuple[list[int], list[int]]]) -> PairCounts:
    counts = PairCounts.empty()
    for upper, lower in pairs:
        counts.add(upper, lower)
    return counts


def test_counts_align_position_by_position_and_skip_unequal_lengths():
    counts = PairCounts.empty()
    assert counts.add([1, 2, 3], [4, 5, 6]) and counts.add([1, 9, 3], [4, 9, 7])
    assert not counts.add([1, 2], [4, 5, 6])  # nothing is aligned
    assert counts.couplets == 2
    assert counts.pairs[1, 4] == 2 and counts.pairs[3, 6] == 1 and counts.pairs[3, 7] == 1
    assert (9, 9) not in counts.pairs  # the same token on both sides (punctuation) carries no signal
    assert counts.lowers == Counter({4: 2, 5: 1, 6: 1, 9: 1, 7: 1})
    assert counts.bigram_pairs[(1, 2), (4, 5)] == 1 and counts.bigram_pairs[(9, 3), (9, 7)] == 1
    assert counts.lower_bigrams[4, 5] == 1 and sum(counts.lower_bigrams.values()) == 4


def test_value_is_the_smoothed_pmi_less_its_unseen_value():
    counts = counts_of([([1, 2], [3, 4])] * 3 + [([5, 2], [3, 6])])
    table = PairTable.from_counts(counts, vocab_size=10, config=PairsConfig(min_count=1, smoothing=2.0))
    # p(3) = (c(3) + 1) / all 下联 characters = 5 / 8; c(1, 3) = 3
    one = math.log1p(3 / (2.0 * 5 / 8))
    # P(3 | 1) under add-K smoothing towards p(3), over P(3), less the same for an unseen pair (c(1, .) = 3):
    pmi = math.log(((3 + 2.0 * 5 / 8) / (3 + 2.0)) / (5 / 8))
    unseen = math.log((2.0 * 5 / 8 / (3 + 2.0)) / (5 / 8))
    assert one == pytest.approx(pmi - unseen)
    assert table.score([1], [3], bigram=0.0) == pytest.approx(one, rel=1e-6)
    # a pair people never wrote is worth nothing; the mean runs over the positions
    assert table.score([1, 2], [6, 4], bigram=0.0) == pytest.approx(math.log1p(3 / (2.0 * 4 / 8)) / 2, rel=1e-6)
    # p(3, 4) = (3 + 1) / 4 bigrams; c((1, 2), (3, 4)) = 3
    two = math.log1p(3 / (2.0 * 4 / 4))
    whole = (one + math.log1p(3 / (2.0 * 4 / 8)) + 0.5 * two) / 2
    assert table.score([1, 2], [3, 4], bigram=0.5) == pytest.approx(whole, rel=1e-6)


def test_a_specific_answer_beats_a_common_one_seen_as_often():
    # 天 (1) against 地 (2) three times; 天 against 人 (3) three times, but 人 answers everything else too.
    counts = counts_of([([1], [2])] * 3 + [([1], [3])] * 3 + [([i], [3]) for i in range(4, 40)])
    table = PairTable.from_counts(counts, vocab_size=50, config=PairsConfig(min_count=1))
    assert table.score([1], [2], 0.0) > table.score([1], [3], 0.0) > table.score([1], [4], 0.0) == 0.0


def test_min_count_drops_rare_pairs_and_lengths_must_match():
    counts = counts_of([([1, 2], [3, 4])] * 2 + [([1, 2], [5, 6])])
    table = PairTable.from_counts(counts, vocab_size=10, config=PairsConfig(min_count=2))
    assert len(table.keys) == 2 and len(table.bigram_keys) == 1
    assert table.score([1, 2], [5, 6], 1.0) == 0.0 and table.score([1, 2], [3, 4], 1.0) > 0
    assert table.score([1, 2], [3], 1.0) == 0.0 and table.score([], [], 1.0) == 0.0


def test_save_and_load_keep_the_table(tmp_path):
    counts = counts_of([([1, 2, 3], [4, 5, 6])] * 4 + [([7, 2], [8, 5])] * 2)
    table = PairTable.from_counts(counts, vocab_size=10, config=PairsConfig(min_count=1))
    table.save(tmp_path / FILENAME)
    back = PairTable.load(tmp_path / FILENAME)
    assert back.vocab_size == 10 and back.couplets == 6 and len(back) == len(table)
    for upper, lower in [([1, 2, 3], [4, 5, 6]), ([7, 2], [8, 5]), ([1, 2], [8, 5])]:
        assert back.score(upper, lower, 0.5) == pytest.approx(table.score(upper, lower, 0.5), rel=1e-3)  # fp16


def test_config_rejects_bad_values():
    for bad in [{"min_count": 0}, {"smoothing": 0.0}, {"weight": -1.0}, {"weight": 6.0}, {"bigram": -0.5}]:
        with pytest.raises(ValueError):
            PairsConfig(**bad)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The 240-couplet fixture prepared with its own vocabulary, and an untrained tiny model that reads it."""
    root = tmp_path_factory.mktemp("pairs")
    data, model = root / "data", root / "model"
    assert main(["prepare", str(FIXTURE), "--out", str(data), "--val-fraction", "0.15"]) == 0
    tokenizer = read_tokenizer(data)
    build_model("tiny", dropout=0.0, seed=0, tokenizer=tokenizer).save_pretrained(model)
    tokenizer.save(model / "vocab.txt")
    return data, model


def test_count_dataset_reads_the_training_couplets(prepared):
    data, _ = prepared
    counts, skipped = count_dataset(data)
    meta = json.loads((data / "meta.json").read_text())
    assert counts.couplets + sum(skipped.values()) == meta["splits"]["train"]["pairs"]
    assert counts.couplets > 150 and sum(counts.lowers.values()) > 5 * counts.couplets


def test_cli_writes_the_table_and_the_api_ranks_with_it(prepared, capsys):
    data, model = prepared
    assert main(["pairs", "--data", str(data), "--model", str(model), "--min-count", "1", "--weight", "2"]) == 0
    assert "couplets counted" in capsys.readouterr().out
    info = json.loads((model / "config.json").read_text())["duilian"]["pairs"]
    assert info["file"] == FILENAME and info["weight"] == 2.0 and (model / FILENAME).is_file()

    c = duilian.load(model)
    assert c.pair_table is not None and c.pair_weight(duilian.api.Options()) == 2.0
    with_pairs = c.complete("海阔凭鱼跃", n=3, seed=0)
    without = c.complete("海阔凭鱼跃", n=3, seed=0, pair_weight=0)
    assert without and all(cand.pairs is None for cand in without)
    for cand in with_pairs:
        assert cand.pairs is not None and cand.pairs >= 0 and cand.checks.valid
        upper, lower = c._ids("海阔凭鱼跃"), c._ids(cand.text)
        assert cand.pairs == pytest.approx(c.pair_table.score(upper, lower, info["bigram"]))
    # the first candidate is the best of the whole pool by score, and its score includes 2 x its pair score
    assert with_pairs[0].score == max(cand.score for cand in with_pairs)
    assert with_pairs[0].to_dict()["pairs"] == with_pairs[0].pairs


def test_cli_refuses_a_model_of_another_vocabulary(prepared, tmp_path, capsys):
    data, _ = prepared
    other = tmp_path / "bert-model"
    build_model("tiny", dropout=0.0, seed=0).save_pretrained(other)  # BERT's vocabulary, not the dataset's
    assert main(["pairs", "--data", str(data), "--model", str(other)]) == 2
    assert "vocabulary" in capsys.readouterr().err and not (other / FILENAME).exists()


def test_the_default_model_carries_a_table_that_reads_its_vocabulary():
    c = duilian.load()
    assert c.pair_table is not None and c.pair_table.vocab_size == len(c.tokenizer)
    assert c.pair_weight(duilian.api.Options()) > 0
    # 天 against 地 is among the commonest pairs people write; 天 against 鸭 is not one
    sky, earth, duck = (c.tokenizer.index[ch] for ch in "天地鸭")
    assert c.pair_table.score([sky], [earth], 0.0) > 1.0 > c.pair_table.score([sky], [duck], 0.0)


def test_a_re_export_keeps_the_table(prepared, tmp_path):
    _, model = prepared
    if not (model / FILENAME).is_file():
        assert main(["pairs", "--data", str(prepared[0]), "--model", str(model), "--min-count", "1"]) == 0
    half = tmp_path / "fp16"
    assert main(["export", "--checkpoint", str(model), "--out", str(half), "--dtype", "float16"]) == 0
    assert (half / FILENAME).read_bytes() == (model / FILENAME).read_bytes()
    assert duilian.load(half).pair_table is not None


def test_weight_zero_never_reads_the_table(prepared, tmp_path):
    """A table of another vocabulary is a clear error when the term ranks, and switching the term off still works."""
    _, model = prepared
    broken = tmp_path / "broken"
    shutil.copytree(model, broken)
    config = json.loads((broken / "config.json").read_text())
    config.setdefault("duilian", {})["pairs"] = {"file": FILENAME, "weight": 1.0, "bigram": 0.5}
    (broken / "config.json").write_text(json.dumps(config))
    PairTable.from_counts(counts_of([([1], [2])]), vocab_size=5, config=PairsConfig(min_count=1)).save(
        broken / FILENAME)
    c = duilian.load(broken)
    with pytest.raises(ValueError, match="vocabulary"):
        c.complete("海阔凭鱼跃", n=2, seed=0)
    assert all(cand.pairs is None for cand in c.complete("海阔凭鱼跃", n=2, seed=0, pair_weight=0))
