"""Run a prompt strategy over a test set and record everything needed to trust the number.

Pipeline: choose shots → render prompts → label scoring and/or free generation → extract
answers (chain of thought) → metrics with bootstrap intervals → predictions + metrics files.
"""

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

from tunelab.data.loading import Example
from tunelab.errors import TuneLabError
from tunelab.evaluation import metrics as m
from tunelab.evaluation.embeddings import get_embedder
from tunelab.evaluation.generation import GenerationConfig, generate
from tunelab.evaluation.label_scoring import score_labels
from tunelab.paths import write_json_atomic, write_text_atomic
from tunelab.prompting.cot import extract_answer
from tunelab.prompting.render import (
    build_messages,
    render_text,
    render_user_turn,
    to_prompt_text,
)
from tunelab.prompting.shots import select_shots
from tunelab.prompting.strategy import PromptStrategy

Mode = Literal["auto", "score", "generate", "both"]
Progress = Callable[[int], None]


@dataclass(frozen=True)
class EvalSettings:
    mode: Mode = "auto"  # auto: label scoring when there is a label set, else generation
    generation: GenerationConfig = GenerationConfig()
    format_regex: str | None = None
    format_schema: dict | None = None
    seed: int = 0
    embedder: str = "auto"  # "tfidf" forces the fallback
    resamples: int = 1000
    checklist_field: str | None = None  # record field of required phrases, ';'-separated


@dataclass
class EvalResult:
    predictions: list[dict]
    metrics: dict[str, dict]  # name -> {"value", "low", "high"}
    seconds: float
    labels: list[str] | None = None
    extra: dict = field(default_factory=dict)

    def headline(self) -> dict[str, float]:
        return {name: v["value"] for name, v in self.metrics.items()}


def resolve_modes(mode: Mode, labels: list[str] | None, cot: bool) -> list[str]:
    if mode in ("score", "both") and labels is None:
        raise TuneLabError(f"--mode {mode} needs a label set (outputs are free text here)")
    if mode == "score" and cot:
        raise TuneLabError("chain of thought needs free generation; use --mode generate or both")
    if mode == "auto":
        return ["score"] if labels and not cot else ["generate"]
    return ["score", "generate"] if mode == "both" else [mode]


def build_prompts(
    tokenizer,
    strategy: PromptStrategy,
    examples: list[Example],
    labels: list[str] | None,
    shots: list[list[Example]],
) -> list[str]:
    template = strategy.resolved_template()
    system = system_text(strategy, labels)
    prompts = []
    for example, chosen in zip(examples, shots, strict=True):
        worked = [
            (
                render_user_turn(template, s, labels),
                f"Answer: {s.output}" if strategy.cot else s.output,
            )
            for s in chosen
        ]
        user_turn = render_user_turn(template, example, labels)
        messages = build_messages(system, user_turn, worked, history=example.messages)
        prompts.append(to_prompt_text(tokenizer, messages))
    return prompts


def system_text(strategy: PromptStrategy, labels: list[str] | None) -> str | None:
    """Persona/context first, then the task instruction rendered with the label set."""
    instruction = strategy.resolved_instruction(classification=labels is not None)
    if instruction:
        instruction = render_text(instruction, labels=labels or [])
    return "\n\n".join(p for p in (strategy.system, instruction) if p) or None


def evaluate(
    model,
    tokenizer,
    strategy: PromptStrategy,
    test: list[Example],
    *,
    train: list[Example] = (),
    labels: list[str] | None = None,
    settings: EvalSettings = EvalSettings(),
    on_progress: Progress | None = None,
    chosen_shots: tuple[list[list[Example]], str | None] | None = None,
) -> EvalResult:
    """Score ``strategy`` on ``test``; ``train`` supplies few-shot examples.

    ``chosen_shots`` (the result of :func:`select_shots`) lets callers that vary only the
    template reuse one selection instead of re-embedding the training set.
    """
    if labels is not None and not labels:
        raise TuneLabError("the label set is empty")
    modes = resolve_modes(settings.mode, labels, strategy.cot)
    started = time.perf_counter()
    shots, retriever = chosen_shots or select_shots(
        strategy, list(train), test, seed=settings.seed, embedder=settings.embedder
    )
    prompts = build_prompts(tokenizer, strategy, test, labels, shots)
    references = [e.output for e in test]
    rows = [
        {"line": e.line, "input": e.input, "reference": e.output, "prompt": p}
        for e, p in zip(test, prompts, strict=True)
    ]
    scores, speed = {}, {}
    for mode in modes:
        mode_started = time.perf_counter()
        if mode == "score":
            answers = _predict_by_scoring(model, tokenizer, prompts, labels, settings, on_progress)
            raw = answers
        else:
            raw = generate(model, tokenizer, prompts, settings.generation, on_batch=on_progress)
            answers = [extract_answer(r, labels) for r in raw] if strategy.cot else raw
        speed[mode] = len(test) / (time.perf_counter() - mode_started)
        coverage = None
        if settings.checklist_field:
            coverage = m.checklist_coverage(answers, checklists(test, settings.checklist_field))
            for row, value in zip(rows, coverage, strict=True):
                row[f"{mode}_checklist"] = value
        prefix = f"{mode}/" if len(modes) > 1 else ""
        scores.update(_mode_metrics(answers, raw, references, labels, settings, prefix, coverage))
        for row, answer, output in zip(rows, answers, raw, strict=True):
            row[f"{mode}_prediction"] = answer
            if mode == "generate":
                row["raw_output"] = output
    for row in rows:
        row["prediction"] = row[f"{modes[0]}_prediction"]
        row["correct"] = m.exact_match([row["prediction"]], [row["reference"]])[0]
    extra = {"modes": modes, "examples_per_second": speed, "retriever": retriever}
    return EvalResult(rows, scores, time.perf_counter() - started, labels, extra)


def evaluate_sharded(
    model,
    tokenizer,
    strategy: PromptStrategy,
    test: list[Example],
    *,
    train: list[Example] = (),
    labels: list[str] | None = None,
    settings: EvalSettings = EvalSettings(),
    on_progress: Progress | None = None,
) -> EvalResult:
    """`evaluate` split across the processes of a distributed run: each scores its share, the
    predictions are gathered in order, and every process computes the same metrics."""
    from tunelab import distributed

    if distributed.world_size() == 1:
        return evaluate(model, tokenizer, strategy, test, train=train, labels=labels,
                        settings=settings, on_progress=on_progress)  # fmt: skip
    modes = resolve_modes(settings.mode, labels, strategy.cot)
    part = distributed.shard(test)
    started = time.perf_counter()
    local = (
        evaluate(
            model,
            tokenizer,
            strategy,
            part,
            train=train,
            labels=labels,
            settings=settings,
            on_progress=on_progress,
        ).predictions  # fmt: skip
        if part
        else []
    )
    rows = distributed.unshard(distributed.gather(local))
    seconds = max(distributed.gather(time.perf_counter() - started))
    references = [row["reference"] for row in rows]
    scores = {}
    for mode in modes:
        answers = [row[f"{mode}_prediction"] for row in rows]
        raw = [
            row.get("raw_output", a) if mode == "generate" else a
            for row, a in zip(rows, answers, strict=True)
        ]
        coverage = [row[f"{mode}_checklist"] for row in rows] if settings.checklist_field else None
        prefix = f"{mode}/" if len(modes) > 1 else ""
        scores.update(_mode_metrics(answers, raw, references, labels, settings, prefix, coverage))
    extra = {"modes": modes, "processes": distributed.world_size()}
    return EvalResult(rows, scores, seconds, labels, extra)


def _mode_metrics(answers, raw, references, labels, settings, prefix, coverage) -> dict:
    """The metrics of one mode's answers, the checklist coverage included when measured."""
    scores = _score(answers, raw, references, labels, settings, prefix)
    if coverage is not None:
        boot = {"resamples": settings.resamples, "seed": settings.seed}
        scores[f"{prefix}checklist"] = m.mean_with_interval(coverage, **boot)
    return scores


def checklists(examples: list[Example], field_name: str) -> list[list[str]]:
    """Each example's required phrases from ``field_name`` (a ';'-separated text field)."""
    lists = []
    for example in examples:
        value = dict(example.fields).get(field_name)
        if value is None:
            raise TuneLabError(f"line {example.line}: field '{field_name}' (checklist) is missing")
        lists.append([item.strip() for item in value.split(";") if item.strip()])
    return lists


def _predict_by_scoring(model, tokenizer, prompts, labels, settings, on_progress) -> list[str]:
    table = score_labels(
        model,
        tokenizer,
        prompts,
        labels,
        batch_size=settings.generation.batch_size,
        on_batch=on_progress,
    )
    return [labels[i] for i in table.argmax(-1).tolist()]


def _score(answers, raw, references, labels, settings: EvalSettings, prefix: str) -> dict:
    boot = {"resamples": settings.resamples, "seed": settings.seed}
    out = {}
    if labels is not None:
        out["accuracy"] = m.mean_with_interval(m.exact_match(answers, references), **boot)
        out["macro_f1"] = m.corpus_with_interval(
            lambda p, r: m.macro_f1(p, r, labels), answers, references, seed=settings.seed
        )
    else:
        embedder = get_embedder(answers + references, settings.embedder)
        per_example = {
            "exact_match": m.exact_match(answers, references),
            "token_f1": m.token_f1(answers, references),
            "rouge_l": m.rouge_l(answers, references),
            "embedding_similarity": m.embedding_similarity(answers, references, embedder),
        }
        out = {name: m.mean_with_interval(v, **boot) for name, v in per_example.items()}
        out["bleu"] = m.corpus_with_interval(m.bleu, answers, references, seed=settings.seed)
        out["chrf"] = m.corpus_with_interval(m.chrf, answers, references, seed=settings.seed)
    if settings.format_regex or settings.format_schema is not None:
        compliance = m.format_compliance(
            raw, regex=settings.format_regex, schema=settings.format_schema
        )
        out["format_compliance"] = m.mean_with_interval(compliance, **boot)
    return {prefix + name: value for name, value in out.items()}


def evaluate_consistency(
    model,
    tokenizer,
    strategy: PromptStrategy,
    templates: list[str],
    test: list[Example],
    *,
    train: list[Example] = (),
    labels: list[str] | None = None,
    settings: EvalSettings = EvalSettings(),
    on_progress: Progress | None = None,
) -> dict:
    """Run the same test set through paraphrased templates: metric spread and answer agreement.

    Agreement is the share of examples on which every template gives the same normalised
    answer; the spread is max - min of the headline metric across templates.
    """
    if len(templates) < 2:
        raise TuneLabError("consistency needs at least two paraphrased templates")
    chosen_shots = select_shots(
        strategy, list(train), test, seed=settings.seed, embedder=settings.embedder
    )
    per_template, answers = [], []
    for index, template in enumerate(templates):
        variant = strategy.model_copy(update={"template": template, "name": f"paraphrase-{index}"})
        result = evaluate(
            model,
            tokenizer,
            variant,
            test,
            train=train,
            labels=labels,
            settings=replace(settings, mode=_single_mode(settings.mode)),
            on_progress=on_progress,
            chosen_shots=chosen_shots,
        )
        metric = next(iter(result.metrics))
        per_template.append({"template": template, metric: result.metrics[metric]["value"]})
        answers.append([m.normalize_answer(r["prediction"]) for r in result.predictions])
    values = [row[metric] for row in per_template]
    agree = [float(len(set(column)) == 1) for column in zip(*answers, strict=True)]
    return {
        "metric": metric,
        "per_template": per_template,
        "spread": max(values) - min(values),
        "mean": sum(values) / len(values),
        "agreement": m.mean_with_interval(agree, resamples=settings.resamples, seed=settings.seed),
    }


def _single_mode(mode: Mode) -> Mode:
    return "auto" if mode == "both" else mode


def write_run(run_dir: Path, result: EvalResult, config: dict) -> Path:
    """Write predictions, metrics and the resolved config into ``run_dir``.

    Each file is replaced atomically and nothing else in the folder is touched; whether the
    folder may be written at all is decided before (:func:`tunelab.runs.check_out`).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    write_predictions(run_dir / "predictions.jsonl", result.predictions)
    summary = {
        "metrics": result.metrics,
        "seconds": round(result.seconds, 2),
        "examples": len(result.predictions),
        "labels": result.labels,
        **result.extra,
    }
    write_json_atomic(run_dir / "config.json", config)
    if "strategy" in config:
        import yaml

        strategy = yaml.safe_dump(config["strategy"], sort_keys=False, allow_unicode=True)
        write_text_atomic(run_dir / "strategy.yaml", strategy)
    write_json_atomic(run_dir / "metrics.json", summary)  # last: the evaluation is complete
    return run_dir


def write_predictions(path: Path, predictions: list[dict]) -> None:
    lines = (json.dumps(p, ensure_ascii=False) for p in predictions)
    write_text_atomic(path, "".join(x + "\n" for x in lines))


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
