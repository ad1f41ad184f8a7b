"""api.py used as a user would: load a model directory, complete, acrostic, score, and every bad input."""

import json
import math
import random
from pathlib import Path

import pytest
import torch
from transformers import GPT2LMHeadModel

import duilian
from duilian import api, decode
from duilian.model import build_model
from duilian.rules import check_pair, tone_of
from duilian.script import char_forms, to_simplified, to_traditional
from duilian.text import CoupletInputError, is_han
from duilian.tokenizer import default_tokenizer

FIXTURE_UPPERS = Path(__file__).parent / "fixtures" / "couplets" / "in.txt"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-model")
    build_model("tiny", dropout=0.0, seed=0).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def c(model_dir):
    return duilian.load(model_dir)


def test_load_a_model_directory(c):
    assert isinstance(c, duilian.Couplets)
    assert c.tokenizer is default_tokenizer() and str(c.device) == "cpu"
    assert c.max_chars == 32  # min(32, (128 - 3) // 2)


def test_the_embedded_default_model_is_trained_and_right_in_form():
    """duilian.load() without a directory: the shipped fp16 model (the README's first command). It writes valid
    下联, and it is trained: it gives the fixture's real 下联 a higher log-prob than the same characters
    reversed, for nearly every couplet (a model with random weights does so for about half)."""
    c = duilian.load()
    assert c.net is not None and len(c.tokenizer) < len(default_tokenizer())  # the corpus's own vocabulary
    cands = c.complete("丹枫江冷人初去", n=5, seed=0)
    assert len(cands) >= 3 and all(x.checks.valid and len(x.text) == 7 for x in cands)
    uppers = FIXTURE_UPPERS.read_text(encoding="utf-8").split("\n")[:60]
    lowers = (FIXTURE_UPPERS.parent / "out.txt").read_text(encoding="utf-8").split("\n")[:60]
    uppers, lowers = [u.replace(" ", "") for u in uppers], [l.replace(" ", "") for l in lowers]
    pairs = [(u, l) for u, l in zip(uppers, lowers) if len(set(l)) > 1 and l != l[::-1]]
    real = c.score([u for u, _ in pairs], [l for _, l in pairs])
    reversed_ = c.score([u for u, _ in pairs], [l[::-1] for _, l in pairs])
    assert sum(r > s for r, s in zip(real, reversed_)) >= 0.85 * len(pairs)


def test_no_default_model_says_how_to_make_one(monkeypatch, tmp_path):
    monkeypatch.setattr(api, "DEFAULT_MODEL_DIR", tmp_path / "default")
    with pytest.raises(api.NoDefaultModelError, match="no default model yet; train one with") as e:
        duilian.load()
    assert isinstance(e.value, FileNotFoundError) and "--model DIR" in str(e.value)


def test_a_hub_id_loads_from_huggingface_hubs_cache_offline(tmp_path, monkeypatch):
    """duilian.load("owner/name") goes through huggingface_hub: a model it has cached loads with the Hub out of
    reach (HF_HUB_OFFLINE); one it has not is a FileNotFoundError that says what was looked for."""
    import huggingface_hub.constants
    from hub import hub_cache

    cache, model = hub_cache(tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    c = duilian.load("uer/gpt2-chinese-couplet")
    assert torch.equal(c.model.transformer.h[1].mlp.c_fc.weight, model.transformer.h[1].mlp.c_fc.weight)
    assert c.complete("丹枫江冷人初去", n=2, seed=0)
    with pytest.raises(FileNotFoundError, match="uer/not-cached is neither a local directory nor a Hugging Face"):
        duilian.load("uer/not-cached")
    monkeypatch.chdir(tmp_path)  # a local directory of that name is the directory, not the Hub's model
    (tmp_path / "uer" / "gpt2-chinese-couplet").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="not a HuggingFace model directory"):
        duilian.load("uer/gpt2-chinese-couplet")


def test_not_a_model_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a HuggingFace model directory"):
        duilian.load(tmp_path)


def test_a_training_run_directory_is_named_as_such(tmp_path):
    (tmp_path / "config.json").write_text('{"preset": "tiny"}')  # what `duilian train` writes
    (tmp_path / "final.pt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="duilian export"):
        duilian.load(tmp_path)


def test_complete(c):
    cands = c.complete(" 丹枫江冷, 人初去 ", n=4, seed=0)  # spaces dropped, ASCII comma mapped
    assert 1 <= len(cands) <= 4 and len({x.text for x in cands}) == len(cands)  # up to n (decode.Search.n)
    for x in cands:
        assert len(x.text) == 8 and x.text[4] == "，" and x.checks.valid
        d = x.to_dict()
        assert json.loads(json.dumps(d, ensure_ascii=False)) == d
        assert d["valid"] is True and d["checks"]["same_length"] is True
    assert c.complete_batch(["丹枫江冷人初去", "海阔凭鱼跃"], n=2, seed=0)[1][0].text != ""


def test_max_chars_is_the_model_limit(c):
    line = "天" * 32
    assert len(c.complete(line, n=1, seed=0)[0].text) == 32


@pytest.mark.parametrize("text, reason", [
    ("", "empty"),
    ("   ", "empty"),
    ("hello, world", "no Chinese"),
    ("天" * 33, "the limit is 32"),
    ("春眠不觉晓abc", "may hold only"),
    ("春眠不觉晓\x00", "control"),
])
def test_bad_input_says_why(c, text, reason):
    with pytest.raises(CoupletInputError, match=reason):
        c.complete(text)


def test_bad_options(c):
    with pytest.raises(ValueError):
        c.complete("丹枫江冷人初去", method="greedy")
    with pytest.raises(TypeError):
        c.complete("丹枫江冷人初去", colour="red")


def test_acrostic(c):
    couplets = c.acrostic("春福", length=7, n=3, seed=0)
    assert 1 <= len(couplets) <= 3 and len({x.upper for x in couplets}) == len(couplets)
    for x in couplets:
        assert x.upper[0] == "春" and x.lower[0] == "福"
        assert len(x.upper) == len(x.lower) == 7
        assert tone_of(x.upper[-1]) == "仄" and tone_of(x.lower[-1]) != "仄"
        assert x.checks.valid and x.to_dict()["valid"]
    assert [x.upper for x in couplets] == [x.upper for x in c.acrostic("春福", length=7, n=3, seed=0)]
    assert len(c.acrostic("春福", length=2, n=1, seed=0)[0].upper) == 2


@pytest.mark.parametrize("heads, length, reason", [
    ("春", 7, "exactly two"), ("春福到", 7, "exactly two"), ("ab", 7, "exactly two"), ("春春", 7, "must differ"),
    ("春\u3400", 7, "not ones this model can write"), ("春福", 1, "between 2 and 32"), ("春福", 33, "between 2 and 32"),
])
def test_acrostic_bad_input(c, heads, length, reason):
    with pytest.raises(CoupletInputError, match=reason):
        c.acrostic(heads, length=length)


@pytest.mark.parametrize("heads, position, at", [("伟娜", 2, 1), ("伟娜", "4", 3), ("地天", 7, 6), ("月天", "last", 6)])
def test_embedded_characters_stand_at_the_asked_place(c, heads, position, at):
    """嵌字 at any place: the 上联 holds the first character there and nowhere else, the 下联 the second; every
    line is valid, the 上联 ends 仄."""
    couplets = c.acrostic(heads, length=7, n=3, position=position, seed=1)
    assert couplets
    for x in couplets:
        assert x.upper[at] == heads[0] and x.lower[at] == heads[1] and x.upper.count(heads[0]) == 1
        assert x.checks.valid and tone_of(x.upper[-1]) == "仄"


@pytest.mark.parametrize("heads, position, reason", [
    ("伟娜", "last", "娜 is oblique .仄.: it cannot end the 下联"),
    ("天月", "last", "天 is level .平.: it cannot end the 上联"),
    ("伟娜", 8, "past the end of a 7-character line"), ("伟娜", 0, "past the end"),
    ("伟娜", "middle", "a number from 1"),
])
def test_a_place_that_cannot_hold_the_character_is_refused(c, heads, position, reason):
    with pytest.raises(CoupletInputError, match=reason):
        c.acrostic(heads, length=7, position=position)


def test_score_is_the_model_log_prob(c, model_dir):
    """Scores come from the weights read without transformers; the reference is transformers' own model."""
    from duilian.model import load_model

    reference = load_model(model_dir)
    tok = c.tokenizer
    uppers, lowers = ["丹枫江冷人初去", "海阔凭鱼跃"], ["黄叶声从天外来", "天高任鸟飞"]
    got = c.score(uppers, lowers)
    for u, l, s in zip(uppers, lowers, got):
        ids = torch.tensor([tok.encode_pair(u, l)])
        with torch.no_grad():
            logp = torch.log_softmax(reference(ids).logits[0], -1)
        start = len(tok.encode_prompt(u))
        expected = sum(logp[t - 1, ids[0, t]].item() for t in range(start, ids.shape[1]))
        assert s == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ValueError):
        c.score(uppers, lowers[:1])


def test_complete_batch_takes_one_seed_per_upper(c):
    uppers = ["丹枫江冷人初去", "海阔凭鱼跃", "丹枫江冷人初去"]
    batch = c.complete_batch(uppers, n=3, seed=[1, 2, 3])
    assert [[x.text for x in cs] for cs in batch] == \
        [[x.text for x in c.complete(u, n=3, seed=s)] for u, s in zip(uppers, [1, 2, 3])]
    assert [x.text for x in c.complete_batch(uppers[:2], n=3, seed=[None, 2])[1]] == [x.text for x in batch[1]]
    with pytest.raises(ValueError, match="2 seeds for 3"):
        c.complete_batch(uppers, seed=[1, 2])


@pytest.fixture(scope="module")
def hf_model(model_dir):
    """The same weights in transformers' own GPT2LMHeadModel, fp32: the reference."""
    return GPT2LMHeadModel.from_pretrained(str(model_dir)).eval()


def reference_logprob(hf_model, c, upper: str, lower: str) -> float:
    """The mean per-token log-prob of `lower` as Candidate.logprob reports it, teacher-forced through
    transformers' model: its logits at each position, the decoder's masks for that position (from c), and a
    log-softmax over every Han character and what the masks allow (a forced mark): the masks say what may be
    written, not how it counts."""
    spec = c.lower_spec(upper, api.Options())
    rules = decode.Rules.build([spec], c.vocab)
    tokens = c.tokenizer.encode_chars(lower)
    sub = c.vocab.to_sub[torch.tensor(tokens)]
    with torch.no_grad():
        logits = hf_model(torch.tensor([spec.prompt + tokens])).logits[0, len(spec.prompt) - 1:-1]  # (L, V)
    logits = logits[:, c.vocab.ids]  # (L, V')
    total = 0.0
    for t in range(len(tokens)):
        allowed = decode.allowed_tokens(rules, c.vocab, torch.tensor([0]), t, sub[None])[0]
        assert allowed[sub[t]], "the decoder wrote a token its masks forbid"
        allowed = allowed | c.vocab.han
        total += torch.log_softmax(torch.where(allowed, logits[t], -math.inf), 0)[sub[t]].item()
    return total / len(tokens)


def test_candidate_logprob_is_the_models_log_prob_of_each_written_token(c, hf_model):
    # The reference the int8 test compares with: the fp32 decoder reports it up to float rounding.
    for upper in ["丹枫江冷人初去", "花开花落，春去春来"]:
        for x in c.complete(upper, n=3, seed=0) + c.complete(upper, n=2, method="beam"):
            assert x.logprob == pytest.approx(reference_logprob(hf_model, c, upper, x.text), abs=1e-5)


@pytest.mark.int8
def test_int8_weights_write_what_fp32_writes_up_to_rounding(model_dir, c, hf_model):
    """The masks make any weights' lines right in form, so form alone says nothing about int8: its lines
    and log-probs are compared with fp32's on 60 real 上联."""
    c8 = duilian.load(model_dir, quantize="int8")
    assert c8.quantize == "int8" and c8.net.quantize == "int8" and c.net.quantize is None
    uppers = [line.replace(" ", "") for line in FIXTURE_UPPERS.read_text(encoding="utf-8").splitlines()[:60]]
    # 1) Greedy: the same line for most 上联. The tiny random model's next-token log-probs lie within ~0.3
    #    nats of each other, so int8 rounding (~1e-3) flips some choices: 47-48 of 60 agree with the AVX2 and
    #    VNNI kernels as shipped, 29 with the saturating AVX2 kernel (8-bit activations without VNNI).
    greedy8, greedy32 = (x.complete_batch(uppers, n=1, temperature=0) for x in (c8, c))
    assert sum(a[0].text == b[0].text for a, b in zip(greedy8, greedy32)) >= 0.65 * 60
    # 2) Sampled lines, each right in form, and each int8 log-prob against the fp32 model's for the same
    #    line: 0.0005 (VNNI) and 0.0010 (AVX2) apart on average as shipped, 0.0023 with saturation.
    gaps = []
    for upper, cands in zip(uppers, c8.complete_batch(uppers, n=3, seed=0)):
        assert 1 <= len(cands) <= 3 and len({x.text for x in cands}) == len(cands)
        for x in cands:
            assert x.checks.valid, (upper, x.text)
            gaps.append(abs(x.logprob - reference_logprob(hf_model, c, upper, x.text)))
    assert sum(gaps) / len(gaps) < 0.0016 and max(gaps) < 0.02, (sum(gaps) / len(gaps), max(gaps))


def test_unknown_characters_are_read_as_unk_and_reported(c):
    """A character outside the vocabulary no longer refuses the 上联: it is read as [UNK], the candidates are
    still right in form (its tone still counts), and each says which characters were unknown."""
    upper = "合\u3400之喜迎新岁"  # U+3400 is in no vocabulary
    cands = c.complete(upper, n=3, seed=0)
    assert cands and all(x.checks.valid and len(x.text) == len(upper) for x in cands)
    assert all(x.unknown == ("\u3400",) and x.to_dict()["unknown"] == ["\u3400"] for x in cands)
    assert all(x.unknown == () for x in c.complete("合家之喜迎新岁", n=2, seed=0))
    spec = c.lower_spec(c.read(upper), api.Options())
    assert spec.prompt[2] == c.tokenizer.unk_id


def test_traditional_in_traditional_out(c):
    """A traditional 上联 is read in simplified and answered in traditional (script="auto"); script= forces."""
    trad, simp = "風調雨順年年好", "风调雨顺年年好"
    line = c.read(trad)
    assert line.model_text == simp and line.script == "traditional" and line.shown == trad
    from duilian.script import to_traditional

    auto = c.complete(trad, n=3, seed=4)
    plain = c.complete(simp, n=3, seed=4)
    # the model read the same simplified line, so the answers are the same lines in the other script
    assert [x.text for x in auto] == [to_traditional(x.text) for x in plain]
    assert all(x.checks.valid for x in auto) and any(to_traditional(x.text) != x.text for x in plain)
    forced = c.complete(trad, n=3, seed=4, script="simplified")
    assert [x.text for x in forced] == [x.text for x in plain]
    with pytest.raises(ValueError, match="script must be one of"):
        c.complete(trad, script="kanji")


def test_hengpi_with_each_candidate_in_the_couplet_s_script(c):
    """Options.hengpi asks for that many 横批 per candidate: 4 Han characters each, distinct, best first, the
    same the public c.hengpi gives for that couplet; in traditional for a traditional couplet; none by default."""
    cands = c.complete("天增岁月人增寿", n=2, seed=0, hengpi=3)
    for x in cands:
        assert len(x.hengpi) == 3 and len({h.text for h in x.hengpi}) == 3
        assert all(len(h.text) == 4 and all(is_han(ch) for ch in h.text) for h in x.hengpi)
        assert [h.score for h in x.hengpi] == sorted((h.score for h in x.hengpi), reverse=True)
        assert [h.text for h in x.hengpi] == [h.text for h in c.hengpi("天增岁月人增寿", x.text)]
        assert x.to_dict()["hengpi"][0]["text"] == x.hengpi[0].text
    assert all(x.hengpi == () and "hengpi" not in x.to_dict() for x in c.complete("天增岁月人增寿", n=2, seed=0))
    trad = c.complete("風調雨順年年好", n=1, seed=0, hengpi=2)[0]
    simp = c.complete("风调雨顺年年好", n=1, seed=0, hengpi=2)[0]
    assert [h.text for h in trad.hengpi] == [to_traditional(h.text) for h in simp.hengpi]
    pairs = c.acrostic("春福", n=1, seed=0, hengpi=2)
    assert all(len(p.hengpi) == 2 for p in pairs)
    with pytest.raises(ValueError, match="hengpi is a count"):
        c.complete("天增岁月人增寿", hengpi=-1)


BASIC_BLOCK = range(0x4E00, 0xA000)
"""CJK Unified Ideographs, the basic block U+4E00–U+9FFF (20,992 code points)."""
SWEEP = [chr(cp) for cp in sorted(random.Random(0).sample(BASIC_BLOCK, 2000))] + list("一\u9fff僤暐儕")
"""A seeded sample of the block (benchmarks/bench_any_upper.py sweeps all of it with the default model), plus
its two ends and characters known to be awkward: 僤's simplified form is U+2B8B8, outside text.is_han's
ranges; 暐 and 儕 are in the vocabulary but their simplified forms (U+2C029, 侪) are not."""
SWEEP_FORMS = ("{}", "春风{}月入千家")
"""Each character alone (a 1-character 上联) and inside a 7-character line."""


@pytest.mark.parametrize("script", [
    "auto",
    "traditional",
    "simplified",  # 僤 alone simplifies to U+2B8B8, an extension-E ideograph: still a Han character
])
def test_every_basic_block_ideograph_gets_valid_candidates(c, script):
    """README: any 上联 of Chinese characters gets a 下联. Greedy (n=1) in one batch per script: every line is
    read (no CoupletInputError), and its candidate is right in form against the 上联 in the answer's script;
    characters the model does not know after simplification are named, and only those."""
    vocab = set(default_tokenizer().tokens)
    uppers = [form.format(ch) for form in SWEEP_FORMS for ch in SWEEP]
    lines, refused = {}, {}
    for upper in uppers:
        try:
            lines[upper] = c.read(upper, script)
        except CoupletInputError as e:
            refused[upper] = str(e)
    assert refused == {}
    results = c.complete_batch(list(lines), n=1, temperature=0, script=script)
    assert len(results) == len(lines)
    unknown_lines = 0
    for (upper, line), cands in zip(lines.items(), results):
        assert len(cands) == 1, upper
        x = cands[0]
        assert len(x.text) == len(upper) and x.checks.valid, (upper, x.text, x.checks)
        assert check_pair(line.shown, x.text).valid
        # per character: the simplified form if the model knows it, else the form typed if it knows that
        simple = to_simplified(upper)
        assert line.model_text == "".join(s if s in vocab or t not in vocab else t for s, t in zip(simple, upper))
        # unknown: the characters as typed that the model knows in neither script
        assert x.unknown == tuple(dict.fromkeys(t for s, t in zip(simple, upper) if s not in vocab and t not in vocab))
        auto = "traditional" if to_simplified(upper) != upper else "simplified"
        assert line.script == (auto if script == "auto" else script), upper
        unknown_lines += bool(x.unknown)
    # About 64% of the block is outside the BERT vocabulary even after simplification: [UNK] is exercised.
    assert 0.5 * len(uppers) < unknown_lines < 0.8 * len(uppers)


def test_a_traditional_upper_character_is_not_written_back(c):
    line = c.read("驅")
    assert line.model_text == "驱" and line.shown == "驅"
    # The tiny model's greedy answer to a 1-character line is 驅 (only 驱 is banned): a copy of the 上联,
    # typed in traditional or asked for in traditional.
    for upper in ("驅", "驱"):
        x = c.complete(upper, n=1, temperature=0, script="traditional")[0]
        assert x.checks.valid, (upper, x.text, x.checks)


@pytest.mark.parametrize("traditional", [
    "風調雨順年年好", "人間四月芳菲盡", "龍騰虎躍迎新歲",
    "兩岸曉煙楊柳綠，一園春雨杏花紅",  # 聲律啓蒙: punctuation and a clause each side
])
def test_real_traditional_lines_are_answered_in_traditional(c, traditional):
    """The model reads the simplified line, so the candidates are the simplified line's, seed for seed, in
    traditional, and right in form against the traditional 上联 (checked here, not just as reported)."""
    simplified = to_simplified(traditional)
    assert simplified != traditional
    line = c.read(traditional)
    assert line.script == "traditional" and line.shown == traditional and line.model_text == simplified
    trad = c.complete(traditional, n=5, seed=3)
    simp = c.complete(simplified, n=5, seed=3)
    assert len(trad) == len(simp) >= 3
    assert [x.text for x in trad] == [to_traditional(x.text) for x in simp]
    # The tiny random model writes traditional tokens too (the BERT vocabulary holds both scripts), so the
    # simplified candidates are compared in simplified.
    assert [to_simplified(x.text) for x in trad] == [to_simplified(x.text) for x in simp]
    for x in trad:
        assert check_pair(traditional, x.text).valid and x.checks == check_pair(traditional, x.text)
        assert to_traditional(x.text) == x.text  # nothing left in simplified script
    assert any(x.text != y.text for x, y in zip(trad, simp))  # the script really changed


def test_tones_come_from_the_upper_as_written(c):
    """白髮三千丈: 髮 (hair) reads fà, 仄, where its simplified form 发 reads fā, 平 first. The rules of a
    traditional answer follow the 上联 as written, so its rhythm differs from the simplified line's there."""
    from duilian.rules import rhythm_positions

    assert tone_of("髮") == "仄" and tone_of("发") == "平" and 1 in rhythm_positions("白髮三千丈")
    trad, simp = (c.lower_spec(c.read(u), api.Options()) for u in ("白髮三千丈", "白发三千丈"))
    assert trad.prompt == simp.prompt  # the model reads the same simplified line
    assert [i for i, (a, b) in enumerate(zip(trad.rhythm, simp.rhythm)) if a != b] == [1]
    assert trad.rhythm[1] == decode.TONE_OBLIQUE and simp.rhythm[1] == decode.TONE_LEVEL
    assert all(check_pair("白髮三千丈", x.text).valid for x in c.complete("白髮三千丈", n=5, seed=3))


def test_a_level_token_stays_level_in_a_traditional_answer(c):
    tokens = [c.tokenizer.tokens[i] for i in c.vocab.ids.tolist()]
    level = [tok for tok, code in zip(tokens, c.vocab.tone.tolist()) if code == decode.TONE_LEVEL]
    assert "兴" not in level and len(level) > 2500  # 兴 xīng / 興 xìng: no tone rule may rely on it
    assert [tok for tok in level if tone_of(to_traditional(tok)) != "平"] == []


def test_unknown_characters_are_named_as_typed(c):
    line = c.read("可憐鉛槧竟何功")  # 全唐诗; 槧 is simplified 椠, and neither is in the vocabulary
    assert line.unknown and set(line.unknown) <= set(line.text)


@pytest.fixture(scope="module")
def two_way(tmp_path_factory):
    """A tiny model whose config says it read lines backward too (as an export of such a run says)."""
    path = tmp_path_factory.mktemp("two-way")
    m = build_model("tiny", dropout=0.0, seed=4)
    m.config.duilian = {"lines": {"forward": 10, "backward": 10, "keywords": 0}, "reverse_weight": 0.7}
    m.save_pretrained(path)
    return path


def test_noisy_channel_ranks_by_the_reverse_log_prob(two_way, c):
    """score = the decoder's score + λ × mean log P(上联, [SEP] | [CLS][REV]下联-), read by transformers' own model;
    candidates best first; λ comes from config.json unless the caller sets it, and is 0 for a forward-only model."""
    from duilian.model import load_model

    two = duilian.load(two_way)
    assert two.reverse_weight(api.Options()) == 0.7 and two.reverse_weight(api.Options(reverse_weight=0.2)) == 0.2
    assert c.reverse_weight(api.Options(reverse_weight=1.0)) == 0.0  # never read backward: no reranking
    reference, tok = load_model(two_way), two.tokenizer
    upper = "丹枫江冷人初去"
    cands = two.complete(upper, n=5, seed=1)
    assert len(cands) == 5 and [x.score for x in cands] == sorted((x.score for x in cands), reverse=True)
    for x in cands:
        ids = [tok.cls_id, tok.reverse_id, *tok.encode_chars(x.text), tok.separator_id, *tok.encode_chars(upper),
               tok.sep_id]
        with torch.no_grad():
            logp = torch.log_softmax(reference(torch.tensor([ids])).logits[0], -1)
        start = len(x.text) + 3
        expected = sum(logp[t - 1, ids[t]].item() for t in range(start, len(ids))) / (len(ids) - start)
        assert x.reverse == pytest.approx(expected, rel=1e-4)
        assert x.score == pytest.approx(x.logprob + decode.RULE_WEIGHT * x.rule_score + 0.7 * x.reverse, rel=1e-5)
        assert x.checks.valid
    plain = two.complete(upper, n=5, seed=1, reverse_weight=0)
    assert all(x.reverse is None for x in plain) and all(x.reverse is None for x in c.complete(upper, n=2))
    assert len(two.complete(upper, n=2, seed=1)) == 2  # the pool (5 beams + samples) is cut back to n
    with pytest.raises(ValueError, match="reverse_weight"):
        two.complete(upper, reverse_weight=-1)


# --- simplifying merges characters: the rules follow the 上联 that was sent ------------------------------------
def _merging_pairs() -> list[str]:
    """Every 2-character 上联 of two different characters of the basic block that OpenCC simplifies to the same
    character (its many-to-one table, read by converting the whole block: 雲 and 云 -> 云, 鐘 and 鍾 -> 钟, 乾 and
    幹 -> 干, 么 幺 麼 麽 -> 幺), in both orders."""
    from duilian.script import each_simplified
    from duilian.text import normalize

    chars = [chr(cp) for cp in BASIC_BLOCK]
    groups: dict[str, list[str]] = {}
    for ch, simple in zip(chars, each_simplified(chars)):
        if normalize(ch) == ch and is_han(ch):
            groups.setdefault(simple, []).append(ch)
    return [a + b for group in groups.values() for a in group for b in group if a != b]


def _assert_right_for_the_sent_upper(upper: str, x) -> None:
    """The candidate `x` is right in form for `upper` as sent, checked here without the API's own report: the
    same 重字, and no character that is one of the 上联's in either script (each character's simplified and
    traditional forms, converted on its own)."""
    from duilian.rules import repeat_pattern
    from duilian.script import each_simplified, each_traditional

    def forms(line):
        return [{ch, s, t} for ch, s, t in zip(line, each_simplified(list(line)), each_traditional(list(line)))]

    assert repeat_pattern(x.text) == repeat_pattern(upper), (upper, x.text)
    upper_forms = set().union(*forms(upper))
    assert all(not (f & upper_forms) for f in forms(x.text)), (upper, x.text)
    assert x.checks.valid and x.checks == check_pair(upper, x.text, forms=char_forms), (upper, x.text)


def test_merging_characters_stay_apart_in_a_simplified_answer():
    """The issue's reproduction with the shipped model: 雲云 with script "simplified" once gave 雨雨, 风风 and 日日,
    all marked valid (the simplified reading 云云 repeats); 天高雲淡人云亦云 gave 海阔风轻舟风浪风. Now every
    candidate keeps 雲 and 云 apart, as the sent 上联 does, and repeats where it repeats."""
    c = duilian.load()
    for upper in ("雲云", "天高雲淡人云亦云", "鐘鍾", "後后", "乾幹", "髮發"):
        line = c.read(upper, "simplified")
        assert line.script == "simplified" and line.shown == upper  # 雲 and 云 are not shown as 云云 either
        cands = c.complete(upper, n=3, script="simplified", seed=1)
        assert cands
        for x in cands:
            _assert_right_for_the_sent_upper(upper, x)
    assert c.read("風雲", "simplified").shown == "风云"  # nothing merges: the whole line is simplified


@pytest.mark.parametrize("script", ["simplified", "auto", "traditional"])
def test_every_merging_pair_of_opencc_gets_a_line_right_for_what_was_sent(c, script):
    """A sweep over OpenCC's many-to-one table: each pair of characters that simplify to one (both orders), as a
    2-character 上联, greedy, in one batch. No candidate repeats a character where the sent 上联 has two different
    ones, or copies either of them in either script; each is valid, and its report says so truthfully."""
    uppers = _merging_pairs()
    assert len(uppers) > 5000 and "雲云" in uppers and "云雲" in uppers and "鍾鐘" in uppers
    results = c.complete_batch(uppers, n=1, temperature=0, script=script)
    for upper, cands in zip(uppers, results):
        assert len(cands) == 1, upper
        _assert_right_for_the_sent_upper(upper, cands[0])


def test_a_copy_in_the_other_script_is_not_valid():
    """check_pair with script forms: 云 under 雲 is a copy in place, 风 anywhere under 風 a copy; without forms the
    characters are compared as they are (what evaluate does with references in one script)."""
    assert not check_pair("天高雲淡", "海阔云轻", forms=char_forms).no_copy  # in place
    assert not check_pair("風雲", "雨风", forms=char_forms).no_copy  # elsewhere
    assert check_pair("風雲", "雨风", allow_upper_chars=True, forms=char_forms).no_copy  # elsewhere is allowed
    assert not check_pair("余年", "馀生", forms=char_forms).no_copy  # 余 and 馀 are both 餘 in traditional
    assert check_pair("天高雲淡", "海阔云轻").no_copy
    assert check_pair("天高雲淡", "海阔风轻", forms=char_forms).valid
