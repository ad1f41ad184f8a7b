"""The HTTP service in-process: every endpoint, every kind of bad request (4xx with a reason, and the
server still answers afterwards), timeouts, and that concurrent requests really share model calls."""

import asyncio
import contextlib
import dataclasses
import json
import math
import socket
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from loopback import free_port, serving

from duilian.decode import MAX_TEMPERATURE
from duilian.serve import (
    MAX_BODY_BYTES,
    MAX_DECODE_WORK,
    MAX_N,
    MAX_UPPER_CHARS,
    MicroBatcher,
    ServeConfig,
    StrictJSONResponse,
    create_app,
)
from duilian.text import CoupletInputError


# --- a real tiny random model, wrapped to record (and optionally hold or refuse) its calls ----------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import duilian
    from duilian.model import build_model

    model_dir = tmp_path_factory.mktemp("tiny-model")
    model = build_model("tiny", seed=0)
    model.config.duilian = {"lines": {"forward": 10, "backward": 0, "keywords": 5}}  # it may compose
    model.save_pretrained(model_dir)
    return duilian.load(model_dir)


class Recording:
    """The real Couplets, plus a record of every complete_batch call. `gate`: each call waits for it
    (to make requests slow); `refuse`: a character whose 上联 the model side rejects."""

    def __init__(self, couplets, gate: threading.Event | None = None, refuse: str | None = None):
        self.couplets, self.gate, self.refuse = couplets, gate, refuse
        self.max_chars, self.tokenizer, self.clean, self.read = (couplets.max_chars, couplets.tokenizer,
                                                                  couplets.clean, couplets.read)
        self.calls: list[tuple[list[str], dict]] = []

    def complete_batch(self, uppers, n=5, **options):
        self.calls.append((list(uppers), dict(options, n=n)))
        if self.gate is not None:
            self.gate.wait(10)
        if self.refuse and any(self.refuse in u for u in uppers):
            raise CoupletInputError(f"the model side refuses {self.refuse}")
        return self.couplets.complete_batch(uppers, n, **options)

    def acrostic(self, heads, length=7, n=5, **options):
        return self.couplets.acrostic(heads, length, n, **options)

    def compose(self, words, **options):
        return self.couplets.compose(words, **options)


@pytest.fixture
def model(tiny):
    return Recording(tiny)


@pytest.fixture
def client(model):
    with TestClient(create_app(model, ServeConfig(batch_wait_ms=1))) as c:
        yield c


def assert_good_couplets(response, upper, n=5):
    """A 200 with what the API promises: 1 to n candidates (fewer than n may come back: decode.Search), each
    right in form with finite scores, best first."""
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["upper"] == upper
    cands = data["candidates"]
    assert 1 <= len(cands) <= n
    for cand in cands:
        assert len(cand["text"]) == len(upper)
        assert {"same_length", "punctuation_aligned", "repeats_mirrored", "no_copy", "ends_level",
                "final_tone", "valid"} <= set(cand["checks"])
        assert cand["valid"] is True and cand["checks"]["valid"] is True, cand
        for key in ("score", "logprob", "rule_score"):
            assert isinstance(cand[key], float) and math.isfinite(cand[key]), cand
    scores = [cand["score"] for cand in cands][1:]  # the first may be a beam search's lead (Options.first="beam")
    assert scores == sorted(scores, reverse=True)
    assert len({cand["text"] for cand in cands}) == len(cands)  # distinct


def assert_same_answer(got, expected):
    """The same candidates, texts and form checks exactly; scores up to float summation order. A request
    batched with others runs its matmuls inside bigger ones, which may add in another order (it depends on
    the batch shape and the thread count): ~1e-6 relative (9.5e-7 seen with OMP_NUM_THREADS=2). Candidates
    are matched by text, as two whose scores are that close may swap places."""
    got, expected = got.json(), expected.json()
    assert got["upper"] == expected["upper"]
    by_text = {cand["text"]: cand for cand in got["candidates"]}
    assert sorted(by_text) == sorted(cand["text"] for cand in expected["candidates"])
    for want in expected["candidates"]:
        cand = by_text[want["text"]]
        assert (cand["valid"], cand["checks"]) == (want["valid"], want["checks"])
        for key in ("score", "logprob", "rule_score"):
            assert cand[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), (key, cand, want)


# --- endpoints --------------------------------------------------------------------------------
def test_couplets_normalises_and_returns_candidates_with_checks(client):
    r = client.post("/v1/couplets", json={"upper": " 海阔凭鱼跃, 天高任鸟飞 ", "n": 3, "seed": 1})
    assert_good_couplets(r, "海阔凭鱼跃，天高任鸟飞", n=3)
    assert all(c["text"][5] == "，" for c in r.json()["candidates"])


def test_options_reach_the_decoder(client, model):
    body = {"upper": "春风", "n": 2, "method": "beam", "temperature": 0.7, "top_k": 20, "top_p": 0.9,
            "seed": 5, "allow_upper_chars": True, "script": "traditional", "first": "greedy"}
    assert client.post("/v1/couplets", json=body).status_code == 200
    (uppers, options), = model.calls
    assert uppers == ["春风"]
    assert options == {"n": 2, "method": "beam", "temperature": 0.7, "top_k": 20, "top_p": 0.9, "seed": [5],
                       "allow_upper_chars": True, "script": "traditional", "hengpi": 0,
                       "first": "greedy", "pos": True, "lm_weight": None, "calibration_weight": None,
                       "reverse_weight": None, "pair_weight": None}
    # one seed per 上联; 词性对仗 always scored; ranking weights left out are null (the model's own)
    # Left out, the first candidate comes from beam search, as in the API.
    assert client.post("/v1/couplets", json={"upper": "春风"}).status_code == 200
    assert model.calls[-1][1]["first"] == "beam"
    r = client.post("/v1/couplets", json={"upper": "春风", "first": "best"})
    assert r.status_code == 422 and "first" in r.text


def test_acrostic(client):
    r = client.post("/v1/acrostic", json={"heads": "春福", "length": 5, "n": 2})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["heads"] == "春福" and data["length"] == 5 and 1 <= len(data["couplets"]) <= 2  # up to n
    for pair in data["couplets"]:
        assert pair["upper"][0] == "春" and pair["lower"][0] == "福" and len(pair["upper"]) == len(pair["lower"]) == 5
        assert pair["valid"] is True and pair["checks"]["valid"] is True and math.isfinite(pair["score"])
    scores = [pair["score"] for pair in data["couplets"]]
    assert scores == sorted(scores, reverse=True)


def test_acrostic_at_another_place_and_a_place_that_cannot_hold_it(client):
    r = client.post("/v1/acrostic", json={"heads": "伟娜", "position": 2, "n": 2, "seed": 1})
    assert r.status_code == 200, r.text
    assert all(p["upper"][1] == "伟" and p["lower"][1] == "娜" and p["valid"] for p in r.json()["couplets"])
    r = client.post("/v1/acrostic", json={"heads": "伟娜", "position": "last"})
    assert r.status_code == 422 and "娜 is oblique (仄): it cannot end the 下联" in r.json()["error"]
    r = client.post("/v1/acrostic", json={"heads": "伟娜", "position": 9})
    assert r.status_code == 422 and "past the end" in r.json()["error"]
    assert client.post("/v1/acrostic", json={"heads": "伟娜", "position": "middle"}).status_code == 422


def test_compose_gives_whole_couplets_with_three_banners(client):
    r = client.post("/v1/compose", json={"words": ["春", "福"], "length": 5, "n": 3, "seed": 1, "year": 2027})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["words"] == ["春", "福"] and data["year"] == 2027 and 1 <= len(data["couplets"]) <= 3
    for c in data["couplets"]:
        assert len(c["upper"]) == len(c["lower"]) == 5 and c["valid"] and len(c["hengpi"]) == 3
        assert c["themes"] == ["春", "福", "羊"] and isinstance(c["pos"], (float, type(None)))


@pytest.mark.parametrize("body, reason", [
    ({"words": []}, "at least 1 item"), ({"words": ["spring"]}, "Chinese characters only"),
    ({"words": ["春"], "occasion": "生日"}, "春节"), ({"words": ["春"], "year": 0}, "year"),
    ({"words": ["春"], "length": 1}, "length"), ({"words": ["春"], "n": 10, "length": 16}, "limit is"),
    ({"words": "春"}, "words"), ({"words": ["春"], "hengpi": 3}, "hengpi"),
])
def test_bad_compose_requests_get_4xx_with_a_reason(client, body, reason):
    r = client.post("/v1/compose", json=body)
    assert r.status_code == 422, r.text
    assert reason in r.json()["error"]
    assert client.post("/v1/compose", json={"words": ["春"], "n": 1}).status_code == 200


def test_healthz_page_docs_and_static_are_all_served_locally(client):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["max_chars"] == MAX_UPPER_CHARS and health["max_n"] == MAX_N
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'name="viewport"' in page.text and "/static/app.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/static/docs.js" in docs.text
    for path in ("/static/app.js", "/static/style.css", "/static/docs.js"):
        assert client.get(path).status_code == 200, path
    # Nothing the pages load comes from elsewhere (FastAPI's default /docs pulls swagger-ui from a CDN).
    for text in (page.text, docs.text, client.get("/static/app.js").text, client.get("/static/docs.js").text):
        assert "http://" not in text and "https://" not in text and "//cdn" not in text
    assert ".innerHTML" not in client.get("/static/app.js").text
    spec = client.get("/openapi.json").json()
    assert {"/v1/couplets", "/v1/acrostic", "/healthz"} <= set(spec["paths"])


# Temperatures this small once broke sampling: a 500 at 1e-300; "春？？？？？？" with `score: null` and
# `valid: true` between 1e-45 and 1e-38. Below decode.GREEDY_BELOW the decoder is greedy (one candidate).
@pytest.mark.parametrize("temperature", [0, 1e-40, 1e-300])
@pytest.mark.parametrize("method", ["sample", "beam"])
def test_tiny_temperatures_give_finite_scores_and_valid_form(client, temperature, method):
    r = client.post("/v1/couplets", json={"upper": "海阔凭鱼跃", "n": 3, "temperature": temperature,
                                          "method": method, "seed": 1})
    assert_good_couplets(r, "海阔凭鱼跃", n=1 if method == "sample" else 3)  # greedy sampling: one candidate
    assert all("？" not in cand["text"] for cand in r.json()["candidates"])
    r = client.post("/v1/acrostic", json={"heads": "春福", "n": 1, "temperature": temperature, "method": method})
    assert r.status_code == 200, r.text
    (pair,) = r.json()["couplets"]
    assert pair["upper"][0] == "春" and pair["lower"][0] == "福" and len(pair["upper"]) == len(pair["lower"]) == 7
    assert pair["checks"]["valid"] and math.isfinite(pair["score"]) and "？" not in pair["upper"] + pair["lower"], pair


class NonFinite(Recording):
    """The real model, plus a first answer whose numbers are not finite (what a decoder regression could give)."""

    def complete_batch(self, uppers, n=5, **options):
        return [[dataclasses.replace(cands[0], score=math.nan), dataclasses.replace(cands[0], logprob=-math.inf),
                 *cands] for cands in super().complete_batch(uppers, n, **options)]

    def acrostic(self, heads, length=7, n=5, **options):
        pairs = super().acrostic(heads, length, n, **options)
        return [dataclasses.replace(pairs[0], score=math.nan), *pairs]


class NestedNaN(Recording):
    """Answers whose JSON holds a NaN below the top level, where `encode` does not look."""

    def complete_batch(self, uppers, n=5, **options):
        class Entry:
            def __init__(self, cand):
                self.cand = cand

            def to_dict(self):
                return {**self.cand.to_dict(), "extra": [{"score": math.nan}]}

        return [[Entry(c) for c in cands] for cands in super().complete_batch(uppers, n, **options)]


def test_no_answer_carries_a_score_that_is_not_finite(tiny):
    with TestClient(create_app(NonFinite(tiny), ServeConfig(batch_wait_ms=1))) as c:
        r = c.post("/v1/couplets", json={"upper": "春风", "n": 2, "seed": 1})
        assert r.status_code == 200, r.text
        assert len(r.json()["candidates"]) == len(tiny.complete("春风", n=2, seed=1))  # the two bad ones left out
        r2 = c.post("/v1/acrostic", json={"heads": "春福", "n": 2, "seed": 1})
        assert r2.status_code == 200, r2.text
        assert len(r2.json()["couplets"]) == len(tiny.acrostic("春福", n=2, seed=1))
        for entries in (r.json()["candidates"], r2.json()["couplets"]):
            for entry in entries:
                numbers = [entry[k] for k in ("score", "logprob", "rule_score") if k in entry]
                assert all(isinstance(x, float) and math.isfinite(x) for x in numbers), entry
        assert not any(word in r.text + r2.text for word in ("NaN", "Infinity", '"score":null'))
    # One below the top level, where `encode` does not look: the response is refused, not written with null.
    with pytest.raises(ValueError):
        StrictJSONResponse({"score": math.nan, "valid": True})
    with TestClient(create_app(NestedNaN(tiny), ServeConfig(batch_wait_ms=1)), raise_server_exceptions=False) as c:
        r = c.post("/v1/couplets", json={"upper": "春风", "n": 2, "seed": 1})
        assert r.status_code == 500 and r.json() == {"error": "internal error: ValueError"}


# --- bad requests: 4xx with a reason, then the server still works -----------------------------
BAD_COUPLET_BODIES = [
    ("not json", b"{upper: ", 400, "JSON"),
    ("body is a list", b'["\xe6\x98\xa5"]', 422, "object"),
    ("missing upper", b'{"n": 5}', 422, "upper is required"),
    ("upper not a string", json.dumps({"upper": 5}), 422, "upper"),
    ("n as a string", json.dumps({"upper": "春风", "n": "5"}), 422, "n"),
    ("n as a bool", json.dumps({"upper": "春风", "n": True}), 422, "n"),
    ("temperature as text", json.dumps({"upper": "春风", "temperature": "hot"}), 422, "temperature"),
    # Python's JSON reader takes NaN and Infinity literals; NaN would pass a range check that only compares.
    ("temperature NaN", '{"upper": "春风", "temperature": NaN}', 422, "temperature"),
    ("temperature Infinity", '{"upper": "春风", "temperature": Infinity}', 422, "temperature"),
    ("temperature too high", json.dumps({"upper": "春风", "temperature": MAX_TEMPERATURE * 1.1}), 422, "temperature"),
    ("negative temperature", json.dumps({"upper": "春风", "temperature": -0.1}), 422, "temperature"),
    ("empty", json.dumps({"upper": ""}), 422, "empty"),
    ("only spaces", json.dumps({"upper": "   "}), 422, "empty"),
    ("no chinese", json.dumps({"upper": "hello"}), 422, "no Chinese"),
    ("emoji", json.dumps({"upper": "春风🌸"}), 422, "only Chinese"),
    ("control character", json.dumps({"upper": "春\x00风"}), 422, "control"),
    ("script tag", json.dumps({"upper": "<script>alert(1)</script>春"}), 422, "only Chinese"),
    ("too long", json.dumps({"upper": "春" * (MAX_UPPER_CHARS + 1)}), 422, f"limit is {MAX_UPPER_CHARS}"),
    ("100 KB string", json.dumps({"upper": "春" * 100_000}), 413, f"{MAX_BODY_BYTES} bytes"),
    ("n = 0", json.dumps({"upper": "春风", "n": 0}), 422, "n"),
    ("n too big", json.dumps({"upper": "春风", "n": MAX_N + 1}), 422, "n"),
    ("unknown option", json.dumps({"upper": "春风", "beams": 4}), 422, "unknown option 'beams'"),
    ("unknown method", json.dumps({"upper": "春风", "method": "greedy"}), 422, "method"),
    ("top_p out of range", json.dumps({"upper": "春风", "top_p": 1.5}), 422, "top_p"),
    ("negative seed", json.dumps({"upper": "春风", "seed": -1}), 422, "seed"),
]


@pytest.mark.parametrize("name, body, status, reason", BAD_COUPLET_BODIES, ids=[b[0] for b in BAD_COUPLET_BODIES])
def test_bad_couplet_requests_get_4xx_with_a_reason(client, model, name, body, status, reason):
    r = client.post("/v1/couplets", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert isinstance(error, str) and reason in error
    assert model.calls == []  # nothing bad reached the model
    assert_good_couplets(client.post("/v1/couplets", json={"upper": "春风"}), "春风")


BAD_ACROSTIC_BODIES = [
    ("same heads", {"heads": "春春"}, "heads must differ"),
    ("empty heads", {"heads": " "}, "heads are empty"),
    ("one head", {"heads": "春"}, "exactly two Chinese characters, got 1"),
    ("three heads", {"heads": "春夏秋"}, "exactly two Chinese characters, got 3"),
    ("latin heads", {"heads": "ab"}, "found 'ab'"),
    ("punctuation head", {"heads": "春，"}, "found '，'"),
    ("control character", {"heads": "春\x00"}, "found '\\x00'"),
    ("length too big", {"heads": "春福", "length": 100}, "length"),
    ("length too small", {"heads": "春福", "length": 1}, "length"),
    ("unknown option", {"heads": "春福", "rhyme": True}, "unknown option 'rhyme'"),
]


@pytest.mark.parametrize("name, body, reason", BAD_ACROSTIC_BODIES, ids=[b[0] for b in BAD_ACROSTIC_BODIES])
def test_bad_acrostic_requests_get_4xx_with_a_reason(client, name, body, reason):
    r = client.post("/v1/acrostic", json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert reason in error
    if "heads" in error:  # the client sent heads, not a 上联: clean_upper's reasons would say 上联
        assert "藏头" in error and "上联" not in error
    assert client.post("/v1/acrostic", json={"heads": "春福"}).status_code == 200


def test_work_beyond_the_limit_is_a_422_with_a_reason(client, model):
    # A 藏头 couplet writes n 上联 and api.ACROSTIC_LOWERS (3) 下联 for each: n x length x 4 characters.
    r = client.post("/v1/acrostic", json={"heads": "春福", "length": 32, "n": 10, "method": "beam", "top_k": 1000})
    assert r.status_code == 422, r.text
    assert "1280 characters of decoding" in r.json()["error"] and f"limit is {MAX_DECODE_WORK}" in r.json()["error"]
    assert model.calls == []
    # Just within the limit (16 x 10 x 4 = 640), and every couplet request (n x the 上联's length <= 320).
    assert client.post("/v1/acrostic", json={"heads": "春福", "length": 16, "n": 10}).status_code == 200
    assert client.post("/v1/acrostic", json={"heads": "春福", "length": 17, "n": 10}).status_code == 422
    assert MAX_N * MAX_UPPER_CHARS <= MAX_DECODE_WORK


def test_a_large_body_without_content_length_is_refused(client):
    chunks = (b'{"upper": "' + b"a" * 1000 for _ in range(10))  # streamed: no Content-Length header
    r = client.post("/v1/couplets", content=chunks, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "bytes" in r.json()["error"]
    assert_good_couplets(client.post("/v1/couplets", json={"upper": "春风"}), "春风")


@pytest.mark.parametrize("content_type", ["text/plain", "text/json", "application/notjson",
                                          "application/x-www-form-urlencoded", "application/jsonx"])
def test_a_body_that_is_not_declared_json_is_a_415(client, content_type):
    for path, body in (("/v1/couplets", {"upper": "春风"}), ("/v1/acrostic", {"heads": "春福"})):
        r = client.post(path, content=json.dumps(body), headers={"content-type": content_type})
        assert r.status_code == 415 and "application/json" in r.json()["error"], (path, r.text)


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON", "application/problem+json"])
def test_json_media_types_are_accepted(client, content_type):
    r = client.post("/v1/couplets", content=json.dumps({"upper": "春风"}), headers={"content-type": content_type})
    assert r.status_code == 200, r.text


def test_head_requests_for_the_pages(client):
    for path in ("/", "/docs", "/static/app.js"):
        r = client.head(path)
        assert r.status_code == 200 and r.content == b"", path
        assert int(r.headers["content-length"]) == len(client.get(path).content)


def test_unknown_path_and_method_are_json_errors(client):
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]
    r = client.get("/v1/couplets")
    assert r.status_code == 405 and r.json()["error"]


def test_model_errors_stay_with_their_request(tiny):
    # "坏" passes the server's checks but the model side refuses it: in a shared batch, the others still get answers.
    model = Recording(tiny, refuse="坏")
    app = create_app(model, ServeConfig(max_batch=8, batch_wait_ms=200, batch_gap_ms=200))
    results = _post_queued_together(app, model, [{"upper": u, "seed": 1} for u in ("春风", "坏事", "秋月")])
    assert [r.status_code for r in results] == [200, 422, 200]
    assert "refuses" in results[1].json()["error"]
    assert model.calls[0][0] == ["春风", "坏事", "秋月"]  # they did share a call


def test_timeout_is_a_504_with_a_reason_and_the_server_recovers(tiny):
    release = threading.Event()
    slow = Recording(tiny, gate=release)
    with TestClient(create_app(slow, ServeConfig(request_timeout_s=0.3, batch_wait_ms=0))) as c:
        r = c.post("/v1/couplets", json={"upper": "春风"})
        assert r.status_code == 504 and "no answer within 0.3 s" in r.json()["error"]
        release.set()
        assert_good_couplets(c.post("/v1/couplets", json={"upper": "秋月"}), "秋月")


def test_a_full_queue_is_a_503(tiny):
    release = threading.Event()
    slow = Recording(tiny, gate=release)
    app = create_app(slow, ServeConfig(max_batch=1, batch_wait_ms=0, max_queue=2))

    async def go():
        async with _client(app) as c:
            tasks = [asyncio.create_task(c.post("/v1/couplets", json={"upper": "春风"})) for _ in range(5)]
            # One request in the (held) model and two queued at most: the others are answered 503 at once.
            await _until(lambda: sum(t.done() for t in tasks) >= 2)
            release.set()
            return await asyncio.gather(*tasks)

    results = asyncio.run(go())
    codes = [r.status_code for r in results]
    assert 503 in codes and 200 in codes
    assert all("busy" in r.json()["error"] for r in results if r.status_code == 503)


# --- micro-batching ---------------------------------------------------------------------------
def _client(app):
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def _post_all(app, bodies, path="/v1/couplets"):
    async with _client(app) as c:
        return await asyncio.gather(*(c.post(path, json=b) for b in bodies))


async def _until(condition, timeout_s: float = 30):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def _post_queued_together(app, model: Recording, bodies: list[dict]) -> list:
    """Post `bodies` to /v1/couplets so that all of them wait in the queue before the batcher takes any: a
    first request (开门) holds the model (its call waits on an Event) until they are queued, then it is let
    go. Which requests share a model call then follows from the batching rules alone, not from how fast a
    busy machine sends them. Returns their responses; the holder's call is removed from model.calls."""
    gate = threading.Event()

    async def go():
        async with _client(app) as c:
            holder = asyncio.create_task(c.post("/v1/couplets", json={"upper": "开门"}))
            await _until(lambda: len(model.calls) == 1)  # its batch has closed and the model holds it
            tasks = [asyncio.create_task(c.post("/v1/couplets", json=b)) for b in bodies]
            await _until(lambda: app.state.batcher.waiting == len(bodies))
            gate.set()
            assert (await holder).status_code == 200
            return await asyncio.gather(*tasks)

    model.gate = gate
    try:
        results = asyncio.run(go())
    finally:
        model.gate = None
        gate.set()
    assert model.calls.pop(0)[0] == ["开门"]
    return results


def test_concurrent_requests_share_model_calls(model):
    app = create_app(model, ServeConfig(max_batch=16, batch_wait_ms=200, batch_gap_ms=200))
    uppers = ["春风", "秋月", "夏雨", "冬雪", "青山", "绿水", "白云", "明月"]
    results = _post_queued_together(app, model, [{"upper": u, "seed": 3} for u in uppers])
    for r, u in zip(results, uppers):
        assert_good_couplets(r, u)  # each answer belongs to its own request
    assert [sorted(batch) for batch, _ in model.calls] == [sorted(uppers)]  # one call for all


def test_a_seeded_request_gets_the_same_answer_alone_or_batched(model):
    alone = asyncio.run(_post_all(create_app(model, ServeConfig(max_batch=1)), [{"upper": "春风得意", "seed": 11}]))[0]
    others = ["秋月无边", "春风得意", "夏雨连天", "冬雪映梅"]
    model.calls.clear()
    batched = _post_queued_together(create_app(model, ServeConfig(max_batch=8, batch_wait_ms=200, batch_gap_ms=200)),
                                    model, [{"upper": u, "seed": 11} for u in others])[1]
    assert [len(batch) for batch, _ in model.calls] == [4]  # it really was decoded with others
    assert_good_couplets(alone, "春风得意")
    assert_good_couplets(batched, "春风得意")
    assert_same_answer(batched, alone)


def test_batches_only_mix_requests_with_the_same_options(model):
    app = create_app(model, ServeConfig(max_batch=16, batch_wait_ms=200, batch_gap_ms=200))
    bodies = [{"upper": u, "seed": s, "n": n} for u in ("春风", "秋月") for s in (1, 2) for n in (2, 3)] * 2
    results = _post_queued_together(app, model, bodies)
    assert sorted(options["n"] for _, options in model.calls) == [2, 3]  # one per n: seeds differ row by row
    for r, b in zip(results, bodies):
        assert_good_couplets(r, b["upper"], n=b["n"])


def test_requests_with_different_seeds_share_a_call_and_keep_their_answers(model):
    bodies = [{"upper": u, "seed": s} for u, s in (("春风得意", 1), ("秋月无边", 2), ("春风得意", 3), ("夏雨", None))]
    alone = [asyncio.run(_post_all(create_app(model, ServeConfig(max_batch=1)), [b]))[0] for b in bodies[:3]]
    model.calls.clear()
    batched = _post_queued_together(create_app(model, ServeConfig(max_batch=8, batch_wait_ms=200, batch_gap_ms=200)),
                                    model, bodies)
    (uppers, options), = model.calls  # one call, one seed per row
    assert sorted(zip(uppers, options["seed"]), key=str) == sorted(((b["upper"], b["seed"]) for b in bodies), key=str)
    for got, expected, body in zip(batched, alone, bodies):
        assert_good_couplets(got, body["upper"])
        assert_same_answer(got, expected)
    texts = [[cand["text"] for cand in r.json()["candidates"]] for r in batched]
    assert texts[0] != texts[2]  # same 上联, other seed
    assert_good_couplets(batched[3], "夏雨")


def test_max_batch_caps_the_batch(model):
    app = create_app(model, ServeConfig(max_batch=3, batch_wait_ms=200, batch_gap_ms=200))
    results = _post_queued_together(app, model, [{"upper": "春风"}] * 7)
    for r in results:
        assert_good_couplets(r, "春风")
    assert [len(batch) for batch, _ in model.calls] == [3, 3, 1]


def test_batcher_runs_groups_in_arrival_order_and_survives_errors():
    seen = []

    def run_group(key, items):
        seen.append((key, items))
        if key == ("boom",):
            raise RuntimeError("boom")
        return [f"{key[0]}:{i}" for i in items]

    async def go():
        b = MicroBatcher(run_group, max_batch=8, wait_s=0.05, max_queue=100)
        jobs = [b.submit(("a",), 1, 5), b.submit(("boom",), 2, 5), b.submit(("a",), 3, 5)]
        out = await asyncio.gather(*jobs, return_exceptions=True)
        after = await b.submit(("a",), 4, 5)
        b.close()
        return out, after

    out, after = asyncio.run(go())
    assert out[0] == "a:1" and out[2] == "a:3" and isinstance(out[1], RuntimeError)
    assert after == "a:4"
    assert seen[0] == (("a",), [1, 3])


def test_a_lone_request_waits_only_the_gap_not_the_whole_batch_window():
    async def go():
        b = MicroBatcher(lambda key, items: items, max_batch=8, wait_s=60, max_queue=10, gap_s=0.01)
        try:
            return await b.submit(("a",), "x", timeout_s=10)  # a 60 s wait would time out (ServiceError)
        finally:
            b.close()

    assert asyncio.run(go()) == "x"


def test_config_rejects_nonsense():
    with pytest.raises(ValueError):
        ServeConfig(max_batch=0)
    with pytest.raises(ValueError):
        ServeConfig(read_timeout_s=0)
    with pytest.raises(ValueError):
        ServeConfig(max_connections=0)
    with pytest.raises(ValueError):
        ServeConfig(request_timeout_s=0)
    with pytest.raises(ValueError):
        ServeConfig(batch_gap_ms=-1)


# --- the CLI ----------------------------------------------------------------------------------
def test_cli_flags(tmp_path, capsys):
    import argparse

    from duilian.cli import serve as serve_cli

    parser = argparse.ArgumentParser()
    serve_cli.register(parser)
    args = parser.parse_args(["--port", "9001", "--max-batch", "4", "--batch-wait-ms", "2.5"])
    assert (args.host, args.port, args.max_batch, args.batch_wait_ms, args.model) == ("127.0.0.1", 9001, 4, 2.5, None)
    args = parser.parse_args(["--read-timeout-s", "3", "--max-connections", "64"])
    assert serve_cli.server_config(args) == ServeConfig(read_timeout_s=3.0, max_connections=64)
    assert serve_cli.server_config(parser.parse_args([])) == ServeConfig()
    # Clear messages and exit code 2, not tracebacks.
    assert serve_cli.run(parser.parse_args(["--max-batch", "0"])) == 2
    assert "max_batch" in capsys.readouterr().err
    assert serve_cli.run(parser.parse_args(["--model", str(tmp_path / "nope")])) == 2
    assert "not a HuggingFace model directory" in capsys.readouterr().err


def test_int8_weights_from_the_config_answer_like_fp32(tmp_path):
    from duilian.gpt import check_int8_engine
    from duilian.model import build_model

    try:
        check_int8_engine()
    except ValueError as e:
        pytest.skip(str(e))
    build_model("tiny", seed=0).save_pretrained(tmp_path)
    uppers = ["春风得意", "海阔凭鱼跃", "丹枫江冷人初去", "花开花落，春去春来", "秋月", "明月松间照",
              "青山不老", "绿水长流"]
    scores = {}  # weights -> {(上联, 下联): score}
    for quantize in (None, "int8"):
        app = create_app(str(tmp_path), ServeConfig(quantize=quantize, batch_wait_ms=1))
        assert app.state.couplets.quantize == quantize
        with TestClient(app) as c:
            for upper in uppers:  # beam search: deterministic, so the two servers can be compared
                r = c.post("/v1/couplets", json={"upper": upper, "n": 3, "method": "beam"})
                assert_good_couplets(r, upper, n=3)
                scores.setdefault(quantize, {}).update({(upper, cand["text"]): cand["score"]
                                                        for cand in r.json()["candidates"]})
    # The tiny random model's distributions are nearly flat, so int8 rounding flips some near-ties: 16-17 of
    # the 24 下联 are shared on AVX2 and AVX-512 VNNI kernels, while a model with other weights (or broken
    # int8 weights) shares none. A shared 下联's score differs only by int8's error in its mean per-character
    # log-prob (its rule score is the same): <= 0.003 measured; test_decode bounds int8's mean per-token
    # log-prob error by 0.02 on every fbgemm path.
    shared = scores[None].keys() & scores["int8"].keys()
    assert len(shared) >= len(scores[None]) // 3, sorted(scores["int8"])
    for pair in shared:
        assert abs(scores["int8"][pair] - scores[None][pair]) < 0.02, pair


# --- a real server on loopback: hostile connections ---------------------------------------------
def _raw(url: str, data: bytes = b"") -> socket.socket:
    """A raw connection to the server at `url` that has sent `data`."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(data)
    return sock


def _post_bytes(body: dict, path: str = "/v1/couplets") -> bytes:
    data = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


def _until_closed(sock: socket.socket, timeout_s: float = 10) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and the seconds that took."""
    start, data = time.monotonic(), b""
    sock.settimeout(timeout_s)
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data, time.monotonic() - start


def _wait_for(condition, timeout_s: float = 10) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_slow_clients_are_cut_off_and_others_are_still_served(model, http):
    limit = 0.5
    app = create_app(model, ServeConfig(port=free_port(), batch_wait_ms=1, read_timeout_s=limit))
    with serving(app, http) as url:
        start = time.monotonic()
        slow = {
            "silent": _raw(url),  # connects and sends nothing
            "partial headers": _raw(url, b"POST /v1/couplets HTTP/1.1\r\nHost: test\r\n"),
            "partial body": _raw(url, _post_bytes({"upper": "春风"})[:-5]),
            "trickle": _raw(url, b"GET /healthz HTTP/1.1\r\n"),  # sends a header byte every 50 ms, never done
        }

        def trickle(sock):
            with contextlib.suppress(OSError):
                while time.monotonic() - start < 10 * limit:
                    sock.sendall(b"x")
                    time.sleep(0.05)

        threading.Thread(target=trickle, args=(slow["trickle"],), daemon=True).start()
        # A keep-alive connection: one good request, then the next request's headers never finish.
        kept = _raw(url, _post_bytes({"upper": "秋月"}))
        first = b""
        while b'"candidates"' not in first:
            first += kept.recv(65536)
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost:")
        slow["keep-alive, then partial headers"] = kept
        # Meanwhile a good client is served at once.
        good = httpx.post(url + "/v1/couplets", json={"upper": "春风"}, timeout=10)
        assert good.status_code == 200 and good.json()["candidates"]
        for name, sock in slow.items():
            data, _ = _until_closed(sock)
            waited = time.monotonic() - start
            sock.close()
            assert data.startswith(b"HTTP/1.1 408"), (name, data)
            assert (b"body" if name == "partial body" else b"headers") in data, (name, data)
            assert waited < limit + 3, (name, waited)  # generous: this machine may be busy


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_endless_headers_are_refused(model, http):
    app = create_app(model, ServeConfig(port=free_port(), batch_wait_ms=1))
    with serving(app, http) as url:
        sock = _raw(url, b"GET /healthz HTTP/1.1\r\n")
        with contextlib.suppress(OSError):  # the server may close while this is still sending
            for _ in range(64):
                sock.sendall(b"X-Padding: " + b"a" * 1000 + b"\r\n")
        data, _ = _until_closed(sock)
        # 431 from serve (httptools has no limit of its own), 400 from h11's own limit: both MAX_HEADER_BYTES.
        assert data.startswith(b"HTTP/1.1 431" if http == "httptools" else b"HTTP/1.1 400"), data[:100]
        assert httpx.get(url + "/healthz", timeout=10).status_code == 200

def test_connections_beyond_the_cap_get_a_503_and_are_closed(model):
    app = create_app(model, ServeConfig(port=free_port(), batch_wait_ms=1, max_connections=2, read_timeout_s=30))
    with serving(app) as url:
        idle = [_raw(url), _raw(url)]
        data, took = _until_closed(_raw(url))
        assert data.startswith(b"HTTP/1.1 503") and b"2 connections" in data and took < 5
        for sock in idle:
            sock.close()
        # Once they are gone, new connections are served again.
        assert _wait_for(lambda: httpx.get(url + "/healthz", timeout=10).status_code == 200)


def test_queued_requests_whose_clients_left_are_never_decoded(tiny):
    gate = threading.Event()
    model = Recording(tiny, gate=gate)  # holds each model call until the gate opens
    app = create_app(model, ServeConfig(port=free_port(), batch_wait_ms=1))
    batcher = app.state.batcher
    with serving(app) as url:
        held = []
        holder = threading.Thread(target=lambda: held.append(httpx.post(url + "/v1/couplets", json={"upper": "开门"},
                                                                         timeout=30)))
        holder.start()
        assert _wait_for(lambda: len(model.calls) == 1)  # the model is busy with it
        # Heavy requests queue behind it; once all are queued, their clients leave.
        uppers = ["春风得意马蹄疾", "秋月无边", "夏雨连天", "冬雪映梅", "青山不老"]
        socks = [_raw(url, _post_bytes({"upper": u, "n": MAX_N, "method": "beam"})) for u in uppers]
        assert _wait_for(lambda: batcher.waiting == len(uppers))
        for sock in socks:
            sock.close()
        _wait_for(lambda: batcher.waiting == 0, timeout_s=5)  # withdrawn as the server notices
        gate.set()
        holder.join(30)
        assert held[0].status_code == 200
        good = httpx.post(url + "/v1/couplets", json={"upper": "明月"}, timeout=30)
        assert good.status_code == 200
    assert [uppers for uppers, _ in model.calls] == [["开门"], ["明月"]]  # nothing for the clients that left


def test_unknown_characters_and_traditional_script(client):
    """A character outside the vocabulary is read as [UNK] and named in `unknown`; a traditional 上联 gets a
    traditional answer (script auto), or a simplified one when asked."""
    r = client.post("/v1/couplets", json={"upper": "合\u3400之喜迎新岁", "n": 2, "seed": 1})
    assert_good_couplets(r, "合\u3400之喜迎新岁", 2)
    body = r.json()
    assert body["unknown"] == ["\u3400"] and body["script"] == "simplified"
    r = client.post("/v1/couplets", json={"upper": "風調雨順年年好", "n": 2, "seed": 1})
    assert r.status_code == 200 and r.json()["script"] == "traditional" and r.json()["unknown"] == []
    simplified = client.post("/v1/couplets",
                             json={"upper": "風調雨順年年好", "n": 2, "seed": 1, "script": "simplified"})
    assert simplified.json()["script"] == "simplified"
    assert client.post("/v1/couplets", json={"upper": "春", "script": "kanji"}).status_code == 422


def test_hengpi_on_request(client):
    """"hengpi": true adds the offered 横批 to every candidate; without it there are none."""
    r = client.post("/v1/couplets", json={"upper": "天增岁月人增寿", "n": 2, "seed": 1, "hengpi": True})
    assert_good_couplets(r, "天增岁月人增寿", 2)
    for cand in r.json()["candidates"]:
        assert [len(h["text"]) for h in cand["hengpi"]] == [4, 4, 4]
        assert all(math.isfinite(h["score"]) for h in cand["hengpi"])
    plain = client.post("/v1/couplets", json={"upper": "天增岁月人增寿", "n": 2, "seed": 1})
    assert all("hengpi" not in cand for cand in plain.json()["candidates"])
    assert client.post("/v1/couplets", json={"upper": "天增岁月人增寿", "hengpi": 3}).status_code == 422  # a bool


# --- issue 17: no client can hurt another ----------------------------------------------------------------------
def _raw_from(url: str, data: bytes = b"", source: str | None = None) -> socket.socket:
    """_raw, from the loopback address `source` (127.0.0.2 is another host to the server)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10, source_address=(source, 0) if source else None)
    sock.sendall(data)
    return sock


def _answer(sock: socket.socket) -> bytes:
    """What the server sends on a keep-alive connection until a couplet answer is complete."""
    sock.settimeout(10)
    data = b""
    while b'"candidates"' not in data:
        data += sock.recv(65536)
    return data


def _head(status: int, data: bytes) -> bool:
    """Whether the raw response `data` has status `status`, a JSON error body and the security headers."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    return (lines[0].startswith(b"http/1.1 %d" % status) and b"content-type: application/json" in lines
            and any(line.startswith(b"content-security-policy: default-src 'self'") for line in lines)
            and b"x-content-type-options: nosniff" in lines and "error" in json.loads(body))


def test_a_simplified_answer_keeps_apart_what_simplifying_merges(client):
    """雲 and 云 are both 云 in simplified: the 下联 still has two different characters, as the 上联 sent does."""
    for upper in ("雲云", "天高雲淡人云亦云"):
        r = client.post("/v1/couplets", json={"upper": upper, "n": 3, "script": "simplified", "seed": 1})
        assert_good_couplets(r, upper, n=3)
        for cand in r.json()["candidates"]:
            assert len(set(cand["text"])) == len(set(upper)), cand["text"]


class Watch(Recording):
    """The real model, recording each call's answer: whether it wrote anything. Its complete_batch and acrostic
    take `wanted`, as duilian.Couplets's do, so the server can stop them between decoding steps."""

    def __init__(self, couplets, holds: dict | None = None):
        super().__init__(couplets)
        self.holds, self.answered = holds or {}, []

    def complete_batch(self, uppers, n=5, *, wanted=None, **options):
        self.calls.append((list(uppers), dict(options, n=n)))
        for upper in uppers:
            if upper in self.holds:
                self.holds[upper].wait(10)
        out = self.couplets.complete_batch(uppers, n, wanted=wanted, **options)
        self.answered.append(("complete", [bool(x) for x in out]))
        return out

    def acrostic(self, heads, length=7, n=5, *, wanted=None, **options):
        out = self.couplets.acrostic(heads, length, n, wanted=wanted, **options)
        self.answered.append(("acrostic", bool(out)))
        return out


def test_the_abandonment_reproduction_decodes_only_the_good_request():
    """The issue's reproduction on the shipped model: 32 藏头 requests (length 32, n 5, 32 different top_k), their
    clients gone 0.1 s after sending, then a good request 0.5 s after them. Before: all 32 were decoded (~1 s each)
    and the good request got a 504 after 30 s. Now the request already in the model stops at the next step once
    its client is seen to be gone, the others are never decoded, and the good request is answered at once (the
    issue's bar: under 2 s; 0.07 s measured)."""
    import duilian

    model = Watch(duilian.load())
    app = create_app(model, ServeConfig(port=free_port()))
    with serving(app) as url:
        assert httpx.post(url + "/v1/couplets", json={"upper": "春风", "n": 1}, timeout=30).status_code == 200
        model.answered.clear()
        start = time.monotonic()
        socks = [_raw(url, _post_bytes({"heads": "春福", "length": 32, "n": 5, "top_k": k + 1}, "/v1/acrostic"))
                 for k in range(32)]
        time.sleep(0.1)
        for sock in socks:
            sock.close()
        time.sleep(max(0.0, 0.5 - (time.monotonic() - start)))
        sent = time.monotonic()
        good = httpx.post(url + "/v1/couplets", json={"upper": "海阔凭鱼跃", "n": 5}, timeout=30)
        took = time.monotonic() - sent
        assert good.status_code == 200 and good.json()["candidates"], good.text
        assert _wait_for(lambda: app.state.batcher.unanswered == 0)
    acrostics = [done for kind, done in model.answered if kind == "acrostic"]
    assert len(acrostics) <= 2 and not any(acrostics), model.answered  # started at most, never finished
    assert [done for kind, done in model.answered if kind == "complete"] == [[True]]
    # 32 decodes would take ~30 s; the bound is loose so a loaded machine (CI, a browser test beside it) passes
    assert took < 10, took


def test_a_group_is_not_decoded_once_its_client_has_left(tiny):
    """Requests gathered into one batch but in different groups (here: other n) run one group after another. A
    client that leaves while an earlier group is decoded is checked for just before its group: never decoded."""
    first, holder = threading.Event(), threading.Event()
    model = Watch(tiny, holds={"开门": holder, "春风": first})
    app = create_app(model, ServeConfig(port=free_port(), batch_wait_ms=200, batch_gap_ms=200))
    batcher = app.state.batcher
    with serving(app) as url:
        held = _raw(url, _post_bytes({"upper": "开门"}))
        assert _wait_for(lambda: len(model.calls) == 1)  # the model holds it: the next two queue together
        a = _raw(url, _post_bytes({"upper": "春风", "n": 2}))
        b = _raw(url, _post_bytes({"upper": "秋月", "n": 3}))
        assert _wait_for(lambda: batcher.waiting == 2)
        holder.set()
        assert _wait_for(lambda: len(model.calls) == 2)  # 春风's group is in the model; 秋月's is next
        b.close()
        assert _wait_for(lambda: batcher.unanswered == 1)  # the server has seen 秋月's client leave
        first.set()
        for sock in (held, a):
            assert _answer(sock).startswith(b"HTTP/1.1 200")
            sock.close()
    assert [uppers for uppers, _ in model.calls] == [["开门"], ["春风"]]  # nothing for the client that left


def test_one_address_cannot_lock_out_another(model):
    """600 idle connections from one address once filled the 512 everyone shares: everyone else got a 503 for
    as long as they stayed open. Now one address holds at most max_connections_per_client; the rest are refused
    at once, and another address (127.0.0.2: another host on loopback) is served while they are open."""
    config = ServeConfig(port=free_port(), batch_wait_ms=1, read_timeout_s=60)
    app = create_app(model, config)
    cap = config.max_connections_per_client
    with serving(app) as url:
        idle = [_raw_from(url, b"", "127.0.0.1") for _ in range(600)]
        answers: dict[int, bytes] = {}  # socket index -> what the server sent before closing it

        def refused() -> int:
            for i, sock in enumerate(idle):
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    while chunk := sock.recv(65536):
                        answers[i] = answers.get(i, b"") + chunk
            return len(answers)

        assert _wait_for(lambda: refused() == 600 - cap)  # the first `cap` stay open, idle
        assert sorted(answers) == list(range(cap, 600))
        assert all(_head(503, data) and b"this client" in data for data in answers.values())
        transport = httpx.HTTPTransport(local_address="127.0.0.2")
        with httpx.Client(transport=transport, base_url=url, timeout=30) as other:
            r = other.post("/v1/couplets", json={"upper": "春风", "n": 2})
            assert_good_couplets(r, "春风", n=2)
        data, _ = _until_closed(_raw_from(url, b"", "127.0.0.1"), timeout_s=5)
        assert _head(503, data) and b"this client" in data  # the first address is still at its cap
        for sock in idle:
            sock.close()


@pytest.mark.parametrize("trusted", [False, True])
def test_queued_work_is_capped_per_client_and_a_proxy_header_is_read_only_when_trusted(tiny, trusted):
    """max_queue_per_client requests of one client may wait; its next is a 503 while another client's is taken.
    Behind a trusted proxy the client is the one X-Forwarded-For names; otherwise that header is ignored (any
    client could send one), so all four requests below come from 127.0.0.1."""
    gate = threading.Event()
    model = Watch(tiny, holds={"开门": gate})
    config = ServeConfig(port=free_port(), batch_wait_ms=1, max_queue_per_client=2,
                         trusted_proxies=("127.0.0.1",) if trusted else ())
    app = create_app(model, config)

    def post(upper: str, client: str) -> socket.socket:
        data = json.dumps({"upper": upper}).encode()
        return _raw(url, (f"POST /v1/couplets HTTP/1.1\r\nHost: test\r\nX-Forwarded-For: {client}\r\n"
                          f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n").encode() + data)

    with serving(app) as url:
        held = post("开门", "10.0.0.1")  # in the model, held
        assert _wait_for(lambda: len(model.calls) == 1)
        queued = post("春风", "10.0.0.1")
        assert _wait_for(lambda: app.state.batcher.unanswered == 2)
        third = post("秋月", "10.0.0.1")  # the same client's third: over its limit
        data, _ = _until_closed(third, timeout_s=10)  # closed when idle for KEEP_ALIVE_S = 5 s: 5 s was a race
        assert _head(503, data) and b"this client already has 2 requests waiting" in data
        other = post("夏雨", "10.0.0.2")
        if trusted:  # another client: taken
            assert _wait_for(lambda: app.state.batcher.unanswered == 3)
        else:  # the same 127.0.0.1: refused
            data, _ = _until_closed(other, timeout_s=10)
            assert _head(503, data)
        gate.set()
        for sock in [held, queued] + ([other] if trusted else []):
            assert _answer(sock).startswith(b"HTTP/1.1 200")
            sock.close()


def test_batches_take_turns_between_clients():
    """When more requests wait than a batch holds, the batch takes each client's first, then each one's second,
    and so on: one client's many requests do not keep another's out."""
    batches = []

    async def go():
        b = MicroBatcher(lambda key, items: batches.append(list(items)) or items, max_batch=3, wait_s=0.05,
                         max_queue=100)
        jobs = [b.submit(("a",), f"a{i}", 5, client="1.1.1.1") for i in range(5)]
        jobs.append(b.submit(("a",), "b0", 5, client="2.2.2.2"))
        out = await asyncio.gather(*jobs)
        b.close()
        return out

    assert asyncio.run(go()) == ["a0", "a1", "a2", "a3", "a4", "b0"]
    assert batches[0] == ["a0", "a1", "b0"]  # b0 came last but is in the first batch
    assert sorted(sum(batches, [])) == ["a0", "a1", "a2", "a3", "a4", "b0"]


def test_requests_with_different_sampling_options_share_a_call_and_keep_their_answers(model):
    """Temperature, top-k and top-p differ row by row within one model call; each seeded answer is what the
    request gets alone. Greedy and sampled requests (the search's shape differs) take separate calls; beam
    search ignores the sampling options, so beam requests share one whatever they are."""
    sampled = [{"upper": u, "seed": i, "temperature": t, "top_k": k, "top_p": p}
               for i, (u, t, k, p) in enumerate([("春风得意", 0.7, 0, 1.0), ("秋月无边", 1.3, 20, 0.9),
                                                 ("夏雨连天", 1.0, 5, 1.0), ("冬雪映梅", 0.9, 0, 0.6)])]
    greedy = [{"upper": "青山不老", "temperature": 0}, {"upper": "绿水长流", "temperature": 0, "top_k": 3}]
    beams = [{"upper": "白云", "method": "beam", "n": 3, "temperature": 0.5},
             {"upper": "明月", "method": "beam", "n": 3, "top_p": 0.3}]
    bodies = sampled + greedy + beams
    alone = [asyncio.run(_post_all(create_app(model, ServeConfig(max_batch=1)), [b]))[0] for b in bodies]
    model.calls.clear()
    batched = _post_queued_together(create_app(model, ServeConfig(max_batch=16, batch_wait_ms=200, batch_gap_ms=200)),
                                    model, bodies)
    assert sorted(sorted(uppers) for uppers, _ in model.calls) == \
        sorted(sorted(b["upper"] for b in group) for group in (beams, sampled, greedy))
    (_, options), = [call for call in model.calls if len(call[0]) == len(sampled)]
    assert options["temperature"] == [0.7, 1.3, 1.0, 0.9] and options["top_k"] == [0, 20, 5, 0]
    for got, expected, body in zip(batched, alone, bodies):
        assert_good_couplets(got, body["upper"], n=body.get("n", 5))
        assert_same_answer(got, expected)


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_header_and_url_limits_hold_for_bytes_that_arrive_in_one_read(model, http):
    """A 100 KB header or a 60 KB URL sent in one read once got a 200 (the limit was counted only across reads).
    Now: 431 and 414, in JSON. A small request with a 100 KB one pipelined behind it in the same read: refused
    too (after the first's answer with h11, which parses the second only then)."""
    app = create_app(model, ServeConfig(port=free_port(), batch_wait_ms=1))
    with serving(app, http) as url:
        big_header = b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Pad: " + b"a" * 100_000 + b"\r\n\r\n"
        data, _ = _until_closed(_raw(url, big_header))
        assert _head(431, data) and b"headers are larger than" in data, data[:200]
        data, _ = _until_closed(_raw(url, b"GET /healthz?" + b"a" * 60_000 + b" HTTP/1.1\r\nHost: test\r\n\r\n"))
        assert _head(414, data) and b"URL is longer than" in data, data[:200]
        data, _ = _until_closed(_raw(url, b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n" + big_header))
        first, _, rest = data.partition(b"HTTP/1.1 431")
        assert _head(431, b"HTTP/1.1 431" + rest), data[:300]
        # h11 reads a pipelined request once the one before is answered; httptools reads it at once and closes
        assert first == b"" if http == "httptools" else first.startswith(b"HTTP/1.1 200"), data[:300]
        assert httpx.get(url + "/healthz", timeout=10).status_code == 200


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_errors_before_the_app_are_json_with_the_security_headers(model, http):
    """What uvicorn's parser refuses (a bad Content-Length; for httptools an unknown method too) was plain text
    without CSP or nosniff."""
    app = create_app(model, ServeConfig(port=free_port(), batch_wait_ms=1))
    with serving(app, http) as url:
        for request in (b"POST /v1/couplets HTTP/1.1\r\nHost: test\r\nContent-Length: abc\r\n\r\n",
                        b"GET /healthz HTTP/1.1\r\nHost: test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                        b"FOO /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"):
            data, _ = _until_closed(_raw(url, request))
            assert _head(400, data) or (request.startswith(b"FOO") and _head(405, data)), (request, data[:300])


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_a_half_closed_request_is_answered(model, http):
    """A client that sends its request and then shuts its side down (shutdown(SHUT_WR), as `nc -N` does) once got
    no answer; now it gets the answer, after interim 100 Continue lines, and the connection closes."""
    app = create_app(model, ServeConfig(port=free_port(), batch_wait_ms=1))
    with serving(app, http) as url:
        sock = _raw(url, _post_bytes({"upper": "春风", "n": 2}))
        sock.shutdown(socket.SHUT_WR)
        data, _ = _until_closed(sock)
        interim, _, final = data.rpartition(b"HTTP/1.1 100 Continue\r\n\r\n")
        assert final.startswith(b"HTTP/1.1 200") and b'"candidates"' in final, data[:300]
        assert all(line in (b"HTTP/1.1 100 Continue", b"") for line in interim.split(b"\r\n"))


def test_head_wherever_get_is_served(client):
    for path in ("/healthz", "/openapi.json", "/", "/docs", "/static/app.js"):
        get, head = client.get(path), client.head(path)
        assert get.status_code == head.status_code == 200 and head.content == b"", path
        assert head.headers["content-length"] == str(len(get.content)), path
        assert "default-src 'self'" in head.headers["content-security-policy"]
    r = client.head("/v1/couplets")  # served by POST only: as for GET
    assert r.status_code == 405 and r.content == b""


def test_no_redirect_is_built_from_the_host_header(client):
    for path in ("/static", "/docs/"):
        r = client.get(path, headers={"host": "evil.example"}, follow_redirects=False)
        assert r.status_code == 404 and "location" not in r.headers and r.json()["error"], path


@pytest.mark.parametrize("charset", ["utf-16", "latin-1", "UTF-16LE", '"utf-32"'])
def test_a_charset_other_than_utf8_is_a_415(client, model, charset):
    r = client.post("/v1/couplets", content=json.dumps({"upper": "春风"}).encode(),
                    headers={"content-type": f"application/json; charset={charset}"})
    assert r.status_code == 415 and "UTF-8" in r.json()["error"], r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert model.calls == []
    for ok in ("utf-8", "UTF8", '"utf-8"'):
        r = client.post("/v1/couplets", json={"upper": "春风"},
                        headers={"content-type": f"application/json; charset={ok}"})
        assert r.status_code == 200, (ok, r.text)


def test_a_crash_is_answered_with_the_security_headers(tiny):
    """ServerErrorMiddleware's 500 once went out around the middleware that adds the headers."""
    with TestClient(create_app(NestedNaN(tiny), ServeConfig(batch_wait_ms=1)), raise_server_exceptions=False) as c:
        r = c.post("/v1/couplets", json={"upper": "春风", "n": 2, "seed": 1})
        assert r.status_code == 500 and r.json() == {"error": "internal error: ValueError"}
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert r.headers["x-content-type-options"] == "nosniff"


def test_cli_flags_for_the_per_client_limits(capsys):
    import argparse

    from duilian.cli import serve as serve_cli

    parser = argparse.ArgumentParser()
    serve_cli.register(parser)
    args = parser.parse_args(["--max-connections-per-client", "8", "--max-queue-per-client", "4",
                              "--trusted-proxy", "10.0.0.1", "--trusted-proxy", "fd00::/64"])
    assert serve_cli.server_config(args) == ServeConfig(max_connections_per_client=8, max_queue_per_client=4,
                                                        trusted_proxies=("10.0.0.1", "fd00::/64"))
    assert serve_cli.run(parser.parse_args(["--trusted-proxy", "nginx"])) == 2
    assert "'nginx' is not an IP address" in capsys.readouterr().err
    assert serve_cli.run(parser.parse_args(["--max-queue-per-client", "0"])) == 2


def test_ranking_weights_are_options_of_a_couplet_request(client):
    """lm_weight / reverse_weight / calibration_weight reach the decoder as given (null: the model's default), and a
    weight out of range is a 422 with the field named."""
    r = client.post("/v1/couplets", json={"upper": "海阔凭鱼跃", "n": 2, "seed": 1, "lm_weight": 0.5})
    assert r.status_code == 200, r.text
    assert all(isinstance(c["prior"], float) for c in r.json()["candidates"])
    r = client.post("/v1/couplets", json={"upper": "海阔凭鱼跃", "n": 2, "seed": 1})
    assert all(c["prior"] is None for c in r.json()["candidates"])  # the tiny model's default: off
    for bad in (-0.1, 99, "0.5"):
        r = client.post("/v1/couplets", json={"upper": "海阔凭鱼跃", "lm_weight": bad})
        assert r.status_code == 422 and "lm_weight" in r.text, r.text
    assert client.post("/v1/couplets", json={"upper": "海阔凭鱼跃", "reverse_weight": -1}).status_code == 422
    for bad in (-0.1, 4):
        r = client.post("/v1/couplets", json={"upper": "海阔凭鱼跃", "calibration_weight": bad})
        assert r.status_code == 422 and "calibration_weight" in r.text, r.text
    r = client.post("/v1/couplets", json={"upper": "海阔凭鱼跃", "n": 2, "seed": 1, "calibration_weight": 1.0})
    assert r.status_code == 200 and all(c["calibration"] == 0.0 for c in r.json()["candidates"])  # no table
    for bad in (-0.1, 6):
        r = client.post("/v1/couplets", json={"upper": "海阔凭鱼跃", "pair_weight": bad})
        assert r.status_code == 422 and "pair_weight" in r.text, r.text
    r = client.post("/v1/couplets", json={"upper": "海阔凭鱼跃", "n": 2, "seed": 1, "pair_weight": 1.0})
    assert r.status_code == 200 and all(c["pairs"] is None for c in r.json()["candidates"])  # no table: no term
