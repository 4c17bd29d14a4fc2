"""One optimisation run: splits that keep the test set out of the search, a run folder that
survives Ctrl-C and crashes, and the final test comparison of the start and the winner."""

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tunelab.data.loading import Example
from tunelab.data.splits import split_examples
from tunelab.data.stats import normalize_text
from tunelab.errors import TuneLabError
from tunelab.evaluation.runner import EvalResult, EvalSettings, evaluate, write_run
from tunelab.optimize.edits import EditSpace
from tunelab.optimize.llm import ChatWriter
from tunelab.optimize.parts import PromptParts
from tunelab.optimize.scoring import DevScorer, ScoreCache
from tunelab.optimize.search import Candidate, Event, PromptSearch, SearchResult, SearchSettings
from tunelab.paths import write_json_atomic, write_text_atomic
from tunelab.prompting.strategy import PromptStrategy

# What decides a cached score; search settings (budget, width, racing, operators, the start)
# may change on --resume, so a search can be extended or narrowed without rescoring.
RESUME_KEYS = ("model", "data", "labels", "eval", "metric", "dev_rows", "seed")


@dataclass
class OptimizeSplits:
    pool: list[Example]  # shots come from here
    dev: list[Example]  # every candidate is scored here
    test: list[Example]  # only the start and the winner, after the search
    dropped: int = 0  # training rows removed because the test set holds the same input


def optimization_splits(
    train: list[Example],
    test: list[Example],
    dev_rows: float | int,
    *,
    seed: int,
    stratify: bool,
) -> OptimizeSplits:
    """Carve the dev split from the training data; no test input may reach the search.

    A training row whose input also appears in the test set would let a few-shot prompt copy
    the answer, or let the search tune on test; such rows are dropped and counted.
    """
    held_out = {normalize_text(e.input) for e in test}
    kept = [e for e in train if normalize_text(e.input) not in held_out]
    if len(kept) < 2:
        raise TuneLabError("after removing rows that are also in the test set, fewer than 2 remain")
    pool, dev = split_examples(kept, dev_rows, seed=seed, stratify=stratify)
    return OptimizeSplits(pool, dev, test, dropped=len(train) - len(kept))


def prepare_run_dir(run_dir: Path, config: dict, *, resume: bool, overwrite: bool) -> None:
    """A new folder, or the interrupted run's folder when ``--resume`` and nothing changed."""
    stored_path = run_dir / "config.json"
    if run_dir.exists() and any(run_dir.iterdir()):
        if resume and stored_path.exists():
            stored = json.loads(stored_path.read_text(encoding="utf-8"))
            changed = [k for k in RESUME_KEYS if stored.get(k) != config.get(k)]
            if changed:
                raise TuneLabError(
                    f"{run_dir}: --resume needs the same model, data and scoring settings as "
                    f"the earlier run; different: {', '.join(changed)}"
                )
            write_json_atomic(stored_path, config)  # the search settings of this round
            return
        if not overwrite:
            raise TuneLabError(
                f"{run_dir}: folder exists; pass --resume to continue it or --overwrite"
            )
        shutil.rmtree(run_dir)
    elif resume:
        raise TuneLabError(f"{run_dir}: nothing to resume")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(stored_path, config)


@dataclass
class RunFolder:
    """Keeps trajectory.jsonl and best.yaml current after every candidate (atomic writes)."""

    path: Path
    records: dict[int, dict] = field(default_factory=dict)

    @property
    def cache_path(self) -> Path:
        return self.path / "cache.jsonl"

    def candidate_finished(self, candidate: Candidate) -> None:
        self.records[candidate.id] = candidate.record()
        lines = (json.dumps(r, ensure_ascii=False) for _, r in sorted(self.records.items()))
        write_text_atomic(self.path / "trajectory.jsonl", "".join(line + "\n" for line in lines))

    def new_best(self, candidate: Candidate, name: str) -> None:
        write_strategy(self.path / "best.yaml", candidate.parts.to_strategy(name))


def write_strategy(path: Path, strategy: PromptStrategy) -> None:
    """A strategy file that `tunelab eval --prompt` and `tunelab train --prompt` read."""
    text = yaml.safe_dump(strategy.model_dump(), sort_keys=False, allow_unicode=True, width=100)
    write_text_atomic(path, text)


def search_prompt(
    loaded,
    start: PromptParts,
    splits: OptimizeSplits,
    labels: list[str] | None,
    eval_settings: EvalSettings,
    metric: str,
    settings: SearchSettings,
    space: EditSpace,
    run_dir: Path,
    *,
    writer: ChatWriter | None = None,
    on_event: Event | None = None,
    on_progress=None,
    best_name: str = "optimized",
) -> SearchResult:
    """Search from ``start`` with scores cached in ``run_dir``; trajectory and best.yaml are
    rewritten after every candidate, so an interruption leaves a usable folder."""
    run_dir.mkdir(parents=True, exist_ok=True)
    folder = RunFolder(run_dir)
    scorer = DevScorer(
        loaded.model, loaded.tokenizer, splits.pool, labels, eval_settings, metric,
        ScoreCache(folder.cache_path),
    )  # fmt: skip

    def record(event: str, candidate: Candidate) -> None:
        if event == "finished":
            folder.candidate_finished(candidate)
        elif event == "improved":
            folder.new_best(candidate, best_name)
        if on_event:
            on_event(event, candidate)

    search = PromptSearch(
        scorer, splits.dev, space, settings, writer=writer, writer_examples=splits.pool,
        on_event=record, on_progress=on_progress,
    )  # fmt: skip
    result = search.run(start)
    folder.new_best(result.best, best_name)
    result.cache = scorer.cache
    return result


def evaluate_on_test(
    loaded,
    strategies: dict[str, PromptStrategy],
    splits: OptimizeSplits,
    labels: list[str] | None,
    settings: EvalSettings,
    run_dir: Path,
    on_progress=None,
) -> dict[str, EvalResult]:
    """Score each distinct strategy once on the test set; write test-<role>/ run folders."""
    results: dict[str, EvalResult] = {}
    done: dict[str, EvalResult] = {}
    for role, strategy in strategies.items():
        key = strategy.model_dump_json(exclude={"name"})
        if key not in done:
            done[key] = evaluate(
                loaded.model,
                loaded.tokenizer,
                strategy,
                splits.test,
                train=splits.pool,
                labels=labels,
                settings=settings,
                on_progress=on_progress,
            )
        results[role] = done[key]
        write_run(run_dir / f"test-{role}", results[role], {"strategy": strategy.model_dump()})
    return results


def summary(result: SearchResult, metric: str, test: dict[str, EvalResult] | None, cache) -> dict:
    """result.json: where the search started and ended, and what it cost."""
    statuses = [c.status for c in result.candidates]
    out = {
        "metric": metric,
        "stop_reason": result.stop_reason,
        "rounds": result.rounds,
        "candidates": len(result.candidates),
        "by_status": {s: statuses.count(s) for s in sorted(set(statuses))},
        "dev_examples_scored": cache.misses,
        "dev_examples_from_cache": cache.hits,
        "search_seconds": round(result.seconds, 1),
        "start": {"id": result.start.id, "dev": result.start.score},
        "best": {
            "id": result.best.id,
            "dev": result.best.score,
            "path": lineage(result.best, result.candidates),
        },
    }
    if test:
        key = "accuracy" if metric == "accuracy" else metric
        for role in ("start", "best"):
            metrics = test[role].metrics
            out[role]["test"] = metrics.get(key) or next(iter(metrics.values()))
    return out


def lineage(candidate: Candidate, candidates: list[Candidate]) -> list[str]:
    """The changes that lead from the start to ``candidate``, in order."""
    by_id = {c.id: c for c in candidates}
    steps = []
    while candidate.parent is not None:
        steps.append(candidate.change)
        candidate = by_id[candidate.parent]
    return steps[::-1]
