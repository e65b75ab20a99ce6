"""Helpers shared by the benchmarks: the machine, timed CLI runs, and RESULTS.md sections."""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> dict[str, str]:
    import torch
    import torchvision

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    features = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    return {
        "cpu": f"{cpu} ({', '.join(features) or 'no AVX-512'})",
        "cores": str(os.cpu_count()),
        "threads": str(torch.get_num_threads()),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }


def run_lamina(args: list[str], log: Path | None = None, processes: int = 1) -> dict:
    """Run `lamina ...` as its own process (or as `processes` under torchrun); return its --json summary
    plus wall seconds and peak RSS (under torchrun: of the launcher, not of its workers)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    command = [*(launcher if processes > 1 else [sys.executable]), "-m", "lamina", *args]
    start = time.perf_counter()
    out = open(log, "w") if log else subprocess.DEVNULL
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=out, text=True)
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak memory, not the maximum over all children
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"lamina {' '.join(args)} failed with exit code {proc.returncode}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    summary["wall_s"] = round(wall, 1)
    summary["peak_rss_mib"] = round(usage.ru_maxrss / 1024)  # Linux reports KiB
    return summary


def run_peer(module: str, budget: float, *args: str) -> dict:
    """Run a peer (`python -m benchmarks.peers.<module> --budget SECONDS ...`) as its own process; return the
    JSON object it prints last, with wall seconds of the whole command measured from outside, as for lamina."""
    command = [sys.executable, "-m", f"benchmarks.peers.{module}", "--budget", f"{budget:g}", *args]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"peer {module} failed with exit code {done.returncode}: {last}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("curve")}), flush=True)
    return result


def command_line(args: list[str]) -> str:
    return "lamina " + " ".join(shlex.quote(a) for a in args)


def median(values: list[float]) -> float:
    return statistics.median(values)


def append_section(title: str, command: str, body: str) -> None:
    """Append one dated section to RESULTS.md: what was run, where, and what it gave."""
    m = machine()
    header = (
        f"\n## {title}\n\n"
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['threads']} torch threads, GPU: {m['gpu']}\n"
        f"- versions: Python {m['python']}, torch {m['torch']}, torchvision {m['torchvision']}\n"
        f"- command: `{command}`\n\n"
    )
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nEvery figure here was produced by the command above it.\n")
    with open(RESULTS, "a") as f:
        f.write(header + body.rstrip() + "\n")


def table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)
