"""The HTTP service: an API and a web page, shaped as decode -> predict -> encode.

    decode   the JSON body is checked by a strict pydantic model (types, ranges, no unknown options),
             then the 上联 by `Couplets.clean` (the API's own check: normalised, within the model's
             `max_chars`, every character in its vocabulary); anything wrong is a 4xx {"error": reason}.
    predict  requests that arrive together are decoded together: the `MicroBatcher` collects up to
             `max_batch` requests (for at most `batch_wait_ms`, less once none has come for
             `batch_gap_ms`; taking turns between clients when more wait), groups those whose search has
             the same shape (`batch_key`: seed, temperature, top-k and top-p may differ row by row) and
             runs one `Couplets.complete_batch` per group in a single worker thread, so the event loop
             keeps accepting requests while the model works. The API promises batch independence, so a
             request with a seed gets the same answer alone or batched.
             A request whose client disconnects (or that times out) is withdrawn: left out if its group
             has not started, dropped from the model call at the next decoding step if it has. One
             request may ask for at most MAX_DECODE_WORK characters of decoding, and one client may have
             at most `max_queue_per_client` requests waiting.
    encode   candidates become JSON with their scores and form checks (`Candidate.to_dict`); a candidate
             with a score that is not finite is left out, and the response refuses to write NaN or
             infinity rather than send `null` beside `valid: true`.

Connections are bounded too (`uvicorn_config`, which `duilian serve` runs): a client has READ_TIMEOUT_S to
send a request's headers and again its body (then 408 and the connection closes), its request line and
headers may hold MAX_HEADER_BYTES however they arrive (then 431), at most MAX_CONNECTIONS are open at once
and MAX_CONNECTIONS_PER_CLIENT from one address (more get a 503 and are closed), and idle keep-alive
connections close after KEEP_ALIVE_S. The client is the address the server sees; behind a reverse proxy,
`trusted_proxies` makes it the one the proxy forwards. Every error, even one uvicorn's parser raises before
the app sees the request, is JSON with the security headers; HEAD is answered wherever GET is.

Everything the server sends is same-origin: the page, its script and style and the /docs page live in
duilian/static/, and a Content-Security-Policy forbids the browser from fetching anything else.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import inspect
import ipaddress
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

from . import compose, themes
from .api import ACROSTIC_LOWERS, HENGPI_OFFERED, MAX_CALIBRATION_WEIGHT, MAX_PAIR_WEIGHT, MAX_REVERSE_WEIGHT
from .decode import GREEDY_BELOW, MAX_TEMPERATURE  # the decoder's own temperature range: one source of truth
from .knobs import knob
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
MAX_QUEUE_PER_CLIENT = 64
"""Requests one client may have waiting for an answer (queued or being decoded); more get a 503. Without a proxy
MAX_CONNECTIONS_PER_CLIENT bounds them already (a connection carries one request at a time); behind a trusted
proxy (ServeConfig.trusted_proxies) this is what keeps one client from filling the queue."""
MAX_TOP_K = 1000
MAX_SEED = 2**63 - 1
MIN_ACROSTIC_LENGTH, MAX_ACROSTIC_LENGTH = 2, MAX_CHARS  # characters per line of a 藏头 couplet, as the API allows
MAX_THEME_WORDS = compose.MAX_WORDS
OCCASIONS = themes.occasions()
COMPOSE_WORK = compose.UPPERS_PER_RESULT * (1 + compose.LOWERS_PER_UPPER)
"""Rows written per composed couplet asked for: UPPERS_PER_RESULT 上联, and LOWERS_PER_UPPER 下联 for each."""

# --- connection limits (uvicorn_config) -------------------------------------------------------------
READ_TIMEOUT_S = 10.0  # to send a request's headers (from connecting, or its first byte), and again its body; then 408
KEEP_ALIVE_S = 5  # an idle keep-alive connection is closed after this many seconds (uvicorn's default)
MAX_CONNECTIONS = 512  # open at once (a file descriptor each); more are answered 503 and closed
MAX_CONNECTIONS_PER_CLIENT = 64
"""Connections one client address may hold open (an IPv6 client: its /64); more are answered 503 and closed, so
one host cannot take the MAX_CONNECTIONS that everyone shares. 64 is twice benchmarks/bench_serve.py's 32
clients from one address. A trusted proxy's own address is not capped: it carries many clients."""
MAX_HEADER_BYTES = 16 * 1024  # request line and headers (h11's default); more is a 431 and the connection closes
HALF_CLOSE_PROBE_S = 0.1
"""A client that half-closes after sending (shutdown(SHUT_WR)) still gets its answer, but the server cannot tell
that from a client that closed and left: both send the same FIN. While such a request waits, the server writes
an interim `100 Continue` (which HTTP/1.1 clients skip): at once, again a tenth of this later (a nearby client
that has gone has answered the first with a reset by then), then this often. Once a write fails, the request
is withdrawn as if its client had disconnected."""

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

    host: str = knob("interface to listen on; loopback by default, so that nothing is exposed by accident",
                     "127.0.0.1")
    port: int = knob("TCP port", 8000)
    max_batch: int = knob("most requests decoded together in one complete_batch call (each holds n rows); 1 turns "
                          "batching off", 32, group="batching")
    batch_wait_ms: float = knob("longest a batch gathers requests once its first has arrived, in milliseconds; 0: "
                                "only what is queued", 50.0)
    batch_gap_ms: float = knob("close a batch early once no request has come for this many milliseconds (a lone "
                               "request waits only this long)", 5.0)
    request_timeout_s: float = knob("seconds a request may wait for its answer, queueing included, before a 504",
                                    REQUEST_TIMEOUT_S, group="limits", flag="--timeout-s")
    max_queue: int = knob("requests that may wait for the model at once; more get a 503", MAX_QUEUE)
    read_timeout_s: float = knob("seconds a client has to send a request's headers, and again its body, before a "
                                 "408 and a closed connection (a stalled client would hold it for ever)",
                                 READ_TIMEOUT_S)
    max_connections: int = knob("connections open at once; more get a 503 and are closed", MAX_CONNECTIONS)
    max_connections_per_client: int = knob("connections open at once from one client address (IPv6: one /64); more "
                                           "get a 503 and are closed", MAX_CONNECTIONS_PER_CLIENT, group="per client")
    max_queue_per_client: int = knob("requests one client may have waiting for an answer; more get a 503",
                                     MAX_QUEUE_PER_CLIENT)
    # Through a trusted proxy the proxy's own connections are not capped per client (uvicorn's proxy_headers).
    trusted_proxies: tuple[str, ...] = knob(
        "a reverse proxy's IP address or network (CIDR) whose X-Forwarded-For names the client the limits count "
        "against; repeat for several; none: every limit reads the address the server sees and the header is "
        "ignored (anyone could send one)", (), metavar="ADDRESS", flag="--trusted-proxy")
    device: str = knob("torch device for the model when create_app loads it from a directory", "cpu")
    quantize: str | None = knob("weights the decoder runs with when create_app loads the model: None (the model's "
                                "own) or \"int8\" (CPU only; see duilian.load)", None)

    def __post_init__(self):
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.batch_wait_ms < 0 or self.batch_gap_ms < 0:
            raise ValueError(f"batch_wait_ms and batch_gap_ms must be >= 0, got {self.batch_wait_ms}, "
                             f"{self.batch_gap_ms}")
        if self.request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s must be > 0, got {self.request_timeout_s}")
        if self.max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {self.max_queue}")
        if not self.read_timeout_s > 0:
            raise ValueError(f"read_timeout_s must be > 0, got {self.read_timeout_s}")
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {self.max_connections}")
        if self.max_connections_per_client < 1 or self.max_queue_per_client < 1:
            raise ValueError("max_connections_per_client and max_queue_per_client must be >= 1, got "
                             f"{self.max_connections_per_client}, {self.max_queue_per_client}")
        self.trusted_proxies = tuple(self.trusted_proxies)
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(f"trusted_proxies: {proxy!r} is not an IP address or network") from None


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
        kwargs["pos"] = True  # 词性对仗 for every answer: the server has loaded jieba once (create_app)
        return kwargs


class CoupletRequest(DecodeOptions):
    upper: str = Field(description=f"the 上联: Chinese characters and ，。？！；：、, at most {MAX_UPPER_CHARS}",
                       examples=["海阔凭鱼跃"])
    lm_weight: float | None = Field(
        None, ge=0, le=MAX_REVERSE_WEIGHT, description="anti-LM weight β: a 下联 likely whatever the 上联 (万象新) "
                                                       "counts less; 0: off; null: the model's own default")
    calibration_weight: float | None = Field(
        None, ge=0, le=MAX_CALIBRATION_WEIGHT, description="weight of the model's calibration: a character it writes "
                                                           "far more often than people do costs more; 0: off; "
                                                           "null: the model's own")
    reverse_weight: float | None = Field(
        None, ge=0, le=MAX_REVERSE_WEIGHT, description="noisy-channel weight λ: + λ log P(上联 | 下联), for a model "
                                                       "trained both ways; 0: off; null: the model's own default")
    pair_weight: float | None = Field(
        None, ge=0, le=MAX_PAIR_WEIGHT, description="weight of the model's aligned-pair table: a 下联 whose "
                                                    "characters answer the 上联's as people's do (天 against 地) "
                                                    "ranks higher; 0: off; null: the model's own")


class AcrosticRequest(DecodeOptions):
    heads: str = Field(description="two characters: the first goes in the 上联, the second in the 下联",
                       examples=["春福"])
    length: int = Field(7, ge=MIN_ACROSTIC_LENGTH, le=MAX_ACROSTIC_LENGTH, description="characters per line")
    position: int | Literal["last"] = Field(
        1, description="where both characters stand: 1 (藏头, 鹤顶格) to the length, or \"last\" (雁足格); a place "
                       "whose tone rule the character breaks is refused with the reason")


class ComposeRequest(DecodeOptions):
    words: list[str] = Field(min_length=1, max_length=MAX_THEME_WORDS,
                             description=f"1 to {MAX_THEME_WORDS} theme words: a theme, a name, what should be in it",
                             examples=[["春", "福"]])
    length: int = Field(7, ge=MIN_ACROSTIC_LENGTH, le=MAX_ACROSTIC_LENGTH, description="characters per line")
    occasion: Literal[OCCASIONS] | None = Field(  # type: ignore[valid-type]
        None, description="adds the occasion's words and 横批: " + ", ".join(OCCASIONS))
    year: int | None = Field(None, ge=1, le=9999, description="adds the year's animal (2027: 羊) and its 横批")

    def decoder_kwargs(self) -> dict[str, Any]:
        # compose always offers 3 横批 and draws its lines by sampling: hengpi and first do not apply
        kwargs = self.model_dump(exclude={"words", "length", "occasion", "year", "hengpi", "first"})
        kwargs["pos"] = True  # as for every answer (DecodeOptions.decoder_kwargs)
        return kwargs


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
    client: str | None = None  # who asked (client_key), for the per-client limit and fair batches
    withdrawn: bool = False
    """Set on the event loop when the request stops waiting (its client left, or it timed out); the model
    thread reads it between decoding steps (wanted), so a bool that is only ever set to True is enough."""

    def wanted(self) -> bool:
        return not self.withdrawn


class MicroBatcher:
    """Collects concurrent requests and runs them in groups on one worker thread (see `_collect` for when
    a batch closes, and which requests it takes when more are queued than fit).

    `run_group(key, items) -> results` is called with the items of jobs sharing `key` (in arrival
    order) and returns one result per item; a result that is an Exception is raised to that request
    only. With `pass_wanted`, it is called as run_group(key, items, wanted): wanted[i]() turns False once
    item i's request is withdrawn, for a model call to drop it between decoding steps. The single worker
    thread means the model is never used by two threads at once.
    """

    def __init__(self, run_group: Callable[..., list], max_batch: int, wait_s: float, max_queue: int,
                 gap_s: float | None = None, max_per_client: int | None = None, pass_wanted: bool = False):
        self.run_group, self.max_batch, self.wait_s, self.max_queue = run_group, max_batch, wait_s, max_queue
        self.gap_s = wait_s if gap_s is None else gap_s
        self.max_per_client, self.pass_wanted = max_per_client, pass_wanted
        self._pending: collections.Counter[str | None] = collections.Counter()  # per client: submitted, unanswered
        self._last_arrival = float("-inf")
        self.batches_run = 0  # model calls made, and the requests they answered; for /healthz
        self.requests_run = 0
        self.recent_sizes: collections.deque[int] = collections.deque(maxlen=16)  # last model calls' sizes
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        # The jobs waiting for the model, and the event that wakes the worker: made again for each loop it runs on
        self._queue: collections.deque[_Job] = collections.deque()
        self._arrived = asyncio.Event()

    def _ensure_running(self) -> None:
        # The worker task lives on the loop that serves requests. Start it lazily so the app works
        # however it is run (uvicorn, TestClient with or without a lifespan).
        loop = asyncio.get_running_loop()
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="duilian-model")
        if self._loop is not loop or self._task is None or self._task.done():
            self._loop = loop
            self._queue = collections.deque()
            self._arrived = asyncio.Event()
            self._task = loop.create_task(self._worker(), name="duilian-batcher")

    @property
    def waiting(self) -> int:
        """Requests queued for the model (not yet in a model call)."""
        return len(self._queue) if self._executor is not None else 0

    @property
    def unanswered(self) -> int:
        """Requests submitted and not yet answered or withdrawn: queued, or in a model call."""
        return sum(self._pending.values())

    async def submit(self, key: tuple, item: Any, timeout_s: float,
                     client_gone: Callable[[], Awaitable[None]] | None = None, client: str | None = None) -> Any:
        """The result `run_group` gives for `item`. ServiceError 503 when `max_queue` requests are waiting, or
        `max_per_client` of this `client`'s are unanswered (None: not known, not counted); 504 after
        `timeout_s`, and 499 once `client_gone()` (an awaitable that finishes when the client has disconnected)
        finishes first. A job that is not answered is withdrawn: never run if it has not started, dropped from
        its model call at the next decoding step if the call takes `wanted` (else its result is dropped)."""
        self._ensure_running()
        if len(self._queue) >= self.max_queue:
            raise ServiceError(503, f"the server is busy ({self.max_queue} requests waiting); try again shortly")
        if self.max_per_client is not None and client is not None and self._pending[client] >= self.max_per_client:
            raise ServiceError(503, f"this client already has {self._pending[client]} requests waiting (the limit "
                                    "per client); wait for their answers")
        job = _Job(key, item, self._loop.create_future(), client)
        self._queue.append(job)
        self._pending[client] += 1
        self._last_arrival = self._loop.time()
        self._arrived.set()
        watcher = asyncio.ensure_future(client_gone()) if client_gone is not None else None
        try:
            done, _ = await asyncio.wait([job.future] if watcher is None else [job.future, watcher],
                                         timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when this request itself is cancelled
            self._pending[client] -= 1
            if not self._pending[client]:
                del self._pending[client]
            if watcher is not None:
                watcher.cancel()
                if watcher.done() and not watcher.cancelled():
                    watcher.exception()  # retrieved: whatever it was, the client is treated as gone
            if not job.future.done():
                job.withdrawn = True  # a running model call drops it at its next step
                job.future.cancel()  # the worker skips a cancelled job
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
            jobs += self._take(self.max_batch - len(jobs))
            deadline = min(start + self.wait_s, max(start, self._last_arrival) + self.gap_s)
            remaining = deadline - self._loop.time()
            if len(jobs) >= self.max_batch or remaining <= 0:
                return jobs
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    def _take(self, room: int) -> list[_Job]:
        """Up to `room` jobs off the queue. When they all fit, all of them in arrival order; otherwise in rounds
        across clients (each client's first queued job, then each one's second, ...), so that one client's many
        requests cannot keep another's out of the batch."""
        if len(self._queue) <= room:
            taken = list(self._queue)
            self._queue.clear()
            return taken
        if room <= 0:
            return []
        rank, seen = [], collections.Counter()
        for i, job in enumerate(self._queue):  # round of each job: how many of its client's came before it
            rank.append((seen[job.client], i))
            seen[job.client] += 1
        chosen = {i for _, i in sorted(rank)[:room]}
        taken = [job for i, job in enumerate(self._queue) if i in chosen]
        self._queue = collections.deque(job for i, job in enumerate(self._queue) if i not in chosen)
        return taken

    async def _worker(self) -> None:
        while True:
            jobs = await self._collect()
            groups: dict[tuple, list[_Job]] = {}
            for job in jobs:
                groups.setdefault(job.key, []).append(job)
            for key, group in groups.items():
                # Just before the model call: leave out requests withdrawn meanwhile (timed out, or their clients
                # left while the batch gathered or earlier groups ran).
                group = [job for job in group if not job.future.done()]
                if not group:
                    continue
                args = (key, [job.item for job in group])
                if self.pass_wanted:
                    args += ([job.wanted for job in group],)
                try:
                    results = await self._loop.run_in_executor(self._executor, self.run_group, *args)
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


SAMPLING_OPTIONS = ("seed", "temperature", "top_k", "top_p")
"""Options that may differ row by row within one model call (Couplets.complete_batch takes one per 上联). The
others change the shape of the search (method, n, first, greedy or not) or how every line is read and
answered (script, allow_upper_chars, hengpi), so requests share a call only when those are equal."""


def batch_key(kind: str, options: dict) -> tuple[tuple, dict]:
    """A request's decoder options -> (the key of the requests it may share a model call with, its own
    SAMPLING_OPTIONS). Sampled and greedy requests (temperature below decode.GREEDY_BELOW) differ in shape; beam
    search ignores the sampling options, so beam requests share a call whatever they are."""
    own = {name: options[name] for name in SAMPLING_OPTIONS}
    shape = {name: value for name, value in options.items() if name not in SAMPLING_OPTIONS}
    greedy = options["method"] == "sample" and options["temperature"] < GREEDY_BELOW
    return (kind, greedy, *sorted(shape.items())), own


def _rows(own: list[dict]) -> dict:
    """The SAMPLING_OPTIONS of a group's requests as complete_batch takes them: seeds as a list (one per 上联),
    the others as one value when every request has the same, else a list."""
    out = {"seed": [o["seed"] for o in own]}
    for name in SAMPLING_OPTIONS[1:]:
        values = [o[name] for o in own]
        out[name] = values[0] if len(set(values)) == 1 else values
    return out


def _make_run_group(couplets) -> Callable[[tuple, list, list], list]:
    """The model side of the batcher: one `complete_batch` per group of 上联 sharing the shape of the search
    (batch_key), each row with its own sampling options. A model object whose complete_batch / acrostic take
    `wanted` (duilian.Couplets) drops withdrawn requests between decoding steps."""
    takes_wanted = {name: "wanted" in inspect.signature(getattr(couplets, name)).parameters
                    for name in ("complete_batch", "acrostic")}

    def run_group(key: tuple, items: list, wanted: list) -> list:
        kind, options = key[0], dict(key[2:])
        if kind == "compose":  # one request at a time, like 藏头 (each has its own prompts)
            return [_capture(couplets.compose, list(words), length=length, occasion=occasion, year=year, **options,
                             **own) if still() else ServiceError(499, "the client closed the connection before its "
                                                                      "answer")
                    for (words, length, occasion, year, own), still in zip(items, wanted)]
        if kind == "acrostic":  # the API decodes one 藏头 request at a time
            out = []
            for (heads, length, own), still in zip(items, wanted):
                if not still():  # withdrawn while the requests before it were decoded
                    out.append(ServiceError(499, "the client closed the connection before its answer"))
                    continue
                extra = {"wanted": still} if takes_wanted["acrostic"] else {}
                out.append(_capture(couplets.acrostic, heads, length=length, **options, **own, **extra))
            return out

        def complete(rows: list, checks: list) -> list:
            extra = {"wanted": checks} if takes_wanted["complete_batch"] else {}
            return couplets.complete_batch([u for u, _ in rows], **options, **_rows([o for _, o in rows]), **extra)

        try:
            return complete(items, wanted)
        except CoupletInputError:
            if len(items) == 1:
                raise
            # One bad 上联 must not fail the others: decode each alone, errors stay with their request.
            return [_capture(lambda item, still: complete([item], [still])[0], item, still)
                    for item, still in zip(items, wanted)]

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
    from .pos import classes

    classes("春风")  # jieba loads its dictionary now (1-2 s), not in the first request
    batcher = MicroBatcher(_make_run_group(couplets), config.max_batch, config.batch_wait_ms / 1000,
                           config.max_queue, gap_s=config.batch_gap_ms / 1000,
                           max_per_client=config.max_queue_per_client, pass_wanted=True)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        batcher.close()

    app = _App(
        title="duilian",
        lifespan=lifespan,
        description="Chinese couplets (对联): 下联 for a 上联, and 藏头 couplets, right in form every time.",
        # FastAPI's own /docs and /redoc pages load their scripts from a CDN; ours is served from static/.
        docs_url=None,
        redoc_url=None,
        # No redirect from /static to /static/ (or /docs/ to /docs): Starlette builds its Location from the
        # Host header, which the client chooses. A path with the wrong slash is a 404.
        redirect_slashes=False,
    )
    app.hardening = {"max_bytes": MAX_BODY_BYTES, "read_timeout_s": config.read_timeout_s}
    app.state.couplets, app.state.batcher, app.state.config = couplets, batcher, config
    _add_error_handlers(app)

    _add_decoding_routes(app, couplets, batcher, config)

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

    # HEAD is answered wherever GET is (link checkers, uptime probes): _Hardening turns it into a GET whose
    # body it leaves out.
    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> FileResponse:
        return FileResponse(STATIC_DIR / "docs.html", media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _add_decoding_routes(app: FastAPI, couplets, batcher: "MicroBatcher", config: ServeConfig) -> None:
    """POST /v1/couplets, /v1/acrostic and /v1/compose: each request is read, checked against the work limit,
    queued in the micro-batcher and answered with its candidates, best first."""
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
        # predict: requests whose search has the same shape share a complete_batch call; seeds, temperatures,
        # top-k and top-p may differ row by row (batch_key).
        key, own = batch_key("complete", options)
        candidates = await batcher.submit(key, (upper, own), config.request_timeout_s,
                                          client_gone=lambda: _client_gone(request), client=_client_of(request))
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
        key, own = batch_key("acrostic", req.decoder_kwargs())
        couplets_out = await batcher.submit(key, (heads, req.length, own), config.request_timeout_s,
                                            client_gone=lambda: _client_gone(request), client=_client_of(request))
        return StrictJSONResponse({"heads": heads, "length": req.length, "couplets": encode(couplets_out)})

    @app.post("/v1/compose", response_class=StrictJSONResponse,
              summary="whole couplets about a few words: 上联, 下联 and 3 横批, best first")
    async def compose_endpoint(req: ComposeRequest, request: Request) -> StrictJSONResponse:
        words = compose.clean_words(req.words)  # CoupletInputError (422) says what is wrong
        options = req.decoder_kwargs()
        check_work(req.n * req.length * COMPOSE_WORK)
        key, own = batch_key("compose", options)
        out = await batcher.submit(key, (tuple(words), req.length, req.occasion, req.year, own),
                                   config.request_timeout_s, client_gone=lambda: _client_gone(request),
                                   client=_client_of(request))
        return StrictJSONResponse({"words": words, "occasion": req.occasion, "year": req.year,
                                   "couplets": encode(out)})


class _App(FastAPI):
    """FastAPI with _Hardening outside all of Starlette's own middleware (add_middleware puts it inside
    ServerErrorMiddleware, whose 500 would then go out without the security headers)."""

    hardening: dict

    def build_middleware_stack(self):
        return _Hardening(super().build_middleware_stack(), **self.hardening)


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
                                f"{1 + ACROSTIC_LOWERS} for a 藏头 couplet, x {COMPOSE_WORK} to compose); the limit "
                                f"is {MAX_DECODE_WORK}: ask for fewer candidates or shorter lines")


def client_key(host: str) -> str:
    """The address the per-client limits count by: an IPv4 address, an IPv6 address's /64 (one host's share of a
    network; a host may use any address in it), or the name a test transport gives."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if ip.version == 6:
        return str(ip.ipv4_mapped) if ip.ipv4_mapped else str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _client_of(request: Request) -> str | None:
    """The client a request counts against: the address the server sees, or the one a trusted proxy forwarded
    (uvicorn's proxy_headers rewrite request.client only for ServeConfig.trusted_proxies)."""
    return client_key(request.client.host) if request.client else None


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
    """ASGI wrapper around the whole app: reads the whole (small) body before anything parses it, refusing one
    over `max_bytes` with 413 (whether or not a Content-Length was sent) and one that has not all arrived
    `read_timeout_s` after the headers with 408; refuses a body declared in a charset other than UTF-8 with
    415 (it would be read as UTF-8 anyway); answers HEAD wherever GET is served (the GET response without its
    body); adds SECURITY_HEADERS to every response."""

    def __init__(self, app, max_bytes: int, read_timeout_s: float):
        self.app, self.max_bytes, self.read_timeout_s = app, max_bytes, read_timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        head = scope["method"] == "HEAD"
        if head:
            scope = {**scope, "method": "GET"}

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            elif head and message["type"] == "http.response.body":
                message = {**message, "body": b""}  # Content-Length stays the GET response's
            await send(message)

        headers = dict(scope.get("headers", []))
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await _refuse(send_with_headers, 413, f"the request body is larger than {self.max_bytes} bytes")
        charset = _charset(headers.get(b"content-type", b"").decode("latin-1"))
        if charset not in (None, "utf-8", "utf8"):
            return await _refuse(send_with_headers, 415, f"send the body in UTF-8 (charset=utf-8, or no charset), "
                                                         f"not {charset[:40]!r}")
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


def _charset(content_type: str) -> str | None:
    """The charset parameter of a Content-Type, lower case and unquoted; None when there is none."""
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower()
    return None


def _error_body(reason: str) -> bytes:
    return json.dumps({"error": reason}, ensure_ascii=False).encode()


async def _refuse(send, status: int, reason: str) -> None:
    """An error response that also closes the connection (the rest of the request is never read)."""
    body = _error_body(reason)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


# --- connections: uvicorn, with bounded reads and connection caps -----------------------------------
def uvicorn_config(app: FastAPI, http: str = "auto", log_level: str = "info"):
    """The uvicorn.Config that serves `app` (from create_app) on its ServeConfig's host and port, with its
    connection limits: `read_timeout_s` for a request's headers (http_protocol) and body (_Hardening),
    `max_connections` and `max_connections_per_client`, KEEP_ALIVE_S and MAX_HEADER_BYTES. `http`: uvicorn's
    HTTP implementation ("auto": httptools when installed, else h11). X-Forwarded-For is read only from
    `trusted_proxies` (uvicorn would otherwise trust it from 127.0.0.1), and no WebSocket is served.

    uvicorn's own `limit_concurrency` is not used: it answers 503 only once a request's headers have
    arrived, so connections that never finish them would still pile up."""
    import uvicorn

    config: ServeConfig = app.state.config
    return uvicorn.Config(app, host=config.host, port=config.port, http=http_protocol(config, http), ws="none",
                          timeout_keep_alive=KEEP_ALIVE_S, h11_max_incomplete_event_size=MAX_HEADER_BYTES,
                          proxy_headers=bool(config.trusted_proxies),
                          forwarded_allow_ips=list(config.trusted_proxies) or None, log_level=log_level)


def http_protocol(config: ServeConfig, http: str = "auto") -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class `http` ("auto", "h11", "httptools") with _BoundedReads mixed in; the class
    holds this server's connection count per client."""
    from uvicorn.config import HTTP_PROTOCOLS
    from uvicorn.importer import import_from_string

    base = import_from_string(HTTP_PROTOCOLS[http])
    return type(f"Bounded{base.__name__}", (_BoundedReads, base),
                {"read_timeout_s": config.read_timeout_s, "max_connections": config.max_connections,
                 "max_per_client": config.max_connections_per_client,
                 "trusted": tuple(ipaddress.ip_network(p, strict=False) for p in config.trusted_proxies),
                 "open_per_client": collections.Counter()})


class _BoundedReads:
    """Mixed into a uvicorn HTTP protocol (one instance per connection). uvicorn bounds only the idle time
    between requests (timeout_keep_alive); here also:

    - a connection beyond `max_connections`, or beyond `max_per_client` from one client address (client_key; a
      trusted proxy's are not counted), is answered 503 and closed at once;
    - a request's headers must be complete within `read_timeout_s` of the connection opening (first request)
      or of their first byte (later requests on a keep-alive connection), else 408 and the connection closes.
      The clock is not reset by data, so a client that trickles a byte at a time is cut off too;
    - a request line and headers larger than MAX_HEADER_BYTES get a 431 (a URL that large alone, a 414),
      however the bytes arrive: counted as they come while a request's headers are incomplete (httptools has
      no limit of its own; h11's is MAX_HEADER_BYTES too, and answers 400), and as the parser reads each
      request's (_on_head_part), which also covers headers that arrive whole in one read, pipelined or not;
    - an error before the app sees the request (bad HTTP, an unknown method, a bad Content-Length) is answered
      in JSON with SECURITY_HEADERS, like every other error;
    - a client that half-closes after sending its request still gets the answer (see HALF_CLOSE_PROBE_S).

    Once the headers are in, the app runs and _Hardening bounds the body. Both uvicorn implementations keep
    the current request in `self.cycle` (a new object when a request's headers are complete) with
    `response_started`, `response_complete`, `more_body` and `keep_alive` on it; that, send_400_response, and
    the parser callbacks on_message_begin / on_url / on_header (httptools) or `self.conn` (h11) are all this
    relies on."""

    read_timeout_s: float
    max_connections: int
    max_per_client: int
    trusted: tuple
    open_per_client: collections.Counter
    _refused = False
    _client: str | None = None  # the client_key this connection counts against (None: not counted)
    _timer: asyncio.TimerHandle | None = None
    _probe_timer: asyncio.TimerHandle | None = None
    _cycle_seen: Any = None  # the request whose headers were last seen complete
    _header_bytes = 0
    _head_bytes = 0  # the request line and headers the parser has read of the current request
    _url_bytes = 0
    _too_large: tuple[int, str] | None = None  # (status, reason) once the parser's count passed the limit

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        import h11

        if isinstance(getattr(self, "conn", None), h11.Connection):  # h11: count each request's head as read
            self.conn = _H11HeadLimit.make(self)

    def connection_made(self, transport) -> None:
        peer = transport.get_extra_info("peername")
        host = peer[0] if isinstance(peer, (tuple, list)) and peer else None
        # A trusted proxy speaks for many clients: only the global cap applies to its connections.
        client = client_key(host) if host is not None and not self._trusted(host) else None
        if len(self.connections) >= self.max_connections:
            return self._refuse_connection(transport, f"the server has {self.max_connections} connections open; "
                                                      "try again shortly")
        if client is not None and self.open_per_client[client] >= self.max_per_client:
            return self._refuse_connection(transport, f"this client already has {self.max_per_client} connections "
                                                      "open (the limit per client); close some and try again")
        if client is not None:
            self._client = client
            self.open_per_client[client] += 1
        super().connection_made(transport)
        self._arm()

    def _refuse_connection(self, transport, reason: str) -> None:
        self._refused = True
        transport.write(_raw_response(503, reason))
        transport.close()

    def connection_lost(self, exc) -> None:
        if self._refused:
            return
        if self._client is not None:
            self.open_per_client[self._client] -= 1
            if not self.open_per_client[self._client]:
                del self.open_per_client[self._client]
            self._client = None
        self._disarm()
        if self._probe_timer is not None:
            self._probe_timer.cancel()
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

    # The parser's view of each request's head (httptools callbacks; h11 through _head_limited_h11).
    def on_message_begin(self) -> None:
        self._head_bytes = self._url_bytes = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._on_head_part(len(url), url=True)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._on_head_part(len(name) + len(value) + 4)  # "name: value\r\n"
        super().on_header(name, value)

    def _on_head_part(self, size: int, url: bool = False) -> None:
        """Count `size` more bytes of the current request's head; past MAX_HEADER_BYTES, raise (the parser then
        stops, and send_400_response answers with the status kept here)."""
        self._head_bytes += size
        self._url_bytes += size if url else 0
        if self._url_bytes > MAX_HEADER_BYTES:
            self._too_large = (414, f"the URL is longer than {MAX_HEADER_BYTES} bytes")
        elif self._head_bytes > MAX_HEADER_BYTES:
            self._too_large = (431, f"the request headers are larger than {MAX_HEADER_BYTES} bytes")
        if self._too_large:
            raise ValueError(self._too_large[1])

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request its parser refused (plain text there): JSON with the security headers,
        and 431/414 when the refusal was the head's size."""
        if self._too_large is not None:
            return self._close_with(*self._too_large)
        buffered = getattr(getattr(self, "conn", None), "trailing_data", (b"",))[0]
        if len(buffered) > MAX_HEADER_BYTES:  # h11's own limit on incomplete headers (it answers 400)
            return self._close_with(400, f"the request headers are larger than {MAX_HEADER_BYTES} bytes")
        self._close_with(400, "the request is not valid HTTP/1.1 (a malformed request line or header, an unknown "
                              "method, or a bad Content-Length)")

    # A half-closed request.
    def eof_received(self):
        cycle = self.cycle
        if (self._refused or cycle is None or cycle.response_complete or cycle.more_body
                or cycle.scope.get("http_version") != "1.1"):
            return None  # nothing left to answer (or an HTTP/1.0 client, which may not get a 1xx): close
        cycle.keep_alive = False  # answer, then close
        self._probe(cycle, HALF_CLOSE_PROBE_S / 10)
        return True  # keep the transport open for the answer

    def _probe(self, cycle, next_s: float) -> None:
        """While the half-closed request `cycle` waits, write an interim 100 Continue (HALF_CLOSE_PROBE_S): once
        the client has gone, a write fails and uvicorn marks the request disconnected."""
        self._probe_timer = None
        if self.cycle is not cycle or cycle.response_started or self.transport.is_closing():
            return
        self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._probe_timer = self.loop.call_later(next_s, self._probe, cycle, HALF_CLOSE_PROBE_S)

    def _trusted(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ip in net for net in self.trusted)

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


class _H11HeadLimit:
    """h11's Connection, counting each request's head as h11 reads it (_BoundedReads._on_head_part): h11 limits
    only a head it has not finished (max_incomplete_event_size), so one that arrives whole, in one read, would
    pass. Made lazily: h11 is imported only when uvicorn serves with it."""

    _cls: type | None = None

    @classmethod
    def make(cls, protocol: _BoundedReads):
        import h11

        if cls._cls is None:
            class HeadLimited(h11.Connection):
                protocol: _BoundedReads

                def next_event(self):
                    event = super().next_event()
                    if isinstance(event, h11.Request):
                        p = self.protocol
                        p._head_bytes = p._url_bytes = 0
                        try:
                            p._on_head_part(len(event.target), url=True)
                            p._on_head_part(len(event.method) + len(" HTTP/1.1\r\n\r\n")
                                            + sum(len(n) + len(v) + 4 for n, v in event.headers.raw_items()))
                        except ValueError as exc:  # too large: uvicorn answers through send_400_response
                            raise h11.RemoteProtocolError(str(exc)) from None
                    return event

            cls._cls = HeadLimited
        conn = cls._cls(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        conn.protocol = protocol
        return conn


def _raw_response(status: int, reason: str) -> bytes:
    """A whole HTTP/1.1 error response, for the protocol layer (no request, so no app to answer it)."""
    body = _error_body(reason)
    head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}".encode(), b"content-type: application/json",
            f"content-length: {len(body)}".encode(), b"connection: close",
            *(name + b": " + value for name, value in SECURITY_HEADERS)]
    return b"\r\n".join(head) + b"\r\n\r\n" + body
