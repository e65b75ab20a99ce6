"""`lamina serve`: the endpoints built from what tasks declare, their answers, and every kind of bad
request answered with its status and one line while the server goes on serving."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("multipart")

from fastapi.testclient import TestClient  # noqa: E402

from lamina.errors import UsageError  # noqa: E402
from lamina.serve import create_app  # noqa: E402
from lamina.serve.endpoints import find_runs  # noqa: E402
from lamina.serve.limits import Limits, with_overrides  # noqa: E402
from served import TASKS, LiveServer  # noqa: E402
from test_cli import assert_one_line_error, run_cli  # noqa: E402


@pytest.fixture(scope="module")
def client(served_runs):
    with TestClient(create_app(find_runs([served_runs]), Limits(image_pixels=1024 * 1024, audio_seconds=20))) as c:
        yield c


def png(width: int = 40, height: int = 32, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    channels = 3 if mode == "RGB" else 1
    pixels = rng.integers(0, 255, (height, width, channels), dtype=np.uint8).squeeze()
    Image.fromarray(pixels, mode).save(buffer, "PNG")
    return buffer.getvalue()


def wav(seconds: float, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2")
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return buffer.getvalue()


def speech_file(served_runs: Path) -> bytes:
    corpus = Path(json.loads((served_runs / "transcribe" / "lamina.json").read_text())["config"]["data"]["name"])
    return next(corpus.rglob("*.flac")).read_bytes()


def needs(served_runs: Path, task: str) -> None:
    if not (served_runs / task).is_dir():
        pytest.skip(f"no {task} run (espeak-ng is not installed)")


# ----- what is served --------------------------------------------------------------------------------------
def test_health_and_runs_list_what_is_served_without_a_path(client, served_runs):
    assert client.get("/health").json()["status"] == "ok"
    listed = client.get("/runs").json()
    names = {r["name"]: r for r in listed["runs"]}
    assert set(names) == {t for t in TASKS if (served_runs / t).is_dir()}
    for name, run in names.items():
        assert run["task"] == name and run["model"] and run["parameters"] > 0
        assert "test" in run["metrics"] or "val" in run["metrics"]
        verbs = {v["name"]: v for v in run["verbs"]}
        assert "predict" in verbs and all(v["path"] == f"/runs/{name}/{v['name']}" for v in verbs.values())
    # The task's own verbs, with their inputs and options as declared; no argument that names a file.
    translate = {v["name"]: v for v in names["translate"]["verbs"]}["translate"]
    assert translate["input"] == {"name": "texts", "kind": "text"}
    assert {o["name"] for o in translate["options"]} == {"beam", "length_penalty", "attention"}
    assert {o["name"]: o.get("default") for o in translate["options"]}["beam"] == 5
    generate = {v["name"]: v for v in names["lm"]["verbs"]}["generate"]
    assert generate["stream"] and generate["input"] is None
    assert "lm" not in {o["name"] for v in names.get("transcribe", {"verbs": []})["verbs"] for o in v["options"]}
    assert "out" not in {o["name"] for v in names["detect"]["verbs"] for o in v["options"]}
    assert str(served_runs) not in json.dumps(listed)  # runs are named, never located


def test_openapi_documents_every_endpoint_with_its_options(client):
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/runs/translate/translate"]["post"]["requestBody"]["content"]["application/json"]
    assert {"texts", "beam", "attention"} <= set(body["schema"]["properties"])
    upload = spec["paths"]["/runs/detect/detect"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert upload["schema"]["properties"]["images"]["items"]["format"] == "binary"
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]


# ----- each task's answer ----------------------------------------------------------------------------------
def test_classify_returns_top_k_classes_by_upload_name(client):
    files = [("inputs", ("a.png", png(16, 16, "L"))), ("inputs", ("b.png", png()))]
    r = client.post("/runs/classify/predict", files=files, data={"top_k": "2"})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["input"] for x in results] == ["a.png", "b.png"]
    assert all(len(x["predictions"]) == 2 for x in results)
    assert r.json()["run"] == "classify"


def test_detect_returns_boxes_and_masks(client):
    r = client.post("/runs/detect/detect", files={"images": ("scene.png", png(64, 64))}, data={"threshold": "0"})
    assert r.status_code == 200, r.text
    [result] = r.json()["results"]
    assert (result["width"], result["height"]) == (64, 64)
    for obj in result["objects"]:
        assert len(obj["box"]) == 4 and "mask" in obj and 0 <= obj["score"] <= 1


def test_read_returns_words_with_polygons(client):
    r = client.post("/runs/read/read", files={"images": ("sign.png", png(96, 64))})
    assert r.status_code == 200, r.text
    [result] = r.json()["results"]
    assert "words" in result and all(len(w["polygon"]) == 4 for w in result["words"])


def test_caption_returns_a_caption_and_its_attention(client):
    r = client.post("/runs/caption/caption", files={"images": ("scene.png", png(64, 64))},
                    data={"attention": "true", "beam": "2"})  # fmt: skip
    assert r.status_code == 200, r.text
    [result] = r.json()["results"]
    assert result["caption"] and len(result["attention"]) >= len(result["words"])


def test_translate_returns_translations_and_attention(client):
    r = client.post("/runs/translate/translate", json={"texts": ["the cat", ""], "attention": True, "beam": 2})
    assert r.status_code == 200, r.text
    first = r.json()["results"][0]
    assert "translation" in first and len(first["attention"]) == len(first["target_pieces"])
    assert len(first["attention"][0]) == len(first["source_pieces"])


def test_transcribe_returns_a_transcript_and_timings(client, served_runs):
    needs(served_runs, "transcribe")
    r = client.post("/runs/transcribe/transcribe", files={"files": ("hello.flac", speech_file(served_runs))})
    assert r.status_code == 200, r.text
    [result] = r.json()["results"]
    assert isinstance(result["transcript"], str) and result["audio_seconds"] > 0 and result["real_time_factor"] > 0
    wav_result = client.post("/runs/transcribe/predict", files={"inputs": ("tone.wav", wav(1.0))})
    assert wav_result.status_code == 200, wav_result.text


def test_lm_next_characters_and_streamed_generation(client):
    r = client.post("/runs/lm/predict", json={"inputs": ["the c"], "top_k": 3})
    assert r.status_code == 200 and len(r.json()["results"][0]["next"]) == 3
    with client.stream("POST", "/runs/lm/generate", json={"prompt": "the ", "length": 30, "seed": 1}) as s:
        assert s.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in s.iter_lines() if line]
    pieces = [line["piece"] for line in lines[:-1]]
    assert len(pieces) >= 2 and lines[-1]["result"]["text"] == "".join(pieces[1:])  # the prompt comes first
    whole = client.post("/runs/lm/generate", json={"prompt": "the ", "length": 30, "seed": 1, "stream": False})
    assert whole.json()["text"] == lines[-1]["result"]["text"]  # same seed, same text


# ----- bad input and security ------------------------------------------------------------------------------
def bomb() -> bytes:
    """A PNG of 20,000 x 20,000 pixels in a few hundred kilobytes."""
    buffer = io.BytesIO()
    Image.new("L", (20000, 20000)).save(buffer, "PNG")
    return buffer.getvalue()


def truncated_wav() -> bytes:
    whole = wav(1.0)
    return whole[:30]


BAD = {
    # name: (method, path, request keywords, status)
    "text named .png": ("post", "/runs/classify/predict", {"files": {"inputs": ("cat.png", b"just some text\n")}}, 400),
    "truncated png": ("post", "/runs/classify/predict", {"files": {"inputs": ("cut.png", png()[:80])}}, 400),
    "empty file": ("post", "/runs/detect/detect", {"files": {"images": ("empty.png", b"")}}, 400),
    "decompression bomb": ("post", "/runs/caption/caption", {"files": {"images": ("bomb.png", bomb())}}, 413),
    "too many pixels": ("post", "/runs/classify/predict", {"files": {"inputs": ("big.png", png(1100, 1000))}}, 413),
    "truncated wav": ("post", "/runs/transcribe/transcribe", {"files": {"files": ("cut.wav", truncated_wav())}}, 400),
    "text named .wav": ("post", "/runs/transcribe/transcribe", {"files": {"files": ("a.wav", b"RIFF....")}}, 400),
    "audio too long": ("post", "/runs/transcribe/transcribe", {"files": {"files": ("long.wav", wav(25))}}, 413),
    "too many files": (
        "post",
        "/runs/classify/predict",
        {"files": [("inputs", (f"{i}.png", b"x")) for i in range(17)]},
        413,
    ),
    "wrong file field": ("post", "/runs/classify/predict", {"files": {"photo": ("a.png", png())}}, 422),
    "no file": ("post", "/runs/classify/predict", {"files": {"top_k": (None, "1")}}, 422),
    "oversized body": (
        "post",
        "/runs/translate/translate",
        {"content": b"x" * (16 * 2**20 + 1), "headers": {"content-type": "application/json"}},
        413,
    ),
    "text too long": ("post", "/runs/translate/translate", {"json": {"texts": ["a" * 2001]}}, 422),
    "too many texts": ("post", "/runs/translate/translate", {"json": {"texts": ["a"] * 17}}, 413),
    "texts not a list": ("post", "/runs/translate/translate", {"json": {"texts": {"a": 1}}}, 422),
    "no texts": ("post", "/runs/translate/translate", {"json": {"beam": 2}}, 422),
    "malformed json": (
        "post",
        "/runs/translate/translate",
        {"content": b'{"texts": ["a"', "headers": {"content-type": "application/json"}},
        400,
    ),
    "json nested too deeply": (
        "post",
        "/runs/translate/translate",
        {"content": b"[" * 100_000 + b"]" * 100_000, "headers": {"content-type": "application/json"}},
        400,
    ),
    "json not an object": ("post", "/runs/translate/translate", {"json": ["the cat"]}, 400),
    "json to an upload verb": ("post", "/runs/detect/detect", {"json": {"images": ["/etc/passwd"]}}, 415),
    "form to a json verb": ("post", "/runs/translate/translate", {"data": {"texts": "a"}}, 415),
    "text/plain": ("post", "/runs/lm/generate", {"content": b"{}", "headers": {"content-type": "text/plain"}}, 415),
    "unknown option": ("post", "/runs/translate/translate", {"json": {"texts": ["a"], "out": "/tmp/x"}}, 422),
    "file option not offered": (
        "post",
        "/runs/detect/detect",
        {"files": {"images": ("a.png", png())}, "data": {"out": "/tmp"}},
        422,
    ),
    "option of the wrong type": ("post", "/runs/translate/translate", {"json": {"texts": ["a"], "beam": "wide"}}, 422),
    "fractional integer": (
        "post",
        "/runs/classify/predict",
        {"files": {"inputs": ("a.png", png())}, "data": {"top_k": "2.5"}},
        422,
    ),
    "prompt too long": ("post", "/runs/lm/generate", {"json": {"prompt": "a" * 2001}}, 422),
    "over a generation limit": ("post", "/runs/lm/generate", {"json": {"length": 1_000_000}}, 422),
    "integer overflow": (
        "post",
        "/runs/lm/generate",
        {"content": b'{"seed": 1' + b"0" * 400 + b"}", "headers": {"content-type": "application/json"}},
        422,
    ),
    "eps (a Ghostscript format)": (
        "post",
        "/runs/classify/predict",
        {"files": {"inputs": ("a.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n")}},
        400,
    ),
    "beam over the limit": ("post", "/runs/translate/translate", {"json": {"texts": ["a"], "beam": 1000}}, 422),
    "value the task refuses": ("post", "/runs/lm/generate", {"json": {"length": 5, "temperature": -1}}, 422),
    "unknown run": ("post", "/runs/nobody/predict", {"json": {}}, 404),
    "unknown verb": ("post", "/runs/classify/translate", {"json": {}}, 404),
    "path-like run": ("post", "/runs/..%2F..%2Fetc/predict", {"json": {}}, 404),
    "dotted run": ("post", "/runs/%2e%2e/predict", {"json": {}}, 404),
    "absolute run": ("post", "/runs/%2Ftmp%2Fx/predict", {"json": {}}, 404),
    "get on a verb": ("get", "/runs/classify/predict", {}, 405),
    "unknown page": ("get", "/static/../../../etc/passwd", {}, 404),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_requests_get_their_status_and_one_line(client, served_runs, case):
    method, path, keywords, status = BAD[case]
    if "transcribe" in path:
        needs(served_runs, "transcribe")
    r = getattr(client, method)(path, **keywords)
    assert r.status_code == status, (case, r.status_code, r.text)
    error = r.json()["error"]
    assert isinstance(error, str) and error and "\n" not in error and "Traceback" not in error
    assert "/etc/passwd" not in error or case == "unknown page"
    # ... and the server goes on serving.
    assert client.post("/runs/translate/translate", json={"texts": ["the dog"]}).status_code == 200


def test_a_fault_inside_a_verb_is_a_500_and_the_server_goes_on(client, monkeypatch):
    run = client.app.state.runs["classify"]

    def broken(*args, **kwargs):
        raise RuntimeError("something inside broke")

    monkeypatch.setattr(run.task, "predict", broken)
    r = client.post("/runs/classify/predict", files={"inputs": ("a.png", png())})
    assert r.status_code == 500 and "something inside broke" in r.json()["error"]
    monkeypatch.undo()
    assert client.post("/runs/classify/predict", files={"inputs": ("a.png", png())}).status_code == 200


# ----- limits on time and load -----------------------------------------------------------------------------
def test_a_full_queue_answers_503_and_a_slow_request_504(served_runs):
    import httpx

    def slow_generate(model, meta, prompt="", emit=None, **options):
        """Four seconds of generation, a piece every 50 ms."""
        for _ in range(80):
            time.sleep(0.05)
            if emit:
                emit("a")
        return {"text": "a" * 80}

    with LiveServer(served_runs, queue=1, request_seconds=1.5) as server:
        server.app.state.runs["lm"].task.generate = slow_generate
        with httpx.Client(base_url=server.url, timeout=30) as http:
            with http.stream("POST", "/runs/lm/generate", json={"length": 80}) as held:
                assert held.status_code == 200  # admitted and running: it holds the only place
                busy = http.post("/runs/translate/translate", json={"texts": ["the cat"]})
                assert busy.status_code == 503 and "busy" in busy.json()["error"]
                lines = [json.loads(line) for line in held.iter_lines() if line]
            assert 10 < len(lines) < 80 and "longer than the limit" in lines[-1]["error"]  # stopped, with the reason
            wait_until_idle(http)  # the stopped generation leaves the queue at its next piece
            late = http.post("/runs/lm/generate", json={"length": 80, "stream": False})
            assert late.status_code == 504 and "1.5 s" in late.json()["error"]
            wait_until_idle(http)  # a request cut short still ends its work, then frees its place
            assert http.post("/runs/translate/translate", json={"texts": ["the cat"]}).status_code == 200
            # A client that leaves a stream stops its generation (at the next piece, not after 4 s).
            with http.stream("POST", "/runs/lm/generate", json={"length": 80}) as left:
                next(left.iter_lines())
            left_at = time.monotonic()
            wait_until_idle(http)
            assert time.monotonic() - left_at < 2.0


def test_concurrent_requests_are_answered_by_one_call_and_a_bad_one_alone(served_runs):
    import concurrent.futures

    import httpx

    with LiveServer(served_runs) as server:
        task = server.app.state.runs["classify"].task
        calls, predict, release = [], task.predict, threading.Event()

        def slow_predict(model, meta, inputs, **options):
            calls.append(len(inputs))
            release.wait(30)  # the first call holds the thread until every other request has queued
            return predict(model, meta, inputs, **options)

        task.predict = slow_predict
        url = f"{server.url}/runs/classify/predict"

        def send(name: str, content: bytes, top_k: int = 2):
            return httpx.post(url, files={"inputs": (name, content)}, data={"top_k": str(top_k)}, timeout=30)

        with concurrent.futures.ThreadPoolExecutor(8) as threads:
            first = threads.submit(send, "first.png", png())
            while not calls:
                time.sleep(0.01)  # the first one is running: the others queue behind it
            good = [threads.submit(send, f"{i}.png", png(20 + i, 20)) for i in range(4)]
            bad = threads.submit(send, "bad.png", b"not an image")
            other = threads.submit(send, "other.png", png(), top_k=1)  # other options: another call
            deadline = time.monotonic() + 30
            while httpx.get(f"{server.url}/health").json()["pending"] < 7 and time.monotonic() < deadline:
                time.sleep(0.01)
            release.set()
            answers = [f.result() for f in [first, *good]]
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        assert [a.json()["results"][0]["input"] for a in answers] == ["first.png", *(f"{i}.png" for i in range(4))]
        assert bad.result().status_code == 400 and "bad.png" in bad.result().json()["error"]
        assert other.result().status_code == 200 and len(other.result().json()["results"][0]["predictions"]) == 1
        assert sorted(calls) == [1, 1, 4], calls  # first; the four together; top_k=1 alone
        assert answers[1].json()["batch"] == {"requests": 4, "inputs": 4}


def wait_until_idle(http, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while http.get("/health").json()["pending"]:
        assert time.monotonic() < deadline, "requests never left the queue"
        time.sleep(0.05)


# ----- the command -----------------------------------------------------------------------------------------
def test_serve_refuses_what_it_cannot_serve(tmp_path, served_runs, capsys):
    (tmp_path / "empty").mkdir()
    for argv, reason in [
        (["serve", tmp_path / "nothing"], "no such run or folder"),
        (["serve", tmp_path / "empty"], "holds no runs"),
        (["serve", served_runs, "--workers", "0"], "--workers"),
        (["serve", served_runs, "--limit", "queue"], "NAME=VALUE"),
    ]:
        code, _, err = run_cli(capsys, *argv)
        assert code != 0
        assert_one_line_error(err, reason)


def test_limits_from_the_command_line():
    limits = with_overrides(Limits(), ["audio_seconds=30", "queue=4", "length=500", "temperature=2"])
    assert (limits.audio_seconds, limits.queue, limits.options["length"]) == (30.0, 4, 500.0)
    assert isinstance(limits.queue, int) and limits.options["temperature"] == 2
    for typo in ("queu=4", "queue=0.5"):
        with pytest.raises(UsageError):
            with_overrides(Limits(), [typo])


def test_answers_hold_no_nan():
    from lamina.serve.app import finite

    assert finite({"score": float("-inf"), "m": [1.0, float("nan")], "n": 2}) == {
        "score": None,
        "m": [1.0, None],
        "n": 2,
    }


def test_serve_with_worker_processes(served_runs, tmp_path):
    """`lamina serve --workers 2` on a free port: both processes answer, Ctrl-C stops them."""
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "LAMINA_OFFLINE": "1"}
    command = [sys.executable, "-m", "lamina", "serve", str(served_runs / "classify"), str(served_runs / "translate"),
               "--port", str(port), "--workers", "2"]  # fmt: skip
    server = subprocess.Popen(
        command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline, up = time.monotonic() + 120, False
        while time.monotonic() < deadline and not up:
            try:
                up = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                time.sleep(0.3)
        assert up, "the server did not start"
        names = {r["name"] for r in httpx.get(f"http://127.0.0.1:{port}/runs").json()["runs"]}
        assert names == {"classify", "translate"}
        answers = [
            httpx.post(f"http://127.0.0.1:{port}/runs/translate/translate", json={"texts": ["the cat"]}, timeout=30)
            for _ in range(4)
        ]
        assert all(a.status_code == 200 for a in answers)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            output, _ = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            output, _ = server.communicate()
    assert b"serving 2 runs" in output
    assert b"Traceback" not in output
