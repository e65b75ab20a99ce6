"""lamina explain: back-propagation by hand agrees with autograd and learns; the classic pipeline runs."""

from __future__ import annotations

import json

import numpy as np

from lamina.principles.backprop import NumpyMLP, gradient_check
from test_cli import assert_one_line_error, run_cli


def test_hand_written_gradients_match_autograd():
    rng = np.random.default_rng(1)
    for sizes in ([20, 7, 3], [784, 32, 16, 10]):
        model = NumpyMLP(sizes, seed=2, dtype=np.float64)
        x, y = rng.random((12, sizes[0])), rng.integers(0, sizes[-1], 12)
        assert gradient_check(model, x, y) < 1e-6


def test_explain_backprop_trains_on_fashion_mnist(capsys):
    code, out, err = run_cli(capsys, "explain", "backprop", "--limit", "2000", "--epochs", "2", "--hidden", "64",
                             "--json")  # fmt: skip
    assert code == 0
    result = json.loads(out)
    assert result["layers"] == [784, 64, 10] and result["gradient_check"] < 1e-6
    assert result["epochs"][1]["loss"] < result["epochs"][0]["loss"] and result["test_accuracy"] > 0.6
    assert all(len(e["gradient_norms"]) == 2 and min(e["gradient_norms"]) > 0 for e in result["epochs"])
    assert "epoch 2: loss" in err  # the progress goes to stderr when stdout carries the JSON
    code, _, err = run_cli(capsys, "explain", "backprop", "--hidden", "64,x")
    assert code == 2
    assert_one_line_error(err, "--hidden takes widths")


def test_explain_classic_is_hog_and_a_linear_svm(capsys):
    code, out, _ = run_cli(capsys, "explain", "classic", "--limit", "1500", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["features"] == "hog" and result["dimensions"] == 1296 and result["test_accuracy"] > 0.75
