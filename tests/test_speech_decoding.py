"""Speech: the convolutional front end, the feature cache, joint CTC/attention decoding, language-model
fusion and SortaGrad."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lamina
from conftest import CPU
from lamina.data import audio, speech
from lamina.data.vocab import BOS, EOS
from lamina.models import ctc, decoding, get_model
from lamina.models.fusion import NEVER, CharLM, CTCPrefixScorer, Fused
from lamina.models.speech import ConvSubsampling, Listener
from test_cli import assert_one_line_error, run_cli
from test_transcribe import SENTENCES, tone, write_wav

LM_CHARS = "\n" + audio.CHARS  # a language model of transcripts, one a line


def tiny_lm(chars: str = LM_CHARS, seed: int = 0):
    torch.manual_seed(seed)
    return get_model("lm", "lstm", vocab_size=len(chars), hidden=16, layers=1).eval()


def char_lm(model=None, chars: str = LM_CHARS) -> CharLM:
    return CharLM(model or tiny_lm(chars), chars, audio.CHARS, audio.TRANSCRIPTS.offset, audio.VOCAB)


def joint_model(seed: int = 0):
    torch.manual_seed(seed)
    return get_model("transcribe", "joint", vocab_size=audio.VOCAB, n_mels=16, hidden=32).eval()


# ----- the convolutional front end ------------------------------------------------------------------
def test_conv_front_end_subsamples_time_four_times_and_masks_padding():
    torch.manual_seed(0)
    front = ConvSubsampling(n_mels=16, channels=4, out=8)
    x = torch.randn(2, 101, 16)
    out, lengths = front(x, torch.tensor([101, 38]))
    assert out.shape == (2, 26, 8) and lengths.tolist() == [26, 10]  # ceil(T / 4)
    assert (out[1, 10:] == 0).all()
    alone, _ = front(x[1:, :38], torch.tensor([38]))
    assert torch.allclose(alone[0], out[1, :10], atol=1e-6)  # the padding changed nothing
    x[1, 38:] = 5.0  # whatever lies past the end
    again, _ = front(x, torch.tensor([101, 38]))
    assert torch.allclose(again[1], out[1], atol=1e-6)


def test_conv_listener_runs_at_25_frames_a_second_then_pyramids():
    torch.manual_seed(0)
    listener = Listener(n_mels=16, hidden=16, levels=1, dropout=0.0, frontend="conv", bottom=2).eval()
    x = torch.randn(2, 200, 16)
    levels = listener(x, torch.tensor([200, 90]))
    assert [out.shape[1] for out, _ in levels] == [50, 25]
    assert [lengths.tolist() for _, lengths in levels] == [[50, 23], [25, 11]]
    assert listener.frames_out(torch.tensor([200, 90])).tolist() == [25, 11]
    alone = listener(x[1:, :90], torch.tensor([90]))[-1][0]
    assert torch.allclose(alone[0], levels[-1][0][1, :11], atol=1e-5)


def test_las_frontend_option_keeps_the_pyramidal_listener():
    conv = get_model("transcribe", "las", vocab_size=audio.VOCAB, n_mels=16, hidden=32)
    pyramid = get_model("transcribe", "las", vocab_size=audio.VOCAB, n_mels=16, hidden=32, frontend="pyramid")
    assert conv.listener.frontend is not None and len(conv.listener.rnns) == 2
    assert pyramid.listener.frontend is None and len(pyramid.listener.rnns) == 4
    for model in (conv, pyramid):
        assert model.frames_out(torch.tensor([800])).tolist() == [100]  # 12.5 frames a second at the top
        assert model.frames_per_second() == 12.5
    with pytest.raises(lamina.errors.UsageError, match="frontend"):
        get_model("transcribe", "las", vocab_size=audio.VOCAB, n_mels=16, frontend="vgg")


def test_ctc_weights_from_before_the_shared_front_end_still_load():
    from lamina.tasks.transcribe import TranscribeTask

    model = get_model("transcribe", "ctc", vocab_size=audio.VOCAB, n_mels=16, hidden=32)
    old = {
        k.replace("subsample.convs.", "subsample.").replace("subsample.project.", "project."): v
        for k, v in model.state_dict().items()
    }
    assert "subsample.0.weight" in old and "project.weight" in old
    upgraded = TranscribeTask.upgrade_state(None, old, {})
    model.load_state_dict(upgraded)  # strict: every key found
    current = model.state_dict()
    assert TranscribeTask.upgrade_state(None, current, {}) is current  # today's weights pass as they are


# ----- the feature cache ---------------------------------------------------------------------------
def some_files(folder: Path, n: int = 5) -> list[speech.Example]:
    folder.mkdir(parents=True, exist_ok=True)
    return [
        speech.Example(write_wav(folder / f"{i}.wav", tone(200 + 100 * i, 0.2 + 0.05 * i), 16000), "a b", {})
        for i in range(n)
    ]


def test_cached_features_equal_fresh_ones_and_follow_settings_and_files(tmp_path, monkeypatch):
    examples = some_files(tmp_path / "audio")
    examples.append(speech.Example(tmp_path / "missing.wav", "gone", {}))  # left out, also from the cache
    fresh, kept = speech.load_features(examples, "test")
    cache = tmp_path / "cache"
    first, kept_first = speech.load_features(examples, "test", cache)
    [written] = list(cache.glob("*.pt"))
    cached, kept_cached = speech.load_features(examples, "test", cache)
    assert len(fresh) == len(first) == len(cached) == 5
    assert [k.path for k in kept] == [k.path for k in kept_first] == [k.path for k in kept_cached]
    for a, b, c in zip(fresh, first, cached):
        assert a.dtype == c.dtype == torch.float16 and torch.equal(a, c) and torch.equal(b, c)
    mtime = written.stat().st_mtime_ns
    speech.load_features(examples, "test", cache)
    assert written.stat().st_mtime_ns == mtime and len(list(cache.glob("*.pt"))) == 1  # read, not rewritten
    monkeypatch.setitem(audio.FEATURES, "n_mels", 40)  # another feature setting: another cache file
    speech.load_features(examples, "test", cache)
    assert len(list(cache.glob("*.pt"))) == 2
    monkeypatch.undo()
    write_wav(examples[0].path, tone(900, 0.4), 16000)  # a changed recording is not served stale
    changed, _ = speech.load_features(examples, "test", cache)
    assert changed[0].shape[0] != cached[0].shape[0] and len(list(cache.glob("*.pt"))) == 3
    current = cache / f"{speech._feature_key(examples)}.pt"
    current.write_bytes(b"not a tensor file")  # a damaged cache is computed again, with a warning
    again, _ = speech.load_features(examples, "test", cache)
    assert all(torch.equal(x, y) for x, y in zip(again, changed))
    assert torch.load(current, weights_only=True)["feats"].dtype == torch.float16  # and written whole again


def test_sorta_grad_sorts_only_the_first_epoch():
    feats = [torch.zeros(n, audio.N_MELS, dtype=torch.float16) for n in np.random.default_rng(0).integers(5, 500, 64)]
    examples = [speech.Example(Path(f"{i}.wav"), "a", {}) for i in range(64)]
    batches = speech.SpeechBatches(feats, examples, 4, train=True, sorta_grad=True)
    longest = [max(batches.keys[i] for i in rows) for rows in batches.order(0)]
    assert longest == sorted(longest)
    later = [max(batches.keys[i] for i in rows) for rows in batches.order(1)]
    assert later != sorted(later)
    plain = speech.SpeechBatches(feats, examples, 4, train=True)
    assert sorted(map(sorted, plain.order(0))) == sorted(map(sorted, batches.order(0)))  # the same batches


# ----- joint CTC/attention decoding ------------------------------------------------------------------
def ctc_log_prob(log_probs: torch.Tensor, tokens: list[int]) -> float:
    """log P_ctc(tokens | one utterance's frames), by torch's CTC loss."""
    t = log_probs.shape[0]
    return -float(
        F.ctc_loss(
            log_probs[:, None],
            torch.tensor([tokens]),
            torch.tensor([t]),
            torch.tensor([len(tokens)]),
            blank=ctc.BLANK,
            reduction="sum",
        )
    )


def test_ctc_prefix_scores_add_up_to_the_ctc_probability_of_the_transcript():
    torch.manual_seed(0)
    x = torch.randn(2, 30, audio.VOCAB).log_softmax(-1)
    scorer = CTCPrefixScorer(x, torch.tensor([30, 21]))
    state = scorer.initial_state()
    texts = [audio.encode_text("abba"), audio.encode_text("to o")]
    totals = torch.zeros(2)
    tokens = torch.full((2,), BOS)
    for step in range(5):
        increments, state = scorer.step(tokens, state)
        tokens = torch.tensor([t[step] if step < len(t) else EOS for t in texts])
        totals += increments[torch.arange(2), tokens]
        assert (increments[:, list(NEVER)] < -1e9).all()
    for i, (text, frames) in enumerate(zip(texts, (30, 21))):
        assert totals[i].item() == pytest.approx(ctc_log_prob(x[i, :frames], text), abs=1e-3)


@torch.no_grad()
def test_joint_decoding_with_weight_0_is_attention_beam_search():
    model = joint_model()
    feats, lengths = torch.randn(2, 120, 16), torch.tensor([120, 77])
    levels = model.listener(feats, lengths)
    states, frames = levels[model.ctc_level]
    scorer = CTCPrefixScorer(model.ctc_head(states).log_softmax(-1), frames)
    limit = int(25 * levels[-1][0].shape[1] / model.frames_per_second()) + 10  # as recognize's
    for beam in (1, 3):
        memory, state = model._memory(*levels[-1])
        plain = decoding.search(model, memory, state, beam, limit, alpha=1.0)
        fused = Fused(model, scorer, 0.0, None, 0.0)
        fused_memory, fused_state = fused.start(*model._memory(*levels[-1]))
        joined = decoding.search(fused, fused_memory, fused_state, beam, limit, alpha=1.0)
        assert [h.tokens for h in plain] == [h.tokens for h in joined]
        assert [h.score for h in plain] == pytest.approx([h.score for h in joined], abs=1e-5)
        assert all(torch.allclose(a.attention, b.attention) for a, b in zip(plain, joined))
    assert [h.tokens for h in model.recognize(feats, lengths, beam=3, ctc_weight=0.0)] == [h.tokens for h in plain]


def test_joint_decoding_with_weight_1_ranks_as_ctc_prefix_search():
    """With the attention decoder's share at 0, the best hypothesis is CTC's most likely transcript,
    scored by its CTC probability."""
    model = joint_model()
    torch.manual_seed(1)
    frames = 24
    logits = torch.full((1, frames, audio.VOCAB), -4.0)
    favourite = audio.encode_text("abcab")
    for t in range(frames):  # a peaked, ambiguous path: 'a b c a b' with blanks and doubts between
        logits[0, t, ctc.BLANK if t % 2 else favourite[(t // 2) % 5]] = 2.0
        logits[0, t, 4 + t % 7] += 1.5
    log_probs = logits.log_softmax(-1)
    scorer = CTCPrefixScorer(log_probs, torch.tensor([frames]))
    feats = torch.randn(1, frames * 8, 16)
    levels = model.listener(feats, torch.tensor([frames * 8]))
    fused = Fused(model, scorer, 1.0, None, 0.0)
    memory, state = fused.start(*model._memory(*levels[-1]))
    [best] = decoding.search(fused, memory, state, 8, 40, alpha=0.0)
    prefix = ctc.beam(log_probs[0], frames, 8)
    assert best.tokens == prefix.tokens
    assert best.score == pytest.approx(ctc_log_prob(log_probs[0], best.tokens), abs=1e-3)
    assert prefix.score <= best.score + 1e-4  # the prefix search's sum misses the alignments it pruned


def test_joint_decoding_ends_hypotheses_the_audio_supports():
    """An untrained speller runs to the length limit; the CTC prefix score ends its hypotheses."""
    model = joint_model()
    feats, lengths = torch.randn(2, 160, 16), torch.tensor([160, 100])
    limit = int(25 * model.frames_out(lengths).max() / model.frames_per_second()) + 10
    attention_only = model.recognize(feats, lengths, beam=3, ctc_weight=0.0)
    joint = model.recognize(feats, lengths, beam=3)
    assert max(len(h.tokens) for h in attention_only) >= limit - 1
    assert all(len(h.tokens) < limit - 1 for h in joint)


# ----- language-model fusion -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["las", "joint", "ctc"])
def test_lm_fusion_with_weight_0_changes_nothing_and_a_heavy_lm_changes_the_output(name):
    torch.manual_seed(0)
    model = get_model("transcribe", name, vocab_size=audio.VOCAB, n_mels=16, hidden=32).eval()
    feats, lengths = torch.randn(2, 120, 16), torch.tensor([120, 90])
    lm = char_lm()
    for beam in (1, 3) if name != "ctc" else (3,):
        plain = model.recognize(feats, lengths, beam=beam)
        if name == "ctc":  # the prefix search with the LM in it, at weight 0
            with torch.no_grad():
                log_probs = model(feats, lengths)[0].log_softmax(-1)
            fused = [
                ctc.beam(log_probs[i], int(f), beam, lm=lm, lm_weight=1e-12)
                for i, f in enumerate(model.frames_out(lengths))
            ]
        else:
            fused = model.recognize(feats, lengths, beam=beam, lm=lm, lm_weight=0.0)
        assert [h.tokens for h in plain] == [h.tokens for h in fused]
    heavy = model.recognize(feats, lengths, beam=3, lm=lm, lm_weight=50.0)
    assert [h.tokens for h in heavy] != [h.tokens for h in model.recognize(feats, lengths, beam=3)]


def test_char_lm_scores_the_recognizers_characters_and_the_end():
    model = tiny_lm()
    lm = char_lm(model)
    tokens = torch.tensor([BOS, audio.encode_text("e")[0]])
    out, _ = lm.step(tokens, lm.initial_state(2))
    own, _, _ = model.decode_step(torch.tensor([LM_CHARS.index("\n"), LM_CHARS.index("e")]), model.init_state(2))
    for c in "ab' ":
        assert torch.allclose(out[:, audio.encode_text(c)[0]], own[:, LM_CHARS.index(c)])
    assert torch.allclose(out[:, EOS], own[:, LM_CHARS.index("\n")])
    assert (out[:, list(NEVER)] == 0).all()


def test_a_ctc_model_needs_a_beam_for_lm_fusion():
    model = get_model("transcribe", "ctc", vocab_size=audio.VOCAB, n_mels=16, hidden=32).eval()
    with pytest.raises(lamina.errors.UsageError, match="beam"):
        model.recognize(torch.randn(1, 40, 16), torch.tensor([40]), beam=1, lm=char_lm(), lm_weight=0.5)


# ----- end to end: --lm, --ctc-weight and their errors -------------------------------------------------
@pytest.fixture(scope="module")
def joint_run(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    base = tmp_path_factory.mktemp("joint")
    root = speech.build(24, seed=0, root=base / "corpus", sentences=SENTENCES, workers=2)
    summary = lamina.train(
        "transcribe",
        data=str(root),
        model="joint",
        epochs=1,
        batch_size=8,
        out=str(base / "run"),
        quiet=True,
        sets=["model.hidden=32", *CPU],
    )
    return Path(summary["run"]), root


def lm_run(folder: Path, text: str) -> Path:
    data = folder / "text.txt"
    data.write_text(text, encoding="utf-8")
    summary = lamina.train(
        "lm",
        data=str(data),
        model="lstm",
        epochs=1,
        batch_size=4,
        out=str(folder / "lm"),
        quiet=True,
        sets=["model.hidden=16", "data.seq_len=16", *CPU],
    )
    return Path(summary["run"])


def test_transcribe_and_evaluate_with_an_lm_run(joint_run, tmp_path, capsys):
    run, root = joint_run
    pangram = "the quick brown fox jumps over the lazy dog's back"  # every character transcripts use
    lm = lm_run(tmp_path, "".join(f"{s}\n" for s in [*SENTENCES, pangram] * 4))
    files = sorted((root / "audio" / "test").glob("*.flac"))[:2]
    code, out, err = run_cli(capsys, "transcribe", run, *files, "--beam", 3, "--lm", lm, "--lm-weight", 0.5, "--json")
    assert code == 0, err
    assert len(json.loads(out)["results"]) == 2
    code, out, err = run_cli(
        capsys, "evaluate", run, "--lm", lm, "--beam", 2, "--ctc-weight", 0.5, "--out", tmp_path, "--json"
    )
    assert code == 0, err
    decoding_used = json.loads(out)["decoding"]
    assert decoding_used["lm"] == str(lm) and decoding_used["ctc_weight"] == 0.5 and decoding_used["beam"] == 2


def test_lm_runs_of_other_characters_and_other_tasks_are_refused(joint_run, tmp_path, capsys):
    run, root = joint_run
    [wav] = sorted((root / "audio" / "test").glob("*.flac"))[:1]
    capitals = lm_run(tmp_path, "THE CAT SEES THE DOG.\nOPEN THE FILE NOW.\n" * 20)  # no lower-case letters
    code, _, err = run_cli(capsys, "transcribe", run, wav, "--lm", capitals)
    assert code != 0
    assert_one_line_error(err, "does not know", "characters")
    code, _, err = run_cli(capsys, "transcribe", run, wav, "--lm", run)
    assert code != 0
    assert_one_line_error(err, "language-model run", "transcribe")
    code, _, err = run_cli(capsys, "transcribe", run, wav, "--lm-weight", 0.5)
    assert code != 0
    assert_one_line_error(err, "--lm-weight needs --lm")
    code, _, err = run_cli(capsys, "transcribe", run, wav, "--ctc-weight", 1.5)
    assert code != 0
    assert_one_line_error(err, "--ctc-weight")


def test_the_lm_text_of_a_corpus_holds_no_validation_or_test_sentence(tmp_path, monkeypatch):
    pool = speech.sentence_pool
    monkeypatch.setattr(speech, "sentence_pool", lambda extra=None: pool(SENTENCES))
    path = speech.lm_text(tmp_path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines and all(speech.sentence_split(line) == "train" for line in lines)
    held = [audio.normalise_text(s) for s in SENTENCES if speech.sentence_split(audio.normalise_text(s)) != "train"]
    assert held and not set(held) & set(lines)
