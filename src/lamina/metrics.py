"""Metrics computed from predictions: thin wrappers over the libraries the field uses (torchmetrics,
sacrebleu, jiwer), so that lamina's figures are the figures people compare with. No state between calls."""

from __future__ import annotations

import torch


def nll(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood of the true class, in nats (the cross-entropy loss)."""
    p_true = probs.gather(1, labels[:, None]).clamp_min(1e-12)
    return float(-p_true.log().mean())


def classification_report(pred: torch.Tensor, target: torch.Tensor, classes: list[str]) -> tuple[torch.Tensor, dict]:
    """(confusion matrix (K, K), row = true class, column = predicted; accuracy, per-class precision,
    recall, F1 and support, and their macro averages), by torchmetrics. A class neither present nor
    predicted is left out of the macro averages; one never predicted has precision 0."""
    from torchmetrics.functional import classification as tm

    k, pred, target = len(classes), pred.long(), target.long()
    cm = tm.multiclass_confusion_matrix(pred, target, k)
    scores = {"precision": tm.multiclass_precision, "recall": tm.multiclass_recall, "f1": tm.multiclass_f1_score}
    per_class = {name: fn(pred, target, k, average="none").tolist() for name, fn in scores.items()}
    support = cm.sum(1).tolist()
    report = {
        "accuracy": float(tm.multiclass_accuracy(pred, target, k, average="micro")),
        **{f"macro_{name}": float(fn(pred, target, k, average="macro")) for name, fn in scores.items()},
        "per_class": {
            c: {**{name: per_class[name][i] for name in scores}, "support": int(support[i])}
            for i, c in enumerate(classes)
        },
    }
    return cm, report


# ----- translation: sacrebleu's corpus scores on detokenized text ---------------------------------
LENGTH_BUCKETS = ((1, 5), (6, 10), (11, 15), (16, None))  # source length in words


def bleu(hypotheses: list[str], references: list[str]) -> float:
    """Corpus BLEU (sacrebleu defaults: 13a tokenization, exponential smoothing), 0-100."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(hypotheses, [references]).score) if hypotheses else 0.0


def bleu_signature() -> str:
    """sacrebleu's signature of the BLEU computed above (tokenizer, smoothing, version): what makes
    two BLEU figures comparable."""
    from sacrebleu.metrics import BLEU

    metric = BLEU()
    metric.corpus_score(["a"], [["a"]])  # the signature records the number of references: one, as scored here
    return str(metric.get_signature())


def chrf(hypotheses: list[str], references: list[str]) -> float:
    """Corpus chrF (character n-gram F-score, sacrebleu defaults), 0-100."""
    import sacrebleu

    return float(sacrebleu.corpus_chrf(hypotheses, [references]).score) if hypotheses else 0.0


def bleu_by_length(sources: list[str], hypotheses: list[str], references: list[str]) -> dict[str, dict]:
    """Corpus BLEU within each source-length bucket (words split on spaces): {'1-5': {'bleu', 'n'}, ...};
    an empty bucket has BLEU None."""
    out = {}
    for lo, hi in LENGTH_BUCKETS:
        chosen = [i for i, s in enumerate(sources) if lo <= len(s.split()) and (hi is None or len(s.split()) <= hi)]
        name = f"{lo}-{hi}" if hi else f"{lo}+"
        score = bleu([hypotheses[i] for i in chosen], [references[i] for i in chosen]) if chosen else None
        out[name] = {"bleu": score, "n": len(chosen)}
    return out


def wer(references: list[str], hypotheses: list[str]) -> float:
    """Corpus word error rate (substitutions + deletions + insertions over reference words), jiwer."""
    return _error_rate("wer", references, hypotheses)


def cer(references: list[str], hypotheses: list[str]) -> float:
    """Corpus character error rate, spaces included, jiwer."""
    return _error_rate("cer", references, hypotheses)


def _error_rate(kind: str, references: list[str], hypotheses: list[str]) -> float:
    import jiwer

    pairs = [(r, h) for r, h in zip(references, hypotheses) if r.strip()]  # jiwer refuses empty references
    if not pairs:
        return 0.0
    refs, hyps = [r for r, _ in pairs], [h for _, h in pairs]
    return float(jiwer.wer(refs, hyps) if kind == "wer" else jiwer.cer(refs, hyps))
