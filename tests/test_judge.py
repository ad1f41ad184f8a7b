"""benchmarks/judge.py: the blind items never say which system wrote a line, and the tally maps the judge's
"1"/"2" back to the systems through the key."""

import importlib.util
import json
from pathlib import Path

spec = importlib.util.spec_from_file_location("judge", Path(__file__).parents[1] / "benchmarks" / "judge.py")
judge = importlib.util.module_from_spec(spec)
spec.loader.exec_module(judge)


def test_make_hides_the_systems_and_score_maps_answers_back(tmp_path):
    rows = [("海阔凭鱼跃", "天高任鸟飞", "山高任鸟飞"), ("春风送暖", "瑞雪迎春", "瑞雪迎春"),
            ("明月松间照", "清泉石上流", "白云天外飞"), ("丹枫江冷", "黄叶声从", "白雪山寒")]
    (tmp_path / "lines.tsv").write_text("upper\thuman\tours\n" + "".join("\t".join(r) + "\n" for r in rows),
                                        encoding="utf-8")
    judge.main(["make", str(tmp_path / "lines.tsv"), "--a", "ours", "--b", "human", "--out", str(tmp_path / "j")])
    items = (tmp_path / "j" / "items.md").read_text(encoding="utf-8")
    key = json.loads((tmp_path / "j" / "key.json").read_text(encoding="utf-8"))
    assert "human" not in items and "ours" not in items and "对仗" in items  # the instructions, no names
    assert key["identical"] == 1 and len(key["items"]) == 3  # 瑞雪迎春 twice: nothing to judge
    orders = {item["1"] for item in key["items"]}
    # The judge prefers the human line on items 1 and 2, calls item 3 equal.
    answers = []
    for i, item in enumerate(key["items"], start=1):
        human_slot = 1 if item["1"] == "human" else 2
        better = 0 if i == 3 else human_slot
        answers.append({"id": i, "better": better, "score_1": 4 if human_slot == 1 else 2,
                        "score_2": 2 if human_slot == 1 else 4, "why": ""})
    (tmp_path / "j" / "answers.jsonl").write_text("```\n" + "\n".join(json.dumps(a) for a in answers) + "\n```\n")
    got = judge.tally(key, judge.read_answers(tmp_path / "j" / "answers.jsonl", 3))
    assert got["items"] == 4 and got["ours"]["preferred"] == 0 and got["human"]["preferred"] == 0.5
    assert got["ours"]["as_good_or_better"] == 0.5  # the identical pair and the called tie
    assert got["ours"]["mean_score"] == 2 and got["human"]["mean_score"] == 4
    assert orders <= {"ours", "human"}


def test_one_judge_for_several_systems_keeps_each_systems_tally_apart(tmp_path):
    """make --a modelF --a modelE --b human: one file, the items of both systems interleaved; score tallies each
    system over its own items only, and its identical pairs apart."""
    rows = [("海阔凭鱼跃", "天高任鸟飞", "山高任鸟飞", "天高任鸟飞"),
            ("明月松间照", "清泉石上流", "白云天外飞", "清风竹里来"),
            ("丹枫江冷", "黄叶声从", "白雪山寒", "青山人远")]
    (tmp_path / "lines.tsv").write_text("upper\thuman\tmodelF\tmodelE\n" + "".join("\t".join(r) + "\n" for r in rows),
                                        encoding="utf-8")
    judge.main(["make", str(tmp_path / "lines.tsv"), "--a", "modelF", "--a", "modelE", "--b", "human", "--seed", "3",
                "--out", str(tmp_path / "j")])
    key = json.loads((tmp_path / "j" / "key.json").read_text(encoding="utf-8"))
    items = (tmp_path / "j" / "items.md").read_text(encoding="utf-8")
    assert key["a"] == ["modelF", "modelE"] and key["identical"] == {"modelF": 0, "modelE": 1}  # modelE = human once
    assert len(key["items"]) == 5 and items.count("上联：") == 5 and "model" not in items
    assert sorted(item["a"] for item in key["items"]) == ["modelE", "modelE", "modelF", "modelF", "modelF"]
    # The judge always prefers the human line, scoring it 4 and ours 2.
    answers = []
    for i, item in enumerate(key["items"], start=1):
        human_slot = 1 if item["1"] == "human" else 2
        answers.append({"id": i, "better": human_slot, "score_1": 4 if human_slot == 1 else 2,
                        "score_2": 2 if human_slot == 1 else 4, "why": ""})
    (tmp_path / "j" / "answers.jsonl").write_text("\n".join(json.dumps(a) for a in answers))
    judge.main(["score", str(tmp_path / "j")])
    got = json.loads((tmp_path / "j" / "score.json").read_text(encoding="utf-8"))
    assert got["modelF"]["modelF"]["preferred"] == 0 and got["modelF"]["items"] == 3 and got["modelF"]["answered"] == 3
    assert got["modelE"]["items"] == 3 and got["modelE"]["answered"] == 2
    assert got["modelE"]["modelE"]["as_good_or_better"] == 1 / 3  # only its identical pair
    assert got["modelE"]["modelE"]["mean_score"] == 2 and got["modelE"]["human"]["mean_score"] == 4
