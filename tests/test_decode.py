"""decode.py: the masks hold for any weights, the KV cache changes nothing, the search is reproducible. (The
model's own forward, its KV cache against transformers and its int8 layers: test_gpt.py.)"""

import math
import random
from dataclasses import replace
from itertools import permutations

import pytest
import torch

from duilian import decode, gpt
from duilian.api import Couplets, Options, vocab_tables
from duilian.model import build_model
from duilian.rules import check_pair, rhythm_opposition, tone_of
from duilian.script import to_simplified, to_traditional
from duilian.text import PUNCTUATION, is_han
from duilian.tokenizer import default_tokenizer


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("tiny", dropout=0.0, seed=0).eval()


@pytest.fixture(scope="module")
def couplets(model):
    return Couplets(model)


@pytest.fixture(scope="module")
def vocab():
    return vocab_tables(default_tokenizer())


def random_uppers(count, seed=0):
    """Random 上联 with punctuation and 重字, e.g. '花开花落，春去春来'-like shapes."""
    rng = random.Random(seed)
    tok = default_tokenizer()
    han = [t for t in tok.tokens if len(t) == 1 and is_han(t)]
    marks = sorted(PUNCTUATION)
    out = ["花开花落，春去春来", "天连水水连天", "丹枫江冷人初去", "上海自来水来自海上", "风风雨雨，年年岁岁！"]
    while len(out) < count:
        line = []
        for _ in range(rng.randint(1, 3)):  # clauses
            clause = [rng.choice(han) for _ in range(rng.randint(1, 7))]
            for _ in range(rng.randint(0, 2)):  # 重字
                i, j = rng.randrange(len(clause)), rng.randrange(len(clause))
                clause[j] = clause[i]
            line += clause + [rng.choice(marks)]
        if rng.random() < 0.7:
            line.pop()  # most lines end without a mark
        out.append("".join(line))
    return out


# --- int8 weights -----------------------------------------------------------------------------------------------
@pytest.mark.int8
@pytest.mark.parametrize("method", ["sample", "beam"])
def test_int8_candidates_are_right_in_form(model, method):
    c = Couplets(model, quantize="int8")
    uppers = random_uppers(12, seed=8)
    for upper, cands in zip(uppers, c.complete_batch(uppers, n=3, method=method, seed=0)):
        assert cands, upper
        for cand in cands:
            assert cand.checks.valid, (upper, cand.text, cand.checks)
            assert math.isfinite(cand.logprob)


# --- the masks --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["sample", "beam"])
def test_every_candidate_is_right_in_form(couplets, method):
    uppers = random_uppers(24, seed=1)
    results = couplets.complete_batch(uppers, n=3, method=method, seed=0)
    for upper, cands in zip(uppers, results):
        assert cands, upper
        assert len({c.text for c in cands}) == len(cands)  # distinct
        for c in cands:
            assert c.checks.valid, (upper, c.text, c.checks)
            assert all(is_han(ch) or ch == u for ch, u in zip(c.text, upper))
            if tone_of(upper[-1]) == "仄":
                assert tone_of(c.text[-1]) != "仄"


def test_allow_upper_chars_only_forbids_same_position(couplets):
    for upper in random_uppers(8, seed=2):
        for c in couplets.complete(upper, n=3, seed=1, allow_upper_chars=True):
            assert check_pair(upper, c.text, allow_upper_chars=True).valid


def test_free_ending_lifts_only_the_tone_rule(couplets):
    # A 上联 ending 仄 whose 下联 may now end 仄 too: over many samples some do.
    cands = couplets.complete("丹枫江冷人初去", n=20, seed=0, require_level_ending=False)
    assert any(tone_of(c.text[-1]) == "仄" for c in cands)
    assert all(c.checks.same_length and c.checks.no_copy and c.checks.repeats_mirrored for c in cands)


def test_repeated_last_character_gets_its_tone_where_it_first_appears(couplets):
    # 去 (仄) ends the line and first appears at position 0: the 下联's first character decides its ending.
    for c in couplets.complete("去来人去", n=10, seed=3):
        assert c.text[0] == c.text[3] and tone_of(c.text[3]) != "仄" and c.checks.valid


def test_fallback_never_emits_an_invalid_token(model):
    """With only three Han characters allowed, 'no repeats' and the tone rule cannot hold: the engine relaxes
    them rather than writing junk, and every token is still one of the allowed ones or the forced mark."""
    tok = default_tokenizer()
    full = vocab_tables(tok)
    keep = [tok.id(ch) for ch in "天地人，"]
    sel = torch.tensor([int((full.ids == i).nonzero()) for i in keep])
    small = decode.Vocab(ids=full.ids[sel], han=full.han[sel], tone=full.tone[sel], size=full.size)
    c = Couplets(model)
    c.vocab, c.net = small, model.for_decoding(small.ids)
    for method in ("sample", "beam"):
        for upper in ["春夏秋冬，花开花落去", "山水"]:
            for cand in c.complete(upper, n=3, seed=0, method=method):
                assert len(cand.text) == len(upper)
                for ch, u in zip(cand.text, upper):
                    assert ch == u if u in PUNCTUATION else ch in "天地人"


def test_a_row_may_reuse_its_own_tokens_only_where_the_line_allows(vocab):
    """The no-repeat rule reads the row's own written tokens: a distinct line loses exactly those, a line
    with distinct=False loses none; nothing else in the mask depends on what was written."""
    tok = default_tokenizer()
    ids = [tok.id(ch) for ch in "天地人"]
    specs = [decode.LineSpec(prompt=[1], length=4, forced=[-1] * 4, repeat_of=list(range(4)), distinct=d)
             for d in (True, False)]
    rules = decode.Rules.build(specs, vocab)
    sub = vocab.to_sub[torch.tensor(ids)]
    out = torch.zeros(4, 4, dtype=torch.long)
    out[:, :3] = sub
    rows = torch.tensor([0, 1, 0, 1])
    allowed = decode.allowed_tokens(rules, vocab, rows, 3, out)
    assert not allowed[0, sub].any() and not allowed[2, sub].any() and allowed[1, sub].all()
    fresh = decode.allowed_tokens(rules, vocab, rows, 0, out)
    others = torch.ones(len(vocab), dtype=torch.bool)
    others[sub] = False
    assert torch.equal(allowed[:, others], fresh[:, others]) and torch.equal(allowed[1], fresh[1])


def test_pick_never_picks_a_masked_token():
    torch.manual_seed(0)
    logits = torch.randn(64, 50)
    logits[:, ::2] = -math.inf
    for search in [decode.Search(), decode.Search(top_k=3), decode.Search(top_p=0.5), decode.Search(temperature=3)]:
        for u in (torch.zeros(64), torch.full((64,), 1 - 1e-7), torch.rand(64)):
            token = decode.pick(logits, u, search)
            assert (token % 2 == 1).all()
    # top_k=1, a tiny top_p and temperature 0 are all the argmax
    u = torch.rand(64)
    for search in [decode.Search(top_k=1), decode.Search(top_p=1e-6), decode.Search(temperature=0)]:
        assert torch.equal(decode.pick(logits, u, search), logits.argmax(1))


def test_rule_score_is_the_rhythm_opposition(couplets):
    """The rule score is rules.rhythm_opposition, with the decoder's tones: a 下联 character whose simplified and
    traditional readings differ in tone (缥 piāo, 縹 piǎo) has none (api.vocab_tables)."""

    def decoder_tones(lower: str) -> str:
        simplified = to_simplified(lower)
        return "".join(ch if tone_of(s) == tone_of(to_traditional(s)) else "□" for ch, s in zip(lower, simplified))

    for upper in random_uppers(10, seed=4):
        for c in couplets.complete(upper, n=2, seed=0):
            expected = rhythm_opposition(upper, decoder_tones(c.text))
            assert c.rule_score == pytest.approx(decode.RULE_NEUTRAL if expected is None else expected)
            assert c.score == pytest.approx(c.logprob + decode.RULE_WEIGHT * c.rule_score)


# --- the search -------------------------------------------------------------------------------------------------
def _decode_both(model, couplets, uppers, search, seed):
    specs = [couplets.lower_spec(u, Options(seed=seed)) for u in uppers]
    cached = decode.generate(model.for_decoding(couplets.vocab.ids), couplets.vocab, specs, search)
    full = decode.generate(gpt.Recompute(model, couplets.vocab.ids), couplets.vocab, specs, search)
    return cached, full


@pytest.mark.parametrize("search", [decode.Search(temperature=0, n=1), decode.Search(n=4),
                                    decode.Search(n=3, top_k=20, top_p=0.9), decode.Search(method="beam", n=3)])
def test_kv_cache_equals_full_recompute(model, couplets, search):
    uppers = ["花开花落，春去春来", "丹枫江冷人初去", "天连水水连天", "海阔凭鱼跃"]
    cached, full = _decode_both(model, couplets, uppers, search, seed=5)
    for a, b in zip(cached, full):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert [h.logprob for h in a] == pytest.approx([h.logprob for h in b], abs=1e-4)


def test_beam_width_one_is_greedy(couplets):
    uppers = random_uppers(6, seed=6)
    greedy = couplets.complete_batch(uppers, n=1, temperature=0)
    beam = couplets.complete_batch(uppers, n=1, method="beam")
    assert [g[0].text for g in greedy] == [b[0].text for b in beam]
    assert [g[0].logprob for g in greedy] == pytest.approx([b[0].logprob for b in beam], abs=1e-5)


def test_seeded_sampling_is_reproducible_and_batch_independent(couplets):
    uppers = random_uppers(6, seed=7)
    target = "丹枫江冷人初去"
    alone = [c.text for c in couplets.complete(target, n=5, seed=11)]
    assert alone == [c.text for c in couplets.complete(target, n=5, seed=11)]
    for others in (uppers[:3], uppers):
        batch = couplets.complete_batch([*others, target], n=5, seed=11)
        assert [c.text for c in batch[-1]] == alone
    assert [c.text for c in couplets.complete(target, n=5, seed=12)] != alone


def test_candidates_are_ranked_best_first(couplets):
    for method in ("sample", "beam"):
        scores = [c.score for c in couplets.complete("花开花落，春去春来", n=5, seed=0, method=method)]
        assert scores == sorted(scores, reverse=True)
        # beams fill all n when the rules leave more lines than that; sampling promises up to n
        assert len(scores) == 5 if method == "beam" else 1 <= len(scores) <= 5


# --- fewer lines than asked: a model whose samples repeat -------------------------------------------------------
PEAKED = "天风花山"
"""The characters the peaked model writes: all level-tone (平), so the final-tone rule keeps every one."""


@pytest.fixture(scope="module")
def peaked():
    """Couplets over a tiny model that puts all but ~1e-9 of its mass, in equal parts, on the four characters
    of PEAKED whatever it reads: samples repeat, and a line of k free positions has only 4!/(4-k)! forms."""
    tok = default_tokenizer()
    model = build_model("tiny", dropout=0.0, seed=0).eval()
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 1.0  # the final hidden state is e_0 at every position ...
        model.transformer.wte.weight[:, 0] = 0.0  # ... so the logits are column 0 of the (tied) embedding
        model.transformer.wte.weight[[tok.id(ch) for ch in PEAKED], 0] = 30.0  # others: e^-30 each
    assert all(tone_of(ch) == "平" for ch in PEAKED)
    return Couplets(model)


def test_sampling_tops_up_lines_whose_samples_repeat(peaked, monkeypatch):
    """明月 has 4 x 3 = 12 possible 下联 here, so 5 draws often repeat one: the later rounds (SAMPLE_ROUNDS)
    draw again for those lines and find the missing ones."""
    uppers, seeds = ["明月"] * 12, list(range(12))
    full = peaked.complete_batch(uppers, n=5, seed=seeds, first="sample")
    monkeypatch.setattr(decode, "SAMPLE_ROUNDS", 1)
    first = peaked.complete_batch(uppers, n=5, seed=seeds, first="sample")
    short = [i for i, cands in enumerate(first) if len(cands) < 5]
    assert short, "no line repeated a sample in the first round: the test would not exercise the top-up"
    for i, (a, b) in enumerate(zip(first, full)):
        for cands in (a, b):
            texts = [c.text for c in cands]
            assert len(set(texts)) == len(texts) and set("".join(texts)) <= set(PEAKED)
            assert all(c.checks.valid for c in cands)
        if i not in short:
            assert [c.text for c in a] == [c.text for c in b]  # the first round is the same draws
        assert len(a) <= len(b) <= 5
    # the later rounds found lines the first missed (12 lines: their draws can repeat too, so not always all 5)
    assert sum(len(full[i]) for i in short) > sum(len(first[i]) for i in short)
    assert any(len(full[i]) == 5 for i in short)


def test_top_up_rounds_with_lines_of_different_lengths(peaked):
    """A top-up round draws only for the lines still short of n. When those are all shorter than the batch's
    longest line, every row of the round finishes early: the round ends there (it once stepped an empty batch
    and crashed). 月 has 4 possible lines, so asking for 6 always tops it up; 明月春 has 24 and finishes first.
    All samples here (first="sample"): the peaked model's lines tie exactly, so a beam-search lead would be
    decided by rounding, which differs between batch shapes."""
    uppers = ["明月春", "月"] * 3
    together = peaked.complete_batch(uppers, n=6, seed=list(range(6)), first="sample")
    for upper, cands, seed in zip(uppers, together, range(6)):
        texts = [c.text for c in cands]
        assert len(set(texts)) == len(texts) and all(c.checks.valid and len(c.text) == len(upper) for c in cands)
        assert texts == [c.text for c in peaked.complete(upper, n=6, seed=seed, first="sample")]  # as alone
    assert all(1 <= len(cands) <= 4 for cands in together[1::2])  # 月 has no more than 4 lines to give


@pytest.mark.parametrize("upper, possible", [("月", 4), ("明月", 12)])
def test_sampling_returns_fewer_lines_when_no_more_exist(peaked, upper, possible):
    """Asked for more 下联 than the model can write, sampling returns the distinct ones it found (all of them
    here, after the top-up rounds), each valid: fewer than n, never a duplicate or a junk line."""
    every = {"".join(p) for p in permutations(PEAKED, len(upper))}  # distinct characters, none of the 上联's
    assert len(every) == possible
    for seed in range(3):
        cands = peaked.complete(upper, n=possible + 4, seed=seed, first="sample")
        texts = [c.text for c in cands]
        assert len(set(texts)) == len(texts) and set(texts) == every  # n + 4 draws, then the top-up: all
        assert all(c.checks.valid for c in cands)
    # Beam search fills its n beams from the rest of the vocabulary (e^-30 each): the rules allow thousands.
    beams = peaked.complete(upper, n=possible + 4, method="beam")
    assert len({c.text for c in beams}) == possible + 4 and all(c.checks.valid for c in beams)
    assert {c.text for c in beams[:possible]} == every


def test_search_config_rejects_bad_values():
    for bad in [dict(method="greedy"), dict(n=0), dict(temperature=-1), dict(top_k=-1), dict(top_p=0),
                dict(temperature=math.nan), dict(temperature=math.inf), dict(temperature=decode.MAX_TEMPERATURE * 2)]:
        with pytest.raises(ValueError):
            decode.Search(**bad)


@pytest.mark.parametrize("temperature", [1e-300, 1e-40, decode.GREEDY_BELOW / 2])
def test_tiny_temperatures_are_greedy_with_finite_scores(couplets, temperature):
    """Log-probs divided by 1e-300 overflow to -inf and the softmax turns NaN: such temperatures are greedy."""
    uppers = ["丹枫江冷人初去", "花开花落，春去春来"]
    greedy = couplets.complete_batch(uppers, n=5, temperature=0)
    tiny = couplets.complete_batch(uppers, n=5, temperature=temperature)
    assert [[c.text for c in cs] for cs in tiny] == [[c.text for c in cs] for cs in greedy]
    for cands in tiny:
        assert len(cands) == 1 and math.isfinite(cands[0].score) and cands[0].checks.valid
    pairs = couplets.acrostic("春福", n=2, temperature=temperature)
    assert pairs and all(math.isfinite(p.score) and p.checks.valid for p in pairs)


def test_rows_with_non_finite_log_probs_are_never_candidates(couplets, vocab):
    """_collect drops a row whose score is not finite, whatever its form (the guard behind every entry point)."""
    spec = couplets.lower_spec("丹枫江冷人初去", Options())
    rules = decode.Rules.build([spec], vocab)
    found = [{}]
    out = torch.tensor([[vocab.to_sub[704]] * 7, [vocab.to_sub[1744]] * 7])
    decode._collect(found, torch.tensor([0, 0]), out, torch.tensor([math.nan, -2.0]), rules, vocab)
    assert [h.logprob for h in found[0].values()] == [-2.0]


def test_output_layer_restricted_to_emittable_tokens_changes_nothing(model, couplets, vocab):
    """The decoder computes logits for the ~7.3k emittable tokens only; over the full vocabulary (the other
    tokens masked) it writes the same lines with the same log-probs."""
    han = torch.zeros(vocab.size, dtype=torch.bool)
    han[vocab.ids] = vocab.han
    tone = torch.zeros(vocab.size, dtype=torch.int8)
    tone[vocab.ids] = vocab.tone
    full = decode.Vocab(ids=torch.arange(vocab.size), han=han, tone=tone, size=vocab.size)
    specs = [couplets.lower_spec(u, Options(seed=3)) for u in ["花开花落，春去春来", "丹枫江冷人初去"]]
    for search in (decode.Search(n=3), decode.Search(method="beam", n=3)):
        a = decode.generate(model.for_decoding(vocab.ids), vocab, specs, search)
        b = decode.generate(model.for_decoding(full.ids), full, specs, search)
        for x, y in zip(a, b):
            assert [h.tokens for h in x] == [h.tokens for h in y]
            assert [h.logprob for h in x] == pytest.approx([h.logprob for h in y], abs=1e-4)


def test_chunking_changes_nothing(couplets, monkeypatch):
    uppers = ["丹枫江冷人初去", "海阔凭鱼跃", "春回大地千山秀", "一帆风顺年年好", "天连水水连天"]
    whole = couplets.complete_batch(uppers, n=3, seed=2)
    monkeypatch.setattr(decode, "MAX_BATCH_POSITIONS", 40)  # one 7-character line (16 positions × 3 rows) a chunk
    chunked = couplets.complete_batch(uppers, n=3, seed=2)
    assert [[c.text for c in cs] for cs in whole] == [[c.text for c in cs] for cs in chunked]


@pytest.mark.parametrize("search", [decode.Search(n=4), decode.Search(method="beam", n=3)])
def test_lines_of_different_lengths_decode_together_as_if_alone(model, couplets, search):
    """One pass over lines of many lengths (attention per prompt length; sampling drops finished rows, beams
    write fillers after short lines) writes what each line's own pass writes, with the same log-probs."""
    uppers = random_uppers(10, seed=9)
    assert len({len(u) for u in uppers}) > 3
    specs = [couplets.lower_spec(u, Options(seed=i)) for i, u in enumerate(uppers)]
    together = decode.generate(couplets.net, couplets.vocab, specs, search)
    for spec, hyps in zip(specs, together):
        (alone,) = decode.generate(couplets.net, couplets.vocab, [spec], search)
        assert [h.tokens for h in hyps] == [h.tokens for h in alone]
        assert [h.logprob for h in hyps] == pytest.approx([h.logprob for h in alone], abs=1e-4)
        assert all(len(h.tokens) == spec.length for h in hyps)


def test_greedy_first_puts_the_greedy_line_among_varied_samples(couplets):
    """first="greedy": each line's first sampled row takes the argmax at every step, so the greedy line is always
    a candidate (and the best one scores at least as high); the rest are samples, and seeded results still do
    not depend on the batch."""
    uppers = random_uppers(8, seed=9)
    greedy = [cs[0].text for cs in couplets.complete_batch(uppers, n=1, temperature=0)]
    mixed = couplets.complete_batch(uppers, n=4, seed=2, temperature=0.8, first="greedy")
    plain = couplets.complete_batch(uppers, n=4, seed=2, temperature=0.8)
    for g, cands, others in zip(greedy, mixed, plain):
        texts = [c.text for c in cands]
        assert g in texts and len(set(texts)) == len(texts) and all(c.checks.valid for c in cands)
        best = max(c.score for c in cands)
        assert cands[0].score == best and best >= next(c.score for c in cands if c.text == g)
    assert [[c.text for c in cs] for cs in mixed] != [[c.text for c in cs] for cs in plain]
    alone = couplets.complete(uppers[3], n=4, seed=2, temperature=0.8, first="greedy")
    assert [c.text for c in alone] == [c.text for c in mixed[3]]


def test_beam_first_leads_with_the_beam_line_then_varied_samples(couplets):
    """first="beam": the first candidate is beam search's best line (width LEAD_BEAM), the rest are the sampled
    lines that differ from it, best first, n in all where they exist; seeded results do not depend on the batch."""
    uppers = random_uppers(8, seed=10)
    beams = couplets.complete_batch(uppers, n=decode.LEAD_BEAM, method="beam")
    samples = couplets.complete_batch(uppers, n=4, seed=3)
    mixed = couplets.complete_batch(uppers, n=4, seed=3, first="beam")
    for beam, sampled, cands in zip(beams, samples, mixed):
        assert cands[0].text == beam[0].text and cands[0].score == pytest.approx(beam[0].score)
        rest = [c.text for c in cands[1:]]
        assert rest == [c.text for c in sampled if c.text != beam[0].text][:3]
        assert len(set(c.text for c in cands)) == len(cands) and all(c.checks.valid for c in cands)
    assert [c.text for c in couplets.complete(uppers[5], n=4, seed=3, first="beam")] == [c.text for c in mixed[5]]
    assert [c.text for c in couplets.complete(uppers[0], n=1, first="beam")] == [beams[0][0].text]
    with pytest.raises(ValueError, match="first must be one of"):
        decode.Search(first="best")


# --- options row by row, and lines withdrawn mid-pass ----------------------------------------------------------
def _pick_as_before(logits, u, search):
    """decode.pick as it was when a batch shared one temperature, top-k and top-p (scalars): the reference a row
    with its own options must match exactly."""
    if search.greedy:
        return logits.argmax(dim=1)
    probs = logits.exp() if search.temperature == 1 else torch.softmax(logits / search.temperature, dim=1)
    if search.top_k:
        kth = probs.topk(min(search.top_k, probs.shape[1]), dim=1).values[:, -1:]
        probs = torch.where(probs >= kth, probs, 0.0)
    if search.top_p < 1:
        sorted_p, order = probs.sort(dim=1, descending=True)
        before = sorted_p.cumsum(1) - sorted_p
        sorted_p = torch.where(before < search.top_p * sorted_p.sum(1, keepdim=True), sorted_p, 0.0)
        probs = torch.zeros_like(probs).scatter_(1, order, sorted_p)
    cdf = probs.cumsum(dim=1)
    x = (u.to(cdf) * cdf[:, -1])[:, None]
    token = torch.searchsorted(cdf, x, right=True)[:, 0].clamp(max=probs.shape[1] - 1)
    bad = probs.gather(1, token[:, None])[:, 0] <= 0
    return torch.where(bad, logits.argmax(dim=1), token)


def test_pick_with_options_row_by_row_is_each_row_as_before():
    """Rows with different temperature, top-k and top-p in one call: each row picks exactly what the scalar pick
    of before picked for it alone, across many uniforms (so every part of each distribution is reached)."""
    gen = torch.Generator().manual_seed(0)
    options = [(t, k, p) for t in (0.5, 1.0, 1.7) for k in (0, 1, 7, 300, 2000) for p in (1.0, 0.9, 0.3)]
    logits = torch.log_softmax(3 * torch.randn(len(options), 1500, generator=gen), dim=1)
    logits[:, ::3] = -math.inf  # masked tokens, as the decoder passes them
    logits = torch.log_softmax(logits, dim=1)
    rows = decode.Sampling(temperature=torch.tensor([t for t, _, _ in options]),
                           top_k=torch.tensor([k for _, k, _ in options]),
                           top_p=torch.tensor([p for _, _, p in options]))
    search = decode.Search()
    differs = 0
    for _ in range(50):
        u = torch.rand(len(options), generator=gen)
        mixed = decode.pick(logits, u, search, rows)
        for r, (t, k, p) in enumerate(options):
            alone = _pick_as_before(logits[r:r + 1], u[r:r + 1], decode.Search(temperature=t, top_k=k, top_p=p))
            assert int(mixed[r]) == int(alone[0]), (t, k, p)
        differs += int((mixed != _pick_as_before(logits, u, search)).sum())
    assert differs > 100  # the rows' own options were used, not the search's


def test_lines_with_their_own_sampling_options_decode_as_if_alone(couplets):
    """Lines with different temperature, top-k and top-p share one pass (serve batches requests this way), and
    each seeded line writes exactly what it writes alone with its options, for every kind of first candidate."""
    uppers = random_uppers(6, seed=12)
    temps, ks, ps = [0.6, 1.0, 1.4, 1.0, 0.9, 2.0], [0, 5, 0, 50, 3, 0], [1.0, 0.8, 0.95, 1.0, 0.5, 1.0]
    for first in ("sample", "greedy", "beam"):
        together = couplets.complete_batch(uppers, n=4, seed=list(range(6)), temperature=temps, top_k=ks, top_p=ps,
                                           first=first)
        for i, upper in enumerate(uppers):
            alone = couplets.complete(upper, n=4, seed=i, temperature=temps[i], top_k=ks[i], top_p=ps[i], first=first)
            assert [c.text for c in together[i]] == [c.text for c in alone], (first, upper)
            assert [c.logprob for c in together[i]] == pytest.approx([c.logprob for c in alone], abs=1e-4)
    # The options really reach each line: the same 上联 and seed with other options give other lines.
    same = couplets.complete_batch([uppers[0]] * 2, n=4, seed=1, temperature=[0.5, 2.0], top_k=[0, 0], top_p=[1, 1])
    assert [c.text for c in same[0]] != [c.text for c in same[1]]
    # Greedy and sampled lines differ in shape (one row, no lead beam): not in one pass.
    with pytest.raises(ValueError, match="not both greedy"):
        couplets.complete_batch(uppers[:2], n=3, temperature=[0, 1.0])
    with pytest.raises(ValueError, match="2 temperatures for 3"):
        couplets.complete_batch(uppers[:3], temperature=[1.0, 1.0])


class _CountingNet:
    """A decoder network that counts the rows it prefills and the rows it steps (the work decoding costs)."""

    def __init__(self, net):
        self.net, self.rows_started, self.row_steps, self.steps = net, 0, 0, 0

    def start(self, prompts, new_tokens):
        self.rows_started += len(prompts)
        state, logits = self.net.start(prompts, new_tokens)
        return _CountingState(self, state), logits


class _CountingState:
    def __init__(self, owner, state):
        self.owner, self.state = owner, state

    def select(self, index):
        return _CountingState(self.owner, self.state.select(index))

    def step(self, tokens):
        self.owner.row_steps += tokens.numel()
        self.owner.steps += 1
        return self.state.step(tokens)


class _DoublingNet:
    """The tiny model with one character made the likeliest first choice by `lead` nats, and `penalty` nats less
    likely right after itself: a model that says the character is never written twice."""

    def __init__(self, net, sub: int, vocab_id: int, lead: float, penalty: float):
        self.net, self.sub, self.id, self.lead, self.penalty = net, sub, vocab_id, lead, penalty

    def start(self, prompts, new_tokens):
        state, logits = self.net.start(prompts, new_tokens)
        logits = logits.clone()
        logits[:, self.sub] += self.lead
        return _DoublingState(self, state), logits


class _DoublingState:
    def __init__(self, owner, state):
        self.owner, self.state = owner, state

    def select(self, index):
        return _DoublingState(self.owner, self.state.select(index))

    def step(self, tokens):
        logits = self.state.step(tokens).clone()
        logits[tokens == self.owner.id, self.owner.sub] -= self.owner.penalty
        return logits


def test_a_forced_repeat_costs_what_the_model_says_of_it(couplets, vocab):
    """重字 copies are forced, but they are scored: a character the model will not double (杜 here) loses the
    lead of a beam that must double it, and a candidate's log-prob counts the copy."""
    spec = couplets.lower_spec("风风雨雨", Options())
    z = default_tokenizer().encode_chars("杜")[0]
    search = decode.Search(method="beam", n=3)

    def best(penalty):
        net = _DoublingNet(couplets.net, int(vocab.to_sub[z]), z, lead=8.0, penalty=penalty)
        return decode.generate(net, vocab, [spec], search)[0][0]

    free = best(0.0)
    assert free.tokens[:2] == [z, z]  # likeliest first, and doubling it costs nothing
    punished = best(30.0)
    assert punished.tokens[0] != z and punished.score > free.score - 30.0 / 4
    # Sampling (top-k 1: always the likeliest) writes the double; its log-prob carries the copy's cost.
    net = _DoublingNet(couplets.net, int(vocab.to_sub[z]), z, lead=8.0, penalty=30.0)
    sampled = decode.generate(net, vocab, [spec], decode.Search(n=2, top_k=1))[0]
    assert sampled[0].tokens[:2] == [z, z] and sampled[0].logprob < -30.0 / 4


@pytest.mark.parametrize("search", [decode.Search(n=4), decode.Search(n=4, first="beam"),
                                    decode.Search(n=3, method="beam")])
def test_a_withdrawn_line_leaves_the_pass_at_the_next_step(couplets, search):
    """A line whose `wanted` turns False mid-pass stops costing work at the next step and gets no candidates; the
    other lines write exactly what they write without it. A line withdrawn before the pass is never prefilled."""
    # The long one is withdrawn; the others are of one length, so beams split them into passes the same way.
    uppers = ["一帆风顺年年好", "春风送暖千家乐，瑞雪迎春万户欢", "丹枫江冷人初去"]
    specs = [couplets.lower_spec(u, Options(seed=i)) for i, u in enumerate(uppers)]
    others = [specs[0], specs[2]]
    plain = _CountingNet(couplets.net)
    expected = decode.generate(plain, couplets.vocab, others, search)
    full = _CountingNet(couplets.net)
    decode.generate(full, couplets.vocab, specs, search)
    counting = _CountingNet(couplets.net)
    leave_after = 3  # decoding steps the long line takes part in

    def wanted():
        return counting.steps < leave_after

    got = decode.generate(counting, couplets.vocab, [specs[0], replace(specs[1], wanted=wanted), specs[2]], search)
    assert got[1] == [] and [[h.tokens for h in hs] for hs in (got[0], got[2])] == \
        [[h.tokens for h in hs] for hs in expected]
    # its rows in the first pass (its 上联 repeats 春: a sampled line with a 重字 copy draws COPY_DRAWS times the rows)
    rows = decode.LEAD_BEAM if search.first == "beam" else search.n * decode.COPY_DRAWS
    assert counting.row_steps <= plain.row_steps + rows * leave_after  # it left after its first steps
    assert full.row_steps >= plain.row_steps + search.n * (len(uppers[1]) - 1)  # what staying would cost
    # Withdrawn before the pass: never prefilled, never stepped.
    idle = _CountingNet(couplets.net)
    got = decode.generate(idle, couplets.vocab, [specs[0], replace(specs[1], wanted=lambda: False), specs[2]], search)
    assert got[1] == [] and (idle.rows_started, idle.row_steps) == (plain.rows_started, plain.row_steps)


def test_a_withdrawn_acrostic_stops(couplets):
    """Couplets.acrostic's `wanted`: False before it starts, nothing is decoded; turned False mid-way, [] comes
    back. complete_batch passes each 上联 its own."""
    assert couplets.acrostic("春福", length=7, n=2, wanted=lambda: False) == []
    calls = []

    def wanted():
        calls.append(1)
        return len(calls) < 5

    assert couplets.acrostic("春福", length=7, n=2, seed=1, wanted=wanted) == []
    kept = couplets.acrostic("春福", length=7, n=2, seed=1, wanted=lambda: True)
    assert kept and kept == couplets.acrostic("春福", length=7, n=2, seed=1)
    out = couplets.complete_batch(["春风", "秋月"], n=2, seed=1, wanted=[lambda: False, lambda: True])
    assert out[0] == [] and [c.text for c in out[1]] == [c.text for c in couplets.complete("秋月", n=2, seed=1)]


def test_the_fast_descending_sort_is_torch_s_sort_with_ties_by_index():
    """decode._sort_descending (one radix-sorted int64 key per element, for top-p) gives exactly the values of
    torch's row-wise float sort, and orders equal values by index; rows of every size, zeros and ties included."""
    gen = torch.Generator().manual_seed(0)
    for rows, width in ((1, 1), (3, 7), (40, 7300), (5, 20000)):
        probs = torch.softmax(4 * torch.randn(rows, width, generator=gen), dim=1)
        probs[:, ::5] = 0.0  # masked tokens
        probs[:, 1:4] = probs[:, 7:8] if width > 7 else probs[:, 1:4]  # ties
        values, order = decode._sort_descending(probs)
        assert torch.equal(values, probs.sort(dim=1, descending=True).values)
        assert torch.equal(probs.gather(1, order), values)
        assert torch.equal(order.sort(dim=1).values, torch.arange(width).expand(rows, width))  # a permutation
        tied = values[:, 1:] == values[:, :-1]
        assert (order[:, 1:][tied] > order[:, :-1][tied]).all()  # equal values: lower index first


def test_a_bias_steers_the_beam_and_stays_out_of_the_log_prob(couplets, vocab):
    """generate's bias (api's calibration) is added to each written token's score: a character made costly leaves
    the beam's lines, a bias every token pays alike changes no line and shifts each score by exactly itself, and
    the log-prob a candidate reports stays the model's own."""
    spec = couplets.lower_spec("丹枫江冷人初去", Options())
    search = decode.Search(method="beam", n=3)
    plain = decode.generate(couplets.net, vocab, [spec], search)[0]
    costly = plain[0].tokens[0]
    bias = torch.zeros(len(vocab))
    bias[int(vocab.to_sub[costly])] = -50.0
    steered = decode.generate(couplets.net, vocab, [spec], search, bias=bias)[0]
    assert steered and all(costly not in h.tokens for h in steered)
    for h in steered:  # the costly token is in none of them: the score is the plain one
        assert h.score == pytest.approx(h.logprob + decode.RULE_WEIGHT * h.rule_score, abs=1e-5)
    for kind in (search, decode.Search(n=3), decode.Search(n=3, first="beam")):
        spec_seeded = replace(spec, seed=3)
        before = decode.generate(couplets.net, vocab, [spec_seeded], kind)[0]
        after = decode.generate(couplets.net, vocab, [spec_seeded], kind, bias=torch.full((len(vocab),), -1.0))[0]
        # the same lines (a sample draws from the model, the beam's order is unchanged), the same log-probs
        assert [h.tokens for h in after] == [h.tokens for h in before]
        for a, b in zip(after, before):
            assert a.logprob == pytest.approx(b.logprob, abs=1e-5)
            assert a.score == pytest.approx(b.score - 1.0, abs=1e-5)
    with pytest.raises(ValueError, match="sub-vocabulary"):
        decode.generate(couplets.net, vocab, [spec], search, bias=torch.zeros(3))


class _EchoNet:
    """The tiny model made to start with one character (`lead` nats ahead of the rest) and to repeat whatever it
    has just written (+`echo` nats), except that character, which it will not write twice (-`echo` nats)."""

    def __init__(self, net, vocab, vocab_id: int, lead: float, echo: float):
        self.net, self.vocab, self.id, self.lead, self.echo = net, vocab, vocab_id, lead, echo

    def start(self, prompts, new_tokens):
        state, logits = self.net.start(prompts, new_tokens)
        logits = logits.clone()
        logits[:, int(self.vocab.to_sub[self.id])] += self.lead
        return _EchoState(self, state), logits


class _EchoState:
    def __init__(self, owner, state):
        self.owner, self.state = owner, state

    def select(self, index):
        return _EchoState(self.owner, self.state.select(index))

    def step(self, tokens):
        logits = self.state.step(tokens).clone()
        sign = torch.where(tokens == self.owner.id, -1.0, 1.0)
        logits[torch.arange(len(tokens)), self.owner.vocab.to_sub[tokens]] += sign * self.owner.echo
        return logits


def test_a_sample_keeps_the_copies_the_model_would_make(couplets, vocab, monkeypatch):
    """A sample picks a character before its 重字 copy is forced. 杜 is this model's likeliest first character
    (about 30%), and the one it will not double; any other it doubles gladly. Sampling that keeps what it draws
    writes 杜杜 now and then; resampling by the copies' probability (COPY_DRAWS rows per candidate) does not."""
    spec = replace(couplets.lower_spec("风风雨雨", Options()), seed=0)
    z = default_tokenizer().encode_chars("杜")[0]
    net = _EchoNet(couplets.net, vocab, z, lead=8.0, echo=12.0)
    search = decode.Search(n=8)  # every candidate sampled
    got = decode.generate(net, vocab, [spec], search)[0]
    assert len(got) == 8 and not any(h.tokens[:2] == [z, z] for h in got)
    assert all(h.tokens[0] == h.tokens[1] and h.tokens[2] == h.tokens[3] for h in got)  # the form, as always
    monkeypatch.setattr(decode, "COPY_DRAWS", 1)  # what is drawn is kept, as before
    kept_all = decode.generate(net, vocab, [spec], search)[0]
    assert sum(h.tokens[:2] == [z, z] for h in kept_all) >= 1
    # a line without a copy draws as before: the same lines, whatever COPY_DRAWS is
    plain = replace(couplets.lower_spec("丹枫江冷人初去", Options()), seed=0)
    once = decode.generate(net, vocab, [plain], search)[0]
    monkeypatch.setattr(decode, "COPY_DRAWS", 4)
    assert [h.tokens for h in decode.generate(net, vocab, [plain], search)[0]] == [h.tokens for h in once]
