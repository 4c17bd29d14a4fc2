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


def checklist_coverage(predictions: list[str], checklists: list[list[str]]) -> list[float]:
    """Share of each example's required phrases (steps, keywords) found in its answer.

    Matching is on normalised text, so "Restart the Hub" satisfies "restart the hub". An
    example with an empty checklist counts as fully covered.
    """
    scores = []
    for prediction, items in zip(predictions, checklists, strict=True):
        answer = normalize_answer(prediction)
        found = [normalize_answer(item) in answer for item in items]
        scores.append(sum(found) / len(found) if found else 1.0)
    return scores


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


def token_f1(predictions: list[str], references: list[str]) -> list[float]:
    """SQuAD-style bag-of-words F1 per example."""
    scores = []
    for prediction, reference in zip(predictions, references, strict=True):
        pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
        common = sum((Counter(pred) & Counter(ref)).values())
        if not pred or not ref:
            scores.append(float(pred == ref))
        elif common == 0:
            scores.append(0.0)
        else:
            precision, recall = common / len(pred), common / len(ref)
            scores.append(2 * precision * recall / (precision + recall))
    return scores


def rouge_l(predictions: list[str], references: list[str]) -> list[float]:
    """ROUGE-L F-measure per example (rouge-score, with stemming)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [
        scorer.score(reference, prediction)["rougeL"].fmeasure
        for prediction, reference in zip(predictions, references, strict=True)
    ]


def bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU (sacrebleu defaults), on a 0–1 scale like every other metric here."""
    import sacrebleu

    return sacrebleu.corpus_bleu(predictions, [references]).score / 100


def chrf(predictions: list[str], references: list[str]) -> float:
    """Corpus chrF (sacrebleu defaults), on a 0–1 scale."""
    import sacrebleu

    return sacrebleu.corpus_chrf(predictions, [references]).score / 100


def embedding_similarity(predictions: list[str], references: list[str], embedder) -> list[float]:
    """Cosine similarity of each prediction's embedding with its reference's."""
    pairs = embedder.embed(list(predictions) + list(references))
    n = len(predictions)
    return (pairs[:n] * pairs[n:]).sum(-1).clamp(-1, 1).tolist()


def format_compliance(
    outputs: list[str], *, regex: str | None = None, schema: dict | None = None
) -> list[float]:
    """1.0 where the raw output fully matches ``regex`` and/or is JSON valid under ``schema``."""
    import json

    import jsonschema

    pattern = re.compile(regex, re.DOTALL) if regex else None
    validator = jsonschema.Draft202012Validator(schema) if schema is not None else None
    scores = []
    for output in outputs:
        ok = pattern is None or pattern.fullmatch(output.strip()) is not None
        if ok and validator is not None:
            try:
                ok = validator.is_valid(json.loads(output))
            except json.JSONDecodeError:
                ok = False
        scores.append(float(ok))
    return scores


def bootstrap_interval(
    statistic, n: int, *, resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(indices)`` over ``n`` examples."""
    import numpy as np

    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, n)) for _ in range(resamples)])
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def mean_with_interval(scores: list[float], *, resamples: int = 1000, seed: int = 0) -> dict:
    """Mean of per-example scores with its bootstrap 95% interval."""
    import numpy as np

    values = np.asarray(scores, dtype=float)
    low, high = bootstrap_interval(
        lambda idx: values[idx].mean(), len(values), resamples=resamples, seed=seed
    )
    return {"value": float(values.mean()), "low": low, "high": high}


def corpus_with_interval(
    metric, predictions: list[str], references: list[str], *, resamples: int = 200, seed: int = 0
) -> dict:
    """A corpus-level metric (BLEU, chrF, macro-F1) with an interval from resampled corpora."""

    def on(indices) -> float:
        return metric([predictions[i] for i in indices], [references[i] for i in indices])

    low, high = bootstrap_interval(on, len(predictions), resamples=resamples, seed=seed)
    return {"value": metric(predictions, references), "low": low, "high": high}
