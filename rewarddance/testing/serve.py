"""Servers in a background thread for tests: an ASGI app under uvicorn on a free loopback port."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def serve_in_thread(app, start_timeout: float = 20.0) -> Iterator[str]:
    """Run ``app`` (e.g. :func:`rewarddance.serving.create_app`'s) under uvicorn on ``127.0.0.1`` and a free port in
    a daemon thread; yields its base URL (``http://127.0.0.1:PORT``) and stops it on exit."""
    import uvicorn

    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not srv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    port = srv.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(10)
