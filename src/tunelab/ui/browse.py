"""What ``tunelab ui`` shows, read from run folders and never written to.

Kept apart from the web page so each view is a plain function of a folder: the experiments and
trained runs under a folder, an experiment's leaderboard and plots, answers side by side with
the references and their scores, a run's training curves, and a running comparison's progress.
"""

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from tunelab.compare.leaderboard import (
    diff_text,
    ms_text,
    params_text,
    per_example_scores,
    recommend,
    rows_of,
    size_text,
)
from tunelab.compare.progress import PROGRESS_FILE
from tunelab.compare.report import read_predictions
from tunelab.paths import process_alive
from tunelab.runs import read_marker
from tunelab.training.artifacts import read_curves

DEPTH = 3  # how deep below the folder experiments and runs are looked for
LEADERBOARD_COLUMNS = [
    "#", "strategy", "method", "score (95% CI)", "vs best (paired)", "trainable",
    "train s", "ms/answer", "ex/s", "prompt tok", "peak MB", "size",
]  # fmt: skip


@dataclass(frozen=True)
class Experiment:
    folder: Path
    name: str
    metric: str
    results: list[dict]  # each strategy's result.json, as results.json lists them
    labels: list[str] | None
    model: str
    prefer: str | None = None  # which cost decides the recommendation (as in compare)

    def strategy_folder(self, name: str) -> Path:
        return self.folder / name


def label_of(root: Path, folder: Path) -> str:
    """How a folder is named on the page: its path below ``root`` ("." for ``root`` itself)."""
    return folder.relative_to(root).as_posix()


def find_runs(root: Path, kind: str) -> list[Path]:
    """Folders under ``root`` (itself included) marked as ``kind`` runs, sorted by path."""
    found = []
    for folder, subfolders, _ in os.walk(root):
        path = Path(folder)
        depth = len(path.relative_to(root).parts)
        marker = read_marker(path)
        if marker is not None and marker["kind"] == kind:
            found.append(path)
        subfolders[:] = [] if depth >= DEPTH else sorted(
            s for s in subfolders if not s.startswith(".") and s != "checkpoints"
        )  # fmt: skip
    return sorted(found)


def load_experiment(folder: Path) -> Experiment | None:
    """A finished comparison (its results.json), else None."""
    results_path, record_path = folder / "results.json", folder / "experiment.json"
    if not results_path.is_file():
        return None
    results = json.loads(results_path.read_text(encoding="utf-8"))
    record = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else {}
    settings = record.get("experiment", {})
    return Experiment(
        folder, settings.get("name", folder.name), results["metric"], results["results"],
        record.get("labels"), settings.get("model", ""), settings.get("prefer"),
    )  # fmt: skip


def results_stamp(folder: Path) -> float:
    """When the comparison's leaderboard was last written (0: not yet)."""
    path = folder / "results.json"
    return path.stat().st_mtime if path.is_file() else 0.0


def leaderboard(experiment: Experiment):
    """(rows as table cells, the recommendation's text, the Row objects for plots)."""
    predictions = {r["name"]: read_predictions(experiment.folder / r["name"])
                   for r in experiment.results}  # fmt: skip
    total = next((r["total_parameters"] for r in experiment.results if r.get("total_parameters")),
                 None)  # fmt: skip
    rows = rows_of(experiment.results, experiment.metric, total, predictions, experiment.labels)
    cells = [
        [rank, r.name, r.shown_method, f"{r.value:.3f} ({r.low:.3f}–{r.high:.3f})", diff_text(r),
         params_text(r), f"{r.adapt_seconds:.0f}", ms_text(r), f"{r.throughput:.2f}",
         f"{r.prompt_tokens:.0f}", f"{r.peak_memory_mb:.0f}", size_text(r.size_bytes)]
        for rank, r in enumerate(rows, 1)
    ]  # fmt: skip
    recommendation = recommend(rows, experiment.prefer) if rows else None
    text = recommendation.text(experiment.metric) if recommendation else ""
    return cells, text, rows


def answers(
    experiment: Experiment, first: str, second: str | None = None, disagreements: bool = False
) -> tuple[list[str], list[list]]:
    """Headers and rows: input, reference, each strategy's answer and score. ``disagreements``
    keeps the rows where the two strategies' scores differ (one strategy: where it is not
    fully right). A corpus metric (macro-F1, BLEU ...) has no per-row score: rows show
    whether the answer was right (``correct``) instead."""
    names = [first] + ([second] if second and second != first else [])
    tables = {n: read_predictions(experiment.strategy_folder(n)) for n in names}
    column = experiment.metric
    scores = {n: per_example_scores(tables[n], column) if tables[n] else None for n in names}
    if any(scores[n] is None for n in names):
        column = "correct"
        scores = {n: [float(r.get("correct", 0)) for r in tables[n]] for n in names}
    headers = ["#", "input", "reference"]
    for name in names:
        headers += [f"{name} answer", f"{name} {column}"]
    rows = []
    for index, row in enumerate(tables[first]):
        cells, values = [index + 1, row["input"], row["reference"]], []
        for name in names:
            other = tables[name][index] if index < len(tables[name]) else {}
            value = scores[name][index] if scores[name] and index < len(scores[name]) else None
            values.append(value)
            cells += [other.get("prediction", ""), "-" if value is None else round(value, 3)]
        if disagreements and not _disagree(values):
            continue
        rows.append(cells)
    return headers, rows


def _disagree(values: list[float | None]) -> bool:
    if len(values) == 1:
        return values[0] is None or values[0] < 1
    return values[0] != values[1]


def curves_figure(run_folder: Path):
    """The run's training loss and dev metrics by optimiser step, or None without any."""
    from matplotlib.figure import Figure

    curves = read_curves(run_folder)
    if not curves:
        return None
    loss = {k: v for k, v in curves.items() if k == "train/loss"}
    dev = {k: v for k, v in curves.items() if k.startswith("dev/")}
    fig = Figure(figsize=(11 if dev else 6, 3.8))
    axes = fig.subplots(1, 2 if dev else 1, squeeze=False)
    panels = [(axes[0][0], loss, "training loss")] + (
        [(axes[0][1], dev, "dev metric")] if dev else []
    )
    for ax, group, label in panels:
        for name, points in group.items():
            ax.plot(*zip(*points, strict=True), marker=".", label=name)
        ax.set_xlabel("optimiser step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if group:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def progress_text(folder: Path) -> str:
    """A running (or stopped) comparison's progress.json in a few lines of Markdown."""
    path = folder / PROGRESS_FILE
    if not folder.is_dir():
        return f"{folder} is gone."
    if not path.is_file():
        return "No progress recorded (started before this TuneLab version, or never run)."
    state = json.loads(path.read_text(encoding="utf-8"))
    status = state["state"]
    running = status == "running"
    if running and state.get("host", socket.gethostname()) != socket.gethostname():
        status = f"running on {state['host']} (as of its last update)"
    elif running and not (isinstance(state.get("pid"), int) and process_alive(state["pid"])):
        running = False
        status = "stopped (its process is gone; run the same compare to continue)"
    strategies = state["strategies"]
    done = sum(s["status"] in ("done", "cached") for s in strategies)
    lines = [f"**{status}** · {done} of {len(strategies)} strategies finished"]
    current = state.get("current")
    if current and running:
        index = [s["name"] for s in strategies].index(current["name"]) + 1
        total = current["total"]
        part = f"· {current['phase']} {current['done']}/{total}" if total else ""
        lines.append(f"strategy {index} of {len(strategies)}: **{current['name']}** {part}")
        if total:
            filled = int(20 * min(current["done"] / total, 1))
            lines.append(f"`[{'#' * filled}{'.' * (20 - filled)}]`")
    left = state.get("seconds_left")
    if running and left is not None:
        lines.append(f"about {_duration(left)} left (from the plan's measured estimates)")
    lines.append(f"updated {_duration(time.time() - state['updated_at'])} ago")
    listing = "\n".join(
        f"- {s['name']} ({s['kind']}): "
        + (s["status"] if running or s["status"] != "running" else "stopped")
        for s in strategies
    )
    return "\n\n".join(lines) + "\n\n" + listing


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
