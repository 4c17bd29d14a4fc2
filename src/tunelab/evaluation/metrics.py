"""Task metrics, each checked against hand-computed values in the tests."""

import re
from collections import Counter

from tunelab.data.stats import normalize_answer


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


def macro_f1(
    predictions: list[str], references: list[str], labels: list[str] | None = None
) -> float:
    """Unweighted mean of per-label F1 (normalised strings) over one fixed label set: the
    given ``labels`` together with every reference label.

    A reference label missing from ``labels`` (a test label absent from training) counts,
    with F1 0 unless predicted. A prediction outside the set (a free-text answer that is no
    label) is simply wrong; it adds no label of its own, so how the wrong answers are spelt
    cannot change the denominator. A label with no reference and no prediction in the sample
    has no F1 (0/0) and is left out; the same rule holds on every bootstrap resample, so a
    rare label that a resample happens to miss does not count as 0 there while it counted
    in the estimate, and the interval describes the statistic that is reported.
    """
    preds = [normalize_answer(p) for p in predictions]
    refs = [normalize_answer(r) for r in references]
    label_set = {normalize_answer(label) for label in labels or []} | set(refs)
    scores = []
    for label in sorted(label_set):
        tp = sum(p == label and r == label for p, r in zip(preds, refs, strict=True))
        fp = sum(p == label and r != label for p, r in zip(preds, refs, strict=True))
        fn = sum(p != label and r == label for p, r in zip(preds, refs, strict=True))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores) if scores else 0.0


# CJK ideographs, kana and hangul syllables are words of one character each; everything
# else is a run of letters and digits (any script).
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_WORDS = re.compile(f"[{_CJK}]|[^\\W_{_CJK}]+")


def words(text: str) -> list[str]:
    """Lower-cased words in any script (rouge-score's own tokenizer keeps only a-z0-9, so a
    Chinese or Russian answer would have no words at all)."""
    return _WORDS.findall(text.lower())


def _split_cjk(tokens: list[str]) -> list[str]:
    """Whitespace tokens with CJK characters split out one by one (Latin tokens unchanged)."""
    out = []
    for token in tokens:
        out.extend(words(token) if re.search(f"[{_CJK}]", token) else [token])
    return out


def token_f1(predictions: list[str], references: list[str]) -> list[float]:
    """SQuAD-style bag-of-words F1 per example (CJK text counted character by character)."""
    scores = []
    for prediction, reference in zip(predictions, references, strict=True):
        pred = _split_cjk(normalize_answer(prediction).split())
        ref = _split_cjk(normalize_answer(reference).split())
        common = sum((Counter(pred) & Counter(ref)).values())
        if not pred or not ref:
            scores.append(float(pred == ref))
        elif common == 0:
            scores.append(0.0)
        else:
            precision, recall = common / len(pred), common / len(ref)
            scores.append(2 * precision * recall / (precision + recall))
    return scores


class _AnyScriptTokenizer:
    """rouge-score tokenizer: words in any script; Porter stemming for a-z words only."""

    def __init__(self):
        from nltk.stem import porter

        self._stemmer = porter.PorterStemmer()

    def tokenize(self, text: str) -> list[str]:
        return [
            self._stemmer.stem(w) if len(w) > 3 and w.isascii() and w.isalpha() else w
            for w in words(text)
        ]


def rouge_l(predictions: list[str], references: list[str]) -> list[float]:
    """ROUGE-L F-measure per example (rouge-score, stemming, words of any script)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_AnyScriptTokenizer())
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


# -- JSON answers ------------------------------------------------------------------------------

_NOT_JSON = object()
# The JSON metrics, headline first; a JSON task reports all of them.
JSON_METRICS = ("json_match", "field_f1", "json_valid", "field_precision", "field_recall")


def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON")


def parse_json(text: str):
    """The JSON value of a whole answer (surrounding whitespace allowed), or _NOT_JSON.
    Python's parser also takes NaN and Infinity, which JSON does not: they are refused."""
    import json

    try:
        return json.loads(text, parse_constant=_no_constants)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        return _NOT_JSON


def is_json_task(references: list[str]) -> bool:
    """Every reference is a JSON object or array: answers are compared as JSON, not text (a
    bare number or word is valid JSON too, but such a task is scored as text)."""
    return bool(references) and all(isinstance(parse_json(r), dict | list) for r in references)


def json_valid(outputs: list[str], schema: dict | None = None) -> list[float]:
    """1.0 where the raw answer parses as JSON (and, with ``schema``, is valid under it)."""
    validator = None
    if schema is not None:
        import jsonschema

        validator = jsonschema.Draft202012Validator(schema)
    scores = []
    for output in outputs:
        value = parse_json(output)
        ok = value is not _NOT_JSON and (validator is None or validator.is_valid(value))
        scores.append(float(ok))
    return scores


def json_match(predictions: list[str], references: list[str]) -> list[float]:
    """1.0 where both parse and the parsed values are equal: key order, whitespace and the
    spelling of a number (1 and 1.0 are one JSON number) do not matter; types do ("1" is not
    1)."""
    scores = []
    for prediction, reference in zip(predictions, references, strict=True):
        pred, ref = parse_json(prediction), parse_json(reference)
        scores.append(float(pred is not _NOT_JSON and _canonical(pred) == _canonical(ref)))
    return scores


def _canonical(value) -> str:
    import json

    return json.dumps(_plain_numbers(value), sort_keys=True, ensure_ascii=False)


def _plain_numbers(value):
    """Integral floats as integers, everywhere in a parsed value (booleans untouched)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _plain_numbers(child) for key, child in value.items()}
    if isinstance(value, list):
        return [_plain_numbers(child) for child in value]
    return value


_NOT_JSON_PAIR = ((), "\x00not JSON")  # the one wrong claim an unparseable answer makes


def fields(value) -> Counter:
    """The (key path, value) pairs of a JSON answer. A path is the tuple of keys from the top
    (so {"a.b": 1} and {"a": {"b": 1}} differ); a value that is not a non-empty object
    (string, number, list, {}) is one pair, compared whole. {} has no pairs; any other
    top-level non-object is one pair under the empty path. An answer that does not parse is
    one pair that matches nothing: prose where JSON was asked is a wrong answer, never an
    empty one (to a {} reference it would otherwise be perfect)."""
    if value is _NOT_JSON:
        return Counter([_NOT_JSON_PAIR])
    pairs: Counter = Counter()

    def walk(node, path: tuple) -> None:
        if isinstance(node, dict) and node:
            for key, child in node.items():
                walk(child, (*path, key))
        else:
            pairs[(path, _canonical(node))] += 1

    if value != {}:
        walk(value, ())
    return pairs


def field_counts(predictions: list[str], references: list[str]) -> list[tuple[int, int, int]]:
    """Per example: (pairs right, pairs predicted, pairs in the reference)."""
    counts = []
    for prediction, reference in zip(predictions, references, strict=True):
        pred, ref = fields(parse_json(prediction)), fields(parse_json(reference))
        counts.append((sum((pred & ref).values()), sum(pred.values()), sum(ref.values())))
    return counts


def precision_recall_f1(right: int, predicted: int, expected: int) -> tuple[float, float, float]:
    """With nothing predicted, precision is 1 when nothing was expected (else 0); recall
    likewise: an empty answer to an empty reference is perfect."""
    precision = right / predicted if predicted else float(expected == 0)
    recall = right / expected if expected else float(predicted == 0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def field_f1(predictions: list[str], references: list[str]) -> list[float]:
    """Per-example F1 over (key, value) pairs (for row-by-row comparisons)."""
    return [precision_recall_f1(*c)[2] for c in field_counts(predictions, references)]


def field_micro(predictions: list[str], references: list[str], part: int = 2) -> float:
    """Micro-averaged field precision (part 0), recall (1) or F1 (2) of a corpus."""
    counts = field_counts(predictions, references)
    return precision_recall_f1(*(sum(c[i] for c in counts) for i in range(3)))[part]


def field_scores_with_intervals(
    predictions: list[str], references: list[str], *, resamples: int = 1000, seed: int = 0
) -> dict[str, dict]:
    """Micro-averaged precision, recall and F1 over every example's (key, value) pairs, each
    with a bootstrap interval from resampled examples."""
    import numpy as np

    counts = np.array(field_counts(predictions, references), dtype=float).reshape(-1, 3)
    out = {}
    for position, name in enumerate(("field_precision", "field_recall", "field_f1")):

        def on(indices, position=position) -> float:
            return float(precision_recall_f1(*counts[indices].sum(0))[position])

        value = on(np.arange(len(counts)))
        low, high = bootstrap_interval(on, len(counts), resamples=resamples, seed=seed, point=value)
        out[name] = {"value": value, "low": low, "high": high}
    return out


def bootstrap_interval(
    statistic,
    n: int,
    *,
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    point: float | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(indices)`` over ``n`` examples.

    With ``point`` given, the interval is widened to contain it: for a skewed statistic on a
    few rows the percentile interval can miss its own estimate, and an interval that excludes
    the number printed beside it helps no reader.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, n)) for _ in range(resamples)])
    tail = (1 - confidence) / 2 * 100
    low, high = (float(x) for x in np.percentile(values, [tail, 100 - tail]))
    if point is not None:
        low, high = min(low, point), max(high, point)
    return low, high


def mean_with_interval(scores: list[float], *, resamples: int = 1000, seed: int = 0) -> dict:
    """Mean of per-example scores with its bootstrap 95% interval."""
    import numpy as np

    values = np.asarray(scores, dtype=float)
    mean = float(values.mean())
    low, high = bootstrap_interval(
        lambda idx: values[idx].mean(), len(values), resamples=resamples, seed=seed, point=mean
    )
    return {"value": mean, "low": low, "high": high}


def corpus_with_interval(
    metric, predictions: list[str], references: list[str], *, resamples: int = 200, seed: int = 0
) -> dict:
    """A corpus-level metric (BLEU, chrF, macro-F1) with an interval from resampled corpora."""

    def on(indices) -> float:
        return metric([predictions[i] for i in indices], [references[i] for i in indices])

    value = metric(predictions, references)
    low, high = bootstrap_interval(
        on, len(predictions), resamples=resamples, seed=seed, point=value
    )
    return {"value": value, "low": low, "high": high}


def paired_difference(
    statistic, n: int, *, resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> dict:
    """Difference between two strategies scored on the same ``n`` rows, with a paired
    bootstrap interval: ``statistic(indices)`` returns (a, b) on the rows ``indices`` (one
    resample serves both, so what the rows share cancels out).

    Also returns ``se`` (the bootstrap standard error of the difference), from which the
    number of rows needed to separate the two is estimated.
    """
    import numpy as np

    everything = np.arange(n)
    a, b = statistic(everything)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(resamples):
        x, y = statistic(rng.integers(0, n, n))
        diffs.append(x - y)
    diffs = np.array(diffs)
    tail = (1 - confidence) / 2 * 100
    low, high = (float(v) for v in np.percentile(diffs, [tail, 100 - tail]))
    value = float(a - b)
    return {
        "value": value, "low": min(low, value), "high": max(high, value),
        "se": float(diffs.std(ddof=1)) if resamples > 1 else 0.0,
    }  # fmt: skip


def rows_to_separate(se: float, n: int, difference: float, power_z: float = 0.84) -> float:
    """Test rows at which a paired difference of this size would be significant (two-sided
    5%) with 80% power, by the normal approximation: n' = n · ((1.96 + 0.84) · se / diff)²,
    where se·√n estimates the standard deviation of the per-row differences."""
    if difference == 0:
        return float("inf")
    return n * ((1.96 + power_z) * se / abs(difference)) ** 2
