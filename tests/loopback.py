"""A duilian app served by uvicorn on loopback, in a thread, for the tests that need real connections
(test_serve's hostile clients, test_browser's page)."""

import contextlib
import socket
import threading
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(app, http="auto"):
    """`app` (made with a ServeConfig on a free port) under uvicorn as `duilian serve` runs it
    (serve.uvicorn_config), in a thread; yields the base URL and stops the server after."""
    import uvicorn

    from duilian.serve import uvicorn_config

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
