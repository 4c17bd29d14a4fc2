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

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tunelab.errors import TuneLabError
from tunelab.paths import write_json_atomic
from tunelab.runs import check_request, claim, remove_run, writing_parts_of
from tunelab.training.config import TrainSettings, config_changes

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

    def admits(self, value) -> bool:
        if self.choices is not None:
            return value in self.choices
        return value is not None and self.low <= value <= self.high

    def including(self, value) -> "ParamRange":
        """This range widened (or these choices extended) to hold ``value``."""
        if value is None or self.admits(value):
            return self
        if self.choices is not None:
            return self.model_copy(update={"choices": [value, *self.choices]})
        return self.model_copy(update={"low": min(self.low, value), "high": max(self.high, value)})


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
    """The space to search, every key checked against the settings and the method's options,
    and every end of a range and every choice checked as a value of its setting (a bad
    space fails here, not hours into the search)."""
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
    for key, spec in space.items():
        if spec.choices is None and is_integer(settings, key) and spec.log:
            raise TuneLabError(f"search space: {key}: a whole-number setting takes no log scale")
        for value in spec.choices if spec.choices is not None else (spec.low, spec.high):
            try:
                with_params(settings, {key: _typed(settings, key, value)})
            except TuneLabError as err:
                raise TuneLabError(f"search space: {key}={value!r}: {err}") from None
    return space


def is_integer(settings: TrainSettings, key: str) -> bool:
    """Whether a setting (or method option) takes whole numbers, from its declared type."""
    from tunelab.training.methods import get_method

    fields = TrainSettings.model_fields
    field = fields[key] if key in SETTINGS_KEYS else (
        get_method(settings.method).options.model_fields[key]
    )  # fmt: skip
    return field.annotation in (int, int | None)


def _typed(settings: TrainSettings, key: str, value):
    return int(value) if is_integer(settings, key) and isinstance(value, float) else value


def with_params(settings: TrainSettings, params: dict) -> TrainSettings:
    """``settings`` with a trial's values (settings keys replaced, the rest method options),
    validated like any other settings: a value out of bounds is one line naming it."""
    from pydantic import ValidationError

    from tunelab.training.methods import get_method

    options = dict(settings.options)
    values = settings.model_dump()
    for key, value in params.items():
        if key in SETTINGS_KEYS:
            values[key] = value
        else:
            options[key] = value
    values["options"] = get_method(settings.method).parse_options(options).model_dump()
    try:
        return TrainSettings.model_validate(values)
    except ValidationError as err:
        first = err.errors()[0]
        raise TuneLabError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def with_start(settings: TrainSettings, space: dict[str, ParamRange]) -> dict[str, ParamRange]:
    """The space holding the start settings, so that trial 0 really is them (a choice list
    gets the start value; a range is widened to it)."""
    return {key: spec.including(_start_value(settings, key)) for key, spec in space.items()}


def _start_value(settings: TrainSettings, key: str):
    value = getattr(settings, key) if key in SETTINGS_KEYS else settings.options.get(key)
    if isinstance(value, float) and value.is_integer() and not isinstance(value, bool):
        return int(value)
    return value


def default_params(settings: TrainSettings, space: dict[str, ParamRange]) -> dict:
    """The start settings of the searched keys (trial 0), from a space that holds them."""
    values = {key: _start_value(settings, key) for key in space}
    return {key: value for key, value in values.items() if space[key].admits(value)}


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
    callbacks: tuple = (),
) -> SearchOutcome:
    """Run (or continue) the search in ``out``; return the trials and the test scores of the
    best and the default trial."""
    from tunelab import distributed

    optuna = _optuna()
    if distributed.launched():
        raise TuneLabError(
            "a settings search runs its trials one after another in one process; start it "
            "without a distributed launcher (each trial can still use a GPU)"
        )
    if not data.dev:
        raise TuneLabError(
            "a search needs a dev split to score trials on (tunelab train: --dev or "
            "--dev-size; an experiment: data.dev or data.dev_size)"
        )
    asked = resolve_space(settings, search)
    space = with_start(settings, asked)
    for key in (k for k in space if space[k] != asked[k]) if console else ():
        console.print(
            f"[yellow]search space: {key} widened to hold the start value "
            f"{_start_value(settings, key)!r}, so that trial 0 is the start settings[/]"
        )
    config = _config(settings, data, strategy, base_model, search, space)
    _check_folder(out, config, resume=resume, overwrite=overwrite)
    claim(out, "search")
    write_json_atomic(out / CONFIG, config)
    began = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # TuneLab prints the trials itself
    study = optuna.create_study(
        study_name=STUDY,
        storage=f"sqlite:///{(out / STORAGE).resolve()}",
        load_if_exists=True,
        direction="maximize",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
        if search.prune
        else optuna.pruners.NopPruner(),
    )
    # Seeded with the trials already tried: a resumed search seeded as at its start would
    # draw the settings its first session drew again.
    study.sampler = optuna.samplers.TPESampler(
        seed=settings.seed + len(study.trials), n_startup_trials=3
    )
    _requeue_interrupted(study, optuna)
    if not study.trials:
        study.enqueue_trial(default_params(settings, space), user_attrs={"default": True})
    todo = search.trials - len(_ended(study, optuna))
    objective = _Objective(settings, data, strategy, base_model, out, space, console, placement,
                           callbacks)  # fmt: skip
    if todo > 0:
        import torch

        # a trial that fails (diverged, out of memory) is recorded and the search goes on
        with writing_parts_of(out):
            study.optimize(objective, n_trials=todo, catch=(TuneLabError, torch.OutOfMemoryError))
    return _finish(study, optuna, settings, data, strategy, out, final_eval, placement, began)


class _Objective:
    """One trial: train with the sampled settings (dev only), return the best dev metric."""

    def __init__(self, settings, data, strategy, base_model, out, space, console, placement,
                 callbacks=()):  # fmt: skip
        self.settings, self.strategy, self.base_model = settings, strategy, base_model
        self.out, self.space, self.console, self.placement = out, space, console, placement
        self.callbacks = callbacks
        self.data = dataclasses.replace(data, test=None)  # trials never see the test rows

    def __call__(self, trial) -> float:
        from tunelab.training.run import can_resume, train_run

        params = {
            key: _suggest(trial, key, spec, is_integer(self.settings, key))
            for key, spec in self.space.items()
        }
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
            own = folder.name == f"trial-{trial.number:03d}"
            continues = "" if own else f" (continues {folder.name})"
            self.console.print(f"[bold]trial {trial.number}[/]{continues} {shown}")
        pruning = prune_on_dev(trial, f"eval_{settings.metric}")
        try:
            outcome = train_run(
                settings, self.data, self.strategy, self.base_model, folder, resume=resume,
                overwrite=not resume and folder.exists(), console=self.console,
                callbacks=(pruning, *self.callbacks), placement=self.placement,
            )  # fmt: skip
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)  # to continue on --resume, not to skip
            raise
        except Exception as err:
            import optuna

            if not isinstance(err, optuna.TrialPruned):
                trial.set_user_attr("error", str(err).splitlines()[0][:300])
            if self.console and isinstance(err, optuna.TrialPruned):
                self.console.print(f"[yellow]trial {trial.number} pruned[/]: {err}")
            if isinstance(err, optuna.TrialPruned):  # its weights will never be used
                shutil.rmtree(folder / "checkpoints", ignore_errors=True)
            raise
        summary = outcome.summary
        trial.set_user_attr("train_seconds", summary["train_seconds"])
        best = summary.get("best_dev_metric")
        if best is None:
            best = outcome.final.metrics[settings.metric]["value"]
        return float(best)


def prune_on_dev(trial, metric_key: str):
    """A Trainer callback feeding each epoch's dev metric to the trial and stopping the trial
    (raising optuna.TrialPruned) when the pruner says it trails the trials before it."""
    import optuna
    from transformers import TrainerCallback

    class PruneOnDev(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            value = (metrics or {}).get(metric_key)
            if value is None or not math.isfinite(value):
                return
            trial.report(float(value), step=max(1, round(state.epoch or 0)))
            if state.max_steps and state.global_step >= state.max_steps:
                return  # the trial has run its course: it finishes, it is not pruned
            if trial.should_prune():
                raise optuna.TrialPruned(f"dev {value:.3f} after epoch {state.epoch:.0f}")

    return PruneOnDev()


def _suggest(trial, key: str, spec: ParamRange, integer: bool):
    if spec.choices is not None:
        return trial.suggest_categorical(key, spec.choices)
    if integer:
        return trial.suggest_int(key, math.ceil(spec.low), math.floor(spec.high))
    return trial.suggest_float(key, spec.low, spec.high, log=spec.log)


def _ended(study, optuna) -> list:
    """Trials that count toward the budget: finished, pruned, or failed on their own (an
    interrupted one is run again instead)."""
    state = optuna.trial.TrialState
    return [
        t
        for t in study.trials
        if t.state in (state.COMPLETE, state.PRUNED)
        or (t.state == state.FAIL and not _interrupted(t))
    ]


def _interrupted(trial) -> bool:
    """Stopped from outside: Ctrl-C (marked), or killed (a failure without an error of its
    own: every trial that fails by itself records its error)."""
    return bool(trial.user_attrs.get("interrupted")) or (
        trial.state.name in ("FAIL", "RUNNING") and "error" not in trial.user_attrs
    )


def _requeue_interrupted(study, optuna) -> None:
    """A trial stopped from outside (Ctrl-C, or a kill that left it RUNNING: one search runs
    per folder, so no process owns it) is queued again once with its settings, to continue
    in its folder from its last checkpoint. A trial that failed on its own is not."""
    state = optuna.trial.TrialState
    continued = {t.user_attrs.get("continues") for t in study.trials}
    for trial in study.trials:
        killed = trial.state == state.RUNNING
        if not killed and not (trial.state == state.FAIL and _interrupted(trial)):
            continue
        if killed:
            study.tell(trial.number, state=state.FAIL)
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
    from tunelab.evaluation.runner import write_predictions
    from tunelab.models.device import resolve_placement
    from tunelab.training.run import evaluate_saved_run

    placement = placement or resolve_placement()
    result = evaluate_saved_run(run_dir, data, strategy, data.test, final_eval, placement)
    write_predictions(run_dir / "test-predictions.jsonl", result.predictions)
    write_json_atomic(run_dir / "test-metrics.json", {"metrics": result.metrics})
    return result


def _trial_record(trial) -> dict:
    interrupted = _interrupted(trial)
    return {
        "number": trial.number,
        "state": "interrupted" if interrupted else trial.state.name.lower(),
        "params": trial.params,
        "dev": trial.value,
        "dev_by_epoch": {str(k): v for k, v in sorted(trial.intermediate_values.items())},
        "train_seconds": trial.user_attrs.get("train_seconds"),
        "default": bool(trial.user_attrs.get("default")) and not interrupted,
        "folder": trial.user_attrs.get("folder"),
        "error": trial.user_attrs.get("error"),
    }


def _chosen(trial, test, metric: str) -> dict:
    record = {"number": trial.number, "params": trial.params, "dev": trial.value,
              "folder": trial.user_attrs.get("folder")}  # fmt: skip
    if test is not None:
        record["test"] = {name: value["value"] for name, value in test.metrics.items()}
        record["test_interval"] = test.metrics.get(metric)
    return record


def _config(settings, data, strategy, base_model, search, space) -> dict:
    from tunelab.models.registry import portable_model_name
    from tunelab.provenance import file_record

    return {
        "settings": settings.model_dump(),
        "search": {"trials": search.trials, "prune": search.prune},
        "space": {k: v.model_dump(exclude_none=True) for k, v in space.items()},
        "strategy": strategy.model_dump(),
        "base_model": portable_model_name(base_model),  # as a trial's run stores it
        "data": {role: file_record(path) for role, path in data.files.items()},
    }


def same_search(out: Path, settings, data, strategy, base_model, search) -> bool:
    """True when ``out`` holds a search set up exactly like this one (what --resume takes)."""
    from tunelab.runs import is_run

    stored = out / CONFIG
    if not is_run(out, "search") or not stored.is_file():
        return False
    config = _config(settings, data, strategy, base_model, search, resolve_space(settings, search))
    try:
        before = json.loads(stored.read_text(encoding="utf-8"))
        return not config_changes(before, config, [k for k in config if k != "search"])
    except (OSError, ValueError, AttributeError, TypeError):  # unreadable: start afresh
        return False


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
        changed = config_changes(before, config, [k for k in config if k != "search"])
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
