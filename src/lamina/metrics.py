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
    """Edit operations over reference units (words or characters, as jiwer splits them) for the whole
    corpus. A pair whose reference is empty adds its hypothesis's units as insertions, and nothing to
    the reference count: text output for silence is an error. With no reference units at all, the
    rate is the number of errors (0 when every hypothesis is empty too), as jiwer 4 has it."""
    import jiwer
    from jiwer import transformations

    process, units = (
        (jiwer.process_words, transformations.wer_default)
        if kind == "wer"
        else (jiwer.process_characters, transformations.cer_default)
    )
    pairs = list(zip(references, hypotheses))
    empty = [not units([r])[0] for r, _ in pairs]
    scored = [pair for pair, e in zip(pairs, empty) if not e]  # jiwer before 4 refuses empty references
    errors = reference_units = 0
    if scored:
        out = process([r for r, _ in scored], [h for _, h in scored])
        errors = out.substitutions + out.deletions + out.insertions
        reference_units = out.hits + out.substitutions + out.deletions
    errors += sum(len(units([h])[0]) for (_, h), e in zip(pairs, empty) if e)
    return float(errors / max(reference_units, 1))


def detection_map(
    preds: list[dict], targets: list[dict], classes: list[str], masks: bool = True, curves: bool = False
) -> dict:
    """COCO mAP and mAR of detections, for boxes and (with `masks`) masks: torchmetrics'
    MeanAveragePrecision on the pycocotools backend, so the figures are the COCO evaluation's own.

    preds: per image {'boxes' (N, 4) xyxy, 'scores', 'labels'[, 'masks' (N, H, W) bool]}; targets the
    same without scores. `classes[label]` names a label (0 is the background). Returns box_map,
    box_map_50, box_map_75, box_map_small/medium/large, box_mar_1/10/100, the same with mask_ for
    masks, 'per_class' {name: {box_ap, box_ar_100[, mask_ap]}}, and with `curves` the precision
    arrays (IoU threshold, recall, class, area, max detections) as 'box_precision'/'mask_precision'.
    AP of a size no object has is -1, as in pycocotools."""
    from torchmetrics.detection import MeanAveragePrecision

    kinds = ("bbox", "segm") if masks else ("bbox",)
    metric = MeanAveragePrecision(iou_type=kinds, backend="pycocotools", class_metrics=True, extended_summary=curves)
    metric.update(preds, targets)
    raw = metric.compute()
    out: dict = {}
    per_class: dict[str, dict] = {}
    present = torch.atleast_1d(raw["classes"]).tolist()
    for kind, name in (("bbox", "box"), ("segm", "mask")):
        if kind not in kinds:
            continue
        prefix = f"{kind}_" if len(kinds) > 1 else ""  # torchmetrics names one kind's figures without it
        for key, value in raw.items():
            if key.startswith(prefix) and isinstance(value, torch.Tensor) and value.ndim == 0:
                if key[len(prefix) :].startswith(("map", "mar")) and not key.endswith("_per_class"):
                    out[f"{name}_{key[len(prefix) :]}"] = float(value)
        aps = torch.atleast_1d(raw[f"{prefix}map_per_class"]).tolist()
        ars = torch.atleast_1d(raw[f"{prefix}mar_100_per_class"]).tolist()
        for label, ap, ar in zip(present, aps, ars):
            row = per_class.setdefault(classes[label], {})
            row[f"{name}_ap"] = ap
            if kind == "bbox":
                row["box_ar_100"] = ar
        if curves:
            out[f"{name}_precision"] = raw[f"{prefix}precision"]
    out["per_class"] = {c: per_class[c] for c in classes if c in per_class}
    return out


# ----- scene text: the ICDAR 2015 protocol ------------------------------------------------------------
SPECIAL = "!?.:,*\"()\u00b7[]/'"  # ICDAR 2015's end-to-end script forgives one of these at either end


def _reads_as(text: str, truth: str) -> bool:
    text, truth = text.lower(), truth.lower()
    if text == truth:
        return True
    return any(text == t for t in (truth[1:] if truth[:1] in SPECIAL else None,
                                    truth[:-1] if truth[-1:] in SPECIAL else None) if t)  # fmt: skip


def word_accuracy(references: list[str], hypotheses: list[str]) -> dict[str, float]:
    """Share of words read exactly (case-sensitive and not), and the character error rate (jiwer)."""
    n = max(len(references), 1)
    return {
        "word_accuracy": sum(r == h for r, h in zip(references, hypotheses)) / n,
        "word_accuracy_nocase": sum(r.lower() == h.lower() for r, h in zip(references, hypotheses)) / n,
        "cer": cer(references, hypotheses),
    }


def text_spotting(
    found: list[list[tuple]], truth: list[list[tuple]], iou: float = 0.5, dont_care: str = "###"
) -> dict[str, float]:
    """Detection precision, recall and H-mean at IoU `iou`, and end-to-end precision, recall and F
    (a match whose transcript is right), over images of (quad (4, 2), transcript) pairs (transcript
    None for a detector alone). As ICDAR 2015: one to one matches; a found word lying over half
    inside a '###' region is neither right nor wrong, and '###' truths are never missed; a transcript
    is right when it equals the truth, case ignored, or the truth without one leading or trailing
    punctuation mark. Where the official script matches in the order it reads the words, this
    matches best IoU first (a word between two truths goes to the nearer). Polygons by shapely."""
    from shapely.geometry import Polygon

    def polygon(q):
        p = Polygon(q)
        return p if p.is_valid else p.buffer(0)

    counted_found = counted_truth = matched = read = 0
    for image_found, image_truth in zip(found, truth):
        cares = [(polygon(q), t) for q, t in image_truth if t != dont_care]
        ignored = [polygon(q) for q, t in image_truth if t == dont_care]
        kept = []
        for q, t in image_found:
            p = polygon(q)
            if p.area > 0 and any(p.intersection(g).area / p.area > 0.5 for g in ignored):
                continue
            kept.append((p, t))
        pairs = []
        for i, (p, _) in enumerate(kept):
            for j, (g, _) in enumerate(cares):
                if p.intersects(g):
                    inter = p.intersection(g).area
                    value = inter / max(p.area + g.area - inter, 1e-9)
                    if value > iou:
                        pairs.append((value, i, j))
        used_found, used_truth = set(), set()
        for _, i, j in sorted(pairs, reverse=True):
            if i in used_found or j in used_truth:
                continue
            used_found.add(i)
            used_truth.add(j)
            matched += 1
            text = kept[i][1]
            read += text is not None and _reads_as(text, cares[j][1])
        counted_found += len(kept)
        counted_truth += len(cares)
    precision, recall = matched / max(counted_found, 1), matched / max(counted_truth, 1)
    e2e_p, e2e_r = read / max(counted_found, 1), read / max(counted_truth, 1)
    return {
        "precision": precision,
        "recall": recall,
        "hmean": 2 * precision * recall / max(precision + recall, 1e-9),
        "e2e_precision": e2e_p,
        "e2e_recall": e2e_r,
        "e2e_f": 2 * e2e_p * e2e_r / max(e2e_p + e2e_r, 1e-9),
    }


# ----- captions: the COCO caption evaluation (pycocoevalcap) ------------------------------------------
def java() -> bool:
    """Whether METEOR can be measured: pycocoevalcap runs it as a Java program."""
    import shutil

    return shutil.which("java") is not None


def caption_scores(hypotheses: list[str], references: list[list[str]], meteor: bool = False) -> dict[str, float]:
    """BLEU-1..4, ROUGE-L and CIDEr-D of one caption per image against its references, as the COCO
    caption evaluation computes them (pycocoevalcap; BLEU and ROUGE-L in 0-1, CIDEr-D 0-10), plus
    METEOR when asked and Java is present, and sacrebleu's corpus BLEU (0-100, 13a tokenization of the
    same words) as a second, labelled BLEU. Captions are tokenized as the COCO PTB tokenizer does for
    plain English (lower case, punctuation dropped: lamina.data.captions.words), without the Java
    program it needs."""
    import contextlib
    import io

    import sacrebleu
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    from lamina.data.captions import words

    if not hypotheses:
        return {}
    gts = {i: [" ".join(words(r)) for r in refs] for i, refs in enumerate(references)}
    res = {i: [" ".join(words(h))] for i, h in enumerate(hypotheses)}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocoevalcap prints its BLEU statistics
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out = {f"bleu{n + 1}": float(b) for n, b in enumerate(bleu)}
    out["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    out["cider"] = float(Cider().compute_score(gts, res)[0])
    if meteor and java():
        scorer = Meteor()
        try:
            out["meteor"] = float(scorer.compute_score(gts, res)[0])
        finally:
            scorer.close()
    # sacrebleu on the same tokens (lower case, no punctuation), one stream per reference position
    # (an image with fewer references repeats its first)
    k = max(len(r) for r in gts.values())
    streams = [[refs[j] if j < len(refs) else refs[0] for refs in gts.values()] for j in range(k)]
    out["sacrebleu"] = float(sacrebleu.corpus_bleu([r[0] for r in res.values()], streams).score)
    return out


class Meteor:
    """pycocoevalcap's METEOR program, closed when done (its own class only kills it at exit)."""

    def __init__(self):
        from pycocoevalcap.meteor.meteor import Meteor as CocoMeteor

        self.scorer = CocoMeteor()

    def compute_score(self, gts, res):
        return self.scorer.compute_score(gts, res)

    def close(self) -> None:
        p = self.scorer.meteor_p
        p.stdin.close()
        p.kill()
        p.wait()  # (its own __del__ then finds the program ended and does nothing)
