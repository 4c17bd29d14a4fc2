"""Budgeted hyperparameter search for one training method, with Optuna.

    OUT/
      tunelab-run.json     the run-folder marker (kind "search")
      search-config.json   what was asked (settings, space, data hashes): a resume must match
      search.db            Optuna's SQLite storage: parameters, dev score by epoch, state
      trials/trial-000/    one complete train run per trial; trial 0 has the method's defaults
      search.json          every trial, the best one (chosen on dev), default vs tuned on test

Trials are scored on the dev split only (the test split is hidden from them); the best
trial by dev metric is kept, and only then are it and the default trial evaluated on test.
Optuna's TPE sampler proposes settings; its median pruner stops a trial whose dev metric
after an epoch is below the median of earlier trials at that epoch. A killed search resumes
from the storage: finished and pruned trials are not repeated, and the trial that was
running continues from its last checkpoint.
"""

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tunelab.errors import TuneLabError
from tunelab.paths import write_json_atomic
from tunelab.runs import check_request, claim, remove_run
from tunelab.training.config import TrainSettings

STUDY = "tunelab"
STORAGE = "search.db"
RESULT = "search.json"
CONFIG = "search-config.json"
TRIALS_DIR = "trials"
# settings a space may vary besides the method's own options (-o KEY=VALUE)
SETTINGS_KEYS = ("learning_rate", "epochs", "batch_size", "grad_accum", "warmup", "weight_decay")


class ParamRange(BaseModel):
    """One searched setting: ``choices``, or a range ``low``..``high`` (``log`` scale for
    rates; whole numbers when both ends are)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    choices: list | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> "ParamRange":
        if self.choices is not None:
            if not self.choices or self.low is not None or self.high is not None:
                raise ValueError("give either a non-empty choices list or low and high")
            return self
        if self.low is None or self.high is None or self.low >= self.high:
            raise ValueError("a range needs low < high (or give choices)")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self

    @property
    def integer(self) -> bool:
        return (
            self.choices is None
            and float(self.low).is_integer()
            and not self.log
            and (float(self.high).is_integer())
        )

    def admits(self, value) -> bool:
        if self.choices is not None:
            return value in self.choices
        return value is not None and self.low <= value <= self.high


class SearchSettings(BaseModel):
    """``search:`` of an experiment's training strategy; ``tunelab train --search N``."""

    model_config = ConfigDict(extra="forbid")

    trials: int = Field(8, ge=1, description="trials in all, pruned ones included")
    space: dict[str, ParamRange] | None = Field(
        None, description="settings to search; default: the method's (tunelab.training.search)"
    )
    prune: bool = Field(True, description="stop trials whose dev metric trails the median")


# Ranges around each method's defaults, wide enough to matter in short runs on small data
# (bench/RESULTS.md: LoRA 5e-4 under-trains where 2e-3 converges; soft prompts gain from
# smaller batches and higher rates).
DEFAULT_SPACES: dict[str, dict[str, dict]] = {
    "lora": {
        "learning_rate": {"low": 3e-4, "high": 5e-3, "log": True},
        "r": {"choices": [8, 16, 32]},
        "target_modules": {"choices": ["all-linear", "q_proj,k_proj,v_proj,o_proj"]},
        "batch_size": {"choices": [4, 8]},
        "epochs": {"choices": [1, 2, 3]},
    },
    "full": {
        "learning_rate": {"low": 2e-5, "high": 3e-4, "log": True},
        "batch_size": {"choices": [4, 8]},
        "epochs": {"choices": [1, 2, 3]},
    },
    "prompt-tuning": {
        "learning_rate": {"low": 1e-2, "high": 3e-1, "log": True},
        "virtual_tokens": {"choices": [10, 20, 50]},
        "batch_size": {"choices": [1, 2, 4]},
        "epochs": {"choices": [2, 3, 4]},
    },
    "prefix-tuning": {
        "learning_rate": {"low": 5e-3, "high": 5e-2, "log": True},
        "virtual_tokens": {"choices": [10, 20, 40]},
        "batch_size": {"choices": [1, 2, 4]},
        "epochs": {"choices": [2, 3]},
    },
    "p-tuning": {
        "learning_rate": {"low": 1e-3, "high": 5e-2, "log": True},
        "virtual_tokens": {"choices": [10, 20, 40]},
        "encoder_hidden": {"choices": [128, 256, 512]},
        "batch_size": {"choices": [1, 2, 4]},
        "epochs": {"choices": [2, 3, 4]},
    },
}


def resolve_space(settings: TrainSettings, search: SearchSettings) -> dict[str, ParamRange]:
    """The space to search, every key checked against the settings and the method's options."""
    from tunelab.training.methods import get_method

    method = get_method(settings.method)
    raw = search.space or DEFAULT_SPACES.get(method.name, {})
    space = {k: v if isinstance(v, ParamRange) else ParamRange(**v) for k, v in raw.items()}
    allowed = set(SETTINGS_KEYS) | set(method.options.model_fields)
    unknown = sorted(set(space) - allowed)
    if unknown:
        raise TuneLabError(
            f"search space: {unknown[0]!r} is not a setting of {method.name}; searchable: "
            f"{', '.join(sorted(allowed))}"
        )
    if not space:
        raise TuneLabError(f"search space: nothing to search for {method.name}")
    return space


def with_params(settings: TrainSettings, params: dict) -> TrainSettings:
    """``settings`` with a trial's values: settings keys replaced, the rest method options."""
    from tunelab.training.methods import get_method

    options = dict(settings.options)
    update = {}
    for key, value in params.items():
        if key in SETTINGS_KEYS:
            update[key] = value
        else:
            options[key] = value
    update["options"] = get_method(settings.method).parse_options(options).model_dump()
    return settings.model_copy(update=update)


def default_params(settings: TrainSettings, space: dict[str, ParamRange]) -> dict:
    """The resolved defaults of the searched keys that the space admits (trial 0)."""
    values = {}
    for key, spec in space.items():
        value = getattr(settings, key) if key in SETTINGS_KEYS else settings.options.get(key)
        if isinstance(value, float) and value.is_integer() and spec.choices is not None:
            value = int(value)
        if spec.admits(value):
            values[key] = value
    return values


@dataclass
class SearchOutcome:
    out: Path
    summary: dict  # what search.json holds
    best_dir: Path
    best_test: object = None  # EvalResult of the best trial on test (None without a test split)
    default_test: object = None


def run_search(
    settings: TrainSettings,
    data,
    strategy,
    base_model: str,
    out: Path,
    search: SearchSettings,
    *,
    resume: bool = False,
    overwrite: bool = False,
    console=None,
    final_eval=None,
    placement=None,
) -> SearchOutcome:
    """Run (or continue) the search in ``out``; return the trials and the test scores of the
    best and the default trial."""
    optuna = _optuna()
    if not data.dev:
        raise TuneLabError("a search needs a dev split to score trials on (--dev or --dev-size)")
    space = resolve_space(settings, search)
    config = _config(settings, data, strategy, base_model, search, space)
    _check_folder(out, config, resume=resume, overwrite=overwrite)
    claim(out, "search")
    write_json_atomic(out / CONFIG, config)
    began = time.perf_counter()
    study = optuna.create_study(
        study_name=STUDY,
        storage=f"sqlite:///{(out / STORAGE).resolve()}",
        load_if_exists=True,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=3),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
        if search.prune
        else optuna.pruners.NopPruner(),
    )
    _requeue_interrupted(study, optuna)
    if not study.trials:
        study.enqueue_trial(default_params(settings, space), user_attrs={"default": True})
    todo = search.trials - len(_ended(study, optuna))
    objective = _Objective(settings, data, strategy, base_model, out, space, console, placement)
    if todo > 0:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study.optimize(objective, n_trials=todo)
    return _finish(study, optuna, settings, data, strategy, out, final_eval, placement, began)


class _Objective:
    """One trial: train with the sampled settings (dev only), return the best dev metric."""

    def __init__(self, settings, data, strategy, base_model, out, space, console, placement):
        from tunelab.training.run import TrainData

        self.settings, self.strategy, self.base_model = settings, strategy, base_model
        self.out, self.space, self.console, self.placement = out, space, console, placement
        self.data = TrainData(data.train, data.dev, None, data.labels, data.files)

    def __call__(self, trial) -> float:
        from tunelab.training.run import can_resume, train_run

        params = {key: _suggest(trial, key, spec) for key, spec in self.space.items()}
        settings = with_params(self.settings, params)
        folder = self.out / TRIALS_DIR / f"trial-{trial.number:03d}"
        earlier = trial.user_attrs.get("continues")  # the folder of an interrupted trial
        if earlier and can_resume(self.out / earlier, settings, self.data, self.strategy,
                                  self.base_model):  # fmt: skip
            folder = self.out / earlier
        resume = can_resume(folder, settings, self.data, self.strategy, self.base_model)
        trial.set_user_attr("folder", str(folder.relative_to(self.out)))
        if self.console:
            shown = ", ".join(f"{k}={_show(v)}" for k, v in params.items())
            self.console.print(f"[bold]trial {trial.number}[/] {shown}")
        pruning = PruneOnDev(trial, f"eval_{settings.metric}")
        outcome = train_run(
            settings, self.data, self.strategy, self.base_model, folder, resume=resume,
            overwrite=not resume and folder.exists(), console=self.console,
            callbacks=(pruning,), placement=self.placement,
        )  # fmt: skip
        summary = outcome.summary
        trial.set_user_attr("train_seconds", summary["train_seconds"])
        best = summary.get("best_dev_metric")
        if best is None:
            best = outcome.final.metrics[settings.metric]["value"]
        return float(best)


class PruneOnDev:
    """A Trainer callback feeding each epoch's dev metric to the trial, stopping it when
    Optuna's pruner says it trails the trials before it."""

    def __init__(self, trial, metric_key: str):
        self.trial, self.metric_key = trial, metric_key

    def __getattr__(self, name):  # every other Trainer event: nothing to do
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = (metrics or {}).get(self.metric_key)
        if value is None or not math.isfinite(value):
            return
        self.trial.report(float(value), step=max(1, round(state.epoch or 0)))
        if self.trial.should_prune():
            import optuna

            raise optuna.TrialPruned(f"dev {value:.3f} at epoch {state.epoch:.0f}")


def _suggest(trial, key: str, spec: ParamRange):
    if spec.choices is not None:
        return trial.suggest_categorical(key, spec.choices)
    if spec.integer:
        return trial.suggest_int(key, int(spec.low), int(spec.high))
    return trial.suggest_float(key, spec.low, spec.high, log=spec.log)


def _ended(study, optuna) -> list:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return [t for t in study.trials if t.state in states]


def _requeue_interrupted(study, optuna) -> None:
    """A trial that was stopped (Ctrl-C: failed; killed: left running, and one search runs
    per folder, so no process owns it) is queued again once with its settings, to continue
    in its folder from its last checkpoint."""
    state = optuna.trial.TrialState
    continued = {t.user_attrs.get("continues") for t in study.trials}
    for trial in study.trials:
        if trial.state not in (state.RUNNING, state.FAIL):
            continue
        if trial.state == state.RUNNING:
            study._storage.set_trial_state_values(trial._trial_id, state.FAIL)
        folder = trial.user_attrs.get("folder")
        if folder in continued:
            continue
        attrs = {k: v for k, v in trial.user_attrs.items() if k == "default"}
        if folder:
            attrs["continues"] = folder
            continued.add(folder)
        study.enqueue_trial(trial.params, user_attrs=attrs)


def _finish(study, optuna, settings, data, strategy, out, final_eval, placement, began):
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise TuneLabError(f"{out}: no trial finished; nothing to choose from")
    best = max(complete, key=lambda t: (t.value, -t.number))  # ties: the earlier trial
    default = next((t for t in complete if t.user_attrs.get("default")), None)
    best_test = default_test = None
    if data.test:
        best_test = _test_eval(out / best.user_attrs["folder"], data, strategy, final_eval,
                               placement)  # fmt: skip
        if default is not None:
            default_test = (
                best_test
                if default.number == best.number
                else _test_eval(
                    out / default.user_attrs["folder"], data, strategy, final_eval, placement
                )  # fmt: skip
            )
    summary = {
        "method": settings.method,
        "metric": settings.metric,
        "trials": [_trial_record(t) for t in study.trials],
        "best": _chosen(best, best_test, settings.metric),
        "default": _chosen(default, default_test, settings.metric) if default else None,
        "search_seconds": round(
            sum(t.user_attrs.get("train_seconds", 0.0) for t in study.trials), 1
        ),
        "session_seconds": round(time.perf_counter() - began, 1),
    }
    write_json_atomic(out / RESULT, summary)
    return SearchOutcome(out, summary, out / best.user_attrs["folder"], best_test, default_test)


def _test_eval(run_dir: Path, data, strategy, final_eval, placement):
    from tunelab.evaluation.runner import EvalSettings, evaluate_sharded, write_predictions
    from tunelab.models.device import resolve_placement
    from tunelab.prompting.task_prefix import with_task_prefix
    from tunelab.training.artifacts import load_trained_run

    placement = placement or resolve_placement()
    trained = load_trained_run(run_dir, **placement.record())
    prefix = trained.task_prefix
    result = evaluate_sharded(
        trained.model, trained.tokenizer, strategy, with_task_prefix(data.test, prefix),
        train=with_task_prefix(data.train, prefix), labels=data.labels,
        settings=final_eval or EvalSettings(seed=0),
    )  # fmt: skip
    write_predictions(run_dir / "test-predictions.jsonl", result.predictions)
    write_json_atomic(run_dir / "test-metrics.json", {"metrics": result.metrics})
    return result


def _trial_record(trial) -> dict:
    return {
        "number": trial.number,
        "state": trial.state.name.lower(),
        "params": trial.params,
        "dev": trial.value,
        "dev_by_epoch": {str(k): v for k, v in sorted(trial.intermediate_values.items())},
        "train_seconds": trial.user_attrs.get("train_seconds"),
        "default": bool(trial.user_attrs.get("default")),
        "folder": trial.user_attrs.get("folder"),
    }


def _chosen(trial, test, metric: str) -> dict:
    record = {"number": trial.number, "params": trial.params, "dev": trial.value,
              "folder": trial.user_attrs.get("folder")}  # fmt: skip
    if test is not None:
        record["test"] = {name: value["value"] for name, value in test.metrics.items()}
        record["test_interval"] = test.metrics.get(metric)
    return record


def _config(settings, data, strategy, base_model, search, space) -> dict:
    from tunelab.provenance import file_record

    return {
        "settings": settings.model_dump(),
        "search": {"trials": search.trials, "prune": search.prune},
        "space": {k: v.model_dump(exclude_none=True) for k, v in space.items()},
        "strategy": strategy.model_dump(),
        "base_model": base_model,
        "data": {role: file_record(path) for role, path in data.files.items()},
    }


def same_search(out: Path, settings, data, strategy, base_model, search) -> bool:
    """True when ``out`` holds a search set up exactly like this one (what --resume takes)."""
    from tunelab.runs import is_run

    stored = out / CONFIG
    if not is_run(out, "search") or not stored.is_file():
        return False
    config = _config(settings, data, strategy, base_model, search, resolve_space(settings, search))
    before = json.loads(stored.read_text(encoding="utf-8"))
    return all(before.get(k) == v for k, v in config.items() if k != "search")


def _check_folder(out: Path, config: dict, *, resume: bool, overwrite: bool) -> None:
    """New, or the same search to continue (more trials may be asked), or --overwrite."""
    folder = check_request(out, "search", resume=resume, overwrite=overwrite)
    if folder.state == "new":
        return
    if overwrite:
        remove_run(out, "search")
        return
    stored = out / CONFIG
    if not resume:
        raise TuneLabError(
            f"{out} already holds a search; pass --resume to continue it (or ask for more "
            "trials), --overwrite to start again, or choose another --out"
        )
    if stored.is_file():
        before = json.loads(stored.read_text(encoding="utf-8"))
        changed = [k for k in config if k != "search" and before.get(k) != config[k]]
        if changed:
            raise TuneLabError(
                f"{out}: --resume needs the search as it was set up; different: "
                f"{', '.join(changed)}"
            )


def _show(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _optuna():
    try:
        import optuna
    except ImportError:
        raise TuneLabError(
            "hyperparameter search needs Optuna: pip install 'tunelab[search]'"
        ) from None
    return optuna
