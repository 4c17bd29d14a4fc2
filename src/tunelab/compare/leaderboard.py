"""The leaderboard: quality with its interval next to what each strategy costs, and a
recommendation that follows from the numbers.

Recommendation rule: the best strategy is the one with the highest headline metric. Every
strategy whose value lies inside the best one's 95% interval is "as good as the best" on this
test set; among those, the cheapest is recommended (fewest trainable parameters, then least
adaptation time, then lowest latency).
"""

from dataclasses import dataclass


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
    latency_ms: float
    peak_memory_mb: float
    size_bytes: int

    @property
    def cost_key(self) -> tuple:
        return (self.trainable, self.adapt_seconds, self.latency_ms)


def rows_of(results: list[dict], metric: str, total_parameters: int | None) -> list[Row]:
    """Leaderboard rows sorted best first (ties: the cheaper first)."""
    rows = []
    for r in results:
        score = r["metrics"].get(metric) or {"value": float("nan"), "low": 0.0, "high": 0.0}
        total = r.get("total_parameters") or total_parameters
        trainable = r.get("trainable_parameters", 0)
        rows.append(
            Row(
                name=r["name"],
                kind=r["kind"],
                method=r.get("training", {}).get("method", r["kind"]),
                value=score["value"],
                low=score["low"],
                high=score["high"],
                trainable=trainable,
                trainable_percent=100 * trainable / total if total else 0.0,
                adapt_seconds=r.get("adapt_seconds", 0.0),
                latency_ms=r.get("latency_ms_per_example", 0.0),
                peak_memory_mb=r.get("peak_memory_mb", 0.0),
                size_bytes=r.get("size_bytes", 0),
            )
        )
    return sorted(rows, key=lambda row: (-_finite(row.value), row.cost_key))


@dataclass(frozen=True)
class Recommendation:
    best: Row
    cheapest_equivalent: Row
    equivalent: list[Row]

    def text(self, metric: str) -> str:
        best, cheap = self.best, self.cheapest_equivalent
        lines = [
            f"Best {metric}: {best.name} ({best.value:.3f}, 95% interval "
            f"{best.low:.3f}–{best.high:.3f})."
        ]
        if cheap.name == best.name:
            lines.append(
                f"No cheaper strategy reaches the best one's interval; {best.name} is the pick."
            )
        else:
            lines.append(
                f"Recommended: {cheap.name} ({cheap.value:.3f}) is within the best one's 95% "
                f"interval and cheaper: {_cost(cheap)} against {_cost(best)}. On this test "
                f"set the difference in {metric} is not distinguishable from noise."
            )
        others = [r.name for r in self.equivalent if r.name not in (best.name, cheap.name)]
        if others:
            lines.append(f"Also within the interval: {', '.join(others)}.")
        return " ".join(lines)


def recommend(rows: list[Row]) -> Recommendation:
    scored = [r for r in rows if r.value == r.value]  # drop NaN
    best = max(scored, key=lambda r: (r.value, [-x for x in r.cost_key]))
    equivalent = [r for r in scored if r.value >= best.low]
    cheapest = min(equivalent, key=lambda r: r.cost_key)
    return Recommendation(best, cheapest, equivalent)


def markdown(rows: list[Row], metric: str, recommendation: Recommendation | None) -> str:
    header = (
        f"| rank | strategy | method | {metric} (95% CI) | trainable params | train/search s "
        "| latency ms/example | peak memory MB | size on disk |"
    )
    lines = [header, "| " + " | ".join(["---"] * 9) + " |"]
    for rank, r in enumerate(rows, 1):
        lines.append(
            f"| {rank} | {r.name} | {r.method} | {r.value:.3f} ({r.low:.3f}–{r.high:.3f}) | "
            f"{params_text(r)} | {r.adapt_seconds:.0f} | {r.latency_ms:.0f} | "
            f"{r.peak_memory_mb:.0f} | {size_text(r.size_bytes)} |"
        )
    if recommendation:
        lines += ["", recommendation.text(metric)]
    return "\n".join(lines) + "\n"


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
        f"{row.latency_ms / 1000:.1f} s per test answer"
    )


def _finite(value: float) -> float:
    return value if value == value else float("-inf")
