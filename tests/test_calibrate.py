"""calibrate.py: the penalty of a character the model over-writes, the table a model carries in config.json, and
what the API and `duilian calibrate` do with it."""

import json
import math
import random
import shutil
from collections import Counter

import pytest

import duilian
from duilian import api
from duilian.calibrate import CalibrationConfig, calibrate, han_counts, penalties, write_calibration
from duilian.cli import main
from duilian.model import build_model

PAIRS = [("丹枫江冷人初去", "绿柳堤新燕又来"), ("花开花落，春去春来", "月缺月圆，夜长夜短"),
         ("海阔凭鱼跃", "天高任鸟飞"), ("春回大地", "福满人间"), ("一帆风顺", "万事如意"), ("山清水秀", "人杰地灵")] * 4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-model")
    build_model("tiny", dropout=0.0, seed=0).save_pretrained(path)
    return path


def test_han_counts_leave_punctuation_out():
    assert han_counts(["春去，春来！", "春"]) == Counter({"春": 3, "去": 1, "来": 1})


def test_penalty_is_the_log_ratio_of_shares_for_over_written_characters_only():
    written = Counter({"宏": 30, "春": 20, "风": 10, "罕": 4})  # 64 characters the model wrote
    human = Counter({"宏": 2, "春": 40, "风": 20, "罕": 0, "月": 38})  # 100 people wrote
    table = penalties(written, human, min_count=5)
    assert table["宏"] == pytest.approx(math.log(31 / 64) - math.log(3 / 100), abs=1e-3)
    assert "春" not in table and "风" not in table  # written less often than people write them: no penalty
    assert "罕" not in table  # 4 < min_count: too few to tell, however rare among people's lines
    assert "月" not in table  # never written
    assert list(table) == sorted(table, key=lambda ch: -table[ch])  # most over-written first
    with pytest.raises(ValueError, match="both"):
        penalties(Counter(), human)


def test_config_rejects_bad_values():
    for bad in ({"lines": 0}, {"min_count": 0}, {"weight": -0.1}, {"weight": 99}, {"batch_size": 0}):
        with pytest.raises(ValueError):
            CalibrationConfig(**bad)


def test_calibrate_measures_the_models_own_lines_and_is_reproducible(model_dir):
    c = duilian.load(model_dir)
    config = CalibrationConfig(lines=10, min_count=2, weight=0.4, batch_size=4)
    section = calibrate(c, PAIRS, config)
    assert section == calibrate(c, PAIRS, config)  # the same seed, the same table
    assert section["weight"] == 0.4 and section["lines"] == 10 and section["min_count"] == 2
    # every penalised character is one the model wrote at least min_count times, and over-writes
    firsts = []
    sample = random.Random(0).sample(range(len(PAIRS)), 10)
    for start in range(0, 10, 4):
        batch = [PAIRS[j][0] for j in sample[start:start + 4]]
        firsts += [x[0].text for x in c.complete_batch(batch, seed=list(range(start, start + len(batch))),
                                                       calibration_weight=0.0)]
    written, human = han_counts(firsts), han_counts(lower for _, lower in PAIRS)
    assert section["penalty"] == penalties(written, human, 2)
    assert section["penalty"] and all(written[ch] >= 2 and v > 0 for ch, v in section["penalty"].items())


def test_a_model_carries_its_table_and_the_search_pays_it(model_dir, tmp_path):
    """write_calibration puts the table in config.json; duilian.load reads it into a penalty per emittable token;
    the default options use the model's weight, and each candidate reports what the calibration took off."""
    plain = duilian.load(model_dir)
    assert plain.penalty is None and plain.calibration_weight(api.Options()) == 0.0
    assert plain.calibration_weight(api.Options(calibration_weight=1.0)) == 0.0  # no table: nothing to weigh
    first = plain.complete("丹枫江冷人初去", n=3, seed=0)
    assert all(x.calibration == 0.0 for x in first)

    shutil.copytree(model_dir, tmp_path / "m")
    costly = first[0].text[0]
    penalty = {costly: 8.0, "驅": 2.0, "海": 1.5}  # 驅: traditional, never written, so moot
    write_calibration(tmp_path / "m", {"weight": 0.5, "lines": 1, "seed": 0, "min_count": 1, "penalty": penalty})
    assert json.loads((tmp_path / "m" / "config.json").read_text())["duilian"]["calibration"]["penalty"] == penalty
    c = duilian.load(tmp_path / "m")
    tok = c.tokenizer
    assert c.penalty[int(c.vocab.to_sub[tok.id(costly)])] == 8.0
    assert c.penalty[int(c.vocab.to_sub[tok.id("海")])] == 1.5 and float(c.penalty.sum()) == 9.5
    assert c.calibration_weight(api.Options()) == 0.5
    assert c.calibration_weight(api.Options(calibration_weight=0.0)) == 0.0
    steered = c.complete("丹枫江冷人初去", n=3, seed=0)
    assert steered[0].text != first[0].text
    for x in steered:
        expected = 0.5 * sum(penalty.get(ch, 0.0) for ch in x.text if ch != "驅") / len(x.text)
        assert x.calibration == pytest.approx(expected, abs=1e-5) and x.to_dict()["calibration"] == x.calibration
    # off: the model's own lines again
    assert [x.text for x in c.complete("丹枫江冷人初去", n=3, seed=0, calibration_weight=0.0)] == \
        [x.text for x in first]
    with pytest.raises(ValueError, match="calibration_weight"):
        api.Options(calibration_weight=-1.0)


def test_cli_writes_the_table_or_only_prints_it(model_dir, tmp_path, capsys):
    shutil.copytree(model_dir, tmp_path / "m")
    corpus = tmp_path / "pairs.tsv"
    corpus.write_text("".join(f"{u}\t{l}\n" for u, l in PAIRS) + "not a pair\n", encoding="utf-8")
    args = ["calibrate", "--model", str(tmp_path / "m"), str(corpus), "--lines", "8", "--min-count", "2",
            "--batch-size", "4"]
    assert main(args + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"{len(PAIRS)} pairs (1 malformed line skipped)" in out and "over-written in 8 first candidates" in out
    assert "calibration" not in json.loads((tmp_path / "m" / "config.json").read_text()).get("duilian", {})
    assert main(args + ["--weight", "0.3"]) == 0
    section = json.loads((tmp_path / "m" / "config.json").read_text())["duilian"]["calibration"]
    assert section["weight"] == 0.3 and section["lines"] == 8
    assert main(["calibrate", "--model", str(tmp_path / "m"), str(tmp_path / "missing.tsv")]) == 2
    assert "duilian calibrate:" in capsys.readouterr().err
