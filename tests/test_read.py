"""Scene text: the renderer, ICDAR folders and crops, the maps, the models, the task end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import lamina
from conftest import CPU, lamina_home
from lamina import metrics
from lamina.cli import main
from lamina.data import ocr, scenes, synthtext
from lamina.errors import LaminaError

TINY = synthtext.TextSpec(image_size=160, train=24, val=6, test=6, min_height=12, max_height=30, max_lines=5)
TINY_SETS = ["data.image_size=160", "data.crop_size=128", "data.scenes=24", "data.val_scenes=6",
             "data.test_scenes=6", "data.crops_per_step=16", *CPU]  # fmt: skip


def build_in(home: Path, spec: synthtext.TextSpec) -> Path:
    with lamina_home(home):
        return synthtext.build(spec, processes=2)


def polygon_mask(quad, shape, grow: float = 0.0) -> np.ndarray:
    from shapely.geometry import Polygon

    poly = Polygon(quad).buffer(grow, join_style="mitre")
    image = Image.new("L", shape[::-1], 0)
    ImageDraw.Draw(image).polygon([tuple(p) for p in np.asarray(poly.exterior.coords)], fill=1)
    return np.asarray(image, bool)


# ----- the renderer --------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_quads_hold_their_ink_and_nothing_of_the_next_word(seed):
    rng = np.random.default_rng(seed)
    fonts = synthtext.find_fonts()["train"]
    family = sorted(fonts)[seed % len(fonts)]
    font = synthtext._font(fonts[family][0], int(rng.integers(14, 40)))
    line = synthtext.draw_line(["Hello,", "brave", "W0rld!"], font, stroke=int(seed % 3 == 0))
    h, w = line.text.shape
    side = 2 * w + 40
    src = np.array([(0, 0), (w, 0), (w, h), (0, h)], float)
    angle = np.deg2rad(rng.uniform(-25, 25))
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = (src - (w / 2, h / 2)) @ rot.T + side / 2 + rng.normal(0, 0.05, (4, 2)) * h
    warp = synthtext.Warp(synthtext.homography(src, dst), rng.uniform(-0.25, 0.25) * (seed % 2), w, h)
    quads = [synthtext.quad_of(box, warp) for box in line.word_boxes]
    for i, (lo, hi) in enumerate(line.spans):
        alone = np.zeros_like(line.outline)
        alone[:, lo:hi] = line.outline[:, lo:hi]
        ink = warp.render(alone, (0, 0, side, side)) > 0.5
        assert ink.any()
        assert not (ink & ~polygon_mask(quads[i], ink.shape, grow=1.0)).any()  # all of its own ink
        for j, quad in enumerate(quads):
            if j != i:
                assert not (ink & polygon_mask(quad, ink.shape, grow=-1.0)).any()  # none of the next word's


def test_scenes_are_deterministic_and_hold_out_fonts_and_photographs(text_folder, tmp_path):
    again = build_in(tmp_path / "home", TINY)
    for split in ("train", "val", "test"):
        assert (again / f"{split}.json").read_bytes() == (text_folder / f"{split}.json").read_bytes()
        assert (again / split / "000003.jpg").read_bytes() == (text_folder / split / "000003.jpg").read_bytes()
    manifest = json.loads((text_folder / "manifest.json").read_text())
    fonts = {s: set(f) for s, f in manifest["fonts"].items()}
    assert fonts["train"] and fonts["val"] and fonts["test"]
    assert not fonts["train"] & fonts["test"] and not fonts["train"] & fonts["val"] and not fonts["val"] & fonts["test"]
    used = {s: {w["font"] for m in json.loads((text_folder / f"{s}.json").read_text()) for w in m["words"]}
            for s in ("train", "val", "test")}  # fmt: skip
    photos = {s: {m["photo"] for m in json.loads((text_folder / f"{s}.json").read_text())} for s in used}
    for split in used:
        assert used[split] <= fonts[split]
        assert photos[split] <= set(scenes.PHOTOS[split])
    assert not photos["train"] & photos["test"]
    words = [w for m in json.loads((text_folder / "train.json").read_text()) for w in m["words"]]
    assert len(words) >= 24 and all(len(w["chars"]) == len(w["text"]) for w in words)
    assert all(set(w["text"]) <= set(synthtext.ALPHABET) for w in words)


def test_the_scene_folder_reads_as_an_icdar_folder(text_folder):
    synth = ocr.read_synth(text_folder, "test")
    icdar = ocr.read_icdar(text_folder, "test")
    assert [i.name for i in synth] == [i.name for i in icdar]
    for a, b in zip(synth, icdar):
        assert [w.text for w in a.words] == [w.text for w in b.words]
        for wa, wb in zip(a.words, b.words):
            np.testing.assert_allclose(wa.quad, wb.quad, atol=0.06)


def test_a_missing_font_folder_is_one_line(tmp_path):
    with pytest.raises(LaminaError, match="does not exist"):
        synthtext.find_fonts(str(tmp_path / "nowhere"))
    (tmp_path / "fonts").mkdir()
    with pytest.raises(LaminaError, match="at least 3 font families"):
        synthtext.find_fonts(str(tmp_path / "fonts"))


# ----- crops, maps, metrics ------------------------------------------------------------------------
def test_a_crop_undoes_the_perspective():
    image = Image.new("RGB", (200, 120), "white")
    quad = np.array([(40, 30), (160, 50), (150, 90), (35, 70)], float)
    ImageDraw.Draw(image).polygon([tuple(p) for p in quad], fill="black")
    crop = ocr.cut(image, quad).numpy()
    assert crop.shape[0] == 32 and 70 < crop.shape[1] < 130
    # the word's quadrilateral fills the crop but for the padding around it
    assert crop[8:24, 10:-10].mean() < 30 and crop[:2].mean() > 200


def test_db_targets_shrink_the_words_and_skip_dont_care():
    words = [ocr.Word("hello", np.array([(10, 10), (90, 10), (90, 40), (10, 40)], float)),
             ocr.Word("###", np.array([(10, 60), (90, 60), (90, 90), (10, 90)], float))]  # fmt: skip
    maps = ocr.db_targets(words, 100, 100, 2)
    core = maps["prob"]
    assert core.shape == (50, 50)
    ys, xs = np.nonzero(core)
    assert 5 < xs.min() and xs.max() < 45 and 5 < ys.min() and ys.max() < 20  # inside the word, shrunk
    assert maps["prob_mask"][35, 25] == 0 and maps["prob_mask"][5, 5] == 1
    assert maps["thresh"].max() == pytest.approx(0.7, abs=0.02) and maps["thresh"].min() == pytest.approx(0.3)
    found = ocr.polygons_from_map(core.astype(np.float32), 2)
    assert len(found) == 1
    quad, score = found[0]
    assert score == 1.0
    truth = [[(words[0].quad, "hello")]]
    assert metrics.text_spotting([[(quad, "hello")]], truth)["hmean"] == 1.0  # grown back to the word


def test_text_spotting_known_answers():
    square = lambda x, y, s=10: np.array([(x, y), (x + s, y), (x + s, y + s), (x, y + s)], float)  # noqa: E731
    truth = [[(square(0, 0), "Cat"), (square(50, 0), "dog"), (square(0, 50), "###")]]
    found = [[(square(1, 0), "cat"), (square(50, 0), "dot"), (square(0, 51), "x"), (square(80, 80), "fox")]]
    m = metrics.text_spotting(found, truth)
    # the '###' detection is neither right nor wrong: 2 of 3 found words match, 2 of 2 truths are found
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == 1.0
    assert m["e2e_precision"] == pytest.approx(1 / 3) and m["e2e_recall"] == 0.5  # 'cat' reads 'Cat', case aside
    assert metrics.word_accuracy(["Cat", "dog"], ["cat", "dog"]) == {
        "word_accuracy": 0.5, "word_accuracy_nocase": 1.0, "cer": pytest.approx(1 / 6)}  # fmt: skip


def test_short_words_keep_their_direction_and_thin_cores_are_found():
    square = np.array([(20, 10), (29, 10), (29, 22), (20, 22)], float)  # an "I": higher than wide
    rolled = np.roll(square[::-1], 1, axis=0)
    np.testing.assert_allclose(ocr.order_quad(rolled), square)
    core = np.zeros((20, 40), np.float32)
    core[8, 5:35] = 1  # a core one pixel thick
    ((quad, _),) = ocr.polygons_from_map(core, 2)
    assert quad[:, 0].min() < 10 and quad[:, 0].max() > 70 and quad[0, 1] < quad[3, 1]


def test_end_to_end_forgives_a_trailing_mark_as_icdar_does():
    box = np.array([(0, 0), (40, 0), (40, 10), (0, 10)], float)
    assert metrics.text_spotting([[(box, "theatre")]], [[(box, "Theatre.")]])["e2e_f"] == 1.0
    assert metrics.text_spotting([[(box, "theatr")]], [[(box, "Theatre.")]])["e2e_f"] == 0.0


def test_reading_order_goes_by_lines_then_left_to_right():
    box = lambda x, y: np.array([(x, y), (x + 20, y), (x + 20, y + 10), (x, y + 10)], float)  # noqa: E731
    quads = [box(60, 2), box(0, 40), box(0, 0), box(30, 42)]
    assert ocr.reading_order(quads) == [2, 0, 1, 3]


# ----- the models ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["crnn", "dbnet", "reader"])
def test_models_take_their_inputs_and_gradients_flow(name):
    from lamina.models import get_model
    from lamina.models.text import CRNN, DBNet

    model = get_model("read", name)
    parts = [m for m in (model, getattr(model, "detector", None), getattr(model, "recognizer", None))
             if isinstance(m, (CRNN, DBNet))]  # fmt: skip
    for part in parts:
        if isinstance(part, CRNN):
            logits, loss = part(torch.rand(2, 1, 32, 64), torch.tensor([64, 48]), torch.tensor([[5, 6, 3], [7, 3, 0]]))
            assert logits.shape == (2, 16, 98)
        else:
            words = [ocr.Word("ab", np.array([(8, 8), (40, 8), (40, 20), (8, 20)], float))]
            maps = ocr.db_targets(words, 64, 64, 2)
            out = part(torch.rand(1, 3, 64, 64))
            assert out["prob"].shape == (1, 32, 32)
            loss = sum(part.loss(out, {k: torch.from_numpy(v)[None] for k, v in maps.items()}).values())
        assert torch.isfinite(loss)
        loss.backward()
        assert all(p.grad is not None for p in part.parameters() if p.requires_grad)


def test_ctc_decoding_is_the_module_speech_uses(monkeypatch):
    from lamina.models import ctc
    from lamina.models import speech as speech_models
    from lamina.models.text import CRNN

    assert speech_models.ctc_decode is ctc.decode  # one decoder for both
    calls = []
    real = ctc.decode
    monkeypatch.setattr(ctc, "decode", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    model = CRNN(20).eval()
    hyps = model.recognize(torch.rand(2, 1, 32, 40), torch.tensor([40, 32]), beam=3)
    assert calls == [3] and len(hyps) == 2
    log_probs = torch.randn(1, 12, 20).log_softmax(-1)
    assert ctc.decode(log_probs, torch.tensor([12]), 1)[0].tokens == ctc.greedy(log_probs, torch.tensor([12]))[0].tokens


@pytest.mark.slow
def test_the_recognizer_overfits_a_handful_of_crops(text_folder):
    from lamina.data.vocab import EOS, CharVocab
    from lamina.models.text import CRNN

    torch.manual_seed(0)
    data = ocr.crops_of(ocr.read_synth(text_folder, "train")[:4], set(synthtext.ALPHABET), None, "train")
    crops, texts = data.crops[:6], data.texts[:6]
    vocab = CharVocab(synthtext.ALPHABET, specials=True)
    batches = ocr.CropBatches(crops, [vocab.encode(t).tolist() + [EOS] for t in texts], 8, "cpu")
    model = CRNN(len(vocab), dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x, widths, targets = batches.collate(list(range(len(crops))))
    for step in range(400):
        model.train()
        _, loss = model(x, widths, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 24:  # done as soon as it reads them all
            model.eval()
            read = [vocab.decode(h.tokens) for h in model.recognize(x, widths)]
            if read == texts:
                break
    print(f"read every crop after {step + 1} steps")
    assert read == texts


@pytest.mark.slow
def test_the_detector_overfits_a_few_scenes(text_folder):
    from lamina.models.text import DBNet

    torch.manual_seed(0)
    images = ocr.read_synth(text_folder, "train")[:2]
    batches = ocr.DetectorBatches(images, 2, "cpu", size=160)
    x, targets = batches.batch(0, 0)
    model = DBNet()
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    for _ in range(150):
        model.train()
        loss = sum(model.loss(model(x.float() / 255), targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        prob = model(x.float() / 255)["prob"].numpy()
    found = [[(q, None) for q, _ in ocr.polygons_from_map(p, 2)] for p in prob]
    truth = [[(w.quad, w.text) for w in i.words] for i in images]
    assert metrics.text_spotting(found, truth)["hmean"] > 0.8


# ----- the task end to end -------------------------------------------------------------------------
def test_train_save_load_read_evaluate(read_run, text_folder, tmp_path, capsys):
    run = lamina.load(read_run)
    image = text_folder / "test" / "000000.jpg"
    blank = tmp_path / "blank.png"
    Image.new("RGB", (96, 64), (120, 130, 140)).save(blank)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    result = run.read([str(image), str(blank), str(bad)], out=str(tmp_path / "drawn"))
    first, empty, broken = result["results"]
    assert set(first) >= {"input", "words", "text", "seconds", "drawn"} and Path(first["drawn"]).is_file()
    for w in first["words"]:
        assert len(w["polygon"]) == 4 and isinstance(w["text"], str) and 0 <= w["confidence"] <= 1
    assert empty["words"] == [] or all("text" in w for w in empty["words"])
    assert "not a readable image" in broken["error"]
    again = lamina.load(read_run).read([str(image)])["results"][0]["words"]
    assert again == first["words"]  # reloaded, the same words
    assert main(["evaluate", str(read_run), "--json", "--out", str(tmp_path / "e")]) == 0
    report = json.loads(capsys.readouterr().out)
    m = report["metrics"]
    for key in ("word_accuracy", "word_accuracy_nocase", "cer", "precision", "recall", "hmean", "e2e_f"):
        assert 0 <= m[key] <= max(1.0, m[key]) and key in m
    assert set(m["by_font"]) <= set(json.loads((text_folder / "manifest.json").read_text())["fonts"]["test"])
    assert set(m["by_background"]) <= set(scenes.PHOTOS["test"])
    assert (tmp_path / "e" / "gallery.png").is_file() and (tmp_path / "e" / "predictions.tsv").is_file()


def test_a_recognizer_trains_on_a_crop_manifest_and_reads_a_crop(text_folder, tmp_path, capsys):
    data = ocr.crops_of(ocr.read_synth(text_folder, "train"), set(synthtext.ALPHABET), None, "train")
    (tmp_path / "crops").mkdir()
    lines = []
    for i, (crop, text) in enumerate(zip(data.crops, data.texts)):
        Image.fromarray(crop.numpy()).save(tmp_path / "crops" / f"{i}.png")
        lines.append(f"crops/{i}.png\t{text}")
    lines.append("crops/missing.png\tghost")
    (tmp_path / "words.tsv").write_text("\n".join(lines) + "\n")
    summary = lamina.train("read", data=str(tmp_path / "words.tsv"), model="crnn", epochs=1,
                           out=str(tmp_path / "rec"), quiet=True, sets=CPU)  # fmt: skip
    assert "left out 1 line" in capsys.readouterr().err
    run = lamina.load(summary["run"])
    read = run.read([str(tmp_path / "crops" / "0.png")])["results"][0]
    assert set(read) >= {"text", "confidence"} and "words" not in read
    assert main(["evaluate", summary["run"], "--json", "--out", str(tmp_path / "e")]) == 0
    m = json.loads(capsys.readouterr().out)["metrics"]
    assert {"word_accuracy", "word_accuracy_nocase", "cer"} <= set(m) and "hmean" not in m


def test_parts_combine_from_earlier_runs(read_run, text_folder, tmp_path):
    from lamina.engine import checkpoint as ckpt

    rec = lamina.train("read", data=str(text_folder), model="crnn", epochs=1, out=str(tmp_path / "rec"),
                       quiet=True, sets=TINY_SETS)["run"]  # fmt: skip
    combined = lamina.train("read", data=str(text_folder), model="reader", epochs=1, lr=1e-9, init=str(read_run),
                            out=str(tmp_path / "both"), quiet=True,
                            sets=[*TINY_SETS, f"data.init_recognizer={rec}", "optim.warmup=0"])["run"]  # fmt: skip
    theirs = ckpt.load_weights(Path(rec) / ckpt.WEIGHTS_FILE)
    ours = ckpt.load_weights(Path(combined) / ckpt.WEIGHTS_FILE)
    name = "rnn.weight_hh_l0"
    assert torch.allclose(ours[f"recognizer.{name}"], theirs[name], atol=1e-4)


def test_characters_outside_the_alphabet_are_warned_and_counted(text_folder, tmp_path, capsys):
    root = tmp_path / "icdar"
    shutil.copytree(text_folder / "train", root / "train")
    gt = sorted((root / "train").glob("gt_*.txt"))[0]
    gt.write_text(gt.read_text() + "1,1,30,1,30,12,1,12,café\n")
    images = ocr.read_icdar(root, "train")
    data = ocr.crops_of(images, set(synthtext.ALPHABET), None, "train")
    assert "1 word(s) have characters outside the recognizer's alphabet ('é')" in capsys.readouterr().err
    assert "café" not in data.texts


def test_bad_input_is_one_line(read_run, tmp_path, capsys):
    assert main(["train", "read", "--data", str(tmp_path / "nothing"), *sum((["--set", s] for s in CPU), [])]) == 1
    assert "no such file or folder" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "read", "--data", str(empty)]) == 1
    err = capsys.readouterr().err
    assert "no images found" in err and "Traceback" not in err
    assert main(["train", "read", "--set", f"data.fonts={tmp_path / 'no-fonts'}"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["read", str(read_run), str(tmp_path / "missing.png")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_a_run_of_another_task_is_one_line(trained_run, capsys):
    assert main(["read", str(trained_run), "x.png"]) in (1, 2)
    err = capsys.readouterr().err
    assert "classify" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("engine", ["tesseract", "rapidocr"])
def test_the_peers_read_a_scene_when_installed(engine, text_folder):
    import importlib.util

    if engine == "tesseract" and (importlib.util.find_spec("pytesseract") is None or not shutil.which("tesseract")):
        pytest.skip("Tesseract is not installed (./run peers installs it)")
    if engine == "rapidocr" and importlib.util.find_spec("rapidocr_onnxruntime") is None:
        pytest.skip("RapidOCR is not installed (./run peers installs it)")
    from benchmarks.peers import ocr_engines

    image = ocr.read_synth(text_folder, "test")[0]
    read = ocr_engines.tesseract_image if engine == "tesseract" else ocr_engines.Rapid().image
    words = read(image.pil().resize((480, 480)))
    assert all(q.shape == (4, 2) and isinstance(t, str) for q, t in words)


def test_a_line_is_cut_into_words_in_proportion():
    from benchmarks.peers.ocr_engines import split_line

    quad = np.array([(0, 0), (110, 0), (110, 10), (0, 10)], float)
    (q1, w1), (q2, w2) = split_line(quad, "hello world")
    assert (w1, w2) == ("hello", "world")
    np.testing.assert_allclose(q1[:, 0], [0, 50, 50, 0])
    np.testing.assert_allclose(q2[:, 0], [60, 110, 110, 60])


@pytest.mark.slow
def test_torchrun_trains_a_reader_that_reads(text_folder, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "lamina",
               "train", "read", "--data", str(text_folder), "--epochs", "1", "--batch-size", "2", "--out", str(out),
               "--quiet", *[a for s in TINY_SETS for a in ("--set", s)]]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    run = lamina.load(out, device="cpu")
    assert run.info["processes"] == 2
    assert "words" in run.read([str(text_folder / "test" / "000000.jpg")])["results"][0]
