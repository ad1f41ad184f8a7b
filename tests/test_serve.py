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
    uvicorn_config,
)
from duilian.text import CoupletInputError


# --- a real tiny random model, wrapped to record (and optionally hold or refuse) its calls ----------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import duilian
    from duilian.model import build_model

    model_dir = tmp_path_factory.mktemp("tiny-model")
    build_model("tiny", seed=0).save_pretrained(model_dir)
    return duilian.load(model_dir)


class Recording:
    """The real Couplets, plus a record of every complete_batch call. `gate`: each call waits for it
    (to make requests slow); `refuse`: a character whose 上联 the model side rejects."""

    def __init__(self, couplets, gate: threading.Event | None = None, refuse: str | None = None):
        self.couplets, self.gate, self.refuse = couplets, gate, refuse
        self.max_chars, self.tokenizer, self.clean = couplets.max_chars, couplets.tokenizer, couplets.clean
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


@pytest.fixture
def model(tiny):
    return Recording(tiny)


@pytest.fixture
def client(model):
    with TestClient(create_app(model, ServeConfig(batch_wait_ms=1))) as c:
        yield c


def assert_good_couplets(response, upper, n=5):
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["upper"] == upper
    assert len(data["candidates"]) == n
    for cand in data["candidates"]:
        assert len(cand["text"]) == len(upper)
        assert {"same_length", "punctuation_aligned", "repeats_mirrored", "no_copy", "ends_level",
                "final_tone", "valid"} <= set(cand["checks"])
        assert isinstance(cand["score"], float)


# --- endpoints --------------------------------------------------------------------------------
def test_couplets_normalises_and_returns_candidates_with_checks(client):
    r = client.post("/v1/couplets", json={"upper": " 海阔凭鱼跃, 天高任鸟飞 ", "n": 3, "seed": 1})
    assert_good_couplets(r, "海阔凭鱼跃，天高任鸟飞", n=3)
    assert all(c["text"][5] == "，" for c in r.json()["candidates"])


def test_options_reach_the_decoder(client, model):
    body = {"upper": "春风", "n": 2, "method": "beam", "temperature": 0.7, "top_k": 20, "top_p": 0.9,
            "seed": 5, "allow_upper_chars": True}
    assert client.post("/v1/couplets", json=body).status_code == 200
    (uppers, options), = model.calls
    assert uppers == ["春风"]
    assert options == {"n": 2, "method": "beam", "temperature": 0.7, "top_k": 20, "top_p": 0.9, "seed": [5],
                       "allow_upper_chars": True}  # one seed per 上联


def test_acrostic(client):
    r = client.post("/v1/acrostic", json={"heads": "春福", "length": 5, "n": 2})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["heads"] == "春福" and data["length"] == 5 and len(data["couplets"]) == 2
    for pair in data["couplets"]:
        assert pair["upper"][0] == "春" and pair["lower"][0] == "福" and len(pair["upper"]) == 5
        assert "valid" in pair["checks"]


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
    assert r.status_code == 200, r.text
    cands = r.json()["candidates"]
    assert 1 <= len(cands) <= (1 if method == "sample" else 3)  # greedy sampling: one candidate
    for cand in cands:
        assert cand["checks"]["valid"] and len(cand["text"]) == 5 and "？" not in cand["text"], cand
        assert all(math.isfinite(cand[k]) for k in ("score", "logprob", "rule_score")), cand
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
    # And were one to slip into a response, it is refused rather than written as NaN or null.
    with pytest.raises(ValueError):
        StrictJSONResponse({"score": math.nan, "valid": True})


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
    ("unknown character", json.dumps({"upper": "春\u9fa6"}), 422, "vocabulary"),
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
    app = create_app(Recording(tiny, refuse="坏"), ServeConfig(max_batch=8, batch_wait_ms=200, batch_gap_ms=200))
    results = asyncio.run(_post_all(app, [{"upper": u, "seed": 1} for u in ("春风", "坏事", "秋月")]))
    assert [r.status_code for r in results] == [200, 422, 200]
    assert "refuses" in results[1].json()["error"]


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
            await asyncio.sleep(0.3)
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


def test_concurrent_requests_share_model_calls(model):
    app = create_app(model, ServeConfig(max_batch=16, batch_wait_ms=200, batch_gap_ms=200))
    uppers = ["春风", "秋月", "夏雨", "冬雪", "青山", "绿水", "白云", "明月"]
    results = asyncio.run(_post_all(app, [{"upper": u, "seed": 3} for u in uppers]))
    for r, u in zip(results, uppers):
        assert_good_couplets(r, u)  # each answer belongs to its own request
    assert len(model.calls) < len(uppers)
    assert max(len(batch) for batch, _ in model.calls) > 1
    assert sorted(u for batch, _ in model.calls for u in batch) == sorted(uppers)


def test_a_seeded_request_gets_the_same_answer_alone_or_batched(model):
    alone = asyncio.run(_post_all(create_app(model, ServeConfig(max_batch=1)), [{"upper": "春风得意", "seed": 11}]))[0]
    others = ["秋月无边", "春风得意", "夏雨连天", "冬雪映梅"]
    model.calls.clear()
    batched = asyncio.run(_post_all(create_app(model, ServeConfig(max_batch=8, batch_wait_ms=200, batch_gap_ms=200)),
                                    [{"upper": u, "seed": 11} for u in others]))[1]
    assert max(len(batch) for batch, _ in model.calls) > 1  # it really was decoded with others
    assert alone.status_code == batched.status_code == 200
    assert alone.json() == batched.json()


def test_batches_only_mix_requests_with_the_same_options(model):
    app = create_app(model, ServeConfig(max_batch=16, batch_wait_ms=200, batch_gap_ms=200))
    bodies = [{"upper": u, "seed": s, "n": n} for u in ("春风", "秋月") for s in (1, 2) for n in (2, 3)] * 2
    results = asyncio.run(_post_all(app, bodies))
    assert all(r.status_code == 200 for r in results)
    assert len(model.calls) == 2  # one per n: seeds differ row by row within a call
    for r, b in zip(results, bodies):
        assert len(r.json()["candidates"]) == b["n"]


def test_requests_with_different_seeds_share_a_call_and_keep_their_answers(model):
    bodies = [{"upper": u, "seed": s} for u, s in (("春风得意", 1), ("秋月无边", 2), ("春风得意", 3), ("夏雨", None))]
    alone = [asyncio.run(_post_all(create_app(model, ServeConfig(max_batch=1)), [b]))[0] for b in bodies[:3]]
    model.calls.clear()
    batched = asyncio.run(_post_all(create_app(model, ServeConfig(max_batch=8, batch_wait_ms=200, batch_gap_ms=200)),
                                    bodies))
    (uppers, options), = model.calls  # one call, one seed per row
    assert sorted(zip(uppers, options["seed"]), key=str) == sorted(((b["upper"], b["seed"]) for b in bodies), key=str)
    assert [r.json() for r in batched[:3]] == [r.json() for r in alone]
    assert batched[0].json() != batched[2].json()  # same 上联, other seed
    assert_good_couplets(batched[3], "夏雨")


def test_max_batch_caps_the_batch(model):
    app = create_app(model, ServeConfig(max_batch=3, batch_wait_ms=200, batch_gap_ms=200))
    results = asyncio.run(_post_all(app, [{"upper": "春风"}] * 7))
    assert all(r.status_code == 200 for r in results)
    assert max(len(batch) for batch, _ in model.calls) <= 3


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


def test_int8_weights_from_the_config(tmp_path):
    from duilian.decode import check_int8_engine
    from duilian.model import build_model

    try:
        check_int8_engine()
    except ValueError as e:
        pytest.skip(str(e))
    build_model("tiny", seed=0).save_pretrained(tmp_path)
    app = create_app(str(tmp_path), ServeConfig(quantize="int8"))
    assert app.state.couplets.quantize == "int8"
    with TestClient(app) as c:
        assert_good_couplets(c.post("/v1/couplets", json={"upper": "春风", "n": 2, "seed": 1}), "春风", n=2)


# --- a real server on loopback: hostile connections ---------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _serving(app, http="auto"):
    """`app` (made with a ServeConfig on a free port) under uvicorn as `duilian serve` runs it
    (serve.uvicorn_config), in a thread; yields the base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn_config(app, http=http, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(10)


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
    app = create_app(model, ServeConfig(port=_free_port(), batch_wait_ms=1, read_timeout_s=limit))
    with _serving(app, http) as url:
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


def test_connections_beyond_the_cap_get_a_503_and_are_closed(model):
    app = create_app(model, ServeConfig(port=_free_port(), batch_wait_ms=1, max_connections=2, read_timeout_s=30))
    with _serving(app) as url:
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
    app = create_app(model, ServeConfig(port=_free_port(), batch_wait_ms=1))
    batcher = app.state.batcher
    with _serving(app) as url:
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
