"""`lamina serve`: trained runs behind an HTTP API and a web page (FastAPI on uvicorn).

    from lamina.serve import create_app, serve
    serve(["runs"], port=8000)                      # every run under runs/, until Ctrl-C
    app = create_app({"fmnist": "runs/fmnist"})      # the ASGI app itself (tests, other servers)

The endpoints come from what each task declares (lamina.serve.app); inference runs on one thread per
process behind a bounded queue (lamina.serve.pool); what a request may ask is bounded (lamina.serve.limits).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from lamina.errors import LaminaError

REQUIRES = "the server needs FastAPI and uvicorn: pip install 'lamina[serve]'"


def require() -> None:
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn", "multipart") if importlib.util.find_spec(m) is None]
    if missing:
        raise LaminaError(f"{REQUIRES} (missing: {', '.join(missing)})")


def create_app(runs, limits=None, device: str = "cpu", threads: int | None = None):
    require()
    from lamina.serve.app import create_app as build

    return build(runs, limits, device, threads)


def serve(
    sources: list[str | Path],
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    limits=None,
    device: str = "cpu",
) -> None:
    """Serve the runs found in `sources` (run directories, or folders of them) until interrupted.
    With workers > 1, uvicorn starts that many processes, each with every model and an equal share
    of the cores."""
    require()
    import uvicorn

    from lamina.serve.app import ENVIRONMENT
    from lamina.serve.endpoints import find_runs
    from lamina.serve.limits import Limits

    if workers < 1:
        raise LaminaError("--workers must be at least 1")
    if not 0 <= port < 65536:
        raise LaminaError(f"--port must be in [0, 65535], not {port}")
    runs = find_runs(sources)
    limits = limits or Limits()
    threads = max(1, (os.cpu_count() or 1) // workers)
    print(f"serving {len(runs)} run{'s' * (len(runs) != 1)} ({', '.join(runs)}) on http://{host}:{port}/", flush=True)
    if workers == 1:
        app = create_app(runs, limits, device, threads)
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5, **connections(limits))
        return
    os.environ[ENVIRONMENT] = json.dumps(
        {"runs": {k: str(v) for k, v in runs.items()}, "limits": limits.to_dict(), "device": device, "threads": threads}
    )
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config("lamina.serve.app:from_environment", factory=True, host=host, port=port, workers=workers,
                            log_level="warning", timeout_graceful_shutdown=5, **connections(limits))  # fmt: skip
    sock = config.bind_socket()
    # uvicorn binds a socket of protocol 0, on whose connections asyncio leaves Nagle's algorithm on:
    # with delayed ACKs every small answer then waited 40 ms. Accepted sockets inherit TCP_NODELAY.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    Multiprocess(config, sockets=[sock]).run()


def connections(limits) -> dict:
    """How many connections one process holds at once (more get 503 from uvicorn): the queue's
    requests plus as many again still sending their bodies or reading their answers."""
    return {"limit_concurrency": 2 * limits.queue + 16}
