"""`duilian serve`: the HTTP API and web page (duilian.serve) on uvicorn."""

from __future__ import annotations

import argparse

from .generate import add_model_options, model_kwargs


def register(parser: argparse.ArgumentParser) -> None:
    # where to listen
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    # which model: --model, --device, --int8
    add_model_options(parser)
    # batching and limits (defaults of None: the serve module's constants, named in each help)
    parser.add_argument("--max-batch", type=int, default=32,
                        help="most requests decoded together in one model call (default 32; 1 turns batching off)")
    parser.add_argument("--batch-wait-ms", type=float, default=50.0,
                        help="longest a batch gathers requests, in milliseconds (default 50; 0: only what is queued)")
    parser.add_argument("--batch-gap-ms", type=float, default=5.0,
                        help="close a batch early once no request has come for this many milliseconds (default 5)")
    parser.add_argument("--timeout-s", type=float, default=None,
                        help="seconds a request may wait for its answer before a 504 "
                             "(default: serve.REQUEST_TIMEOUT_S)")
    # connections
    parser.add_argument("--read-timeout-s", type=float, default=None,
                        help="seconds a client has to send a request's headers, and again its body, before a 408 "
                             "and a closed connection (default: serve.READ_TIMEOUT_S)")
    parser.add_argument("--max-connections", type=int, default=None,
                        help="connections open at once; more get a 503 and are closed (default: serve.MAX_CONNECTIONS)")
    # per client: one address (an IPv6 /64), or the one a trusted proxy forwards
    parser.add_argument("--max-connections-per-client", type=int, default=None,
                        help="connections open at once from one client address; more get a 503 and are closed "
                             "(default: serve.MAX_CONNECTIONS_PER_CLIENT)")
    parser.add_argument("--max-queue-per-client", type=int, default=None,
                        help="requests one client may have waiting for an answer; more get a 503 "
                             "(default: serve.MAX_QUEUE_PER_CLIENT)")
    parser.add_argument("--trusted-proxy", action="append", default=None, metavar="ADDRESS",
                        help="a reverse proxy's IP address or network (CIDR) whose X-Forwarded-For names the client "
                             "the limits count against; repeat for several (default: none, the header is ignored)")


def server_config(args: argparse.Namespace):
    """The serve.ServeConfig the flags ask for (ValueError for values it refuses)."""
    from ..serve import ServeConfig

    optional = {"request_timeout_s": args.timeout_s, "read_timeout_s": args.read_timeout_s,
                "max_connections": args.max_connections,
                "max_connections_per_client": args.max_connections_per_client,
                "max_queue_per_client": args.max_queue_per_client,
                "trusted_proxies": tuple(args.trusted_proxy) if args.trusted_proxy else None}  # None: the default
    return ServeConfig(host=args.host, port=args.port, max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
                       batch_gap_ms=args.batch_gap_ms, **model_kwargs(args),
                       **{k: v for k, v in optional.items() if v is not None})


def run(args: argparse.Namespace) -> int:
    import sys

    import uvicorn

    from ..serve import create_app, uvicorn_config

    try:
        config = server_config(args)
        app = create_app(args.model, config)
    except (ValueError, FileNotFoundError) as exc:  # bad flag values, no such model, no default model yet
        print(f"duilian serve: {exc}", file=sys.stderr)
        return 2
    print(f"duilian: serving on http://{config.host}:{config.port}/ (API docs at /docs)", file=sys.stderr)
    uvicorn.Server(uvicorn_config(app)).run()  # exits with status 3 itself if it cannot start (port taken)
    return 0
