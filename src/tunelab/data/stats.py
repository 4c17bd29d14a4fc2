"""Dataset statistics that catch problems before compute is spent on them."""

import hashlib
import re
import statistics
import string
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from tunelab.data.loading import Example
from tunelab.errors import TuneLabError

MAX_LABELS = 200  # more distinct outputs than this is free text, not a label set
MAX_LABEL_WORDS = 6

_PUNCT = str.maketrans("", "", string.punctuation)


@dataclass
class LengthStats:
    min: int
    mean: float
    median: float
    p95: int
    max: int

    @classmethod
    def of(cls, lengths: list[int]) -> "LengthStats":
        ordered = sorted(lengths)
        p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
        return cls(
            ordered[0], statistics.fmean(ordered), statistics.median(ordered), p95, ordered[-1]
        )


@dataclass
class DuplicateGroup:
    lines: list[int]
    text: str
    conflicting: bool  # same input, different outputs


@dataclass
class DatasetStats:
    rows: int
    input_tokens: LengthStats | None
    output_tokens: LengthStats | None
    labels: Counter | None
    duplicates: list[DuplicateGroup] = field(default_factory=list)
    overlap_with_test: list[int] = field(default_factory=list)


def normalize_text(text: str) -> str:
    """Case- and whitespace-insensitive key, so near-identical rows count as duplicates."""
    return re.sub(r"\s+", " ", text).strip().lower()


def input_hash(text: str) -> str:
    """A short hash of a normalised input: what a tuned retriever or a trained run records
    of the rows it learned, to recognise them later without keeping the text."""
    return hashlib.sha256(normalize_text(text).encode()).hexdigest()[:16]


def normalize_answer(text: str) -> str:
    """Case, whitespace and punctuation do not make an answer wrong."""
    return re.sub(r"\s+", " ", text.lower().translate(_PUNCT)).strip()


def looks_like_classification(examples: list[Example]) -> bool:
    """Outputs form a label set: few distinct values, each a short phrase, most repeated."""
    outputs = Counter(e.output for e in examples)
    if len(outputs) > min(MAX_LABELS, max(2, len(examples) // 2)):
        return False
    return all(len(label.split()) <= MAX_LABEL_WORDS for label in outputs)


def find_duplicates(examples: list[Example]) -> list[DuplicateGroup]:
    groups: dict[str, list[Example]] = defaultdict(list)
    for example in examples:
        groups[normalize_text(example.input)].append(example)
    return [
        DuplicateGroup(
            lines=[e.line for e in group],
            text=group[0].input,
            conflicting=len({e.output for e in group}) > 1,
        )
        for group in groups.values()
        if len(group) > 1
    ]


def find_overlap(train: list[Example], test: list[Example]) -> list[int]:
    """Lines of ``test`` whose input also appears in ``train`` (leaks into evaluation)."""
    seen = {normalize_text(e.input) for e in train}
    return [e.line for e in test if normalize_text(e.input) in seen]


def compute_stats(
    examples: list[Example], tokenizer=None, *, test: list[Example] | None = None
) -> DatasetStats:
    input_lengths = output_lengths = None
    if tokenizer is not None:
        input_lengths = _token_lengths(tokenizer, [e.input for e in examples])
        output_lengths = _token_lengths(tokenizer, [e.output for e in examples])
    labels = Counter(e.output for e in examples) if looks_like_classification(examples) else None
    return DatasetStats(
        rows=len(examples),
        input_tokens=LengthStats.of(input_lengths) if input_lengths else None,
        output_tokens=LengthStats.of(output_lengths) if output_lengths else None,
        labels=labels,
        duplicates=find_duplicates(examples),
        overlap_with_test=find_overlap(examples, test) if test else [],
    )


def _token_lengths(tokenizer, texts: list[str]) -> list[int]:
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [len(ids) for ids in encoded]


def label_warnings(
    labels: list[str] | None, held_out: list[Example], role: str = "test"
) -> list[str]:
    """What makes a label-set score silently misleading: a single label, and held-out rows
    whose label never occurs in training (no prediction can be right for them)."""
    if labels is None:
        return []
    warnings = []
    if len(labels) == 1:
        warnings.append(
            f"the label set has a single label ({labels[0]!r}): every answer is that label, so "
            "accuracy and macro-F1 say nothing about the model"
        )
    known = set(labels)
    missing = [e for e in held_out if e.output not in known]
    if missing:
        names = sorted({e.output for e in missing})
        shown = ", ".join(repr(n) for n in names[:5]) + (", ..." if len(names) > 5 else "")
        warnings.append(
            f"{len(missing)} {role} rows ({len(names)} labels: {shown}) have a label that is "
            "not in the training labels: they cannot be answered right and count as errors "
            "(macro-F1 includes their labels)"
        )
    return warnings


def resolve_labels(option: str, train) -> list[str] | None:
    """``auto``: the sorted outputs when they look like labels; ``none``; or a listed set."""
    if option == "none":
        return None
    if option == "auto":
        return sorted({e.output for e in train}) if looks_like_classification(train) else None
    chosen = list(dict.fromkeys(label.strip() for label in option.split(",") if label.strip()))
    if not chosen:
        raise TuneLabError("--labels: the label list is empty")
    return chosen
