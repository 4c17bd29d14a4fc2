"""Task metrics, each checked against hand-computed values in the tests."""

import re
import string
from collections import Counter

_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Case, whitespace and punctuation do not make an answer wrong."""
    return re.sub(r"\s+", " ", text.lower().translate(_PUNCT)).strip()


def exact_match(predictions: list[str], references: list[str]) -> list[float]:
    """Per-example 1.0/0.0 after normalisation."""
    return [
        float(normalize_answer(p) == normalize_answer(r))
        for p, r in zip(predictions, references, strict=True)
    ]


def macro_f1(predictions: list[str], references: list[str], labels: list[str]) -> float:
    """Unweighted mean of per-label F1 over the reference label set (normalised strings)."""
    preds = [normalize_answer(p) for p in predictions]
    refs = [normalize_answer(r) for r in references]
    scores = []
    for label in {normalize_answer(label) for label in labels}:
        tp = sum(p == label and r == label for p, r in zip(preds, refs, strict=True))
        fp = sum(p == label and r != label for p, r in zip(preds, refs, strict=True))
        fn = sum(p != label and r == label for p, r in zip(preds, refs, strict=True))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores) if scores else 0.0


def label_distribution(predictions: list[str]) -> Counter:
    return Counter(normalize_answer(p) for p in predictions)
