"""Deterministic train/test splits, stratified by label for classification data."""

import random
from collections import defaultdict

from tunelab.data.loading import Example
from tunelab.errors import TuneLabError


def split_examples(
    examples: list[Example], test_size: float | int, *, seed: int = 0, stratify: bool = False
) -> tuple[list[Example], list[Example]]:
    """Split into (train, test); the same inputs and seed always give the same split.

    ``test_size`` is a fraction in (0, 1) or a row count. With ``stratify`` each label keeps its
    share in both parts (largest-remainder rounding, so the test part has exactly the asked size).
    """
    n_test = _test_count(len(examples), test_size)
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    test_ids = _stratified_pick(examples, order, n_test) if stratify else set(order[:n_test])
    train = [examples[i] for i in order if i not in test_ids]
    test = [examples[i] for i in order if i in test_ids]
    return train, test


def _test_count(total: int, test_size: float | int) -> int:
    if isinstance(test_size, float) and 0 < test_size < 1:
        count = round(total * test_size)
    elif isinstance(test_size, int) and not isinstance(test_size, bool):
        count = test_size
    else:
        raise TuneLabError(
            f"test size must be a fraction in (0, 1) or a row count, got {test_size}"
        )
    if not 0 < count < total:
        raise TuneLabError(f"test size {test_size} leaves no rows in one part of {total} rows")
    return count


def _stratified_pick(examples: list[Example], order: list[int], n_test: int) -> set[int]:
    by_label: dict[str, list[int]] = defaultdict(list)
    for index in order:
        by_label[examples[index].output].append(index)
    total = len(examples)
    quotas = {label: len(ids) * n_test / total for label, ids in by_label.items()}
    counts = {label: int(q) for label, q in quotas.items()}
    leftover = n_test - sum(counts.values())
    by_remainder = sorted(quotas, key=lambda label: (counts[label] - quotas[label], label))
    for label in by_remainder[:leftover]:
        counts[label] += 1
    return {i for label, ids in by_label.items() for i in ids[: counts[label]]}
