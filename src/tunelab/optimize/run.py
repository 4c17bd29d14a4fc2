"""One optimisation run: splits that keep the test set out of the search, a run folder that
survives Ctrl-C and crashes, and the final test comparison of the start and the winner."""

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from tunelab.data.loading import Example
from tunelab.data.splits import split_examples
from tunelab.errors import TuneLabError
from tunelab.evaluation.runner import EvalResult, EvalSettings, evaluate, write_run
from tunelab.optimize.edits import EditSpace
from tunelab.optimize.llm import ChatWriter
from tunelab.optimize.parts import PromptParts
from tunelab.optimize.scoring import DevScorer, ScoreCache
from tunelab.optimize.search import Candidate, Event, PromptSearch, SearchResult, SearchSettings
from tunelab.paths import write_json_atomic, write_text_atomic
from tunelab.prompting.shot_pool import LeftOutShotRows, usable_shot_rows, without_held_out
from tunelab.prompting.strategy import PromptStrategy
from tunelab.runs import RunFolder, check_request, claim, remove_run

# What decides a cached score; search settings (budget, width, racing, operators, the start)
# may change on --resume, so a search can be extended or narrowed without rescoring.
RESUME_KEYS = ("model", "data", "labels", "eval", "metric", "dev_rows", "seed")


@dataclass
class OptimizeSplits:
    pool: list[Example]  # shots come from here
    dev: list[Example]  # every candidate is scored here
    test: list[Example]  # only the start and the winner, after the search
    dropped: int = 0  # training rows removed because the test set holds the same input
    added_shot_rows: int = 0  # how many rows of a shot pool file end ``pool``
    left_out_shot_rows: LeftOutShotRows = field(default_factory=LeftOutShotRows)


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
    kept = without_held_out(train, test)
    if len(kept) < 2:
        raise TuneLabError("after removing rows that are also in the test set, fewer than 2 remain")
    pool, dev = split_examples(kept, dev_rows, seed=seed, stratify=stratify)
    return OptimizeSplits(pool, dev, test, dropped=len(train) - len(kept))


@dataclass(frozen=True)
class SearchOptions:
    """What `tunelab optimize` and an experiment's optimize strategy both set: one set-up."""

    budget: int
    width: int = 1
    operators: tuple[str, ...] | None = None  # None: all; (): none (the LLM writer only)
    max_shots: int = 8
    llm: int = 0  # instructions the writer proposes per beam member and round
    race: int = 0  # dev rows between racing checks (0: every candidate fully)
    dev_rows: float = 200  # rows (>= 1) or share (< 1) of the training data
    proposer_url: str | None = None  # OpenAI-compatible endpoint; None: the local model
    proposer_model: str = "gpt-4o-mini"
    proposer_key_env: str = "OPENAI_API_KEY"


@dataclass
class SearchSetup:
    splits: OptimizeSplits
    space: EditSpace
    settings: SearchSettings


def search_setup(
    train: list[Example],
    test: list[Example],
    labels: list[str] | None,
    options: SearchOptions,
    *,
    seed: int,
    extra_shot_rows: list[Example] | None = None,
) -> SearchSetup:
    """Splits, edit space and search settings, checked before any model is loaded (the
    operator names are checked where they are read: the CLI option, the experiment file).

    ``extra_shot_rows`` (a shot pool) join the rows shots come from, filtered as
    ``usable_shot_rows`` says (against the search's dev rows and the test rows too, so no
    candidate is scored with a dev answer in its prompt).
    """
    if options.operators == () and not options.llm:
        raise TuneLabError("no operators and llm 0 leave nothing to propose")
    dev_rows = int(options.dev_rows) if options.dev_rows >= 1 else options.dev_rows
    if dev_rows >= len(train):
        raise TuneLabError(
            f"dev rows {options.dev_rows:g}: the training data has {len(train)} rows; carve "
            f"fewer (--dev-rows, or dev_rows: in an experiment): a count below {len(train)} "
            "or a share such as 0.3"
        )
    splits = optimization_splits(train, test, dev_rows, seed=seed, stratify=labels is not None)
    if extra_shot_rows:
        extra, left_out = usable_shot_rows(splits.pool, extra_shot_rows, splits.dev + test, labels)
        splits = replace(splits, pool=splits.pool + extra, added_shot_rows=len(extra),
                         left_out_shot_rows=left_out)  # fmt: skip
    space = EditSpace(
        classification=labels is not None,
        max_shots=min(options.max_shots, len(splits.pool)),
        answer_words=_answer_words(splits.pool),
        operators=options.operators,
    )
    settings = SearchSettings(
        budget=options.budget, width=options.width, chunk=options.race,
        llm_proposals=options.llm, seed=seed,
    )  # fmt: skip
    return SearchSetup(splits, space, settings)


def make_writer(options: SearchOptions, loaded) -> ChatWriter | None:
    """The instruction writer: an endpoint when given, else the model being optimised."""
    if not options.llm:
        return None
    from tunelab.optimize.llm import EndpointWriter, LocalWriter

    if options.proposer_url:
        return EndpointWriter(
            options.proposer_url, options.proposer_model, options.proposer_key_env
        )
    return LocalWriter(loaded.model, loaded.tokenizer)


def _answer_words(pool: list[Example]) -> int:
    """A length limit near the typical reference: the median word count, rounded up to 10."""
    counts = sorted(len(e.output.split()) for e in pool) or [40]
    return max(10, -(-counts[len(counts) // 2] // 10) * 10)


def check_run_dir(run_dir: Path, config: dict, *, resume: bool, overwrite: bool) -> RunFolder:
    """May this search write to ``run_dir``? Changes nothing (see :func:`start_run_dir`)."""
    folder = check_request(run_dir, "optimize", resume=resume, overwrite=overwrite)
    if folder.state == "new" or overwrite:
        return folder
    if not resume:
        raise TuneLabError(
            f"{run_dir}: holds an optimize run; pass --resume to continue it, --overwrite to "
            "start again, or choose another --out"
        )
    stored_path = run_dir / "config.json"
    if stored_path.is_file():
        stored = json.loads(stored_path.read_text(encoding="utf-8"))
        changed = [k for k in RESUME_KEYS if stored.get(k) != config.get(k)]
        if changed:
            raise TuneLabError(
                f"{run_dir}: --resume needs the same model, data and scoring settings as "
                f"the earlier run; different: {', '.join(changed)}"
            )
    return folder


def start_run_dir(run_dir: Path, config: dict, *, overwrite: bool) -> None:
    """Write the folder once every check passed: ``overwrite`` removes the old run first."""
    if overwrite:
        remove_run(run_dir, "optimize")
    claim(run_dir, "optimize")
    write_json_atomic(run_dir / "config.json", config)  # this round's search settings


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
