"""lamina search: a search of two short trials completes, resumes to more, retries a trial cut short,
and refuses a bad space in one line; the engine stops a trial its pruner asks to stop."""

from __future__ import annotations

import json

import pytest

import lamina
from conftest import CPU, make_folder
from test_cli import assert_one_line_error, run_cli

pytest.importorskip("optuna")

SPACE = "optim.lr: {low: 0.01, high: 0.3, log: true}\ntrain.batch_size: [8, 16]\n"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("search-data") / "shapes"
    make_folder(root / "train", per_class=8)
    return root


def _search(out, shapes, space, trials, nproc=1):
    return lamina.search("classify", trials=trials, time_budget=6, space=space, out=out, data=str(shapes), nproc=nproc,
                         sets=["model.name=lenet5", "data.image_size=16", *CPU])  # fmt: skip


def test_a_search_completes_resumes_and_retries_a_trial_cut_short(tmp_path, shapes):
    import optuna

    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    out = tmp_path / "study"
    first = _search(out, shapes, space, 1)
    assert len(first["trials"]) == 1 and first["complete"] == 1 and first["best"] is not None
    assert first["trials"][0]["params"]["optim.lr"] == 0.2  # the first trial is the task's own recipe
    for t in first["trials"]:
        info = json.loads((out / f"trial-{t['trial']:04d}" / "lamina.json").read_text())  # a normal run
        assert info["config"]["optim"]["lr"] == pytest.approx(t["params"]["optim.lr"], rel=1e-3)
    assert (out / "trials.tsv").read_text().count("\n") == 2 and (out / "trials.png").read_bytes()[:4] == b"\x89PNG"
    # A trial left running (the search was killed): the next call runs it again with the same settings.
    study = optuna.load_study(study_name="lamina-classify", storage=f"sqlite:///{out / 'study.db'}")
    cut = study.ask({"optim.lr": optuna.distributions.FloatDistribution(0.01, 0.3, log=True),
                     "train.batch_size": optuna.distributions.CategoricalDistribution([8, 16])})  # fmt: skip
    second = _search(out, shapes, space, 4, nproc=2)  # the retry, then two new trials at once
    states = {t["trial"]: t["state"] for t in second["trials"]}
    assert states[cut.number] == "fail" and second["retried"] == 1 and len(states) == 5
    retry = next(t for t in second["trials"] if t["params"] == cut.params and t["trial"] != cut.number)
    assert retry["state"] in ("complete", "pruned") and (out / f"trial-{retry['trial']:04d}" / "lamina.json").exists()
    assert second["best"]["command"].startswith("lamina train classify --time-budget 6 --data ")


def test_bad_spaces_are_refused_in_one_line(capsys, tmp_path):
    for text, message in [
        ("optim.lr: {low: 1, high: 0.1}", "low < high"),
        ("optim.rate: [1, 2]", "'optim.rate' in the search space is not a setting"),
        ("optim.lr: {low: 0, high: 1, log: true}", "a log range must be positive"),
        ("- just a list", "must map setting keys"),
        ("optim.lr: {low: 0.1", "is not YAML"),
    ]:
        path = tmp_path / "space.yaml"
        path.write_text(text)
        code, _, err = run_cli(capsys, "search", "classify", "--space", path, "--out", tmp_path / "s", "--trials", "1")
        assert code == 2, text
        assert_one_line_error(err, message)


def test_the_engine_stops_a_trial_its_pruner_stops(tmp_path, shapes):
    seen = []

    def prune(record, progress):
        seen.append((record["step"], progress))
        return True

    sets = ["data.image_size=16", *CPU]
    summary = lamina.train("classify", data=str(shapes), model="lenet5", epochs=3, batch_size=8, quiet=True,
                           out=str(tmp_path / "run"), sets=sets, on_evaluation=prune)  # fmt: skip
    assert summary["status"] == "pruned" and len(seen) == 1 and 0 < seen[0][1] <= 1
    assert json.loads((tmp_path / "run" / "lamina.json").read_text())["stopped"] == "pruned"
