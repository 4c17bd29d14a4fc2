"""The leaderboard: quality with its interval next to what each strategy costs, and a verdict
that follows from a paired comparison on the same test rows.

The best strategy has the highest headline metric. Every other strategy is compared with it
row by row: the difference of their scores on the same test rows, with a paired-bootstrap 95%
interval (the same resampled rows for both; corpus metrics such as macro-F1, BLEU and chrF are
recomputed on each resample). A strategy is **as good as the best** when that interval
contains 0 *and* the point difference is small: at most ``max(0.01, 5% of the best value)``
below it. Among those, the recommendation is the cheapest, and "cheapest" is named:

- *to adapt*: fewest trainable parameters, then least training/search time;
- *to serve*: least model time per answer at batch size 1, then fewest prompt tokens.

An experiment may say which it cares about (``prefer: serving | adaptation``): that reading
decides, and the other is still named when it picks another strategy. Otherwise both readings
are given, and when they pick different strategies the verdict says so. When the
best and the runner-up cannot be told apart, the verdict says how many test rows would be
needed to separate a difference of the observed size (normal approximation on the paired
bootstrap standard error: n' = n·((1.96 + 0.84)·se/diff)², two-sided 5%, 80% power; with
se·√n standing for the standard deviation sd of the per-row differences this is the usual
n' = (1.96 + 0.84)²·sd²/diff², and it also serves corpus metrics, which have no per-row
differences).

The rows are each strategy's ``predictions.jsonl`` (per-example scores stored at evaluation).
Two strategies are paired only when their rows carry the same sequence of test lines;
otherwise that strategy gets no difference and the verdict says so. Macro-F1 is recomputed
over the task's label set (``labels``), as it was when reported.
"""

from dataclasses import dataclass, field, replace
from functools import partial

from tunelab.evaluation import metrics as m

PER_EXAMPLE = {  # per-example metrics that can be recomputed from a prediction row
    "accuracy": lambda p, r: m.exact_match(p, r),
    "exact_match": lambda p, r: m.exact_match(p, r),
    "token_f1": m.token_f1,
    "rouge_l": m.rouge_l,
    "json_match": m.json_match,
}
CORPUS = {
    "macro_f1": m.macro_f1, "bleu": m.bleu, "chrf": m.chrf,
    "field_precision": partial(m.field_micro, part=0),
    "field_recall": partial(m.field_micro, part=1),
    "field_f1": partial(m.field_micro, part=2),
}  # fmt: skip


@dataclass(frozen=True)
class Difference:
    """Paired difference to the best strategy on the same rows (negative: worse)."""

    value: float
    low: float
    high: float
    se: float
    rows: int
    best: str  # the strategy it is measured against

    @property
    def includes_zero(self) -> bool:
        return self.low <= 0 <= self.high

    def text(self) -> str:
        return f"{self.value:+.3f} ({self.low:+.3f} to {self.high:+.3f})"


@dataclass(frozen=True)
class Row:
    name: str
    kind: str
    method: str  # prompt | optimize | the training method
    value: float
    low: float
    high: float
    trainable: int
    trainable_percent: float
    adapt_seconds: float
    latency_ms: float  # model time of one answer at batch size 1 (NaN: not measured)
    peak_memory_mb: float
    size_bytes: int
    throughput: float = 0.0  # examples/s at the evaluation batch size
    prompt_tokens: float = 0.0  # mean prompt length per answer
    device: str = ""
    diff: Difference | None = None
    knn_weight: float = 0.0  # its label answers blend a neighbour vote (knn_weight)

    @property
    def shown_method(self) -> str:
        """The method as tables show it: with the vote its evaluation blended, since serving
        answers without it."""
        return f"{self.method} + knn vote {self.knn_weight:g}" if self.knn_weight else self.method

    @property
    def adaptation_key(self) -> tuple:
        return (self.trainable, self.adapt_seconds, _last_if_missing(self.latency_ms))

    @property
    def serving_key(self) -> tuple:
        return (_last_if_missing(self.latency_ms), self.prompt_tokens, self.trainable)


def rows_of(
    results: list[dict],
    metric: str,
    total_parameters: int | None,
    predictions: dict[str, list[dict]] | None = None,
    labels: list[str] | None = None,
) -> list[Row]:
    """Leaderboard rows sorted best first (ties: the cheaper to adapt first); with each
    strategy's prediction rows, every row carries its paired difference to the best
    (``labels``: the task's label set, which macro-F1 averages over)."""
    rows = sorted(
        (_row(r, metric, total_parameters) for r in results),
        key=lambda row: (-_finite(row.value), row.adaptation_key),
    )
    if not predictions or not rows or rows[0].value != rows[0].value:
        return rows
    best = rows[0]
    return [
        replace(row, diff=paired_difference(predictions, row.name, best.name, metric, labels))
        for row in rows
    ]


def _row(r: dict, metric: str, total_parameters: int | None) -> Row:
    score = r["metrics"].get(metric) or {}  # null (a NaN/inf in strict JSON) reads as missing
    value = score.get("value")
    total = r.get("total_parameters") or total_parameters
    trainable = r.get("trainable_parameters", 0)
    device = "/".join(x for x in (r.get("device"), r.get("dtype")) if x)
    return Row(
        name=r["name"],
        kind=r["kind"],
        method=r.get("training", {}).get("method", r["kind"]),
        knn_weight=(r.get("prompt") or {}).get("knn_weight") or 0.0,
        value=float("nan") if value is None else value,
        low=score.get("low") or 0.0,
        high=score.get("high") or 0.0,
        trainable=trainable,
        trainable_percent=100 * trainable / total if total else 0.0,
        adapt_seconds=r.get("adapt_seconds") or 0.0,
        latency_ms=_number(r.get("latency_ms_per_example")),
        peak_memory_mb=r.get("peak_memory_mb") or 0.0,
        size_bytes=r.get("size_bytes") or 0,
        throughput=r.get("examples_per_second") or 0.0,
        prompt_tokens=r.get("prompt_tokens") or 0.0,
        device=device,
    )


def paired_difference(
    predictions: dict[str, list[dict]],
    name: str,
    best: str,
    metric: str,
    labels: list[str] | None = None,
    seed: int = 0,
) -> Difference | None:
    """``name`` minus ``best`` on the same test rows; None when the rows do not line up or
    the metric cannot be recomputed from the stored rows."""
    mine, theirs = predictions.get(name) or [], predictions.get(best) or []
    if not mine or [r.get("line") for r in mine] != [r.get("line") for r in theirs]:
        return None
    if metric in CORPUS:
        function = CORPUS[metric]
        if metric == "macro_f1":
            function = partial(m.macro_f1, labels=labels)
        references = [r["reference"] for r in mine]
        a, b = [r["prediction"] for r in mine], [r["prediction"] for r in theirs]

        def statistic(idx):
            refs = [references[i] for i in idx]
            return function([a[i] for i in idx], refs), function([b[i] for i in idx], refs)

        result = m.paired_difference(statistic, len(mine), resamples=300, seed=seed)
    else:
        a, b = per_example_scores(mine, metric), per_example_scores(theirs, metric)
        if a is None or b is None:
            return None
        import numpy as np

        x, y = np.asarray(a), np.asarray(b)
        result = m.paired_difference(lambda idx: (x[idx].mean(), y[idx].mean()), len(x), seed=seed)
    return Difference(result["value"], result["low"], result["high"], result["se"], len(mine), best)


def per_example_scores(rows: list[dict], metric: str) -> list[float] | None:
    """Each row's score for ``metric``: stored at evaluation, else recomputed when it can be."""
    if all(row.get("scores", {}).get(metric) is not None for row in rows):  # null: not stored
        return [float(row["scores"][metric]) for row in rows]
    if metric == "checklist":
        found = [row.get("generate_checklist", row.get("score_checklist")) for row in rows]
        return None if None in found else found
    if metric in PER_EXAMPLE:
        return PER_EXAMPLE[metric]([r["prediction"] for r in rows], [r["reference"] for r in rows])
    return None


@dataclass(frozen=True)
class Recommendation:
    best: Row
    equivalent: list[Row]  # as good as the best (the best included), best first
    cheapest_to_adapt: Row
    cheapest_to_serve: Row
    margin: float  # largest shortfall still called "as good"
    prefer: str | None = None  # "serving" | "adaptation" | None (both readings)
    runner_up: Row | None = None
    rows_needed: float | None = None  # to separate best and runner-up, when they can't be
    notes: list[str] = field(default_factory=list)

    @property
    def pick(self) -> Row:
        """The single recommendation when a preference or agreement makes one."""
        if self.prefer == "serving":
            return self.cheapest_to_serve
        return self.cheapest_to_adapt

    def text(self, metric: str) -> str:
        best = self.best
        lines = [
            f"Best {metric}: {best.name} ({best.value:.3f}, 95% interval "
            f"{best.low:.3f}–{best.high:.3f})."
        ]
        lines += self.notes
        if self.runner_up is not None and self.rows_needed is not None:
            lines.append(_undecided(self.runner_up, self.rows_needed))
        adapt, serve = self.cheapest_to_adapt, self.cheapest_to_serve
        if len(self.equivalent) == 1:
            undecided = self.runner_up is not None and self.rows_needed is not None
            lines.append(
                f"No other strategy is shown to be as good (paired interval containing 0 and "
                f"at most {self.margin:.3f} below); on this test set {best.name} is the pick"
                + (f", a tentative one: it is not shown better than {self.runner_up.name} "
                   "either." if undecided else ".")
            )  # fmt: skip
        elif self.prefer or adapt.name == serve.name:
            chosen = self.pick
            reading = {
                "serving": "to serve (time per answer at batch size 1, prompt tokens)",
                "adaptation": "to adapt (trainable parameters, training/search time)",
            }.get(self.prefer or "", "both to adapt and to serve")
            lines.append(f"Recommended: {chosen.name}, {_as_good(chosen)}; cheapest {reading}: "
                         f"{_cost(chosen)}.")  # fmt: skip
            if adapt.name != serve.name:  # the other reading, which the preference set aside
                other, what = (adapt, "adapt") if chosen is serve else (serve, "serve")
                lines.append(f"(Cheapest to {what} would be {other.name}: {_cost(other)}.)")
        else:
            lines.append(
                f"As good as the best: {', '.join(r.name for r in self.equivalent)}. The two "
                f"readings of 'cheaper' disagree: cheapest to adapt is {adapt.name} "
                f"({_cost(adapt)}); cheapest to serve is {serve.name} ({_cost(serve)}). For "
                f"many requests pick {serve.name}; for a one-off or few requests "
                f"{adapt.name}. Set `prefer: serving` or `prefer: adaptation` to choose."
            )
        named = [best, adapt, serve, *self.equivalent]  # the rows this text names
        voted = list(dict.fromkeys(r.name for r in named if r.knn_weight))
        if voted:
            who = f"{voted[0]} blends" if len(voted) == 1 else f"{', '.join(voted)} blend"
            lines.append(
                f"({who} a neighbour vote into label scores; `tunelab serve`, `chat` and "
                "exported models answer without it.)"
            )
        return " ".join(lines)


def recommend(rows: list[Row], prefer: str | None = None) -> Recommendation:
    scored = [r for r in rows if r.value == r.value]  # drop NaN
    best = max(scored, key=lambda r: (r.value, [-x for x in r.adaptation_key]))
    margin = max(0.01, 0.05 * abs(best.value))
    notes = []
    unpaired = [r.name for r in scored if r.name != best.name and r.diff is None]
    if unpaired:
        notes.append(
            f"(No paired comparison for {', '.join(unpaired)}: no stored per-row scores on the "
            f"same test lines as {best.name}'s, so none of them is called as good as the best.)"
        )
    equivalent = [best] + [
        r
        for r in scored
        if r.name != best.name
        and r.diff is not None
        and r.diff.includes_zero
        and -r.diff.value <= margin
    ]
    runner_up = next((r for r in scored if r.name != best.name), None)
    rows_needed = None
    if runner_up is not None and runner_up.diff is not None and runner_up.diff.includes_zero:
        d = runner_up.diff
        rows_needed = m.rows_to_separate(d.se, d.rows, d.value)
    else:
        runner_up = None
    return Recommendation(
        best=best,
        equivalent=equivalent,
        cheapest_to_adapt=min(equivalent, key=lambda r: r.adaptation_key),
        cheapest_to_serve=min(equivalent, key=lambda r: r.serving_key),
        margin=margin,
        prefer=prefer,
        runner_up=runner_up,
        rows_needed=rows_needed,
        notes=notes,
    )


def _undecided(runner_up: Row, rows_needed: float) -> str:
    d = runner_up.diff
    size = (
        "no test set would separate them (no difference observed)"
        if rows_needed == float("inf")
        else f"about {rows_needed:,.0f} paired test rows would be needed to separate a "
        f"difference of this size"
    )
    return (
        f"This test set cannot tell the best from {runner_up.name} (difference {d.text()} on "
        f"{d.rows} rows): {size} (normal approximation on the paired bootstrap standard "
        f"error, two-sided 5%, 80% power)."
    )


def _as_good(row: Row) -> str:
    if row.diff is None or row.diff.best == row.name:
        return "the best itself"
    return f"as good as the best (difference {row.diff.text()})"


def markdown(rows: list[Row], metric: str, recommendation: Recommendation | None) -> str:
    header = (
        f"| rank | strategy | method | {metric} (95% CI) | vs best (paired 95% CI) | "
        "trainable params | train/search s | ms/answer (batch 1) | examples/s | prompt tokens "
        "| peak memory MB | size on disk | device |"
    )
    lines = [header, "| " + " | ".join(["---"] * 13) + " |"]
    for rank, r in enumerate(rows, 1):
        lines.append(
            f"| {rank} | {r.name} | {r.shown_method} | {r.value:.3f} ({r.low:.3f}–{r.high:.3f}) | "
            f"{diff_text(r)} | {params_text(r)} | {r.adapt_seconds:.0f} | {ms_text(r)} | "
            f"{r.throughput:.2f} | {r.prompt_tokens:.0f} | {r.peak_memory_mb:.0f} | "
            f"{size_text(r.size_bytes)} | {r.device or '-'} |"
        )
    if recommendation:
        lines += ["", recommendation.text(metric)]
    return "\n".join(lines) + "\n"


def diff_text(row: Row) -> str:
    if row.diff is None:
        return "-"
    if row.diff.best == row.name:
        return "best"
    return row.diff.text()


def params_text(row: Row) -> str:
    return "0" if not row.trainable else f"{row.trainable:,} ({row.trainable_percent:.3g}%)"


def size_text(size: int) -> str:
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def _cost(row: Row) -> str:
    return (
        f"{params_text(row)} trainable parameters, {row.adapt_seconds:.0f} s to adapt, "
        f"{ms_text(row)} ms and {row.prompt_tokens:.0f} prompt tokens per answer"
    )


def ms_text(row: Row) -> str:
    """Batch-1 model time per answer, or "-" when it was not measured."""
    return "-" if row.latency_ms != row.latency_ms else f"{row.latency_ms:.0f}"


def _number(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _last_if_missing(value: float) -> float:
    """An unmeasured cost sorts after every measured one (it is not zero)."""
    return value if value == value else float("inf")


def _finite(value: float) -> float:
    return value if value == value else float("-inf")
