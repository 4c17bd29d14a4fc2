"""Before spending compute: what the data looks like, how many tokens each strategy moves,
and how long each will take on this machine, measured from a few real steps.

Estimates are measurements scaled up: evaluation time from scoring a few test examples with
the strategy's real prompt, training time from the token throughput of a few real optimiser
steps of the strategy's method times the tokens of the planned epochs. A prompt search is
estimated at its worst case (every candidate scored on the whole dev split).
"""

import json
import math
import time
from dataclasses import dataclass, replace
from weakref import WeakKeyDictionary

from tunelab.compare.experiment import StrategySpec
from tunelab.compare.runner import ExperimentRunner
from tunelab.evaluation.runner import evaluate
from tunelab.prompting import PromptStrategy
from tunelab.prompting.render import build_prompts, encode_prompts
from tunelab.prompting.shots import select_shots
from tunelab.training.data import TrainData

SAMPLE = 2  # examples timed per label-scoring estimate
SHORT_TOKENS, TIMED_TOKENS = 4, 16  # generation is timed at these two lengths


@dataclass
class StrategyPlan:
    name: str
    kind: str
    prompt_tokens: float  # mean prompt length at evaluation (tokens)
    train_tokens: int | None  # tokens per training epoch
    train_seconds: float | None  # estimated adaptation time
    eval_seconds: float  # estimated test evaluation time
    note: str = ""

    @property
    def total_seconds(self) -> float:
        return (self.train_seconds or 0.0) + self.eval_seconds


def plan_strategy(runner: ExperimentRunner, spec: StrategySpec) -> StrategyPlan:
    """Measure one strategy's cost on a few examples (a training strategy: a few steps)."""
    data = runner.data
    if spec.kind == "train":
        return _plan_training(runner, spec)
    start = _prompt_for(runner, spec)
    per_example, tokens = _eval_speed(runner, start, data.test)
    eval_seconds = per_example * len(data.test)
    if spec.kind == "prompt":
        return StrategyPlan(spec.name, "prompt", tokens, None, None, eval_seconds)
    if spec.kind == "rerun":
        note = f"{spec.run_from}'s trained run, evaluated again"
        return StrategyPlan(spec.name, "rerun", tokens, None, None, eval_seconds, note)
    options = spec.optimize
    pool_size = len(data.train) + len(data.dev)
    dev_rows = options.dev_rows if options.dev_rows >= 1 else options.dev_rows * pool_size
    search = per_example * dev_rows * options.budget
    note = f"at most {options.budget} prompts x {int(dev_rows)} dev rows"
    return StrategyPlan(spec.name, "optimize", tokens, None, search, eval_seconds, note)


def _prompt_for(runner: ExperimentRunner, spec: StrategySpec) -> PromptStrategy:
    if spec.run_from:  # the trained run's own prompt, with this strategy's constrain
        from tunelab.training.run import default_training_strategy

        source = runner.experiment.strategy(spec.run_from)
        trained = _prompt_for(runner, source) if _has_prompt(source) else None
        default = trained or default_training_strategy(source.name)
        return runner._strategy_of(spec, default=default)
    if spec.prompt_from and spec.prompt_from not in runner.prompts:
        # The source has not run yet: time the prompt it starts from (an estimate only).
        source = runner.experiment.strategy(spec.prompt_from)
        return _prompt_for(runner, source)
    return runner._strategy_of(spec, default=PromptStrategy(name=spec.name))


def _has_prompt(spec: StrategySpec) -> bool:
    return bool(spec.prompt or spec.prompt_file or spec.prompt_from)


# runner -> prompts -> seconds per example: each set of prompts is timed once per runner, and
# the timings go away with their runner.
_measured: WeakKeyDictionary[ExperimentRunner, dict[tuple, float]] = WeakKeyDictionary()


def _eval_speed(runner: ExperimentRunner, strategy: PromptStrategy, test) -> tuple[float, float]:
    """Seconds per test example, measured, and the mean prompt length in tokens.

    Label scoring is timed on a few examples. Generation is timed on one real batch at two
    lengths (4 and 16 new tokens): the difference gives the cost of a decoding step, the rest
    the prompt's; the estimate extends that to ``max_new_tokens`` (an upper bound, since
    answers may stop early). Strategies that render the same prompts share one measurement.
    """
    from tunelab.evaluation.runner import resolve_modes, with_constraint

    loaded, settings = runner._base_model(), runner.settings
    generating = "generate" in resolve_modes(settings.mode, runner.data.labels, strategy.cot)
    sample = test[: settings.generation.batch_size if generating else SAMPLE]
    pool = runner.data.shot_pool()
    shots, retriever = select_shots(
        strategy, pool, sample, seed=settings.seed, embedder=settings.embedder
    )
    prompts = build_prompts(loaded.tokenizer, strategy, sample, runner.data.labels, shots)
    tokens = sum(map(len, encode_prompts(loaded.tokenizer, prompts))) / max(len(prompts), 1)
    measured = _measured.setdefault(runner, {})
    key = (*prompts, json.dumps(strategy.constrain))  # a grammar changes the time too
    if key not in measured:
        if generating:
            settings = with_constraint(settings, strategy)
            measured[key] = _generation_seconds(loaded, prompts, settings) / len(prompts)
        else:
            result = evaluate(
                loaded.model, loaded.tokenizer, strategy, sample, train=pool,
                labels=runner.data.labels, settings=replace(settings, latency_rows=0),
                chosen_shots=(shots, retriever),
            )  # fmt: skip
            # The engine's own speed: model time only, without the metrics' fixed cost.
            speeds = result.extra["examples_per_second"]
            measured[key] = sum(1 / speed for speed in speeds.values())
    return measured[key], tokens


def _generation_seconds(loaded, prompts: list[str], settings) -> float:
    """Seconds to generate ``max_new_tokens`` for one batch of ``prompts``."""

    from tunelab.generation import generate

    def timed(new_tokens: int) -> float:
        config = replace(settings.generation, max_new_tokens=new_tokens, stop=(), temperature=0.0)
        began = time.perf_counter()
        generate(loaded.model, loaded.tokenizer, prompts, config)
        return time.perf_counter() - began

    short, long = timed(SHORT_TOKENS), timed(TIMED_TOKENS)
    per_step = max(long - short, 0.0) / (TIMED_TOKENS - SHORT_TOKENS)
    wanted = settings.generation.max_new_tokens
    return short + max(wanted - SHORT_TOKENS, 0) * per_step


def _plan_training(runner: ExperimentRunner, spec: StrategySpec) -> StrategyPlan:
    from tunelab.training.run import default_training_strategy, measure_training_speed

    data: TrainData = runner.data
    settings = runner.train_settings(spec)
    strategy = _prompt_for(runner, spec) if _has_prompt(spec) \
        else default_training_strategy(spec.name)  # fmt: skip
    timing = measure_training_speed(settings, runner.data, strategy, runner.experiment.model)
    per_example, tokens = _eval_speed(runner, strategy, data.test)
    epochs = settings.epochs
    train_seconds = epochs * timing.tokens_per_epoch / timing.tokens_per_second
    dev_seconds = per_example * len(data.dev) * math.ceil(epochs)
    note = (
        f"{settings.method} at {timing.tokens_per_second:.0f} tok/s (3 steps measured) x "
        f"{math.ceil(timing.steps_per_epoch * epochs)} steps"
    )
    if spec.search:  # every trial at the defaults' cost: pruning cuts it, longer trials add
        trials = spec.search.trials
        train_seconds, dev_seconds = trials * train_seconds, trials * dev_seconds
        note += f" x {trials} trials (search; about)"
    return StrategyPlan(
        spec.name, "train", tokens, timing.tokens_per_epoch, train_seconds + dev_seconds,
        per_example * len(data.test), note,
    )  # fmt: skip


def data_check(data: TrainData, tokenizer):
    """The `tunelab data inspect` statistics of the training split, with test overlap."""
    from tunelab.data.stats import compute_stats

    return compute_stats(data.train, tokenizer=tokenizer, test=data.test)
