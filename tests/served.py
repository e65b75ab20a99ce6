"""Seven tiny runs, one per task, in one folder: what the server and web-page tests serve. Each is
trained for seconds on the same tiny data its own task's tests use; what they predict is noise, but
it has every field a real run's answer has."""

from __future__ import annotations

import shutil
from pathlib import Path

import lamina
from conftest import CLASSES, CPU, make_folder

TASKS = ("classify", "lm", "translate", "transcribe", "detect", "read", "caption")


def build_runs(base: Path, made: dict[str, Path]) -> Path:
    """base/runs/<task> for every task (transcribe only where espeak-ng is installed); the runs in
    `made` (task -> run directory) are copied rather than trained again."""
    import test_lm
    import test_transcribe
    import test_translate
    from lamina.data import speech

    runs, data = base / "runs", base / "data"
    train = lambda task, **kw: lamina.train(task, out=str(runs / task), quiet=True, **kw)  # noqa: E731

    make_folder(data / "shapes" / "train", per_class=8)
    make_folder(data / "shapes" / "test", per_class=2, seed=1)
    train(
        "classify", data=str(data / "shapes"), model="lenet5", epochs=1, batch_size=8, sets=["data.image_size=16", *CPU]
    )

    (data / "verse.txt").write_text(test_lm.VERSE * 10)
    train("lm", data=str(data / "verse.txt"), epochs=1, batch_size=8, sets=test_lm.TINY)

    pairs = test_translate.write_tsv(data / "pairs.tsv", test_translate.toy_pairs(200))
    train("translate", data=str(pairs), epochs=1, batch_size=32, sets=test_translate.TINY)

    if shutil.which("espeak-ng"):
        corpus = speech.build(24, seed=0, root=data / "speech", sentences=test_transcribe.SENTENCES, workers=2)
        train("transcribe", data=str(corpus), epochs=1, batch_size=8, sets=test_transcribe.TINY)

    for task, run in made.items():  # runs the tasks' own tests trained already
        shutil.copytree(run, runs / task)
    return runs


__all__ = ["CLASSES", "TASKS", "build_runs"]


class LiveServer:
    """`lamina serve` on a free loopback port, in a thread of the test process (uvicorn.Server)."""

    def __init__(self, runs: Path, **limits):
        import socket

        from lamina.serve import create_app
        from lamina.serve.endpoints import find_runs
        from lamina.serve.limits import Limits

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.app = create_app(find_runs([runs]), Limits(**limits))
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        import threading
        import time

        import uvicorn

        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
