"""lamina.metrics on cases small enough to work out by hand, and against the libraries it wraps."""

import math
from importlib.metadata import version

import pytest
import sacrebleu
import torch

from lamina import metrics

JIWER_4 = int(version("jiwer").split(".")[0]) >= 4


# ----- word and character error rates --------------------------------------------------------------
def test_wer_counts_substitutions_deletions_and_insertions_over_reference_words():
    assert metrics.wer(["the cat sat on the mat"], ["the cat sat on the mat"]) == 0.0
    # "sat" -> "sit" (a substitution) and one "the" dropped (a deletion): 2 errors in 6 words.
    assert metrics.wer(["the cat sat on the mat"], ["the cat sit on mat"]) == pytest.approx(2 / 6)
    assert metrics.wer(["a b"], ["a x b"]) == pytest.approx(1 / 2)  # an insertion
    assert metrics.wer(["a b"], ["a b c d e"]) == pytest.approx(3 / 2)  # insertions can take it past 1
    # A corpus rate: 1 error in 6 words, not the mean of the sentences' rates (0 and 1/2).
    assert metrics.wer(["a b c d", "e f"], ["a b c d", "x f"]) == pytest.approx(1 / 6)
    assert metrics.wer(["Hello world"], ["hello world"]) == pytest.approx(1 / 2)  # no case folding


def test_cer_counts_characters_spaces_included():
    assert metrics.cer(["abc"], ["abd"]) == pytest.approx(1 / 3)
    assert metrics.cer(["a b"], ["ab"]) == pytest.approx(1 / 3)  # the space is a character
    # 1 error in the 5 reference characters: a corpus rate, not the mean of the pairs' (0 and 1/2).
    assert metrics.cer(["abc", "de"], ["abc", "dx"]) == pytest.approx(1 / 5)


def test_an_empty_hypothesis_deletes_every_reference_unit():
    assert metrics.wer(["a b c"], [""]) == 1.0
    assert metrics.cer(["a b c"], [""]) == 1.0
    assert metrics.wer(["a b c", "d e"], ["a x c", ""]) == pytest.approx(3 / 5)  # 1 substitution, 2 deletions


def test_an_empty_reference_scores_the_hypothesis_as_insertions():
    """What lamina returns where a reference is empty (or only spaces): its hypothesis counts as
    insertions, and it adds nothing to the reference units; with no reference units at all the rate
    is the number of errors, and 0 when there is nothing on either side. No error is raised."""
    assert metrics.wer(["", "a b"], ["z", "a b"]) == pytest.approx(1 / 2)  # text for silence is an error
    assert metrics.cer(["", "ab"], ["x y", "ab"]) == pytest.approx(3 / 2)  # "x", " ", "y" over 2 characters
    assert metrics.wer(["  ", "a b"], ["z", "a b"]) == pytest.approx(1 / 2)  # spaces only: empty too
    assert metrics.wer([""], ["x y"]) == 2.0 and metrics.cer([""], ["x y"]) == 3.0
    assert metrics.wer([""], [""]) == 0.0 and metrics.cer(["", " "], ["", ""]) == 0.0
    assert metrics.wer([], []) == 0.0 and metrics.cer([], []) == 0.0
    assert metrics.wer(["", "a b"], ["", "a b"]) == 0.0  # an empty reference matched by nothing: no error


@pytest.mark.skipif(not JIWER_4, reason="jiwer before 4 refuses empty references")
def test_error_rates_are_jiwers_own():
    import jiwer

    refs = ["the cat sat", "", "on the mat", "a  dog  barked "]
    hyps = ["the cat sad", "hello there", "", " a dog barked"]
    assert metrics.wer(refs, hyps) == pytest.approx(jiwer.wer(refs, hyps))
    assert metrics.cer(refs, hyps) == pytest.approx(jiwer.cer(refs, hyps))


# ----- BLEU and chrF -------------------------------------------------------------------------------
def test_bleu_of_identical_text_is_100_and_of_nothing_0():
    assert metrics.bleu(["the cat sat on the mat ."], ["the cat sat on the mat ."]) == pytest.approx(100)
    # 13a tokenization splits the full stop off, so these two are the same words.
    assert metrics.bleu(["the cat sat on the mat."], ["the cat sat on the mat ."]) == pytest.approx(100)
    assert metrics.bleu([], []) == 0.0
    assert metrics.chrf(["the cat sat"], ["the cat sat"]) == pytest.approx(100) and metrics.chrf([], []) == 0.0


def test_bleu_by_hand_and_by_sacrebleu():
    # One extra word: the n-gram precisions are 6/7, 5/6, 4/5 and 3/4, whose product is 3/7, and the
    # hypothesis is longer than the reference, so there is no brevity penalty.
    hyp, ref = "the cat sat on the mat today", "the cat sat on the mat"
    assert metrics.bleu([hyp], [ref]) == pytest.approx(100 * (3 / 7) ** 0.25)
    assert metrics.bleu([hyp], [ref]) == pytest.approx(sacrebleu.corpus_bleu([hyp], [[ref]]).score)
    # One word short: every n-gram matches, and the brevity penalty is exp(1 - 6/5).
    assert metrics.bleu(["the cat sat on the"], [ref]) == pytest.approx(100 * math.exp(1 - 6 / 5))
    # No 4-gram in common: sacrebleu's exponential smoothing decides, as lamina passes it on.
    assert metrics.bleu(["the cat on mat"], [ref]) == pytest.approx(
        sacrebleu.corpus_bleu(["the cat on mat"], [[ref]]).score
    )
    # A corpus score: n-gram counts summed over the sentences, not the mean of sentence scores.
    hyps, refs = [ref, "the cat on mat"], [ref, ref]
    corpus = metrics.bleu(hyps, refs)
    assert corpus == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert corpus != pytest.approx((100 + metrics.bleu(hyps[1:], refs[1:])) / 2)


def test_bleu_signature_names_what_makes_scores_comparable():
    fields = dict(part.split(":") for part in metrics.bleu_signature().split("|"))
    assert fields == {
        "nrefs": "1",
        "case": "mixed",
        "eff": "no",
        "tok": "13a",
        "smooth": "exp",
        "version": sacrebleu.__version__,
    }


def test_bleu_by_length_buckets_sentences_by_source_words():
    def words(n):
        return " ".join(f"w{i}" for i in range(n))

    # Source lengths at both edges of every bucket: 1 and 5, 6 and 10, 11 and 15, 16 and 30 words.
    sources = [words(n) for n in (1, 5, 6, 10, 11, 15, 16, 30)]
    refs = [
        "a cat",
        "the cat sat on the mat",
        "the dog sat on the log",
        "a bird sang on a branch",
        "the cat saw the dog",
        "the dog saw the cat",
        "one two three four five",
        "five four three two one",
    ]
    hyps = [
        "a cat",  # 1-5: both exact
        "the cat sat on the mat",
        "the dog sat on a log",  # 6-10: near misses
        "a bird sang in a tree",
        "the cat saw the dog",  # 11-15: one exact, one not
        "a dog saw a cat",
        "one two three four five six",  # 16+: one extra word, then one wrong
        "five four three two zero",
    ]
    got = metrics.bleu_by_length(sources, hyps, refs)
    assert list(got) == ["1-5", "6-10", "11-15", "16+"]
    members = {"1-5": [0, 1], "6-10": [2, 3], "11-15": [4, 5], "16+": [6, 7]}
    assert {name: bucket["n"] for name, bucket in got.items()} == {name: 2 for name in members}
    assert got["1-5"]["bleu"] == pytest.approx(100)
    for name, chosen in members.items():
        expected = sacrebleu.corpus_bleu([hyps[i] for i in chosen], [[refs[i] for i in chosen]]).score
        assert got[name]["bleu"] == pytest.approx(expected), name
    assert len({round(b["bleu"], 6) for b in got.values()}) == 4  # each bucket its own sentences' score

    # Buckets no source falls in are kept, with BLEU None and n 0.
    same = ["the cat sat on the mat", "the dog sat on the log"]
    short = metrics.bleu_by_length(["one two", "a b c d e f g"], same, same)
    assert short == {
        "1-5": {"bleu": pytest.approx(100), "n": 1},
        "6-10": {"bleu": pytest.approx(100), "n": 1},
        "11-15": {"bleu": None, "n": 0},
        "16+": {"bleu": None, "n": 0},
    }


# ----- classification --------------------------------------------------------------------------------
def test_classification_report_on_a_confusion_matrix_worked_out_by_hand():
    classes = ["a", "b", "c", "d", "e"]
    target = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    pred = torch.tensor([0, 0, 1, 1, 0, 2, 2, 0, 1, 0])
    cm, report = metrics.classification_report(pred, target, classes)
    assert cm.tolist() == [  # row: true class, column: predicted
        [2, 1, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 2, 0, 0],
        [1, 0, 0, 0, 0],  # d: present once, never predicted
        [0, 0, 0, 0, 0],  # e: neither present nor predicted
    ]
    assert report["accuracy"] == pytest.approx(5 / 10)
    # precision = diagonal / column sum, recall = diagonal / row sum, F1 their harmonic mean; 0 where
    # a class is never predicted (d, e) or never present (e), not NaN.
    expected = {
        "a": (2 / 5, 2 / 3, 1 / 2, 3),
        "b": (1 / 3, 1 / 2, 2 / 5, 2),
        "c": (1.0, 2 / 4, 2 / 3, 4),
        "d": (0.0, 0.0, 0.0, 1),
        "e": (0.0, 0.0, 0.0, 0),
    }
    assert list(report["per_class"]) == classes
    for c, (precision, recall, f1, support) in expected.items():
        got = report["per_class"][c]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((precision, recall, f1), rel=1e-6), c
        assert got["support"] == support and isinstance(got["support"], int)
        assert not any(math.isnan(got[k]) for k in ("precision", "recall", "f1"))
    # Macro averages over the classes present or predicted (a to d): e, with neither, is left out.
    for key, i in (("macro_precision", 0), ("macro_recall", 1), ("macro_f1", 2)):
        assert report[key] == pytest.approx(sum(expected[c][i] for c in "abcd") / 4, rel=1e-6), key


def test_nll_is_the_mean_negative_log_probability_of_the_true_class():
    probs = torch.tensor([[0.5, 0.5], [0.25, 0.75], [1.0, 0.0]])
    assert metrics.nll(probs[:2], torch.tensor([0, 1])) == pytest.approx(-(math.log(0.5) + math.log(0.75)) / 2)
    # A true class given probability 0 costs -log(1e-12), not infinity.
    assert metrics.nll(probs[2:], torch.tensor([1])) == pytest.approx(-math.log(1e-12), rel=1e-6)


def test_detection_map_known_answers():
    mask = torch.zeros(1, 40, 40, dtype=torch.bool)
    mask[0, 10:20, 10:30] = True
    truth = [{"boxes": torch.tensor([[10.0, 10, 30, 20]]), "labels": torch.tensor([1]), "masks": mask}]

    def pred(box, label, m=mask):
        return [
            {"boxes": torch.tensor([box]), "scores": torch.tensor([0.9]), "labels": torch.tensor([label]), "masks": m}
        ]

    classes = ["__background__", "Bag", "Coat"]
    exact = metrics.detection_map(pred([10.0, 10, 30, 20], 1), truth, classes)
    assert exact["box_map"] == exact["mask_map"] == exact["box_map_50"] == 1.0
    assert exact["per_class"] == {"Bag": {"box_ap": 1.0, "box_ar_100": 1.0, "mask_ap": 1.0}}
    assert metrics.detection_map(pred([10.0, 10, 30, 20], 2), truth, classes)["box_map"] == 0.0  # wrong class
    # IoU 2/3: a hit at thresholds 0.5 to 0.65, a miss from 0.7 up: 4 of the ten thresholds 0.5:0.05:0.95
    shifted = metrics.detection_map(pred([14.0, 10, 34, 20], 1), truth, classes, masks=False)
    assert shifted["box_map_50"] == 1.0 and shifted["box_map_75"] == 0.0
    assert shifted["box_map"] == pytest.approx(0.4, abs=1e-6)
    assert "mask_map" not in shifted
