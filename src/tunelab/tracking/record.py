"""What a tracker receives for one strategy, read from the files the strategy wrote.

Every tracker gets the same thing, so MLflow, trackio, W&B and TensorBoard show the same
numbers: settings as flat parameters, the test metrics with their intervals, the cost figures,
the curves (training loss and dev metric by optimiser step, the prompt search's dev score by
candidate) and the strategy's small files (results, predictions, prompt, trajectory). Weights
stay in the run folder.
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.training.artifacts import (
    METRICS_LOG,
    is_finite_number,
    read_curves,
    read_jsonl_records,
)

ARTIFACTS = (
    "result.json", "metrics.json", "predictions.jsonl", "strategy.yaml", "summary.json",
    METRICS_LOG, "config.json", "search/trajectory.jsonl", "search/best.yaml",
)  # fmt: skip
COSTS = {
    "adapt_seconds": "cost/adapt_seconds",
    "eval_seconds": "cost/eval_seconds",
    "latency_ms_per_example": "cost/latency_ms",
    "examples_per_second": "cost/examples_per_second",
    "prompt_tokens": "cost/prompt_tokens",
    "peak_memory_mb": "cost/peak_memory_mb",
    "size_bytes": "cost/size_bytes",
    "trainable_parameters": "cost/trainable_parameters",
    "total_parameters": "cost/total_parameters",
    "wall_seconds": "cost/wall_seconds",
}
PARAM_LENGTH = 250  # longer settings (a system prompt) are cut here; the full text is a file

Curve = list[tuple[int, float]]  # (step, value)


@dataclass
class TrackedStrategy:
    name: str
    kind: str  # prompt | optimize | train | rerun
    params: dict[str, str]
    metrics: dict[str, float]  # one value each: test metrics, intervals, costs
    curves: dict[str, Curve] = field(default_factory=dict)  # by step (or candidate id)
    artifacts: list[Path] = field(default_factory=list)
    folder: Path | None = None
    cached: bool = False  # finished by an earlier compare; logged again from its files

    def steps(self) -> list[tuple[int, dict[str, float]]]:
        """The curves as one dict per step, for trackers that log a step at a time."""
        by_step: dict[int, dict[str, float]] = {}
        for key, points in self.curves.items():
            for step, value in points:
                by_step.setdefault(step, {})[key] = value
        return sorted(by_step.items())


@dataclass
class TrackedLeaderboard:
    metric: str
    rows: list[dict]  # rank, strategy, method, value, low, high, vs_best, costs
    recommendation: str | None
    files: list[Path]


def strategy_record(
    result: dict, folder: Path, *, cached: bool = False, context: dict[str, str] | None = None
) -> TrackedStrategy:
    """``context``: the experiment's own settings (model, seed, data), as ``experiment.*``."""
    extra = {f"experiment.{k}": _text(v) for k, v in (context or {}).items()}
    return TrackedStrategy(
        name=result["name"],
        kind=result["kind"],
        params=_params(result) | extra,
        metrics=_metrics(result),
        curves=read_curves(folder) | _search_curve(folder),
        artifacts=[folder / name for name in ARTIFACTS if (folder / name).is_file()],
        folder=folder,
        cached=cached,
    )


def leaderboard_record(rows, metric: str, recommendation, out_dir: Path) -> TrackedLeaderboard:
    table = [
        {
            "rank": rank,
            "strategy": r.name,
            "method": r.method,
            metric: r.value,
            "low": r.low,
            "high": r.high,
            "vs_best": r.diff.value if r.diff is not None else None,
            "trainable_parameters": r.trainable,
            "adapt_seconds": r.adapt_seconds,
            "latency_ms": r.latency_ms,
            "examples_per_second": r.throughput,
            "prompt_tokens": r.prompt_tokens,
            "peak_memory_mb": r.peak_memory_mb,
            "size_bytes": r.size_bytes,
        }  # fmt: skip
        for rank, r in enumerate(rows, 1)
    ]
    files = [out_dir / n for n in ("leaderboard.md", "results.json", "report.html")]
    text = recommendation.text(metric) if recommendation is not None else None
    return TrackedLeaderboard(metric, table, text, [f for f in files if f.is_file()])


def _params(result: dict) -> dict[str, str]:
    values = {"kind": result["kind"], "strategy": result["name"]}
    values |= _flat("prompt", {k: v for k, v in result.get("prompt", {}).items() if k != "name"})
    training = result.get("training")
    if training:
        values["method"] = training["method"]
        values |= _flat("train", training.get("settings", {}))
    for key in ("device", "dtype"):
        if result.get(key):
            values[key] = result[key]
    return {k: _text(v) for k, v in values.items() if v is not None and v != [] and v != {}}


def _flat(prefix: str, values: dict) -> dict:
    flat = {}
    for key, value in values.items():
        name = f"{prefix}.{key}"
        if isinstance(value, dict):
            flat |= _flat(name, value)
        else:
            flat[name] = value
    return flat


def _text(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= PARAM_LENGTH else text[: PARAM_LENGTH - 1] + "…"


def _metrics(result: dict) -> dict[str, float]:
    values: dict[str, float] = {}
    for name, score in (result.get("metrics") or {}).items():
        if not isinstance(score, dict):
            continue
        for part, suffix in (("value", ""), ("low", "_low"), ("high", "_high")):
            values[f"test/{name}{suffix}"] = score.get(part)
    for key, name in COSTS.items():
        values[name] = result.get(key)
    search = result.get("search") or {}
    for key in ("candidates", "dev_start", "dev_best", "trials", "dev_default"):
        value = search.get(key)
        values[f"search/{key}"] = value.get("value") if isinstance(value, dict) else value
    return {k: float(v) for k, v in values.items() if is_finite_number(v)}


def _search_curve(folder: Path) -> dict[str, Curve]:
    """The prompt search: each scored candidate's dev score, and the best so far; a
    settings search: each finished trial's dev score by trial number."""
    trials = folder / "search.json"
    if trials.is_file():
        ended = [(t.get("number"), t.get("dev")) for t in _json(trials).get("trials", [])]
        points = [(n, float(v)) for n, v in ended if isinstance(n, int) and is_finite_number(v)]
        return {"search/trial_dev": points} if points else {}
    path = folder / "search" / "trajectory.jsonl"
    if not path.is_file():
        return {}
    scored, best = [], []
    for record in read_jsonl_records(path):
        score = (record.get("dev_score") or {}).get("value")
        if (
            record.get("status") == "scored"
            and is_finite_number(score)
            and isinstance(record.get("id"), int)
        ):
            scored.append((record["id"], float(score)))
            best.append((record["id"], max(float(score), best[-1][1] if best else -math.inf)))
    return {"search/dev_score": scored, "search/best_dev_score": best} if scored else {}


def _json(path: Path) -> dict:
    """A JSON object from ``path`` ({} when unreadable: tracking never stops a compare)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
