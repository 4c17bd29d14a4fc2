"""Run every strategy of an experiment on the same splits; skip the ones already finished.

Each strategy writes its own folder under the experiment folder and, last of all, its
``result.json``: the marker that it finished. A rerun skips every strategy with that file, so
a crash or Ctrl-C loses at most the strategy in progress (and a training run continues from
its latest checkpoint).
"""

import contextlib
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from tunelab.compare.experiment import Experiment, StrategySpec, known_prompt
from tunelab.compare.progress import ProgressFile
from tunelab.data.loading import Example
from tunelab.errors import TuneLabError
from tunelab.evaluation.metrics import JSON_METRICS, is_json_task
from tunelab.evaluation.runner import (
    EvalResult,
    EvalSettings,
    check_constraint,
    check_vote,
    evaluate,
    resolve_modes,
    write_predictions,
    write_run,
)
from tunelab.generation import GenerationConfig
from tunelab.models.device import resolve_placement
from tunelab.paths import write_json_atomic
from tunelab.prompting import PromptStrategy, load_strategy
from tunelab.prompting.strategy import without_later_fields
from tunelab.provenance import file_record, git_commit, package_versions, sha256_of
from tunelab.runs import claim, nested_runs, read_marker, remove_run, writing_parts_of
from tunelab.training.config import check_training_prompt, without_later_defaults
from tunelab.training.data import TrainData, load_train_data
from tunelab.training.trainer import ReportSteps, peak_memory_mb, reset_peak_memory

RESULT_FILE = "result.json"
LATENCY_ROWS = 8  # test rows answered one at a time per strategy to time one request


def load_experiment_data(experiment: Experiment) -> TrainData:
    spec = experiment.data
    return load_train_data(
        spec.train, spec.input, spec.output, spec.labels, dev=spec.dev, dev_size=spec.dev_size,
        test=spec.test, test_size=spec.test_size, seed=experiment.seed,
        shot_pool=spec.shot_pool, embedder=experiment_embedder(experiment),
    )  # fmt: skip


def experiment_embedder(experiment: Experiment) -> str:
    """What the experiment's similar shots are retrieved with: its tuned retriever, or MiniLM."""
    retriever = experiment.data.retriever
    return str(retriever) if retriever is not None else "auto"


def check_strategy_prompt(spec: StrategySpec, settings, strategy: PromptStrategy) -> None:
    """A training strategy's prompt can be trained on (tunelab.training.config), or a
    one-line error naming the strategy and where its prompt came from."""
    try:
        check_training_prompt(settings, strategy)
    except TuneLabError as err:
        source = f" (prompt from {spec.prompt_from})" if spec.prompt_from else ""
        raise TuneLabError(f"{spec.name}{source}: {err}") from None


def check_votes(experiment: Experiment, data: TrainData) -> None:
    """A strategy with a neighbour vote is scored by label (tunelab.evaluation.runner
    check_vote): refused before any strategy runs, naming it, where its prompt is known."""
    _check_known_prompts(
        experiment, data, experiment.strategies, lambda prompt: prompt.knn_weight, check_vote
    )


def check_constraints(experiment: Experiment, data: TrainData, specs: list) -> None:
    """A constraint shapes generated answers (check_constraint): a strategy whose answers are
    scored by label is refused before any strategy runs, naming it (not when its turn comes)."""
    _check_known_prompts(
        experiment, data, specs, lambda prompt: prompt.constrain is not None,
        lambda prompt, modes, _labels: check_constraint(prompt, modes),
    )  # fmt: skip


def _check_known_prompts(experiment: Experiment, data: TrainData, specs, applies, check) -> None:
    """``check(prompt, modes, labels)`` for each of ``specs`` whose prompt the experiment
    states (with the strategy's own constrain) and ``applies`` to; a refusal names it. A
    prompt a search refines first is checked when it runs."""
    for spec in specs:
        prompt = known_prompt(experiment, spec)
        if prompt is not None and spec.constrain:
            prompt = prompt.model_copy(update={"constrain": spec.constrain[0]})
        if prompt is None or not applies(prompt):
            continue
        try:
            check(prompt, resolve_modes(experiment.eval.mode, data.labels, prompt.cot), data.labels)
        except TuneLabError as err:
            raise TuneLabError(f"{spec.name}: {err}") from None


def check_metrics(experiment: Experiment, data: TrainData) -> None:
    """Every listed metric must be one the evaluation produces for this kind of task."""
    json_task = json_answers(data)
    if data.labels is not None:
        known = ["accuracy", "macro_f1"]
    else:
        known = ["rouge_l", "embedding_similarity", "token_f1", "exact_match", "bleu", "chrf"]
    if json_task:
        known = list(JSON_METRICS)  # JSON answers are not scored as text
    if experiment.eval.checklist_field:
        known.append("checklist")
    if experiment.eval.format_regex or (experiment.eval.format_schema and not json_task):
        known.append("format_compliance")
    unknown = [m for m in experiment.metrics if m not in known]
    if unknown:
        kind = "classification" if data.labels is not None else "JSON" if json_task else "free-text"
        raise TuneLabError(
            f"metrics: {', '.join(unknown)} not available for this {kind} task; choose from "
            f"{', '.join(known)}"
            + ("" if experiment.eval.checklist_field else " (checklist needs eval.checklist_field)")
        )


def json_answers(data: TrainData) -> bool:
    """No label set, and every test and dev answer is a JSON object or array (the dev split
    is where training keeps its best epoch by a JSON metric)."""
    return data.labels is None and is_json_task([e.output for e in data.test + data.dev])


def headline_metric(experiment: Experiment, data: TrainData) -> str:
    if experiment.metrics:
        return experiment.metrics[0]
    if data.labels is not None:
        return "accuracy"
    return "json_match" if json_answers(data) else "rouge_l"


def eval_settings(experiment: Experiment) -> EvalSettings:
    from tunelab.generation.constraints import read_schema

    spec = experiment.eval
    return EvalSettings(
        format_schema=read_schema(spec.format_schema) if spec.format_schema else None,
        format_regex=spec.format_regex,
        mode=spec.mode,
        generation=GenerationConfig(
            max_new_tokens=spec.max_new_tokens, batch_size=spec.batch_size, seed=experiment.seed
        ),
        seed=experiment.seed,
        checklist_field=spec.checklist_field,
        latency_rows=LATENCY_ROWS,
        embedder=experiment_embedder(experiment),
    )


def experiment_record(experiment: Experiment, data: TrainData) -> dict:
    """What reproduces the experiment: settings, data hashes, versions, commit."""
    return {
        "experiment": json.loads(experiment.model_dump_json()),
        "data": {role: file_record(path) for role, path in data.files.items()},
        "sizes": {
            "train": len(data.train),
            "dev": len(data.dev),
            "test": len(data.test),
            "extra_shot_rows": len(data.extra_shot_rows),
        },
        "labels": data.labels,
        "placement": resolve_placement(experiment.device, experiment.dtype).record(),
        "versions": package_versions(),
        "git_commit": git_commit(),
    }


def finished_result(folder: Path) -> dict | None:
    path = folder / RESULT_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


Progress = Callable[[str], None]


class ExperimentRunner:
    """Runs strategies in file order; the base model is loaded once for prompt strategies."""

    def __init__(self, experiment: Experiment, data: TrainData, out: Path, console=None):
        self.experiment, self.data, self.out, self.console = experiment, data, out, console
        # every strategy on the same device and dtype, so costs compare
        self.placement = resolve_placement(experiment.device, experiment.dtype)
        self.settings = eval_settings(experiment)
        self._base = None
        self.prompts: dict[str, PromptStrategy] = {}  # each strategy's final prompt
        self.progress: ProgressFile | None = None  # progress.json, while a compare runs

    def spec_key(self, spec: StrategySpec) -> str:
        """Everything that decides this strategy's result; a finished result with another
        key is stale (the experiment file or the data changed) and runs again."""
        source = spec.prompt_from or spec.run_from
        pool = self.uses_shot_pool(spec)  # else adding a pool keeps this result current
        retrieval = ("shot_pool", "retriever")  # they count only where shots are drawn
        hashes = {
            role: sha256_of(path) for role, path in self.data.files.items() if role not in retrieval
        }
        if pool and self.data.extra_shot_rows:  # the rows kept, not the file: a moved file
            hashes["shot_pool"] = _rows_hash(self.data.extra_shot_rows)  # or new rules count
        if pool and self.data.retriever is not None:  # its weights, wherever the folder is
            hashes["retriever"] = sha256_of(self.data.files["retriever"])
        if self.experiment.eval.format_schema is not None:
            hashes["format_schema"] = sha256_of(self.experiment.eval.format_schema)
        later = ("run_from", "constrain", "search", "trial")
        dumped = spec.model_dump(mode="json", exclude=_unset(spec, later))
        if dumped.get("train"):
            dumped["train"] = without_later_defaults(dumped["train"])
        if dumped.get("prompt"):
            dumped["prompt"] = without_later_fields(dumped["prompt"])
        parts = {
            # settings added later count only when set, so older results stay current
            "spec": dumped,
            "model": self.experiment.model,
            "task_prefix": self.experiment.task_prefix,
            "seed": self.experiment.seed,
            "placement": self.placement.record(),  # results on another device are others
            "eval": self.experiment.eval.model_dump(
                mode="json", exclude=_unset(self.experiment.eval, ("format_schema", "format_regex"))
            ),
            "data": self.experiment.data.model_dump(mode="json", exclude=set(retrieval)),
            # (the pool counts by the rows kept from it, the retriever by its weights: hashes)
            "hashes": hashes,
            "source": self.spec_key(self.experiment.strategy(source)) if source else None,
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    def uses_shot_pool(self, spec: StrategySpec) -> bool:
        """Whether the experiment's shot pool can change this strategy's result: its prompt
        holds shots, its source's can, or it is a prompt search (whose edits, answer length
        and instruction writer all read the pool)."""
        if spec.kind == "optimize":
            return True
        if spec.run_from or spec.prompt_from:
            return self.uses_shot_pool(self.experiment.strategy(spec.run_from or spec.prompt_from))
        if spec.prompt_file:
            return load_strategy(spec.prompt_file).shots > 0
        return spec.prompt is not None and spec.prompt.shots > 0

    def finished(self, spec: StrategySpec) -> dict | None:
        """The stored result when it is current, else None. A prompt file counts by its
        contents (results stored before they were recorded count by its path only)."""
        done = finished_result(self.out / spec.name)
        if not done or done.get("spec_key") != self.spec_key(spec):
            return None
        files = done.get("prompt_files")
        return done if files is None or files == self.prompt_file_hashes(spec) else None

    def state(self, spec: StrategySpec) -> str:
        """What running the strategy now will do with its folder, in words for the plan."""
        if self.finished(spec) is not None:
            return "reused (finished, current)"
        folder = self.out / spec.name
        if not folder.is_dir() or not any(folder.iterdir()):
            return "new"
        marker = read_marker(folder)
        if marker is None:
            if spec.kind == "train":  # train_run refuses a folder it did not write
                return f"refused: {folder} holds files TuneLab did not write; move them away"
            return "new, beside the files already in its folder"
        strays = nested_runs(folder)  # they stop only a removal of the folder
        refused = (
            f"refused: its folder holds another run, {strays[0]}; move it out" if strays else ""
        )
        if marker["kind"] != _FOLDER_KIND["search" if spec.search else spec.kind]:
            other = marker["kind"]
            return refused or f"starts afresh: its folder holds a run of another kind ({other})"
        resumes = self._resumable(spec, folder) if spec.kind == "train" else None
        if resumes is False:
            return refused or "starts afresh (its earlier run had other settings or none)"
        if finished_result(folder):
            return "runs again (its settings, data, prompt files or device changed since)"
        if resumes:
            return "resumes its interrupted run"
        if spec.kind in ("train", "optimize"):
            return "resumes its interrupted run (starts afresh if its settings changed)"
        return "runs again (its earlier run did not finish)"

    def _resumable(self, spec: StrategySpec, folder: Path) -> bool | None:
        """Whether an interrupted training run continues; None where only running tells (a
        prompt another strategy refines first, a folder that cannot be read now)."""
        from tunelab.training.run import can_resume, default_training_strategy
        from tunelab.training.search import same_search

        try:
            settings = self.train_settings(spec)
            strategy = self._strategy_of(spec, default=default_training_strategy(spec.name))
            model = self.experiment.model
            if spec.search:
                return same_search(folder, settings, self.data, strategy, model, spec.search)
            return can_resume(folder, settings, self.data, strategy, model)
        except (TuneLabError, KeyError, ValueError, OSError, AttributeError, TypeError):
            return None

    def prompt_file_hashes(self, spec: StrategySpec) -> dict[str, str]:
        """The contents of every prompt file the strategy's prompt is read from (its own, and
        along prompt_from / run_from), by strategy name: an edited file makes it stale."""
        hashes = {}
        while spec is not None:
            if spec.prompt_file:
                hashes[spec.name] = sha256_of(spec.prompt_file)
            source = spec.prompt_from or spec.run_from
            spec = self.experiment.strategy(source) if source else None
        return hashes

    def run(self, spec: StrategySpec) -> dict:
        folder = self.out / spec.name
        done = self.finished(spec)
        if done is not None:
            self.prompts[spec.name] = PromptStrategy.model_validate(done["prompt"])
            return done
        # as read now, before hours of training: a file edited meanwhile makes it stale
        key, prompt_files = self.spec_key(spec), self.prompt_file_hashes(spec)
        reset_peak_memory()
        began = time.perf_counter()
        kind_runner = {
            "prompt": self._prompt, "optimize": self._optimize, "train": self._train,
            "rerun": self._rerun,
        }  # fmt: skip
        with writing_parts_of(self.out):
            _clear_stale(folder, "search" if spec.search else spec.kind)
            result = kind_runner[spec.kind](spec, folder)
        result.update(
            name=spec.name,
            kind=spec.kind,
            spec_key=key,
            prompt_files=prompt_files,
            wall_seconds=round(time.perf_counter() - began, 1),
            finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
        )
        self.prompts[spec.name] = PromptStrategy.model_validate(result["prompt"])
        write_json_atomic(folder / RESULT_FILE, result)
        return result

    # -- the three kinds -------------------------------------------------------------------

    def _prompt(self, spec: StrategySpec, folder: Path) -> dict:
        strategy = self._strategy_of(spec, default=PromptStrategy(name=spec.name))
        final = self._evaluate_base(strategy)
        write_run(claim(folder, "eval"), final, {"strategy": strategy.model_dump()})
        size = _size(folder / "strategy.yaml")
        total = self._base_parameters()
        return self._record(final, strategy, adapt_seconds=0.0, trainable=0, total=total, size=size)

    def _optimize(self, spec: StrategySpec, folder: Path) -> dict:
        from tunelab.optimize.parts import parts_of
        from tunelab.optimize.run import make_writer, search_prompt, search_setup

        start = self._strategy_of(spec, default=PromptStrategy(name=spec.name))
        setup = search_setup(
            self.data.train + self.data.dev, self.data.test, self.data.labels,
            spec.optimize.search_options(), seed=self.experiment.seed,
            extra_shot_rows=self.data.extra_shot_rows,
        )  # fmt: skip
        loaded = self._base_model()
        search_dir = _search_folder(claim(folder, "optimize"), self.spec_key(spec))
        began = time.perf_counter()
        result = search_prompt(
            loaded, parts_of(start, setup.space.classification), setup.splits, self.data.labels,
            self.settings, self._search_metric(), setup.settings, setup.space, search_dir,
            writer=make_writer(spec.optimize.search_options(), loaded),
            on_event=self._search_event(spec.name, spec.optimize.search_options().budget),
        )  # fmt: skip
        search_seconds = time.perf_counter() - began
        best = result.best.parts.to_strategy(spec.name)
        final = self._evaluate_base(best, pool=setup.splits.pool)
        write_run(folder, final, {"strategy": best.model_dump()})
        size, total = _size(folder / "strategy.yaml"), self._base_parameters()
        record = self._record(
            final, best, adapt_seconds=search_seconds, trainable=0, total=total, size=size
        )
        record["search"] = {
            "candidates": len(result.candidates),
            "dev_start": result.start.score,
            "dev_best": result.best.score,
        }
        return record

    def train_settings(self, spec: StrategySpec):
        """The strategy's resolved training settings; prefix and seed default to the
        experiment's."""
        from tunelab.training.config import make_settings

        values = spec.train.model_dump(exclude_unset=True)
        values.setdefault("task_prefix", self.experiment.task_prefix)
        values.setdefault("seed", self.experiment.seed)
        return make_settings(**values).resolved(
            self.data.labels is not None, json_answers(self.data)
        )

    def _train(self, spec: StrategySpec, folder: Path) -> dict:
        from tunelab.training import artifacts
        from tunelab.training.run import can_resume, default_training_strategy, train_run

        settings = self.train_settings(spec)
        strategy = self._strategy_of(spec, default=default_training_strategy(spec.name))
        check_strategy_prompt(spec, settings, strategy)
        data = self.data
        if spec.search:
            return self._train_search(spec, folder, settings, strategy, data)
        # An interrupted run with the same settings continues; one whose strategy was edited
        # since starts again.
        resume = can_resume(folder, settings, data, strategy, self.experiment.model)
        outcome = train_run(
            settings, data, strategy, self.experiment.model, folder,
            resume=resume, overwrite=not resume and folder.exists(), console=self.console,
            final_eval=self.settings, placement=self.placement,
            callbacks=(ReportSteps(self._report),),
        )  # fmt: skip
        summary = outcome.summary
        record = self._record(
            outcome.final, strategy, adapt_seconds=summary["train_seconds"],
            trainable=summary["trainable_parameters"], total=summary["total_parameters"],
            size=_weights_size(folder / artifacts.ADAPTER_DIR),
        )  # fmt: skip
        record["training"] = {
            "method": settings.method,
            "settings": settings.model_dump(),
            "steps": summary["steps"],
            "tokens_per_second": summary["tokens_per_second"],
        }
        record["peak_memory_mb"] = max(record["peak_memory_mb"], summary["peak_memory_mb"])
        return record

    def _train_search(self, spec, folder: Path, settings, strategy, data) -> dict:
        """Tune the settings on dev (tunelab.training.search), then the best trial is this
        strategy's run; an interrupted search continues, an edited one starts again."""
        from tunelab.training.search import run_search, same_search

        resume = same_search(folder, settings, data, strategy, self.experiment.model, spec.search)
        outcome = run_search(
            settings, data, strategy, self.experiment.model, folder, spec.search,
            resume=resume, overwrite=not resume and folder.exists(), console=self.console,
            final_eval=self.settings, placement=self.placement,
            callbacks=(ReportSteps(self._report),),
        )  # fmt: skip
        best = outcome.summary["best"]
        # the tuned row's answers where every strategy keeps them (paired tests, the report)
        write_predictions(folder / "predictions.jsonl", outcome.best_test.predictions)
        cost = _run_costs(outcome.best_dir)
        record = self._record(
            outcome.best_test, strategy, adapt_seconds=outcome.summary["search_seconds"],
            trainable=cost["trainable_parameters"], total=cost["total_parameters"],
            size=cost["size_bytes"],
        )  # fmt: skip
        record["training"] = {
            "method": settings.method,
            "settings": json.loads((outcome.best_dir / "config.json").read_text())["settings"],
            "steps": cost["steps"],
            "tokens_per_second": cost["tokens_per_second"],
        }
        record["peak_memory_mb"] = max(record["peak_memory_mb"], cost["peak_memory_mb"])
        record["search_trials"] = outcome.summary["trials"]
        record["search"] = {
            "trials": len(outcome.summary["trials"]),
            "best_trial": best["number"],
            "best_params": best["params"],
            "dev_best": best["dev"],
            "dev_default": (outcome.summary.get("default") or {}).get("dev"),
        }
        return record

    def _rerun(self, spec: StrategySpec, folder: Path) -> dict:
        """Another training strategy's run evaluated again (say, with constrained decoding):
        its adaptation costs are the source's, its evaluation is its own."""
        from tunelab.prompting.task_prefix import with_task_prefix
        from tunelab.training.artifacts import load_trained_run

        source = finished_result(self.out / spec.run_from)
        if source is None:
            raise TuneLabError(f"{spec.name}: {spec.run_from} has no finished run to evaluate")
        strategy = self._strategy_of(spec, default=self.prompts[spec.run_from])
        run_dir, source = _trained_run_of(self.out / spec.run_from, source, spec.trial)
        trained = load_trained_run(run_dir, **self.placement.record())
        test = with_task_prefix(self.data.test, trained.meta.get("task_prefix"))
        pool = self.data.shot_pool(trained.meta.get("task_prefix"))
        with _progress(self.console, f"{spec.name}: test", len(test), self._report) as advance:
            final = evaluate(
                trained.model, trained.tokenizer, strategy, test, train=pool,
                labels=self.data.labels, settings=self.settings, on_progress=advance,
            )  # fmt: skip
        write_run(claim(folder, "eval"), final, {"strategy": strategy.model_dump(),
                                                 "run_from": spec.run_from})  # fmt: skip
        record = self._record(
            final, strategy, adapt_seconds=source["adapt_seconds"],
            trainable=source["trainable_parameters"], total=source["total_parameters"],
            size=source["size_bytes"],
        )  # fmt: skip
        record["training"] = source.get("training", {})
        record["run_from"] = spec.run_from
        return record

    # -- helpers ---------------------------------------------------------------------------

    def _strategy_of(self, spec: StrategySpec, default: PromptStrategy) -> PromptStrategy:
        """The strategy's prompt, with its ``constrain`` when the experiment sets one."""
        if spec.prompt_from:
            strategy = self.prompts[spec.prompt_from]
        elif spec.prompt_file:
            strategy = load_strategy(spec.prompt_file)
        elif spec.prompt is not None:
            strategy = spec.prompt
        else:
            strategy = default
        update = {"name": spec.name}
        if spec.constrain is not None:  # [value]: set, even to none (see the experiment file)
            update["constrain"] = spec.constrain[0]
        return strategy.model_copy(update=update)

    def _base_model(self):
        if self._base is None:
            from tunelab.models import load_model

            self._base = load_model(self.experiment.model, **self.placement.record())
        return self._base

    def _base_parameters(self) -> int:
        return sum(p.numel() for p in self._base_model().model.parameters())

    def _evaluate_base(self, strategy: PromptStrategy, pool=None) -> EvalResult:
        loaded = self._base_model()
        label, total = f"{strategy.name}: test", len(self.data.test)
        with _progress(self.console, label, total, self._report) as advance:
            return evaluate(
                loaded.model,
                loaded.tokenizer,
                strategy,
                self.data.test,
                train=pool if pool is not None else self.data.shot_pool(),
                labels=self.data.labels,
                settings=self.settings,
                on_progress=advance,
            )

    def _search_metric(self) -> str:
        from tunelab.optimize.scoring import PER_EXAMPLE_METRICS

        metric = headline_metric(self.experiment, self.data)
        if metric in PER_EXAMPLE_METRICS:
            return metric
        if self.data.labels is not None:
            return "accuracy"
        return "json_match" if json_answers(self.data) else "rouge_l"

    def _report(self, phase: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress.step(phase, done, total)

    def _search_event(self, name: str, budget: int):
        finished = 0

        def on_event(event, candidate):
            nonlocal finished
            if event == "finished":
                finished += 1
                self._report("prompt search (prompts scored)", finished, budget)
            if event == "finished" and self.console is not None:
                score = candidate.score["value"] if candidate.score else float("nan")
                self.console.print(
                    f"  {name} #{candidate.id} {candidate.change[:60]}: {score:.3f} "
                    f"({candidate.status})"
                )

        return on_event

    def _record(self, final: EvalResult, strategy, *, adapt_seconds, trainable, total, size):
        """The strategy's result. Serving cost is model time only, measured the same way for
        every strategy: one request (batch size 1) and throughput at the eval batch size;
        retrieval, metrics and bootstrap are kept apart in ``eval_timing``."""
        speeds = final.extra.get("examples_per_second", {})
        throughput = next(iter(speeds.values()), 0.0)
        return {
            "metrics": final.metrics,
            "trainable_parameters": trainable,
            "total_parameters": total,
            "adapt_seconds": round(adapt_seconds, 1),
            "eval_seconds": round(final.seconds, 2),
            "eval_timing": final.extra.get("timing", {}),
            "latency_ms_per_example": final.extra.get("latency_ms_batch1"),
            "examples_per_second": round(throughput, 3),
            "prompt_tokens": round(final.extra.get("prompt_tokens_mean", 0.0), 1),
            "inputs_cut": final.extra.get("inputs_cut", []),
            **self.placement.record(),
            "peak_memory_mb": round(peak_memory_mb(), 1),
            "size_bytes": size,
            "prompt": strategy.model_dump(),
        }


def _trained_run_of(folder: Path, source: dict, trial: str | None) -> tuple[Path, dict]:
    """The train run behind a training strategy's folder, and its adaptation costs: the
    folder itself, or for a searched strategy its best trial (or, asked, its default one,
    with that trial's own costs)."""
    summary_path = folder / "search.json"
    if not summary_path.is_file():
        if trial:
            raise TuneLabError(f"{folder.name} ran no settings search: it has no {trial} trial")
        return folder, source
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    chosen = summary.get(trial or "best")
    if chosen is None:
        raise TuneLabError(f"{folder}: the search has no finished {trial or 'best'} trial")
    run_dir = folder / chosen["folder"]
    if trial is None:
        return run_dir, source
    cost = _run_costs(run_dir)
    own = source | {
        "adapt_seconds": cost["train_seconds"],
        "trainable_parameters": cost["trainable_parameters"],
        "total_parameters": cost["total_parameters"],
        "size_bytes": cost["size_bytes"],
    }
    return run_dir, own


def _run_costs(run_dir: Path) -> dict:
    """A finished train run's adaptation costs (its metrics.json "training" block) and the
    size of its saved weights: what a leaderboard row takes from a search's trial."""
    from tunelab.training.artifacts import ADAPTER_DIR

    cost = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))["training"]
    return cost | {"size_bytes": _weights_size(run_dir / ADAPTER_DIR)}


def _rows_hash(rows: list[Example]) -> str:
    """The rows' content, every field included (a template may show any of them)."""
    content = [[e.input, e.output, dict(e.fields)] for e in rows]
    return hashlib.sha256(json.dumps(content, ensure_ascii=False, sort_keys=True,
                                     default=str).encode()).hexdigest()  # fmt: skip


def _unset(model, names: tuple[str, ...]) -> set[str]:
    return {name for name in names if getattr(model, name) is None}


# the kind of run folder each kind of strategy writes
_FOLDER_KIND = {"prompt": "eval", "optimize": "optimize", "train": "train", "rerun": "eval",
                "search": "search"}  # fmt: skip


def _clear_stale(folder: Path, kind: str) -> None:
    """Before a strategy (re)runs: a folder left by another kind of run (the strategy changed
    kind) goes whole, and a stale result.json goes; the rest is the strategy's to reuse
    (evaluation files are rewritten, a search keeps a cache only for the same settings,
    `train_run` resumes or starts again)."""
    marker = read_marker(folder)
    if marker is None:
        return
    if marker["kind"] != _FOLDER_KIND[kind]:
        remove_run(folder, marker["kind"])
    else:
        (folder / RESULT_FILE).unlink(missing_ok=True)


def _search_folder(folder: Path, key: str) -> Path:
    """The search's score cache, kept only while the strategy's settings are unchanged (an
    interrupted search resumes; an edited one starts afresh)."""
    search = folder / "search"
    stamp = search / "spec_key"
    if search.exists() and (not stamp.is_file() or stamp.read_text().strip() != key):
        shutil.rmtree(search)
    search.mkdir(parents=True, exist_ok=True)
    stamp.write_text(key + "\n")
    return search


@contextlib.contextmanager
def _progress(console, label: str, total: int, report=None):
    """A transient bar on the console (nothing without one) that also goes to ``report``
    (phase, done, total); yields the advance function."""
    done = 0
    phase = label.rpartition(": ")[2]

    def reported(n: int) -> None:
        nonlocal done
        done += n
        if report is not None:
            report(phase, done, total)

    if console is None:
        yield reported
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    columns = (label, BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(label, total=total)

        def advance(n: int) -> None:
            progress.advance(task, n)
            reported(n)

        yield advance


def _weights_size(folder: Path) -> int:
    """Bytes of the trained weights only (the adapter folder also holds the tokenizer)."""
    weights = [f for f in folder.rglob("*") if f.suffix in (".safetensors", ".bin")]
    return sum(f.stat().st_size for f in weights)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0
