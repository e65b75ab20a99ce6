"""lamina inspect RUN WHAT: every view on a tiny run of each task it applies to, the index page, the
one-line refusals, and saliency and Grad-CAM checked against captum on the same model."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

import lamina
from test_cli import assert_one_line_error, run_cli


def _png(path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def _finite(obj) -> bool:
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, dict):
        return all(_finite(v) for v in obj.values())
    if isinstance(obj, list):
        return all(_finite(v) for v in obj)
    return True


def _view(run, what, out, **arguments) -> dict:
    result = lamina.inspect(run, what, out=out, **arguments)
    assert result["view"] == what and result["plots"] and _finite(result)
    for path in result["plots"]:
        width, height = _png(path)
        assert width >= 100 and height >= 100, (path, width, height)
    return result


# Per task: the views that apply to its tiny run (those reading inputs take the run's sample inputs).
VIEWS = {
    "classify": ["filters", "activations", "saliency", "gradcam"],
    "detect": ["filters", "activations", "saliency", "gradcam"],
    "read": ["filters", "activations"],
    "caption": ["filters", "activations", "attention"],
    "translate": ["attention", "embeddings"],
    "lm": ["gradients"],
}


@pytest.mark.parametrize("task", list(VIEWS))
def test_every_view_draws_a_png_on_a_tiny_run_of_its_task(served_runs, tmp_path, task):
    run = lamina.load(served_runs / task, "cpu")
    inputs = run.task.sample_inputs(run.meta)
    for what in VIEWS[task]:
        reads = next(v for v in run.task.insights if v.name == what).reads
        options = {"inputs": inputs} if reads else {}
        options.update({"steps": 5, "rows": 2} if what == "gradients" else {})
        options.update({"limit": 40} if what == "embeddings" else {})
        result = _view(run, what, tmp_path / what, **options)
        if what == "activations":  # stages from the input side: resolution falls, channels grow
            shapes = list(result["stages"].values())
            assert len(shapes) >= 3 and shapes[-1][-1] < shapes[0][-1] and shapes[-1][0] >= shapes[0][0]
        if what in ("saliency", "gradcam"):
            assert all(r["targets"] for r in result["results"]) and all(
                p >= 0 for r in result["results"] for p in r["peak"]
            )
        if what == "gradients":
            assert len(result["curves"]["lm (lstm)"]) == 6


def test_embeddings_map_a_classifiers_test_split_by_class(trained_run, tmp_path):
    result = _view(lamina.load(trained_run, "cpu"), "embeddings", tmp_path, limit=12)
    variance = result["explained_variance"]
    assert result["n"] == 12 and len(variance) == 2 and sum(variance) <= 1 + 1e-6


def test_a_view_that_does_not_apply_names_those_that_do(capsys, served_runs, tmp_path):
    code, _, err = run_cli(capsys, "inspect", served_runs / "lm", "filters", "--out", tmp_path)
    assert code == 2
    assert_one_line_error(err, "'filters' does not apply to a lm run (lstm)", "the views that do: gradients, all")
    code, _, err = run_cli(capsys, "inspect", served_runs / "transcribe", "attention", "a.wav", "--out", tmp_path)
    assert code == 2
    assert_one_line_error(err, "'attention' does not apply to a transcribe run (ctc)")
    code, _, err = run_cli(capsys, "inspect", served_runs / "classify", "saliency", "--out", tmp_path)
    assert code == 2
    assert_one_line_error(err, "give an image to look at")
    code, _, err = run_cli(capsys, "inspect", served_runs / "classify", "gradcam", served_runs / "nothing.png",
                           "--out", tmp_path)  # fmt: skip
    assert code == 1
    assert_one_line_error(err, "nothing.png: no such file")
    code, _, err = run_cli(capsys, "inspect", served_runs / "classify", "dreams")
    assert code == 2
    assert_one_line_error(err, "invalid choice: 'dreams'")


def test_all_writes_every_view_and_an_index_page(capsys, trained_run, tmp_path):
    code, out, _ = run_cli(capsys, "inspect", trained_run, "all", "--out", tmp_path, "--json")
    assert code == 0
    import json

    result = json.loads(out)
    assert [v["view"] for v in result["views"]] == ["filters", "activations", "embeddings", "saliency", "gradcam"]
    page = (tmp_path / "index.html").read_text()
    for path in result["plots"]:
        _png(path)
        assert f'src="{path.rsplit("/", 1)[-1]}"' in page


def test_saliency_and_gradcam_agree_with_captum(trained_run):
    captum = pytest.importorskip("captum.attr")
    from lamina.insight import maps

    run = lamina.load(trained_run, "cpu")
    probe = run.task.probe(run.model, run.meta)
    x = run.task.sample_inputs(run.meta)[0][None].float() / 255
    model = run.model.float()
    target = int(model(x).argmax())
    ours = maps.saliency(probe, x)[0][1]
    theirs = captum.Saliency(model).attribute(x.clone().requires_grad_(True), target=target, abs=True)[0].amax(0)
    assert torch.allclose(ours, theirs, atol=1e-6)
    layer = probe.stages[-1][1]
    ours = maps.gradcam(probe, x)[0][1]
    cam = captum.LayerGradCam(model, layer).attribute(x, target=target, relu_attributions=True)
    theirs = captum.LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), "bilinear")[0, 0]
    assert ours.abs().max() > 0 and torch.allclose(ours, theirs.detach(), atol=1e-5)
