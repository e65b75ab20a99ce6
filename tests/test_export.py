"""ONNX export: onnxruntime's outputs against PyTorch's, on random and real inputs, at batch 1 and more;
detection on an image without objects; the runs and formats that are refused, in one line."""

from __future__ import annotations

import json
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import lamina  # noqa: E402
from conftest import CPU  # noqa: E402
from lamina.data import audio, ocr  # noqa: E402
from lamina.data import images as img  # noqa: E402
from lamina.export import run_onnx  # noqa: E402
from lamina.models import ctc  # noqa: E402
from test_cli import assert_one_line_error, run_cli  # noqa: E402

# onnxruntime against PyTorch, both in fp32 on the CPU: the same arithmetic in another order.
ATOL = 1e-4  # probabilities, log-probabilities, normalised features
BOX_ATOL = 1e-2  # box corners, in pixels of a 64 px image
TONES = (220.0, 330.0, 440.0, 550.0)


def close(got, want, atol: float = ATOL) -> None:
    want = want.detach().cpu().numpy() if isinstance(want, torch.Tensor) else want
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=atol, rtol=0)


def export(run, tmp_path: Path, name: str = "model.onnx") -> dict:
    return lamina.export(run, out=tmp_path / name)


# ----- runs ----------------------------------------------------------------------------------------
# The tiny runs the server tests serve (tests/served.py): only read here.
def data_of(run: Path) -> Path:
    return Path(json.loads((run / "lamina.json").read_text())["config"]["data"]["name"])


@pytest.fixture(scope="module")
def classify_run(served_runs) -> Path:
    return served_runs / "classify"


@pytest.fixture(scope="module")
def scenes_and_detector(served_runs) -> tuple[Path, Path]:
    return data_of(served_runs / "detect"), served_runs / "detect"


@pytest.fixture(scope="module")
def text_and_reader(served_runs) -> tuple[Path, Path]:
    return data_of(served_runs / "read"), served_runs / "read"


def write_wav(path: Path, samples: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(audio.SAMPLE_RATE)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


@pytest.fixture(scope="module")
def speech_manifest(tmp_path_factory) -> Path:
    """Tones of four pitches and lengths, each 'said' as a word: enough for a recognizer to train on."""
    base = tmp_path_factory.mktemp("export-speech")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(16):
        n = int(audio.SAMPLE_RATE * (0.3 + 0.1 * (i % 4)))
        t = np.arange(n) / audio.SAMPLE_RATE
        samples = 0.4 * np.sin(2 * np.pi * TONES[i % 4] * t) + 0.02 * rng.normal(size=n)
        write_wav(base / f"{i}.wav", samples)
        lines.append(f"{i}.wav\t{['open', 'close', 'red', 'dog'][i % 4]}")
    (base / "train.tsv").write_text("\n".join(lines) + "\n")
    return base / "train.tsv"


def train_speech(manifest: Path, model: str, out: Path) -> Path:
    summary = lamina.train("transcribe", data=str(manifest), model=model, epochs=1, batch_size=8, out=str(out),
                           quiet=True, sets=["model.hidden=32", *CPU])  # fmt: skip
    return Path(summary["run"])


@pytest.fixture(scope="module")
def ctc_run(speech_manifest, tmp_path_factory) -> Path:
    return train_speech(speech_manifest, "ctc", tmp_path_factory.mktemp("export-ctc") / "run")


# ----- classify ------------------------------------------------------------------------------------
def test_a_classifier_exports_with_its_normalisation_and_labels(classify_run, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "export", classify_run, "--out", tmp_path / "shapes.onnx", "--json")
    assert code == 0
    result = json.loads(out)  # stdout holds the result alone, not the exporters' progress
    assert result["onnx"] == str(tmp_path / "shapes.onnx") and result["preprocessing"] == str(tmp_path / "shapes.json")
    assert result["exporter"] == "dynamo" and result["max_abs_difference"] < ATOL
    assert result["inputs"] == [{"name": "image", "shape": ["batch", 1, 16, 16], "dtype": "uint8"}]
    run = lamina.load(classify_run, "cpu")
    described = json.loads(Path(result["preprocessing"]).read_text())
    assert described["labels"] == run.meta["classes"] == ["bars", "columns", "dots"]
    assert described["image"]["normalisation"]["mean"] == run.meta["mean"]

    files = sorted((data_of(classify_run) / "test").rglob("*.png"))
    real = torch.stack([img.load_image(f, 1, 16) for f in files])  # (6, 1, 16, 16) as predict reads them
    generator = torch.Generator().manual_seed(0)
    for x in (real[:1], real, torch.randint(0, 256, (5, 1, 16, 16), dtype=torch.uint8, generator=generator)):
        [probabilities] = run_onnx(result["onnx"], {"image": x})
        close(probabilities, run.task.probabilities(run.model, x))
    predicted = run.predict([str(f) for f in files], top_k=1)["results"]
    [probabilities] = run_onnx(result["onnx"], {"image": real})
    assert [described["labels"][i] for i in probabilities.argmax(1)] == [
        r["predictions"][0]["label"] for r in predicted
    ]


# ----- detect --------------------------------------------------------------------------------------
def detections(run, image: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        found = run.model([image.float() / 255])[0]
    return {"boxes": found["boxes"], "labels": found["labels"], "scores": found["scores"],
            "masks": found["masks"][:, 0]}  # fmt: skip


def test_a_detector_exports_and_finds_the_same_objects_or_none(scenes_and_detector, tmp_path):
    """torchvision's detectors exported to ONNX are known to break on images without objects: a graph
    traced on an image with objects fails on one without, and a graph traced on one without finds
    nothing anywhere. The score floor is set between a photograph's best object and a blank image's,
    so one image has objects and the other none; graphs traced on either must do both."""
    from lamina.export import write_graph
    from lamina.tasks.detect import read_image

    root, run_dir = scenes_and_detector
    run = lamina.load(run_dir, "cpu")
    scene = read_image(sorted((root / "test").glob("*.jpg"))[0], "scene")  # (3, 64, 64)
    blank = torch.zeros(3, 64, 80, dtype=torch.uint8)
    run.model.roi_heads.score_thresh = 0.0
    best = {name: float(detections(run, x)["scores"].max()) for name, x in (("scene", scene), ("blank", blank))}
    assert abs(best["scene"] - best["blank"]) > 1e-3, best
    run.model.roi_heads.score_thresh = (best["scene"] + best["blank"]) / 2
    found = {name: len(detections(run, x)["scores"]) for name, x in (("scene", scene), ("blank", blank))}
    assert min(found.values()) == 0 and max(found.values()) > 0, found  # one image with objects, one without

    result = export(run, tmp_path)  # traced on the task's example image
    assert result["exporter"] == "torchscript"
    assert [o["name"] for o in result["outputs"]] == ["boxes", "labels", "scores", "masks"]
    described = json.loads(Path(result["preprocessing"]).read_text())
    assert described["classes"] == ["__background__", *run.meta["classes"]]
    [spec] = run.task.export_graphs(run.model, run.meta)
    empty = min(found, key=found.get)
    spec.inputs = ({"scene": scene, "blank": blank}[empty],)  # traced on the image without objects
    write_graph(spec, tmp_path / "traced-on-none.onnx", {})

    larger = torch.nn.functional.interpolate(scene[None].float(), size=(96, 120), mode="bilinear")[0]
    for path in (result["onnx"], tmp_path / "traced-on-none.onnx"):
        for image in (scene, blank, larger.round().to(torch.uint8)):
            got = in_order(dict(zip(["boxes", "labels", "scores", "masks"], run_onnx(path, {"image": image}))))
            want = in_order({k: v.numpy() for k, v in detections(run, image).items()})
            assert got["masks"].shape[1:] == image.shape[1:]
            close(got["boxes"], want["boxes"], BOX_ATOL)
            close(got["scores"], want["scores"])
            close(got["masks"], want["masks"], 1e-3)
            assert (got["labels"] == want["labels"]).all()


def in_order(found: dict) -> dict:
    """Detections by falling score, ties (an untrained head scores objects alike) by their box."""
    boxes, scores = np.asarray(found["boxes"]), np.round(np.asarray(found["scores"]), 4)
    order = np.lexsort((*np.round(boxes.T[::-1], 1), -scores)) if len(scores) else np.arange(0)
    return {k: np.asarray(v)[order] for k, v in found.items()}


# ----- transcribe ----------------------------------------------------------------------------------
def test_a_ctc_recognizer_exports_with_its_front_end(ctc_run, speech_manifest, tmp_path):
    run = lamina.load(ctc_run, "cpu")
    result = export(run, tmp_path)
    main, front = result["graphs"]
    assert main["exporter"] == "torchscript" and front["part"] == "features"
    described = json.loads(Path(main["preprocessing"]).read_text())
    assert described["vocabulary"]["characters"] == audio.CHARS
    assert described["features"]["sample_rate"] == audio.SAMPLE_RATE

    waves = [audio.read_audio(speech_manifest.parent / f"{i}.wav") for i in (3, 0, 2)]  # 0.6, 0.3, 0.5 s
    features = []
    for w in waves:
        [got] = run_onnx(front["onnx"], {"waveform": w})
        close(got, audio.log_mel(w))
        features.append(torch.from_numpy(got))
    # A padded batch whose lengths are not sorted (the recognizer packs its sequences), and one alone.
    lengths = torch.tensor([f.shape[0] for f in features])
    batch = torch.zeros(3, int(lengths.max()), audio.N_MELS)
    for i, f in enumerate(features):
        batch[i, : len(f)] = f
    noise = torch.randn(2, 90, audio.N_MELS, generator=torch.Generator().manual_seed(0))
    for x, n in ((batch, lengths), (batch[1:2, : lengths[1]], lengths[1:2]), (noise, torch.tensor([41, 90]))):
        log_probs, frames = run_onnx(main["onnx"], {"features": x, "lengths": n})
        with torch.no_grad():
            logits, _ = run.model(x, n)
        assert (frames == run.model.frames_out(n).numpy()).all()
        close(log_probs, logits.log_softmax(-1))
        ours = [h.tokens for h in ctc.greedy(torch.from_numpy(log_probs), torch.from_numpy(frames))]
        assert ours == [h.tokens for h in run.model.recognize(x, n)]


# ----- read ----------------------------------------------------------------------------------------
def test_a_reader_exports_its_recognizer_and_its_detector(text_and_reader, tmp_path):
    root, run_dir = text_and_reader
    run = lamina.load(run_dir, "cpu")
    result = export(run, tmp_path)
    recognizer, detector = result["graphs"]
    assert (recognizer["exporter"], detector["exporter"], detector["part"]) == ("torchscript", "dynamo", "detector")
    described = json.loads(Path(recognizer["preprocessing"]).read_text())
    assert described["vocabulary"]["characters"] == run.meta["alphabet"]

    test = ocr.crops_of(ocr.read_synth(root, "test"), set(run.meta["alphabet"]), None, "test")
    batches = ocr.CropBatches(test.crops[:4], [[3]] * 4, 4, torch.device("cpu"))
    crops, _, _ = batches.collate(list(range(4)))  # (4, 1, 32, W) in [0, 1], padded as recognize pads
    crops = (crops * 255).round().to(torch.uint8)
    noise = torch.randint(0, 256, (3, 1, 32, 52), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for x in (crops[:1], crops, noise):
        [log_probs] = run_onnx(recognizer["onnx"], {"crops": x})
        with torch.no_grad():
            close(log_probs, run.model.recognizer(x.float() / 255)[0].log_softmax(-1))

    images = ocr.pad_to([ocr.to_tensor(item.pil()) for item in test.images[:2]])  # (2, 3, 160, 160)
    for x in (images[:1], images, torch.randint(0, 256, (3, 3, 64, 96), dtype=torch.uint8)):
        [prob] = run_onnx(detector["onnx"], {"image": x})
        with torch.no_grad():
            close(prob, run.model.detector(x.float() / 255)["prob"])


# ----- what is refused -----------------------------------------------------------------------------
def test_encoder_decoders_and_language_models_are_not_exported(speech_manifest, tmp_path, capsys):
    las = train_speech(speech_manifest, "las", tmp_path / "las")
    code, _, err = run_cli(capsys, "export", las, "--out", tmp_path / "las.onnx")
    assert code == 2
    assert_one_line_error(err, "las run cannot be exported", "encoder-decoder", "one decoder step")
    assert not (tmp_path / "las.onnx").exists()

    (tmp_path / "verse.txt").write_text("to be or not to be, that is the question\n" * 40)
    lm = lamina.train("lm", data=str(tmp_path / "verse.txt"), epochs=1, batch_size=8, out=str(tmp_path / "lm"),
                      quiet=True, sets=["model.hidden=16", "model.embed=8", "data.seq_len=16", *CPU])  # fmt: skip
    code, _, err = run_cli(capsys, "export", lm["run"])
    assert code == 2
    assert_one_line_error(err, "lm run cannot be exported")


def test_an_unknown_format_and_a_missing_onnx_are_one_line(classify_run, monkeypatch, capsys):
    code, _, err = run_cli(capsys, "export", classify_run, "--format", "tflite")
    assert code == 2
    assert_one_line_error(err, "unknown export format 'tflite'", "onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    code, _, err = run_cli(capsys, "export", classify_run)
    assert code == 1
    assert_one_line_error(err, "needs onnxruntime", "pip install 'lamina[export]'")
    assert not (classify_run / "model.onnx").exists()
