"""Metrics computed from predictions. Thin and exact; no state between calls."""

from __future__ import annotations

import torch


def nll(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood of the true class, in nats (the cross-entropy loss)."""
    p_true = probs.gather(1, labels[:, None]).clamp_min(1e-12)
    return float(-p_true.log().mean())


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) counts: row = true class, column = predicted class."""
    flat = target.long() * num_classes + pred.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def classification_report(cm: torch.Tensor, classes: list[str]) -> dict:
    """Accuracy, per-class precision/recall/F1/support and their macro averages from a confusion matrix."""
    cm = cm.double()
    tp = cm.diag()
    support = cm.sum(1)
    predicted = cm.sum(0)
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp_min(1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp_min(1e-12), torch.zeros_like(tp))
    present = support > 0
    return {
        "accuracy": float(tp.sum() / cm.sum().clamp_min(1)),
        "macro_precision": float(precision[present].mean()) if present.any() else 0.0,
        "macro_recall": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        },
    }


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
