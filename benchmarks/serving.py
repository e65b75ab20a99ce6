"""Load test of `lamina serve` on the loopback interface: requests/s and latency percentiles for
classify and translate at 1, 4 and 16 concurrent clients, and the server's resident memory before
and after 10,000 requests.

    python -m benchmarks.serving                 # trains two short runs first (about 3 minutes)
    python -m benchmarks.serving --runs DIR      # serve the runs `classify` and `translate` in DIR

The server is `lamina serve` in its own process (one worker: one inference thread with every core);
the clients are asyncio tasks on httpx in this process, each sending its next request as soon as
its last one is answered. Both share this machine's cores, as a server and its local callers would.
Every point is bounded in requests and in seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import append_section, run_lamina, table

CONCURRENCY = (1, 4, 16)
# mode -> (worker processes, `lamina serve` options): one call of the verb per request, or shared; in
# one process with every core, or in two with one core each (torch's threads cost small models more
# in synchronisation than they give: benchmarks/onnx.py)
MODES = {"unbatched": (1, ["--limit", "batch=1"]), "batched": (1, []), "batched-2-workers": (2, [])}
SENTENCES = ["Open the file", "Save the document as a new file", "The connection to the server was lost",
             "Delete the selected messages?", "Show hidden files"]  # fmt: skip


def train_runs(folder: Path) -> None:
    """A classifier (Fashion-MNIST, the default vgg-s) and a translator (gettext:fr, attention), briefly."""
    if not (folder / "classify" / "lamina.json").exists():
        run_lamina(["train", "classify", "--data", "fashion-mnist", "--time-budget", "60", "--out",
                    str(folder / "classify"), "--json", "--quiet"])  # fmt: skip
    if not (folder / "translate" / "lamina.json").exists():
        run_lamina(["train", "translate", "--data", "gettext:fr", "--time-budget", "120", "--out",
                    str(folder / "translate"), "--json", "--quiet"])  # fmt: skip


def fashion_png() -> bytes:
    from PIL import Image

    from lamina.data.images import fashion_mnist

    image = fashion_mnist("test").images[0, 0].numpy()  # (28, 28) uint8
    buffer = io.BytesIO()
    Image.fromarray(image, "L").save(buffer, "PNG")
    return buffer.getvalue()


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its children (uvicorn's workers), in MiB."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration):
            continue
    return total / 1024


def start_server(runs: Path, workers: int, extra: list[str] = ()) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "lamina", "serve", str(runs / "classify"), str(runs / "translate"),
               "--port", str(port), "--workers", str(workers), "--limit", "queue=64", *extra]  # fmt: skip
    server = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return server, url
        except httpx.HTTPError:
            time.sleep(0.3)
    server.kill()
    raise RuntimeError(f"the server did not start: {server.stderr.read().decode()[-500:]}")


async def load(url: str, request, clients: int, count: int, seconds: float) -> dict:
    """`clients` loops sending request(http) back to back until `count` requests or `seconds` pass."""
    import httpx

    latencies: list[float] = []
    failures = 0
    stop_at = time.perf_counter() + seconds
    sent = 0

    async def client(http):
        nonlocal sent, failures
        while sent < count and time.perf_counter() < stop_at:
            sent += 1
            t0 = time.perf_counter()
            response = await request(http)
            if response.status_code == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                failures += 1

    started = time.perf_counter()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    wall = time.perf_counter() - started
    ms = sorted(x * 1000 for x in latencies)
    pick = lambda q: round(ms[min(len(ms) - 1, int(q * len(ms)))], 1) if ms else None  # noqa: E731
    return {"clients": clients, "requests": len(ms), "failed": failures, "seconds": round(wall, 1),
            "requests_per_s": round(len(ms) / wall, 1), "p50_ms": round(statistics.median(ms), 1) if ms else None,
            "p95_ms": pick(0.95), "p99_ms": pick(0.99)}  # fmt: skip


def median_point(points: list[dict]) -> dict:
    """The repeats of one point: requests summed, each rate and latency their median."""
    out = {"clients": points[0]["clients"], "requests": sum(p["requests"] for p in points),
           "failed": sum(p["failed"] for p in points)}  # fmt: skip
    for key in ("requests_per_s", "p50_ms", "p95_ms", "p99_ms"):
        values = [p[key] for p in points if p[key] is not None]
        out[key] = round(statistics.median(values), 1) if values else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", help="a folder holding runs named classify and translate (default: train them)")
    parser.add_argument("--count", type=int, default=1000, help="requests per point at most")
    parser.add_argument("--seconds", type=float, default=10, help="seconds per point at most")
    parser.add_argument("--repeats", type=int, default=3, help="times each point is measured, alternating modes")
    parser.add_argument("--memory-requests", type=int, default=10_000)
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    a = parser.parse_args()
    runs = (
        Path(a.runs) if a.runs else Path(os.environ.get("LAMINA_HOME", Path.home() / ".cache/lamina")) / "bench-serving"
    )
    if not a.runs:
        train_runs(runs)
    picture = fashion_png()
    classify = lambda http: http.post("/runs/classify/predict", files={"inputs": ("shoe.png", picture)})  # noqa: E731
    counter = iter(range(10**9))

    def translate(http):
        return http.post("/runs/translate/translate", json={"texts": [SENTENCES[next(counter) % len(SENTENCES)]]})

    # Every mode's server runs at once (an idle one costs nothing) and the points alternate between
    # them, `repeats` times: this machine's speed drifts by more than the modes differ.
    servers = {mode: start_server(runs, workers, extra) for mode, (workers, extra) in MODES.items()}
    rows, memory = [], {}
    try:
        for _, url in servers.values():
            asyncio.run(load(url, classify, 16, 200, 10))  # warm-up: first calls (and batch sizes) allocate
            asyncio.run(load(url, translate, 16, 100, 10))
        for name, request in (("classify", classify), ("translate", translate)):
            for clients in CONCURRENCY:
                measured = {mode: [] for mode in servers}
                for _ in range(a.repeats):
                    for mode, (_, url) in servers.items():
                        measured[mode].append(asyncio.run(load(url, request, clients, a.count, a.seconds)))
                for mode, points in measured.items():
                    row = {"mode": mode, "endpoint": name, **median_point(points)}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
        server, url = servers["batched"]
        before = rss_mib(server.pid)
        memory = asyncio.run(load(url, classify, 4, a.memory_requests, 3600))
        after = rss_mib(server.pid)
        memory.update(rss_before_mib=round(before, 1), rss_after_mib=round(after, 1),
                      growth_mib=round(after - before, 1))  # fmt: skip
        print(json.dumps({"memory": memory}), flush=True)
    finally:
        for server, _ in servers.values():
            server.send_signal(signal.SIGINT)
        for server, _ in servers.values():
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    for row in rows:  # against one call per request in one process, same endpoint and clients
        if row["mode"] != "unbatched":
            base = next(r for r in rows if r["mode"] == "unbatched" and r["endpoint"] == row["endpoint"]
                        and r["clients"] == row["clients"])  # fmt: skip
            row["vs_unbatched"] = f"{row['requests_per_s'] / max(base['requests_per_s'], 1e-9):.2f}x"
    summary = {"points": rows, "memory": memory}
    print(json.dumps(summary))
    if a.no_record:
        return
    body = (
        "`lamina serve` on the loopback interface; "
        f"clients are asyncio httpx tasks in the benchmark's process, sharing the cores. Each point: at most "
        f"{a.count} requests or {a.seconds:g} s, measured {a.repeats} times alternating between the modes' "
        f"servers (all started at once); requests summed, rates and latencies the median. "
        f"classify: one 28x28 Fashion-MNIST PNG per request "
        f"(vgg-s, multipart upload); translate: one short sentence per request (attention model, beam 5).\n\n"
        + "Modes: `unbatched` (`--limit batch=1`: one call of the verb per request), `batched` (the default: "
        "requests that queue together share one call), both in one process with 2 torch threads, and "
        "`batched-2-workers` (`--workers 2`: two processes of one torch thread each); `vs_unbatched` is the "
        "ratio of requests/s.\n\n"
        + table(
            rows,
            [
                "mode",
                "endpoint",
                "clients",
                "requests",
                "failed",
                "requests_per_s",
                "p50_ms",
                "p95_ms",
                "p99_ms",
                "vs_unbatched",
            ],
        )  # fmt: skip
        + f"\n\nResident memory of the server: {memory['rss_before_mib']} MiB before and {memory['rss_after_mib']} "
        f"MiB after {memory['requests']:,} more classify requests (growth {memory['growth_mib']} MiB; "
        f"{memory['requests_per_s']} requests/s, {memory['failed']} failed).\n"
    )
    append_section("Serving: requests/s and latency under load", "python -m benchmarks.serving", body)


if __name__ == "__main__":
    main()
