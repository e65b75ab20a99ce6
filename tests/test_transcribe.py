"""Speech: audio reading, log-mel features, SpecAugment, the recognizers, CTC decoding, end to end."""

import json
import math
import shutil
import wave
from collections import Counter
from pathlib import Path

import jiwer
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lamina
from conftest import CPU
from lamina.data import audio, speech
from lamina.data.batching import pad
from lamina.data.vocab import BOS, EOS
from lamina.errors import LaminaError
from lamina.models import get_model, list_models
from lamina.models.ctc import BLANK
from lamina.models.ctc import beam as ctc_beam
from lamina.models.ctc import greedy as ctc_greedy
from lamina.models.speech import LAS, CTCRecognizer, Listener
from test_cli import assert_one_line_error, run_cli

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
TINY = ["model.hidden=32", *CPU]
SENTENCES = [
    "open the file now",
    "close the door please",
    "the cat sees the dog",
    "save my work today",
    "the red dog eats bread",
    "play the music loud",
    "my big cat is small",
    "read the long book",
    "stop the red car",
    "see you in three days",
    "dogs eat bread",
    "the file is open",
]


def write_wav(path: Path, samples: np.ndarray, rate: int, channels: int = 1) -> Path:
    """A 16-bit PCM WAV written with the standard library (independent of the reader under test)."""
    data = np.clip(samples, -1, 1)
    if channels > 1:
        data = np.repeat(data[:, None], channels, axis=1)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((data * 32767).astype("<i2").tobytes())
    return path


def tone(freq: float, seconds: float, rate: int = audio.SAMPLE_RATE, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# ----- features ----------------------------------------------------------------------------------
def test_log_mel_of_a_tone_peaks_in_the_band_of_its_frequency():
    for freq in (300.0, 1000.0, 3500.0):
        feats = audio.log_mel(tone(freq, 1.0), normalise=False)  # (frames, 80)
        assert feats.shape == (101, audio.N_MELS)  # one frame per 10 ms, centred windows
        centres = 700 * (10 ** (np.linspace(0, 2595 * np.log10(1 + 8000 / 700), 82) / 2595) - 1)[1:-1]
        expected = int(np.argmin(np.abs(centres - freq)))
        assert abs(int(feats[50].argmax()) - expected) <= 1, freq


def test_log_mel_matches_a_reference_computation():
    """The same features from numpy's FFT, a Hann window and the filterbank applied by hand."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(4000).astype(np.float32) * 0.1
    padded = np.pad(x, (audio.N_FFT // 2, audio.N_FFT // 2), mode="reflect")
    window = np.zeros(audio.N_FFT)
    left = (audio.N_FFT - audio.WINDOW) // 2
    window[left : left + audio.WINDOW] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(audio.WINDOW) / audio.WINDOW)
    frames = [padded[i * audio.HOP : i * audio.HOP + audio.N_FFT] * window for i in range(1 + len(x) // audio.HOP)]
    power = np.abs(np.fft.rfft(np.array(frames), axis=1)) ** 2
    reference = np.log(power @ audio.mel_filterbank().numpy().astype(np.float64) + 1e-6)
    ours = audio.log_mel(x, normalise=False).numpy()
    assert ours.shape == reference.shape
    assert np.allclose(ours, reference, atol=2e-3, rtol=1e-3)
    normalised = audio.log_mel(x)
    assert torch.allclose(normalised.mean(0), torch.zeros(audio.N_MELS), atol=1e-4)
    assert torch.allclose(normalised.std(0, unbiased=False), torch.ones(audio.N_MELS), atol=1e-3)


def test_mel_filters_are_triangles_peaking_at_their_centres():
    fb = audio.mel_filterbank().numpy()  # (257, 80)
    freqs = np.linspace(0, 8000, 257)
    for m in (0, 40, 79):
        assert fb[:, m].max() <= 1.0 + 1e-6 and fb[:, m].max() > 0.5
        assert abs(freqs[fb[:, m].argmax()] - audio.mel_centres()[m]) <= 8000 / 256
    assert (fb.sum(1)[5:-5] > 0).all()  # every frequency above the lowest bins falls in some band


def test_spec_augment_masks_bands_and_frames_reproducibly():
    x = torch.ones(3, 200, audio.N_MELS)
    lengths = torch.tensor([200, 150, 90])
    a = audio.spec_augment(x, lengths, torch.Generator().manual_seed(1))
    b = audio.spec_augment(x, lengths, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert (a == 0).any() and (a == 1).float().mean() > 0.5
    masked_frames = (a == 0).all(-1).sum(1)  # whole frames zeroed: time masks
    assert (masked_frames <= 2 * (lengths * 0.15).long()).all()


def test_transcripts_are_normalised():
    assert audio.normalise_text("Don't open 3 files!") == "don't open three files"
    assert audio.normalise_text("‘Tis 1984, said 'he'") == "tis one thousand nine hundred eighty four said he"
    assert audio.number_words(215) == "two hundred fifteen"
    assert audio.decode_ids(audio.encode_text("it's ok")) == "it's ok"


# ----- reading audio -----------------------------------------------------------------------------
def test_read_audio_downmixes_and_resamples(tmp_path):
    path = write_wav(tmp_path / "stereo.wav", tone(440, 0.5, 44100), 44100, channels=2)
    x = audio.read_audio(path)
    assert x.dtype == np.float32 and abs(len(x) - 8000) <= 2
    spectrum = np.abs(np.fft.rfft(x))
    assert abs(np.argmax(spectrum) * audio.SAMPLE_RATE / len(x) - 440) < 5


def test_bad_audio_files_give_one_line_errors(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("not audio at all\n" * 10)
    good = write_wav(tmp_path / "good.wav", tone(440, 0.5), 16000)
    (tmp_path / "truncated.wav").write_bytes(good.read_bytes()[:30])
    for name, says in (
        ("missing.wav", "no such file"),
        ("empty.wav", "empty file"),
        ("text.wav", "not a readable"),
        ("truncated.wav", "truncated.wav"),
    ):
        with pytest.raises(LaminaError, match=says) as info:
            audio.read_audio(tmp_path / name)
        assert "\n" not in str(info.value)


def test_long_recordings_are_cut_at_quiet_moments():
    speechy = np.concatenate(
        [tone(300, 3.0), np.zeros(1600, np.float32), tone(500, 3.0), np.zeros(800, np.float32), tone(700, 3.0)]
    )
    pieces = audio.split_quiet(speechy, 4.0)
    assert len(pieces) == 3 and sum(len(p) for p in pieces) == len(speechy)
    assert all(len(p) <= 4.0 * audio.SAMPLE_RATE for p in pieces)
    assert np.abs(pieces[1][:100]).max() < 1e-3  # the cut fell in the silence, not in a 'word'


# ----- models ------------------------------------------------------------------------------------
def test_pyramidal_listener_halves_time_per_level_and_ignores_padding():
    torch.manual_seed(0)
    listener = Listener(n_mels=8, hidden=16, levels=3, dropout=0.0, frontend="pyramid").eval()
    x = torch.randn(2, 100, 8)
    levels = listener(x, torch.tensor([100, 61]))
    assert [out.shape[1] for out, _ in levels] == [100, 50, 25, 12]
    out, lengths = levels[-1]
    assert out.shape == (2, 12, 16) and lengths.tolist() == [12, 7]
    assert (out[1, 7:] == 0).all()  # padding positions are zero
    alone, _ = listener(x[1:, :61], torch.tensor([61]))[-1]
    assert torch.allclose(alone[0, :7], out[1, :7], atol=1e-5)  # the padded batch changes nothing


@pytest.mark.parametrize("name", ["las", "joint", "ctc"])
def test_recognizers_take_inputs_shorter_than_their_subsampling(name):
    model = get_model("transcribe", name, vocab_size=audio.VOCAB, n_mels=16, hidden=32).eval()
    for frames in (1, 3, 7):
        hyps = model.recognize(torch.randn(1, frames, 16), torch.tensor([frames]), beam=1)
        assert len(hyps) == 1


def test_joint_ctc_head_reads_25_frames_a_second():
    """Fast speech says about 20 characters a second: a CTC head on the 12.5-frame top level could
    not align it (infinite loss, zeroed); the joint model's reads the 4x level."""
    torch.manual_seed(0)
    model = get_model("transcribe", "joint", vocab_size=audio.VOCAB, n_mels=16, hidden=32)
    text = audio.encode_text("the quick brown fox jumps")  # 25 characters
    feats, lengths = torch.randn(1, 100, 16), torch.tensor([100])  # 1 second of frames
    tgt_in, tgt_out = pad([[BOS, *text]]), pad([[*text, EOS]])
    model.ctc_weight = 1.0  # the CTC term alone
    _, loss = model(feats, lengths, tgt_in, tgt_out)
    assert loss.item() > 0  # 25 listener frames align 25 characters; 12 would give a zeroed loss


@pytest.mark.parametrize("name", [s.name for s in list_models("transcribe")])
def test_every_recognizer_trains_and_decodes(name):
    torch.manual_seed(0)
    model = get_model("transcribe", name, vocab_size=audio.VOCAB, n_mels=16, hidden=32)
    feats, lengths = torch.randn(3, 64, 16), torch.tensor([64, 50, 33])
    tgt = [audio.encode_text(t) for t in ("ab", "cab", "a")]
    tgt_in = pad([[BOS, *t] for t in tgt])
    tgt_out = pad([[*t, EOS] for t in tgt])
    _, loss = model(feats, lengths, tgt_in, tgt_out)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    model.eval()
    for beam in (1, 3):
        hyps = model.recognize(feats, lengths, beam=beam)
        assert len(hyps) == 3 and all(isinstance(h.tokens, list) for h in hyps)


@pytest.mark.slow
@pytest.mark.parametrize("name, options", [("las", {}), ("ctc", {"layers": 2})])
def test_recognizers_overfit_one_batch(name, options):
    """Each character lights its own band for 16 frames: both recognizers learn to spell four
    utterances exactly (CTC more slowly: it first predicts only blanks)."""
    torch.manual_seed(0)
    texts = ("abc", "cab", "bca", "aab")
    feats = 0.1 * torch.randn(4, 80, 8)
    for i, t in enumerate(texts):
        for j, c in enumerate(t):
            feats[i, 20 * j + 2 : 20 * j + 18, "abc".index(c) * 2] += 3.0
    lengths = torch.full((4,), 80)
    tgt = [audio.encode_text(t) for t in texts]
    tgt_in, tgt_out = pad([[BOS, *t] for t in tgt]), pad([[*t, EOS] for t in tgt])
    model = get_model("transcribe", name, vocab_size=audio.VOCAB, n_mels=8, hidden=64, dropout=0.0, **options)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for step in range(1, 1201):  # until it spells all four (a repeated letter needs a blank: CTC learns it last)
        opt.zero_grad()
        _, loss = model(feats, lengths, tgt_in, tgt_out)
        loss.backward()
        opt.step()
        if step >= 300 and step % 50 == 0:
            model.eval()
            got = [audio.decode_ids(h.tokens) for h in model.recognize(feats, lengths)]
            model.train()
            if got == list(texts):
                break
    assert got == list(texts), (name, got, float(loss))


def test_ctc_greedy_merges_repeats_then_drops_blanks():
    a, b = audio.encode_text("ab")
    path = [a, a, BLANK, a, b, b, BLANK, BLANK]  # 'aa-abb--' -> 'aab'
    log_probs = torch.full((1, len(path), audio.VOCAB), -10.0)
    for t, s in enumerate(path):
        log_probs[0, t, s] = 0.0
    log_probs = log_probs.log_softmax(-1)
    assert ctc_greedy(log_probs, torch.tensor([8]))[0].tokens == [a, a, b]
    assert ctc_greedy(log_probs, torch.tensor([3]))[0].tokens == [a]  # frames beyond the length are ignored
    short = ctc_greedy(log_probs, torch.tensor([3]))[0].score
    assert short == pytest.approx(log_probs[0, :3].max(-1).values.sum().item())  # and left out of the score
    assert ctc_beam(log_probs[0], 8, width=4).tokens == [a, a, b]


def test_ctc_beam_search_sums_the_alignments_of_one_text():
    """Per frame: blank 0.4, 'a' 0.35, 'b' 0.25, twice. The best path is '--' (empty, p 0.16), but
    'a' has the alignments 'a-', '-a' and 'aa': 0.14 + 0.14 + 0.1225 = 0.4025."""
    a, b = audio.encode_text("ab")
    probs = torch.full((2, audio.VOCAB), 1e-9)
    probs[:, BLANK], probs[:, a], probs[:, b] = 0.4, 0.35, 0.25
    log_probs = probs.log()
    assert ctc_greedy(log_probs[None], torch.tensor([2]))[0].tokens == []
    best = ctc_beam(log_probs, 2, width=8)
    assert best.tokens == [a]
    assert math.isclose(math.exp(best.score), 0.4025, rel_tol=1e-4)


# ----- who says what: the corpus plan, decided before (and without) any synthesis -----------------------
NUMBERED = [f"say the number {i}" for i in range(300)]  # 300 sentences of 4 to 7 words once normalised


def test_sentence_pool_puts_each_sentence_in_the_split_its_hash_gives():
    given = [
        *NUMBERED,
        "Say the number 7!",  # the same sentence once normalised: kept once
        "go now",  # 2 words: too short
        " ".join(["word"] * 16),  # too long
        "Juárez is far away",  # a letter transcripts cannot spell: skipped, not mangled
    ]
    pool = speech.sentence_pool(given)
    assert set(pool) == set(speech.SPLITS)
    kept = [text for split in speech.SPLITS for text, _ in pool[split]]
    assert sorted(kept) == sorted(audio.normalise_text(t) for t in NUMBERED)  # each exactly once, nothing else
    for split, sentences in pool.items():
        assert all(speech.sentence_split(text) == split and source == "given" for text, source in sentences)
        assert [t for t, _ in sentences] == sorted(t for t, _ in sentences)
    assert pool["test"] and pool["val"] and len(pool["train"]) > 0.8 * len(kept)  # about 92/3/5


def test_a_short_sentence_list_lends_its_empty_splits_a_training_sentence():
    pool = speech.sentence_pool(SENTENCES)
    texts = [t for split in speech.SPLITS for t, _ in pool[split]]
    assert all(pool[split] for split in speech.SPLITS) and len(texts) == len(set(texts)) == len(SENTENCES)
    with pytest.raises(LaminaError, match="no test sentences to synthesize"):
        speech.plan({"train": pool["train"], "val": pool["val"], "test": []}, speech.default_sizes(10), seed=0)


@pytest.mark.parametrize("sentences", [NUMBERED, SENTENCES])  # plenty of sentences, and fewer than utterances
def test_corpus_plan_holds_out_voices_and_sentences(sentences):
    pool = speech.sentence_pool(sentences)
    sizes = speech.default_sizes(400)
    assert sizes == {"train": 400, "val": 20, "test": 40} and speech.default_sizes(1600)["test"] == 100
    utterances = speech.plan(pool, sizes, seed=3)
    by_split = {split: [u for u in utterances if u.split == split] for split in speech.SPLITS}
    assert {split: len(us) for split, us in by_split.items()} == sizes
    assert all([u.index for u in us] == list(range(len(us))) for us in by_split.values())
    assert len({u.path for u in utterances}) == len(utterances)
    for split, us in by_split.items():  # every sentence comes from its own split's share
        assert {u.text for u in us} <= {t for t, _ in pool[split]}
    texts = {split: {u.text for u in us} for split, us in by_split.items()}
    assert not texts["train"] & texts["test"] and not texts["train"] & texts["val"] and not texts["val"] & texts["test"]
    for u in by_split["train"] + by_split["val"]:  # training and validation hear only the training voices
        assert u.accent in speech.ACCENTS and u.accent not in speech.TEST_ACCENTS
        assert u.variant in speech.VARIANTS and u.variant not in speech.TEST_VARIANTS and u.group == "seen"
    train_voices = {(u.accent, u.variant) for u in by_split["train"]}
    for u in by_split["test"]:  # every test voice is new in its accent, its variant or both
        assert u.accent in speech.TEST_ACCENTS or u.variant in speech.TEST_VARIANTS
        assert (u.accent, u.variant) not in train_voices and u.accent in speech.ACCENTS
    assert {u.group for u in by_split["test"]} == {"accent", "variant", "both"}
    for split in ("val", "test"):  # noise levels in turn, for error rates per level
        assert [u.snr for u in by_split[split]] == [speech.EVAL_SNRS[i % 4] for i in range(sizes[split])]
    assert {u.snr for u in by_split["train"]} <= set(speech.TRAIN_SNRS)
    assert speech.plan(pool, sizes, seed=3) == utterances and speech.plan(pool, sizes, seed=4) != utterances


# ----- synthesized corpus and end to end ----------------------------------------------------------------
@pytest.mark.slow
@needs_espeak
def test_synthesized_corpus_holds_out_voices_and_sentences(tmp_path):
    root = speech.build(
        40,
        seed=3,
        root=tmp_path / "corpus",
        sentences=SENTENCES * 3 + [f"say the number {i}" for i in range(60)],
        workers=1,
    )
    rows = [json.loads(line) for line in (root / "utterances.jsonl").read_text().splitlines()]
    by_split = {s: [r for r in rows if r["split"] == s] for s in speech.SPLITS}
    assert {s: len(v) for s, v in by_split.items()} == speech.default_sizes(40)
    train_voices = {(r["accent"], r["variant"]) for r in by_split["train"]}
    assert not any(a in speech.TEST_ACCENTS or v in speech.TEST_VARIANTS for a, v in train_voices)
    assert all(r["group"] != "seen" for r in by_split["test"])
    assert not {r["text"] for r in by_split["test"]} & {r["text"] for r in by_split["train"]}
    assert {r["snr"] for r in by_split["test"]} == set(speech.EVAL_SNRS)
    x = audio.read_audio(root / by_split["train"][0]["path"])
    assert 0.5 < audio.seconds(x) < 15 and not audio.is_silent(x)
    again = speech.build(
        40,
        seed=3,
        root=tmp_path / "again",
        sentences=SENTENCES * 3 + [f"say the number {i}" for i in range(60)],
        workers=2,
    )
    first = root / by_split["test"][5]["path"]
    assert np.array_equal(
        audio.read_audio(first), audio.read_audio(again / by_split["test"][5]["path"])
    )  # deterministic
    whole = json.loads((again / "corpus.json").read_text())
    (again / "corpus.json").unlink()  # as if interrupted before the end: the build resumes
    (again / by_split["test"][5]["path"]).unlink()
    resumed = json.loads(
        (
            speech.build(
                40,
                seed=3,
                root=again,
                sentences=SENTENCES * 3 + [f"say the number {i}" for i in range(60)],
                workers=1,
            )
            / "corpus.json"
        ).read_text()
    )
    assert resumed["generated"] == 1 and resumed["audio_hours"] == pytest.approx(whole["audio_hours"], abs=1e-3)
    assert resumed["bytes"] == pytest.approx(whole["bytes"], rel=0.01)


def test_a_corpus_folder_without_val_tsv_keeps_its_test_tsv(tmp_path):
    good = write_wav(tmp_path / "a.wav", tone(200, 0.3), 16000)
    (tmp_path / "train.tsv").write_text("".join(f"{good.name}\tline {i}\n" for i in range(30)))
    (tmp_path / "test.tsv").write_text(f"{good.name}\tthe test line\n")
    splits = speech.folder_splits(tmp_path)
    assert [r.text for r in splits["test"]] == ["the test line"]
    assert splits["val"] and splits["train"] and len(splits["train"]) + len(splits["val"]) == 30


@pytest.fixture(scope="module")
def speech_run(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    base = tmp_path_factory.mktemp("speech")
    root = speech.build(48, seed=0, root=base / "corpus", sentences=SENTENCES, workers=2)
    out = base / "run"
    summary = lamina.train(
        "transcribe", data=str(root), model="las", epochs=2, batch_size=8, out=str(out), quiet=True, sets=TINY
    )
    return summary, root


@pytest.fixture(scope="module")
def ctc_run(speech_run, tmp_path_factory):
    """A CTC run on speech_run's corpus (which trains las): one epoch, enough for its beam search to
    find transcripts that greedy search misses."""
    _, root = speech_run
    out = tmp_path_factory.mktemp("ctc") / "run"
    return lamina.train(
        "transcribe", data=str(root), model="ctc", epochs=1, batch_size=8, out=str(out), quiet=True, sets=TINY
    )


def written_transcripts(result) -> dict[str, tuple[str, str]]:
    """audio path -> (reference, transcript), as evaluate wrote them."""
    [path] = result["files"]
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    assert lines[0] == "audio\treference\ttranscript"
    rows = dict((fields[0], (fields[1], fields[2])) for fields in (line.split("\t") for line in lines[1:]))
    assert len(rows) == len(lines) - 1 == result["n"]
    return rows


def test_train_save_load_transcribe_end_to_end(speech_run, tmp_path):
    summary, root = speech_run
    assert (
        summary["status"] == "complete" and "wer" in summary["metrics"]["val"] and "cer" in summary["metrics"]["test"]
    )
    run = lamina.load(summary["run"])
    files = sorted((root / "audio" / "test").glob("*.flac"))[:3]
    first = run.transcribe(files)["results"]
    again = lamina.load(summary["run"]).transcribe(files)["results"]
    assert [r["transcript"] for r in first] == [r["transcript"] for r in again]  # reloaded: same outputs
    assert all(set(r["transcript"]) <= set(audio.CHARS) and r["real_time_factor"] > 0 for r in first)
    manifest = speech.read_manifest(root / "test.tsv")
    result = run.evaluate(data=str(root / "test.tsv"), out_dir=tmp_path)  # not into the shared run
    assert result["split"] == "all" and result["n"] == len(manifest)
    assert Path(result["files"][0]).parent == tmp_path
    rows = written_transcripts(result)
    assert sorted(rows) == sorted(str(ex.path) for ex in manifest)  # every file of the manifest, once
    assert all(rows[str(ex.path)][0] == ex.text for ex in manifest)  # next to its own reference
    refs, outs = zip(*rows.values())
    assert result["metrics"]["cer"] == pytest.approx(jiwer.cer(list(refs), list(outs)), abs=1e-9)
    assert result["metrics"]["wer"] == pytest.approx(jiwer.wer(list(refs), list(outs)), abs=1e-9)
    assert run.info["meta"]["features"] == audio.FEATURES  # the features it learned from, recorded


def test_recordings_in_memory_transcribe_as_their_files_do(speech_run):
    import soundfile

    summary, root = speech_run
    run = lamina.load(summary["run"])
    file = sorted((root / "audio" / "test").glob("*.flac"))[0]
    samples, rate = soundfile.read(str(file), dtype="float32")
    expected = run.transcribe([file])["results"][0]["transcript"]
    stereo = np.stack([samples, samples], axis=1)  # (samples, channels)
    inputs = [
        (samples, rate),
        (torch.from_numpy(samples), rate),
        (stereo, rate),
        {"array": samples, "sampling_rate": rate},
    ]
    results = run.transcribe(inputs)["results"]
    assert [r["transcript"] for r in results] == [expected] * 4 and results[0]["input"] == "<audio 0>"
    bad = run.transcribe([(samples, -1), (np.zeros((0,), np.float32), rate), 42])["results"]
    assert all("error" in r and "\n" not in r["error"] for r in bad)


def test_a_run_refuses_features_it_did_not_learn_from(speech_run, tmp_path):
    summary, root = speech_run
    copy = tmp_path / "other-features"
    shutil.copytree(summary["run"], copy)
    info = json.loads((copy / "lamina.json").read_text())
    info["meta"]["features"]["n_mels"] = 40
    (copy / "lamina.json").write_text(json.dumps(info))
    with pytest.raises(LaminaError, match=r"other features than this lamina computes \(n_mels\)"):
        lamina.load(copy).transcribe([sorted((root / "audio" / "test").glob("*.flac"))[0]])


def test_transcribe_cli_goes_past_bad_files(speech_run, tmp_path, capsys):
    summary, root = speech_run
    good = sorted((root / "audio" / "test").glob("*.flac"))[0]
    (tmp_path / "bad.wav").write_text("no audio here")
    silent = write_wav(tmp_path / "silent.wav", np.zeros(16000, np.float32), 16000)
    code, out, err = run_cli(
        capsys,
        "transcribe",
        summary["run"],
        str(good),
        str(tmp_path / "bad.wav"),
        str(silent),
        "--json",
        "--show-attention",
        str(tmp_path / "att.png"),
    )
    assert code == 1
    result = json.loads(out)
    assert [("error" in r) for r in result["results"]] == [False, True, False]
    assert result["results"][2]["transcript"] == "" and "silent" in err
    assert "not a readable audio file" in err and "Traceback" not in err
    assert (tmp_path / "att.png").is_file()
    code, out, err = run_cli(capsys, "predict", summary["run"], str(good))
    assert code == 0 and out.startswith(f"{good}\t")
    code, out, err = run_cli(capsys, "transcribe", summary["run"], str(good), "--beam", "0")
    assert code == 2
    assert_one_line_error(err, "--beam must be at least 1 (1: greedy search)")


def test_evaluate_reports_per_noise_level_and_voice_group(speech_run, tmp_path):
    summary, root = speech_run
    # The corpus folder's test split, with who spoke what; its transcripts written outside the shared run.
    result = lamina.load(summary["run"]).evaluate(out_dir=tmp_path)
    m = result["metrics"]
    spoken = [json.loads(line) for line in (root / "utterances.jsonl").read_text().splitlines()]
    test = {str(root / r["path"]): r for r in spoken if r["split"] == "test"}
    assert result["split"] == "test" and result["n"] == len(test)
    voices = Counter(r["group"] for r in test.values())
    assert set(voices) == {"accent", "variant", "both"}  # this corpus has every kind of unseen voice
    assert {name: g["n"] for name, g in m["by_voice"].items()} == voices
    noise = Counter("clean" if r["snr"] is None else f"{r['snr']:g} dB" for r in test.values())
    assert set(noise) == {"clean", "20 dB", "10 dB", "5 dB"}
    assert {name: g["n"] for name, g in m["by_noise"].items()} == noise
    rows = written_transcripts(result)
    assert sorted(rows) == sorted(test)
    for name in voices:  # each group's error rate is that of its own utterances
        refs, outs = zip(*(rows[path] for path, r in test.items() if r["group"] == name))
        assert m["by_voice"][name]["cer"] == pytest.approx(jiwer.cer(list(refs), list(outs)), abs=1e-9)
        assert m["by_voice"][name]["wer"] == pytest.approx(jiwer.wer(list(refs), list(outs)), abs=1e-9)


@torch.no_grad()
def score_under(model, file: Path, transcript: str) -> float:
    """What each search maximises, measured on the model itself: log P(text | audio) summed over every
    CTC alignment (ctc); the teacher-forced log-probability of the characters and EOS over their
    number, as recognize() scores hypotheses (las, joint)."""
    feats = audio.log_mel(audio.read_audio(file))[None]
    lengths = torch.tensor([feats.shape[1]])
    ids = audio.encode_text(transcript)
    assert audio.decode_ids(ids) == transcript  # the transcript is exactly the characters the search chose
    if isinstance(model, LAS):
        logits, _ = model(feats, lengths, torch.tensor([[BOS, *ids]]))
        logp = logits.float().log_softmax(-1).gather(-1, torch.tensor([[*ids, EOS]])[..., None]).sum()
        return float(logp) / (len(ids) + 1)
    logits, _ = model(feats, lengths)
    log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (T, 1, V)
    targets = torch.tensor(ids, dtype=torch.long)
    nll = F.ctc_loss(
        log_probs, targets, model.frames_out(lengths), torch.tensor([len(ids)]), blank=BLANK, reduction="sum"
    )
    return -float(nll)


@pytest.mark.parametrize("name, width, n_files", [("las", 3, 3), ("ctc", 4, 6)])
def test_beam_search_transcripts_score_at_least_as_high_as_greedy_ones(name, width, n_files, request, capsys):
    """`lamina transcribe --beam N` against greedy search, both scored by the model: never worse, and
    better somewhere (a search that ignored --beam would tie everywhere)."""
    summary, root = request.getfixturevalue("speech_run")
    run_dir = summary["run"] if name == "las" else request.getfixturevalue("ctc_run")["run"]
    files = sorted((root / "audio" / "test").glob("*.flac"))[:n_files]
    transcripts = {}
    for beam in (1, width):
        code, out, err = run_cli(capsys, "transcribe", run_dir, *files, "--beam", beam, "--json")
        result = json.loads(out)
        assert code == 0 and result["beam"] == beam and "chunks" not in err  # each file decoded whole
        transcripts[beam] = [r["transcript"] for r in result["results"]]
    model = lamina.load(run_dir).model
    assert isinstance(model, LAS if name == "las" else CTCRecognizer)
    greedy = [score_under(model, f, t) for f, t in zip(files, transcripts[1])]
    beam = [score_under(model, f, t) for f, t in zip(files, transcripts[width])]
    assert all(b >= g - 1e-4 for b, g in zip(beam, greedy)), (greedy, beam, transcripts)
    # Better somewhere: a tiny model's scores are close, but a search that ignored --beam ties exactly.
    assert any(b > g + 1e-5 for b, g in zip(beam, greedy)), (greedy, beam, transcripts)


def test_bad_manifest_lines_are_reported(tmp_path, capsys):
    good = write_wav(tmp_path / "a.wav", tone(200, 0.3), 16000)
    manifest = tmp_path / "m.tsv"
    manifest.write_text(f"{good.name}\thello there\nno tab here\n{good.name}\t2 cats\n")
    rows = speech.read_manifest(manifest)
    assert [r.text for r in rows] == ["hello there", "two cats"] and rows[0].path == good
    assert "line 2" in capsys.readouterr().err


def test_long_files_are_chunked_and_over_long_files_refused(speech_run, tmp_path, monkeypatch, capsys):
    summary, root = speech_run
    first = audio.read_audio(sorted((root / "audio" / "test").glob("*.flac"))[0])
    gap = np.zeros(audio.SAMPLE_RATE // 2, np.float32)
    long_file = write_wav(tmp_path / "long.wav", np.concatenate([first, gap] * 6), audio.SAMPLE_RATE)
    result = lamina.transcribe(summary["run"], [long_file])["results"][0]
    assert "error" not in result and result["audio_seconds"] > 6 * audio.seconds(first)
    assert "chunks" in capsys.readouterr().err
    monkeypatch.setattr(audio, "MAX_SECONDS", 2.0)
    result = lamina.transcribe(summary["run"], [long_file])["results"][0]
    assert "limit" in result["error"] and "\n" not in result["error"]
