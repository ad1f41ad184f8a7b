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
    encode   candidates become JSON with their scores and form checks (`Candidate.to_dict`).

Everything the server sends is same-origin: the page, its script and style and the /docs page live in
duilian/static/, and a Content-Security-Policy forbids the browser from fetching anything else.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import concurrent.futures
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .text import MAX_CHARS, CoupletInputError, clean_upper, is_han

# --- limits -----------------------------------------------------------------------------------------
MAX_UPPER_CHARS = MAX_CHARS  # longest 上联 served; a model may allow fewer (`Couplets.max_chars`)
MAX_N = 10  # candidates per request
MAX_BODY_BYTES = 4 * 1024  # a 32-character 上联 with every option is well under 1 KB
REQUEST_TIMEOUT_S = 30.0  # from arrival to answer, queueing included; then 504
MAX_QUEUE = 1024  # requests waiting for the model; beyond this, 503 at once rather than a slow 504
MAX_TEMPERATURE = 5.0
MAX_TOP_K = 1000
MAX_SEED = 2**63 - 1
MIN_ACROSTIC_LENGTH, MAX_ACROSTIC_LENGTH = 2, MAX_CHARS  # characters per line of a 藏头 couplet, as the API allows

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


# --- request bodies (decode) ------------------------------------------------------------------------
class DecodeOptions(BaseModel):
    """Options shared by both endpoints; they are passed to the decoder unchanged."""

    # strict: "5" is not 5 and 1 is not true; forbid: a misspelt option is an error, not silently ignored.
    model_config = ConfigDict(extra="forbid", strict=True)

    n: int = Field(5, ge=1, le=MAX_N, description=f"number of candidates, 1 to {MAX_N}")
    method: Literal["sample", "beam"] = Field("sample", description="sampling, or beam search (deterministic)")
    temperature: float = Field(1.0, gt=0, le=MAX_TEMPERATURE, description="sampling temperature")
    top_k: int = Field(0, ge=0, le=MAX_TOP_K, description="keep the k most likely characters; 0: all")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass; 1: off")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="same seed, same answer (alone or batched)")
    allow_upper_chars: bool = Field(False, description="let the 下联 reuse characters of the 上联 elsewhere")

    def decoder_kwargs(self) -> dict[str, Any]:
        return self.model_dump(exclude={"upper", "heads", "length"})


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

    async def submit(self, key: tuple, item: Any, timeout_s: float) -> Any:
        self._ensure_running()
        if len(self._queue) >= self.max_queue:
            raise ServiceError(503, f"the server is busy ({self.max_queue} requests waiting); try again shortly")
        job = _Job(key, item, self._loop.create_future())
        self._queue.append(job)
        self._last_arrival = self._loop.time()
        self._arrived.set()
        try:
            return await asyncio.wait_for(job.future, timeout_s)
        except asyncio.TimeoutError:
            # wait_for cancelled the future: the worker skips it if it has not started, and drops the
            # result if it has.
            raise ServiceError(504, f"no answer within {timeout_s:g} s; the server is overloaded, try again") from None

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

    @app.post("/v1/couplets", summary="下联 candidates for a 上联, best first, with their form checks")
    async def couplets_endpoint(req: CoupletRequest) -> dict:
        # decode
        upper = couplets.clean(req.upper)  # CoupletInputError (422) says what is wrong
        options = req.decoder_kwargs()
        # predict: requests with equal options share a complete_batch call. The seed is not one of them:
        # complete_batch takes one seed per 上联 (the decoder seeds each row by itself).
        seed = options.pop("seed")
        key = ("complete", *sorted(options.items()))
        candidates = await batcher.submit(key, (upper, seed), config.request_timeout_s)
        # encode
        return {"upper": upper, "candidates": [c.to_dict() for c in candidates]}

    @app.post("/v1/acrostic", summary="藏头 couplets: the two heads open the 上联 and the 下联")
    async def acrostic_endpoint(req: AcrosticRequest) -> dict:
        # The text-level check here answers before queueing; `Couplets.acrostic` itself checks that the
        # heads differ and are in the vocabulary, and the length against the model's `max_chars`.
        heads = clean_heads(req.heads)
        key = ("acrostic", *sorted(req.decoder_kwargs().items()))
        couplets_out = await batcher.submit(key, (heads, req.length), config.request_timeout_s)
        return {"heads": heads, "length": req.length, "couplets": [c.to_dict() for c in couplets_out]}

    @app.get("/healthz", summary="liveness, limits and batching counters")
    async def healthz() -> dict:
        return {
            "status": "ok",
            "max_chars": max_chars,
            "max_n": MAX_N,
            "max_batch": config.max_batch,
            "batches_run": batcher.batches_run,
            "requests_run": batcher.requests_run,
            "recent_batch_sizes": list(batcher.recent_sizes),
        }

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> FileResponse:
        return FileResponse(STATIC_DIR / "docs.html", media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(_Hardening, max_bytes=MAX_BODY_BYTES)
    return app


def clean_heads(text: str) -> str:
    """The two 藏头 characters, normalised; CoupletInputError with a reason otherwise. (The API has no
    public check for heads alone: `Couplets.acrostic` checks them only when it decodes.)"""
    heads = clean_upper(text, max_chars=2)
    if len(heads) != 2 or not all(is_han(ch) for ch in heads):
        raise CoupletInputError(f"藏头 needs exactly two Chinese characters, got {heads!r}")
    return heads


# --- errors: always JSON {"error": reason} ----------------------------------------------------------
def _error(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status)


def _validation_reason(request: Request, exc: RequestValidationError) -> tuple[int, str]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "the body is not valid JSON"
    content_type = request.headers.get("content-type", "")
    if request.method == "POST" and "json" not in content_type:
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
    """ASGI wrapper: refuses bodies over `max_bytes` with 413 before anything parses them (whether or not
    a Content-Length was sent), and adds SECURITY_HEADERS to every response."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        declared = dict(scope.get("headers", [])).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(send_with_headers)
        # Read the whole (small) body now, then replay it to the app.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                return await self._too_large(send_with_headers)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send_with_headers)

    async def _too_large(self, send):
        body = json.dumps({"error": f"the request body is larger than {self.max_bytes} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
