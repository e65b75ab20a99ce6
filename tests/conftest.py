"""Shared fixtures: tiny generated image folders and an isolated, offline lamina home."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASSES = ("bars", "columns", "dots")
# The user's own lamina home (data fetched earlier), read before the tests isolate theirs.
REAL_LAMINA_HOME = Path(os.environ.get("LAMINA_HOME") or Path.home() / ".cache" / "lamina")


def pattern(kind: str, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A grey image whose class is visible in its structure: horizontal bars, vertical bars or a checkerboard."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    phase = rng.integers(0, 4)
    if kind == "bars":
        base = ((y + phase) // 2) % 2
    elif kind == "columns":
        base = ((x + phase) // 2) % 2
    else:
        base = ((x + phase) // 2 + (y // 2)) % 2
    noisy = base * 180 + 40 + rng.normal(0, 20, size=base.shape)
    return noisy.clip(0, 255).astype(np.uint8)


def make_folder(root: Path, per_class: int = 12, colour: bool = False, sizes=((16, 16), (20, 18)), seed: int = 0):
    rng = np.random.default_rng(seed)
    for kind in CLASSES:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            array = pattern(kind, sizes[i % len(sizes)], rng)
            image = Image.fromarray(array, "L")
            if colour:
                image = Image.merge("RGB", (image, image.point(lambda v: 255 - v), image))
            image.save(root / kind / f"{kind}_{i:03d}.png")
    return root


# Runs in tests are pinned to the CPU in fp32, so results do not depend on the machine's GPU or bf16 support.
CPU = ["train.device=cpu", "train.amp=off"]


@contextlib.contextmanager
def lamina_home(home: Path):
    """$LAMINA_HOME set to `home` for a block (session fixtures build data outside any one test's home)."""
    before = os.environ.get("LAMINA_HOME")
    os.environ["LAMINA_HOME"] = str(home)
    try:
        yield home
    finally:
        if before is None:
            del os.environ["LAMINA_HOME"]
        else:
            os.environ["LAMINA_HOME"] = before


@pytest.fixture(autouse=True)
def isolated(tmp_path_factory, monkeypatch):
    """Every test gets its own $LAMINA_HOME and working directory, and never touches the network.
    Ctrl-C is handled as on a terminal, however the suite was started (a background job starts with
    SIGINT ignored, and the tests that press Ctrl-C would press nothing)."""
    import signal

    monkeypatch.setenv("LAMINA_HOME", str(tmp_path_factory.mktemp("lamina-home")))
    monkeypatch.setenv("LAMINA_OFFLINE", "1")
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file under `root`: its path relative to `root` -> (mtime in ns, SHA-256 of its content)."""
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# What fixtures share between tests (fixture name -> (folder of the run and its data, snapshot when
# made)): the tests only read it, or one test would see what another left there.
SHARED_RUNS: dict[str, tuple[Path, dict]] = {}


def share_read_only(name: str, folder: Path) -> None:
    SHARED_RUNS[name] = (Path(folder), snapshot(Path(folder)))


@pytest.fixture(autouse=True)
def shared_runs_stay_unchanged(request):
    """After each test that used a shared run: the run's files are the same, by name, mtime and content
    (e.g. evaluation plots go to the test's own folder, not into the shared run)."""
    yield
    for name in request.fixturenames:
        if name in SHARED_RUNS:
            folder, before = SHARED_RUNS[name]
            after = snapshot(folder)
            changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
            assert not changed, f"{request.node.nodeid} changed {name} ({folder}): {', '.join(changed)}"


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_folder(tmp_path / "shapes")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """One small trained classify run (data with train/ and test/ splits), shared by tests that only read it
    (checked after each of them by shared_runs_stay_unchanged)."""
    import lamina

    base = tmp_path_factory.mktemp("trained")
    data = base / "shapes"
    make_folder(data / "train", per_class=16)
    make_folder(data / "test", per_class=4, seed=1)
    summary = lamina.train(
        "classify",
        data=str(data),
        model="vgg-s",
        epochs=6,
        batch_size=8,
        lr=0.05,
        out=str(base / "run"),
        quiet=True,
        sets=["data.image_size=16", *CPU],
    )
    share_read_only("trained_run", base)  # the run and its data
    return Path(summary["run"])


@pytest.fixture(scope="session")
def served_runs(tmp_path_factory, detect_run, read_run, caption_run) -> Path:
    """A folder of seven tiny runs, one per task (tests/served.py), that the server tests serve."""
    from served import build_runs

    base = tmp_path_factory.mktemp("served")
    with lamina_home(base / "home"):
        runs = build_runs(base, {"detect": detect_run, "read": read_run, "caption": caption_run})
    share_read_only("served_runs", runs)
    return runs


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Each phase's report kept on its test (item.rep_setup, rep_call, rep_teardown), for fixtures that keep
    artefacts of a failed test (the browser tests' screenshots)."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


# The tiny scenes, text scenes and captioned scenes, and a run trained on each: shared by their tasks'
# tests and by the server's (only read; checked by shared_runs_stay_unchanged).
@pytest.fixture(scope="session")
def scene_folder(tmp_path_factory) -> Path:
    from test_detect import TINY, build_in

    root = build_in(tmp_path_factory.mktemp("scenes-home"), TINY)
    share_read_only("scene_folder", root)
    return root


@pytest.fixture(scope="session")
def detect_run(tmp_path_factory, scene_folder) -> Path:
    import lamina
    from test_detect import TINY_SETS

    base = tmp_path_factory.mktemp("detect-run")
    summary = lamina.train(
        "detect", data=str(scene_folder), epochs=2, out=str(base / "run"), quiet=True, sets=TINY_SETS
    )
    share_read_only("detect_run", base)
    return Path(summary["run"])


@pytest.fixture(scope="session")
def text_folder(tmp_path_factory) -> Path:
    from test_read import TINY, build_in

    root = build_in(tmp_path_factory.mktemp("text-home"), TINY)
    share_read_only("text_folder", root)
    return root


@pytest.fixture(scope="session")
def read_run(tmp_path_factory, text_folder) -> Path:
    import lamina
    from test_read import TINY_SETS

    base = tmp_path_factory.mktemp("read-run")
    summary = lamina.train("read", data=str(text_folder), epochs=1, out=str(base / "run"), quiet=True,
                           sets=TINY_SETS)  # fmt: skip
    share_read_only("read_run", base)
    return Path(summary["run"])


@pytest.fixture(scope="session")
def caption_folder(tmp_path_factory) -> Path:
    from lamina.data import captions
    from test_caption import TINY

    with lamina_home(tmp_path_factory.mktemp("caption-home")):
        root = captions.build(TINY, processes=2)
    share_read_only("caption_folder", root)
    return root


@pytest.fixture(scope="session")
def caption_run(tmp_path_factory, caption_folder) -> Path:
    import lamina
    from test_caption import TINY_SETS

    base = tmp_path_factory.mktemp("caption-run")
    summary = lamina.train("caption", data=str(caption_folder), epochs=2, out=str(base / "run"), quiet=True,
                           sets=TINY_SETS)  # fmt: skip
    share_read_only("caption_run", base)
    return Path(summary["run"])
