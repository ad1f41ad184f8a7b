"""Load benchmark for `duilian serve`, on loopback only, bounded in requests and time.

Starts two real servers (the `duilian serve` CLI module, in subprocesses) on free 127.0.0.1 ports with a
random model of the given preset, then sends 上联 from the test fixture with C concurrent clients (a minimal
keep-alive HTTP client; --client httpx for httpx):

    baseline   max_batch=1: the same server code handling one request at a time; or, with --baseline-rev,
               the server as it was at that git revision (exported with `git archive`), batching as it did
    batched    max_batch=C: concurrent requests decoded together
    single     one client against the batched server (the latency a lone user sees)

Each request asks for n candidates with the default options, or (--options mixed) with its own temperature,
top-k and top-p, drawn at random but the same for both servers (request i gets the i-th draw).

baseline and batched alternate for --rounds rounds. It reports p50/p99 latency, requests/s and errors for
each, and the median of throughput(batched) / throughput(baseline). Both sides run in the same invocation
with the same model, threads and requests, so the ratio is fair on a busy machine; the absolute numbers
are not.

    python benchmarks/bench_serve.py                      # mini preset, 32 clients, against one at a time
    python benchmarks/bench_serve.py --options mixed --baseline-rev 29f1090   # against the server before issue 17
    python benchmarks/bench_serve.py --preset tiny --requests 64 --baseline-requests 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from revision import export_revision  # benchmarks/revision.py (scripts run from benchmarks/)

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "couplets" / "in.txt"
STARTUP_TIMEOUT_S = 120.0
MIXED_TEMPERATURES = (0.5, 1.5)  # --options mixed: uniform in this range (never greedy)
MIXED_TOP_K = (0, 0, 5, 20, 50, 200)  # one of these (0: off), uniformly
MIXED_TOP_P = (0.5, 1.0)  # uniform in this range, or 1 (off) for half the requests


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="mini", help="random model preset when --model is not given (default mini)")
    p.add_argument("--model", default=None, help="serve this model directory instead of a random preset")
    p.add_argument("--concurrency", type=int, default=32, help="concurrent clients (default 32)")
    p.add_argument("--requests", type=int, default=256, help="requests per batched round (default 256)")
    p.add_argument("--baseline-requests", type=int, default=64,
                   help="requests per one-at-a-time round (default 64; it is the slow one)")
    p.add_argument("--rounds", type=int, default=2, help="alternating baseline/batched rounds; the median ratio is "
                   "reported (default 2)")
    p.add_argument("--single-requests", type=int, default=16, help="requests from one lone client (default 16)")
    p.add_argument("--length", type=int, default=None,
                   help="only 上联 of this many characters (default: the fixture's natural mix of lengths)")
    p.add_argument("--n", type=int, default=5, help="candidates per request (default 5)")
    p.add_argument("--options", choices=("fixed", "mixed"), default="fixed",
                   help="fixed: every request with the default temperature, top-k and top-p; mixed: each request "
                        "its own, at random (the same for both servers)")
    p.add_argument("--baseline-rev", default=None, metavar="REV",
                   help="the baseline is the server at this git revision, batching like the batched one (e.g. the "
                        "commit before a change); default: the current code one request at a time")
    p.add_argument("--batch-wait-ms", type=float, default=50.0,
                   help="the batched server's longest wait (default 50 ms)")
    p.add_argument("--batch-gap-ms", type=float, default=5.0, help="the batched server's idle gap (default 5 ms)")
    p.add_argument("--client", choices=("raw", "httpx"), default="raw",
                   help="load generator: a minimal asyncio HTTP client (default; light on CPU) or httpx")
    p.add_argument("--int8", action="store_true", help="both servers decode with int8 weights (duilian serve --int8)")
    p.add_argument("--threads", type=int, default=1, help="torch threads in the server (default 1)")
    p.add_argument("--max-seconds", type=float, default=120.0,
                   help="stop sending new requests in a phase after this many seconds (default 120)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p.parse_args(argv)


# --- the server -------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: str, max_batch: int, batch_wait_ms: float, batch_gap_ms: float, threads: int,
                 int8: bool = False, source: Path | None = None) -> tuple[subprocess.Popen, str]:
    """A `duilian serve` subprocess; `source`: a directory holding the duilian package to run (another revision)
    instead of the one this Python imports."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(source), *filter(None, [os.environ.get("PYTHONPATH")])])
    # Through the CLI module itself, so the benchmark measures what `duilian serve` runs.
    code = (
        "import argparse, sys, torch; torch.set_num_threads(int(sys.argv[1]));"
        "from duilian.cli import serve; p = argparse.ArgumentParser(); serve.register(p);"
        "sys.exit(serve.run(p.parse_args(sys.argv[2:])))"
    )
    cmd = [sys.executable, "-c", code, str(threads), "--host", "127.0.0.1", "--port", str(port),
           "--model", model_dir, "--max-batch", str(max_batch), "--batch-wait-ms", str(batch_wait_ms),
           "--batch-gap-ms", str(batch_gap_ms)] + (["--int8"] if int8 else [])
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=1.0).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_server(proc)
    raise RuntimeError(f"the server did not answer /healthz within {STARTUP_TIMEOUT_S:g} s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- the clients ------------------------------------------------------------------------------------
@dataclass
class Response:
    status_code: int
    text: str

    def json(self):
        return json.loads(self.text)


class RawClient:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams, with the interface of httpx.AsyncClient that
    `load` uses. httpx spends about 4 ms of CPU per request here, which on a 2-core machine is taken from the
    server under test; this spends a fraction of that (each phase reports the client's CPU per request)."""

    def __init__(self, base_url: str, connections: int, timeout: float):
        host, port = base_url.removeprefix("http://").split(":")
        self.host, self.port, self.timeout = host, int(port), timeout
        self.idle: asyncio.Queue = asyncio.Queue()
        for _ in range(connections):
            self.idle.put_nowait(None)  # opened on first use

    async def request(self, method: str, path: str, body: bytes = b"") -> Response:
        conn = await self.idle.get()
        try:
            if conn is not None:
                try:
                    return await self._exchange(conn, method, path, body)
                except (asyncio.IncompleteReadError, ConnectionError):
                    # The server closed this idle keep-alive connection (uvicorn does after 5 s): reconnect.
                    conn[1].close()
            conn = await asyncio.open_connection(self.host, self.port)
            return await self._exchange(conn, method, path, body)
        except BaseException:
            if conn is not None:
                conn[1].close()
            conn = None
            raise
        finally:
            self.idle.put_nowait(conn)

    async def _exchange(self, conn, method: str, path: str, body: bytes) -> Response:
        reader, writer = conn
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        writer.write(head + body)
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.timeout)
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = dict(line.lower().split(": ", 1) for line in lines[1:] if line)
        text = (await reader.readexactly(int(headers["content-length"]))).decode()
        return Response(status, text)

    async def post(self, path: str, json: dict) -> Response:
        import json as _json

        return await self.request("POST", path, _json.dumps(json).encode())

    async def get(self, path: str) -> Response:
        return await self.request("GET", path)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        while not self.idle.empty():
            conn = self.idle.get_nowait()
            if conn is not None:
                conn[1].close()


def request_options(count: int, mixed: bool, seed: int = 0) -> list[dict]:
    """The sampling options of requests 0..count-1: none (the defaults), or each its own at random."""
    if not mixed:
        return [{}] * count
    rng = random.Random(seed)
    return [{"temperature": round(rng.uniform(*MIXED_TEMPERATURES), 3), "top_k": rng.choice(MIXED_TOP_K),
             "top_p": round(rng.uniform(*MIXED_TOP_P), 3) if rng.random() < 0.5 else 1.0} for _ in range(count)]


async def load(http: httpx.AsyncClient, uppers: list[str], requests: int, concurrency: int, n: int,
               max_seconds: float, options: list[dict] | None = None) -> dict:
    """`requests` POSTs from `concurrency` clients, each sending its next request when the last is answered;
    request i carries options[i] (its sampling options). The connections in `http` are reused across calls,
    so no phase pays for opening them."""
    options = options or [{}] * requests
    latencies: list[float] = []
    errors: list[str] = []
    counter = iter(range(requests))
    stop_at = time.monotonic() + max_seconds

    async def client(http: httpx.AsyncClient):
        for i in counter:
            if time.monotonic() > stop_at:
                return
            t0 = time.perf_counter()
            try:
                r = await http.post("/v1/couplets", json={"upper": uppers[i % len(uppers)], "n": n, **options[i]})
                ok = r.status_code == 200 and len(r.json()["candidates"]) > 0
                if not ok:
                    errors.append(f"{r.status_code}: {r.text[:200]}")
            except (httpx.HTTPError, OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as exc:
                errors.append(repr(exc))
                ok = False
            if ok:
                latencies.append(time.perf_counter() - t0)

    t0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client(http) for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    done = len(latencies)
    q = statistics.quantiles(latencies, n=100, method="inclusive") if done >= 2 else latencies * 99
    return {
        "requests": done + len(errors),
        "concurrency": concurrency,
        "errors": len(errors),
        "first_errors": errors[:3],
        "wall_s": round(wall, 3),
        "requests_per_s": round(done / wall, 3) if wall else 0.0,
        "p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
        "p99_ms": round(1000 * q[98], 1) if latencies else None,
        # CPU the benchmark's own clients spent per request: on a small machine they compete with the server.
        "client_cpu_ms_per_request": round(1000 * cpu / max(1, done + len(errors)), 2),
    }


async def measure(name: str, http: httpx.AsyncClient, args, uppers: list[str], requests: int,
                  concurrency: int) -> dict:
    before = (await http.get("/healthz")).json()
    result = await load(http, uppers, requests, concurrency, args.n, args.max_seconds,
                        request_options(requests, args.options == "mixed"))
    after = (await http.get("/healthz")).json()
    mean_batch = (after["requests_run"] - before["requests_run"]) / max(1, after["batches_run"] - before["batches_run"])
    result.update(phase=name, mean_batch=round(mean_batch, 2), recent_batch_sizes=after["recent_batch_sizes"])
    print(f"  {name:9s} clients={concurrency:<3d} requests={result['requests']:<4d} errors={result['errors']}  "
          f"p50={result['p50_ms']} ms  p99={result['p99_ms']} ms  {result['requests_per_s']} req/s  "
          f"mean batch {mean_batch:.1f}  client CPU {result['client_cpu_ms_per_request']} ms/request", flush=True)
    if mean_batch > 1:
        print(f"  {'':9s} last model calls' batch sizes: {after['recent_batch_sizes']}", flush=True)
    return result


async def run_rounds(args, uppers: list[str], base_url: str, batch_url: str) -> tuple[list[dict], dict]:
    C = args.concurrency
    limits = httpx.Limits(max_connections=C, max_keepalive_connections=C)
    timeout = args.max_seconds + 60
    if args.client == "raw":
        clients = RawClient(base_url, C, timeout), RawClient(batch_url, C, timeout)
    else:
        clients = (httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits),
                   httpx.AsyncClient(base_url=batch_url, timeout=timeout, limits=limits))
    async with clients[0] as base, clients[1] as batch:
        for http in (base, batch):  # warm-up: opens the connections, first model calls
            await load(http, uppers, 2 * C, C, args.n, args.max_seconds,
                       request_options(2 * C, args.options == "mixed", seed=1))
        rounds = []
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", flush=True)
            baseline = await measure("baseline", base, args, uppers, args.baseline_requests, C)
            batched = await measure("batched", batch, args, uppers, args.requests, C)
            ratio = batched["requests_per_s"] / baseline["requests_per_s"] if baseline["requests_per_s"] else 0.0
            print(f"  ratio {ratio:.2f}x", flush=True)
            rounds.append({"baseline": baseline, "batched": batched, "ratio": round(ratio, 3)})
        single = await measure("single", batch, args, uppers, args.single_requests, 1)
    return rounds, single


def main(argv=None) -> int:
    args = parse_args(argv)
    lines = FIXTURE.read_text(encoding="utf-8").splitlines()
    uppers = [line.replace(" ", "").strip() for line in lines if line.strip()]
    if args.length is not None:
        uppers = [u for u in uppers if len(u) == args.length]
        if not uppers:
            print(f"no 上联 of {args.length} characters in {FIXTURE}", file=sys.stderr)
            return 2
    C = args.concurrency
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            from duilian.model import build_model

            model_dir = tmp
            build_model(args.preset, seed=0).save_pretrained(model_dir)
        label = args.model or f"random {args.preset}"
        mix = f"{args.length}-character 上联" if args.length else "上联 of mixed lengths"
        baseline = f"the server at {args.baseline_rev}, max_batch={C}" if args.baseline_rev else "max_batch=1"
        print(f"model: {label}; {mix}; {args.n} candidates per request, {args.options} options; torch threads "
              f"{args.threads}; loopback; {'int8' if args.int8 else 'fp32'} weights; batched server: max_batch={C} "
              f"batch_wait_ms={args.batch_wait_ms:g} batch_gap_ms={args.batch_gap_ms:g}; baseline: {baseline}",
              flush=True)
        old = export_revision(args.baseline_rev, Path(tmp) / "baseline") if args.baseline_rev else None
        # Both servers stay up and idle while the other is measured; rounds alternate so that a busy
        # spell on the machine hits both sides.
        servers = [start_server(model_dir, C if old else 1, args.batch_wait_ms, args.batch_gap_ms, args.threads,
                                args.int8, source=old),
                   start_server(model_dir, C, args.batch_wait_ms, args.batch_gap_ms, args.threads, args.int8)]
        try:
            (_, base_url), (_, batch_url) = servers
            rounds, single = asyncio.run(run_rounds(args, uppers, base_url, batch_url))
        finally:
            for proc, _ in servers:
                stop_server(proc)
    ratio = statistics.median(r["ratio"] for r in rounds)
    errors = sum(r["baseline"]["errors"] + r["batched"]["errors"] for r in rounds) + single["errors"]
    against = f"the server at {args.baseline_rev}" if args.baseline_rev else "one at a time"
    print(f"throughput ratio, {C} clients, {args.options} options, batched / {against} (median of {len(rounds)} "
          f"rounds): {ratio:.2f}x; errors: {errors}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": label, "length": args.length, "n": args.n,
                                               "options": args.options, "baseline_rev": args.baseline_rev,
                                               "threads": args.threads, "rounds": rounds, "single": single,
                                               "ratio": round(ratio, 3), "errors": errors}, indent=2),
                                   encoding="utf-8")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
