"""The HTTP service: an API and a web page, shaped as decode -> predict -> encode.

    decode   the JSON body is checked by a strict pydantic model (types, ranges, no unknown options),
             then the 上联 by `Couplets.clean` (the API's own check: normalised, within the model's
             `max_chars`, every character in its vocabulary); anything wrong is a 4xx {"error": reason}.
    predict  requests that arrive together are decoded together: the `MicroBatcher` collects up to
             `max_batch` requests (for at most `batch_wait_ms`, less once none has come for
             `batch_gap_ms`), groups those with the same options (seeds may differ: one per row)
             and runs one `Couplets.complete_batch` per group in a single worker thread, so the event loop keeps accepting requests while the
             model works. The API promises batch independence, so a request
             with a seed gets the same answer alone or batched.
             A job whose client disconnects before its answer is withdrawn (never decoded if it has not
             started), and one request may ask for at most MAX_DECODE_WORK characters of decoding.
    encode   candidates become JSON with their scores and form checks (`Candidate.to_dict`); a candidate
             with a score that is not finite is left out, and the response refuses to write NaN or
             infinity rather than send `null` beside `valid: true`.

Connections are bounded too (`uvicorn_config`, which `duilian serve` runs): a client has READ_TIMEOUT_S to
send a request's headers and again its body (then 408 and the connection closes), at most MAX_CONNECTIONS
are open at once (more get a 503 and are closed), and idle keep-alive connections close after KEEP_ALIVE_S.

Everything the server sends is same-origin: the page, its script and style and the /docs page live in
duilian/static/, and a Content-Security-Policy forbids the browser from fetching anything else.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import concurrent.futures
import json
import math
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, Awaitable, Callable, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .api import ACROSTIC_LOWERS, HENGPI_OFFERED
from .decode import GREEDY_BELOW, MAX_TEMPERATURE  # the decoder's own temperature range: one source of truth
from .text import MAX_CHARS, CoupletInputError, is_han, normalize

# --- limits -----------------------------------------------------------------------------------------
MAX_UPPER_CHARS = MAX_CHARS  # longest 上联 served; a model may allow fewer (`Couplets.max_chars`)
MAX_N = 10  # candidates per request
MAX_BODY_BYTES = 4 * 1024  # a 32-character 上联 with every option is well under 1 KB
MAX_DECODE_WORK = 640
"""Most characters one request may have written: rows x positions, n x the 上联's length for a couplet and
n x length x (1 + api.ACROSTIC_LOWERS) for a 藏头 couplet (n 上联, then ACROSTIC_LOWERS 下联 for each). Every
couplet request fits (MAX_N x MAX_CHARS = 320); a 藏头 couplet of 16 characters may ask for 10, one of 32 for
5. 640 is about half a second of the default model on the project's 2-core CPU (the 1,280 of a 32-character
藏头 couplet x 10, a whole second, is refused)."""
REQUEST_TIMEOUT_S = 30.0  # from arrival to answer, queueing included; then 504
MAX_QUEUE = 1024  # requests waiting for the model; beyond this, 503 at once rather than a slow 504
MAX_TOP_K = 1000
MAX_SEED = 2**63 - 1
MIN_ACROSTIC_LENGTH, MAX_ACROSTIC_LENGTH = 2, MAX_CHARS  # characters per line of a 藏头 couplet, as the API allows

# --- connection limits (uvicorn_config) -------------------------------------------------------------
READ_TIMEOUT_S = 10.0  # to send a request's headers (from connecting, or its first byte), and again its body; then 408
KEEP_ALIVE_S = 5  # an idle keep-alive connection is closed after this many seconds (uvicorn's default)
MAX_CONNECTIONS = 512  # open at once (a file descriptor each); more are answered 503 and closed
MAX_HEADER_BYTES = 16 * 1024  # request line and headers (h11's default); more is a 431 and the connection closes

STATIC_DIR = Path(__file__).with_name("static")

# Same-origin only: nothing on the page may load or run from elsewhere, and inline script is refused,
# so even a bug that put user text into HTML could not run it.
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
     b"connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


@dataclass
class ServeConfig:
    """How `duilian serve` runs. Limits that are part of the API contract are module constants above."""

    host: str = "127.0.0.1"
    """Interface to listen on; loopback by default so nothing is exposed by accident."""
    port: int = 8000
    """TCP port."""
    max_batch: int = 32
    """Most requests decoded in one `complete_batch` call (each holds `n` rows). 1 turns batching off."""
    batch_wait_ms: float = 50.0
    """Longest a batch gathers requests, in milliseconds, once its first has arrived. 0: take what is queued."""
    batch_gap_ms: float = 5.0
    """A batch closes early when no request has arrived for this many milliseconds (a lone request waits
    only this long)."""
    request_timeout_s: float = REQUEST_TIMEOUT_S
    """Seconds a request may wait for its answer, queueing included, before a 504."""
    max_queue: int = MAX_QUEUE
    """Requests that may wait for the model at once; more get a 503."""
    read_timeout_s: float = READ_TIMEOUT_S
    """Seconds a client has to send a request's headers, and then again its body, before a 408 and a closed
    connection (a slow or stalled client would otherwise hold its connection for ever)."""
    max_connections: int = MAX_CONNECTIONS
    """Connections open at once; a connection beyond them gets a 503 and is closed."""
    device: str = "cpu"
    """torch device for the model when `create_app` loads it from a directory."""
    quantize: str | None = None
    """Weights the decoder runs with when `create_app` loads the model: None (the model's own) or "int8"
    (CPU only; see `duilian.load`)."""

    def __post_init__(self):
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.batch_wait_ms < 0 or self.batch_gap_ms < 0:
            raise ValueError(f"batch_wait_ms and batch_gap_ms must be >= 0, got {self.batch_wait_ms}, {self.batch_gap_ms}")
        if self.request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s must be > 0, got {self.request_timeout_s}")
        if self.max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {self.max_queue}")
        if not self.read_timeout_s > 0:
            raise ValueError(f"read_timeout_s must be > 0, got {self.read_timeout_s}")
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {self.max_connections}")


# --- request bodies (decode) ------------------------------------------------------------------------
class DecodeOptions(BaseModel):
    """Options shared by both endpoints; they are passed to the decoder unchanged."""

    # strict: "5" is not 5 and 1 is not true; forbid: a misspelt option is an error, not silently ignored;
    # no NaN or infinity (Python's JSON reader accepts them).
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    n: int = Field(5, ge=1, le=MAX_N, description=f"number of candidates, 1 to {MAX_N}")
    method: Literal["sample", "beam"] = Field("sample", description="sampling, or beam search (deterministic)")
    temperature: float = Field(1.0, ge=0, le=MAX_TEMPERATURE,
                               description=f"sampling temperature, 0 to {MAX_TEMPERATURE:g}; below {GREEDY_BELOW:g} "
                                           "(0 included) greedy: one candidate")
    top_k: int = Field(0, ge=0, le=MAX_TOP_K, description="keep the k most likely characters; 0: all")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass; 1: off")
    first: Literal["beam", "greedy", "sample"] = Field(
        "beam", description="with sampling, where the first candidate comes from: beam (the likeliest line a "
                            "width-5 beam search finds, then samples), greedy (the greedy line is among the "
                            "candidates, ranked by score), or sample")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="same seed, same answer (alone or batched)")
    allow_upper_chars: bool = Field(False, description="let the 下联 reuse characters of the 上联 elsewhere")
    script: Literal["auto", "simplified", "traditional"] = Field(
        "auto", description="the answer's script: auto follows the input (a traditional 上联 gets a traditional 下联)")
    hengpi: bool = Field(False, description=f"suggest {HENGPI_OFFERED} 横批 (4-character banners) with each couplet, "
                                            "best first")

    def decoder_kwargs(self) -> dict[str, Any]:
        kwargs = self.model_dump(exclude={"upper", "heads", "length"})
        kwargs["hengpi"] = HENGPI_OFFERED if self.hengpi else 0  # the API takes a count
        return kwargs


class CoupletRequest(DecodeOptions):
    upper: str = Field(description=f"the 上联: Chinese characters and ，。？！；：、, at most {MAX_UPPER_CHARS}",
                       examples=["海阔凭鱼跃"])


class AcrosticRequest(DecodeOptions):
    heads: str = Field(description="two characters: the first opens the 上联, the second the 下联",
                       examples=["春福"])
    length: int = Field(7, ge=MIN_ACROSTIC_LENGTH, le=MAX_ACROSTIC_LENGTH, description="characters per line")


class ServiceError(Exception):
    """An error with an HTTP status and a reason for the client."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


# --- predict: the micro-batcher ---------------------------------------------------------------------
@dataclass
class _Job:
    key: tuple  # jobs with equal keys can share one model call
    item: Any  # what the model call needs for this request (a 上联, or acrostic arguments)
    future: asyncio.Future


class MicroBatcher:
    """Collects concurrent requests and runs them in groups on one worker thread (see `_collect` for when
    a batch closes).

    `run_group(key, items) -> results` is called with the items of jobs sharing `key` (in arrival
    order) and returns one result per item; a result that is an Exception is raised to that request
    only. The single worker thread means the model is never used by two threads at once.
    """

    def __init__(self, run_group: Callable[[tuple, list], list], max_batch: int, wait_s: float, max_queue: int,
                 gap_s: float | None = None):
        self.run_group, self.max_batch, self.wait_s, self.max_queue = run_group, max_batch, wait_s, max_queue
        self.gap_s = wait_s if gap_s is None else gap_s
        self._last_arrival = float("-inf")
        self.batches_run = 0  # model calls made, and the requests they answered; for /healthz
        self.requests_run = 0
        self.recent_sizes: collections.deque[int] = collections.deque(maxlen=16)  # last model calls' sizes
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None

    def _ensure_running(self) -> None:
        # The worker task lives on the loop that serves requests. Start it lazily so the app works
        # however it is run (uvicorn, TestClient with or without a lifespan).
        loop = asyncio.get_running_loop()
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="duilian-model")
        if self._loop is not loop or self._task is None or self._task.done():
            self._loop = loop
            self._queue: collections.deque[_Job] = collections.deque()
            self._arrived = asyncio.Event()
            self._task = loop.create_task(self._worker(), name="duilian-batcher")

    @property
    def waiting(self) -> int:
        """Requests queued for the model (not yet in a model call)."""
        return len(self._queue) if self._executor is not None else 0

    async def submit(self, key: tuple, item: Any, timeout_s: float,
                     client_gone: Callable[[], Awaitable[None]] | None = None) -> Any:
        """The result `run_group` gives for `item`. ServiceError 503 when `max_queue` requests are waiting,
        504 after `timeout_s`, and 499 once `client_gone()` (an awaitable that finishes when the client has
        disconnected) finishes first. A job that is not answered is withdrawn: never run if it has not
        started, its result dropped if it has (a model call is never interrupted)."""
        self._ensure_running()
        if len(self._queue) >= self.max_queue:
            raise ServiceError(503, f"the server is busy ({self.max_queue} requests waiting); try again shortly")
        job = _Job(key, item, self._loop.create_future())
        self._queue.append(job)
        self._last_arrival = self._loop.time()
        self._arrived.set()
        watcher = asyncio.ensure_future(client_gone()) if client_gone is not None else None
        try:
            done, _ = await asyncio.wait([job.future] if watcher is None else [job.future, watcher],
                                         timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when this request itself is cancelled
            if watcher is not None:
                watcher.cancel()
                if watcher.done() and not watcher.cancelled():
                    watcher.exception()  # retrieved: whatever it was, the client is treated as gone
            if not job.future.done():
                job.future.cancel()  # the worker skips a cancelled job, and drops its result if it is running
                with contextlib.suppress(ValueError):
                    self._queue.remove(job)  # so that it no longer counts against max_queue
        if not job.future.cancelled():
            return job.future.result()  # the answer, or the exception run_group gave for this item
        if watcher in done:
            raise ServiceError(499, "the client closed the connection before its answer")
        raise ServiceError(504, f"no answer within {timeout_s:g} s; the server is overloaded, try again")

    async def _collect(self) -> list[_Job]:
        """Wait for one job, then gather others until `max_batch` is reached, or no job has arrived for
        `gap_s`, or `wait_s` has passed since gathering began.

        Why the gap: when a batch is answered, its clients' next requests come back one by one as the
        event loop writes the answers (milliseconds apart under load). A fixed short wait cuts the
        next batch off after the first few; waiting while requests keep coming gathers more of them,
        and a lone request still waits only `gap_s`.
        """
        # Let the requests just answered send their responses first: that work would otherwise eat
        # into the gap and split the next batch.
        await asyncio.sleep(0)
        while not self._queue:
            self._arrived.clear()
            await self._arrived.wait()
        start = self._loop.time()
        jobs: list[_Job] = []
        while True:
            while self._queue and len(jobs) < self.max_batch:
                jobs.append(self._queue.popleft())
            deadline = min(start + self.wait_s, max(start, self._last_arrival) + self.gap_s)
            remaining = deadline - self._loop.time()
            if len(jobs) >= self.max_batch or remaining <= 0:
                return jobs
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def _worker(self) -> None:
        while True:
            jobs = await self._collect()
            groups: dict[tuple, list[_Job]] = {}
            for job in jobs:
                if not job.future.done():  # timed out while queued
                    groups.setdefault(job.key, []).append(job)
            for key, group in groups.items():
                try:
                    results = await self._loop.run_in_executor(
                        self._executor, self.run_group, key, [job.item for job in group])
                    self.batches_run += 1
                    self.requests_run += len(group)
                    self.recent_sizes.append(len(group))
                    if len(results) != len(group):
                        raise RuntimeError(f"the model answered {len(results)} of {len(group)} requests")
                except Exception as exc:  # noqa: BLE001 - the requests get the error, the worker lives on
                    results = [exc] * len(group)
                for job, result in zip(group, results):
                    if job.future.done():
                        continue
                    if isinstance(result, BaseException):
                        job.future.set_exception(result)
                    else:
                        job.future.set_result(result)

    def close(self) -> None:
        """Stop the worker (at server shutdown); a later request starts a fresh one."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._task, self._executor = None, None


def _make_run_group(couplets) -> Callable[[tuple, list], list]:
    """The model side of the batcher: one `complete_batch` per group of 上联 sharing options."""

    def run_group(key: tuple, items: list) -> list:
        kind, options = key[0], dict(key[1:])
        if kind == "acrostic":  # the API decodes one 藏头 request at a time
            return [_capture(couplets.acrostic, heads, length=length, **options) for heads, length in items]
        uppers, seeds = [u for u, _ in items], [s for _, s in items]
        try:
            return couplets.complete_batch(uppers, seed=seeds, **options)
        except CoupletInputError:
            if len(items) == 1:
                raise
            # One bad 上联 must not fail the others: decode each alone, errors stay with their request.
            return [_capture(lambda u, s: couplets.complete_batch([u], seed=[s], **options)[0], u, s)
                    for u, s in items]

    return run_group


def _capture(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - returned, then raised to the one request it belongs to
        return exc


# --- the app ----------------------------------------------------------------------------------------
def create_app(couplets_or_model_dir=None, config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app. `couplets_or_model_dir`: a loaded `duilian.Couplets` (anything with
    `clean`, `complete_batch`, `acrostic` and `max_chars`), or a model directory for `duilian.load`
    (None: the embedded default model)."""
    config = config or ServeConfig()
    if hasattr(couplets_or_model_dir, "complete_batch"):
        couplets = couplets_or_model_dir
    else:
        import duilian

        couplets = duilian.load(couplets_or_model_dir, device=config.device, quantize=config.quantize)
    max_chars = int(couplets.max_chars)  # the API's limit: at most MAX_CHARS, less for a short model
    batcher = MicroBatcher(_make_run_group(couplets), config.max_batch, config.batch_wait_ms / 1000,
                           config.max_queue, gap_s=config.batch_gap_ms / 1000)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        batcher.close()

    app = FastAPI(
        title="duilian",
        lifespan=lifespan,
        description="Chinese couplets (对联): 下联 for a 上联, and 藏头 couplets, right in form every time.",
        # FastAPI's own /docs and /redoc pages load their scripts from a CDN; ours is served from static/.
        docs_url=None,
        redoc_url=None,
    )
    app.state.couplets, app.state.batcher, app.state.config = couplets, batcher, config
    _add_error_handlers(app)

    # The endpoints return a StrictJSONResponse themselves: FastAPI, given a dict, converts it in pydantic's
    # JSON mode first, which turns NaN into None (null) before any response class sees it.
    @app.post("/v1/couplets", response_class=StrictJSONResponse,
              summary="下联 candidates for a 上联, best first, with their form checks")
    async def couplets_endpoint(req: CoupletRequest, request: Request) -> StrictJSONResponse:
        # decode
        line = couplets.read(req.upper, req.script)  # CoupletInputError (422) says what is wrong
        upper = line.text
        options = req.decoder_kwargs()
        check_work(options["n"] * len(upper))
        # predict: requests with equal options share a complete_batch call. The seed is not one of them:
        # complete_batch takes one seed per 上联 (the decoder seeds each row by itself).
        seed = options.pop("seed")
        key = ("complete", *sorted(options.items()))
        candidates = await batcher.submit(key, (upper, seed), config.request_timeout_s,
                                          client_gone=lambda: _client_gone(request))
        # encode
        # `unknown`: characters the model read as [UNK] (the page marks them); `script`: the answer's script
        return StrictJSONResponse({"upper": upper, "script": line.script, "unknown": list(line.unknown),
                                   "candidates": encode(candidates)})

    @app.post("/v1/acrostic", response_class=StrictJSONResponse,
              summary="藏头 couplets: the two heads open the 上联 and the 下联")
    async def acrostic_endpoint(req: AcrosticRequest, request: Request) -> StrictJSONResponse:
        # The text-level check here answers before queueing; `Couplets.acrostic` itself checks that the
        # heads are in the vocabulary, and the length against the model's `max_chars`.
        heads = clean_heads(req.heads)
        check_work(req.n * req.length * (1 + ACROSTIC_LOWERS))
        key = ("acrostic", *sorted(req.decoder_kwargs().items()))
        couplets_out = await batcher.submit(key, (heads, req.length), config.request_timeout_s,
                                            client_gone=lambda: _client_gone(request))
        return StrictJSONResponse({"heads": heads, "length": req.length, "couplets": encode(couplets_out)})

    @app.get("/healthz", summary="liveness, limits and batching counters")
    async def healthz() -> dict:
        return {
            "status": "ok",
            "max_chars": max_chars,
            "max_n": MAX_N,
            "max_batch": config.max_batch,
            "queued": batcher.waiting,
            "batches_run": batcher.batches_run,
            "requests_run": batcher.requests_run,
            "recent_batch_sizes": list(batcher.recent_sizes),
        }

    # HEAD as well as GET (link checkers, uptime probes); StaticFiles answers both by itself.
    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8")

    @app.api_route("/docs", methods=["GET", "HEAD"], include_in_schema=False)
    async def docs() -> FileResponse:
        return FileResponse(STATIC_DIR / "docs.html", media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(_Hardening, max_bytes=MAX_BODY_BYTES, read_timeout_s=config.read_timeout_s)
    return app


def clean_heads(text: str) -> str:
    """The two 藏头 heads, normalised; CoupletInputError with a reason otherwise. (The API has no public
    check for heads alone: `Couplets.acrostic` checks them only when it decodes. `clean_upper` is not used:
    its reasons speak of a 上联 the client never sent.)"""
    heads = normalize(text)
    if not heads:
        raise CoupletInputError("the 藏头 heads are empty: send two Chinese characters, e.g. 春福")
    other = "".join(dict.fromkeys(ch for ch in heads if not is_han(ch)))
    if other:
        raise CoupletInputError(f"the 藏头 heads must be two Chinese characters; found {other[:20]!r}")
    if len(heads) != 2:
        raise CoupletInputError(f"the 藏头 heads must be exactly two Chinese characters, got {len(heads)}: {heads}")
    if heads[0] == heads[1]:
        raise CoupletInputError(f"the two 藏头 heads must differ, got {heads}")
    return heads


def check_work(work: int) -> None:
    """ServiceError 422 when a request asks for more than MAX_DECODE_WORK characters of decoding."""
    if work > MAX_DECODE_WORK:
        raise ServiceError(422, f"this request asks for {work} characters of decoding (n x length, and x "
                                f"{1 + ACROSTIC_LOWERS} for a 藏头 couplet); the limit is {MAX_DECODE_WORK}: "
                                "ask for fewer candidates or shorter lines")


async def _client_gone(request: Request) -> None:
    """Returns once the client has disconnected. The body has been read by then, so the next ASGI message
    is the disconnect (uvicorn sends it when the connection closes; test clients once the response is done)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


# --- encode -----------------------------------------------------------------------------------------
def encode(entries: list) -> list[dict]:
    """Candidates or 藏头 couplets as JSON objects, best first, leaving out any with a number that is not
    finite. The decoder never returns one (decode._collect drops such rows); this keeps a regression from
    reaching a client as an answer marked valid with no score."""
    out = []
    for entry in entries:
        d = entry.to_dict()
        if all(math.isfinite(v) for v in d.values() if isinstance(v, float)):
            out.append(d)
    return out


class StrictJSONResponse(JSONResponse):
    """JSON that refuses NaN and infinities (ValueError, so the client gets a 500) instead of writing them:
    JSON has no such numbers, and `null` in their place once read as a score beside `valid: true`."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


# --- errors: always JSON {"error": reason} ----------------------------------------------------------
def _error(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status)


def _is_json(content_type: str) -> bool:
    """application/json or application/<anything>+json, parameters ignored (what FastAPI parses as JSON)."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _validation_reason(request: Request, exc: RequestValidationError) -> tuple[int, str]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "the body is not valid JSON"
    # FastAPI reads only a JSON media type as JSON; any other body ends up here as bytes.
    content_type = request.headers.get("content-type", "")
    if request.method == "POST" and not _is_json(content_type):
        return 415, f"send the body as JSON with Content-Type: application/json (got {content_type or 'none'!r})"
    reasons = []
    for e in errors:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        if e.get("type") == "extra_forbidden":
            reasons.append(f"unknown option {where!r}")
        elif e.get("type") == "missing":
            reasons.append(f"{where} is required")
        elif where == "body":
            reasons.append("the body must be a JSON object")
        else:
            reasons.append(f"{where}: {e.get('msg', 'invalid')}")
    return 422, "; ".join(dict.fromkeys(reasons))


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError):
        return _error(*_validation_reason(request, exc))

    @app.exception_handler(CoupletInputError)
    async def on_input(_: Request, exc: CoupletInputError):
        return _error(422, str(exc))

    @app.exception_handler(ServiceError)
    async def on_service(_: Request, exc: ServiceError):
        return _error(exc.status, exc.reason)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(_: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def on_crash(_: Request, exc: Exception):
        return _error(500, f"internal error: {type(exc).__name__}")


class _Hardening:
    """ASGI wrapper: reads the whole (small) body before anything parses it, refusing one over `max_bytes`
    with 413 (whether or not a Content-Length was sent) and one that has not all arrived `read_timeout_s`
    after the headers with 408; adds SECURITY_HEADERS to every response."""

    def __init__(self, app, max_bytes: int, read_timeout_s: float):
        self.app, self.max_bytes, self.read_timeout_s = app, max_bytes, read_timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        declared = dict(scope.get("headers", [])).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await _refuse(send_with_headers, 413, f"the request body is larger than {self.max_bytes} bytes")
        # Read the whole body now, then replay it to the app.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.read_timeout_s  # the headers are in: the body has this long
        chunks, size, more = [], 0, True
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                return await _refuse(send_with_headers, 408,
                                     f"the request body did not arrive within {self.read_timeout_s:g} s")
            if message["type"] != "http.request":
                return  # client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                return await _refuse(send_with_headers, 413, f"the request body is larger than {self.max_bytes} bytes")
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send_with_headers)


def _error_body(reason: str) -> bytes:
    return json.dumps({"error": reason}, ensure_ascii=False).encode()


async def _refuse(send, status: int, reason: str) -> None:
    """An error response that also closes the connection (the rest of the request is never read)."""
    body = _error_body(reason)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


# --- connections: uvicorn, with bounded reads and a connection cap ----------------------------------
def uvicorn_config(app: FastAPI, http: str = "auto", log_level: str = "info"):
    """The uvicorn.Config that serves `app` (from create_app) on its ServeConfig's host and port, with its
    connection limits: `read_timeout_s` for a request's headers (http_protocol) and body (_Hardening),
    `max_connections`, KEEP_ALIVE_S and MAX_HEADER_BYTES. `http`: uvicorn's HTTP implementation ("auto":
    httptools when installed, else h11).

    uvicorn's own `limit_concurrency` is not used: it answers 503 only once a request's headers have
    arrived, so connections that never finish them would still pile up."""
    import uvicorn

    config: ServeConfig = app.state.config
    return uvicorn.Config(app, host=config.host, port=config.port, http=http_protocol(config, http),
                          timeout_keep_alive=KEEP_ALIVE_S, h11_max_incomplete_event_size=MAX_HEADER_BYTES,
                          log_level=log_level)


def http_protocol(config: ServeConfig, http: str = "auto") -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class `http` ("auto", "h11", "httptools") with _BoundedReads mixed in."""
    from uvicorn.config import HTTP_PROTOCOLS
    from uvicorn.importer import import_from_string

    base = import_from_string(HTTP_PROTOCOLS[http])
    return type(f"Bounded{base.__name__}", (_BoundedReads, base),
                {"read_timeout_s": config.read_timeout_s, "max_connections": config.max_connections})


class _BoundedReads:
    """Mixed into a uvicorn HTTP protocol (one instance per connection). uvicorn bounds only the idle time
    between requests (timeout_keep_alive); here also:

    - a connection beyond `max_connections` is answered 503 and closed at once;
    - a request's headers must be complete within `read_timeout_s` of the connection opening (first request)
      or of their first byte (later requests on a keep-alive connection), else 408 and the connection closes.
      The clock is not reset by data, so a client that trickles a byte at a time is cut off too;
    - headers larger than MAX_HEADER_BYTES get a 431 (httptools, unlike h11, has no limit of its own).

    Once the headers are in, the app runs and _Hardening bounds the body. Both uvicorn implementations keep
    the current request in `self.cycle` (a new object when a request's headers are complete) and have
    `response_complete` on it; that is all this relies on."""

    read_timeout_s: float
    max_connections: int
    _refused = False
    _timer: asyncio.TimerHandle | None = None
    _cycle_seen: Any = None  # the request whose headers were last seen complete
    _header_bytes = 0

    def connection_made(self, transport) -> None:
        if len(self.connections) >= self.max_connections:
            self._refused = True
            transport.write(_raw_response(503, f"the server has {self.max_connections} connections open; "
                                               "try again shortly"))
            transport.close()
            return
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc) -> None:
        if self._refused:
            return
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        if self.cycle is not self._cycle_seen:  # a request's headers are complete: the app bounds the body
            self._cycle_seen, self._header_bytes = self.cycle, 0
            self._disarm()
        elif (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
            # Between requests: these bytes are the start of the next request's headers. (Bytes that come
            # while a request is being answered wait in the parser; the keep-alive timer covers them.)
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES:
                self._close_with(431, f"the request headers are larger than {MAX_HEADER_BYTES} bytes")
            elif self._timer is None:
                self._arm()

    def _arm(self) -> None:
        self._timer = self.loop.call_later(self.read_timeout_s, self._close_with, 408,
                                           f"the request headers did not arrive within {self.read_timeout_s:g} s")

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _close_with(self, status: int, reason: str) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self.transport.write(_raw_response(status, reason))
            self.transport.close()


def _raw_response(status: int, reason: str) -> bytes:
    """A whole HTTP/1.1 error response, for the protocol layer (no request, so no app to answer it)."""
    body = _error_body(reason)
    head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}".encode(), b"content-type: application/json",
            f"content-length: {len(body)}".encode(), b"connection: close",
            *(name + b": " + value for name, value in SECURITY_HEADERS)]
    return b"\r\n".join(head) + b"\r\n\r\n" + body
