"""Run a prompt strategy over a test set and record everything needed to trust the number."""

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tunelab.data.loading import Example
from tunelab.evaluation import metrics
from tunelab.evaluation.generation import GenerationConfig, generate
from tunelab.paths import atomic_directory, write_json_atomic
from tunelab.prompting.render import build_messages, render_user_turn, to_prompt_text
from tunelab.prompting.strategy import PromptStrategy


@dataclass
class EvalResult:
    predictions: list[dict]
    metrics: dict[str, float]
    seconds: float
    labels: list[str] | None = None
    extra: dict = field(default_factory=dict)


def build_prompts(
    tokenizer, strategy: PromptStrategy, examples: list[Example], labels: list[str] | None
) -> list[str]:
    template = strategy.resolved_template(classification=labels is not None)
    prompts = []
    for example in examples:
        user_turn = render_user_turn(template, example, labels)
        messages = build_messages(strategy.system, user_turn, history=example.messages)
        prompts.append(to_prompt_text(tokenizer, messages))
    return prompts


def evaluate(
    model,
    tokenizer,
    strategy: PromptStrategy,
    test: list[Example],
    *,
    labels: list[str] | None = None,
    generation: GenerationConfig = GenerationConfig(),
    on_progress: Callable[[int], None] | None = None,
) -> EvalResult:
    """Generate an answer per test example and score it against the reference."""
    started = time.perf_counter()
    prompts = build_prompts(tokenizer, strategy, test, labels)
    answers = generate(model, tokenizer, prompts, generation, on_batch=on_progress)
    references = [e.output for e in test]
    correct = metrics.exact_match(answers, references)
    scores = {"exact_match": sum(correct) / len(correct)}
    if labels is not None:
        scores["accuracy"] = scores.pop("exact_match")
        scores["macro_f1"] = metrics.macro_f1(answers, references, labels)
    predictions = [
        {
            "line": e.line,
            "input": e.input,
            "reference": e.output,
            "prediction": a,
            "correct": c,
            "prompt": p,
        }
        for e, a, c, p in zip(test, answers, correct, prompts, strict=True)
    ]
    return EvalResult(predictions, scores, time.perf_counter() - started, labels)


def write_run(run_dir: Path, result: EvalResult, config: dict) -> Path:
    """Write predictions, metrics and the resolved config into ``run_dir`` atomically."""
    with atomic_directory(run_dir) as scratch:
        lines = (json.dumps(p, ensure_ascii=False) for p in result.predictions)
        (scratch / "predictions.jsonl").write_text("".join(x + "\n" for x in lines), "utf-8")
        summary = {
            "metrics": result.metrics,
            "seconds": round(result.seconds, 2),
            "examples": len(result.predictions),
            "labels": result.labels,
            **result.extra,
        }
        write_json_atomic(scratch / "metrics.json", summary)
        write_json_atomic(scratch / "config.json", config)
    return run_dir


def config_record(**parts) -> dict:
    """JSON-ready copy of the settings (dataclasses and pydantic models included)."""

    def plain(value):
        if hasattr(value, "model_dump"):
            return value.model_dump()
        if hasattr(value, "__dataclass_fields__"):
            return asdict(value)
        if isinstance(value, Path):
            return str(value)
        return value

    return {key: plain(value) for key, value in parts.items()}
