"""Training settings: validated before any model is loaded, stored resolved with every run."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunelab.errors import TuneLabError
from tunelab.evaluation.metrics import JSON_METRICS
from tunelab.prompting.strategy import with_later_fields
from tunelab.training.methods import get_method

CLASSIFICATION_METRICS = ("accuracy", "macro_f1")
FREE_TEXT_METRICS = ("rouge_l", "token_f1", "exact_match", "embedding_similarity", "bleu", "chrf")


class TrainSettings(BaseModel):
    """Everything that decides a training run (besides the data and the prompt strategy)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # --epochs inf is a typo

    method: str
    options: dict = Field(default_factory=dict, description="method options (tunelab methods)")
    learning_rate: float | None = Field(None, gt=0, description="default: the method's")
    epochs: float = Field(2.0, gt=0)
    batch_size: int | None = Field(None, gt=0, description="default: the method's")
    grad_accum: int = Field(1, gt=0, description="batches per optimiser step")
    warmup: float = Field(0.06, ge=0, lt=1, description="fraction of steps spent warming up")
    scheduler: Literal["linear", "cosine", "constant_with_warmup"] = "linear"
    weight_decay: float = Field(0.0, ge=0)
    max_length: int = Field(512, ge=8, description="longest prompt+answer kept, in tokens")
    seed: int = 0
    metric: str | None = Field(None, description="dev metric for keep-best and early stopping")
    patience: int = Field(2, ge=0, description="evals without improvement before stopping; 0=off")
    save_steps: int = Field(50, gt=0, description="checkpoint every N optimiser steps")
    task_prefix: str | None = None
    head: Literal["lm", "classifier"] = Field(
        "lm",
        description="lm: answer with the language model's words; classifier: a label head on "
        "the last token (label tasks, lora or full), one forward pass per answer",
    )
    shot_order: Literal["nearest_last", "shuffled"] = Field(
        "nearest_last",
        description="order of each training prompt's shots: nearest_last (as at inference) or "
        "shuffled (seeded), so the model compares the query with every shot instead of "
        "copying the one next to it (selector similar; inference keeps nearest_last)",
    )
    report_to: list[str] = Field(default_factory=list)

    def resolved(self, classification: bool, json_task: bool = False) -> "TrainSettings":
        """Fill method defaults (learning rate, options, metric) so the stored config is exact.
        A JSON task keeps the best epoch by field F1 (smoother than whole-answer match)."""
        method = get_method(self.method)
        if self.head == "classifier" and not classification:
            raise TuneLabError(
                "--head classifier needs a label set (the outputs here are free text); "
                "train with --head lm"
            )
        if self.head == "classifier" and method.name not in ("lora", "full"):
            raise TuneLabError(
                f"--head classifier trains with --method lora or full, not {method.name} "
                "(a soft prompt steers the language model's words, which a head replaces)"
            )
        options = method.parse_options(self.options).model_dump()
        default = "accuracy" if classification else "field_f1" if json_task else "rouge_l"
        metric = self.metric or default
        allowed = CLASSIFICATION_METRICS if classification else FREE_TEXT_METRICS
        allowed = JSON_METRICS if json_task else allowed
        if metric not in allowed:
            kind = "classification" if classification else "JSON" if json_task else "free-text"
            raise TuneLabError(
                f"--metric {metric!r} is not a {kind} metric; choose one of {', '.join(allowed)}"
            )
        return self.model_copy(
            update={
                "method": method.name,
                "options": options,
                "learning_rate": self.learning_rate or method.learning_rate,
                "batch_size": self.batch_size or method.batch_size,
                "metric": metric,
            }
        )


# Settings added after runs were stored: a stored run without one ran with its default, so
# resume checks and compare's cache keys compare them only when they differ from it.
LATER_SETTINGS = ("head", "shot_order")


def _with_later_defaults(settings: dict) -> dict:
    """``settings`` (a stored run's) with every later-added setting it lacks at its default."""
    fields = TrainSettings.model_fields
    return {name: fields[name].default for name in LATER_SETTINGS} | settings


def without_later_defaults(settings: dict) -> dict:
    """``settings`` less the later-added settings left at their defaults (cache keys)."""
    fields = TrainSettings.model_fields
    return {
        k: v for k, v in settings.items()
        if k not in LATER_SETTINGS or v != fields[k].default
    }  # fmt: skip


def config_changes(before: dict, after: dict, keys) -> list[str]:
    """Which ``keys`` of a stored run or search config (``before``) differ from a request's,
    settings and strategy fields named one by one ('settings (shot_order: shuffled ->
    nearest_last)'): what a refused resume says. Settings and strategy fields added since
    ``before`` was stored count at their defaults."""
    old, new = (_with_later_defaults(c.get("settings") or {}) for c in (before, after))
    before, after = (
        config | {"settings": settings, "strategy": with_later_fields(config.get("strategy") or {})}
        for config, settings in ((before, old), (after, new))
    )
    changed = [k for k in keys if before.get(k) != after.get(k)]
    for key in ("settings", "strategy"):
        if key in changed:
            was, now = before[key], after[key]
            fields = [
                f"{k}: {_short(was.get(k))} -> {_short(now.get(k))}"
                for k in sorted(was.keys() | now.keys())
                if was.get(k) != now.get(k)
            ]  # fmt: skip
            changed[changed.index(key)] = f"{key} ({', '.join(fields)})"
    return changed


def _short(value) -> str:
    """A setting's value on one short line (a long template or schema is cut)."""
    text = " ".join(str(value).split())
    return text if len(text) <= 40 else text[:37] + "..."


def check_training_prompt(settings: TrainSettings, strategy) -> None:
    """What a training prompt cannot be, checked before anything loads."""
    if strategy.cot:
        raise TuneLabError(
            "training prompts cannot use chain of thought: the training answers hold no "
            "reasoning to learn from"
        )
    if settings.shot_order != TrainSettings.model_fields["shot_order"].default and not (
        strategy.shots
    ):
        raise TuneLabError(
            f"shot_order {settings.shot_order} orders the training prompts' shots, and this "
            "prompt has none: add shots (--shots N, or shots: in the prompt)"
        )


def make_settings(**values) -> TrainSettings:
    """Validate CLI/experiment values; each problem is one line naming the option."""
    try:
        settings = TrainSettings.model_validate(values)
    except ValidationError as err:
        lines = [
            f"--{'.'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in err.errors()
        ]
        raise TuneLabError("\n".join(lines)) from None
    method = get_method(settings.method)
    method.parse_options(settings.options)
    for integration in settings.report_to:
        _check_integration(integration)
    return settings


# --report-to value -> the package the Trainer's integration imports
INTEGRATIONS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def _check_integration(name: str) -> None:
    import importlib.util

    if name not in INTEGRATIONS:
        raise TuneLabError(f"--report-to {name!r}: choose from {', '.join(INTEGRATIONS)}")
    if importlib.util.find_spec(INTEGRATIONS[name]) is None:
        raise TuneLabError(
            f"--report-to {name} needs its package: pip install {INTEGRATIONS[name]}"
        )


def parse_option_pairs(pairs: list[str]) -> dict:
    """``["r=8", "target_modules=q_proj,v_proj"]`` → a dict, YAML-typed (8 is an int)."""
    import yaml

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise TuneLabError(f"--option {pair!r}: expected KEY=VALUE")
        parsed = yaml.safe_load(value) if value.strip() else ""
        options[key.strip().replace("-", "_")] = parsed if parsed is not None else value
    return options
