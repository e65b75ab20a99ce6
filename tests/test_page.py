"""The web page of `lamina serve` in a real browser: Debian's chromium, headless, driven by Playwright.

Each test uses the page as a person would (a tab, an upload or a drawing or typed text, the button) and
reads what the page shows. The seven tiny runs of tests/served.py are served once for the module. A
failed test leaves a full-page screenshot in $LAMINA_TEST_ARTIFACTS (else its tmp_path); the path is
printed with the test's report.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
CHROMIUM = shutil.which("chromium")
if CHROMIUM is None:
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)

from served import CLASSES, LiveServer  # noqa: E402

# No connection beyond the loopback server; a fake microphone (a beep) and no permission prompt.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--use-fake-ui-for-media-stream",
         "--use-fake-device-for-media-stream"]  # fmt: skip
PERCENT = re.compile(r"^\d{1,3}(\.\d)?%$")


@pytest.fixture(scope="module")
def server(served_runs, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAMINA_OFFLINE", "1")
        mp.setenv("LAMINA_HOME", str(tmp_path_factory.mktemp("page-home")))
        with LiveServer(served_runs) as live:
            yield live


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),  # a fresh profile
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
            viewport={"width": 1200, "height": 900},
        )
        context.set_default_timeout(20_000)
        sync_api.expect.set_options(timeout=20_000)  # the first answer of each run loads its weights
        yield context
        context.close()


@pytest.fixture
def page(browser, server, request, tmp_path):
    """The page loaded and ready; afterwards, no script error and no request left the server, and a
    screenshot is kept when the test failed."""
    page = browser.new_page()
    errors, elsewhere = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: None if r.url.startswith((server.url, "blob:", "data:")) else elsewhere.append(r.url))
    page.goto(server.url)
    page.wait_for_selector("body[data-ready]")
    yield page
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        folder = Path(os.environ.get("LAMINA_TEST_ARTIFACTS") or tmp_path)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{request.node.name}.png"
        page.screenshot(path=str(path), full_page=True)
        print(f"screenshot of the page: {path}")
    page.close()
    assert not errors, f"script errors on the page: {errors}"
    assert not elsewhere, f"the page asked for something beyond the server: {elsewhere}"


def open_tab(page, run: str):
    tab = page.get_by_test_id(f"tab-{run}")
    tab.click()
    sync_api.expect(tab).to_have_attribute("aria-selected", "true")
    panel = page.get_by_test_id(f"panel-{run}")
    sync_api.expect(panel).to_be_visible()
    return panel


def answer(panel) -> dict:
    """The JSON the page received, as it shows it under 'The answer as JSON'."""
    return json.loads(panel.locator(".raw pre").text_content())


def pictures(served_runs: Path, task: str, n: int = 1) -> list[str]:
    """Test images of the data the served `task` run was trained on."""
    data = Path(json.loads((served_runs / task / "lamina.json").read_text())["config"]["data"]["name"])
    found = sorted((data / "test").glob("*.jpg"))
    assert found, f"no test images under {data}"
    return [str(p) for p in found[:n]]


def drop(page, target, path: str, kind: str = "image/jpeg"):
    """Drag a file from the desktop and drop it on `target`."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    target.evaluate(
        """(zone, [data, name, kind]) => {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, {type: kind}));
            for (const type of ['dragenter', 'dragover', 'drop'])
                zone.dispatchEvent(new DragEvent(type, {dataTransfer: transfer, bubbles: true, cancelable: true}));
        }""",
        [data, Path(path).name, kind],
    )


# ----- the page ---------------------------------------------------------------------------------------
def test_a_tab_per_run_with_its_task_model_and_headline_metric(page, served_runs):
    runs = sorted(p.name for p in served_runs.iterdir() if (p / "lamina.json").is_file())
    tabs = page.get_by_role("tab")
    sync_api.expect(tabs).to_have_count(len(runs))
    for run in runs:
        tab = page.get_by_test_id(f"tab-{run}")
        sync_api.expect(tab.locator(".tab-name")).to_have_text(run)
        sync_api.expect(tab.locator(".tab-meta")).to_contain_text(run)  # the task: runs are named after theirs
        sync_api.expect(tab.locator(".tab-metric")).to_have_text(re.compile(r"^(test|val) \w"))
    # the task's own verb is shown first, `predict` is a click away
    panel = open_tab(page, "detect")
    sync_api.expect(panel.get_by_role("radio", name="detect")).to_be_checked()
    sync_api.expect(panel.get_by_test_id("go")).to_have_text("Detect")
    panel.get_by_text("predict", exact=True).click()
    sync_api.expect(panel.get_by_test_id("go")).to_have_text("Predict")
    panel = open_tab(page, "lm")
    sync_api.expect(panel.get_by_role("radio", name="generate")).to_be_checked()
    sync_api.expect(panel.get_by_label("length")).to_have_value("500")  # defaults are shown
    sync_api.expect(page.get_by_test_id("panel-detect")).to_be_hidden()


def test_classify_a_drawing_shows_a_probability_bar_per_class(page):
    panel = open_tab(page, "classify")
    canvas = panel.get_by_test_id("draw-canvas")
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + 30)
    page.mouse.down()
    for i in range(1, 16):
        page.mouse.move(box["x"] + box["width"] / 2 + 2 * i, box["y"] + 30 + 9 * i, steps=2)
    page.mouse.up()
    panel.get_by_test_id("go").click()
    bars = panel.get_by_test_id("bar")
    sync_api.expect(bars).to_have_count(len(CLASSES))
    assert sorted(panel.get_by_test_id("bar-label").all_text_contents()) == sorted(CLASSES)
    values = panel.get_by_test_id("bar-value").all_text_contents()
    assert all(PERCENT.match(v) for v in values), values
    assert abs(sum(float(v[:-1]) for v in values) - 100) < 1
    sync_api.expect(panel.locator(".result-input")).to_have_text("drawing.png")
    # what was sent is what was drawn: white strokes on black, shown beside the bars
    white = panel.locator("img.thumb").evaluate("""img => {
        const c = document.createElement('canvas');
        [c.width, c.height] = [img.naturalWidth, img.naturalHeight];
        c.getContext('2d').drawImage(img, 0, 0);
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        return d.filter((v, i) => i % 4 === 0 && v > 200).length / (c.width * c.height);
    }""")
    assert 0.01 < white < 0.5
    sent = answer(panel)["results"][0]["predictions"]
    assert [p["label"] for p in sent] == panel.get_by_test_id("bar-label").all_text_contents()


def test_detect_draws_boxes_and_masks_over_the_image(page, served_runs):
    panel = open_tab(page, "detect")
    scenes = pictures(served_runs, "detect", 3)
    panel.get_by_test_id("image-file").set_input_files(scenes)
    panel.get_by_label("threshold").fill("0")
    panel.get_by_test_id("go").click()
    sync_api.expect(panel.locator(".overlaid[data-drawn]")).to_have_count(len(scenes))
    results = answer(panel)["results"]
    assert [r["input"] for r in results] == [Path(p).name for p in scenes]
    first = next((i for i, r in enumerate(results) if r["objects"]), None)
    assert first is not None, "the tiny run finds something at threshold 0"
    objects = results[first]["objects"]
    panel = panel.get_by_test_id("result").nth(first)
    figure = panel.locator(".overlaid")
    sync_api.expect(panel.get_by_test_id("object")).to_have_count(len(objects))
    sync_api.expect(panel.get_by_test_id("object").first).to_contain_text(objects[0]["label"])
    overlay = figure.get_by_test_id("overlay")
    sync_api.expect(overlay).to_have_attribute("aria-label", re.compile(rf"^{len(objects)} objects? drawn"))
    image, canvas = figure.locator("img").bounding_box(), overlay.bounding_box()
    assert (canvas["x"], canvas["y"], canvas["width"], canvas["height"]) == pytest.approx(
        (image["x"], image["y"], image["width"], image["height"]), abs=1
    )
    painted = overlay.evaluate("c => c.getContext('2d').getImageData(0, 0, c.width, c.height).data"
                               ".filter((v, i) => i % 4 === 3 && v > 0).length")  # fmt: skip
    assert painted > 0
    # the page's own decoding of each mask covers as many pixels as the server says
    decode = "objects => objects.map(o => o.mask ? lamina.decodeRLE(o.mask).reduce((a, b) => a + b, 0) : 0)"
    areas = page.evaluate(decode, objects)
    assert areas == [o["area"] if o["mask"] else 0 for o in objects]


def test_the_page_decodes_coco_compressed_masks_as_pycocotools_encodes_them(page):
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    masks = [rng.random((37, 53)) < 0.3, np.zeros((5, 7), bool), np.ones((64, 48), bool)]
    masks[1][2:4, 3:6] = True
    for mask in masks:
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        given = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode()}
        decoded = page.evaluate("rle => Array.from(lamina.decodeRLE(rle))", given)
        assert np.array_equal(np.array(decoded, bool).reshape(mask.shape), mask)


def test_read_outlines_the_words_over_the_image(page, served_runs):
    panel = open_tab(page, "read")
    panel.get_by_test_id("image-file").set_input_files(pictures(served_runs, "read"))
    panel.get_by_test_id("go").click()
    sync_api.expect(panel.locator(".overlaid[data-drawn]")).to_have_count(1)
    words = answer(panel)["results"][0]["words"]
    assert words and all(len(w["polygon"]) == 4 for w in words)
    sync_api.expect(panel.get_by_test_id("word")).to_have_count(len(words))
    sync_api.expect(panel.get_by_test_id("overlay")).to_have_attribute(
        "aria-label", f"{len(words)} word{'s' * (len(words) != 1)} outlined over the image"
    )
    for item, word in zip(panel.get_by_test_id("word").all(), words):
        sync_api.expect(item.locator(".word-text")).to_have_text(word["text"] or "∅")
    sync_api.expect(panel.get_by_test_id("text")).to_be_visible()


def test_caption_shows_the_caption_and_a_heat_map_per_word(page, served_runs):
    panel = open_tab(page, "caption")
    image = pictures(served_runs, "caption")[0]
    drop(page, panel.get_by_test_id("drop-zone"), image)
    sync_api.expect(panel.get_by_test_id("previews").locator("figcaption")).to_have_text(Path(image).name)
    panel.get_by_label("attention").check()
    panel.get_by_test_id("go").click()
    caption = panel.get_by_test_id("caption")
    sync_api.expect(caption).to_be_visible()
    result = answer(panel)["results"][0]
    sync_api.expect(caption).to_have_text(result["caption"] or "(nothing)")
    maps = panel.get_by_test_id("word-heatmap")
    sync_api.expect(maps).to_have_count(len(result["attention"]))
    sync_api.expect(maps.locator(".overlaid[data-drawn]")).to_have_count(len(result["attention"]))
    sync_api.expect(maps.first.locator("figcaption")).to_have_text(result["words"][0])


def test_translate_shows_the_translation_and_with_attention_a_heat_map(page):
    panel = open_tab(page, "translate")
    panel.get_by_label(re.compile("^Texts")).fill("the cat sleeps\nhello world")
    panel.get_by_test_id("go").click()
    sync_api.expect(panel.get_by_test_id("translation")).to_have_count(2)
    sync_api.expect(panel.get_by_test_id("attention-map")).to_have_count(0)
    sync_api.expect(panel.locator(".result-input")).to_have_text(["the cat sleeps", "hello world"])

    panel.get_by_label("attention").check()
    panel.get_by_test_id("go").click()
    table = panel.get_by_test_id("attention-map")
    sync_api.expect(table).to_have_count(2)
    first = answer(panel)["results"][0]
    sync_api.expect(panel.get_by_test_id("translation").first).to_have_text(first["translation"] or "(nothing)")
    sync_api.expect(table.first.locator("thead th")).to_have_count(len(first["source_pieces"]) + 1)
    sync_api.expect(table.first.locator("tbody tr")).to_have_count(len(first["target_pieces"]))


def test_lm_generate_streams_its_text_and_predict_shows_next_characters(page):
    panel = open_tab(page, "lm")
    panel.get_by_label("prompt").fill("To be")
    panel.get_by_label("length").fill("400")
    # what the text looked like each time the page changed it, and whether the answer had ended then
    panel.get_by_test_id("results").evaluate("""results => {
        window.seen = [];
        new MutationObserver(() => {
            const stream = results.querySelector('[data-testid=stream]');
            if (stream) window.seen.push([stream.textContent.length, stream.dataset.done]);
        }).observe(results, {subtree: true, childList: true, characterData: true, attributes: true});
    }""")
    panel.get_by_test_id("go").click()
    stream = panel.get_by_test_id("stream")
    sync_api.expect(stream).to_have_attribute("data-done", "true")
    text = stream.text_content()
    assert text.startswith("To be") and len(text) == len("To be") + 400
    seen = page.evaluate("window.seen")
    growing = sorted({n for n, done in seen if done == "false" and 0 < n < len(text)})
    assert len(growing) >= 2, f"the text did not grow piece by piece before the end: {seen}"
    assert int(stream.get_attribute("data-pieces")) >= 2

    panel.get_by_text("predict", exact=True).click()
    panel.get_by_label(re.compile("^Inputs")).fill("To be or not to b")
    panel.get_by_test_id("go").click()
    sync_api.expect(panel.get_by_test_id("bar")).to_have_count(5)  # top_k's default
    assert all(PERCENT.match(v) for v in panel.get_by_test_id("bar-value").all_text_contents())


def tone(path: Path, seconds: float = 1.0, rate: int = 16000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.3 * np.sin(2 * np.pi * (300 + 400 * t) * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return path


def test_transcribe_an_uploaded_file_and_a_recording_from_the_microphone(page, served_runs, tmp_path):
    if not (served_runs / "transcribe").is_dir():
        pytest.skip("no transcribe run is served (espeak-ng is not installed)")
    panel = open_tab(page, "transcribe")
    panel.get_by_test_id("audio-file").set_input_files(str(tone(tmp_path / "tone.wav")))
    panel.get_by_test_id("go").click()
    sync_api.expect(panel.get_by_test_id("transcript")).to_have_count(1)
    sync_api.expect(panel.get_by_test_id("details")).to_contain_text("audio seconds 1")

    record = panel.get_by_test_id("record")
    record.click()
    sync_api.expect(record).to_have_attribute("aria-pressed", "true")
    page.wait_for_timeout(1200)
    record.click()
    sync_api.expect(panel.get_by_test_id("audio-inputs").locator("figcaption")).to_have_text("recording.wav")
    panel.get_by_test_id("go").click()
    sync_api.expect(panel.locator(".result-input")).to_have_text("recording.wav")
    sync_api.expect(panel.get_by_test_id("transcript")).to_be_visible()
    seconds = answer(panel)["results"][0]["audio_seconds"]
    assert 0.8 < seconds < 5, seconds  # the WAV the page encoded holds what was recorded


def test_a_bad_upload_shows_the_servers_error(page, tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_text("not a picture at all\n")
    panel = open_tab(page, "classify")
    panel.get_by_test_id("image-file").set_input_files(str(fake))
    panel.get_by_test_id("go").click()
    alert = panel.get_by_role("alert")
    sync_api.expect(alert).to_be_visible()
    sync_api.expect(alert).to_contain_text("notes.png: not an image")
    sync_api.expect(panel.get_by_test_id("result")).to_have_count(0)
