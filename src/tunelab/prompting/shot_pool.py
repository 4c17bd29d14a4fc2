"""The shot pool: the labelled rows a strategy's shots are retrieved from, and which rows of a
user's extra file may join the training rows in it without leaking a held-out answer."""

from collections import Counter, defaultdict
from dataclasses import astuple, dataclass

from tunelab.data.loading import Example
from tunelab.data.stats import normalize_text


@dataclass(frozen=True)
class LeftOutShotRows:
    """How many rows of a shot pool were left out, by reason."""

    held_out: int = 0  # the input is a dev or test input: a prompt would show its answer
    unknown_label: int = 0  # the answer is not one of the task's labels
    conflicting: int = 0  # label sets only: an earlier row (training rows first, then the pool
    # in file order: the first wins) labels the same input otherwise
    repeated: int = 0  # the same input and answer as an earlier row: nothing new to show

    def __add__(self, other: "LeftOutShotRows") -> "LeftOutShotRows":
        return LeftOutShotRows(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))

    @property
    def total(self) -> int:
        return sum(astuple(self))

    def describe(self) -> str:
        """'5 left out: 3 with a dev or test input, 2 with a label outside the label set'"""
        reasons = [
            (self.held_out, "with a dev or test input"),
            (self.unknown_label, "with a label outside the label set"),
            (self.conflicting, "labelling an input another row labels differently"),
            (self.repeated, "repeating a training or earlier pool row"),
        ]
        said = ", ".join(f"{n} {why}" for n, why in reasons if n)
        return f"{self.total} left out" + (f": {said}" if said else "")


SHOT_POOL_HELP = (
    "More labelled rows to take shots from besides the training rows; rows with a dev or "
    "test input, a label outside the label set, or a label "
    "that contradicts another row's are left out."
)


def shot_pool_line(train: int, extra: int, left_out: LeftOutShotRows) -> str | None:
    """What a plan says about a shot pool: its size and what was left out (None: no pool)."""
    if not extra and not left_out.total:
        return None
    return f"shot pool: {train} training rows + {extra} more labelled rows ({left_out.describe()})"


def usable_shot_rows(
    train: list[Example],
    extra: list[Example],
    held_out: list[Example],
    labels: list[str] | None = None,
) -> tuple[list[Example], LeftOutShotRows]:
    """The ``extra`` labelled rows a run may retrieve shots from besides its training rows,
    and how many were left out, by reason.

    A pool larger than the training set gives closer neighbours: a user often has more
    labelled rows than are worth training on. Left out: rows whose input is a held-out input
    (a prompt never shows a dev or test answer) and, with a label set, rows whose answer is
    not a label (the model could copy an answer it can never give) or that label an input
    differently from an earlier row (the training rows come first: they are the ground
    truth), and repeats of an earlier row. The training rows stay first in the pool, so fixed
    ``shot_ids`` keep indexing them.
    """
    candidates = without_held_out(extra, held_out)
    known = set(labels) if labels is not None else None
    answers = defaultdict(set)
    for example in train:
        answers[normalize_text(example.input)].add(example.output)
    kept, left_out = [], Counter(held_out=len(extra) - len(candidates))
    for example in candidates:
        text = normalize_text(example.input)
        if known is not None and example.output not in known:
            left_out["unknown_label"] += 1
        elif known is not None and text in answers and example.output not in answers[text]:
            left_out["conflicting"] += 1  # (free-text answers may differ and both be right)
        elif example.output in answers[text]:
            left_out["repeated"] += 1
        else:
            answers[text].add(example.output)
            kept.append(example)
    return kept, LeftOutShotRows(**left_out)


def without_held_out(pool: list[Example], held_out: list[Example]) -> list[Example]:
    """``pool`` less the rows whose input is a held-out input: no prompt may show a dev or
    test answer (a stored pool evaluated on a new test file, extra shot rows, the rows an
    optimiser searches with)."""
    hidden = {normalize_text(e.input) for e in held_out}
    return [e for e in pool if normalize_text(e.input) not in hidden]
