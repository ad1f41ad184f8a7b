"""classical.py: what a tiny hand-made chinese-poetry checkout gives, pair for pair and count for count.

The fixture checkout is written into tmp_path (CI has no copy of chinese-poetry): real poems for the forms
(春望, a 律诗; 劉希夷's 江南曲, a 10-line 排律; 百丈山, a 七律 ending a line with ？; 登鸛雀樓, a 绝句;
太宗's 初晴落景, an 8-line 古体), a poem with a lost character, one with unequal lines, 春望 again under
another id (duplicates), and two paragraphs of 声律启蒙: the book's first, and a hand-made one holding the
book's irregular marks and a 重字 pair that is not mirrored.
"""

import json
import runpy
from pathlib import Path

import pytest

from duilian import classical
from duilian.classical import (
    FILTER_COPY,
    FILTER_DUPLICATE,
    FILTER_HELDOUT,
    FILTER_LENGTH,
    FILTER_REPEATS,
    FILTER_TEST,
    FORM_CLAUSE,
    FORM_DUI,
    FORM_LONG,
    FORM_LUSHI,
    FORM_PAILU,
    SKIP_JUNK,
    SKIP_LINE_COUNT,
    SKIP_LINE_LENGTH,
    SKIP_MALFORMED,
    SKIP_NOT_REGULATED,
    SKIP_UNEQUAL,
    ClassicalConfig,
    Filter,
    Pair,
    Poem,
    build,
    pingshui_tone,
    poem_lines,
    poem_pairs,
    regulation,
    shenglvqimeng_pairs,
    split,
    unit_hash,
)
from duilian.heldout import heldout_key
from duilian.rules import tone_of

CHUNWANG = ["國破山河在，城春草木深。", "感時花濺淚，恨別鳥驚心。", "烽火連三月，家書抵萬金。",
            "白頭搔更短，渾欲不勝簪。"]
JIANGNAN = ["暮宿南洲草，晨行北岸林。", "日懸滄海闊，水隔洞庭深。", "煙景無留意，風波有異潯。",
            "歲遊難極目，春戲易爲心。", "朝夕無榮遇，芳菲已滿襟。"]
BAIZHANG = ["大雄真跡枕危巒，梵宇層樓聳萬般。", "日月每從肩上過，山河長在掌中看。", "仙峰不間三春秀，靈境何時六月寒？",
            "更有上方人罕到，暮鐘朝磬碧雲端。"]
JUEJU = ["白日依山盡，黃河入海流。", "欲窮千里目，更上一層樓。"]
GUTI = ["晚霞聊自怡，初晴彌可喜。", "日晃百花色，風動千林翠。", "池魚躍不同，園鳥聲還異。", "寄言博通者，知予物外志。"]
LOST = ["國破山河在，城春草木□。", "感時花濺淚，恨別鳥驚心。", "烽火連三月，家書抵萬金。",
        "白頭搔更短，渾欲不勝簪。"]
UNEQUAL = ["國破山河在，城春草木深。", "感時花濺淚，恨別鳥驚心。", "烽火連三月，家書抵萬金兩。",
           "白頭搔更短，渾欲不勝簪。"]

SHENGLV_1 = ("雲對雨，雪對風，晚照對晴空。來鴻對去燕，宿鳥對鳴蟲。三尺劍，六鈞弓，嶺北對江東。人間清暑殿，天上廣寒宮。"
             "兩岸曉煙楊柳綠，一園春雨杏花紅。兩鬢風霜，途次早行之客；一蓑煙雨，溪邊晚釣之翁。")
SHENGLV_2 = ("蕭蕭對滾滾，花花對葉子。世仰雙仙，元禮舟中攜郭泰，人稱連壁，夏侯車上並潘安。"
             "緩撫琴絃，像流鶯而並語；斜排箏柱。類過雁之相挨。")
"""Hand-made from the book's irregular places: a long pair written without its ； (十四 寒), and a 。 typed
for the ， inside a long pair's second half (九 佳)."""


def poem(id, title, paragraphs, author="某"):
    return {"author": author, "paragraphs": paragraphs, "title": title, "id": id}


@pytest.fixture
def checkout(tmp_path):
    """A chinese-poetry checkout in miniature, with its LICENSE and COMMIT files."""
    root = tmp_path / "chinese-poetry"
    (root / "全唐诗").mkdir(parents=True)
    (root / "蒙学").mkdir()
    tang_200 = [poem("t-jiangnan", "江南曲", JIANGNAN, "劉希夷"), poem("t-jueju", "登鸛雀樓", JUEJU, "王之渙"),
                poem("t-guti", "初晴落景", GUTI, "太宗皇帝")]
    tang_1000 = [poem("t-chunwang", "春望", CHUNWANG, "杜甫"), poem("t-lost", "春望", LOST, "杜甫"),
                 poem("t-unequal", "春望", UNEQUAL, "杜甫")]
    song = [poem("s-baizhang", "百丈山", BAIZHANG, "宣宗皇帝"), poem("s-chunwang", "春望", CHUNWANG, "杜甫")]
    # poet.tang.200 is read before poet.tang.1000 (the book's numeric order), though "1000" < "200" as text
    files = {"poet.tang.200.json": tang_200, "poet.tang.1000.json": tang_1000, "poet.song.0.json": song}
    for name, poems in files.items():
        (root / "全唐诗" / name).write_text(json.dumps(poems, ensure_ascii=False), encoding="utf-8")
    book = {"title": "聲律啓蒙", "author": "車萬育", "content": [
        {"title": "上卷", "content": [{"chapter": "一 東", "paragraphs": [SHENGLV_1]},
                                     {"chapter": "九 佳", "paragraphs": [SHENGLV_2]}]}]}
    (root / "蒙学" / "shenglvqimeng.json").write_text(json.dumps(book, ensure_ascii=False), encoding="utf-8")
    (root / "LICENSE").write_text("The MIT License (MIT)\n\nCopyright (c) 2016 JackeyGao\n", encoding="utf-8")
    (root / "COMMIT").write_text("0123456789abcdef0123456789abcdef01234567\n", encoding="utf-8")
    return root


@pytest.fixture
def heldout(tmp_path):
    """A held-out list naming one 排律 line, keyed from its traditional form as the README's code would."""
    path = tmp_path / "lines.sha256"
    path.write_text(heldout_key("煙景無留意") + "\n", encoding="utf-8")
    return path


@pytest.fixture
def test_split(tmp_path):
    """The public test split's layout: in.txt, characters separated by spaces; one 上联 is a 排律 line."""
    path = tmp_path / "test"
    path.mkdir()
    (path / "in.txt").write_text("天 增 岁 月 人 增 寿\n岁 游 难 极 目\n", encoding="utf-8")
    return path


def run(checkout, out, heldout=None, test_split=None, **kw):
    return build(ClassicalConfig(poetry=str(checkout), out_dir=str(out), heldout=heldout and str(heldout),
                                 test=test_split and str(test_split), **kw))


# --- the stages, one by one --------------------------------------------------------------------
def lines_of(paragraphs, min_regulation=classical.MIN_REGULATION):
    return poem_lines(Poem("tang", "x", "", "", tuple(paragraphs)), min_regulation)


@pytest.mark.parametrize("paragraphs, reason", [
    (LOST, SKIP_JUNK),
    (["國破山河在（一作“國破”），城春草木深。"] + CHUNWANG[1:], SKIP_JUNK),  # a variant note
    (["國破山河在，，城春草木深。"] + CHUNWANG[1:], SKIP_MALFORMED),
    (CHUNWANG + ["其二"], SKIP_MALFORMED),  # a title glued in as a paragraph, no mark after it
    (UNEQUAL, SKIP_UNEQUAL),
    (["國破山河，城春草木。"] * 4, SKIP_LINE_LENGTH),
    (JUEJU, SKIP_LINE_COUNT),
    (CHUNWANG + JUEJU[:1] + ["欲窮千里目。"], SKIP_LINE_COUNT),  # 11 lines: odd
    (GUTI, SKIP_NOT_REGULATED),
])
def test_poem_lines_skips_with_the_first_reason(paragraphs, reason):
    assert lines_of(paragraphs) == (None, reason)


def test_poem_lines_splits_clauses_not_paragraphs():
    """One line a paragraph, or all eight in one: the same lines; ？ ends a line as 。 does."""
    lines, reason = lines_of(BAIZHANG)
    assert reason is None and len(lines) == 8 and lines[5] == "靈境何時六月寒"
    assert lines_of(["".join(CHUNWANG)]) == lines_of([c for p in CHUNWANG for c in p.replace("，", "，|").split("|")])


def test_an_8_line_guti_gives_pairs_only_without_the_tone_check():
    lines, reason = lines_of(GUTI, min_regulation=0)
    assert reason is None and len(lines) == 8


def test_pingshui_tones_are_middle_chinese():
    """國 白 竹 are 入声: 仄 in the 平水韵, level in Mandarin (which is why rules.tone_of is not used)."""
    for ch in "國白竹":
        assert pingshui_tone(ch) == "仄" and tone_of(ch) == "平"
    assert pingshui_tone("風") == "平" and pingshui_tone("月") == "仄"
    assert pingshui_tone("看") is None  # listed under both: the reading decides
    assert pingshui_tone("羣") == "平"  # a variant the table lacks, found by its simplified form 群


def test_regulation_tells_lushi_from_guti():
    assert regulation(lines_of(CHUNWANG)[0]) == 1.0
    assert regulation(lines_of(GUTI, 0)[0]) < 0.5


def test_poem_pairs_by_form():
    lushi = [f"{i}" * 5 for i in range(8)]
    assert poem_pairs(lushi) == [("22222", "33333"), ("44444", "55555")]
    pailu = [f"{i}" * 5 for i in range(12)]
    assert poem_pairs(pailu) == [(pailu[i], pailu[i + 1]) for i in (2, 4, 6, 8)]


def test_shenglvqimeng_pairs_of_the_first_paragraph():
    pairs, singles, unparsed = shenglvqimeng_pairs(SHENGLV_1)
    assert pairs == [
        ("晚照", "晴空", FORM_DUI), ("來鴻", "去燕", FORM_DUI), ("宿鳥", "鳴蟲", FORM_DUI),
        ("三尺劍", "六鈞弓", FORM_CLAUSE), ("嶺北", "江東", FORM_DUI),
        ("人間清暑殿", "天上廣寒宮", FORM_CLAUSE), ("兩岸曉煙楊柳綠", "一園春雨杏花紅", FORM_CLAUSE),
        ("兩鬢風霜，途次早行之客", "一蓑煙雨，溪邊晚釣之翁", FORM_LONG),
    ]
    assert singles == 2 and unparsed == []  # 雲對雨, 雪對風


def test_shenglvqimeng_pairs_mend_the_books_marks():
    pairs, singles, unparsed = shenglvqimeng_pairs(SHENGLV_2)
    assert pairs == [
        ("蕭蕭", "滾滾", FORM_DUI), ("花花", "葉子", FORM_DUI),
        ("世仰雙仙，元禮舟中攜郭泰", "人稱連壁，夏侯車上並潘安", FORM_LONG),
        ("緩撫琴絃，像流鶯而並語", "斜排箏柱，類過雁之相挨", FORM_LONG),
    ]
    assert singles == 0 and unparsed == []


def test_shenglvqimeng_reports_what_it_cannot_pair():
    pairs, _, unparsed = shenglvqimeng_pairs("出沒浴波鷗對對，天光。")  # 對對 is a word, not "X對Y"
    assert pairs == [] and unparsed == ["出沒浴波鷗對對，天光"]


def pair(upper, lower, source="tang", unit="tang:a"):
    return Pair(upper, lower, source, unit, FORM_LUSHI, upper, lower)


@pytest.mark.parametrize("upper, lower, reason", [
    ("感时花溅泪", "恨别鸟惊心", None),
    ("萧萧", "滚滚", None),  # 重字 mirrored
    ("感时花溅泪", "恨别鸟惊", FILTER_LENGTH),
    ("两鬓风霜，途次", "一蓑烟雨途次，", FILTER_LENGTH),  # the mark elsewhere
    ("感时花溅泪", "感时花溅泪", FILTER_COPY),
    ("两鬓风霜，途次早行之客", "一蓑烟雨，溪边晚钓之翁", FILTER_COPY),  # 之 at the same place
    ("花花", "叶子", FILTER_REPEATS),
])
def test_filter_form_checks(upper, lower, reason):
    assert Filter().check(pair(upper, lower)) == reason


def test_filter_heldout_duplicate_test_in_order():
    filt = Filter(heldout=frozenset({heldout_key("煙景無留意")}), test_uppers=frozenset({"岁游难极目"}))
    assert filt.check(pair("烟景无留意", "风波有异浔")) == FILTER_HELDOUT
    assert filt.check(pair("风波有异浔", "烟景无留意")) == FILTER_HELDOUT  # the 下联 counts as well
    assert filt.check(pair("岁游难极目", "春戏易为心")) == FILTER_TEST
    assert filt.check(pair("日悬沧海阔", "水隔洞庭深")) is None
    assert filt.check(pair("日悬沧海阔", "水隔洞庭深", unit="song:b")) == FILTER_DUPLICATE


def test_split_is_by_poem_and_dev_lines_are_unseen():
    pairs = [pair("日悬沧海阔", "水隔洞庭深", unit="tang:a"), pair("烟景无留意", "风波有异浔", unit="tang:a"),
             pair("感时花溅泪", "恨别鸟惊心", unit="tang:b"),
             pair("日悬沧海阔", "天上广寒宫", source="shenglvqimeng", unit="shenglvqimeng:x"),
             pair("人间清暑殿", "天上广寒宫", source="shenglvqimeng", unit="shenglvqimeng:x")]
    # a fraction between the two poems' hashes puts exactly one of them in dev
    low, high = sorted(("tang:a", "tang:b"), key=lambda u: unit_hash(u, 0))
    fraction = (unit_hash(low, 0) + unit_hash(high, 0)) / 2
    train, dev, overlap = split(pairs, ClassicalConfig(poetry="", out_dir="", dev_fraction=fraction))
    assert {p.unit for p in dev} == {low}
    assert [p.unit for p in pairs if p.unit == low] == [p.unit for p in dev]  # all its couplets
    assert all(p.source != "shenglvqimeng" for p in dev)
    if low == "tang:a":  # its 日悬沧海阔 is in dev: the 声律启蒙 pair holding it leaves train
        assert overlap == [pairs[3]] and train == [pairs[2], pairs[4]]
    else:
        assert overlap == [] and train == [pairs[0], pairs[1], pairs[3], pairs[4]]


# --- the whole build ----------------------------------------------------------------------------
def read_tsv(path):
    return [tuple(line.split("\t")) for line in path.read_text(encoding="utf-8").splitlines()]


def test_build_pairs_and_counts(checkout, heldout, test_split, tmp_path):
    out = tmp_path / "out"
    result = run(checkout, out, heldout, test_split, dev_fraction=0.0)
    assert read_tsv(out / "train.tsv") == [
        ("日悬沧海阔", "水隔洞庭深"),  # 江南曲: 烟景无留意 held out, 岁游难极目 in the test split
        ("感时花溅泪", "恨别鸟惊心"), ("烽火连三月", "家书抵万金"),  # 春望
        ("日月每从肩上过", "山河长在掌中看"), ("仙峰不间三春秀", "灵境何时六月寒"),  # 百丈山; 春望 again: duplicates
        ("晚照", "晴空"), ("来鸿", "去燕"), ("宿鸟", "鸣虫"), ("三尺剑", "六钧弓"), ("岭北", "江东"),
        ("人间清暑殿", "天上广寒宫"), ("两岸晓烟杨柳绿", "一园春雨杏花红"),
        ("萧萧", "滚滚"), ("世仰双仙，元礼舟中携郭泰", "人称连壁，夏侯车上并潘安"),
        ("缓抚琴弦，像流莺而并语", "斜排筝柱，类过雁之相挨"),
    ]
    assert (out / "dev.tsv").read_text() == "" and (out / "dev.meta.tsv").read_text() == ""
    s = result.summary["sources"]
    assert s["tang"]["files"] == 2 and s["tang"]["poems_read"] == 6
    assert s["tang"]["poems_skipped"] == {SKIP_JUNK: 1, SKIP_UNEQUAL: 1, SKIP_LINE_COUNT: 1, SKIP_NOT_REGULATED: 1}
    assert s["tang"]["poems_used"] == {FORM_LUSHI: 1, FORM_PAILU: 1}
    assert s["tang"]["pairs_extracted"] == 5 and s["tang"]["kept"] == 3
    assert {k: v for k, v in s["tang"]["dropped"].items() if v} == {FILTER_HELDOUT: 1, FILTER_TEST: 1}
    assert s["tang"]["drop_examples"] == {FILTER_HELDOUT: "烟景无留意 / 风波有异浔",
                                          FILTER_TEST: "岁游难极目 / 春戏易为心"}
    assert s["song"]["pairs_extracted"] == 4 and s["song"]["kept"] == 2
    assert {k: v for k, v in s["song"]["dropped"].items() if v} == {FILTER_DUPLICATE: 2}
    g = s["shenglvqimeng"]
    assert g["poems_read"] == 2 and g["poems_used"] == {"paragraph": 2}
    assert g["single_char_pairs_skipped"] == 2 and g["unparsed"] == []
    assert g["pairs_by_form"] == {FORM_CLAUSE: 3, FORM_DUI: 6, FORM_LONG: 3}
    assert {k: v for k, v in g["dropped"].items() if v} == {FILTER_COPY: 1, FILTER_REPEATS: 1}
    assert g["kept"] == g["train"] == 10 and g["dev"] == 0
    assert result.summary["total"] == {"pairs_extracted": 21, "kept": 15, "train": 15, "dev": 0}


def test_build_records_its_sources(checkout, heldout, test_split, tmp_path):
    out = tmp_path / "out"
    summary = run(checkout, out, heldout, test_split).summary
    source = json.loads((out / "source.json").read_text(encoding="utf-8"))
    assert source == {"name": classical.NAME, "licence": "MIT", "url": classical.URL,
                      "commit": "0123456789abcdef0123456789abcdef01234567"}
    assert classical.URL == "https://github.com/chinese-poetry/chinese-poetry"
    assert summary["commit"] == source["commit"] and summary["licence"] == "MIT"
    assert summary["heldout"]["keys"] == 1 and len(summary["heldout"]["sha256"]) == 64
    assert summary["test"]["uppers"] == 2
    assert "笠翁对韵" in summary["not_included"]
    assert json.loads((out / "summary.json").read_text(encoding="utf-8")) == summary


def test_build_without_lists_keeps_those_pairs(checkout, tmp_path):
    s = run(checkout, tmp_path / "out", dev_fraction=0.0).summary
    assert s["heldout"] is None and s["test"] is None
    assert s["sources"]["tang"]["kept"] == 5


def test_build_is_byte_identical(checkout, heldout, test_split, tmp_path):
    names = ("train.tsv", "dev.tsv", "dev.meta.tsv", "summary.json", "source.json")
    run(checkout, tmp_path / "a", heldout, test_split, dev_fraction=0.5, seed=3)
    run(checkout, tmp_path / "b", heldout, test_split, dev_fraction=0.5, seed=3)
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_build_splits_by_poem(checkout, heldout, test_split, tmp_path):
    """Some seed puts one of the three poems with pairs (春望, 江南曲, 百丈山) in dev and another in train;
    then every couplet of a poem is on its poem's side, and dev.meta.tsv names each dev pair's source."""
    units = ["tang:t-chunwang", "tang:t-jiangnan", "song:s-baizhang"]
    seed = next(s for s in range(100) if len({unit_hash(u, s) < 0.5 for u in units}) == 2)
    result = run(checkout, tmp_path / "out", heldout, test_split, dev_fraction=0.5, seed=seed)
    dev_units = {u for u in units if unit_hash(u, seed) < 0.5}
    assert {p.unit for p in result.dev} == dev_units
    assert not {p.unit for p in result.train} & dev_units
    meta = read_tsv(tmp_path / "out" / "dev.meta.tsv")
    assert [m[2] for m in meta] == [p.unit for p in result.dev]
    assert [m[0] for m in meta] == [u.split(":")[0] for u in (p.unit for p in result.dev)]
    assert read_tsv(tmp_path / "out" / "dev.tsv") == [(p.upper, p.lower) for p in result.dev]
    s = result.summary["sources"]
    assert s["tang"]["train"] + s["tang"]["dev"] == s["tang"]["kept"] == 3


def test_build_refuses_a_checkout_without_the_books(tmp_path):
    with pytest.raises(classical.ClassicalError, match="poet.tang"):
        run(tmp_path, tmp_path / "out")


def test_script_is_a_thin_wrapper(checkout, heldout, test_split, tmp_path):
    main = runpy.run_path(str(Path(__file__).parents[1] / "scripts" / "build_classical.py"))["main"]
    out = tmp_path / "out"
    assert main(["--poetry", str(checkout), "--heldout", str(heldout), "--test", str(test_split),
                 "--out", str(out), "--dev-fraction", "0"]) == 0
    assert len(read_tsv(out / "train.tsv")) == 15
    assert main(["--poetry", str(tmp_path / "nowhere"), "--out", str(out)]) == 1
