"""Run a prompt strategy over a test set and record everything needed to trust the number.

Pipeline: choose shots → render prompts → label scoring and/or free generation → extract
answers (chain of thought) → metrics with bootstrap intervals → predictions + metrics files.
"""

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

from tunelab.data.loading import Example
from tunelab.errors import TuneLabError
from tunelab.evaluation import metrics as m
from tunelab.evaluation.classifier import classifier_labels, classifier_logits, is_classifier
from tunelab.evaluation.label_scoring import score_labels
from tunelab.evaluation.neighbour_vote import NeighbourVote
from tunelab.generation import GenerationConfig, generate
from tunelab.generation.constraints import Constraint
from tunelab.models.embeddings import get_embedder
from tunelab.paths import strict_json, write_json_atomic, write_text_atomic
from tunelab.prompting.cot import extract_answer
from tunelab.prompting.render import (
    build_prompts,
    encode_prompt,
    encode_prompts,
    readable,
    render_user_turn,
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
    latency_rows: int = 0  # test rows also answered one at a time, to time one request


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


def fit_inputs(model, tokenizer, strategy, examples, labels, shots, settings: EvalSettings):
    """Cut inputs whose prompt would not fit the model's context; returns the examples and the
    lines that were cut.

    Rule: a prompt may use the model's context (``max_position_embeddings``) less the room its
    answer needs (``max_new_tokens`` when generating, the longest label when scoring) and less
    any virtual tokens of a soft prompt. When a rendered prompt is longer, the example's input
    keeps its first tokens and loses the rest, by as many tokens as the prompt is over (the
    instruction, shots and template stay whole). A model without a known context is left
    alone. An input far beyond any context is cut by characters first, so a 5 MB line never
    reaches the tokenizer whole.
    """
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not context:
        return examples, []
    answer = settings.generation.max_new_tokens
    if labels and resolve_modes(settings.mode, labels, strategy.cot)[0] == "score":
        answer = max(len(tokenizer(x, add_special_tokens=False)["input_ids"]) for x in labels) + 1
    budget = context - answer - getattr(model, "virtual_tokens", 0)
    fitted, cut = [], []
    for example, chosen in zip(examples, shots, strict=True):
        if len(example.input) > 32 * context:
            example = replace(example, input=example.input[: 32 * context])
        for _ in range(3):  # the template around the input rarely shifts the count
            prompt = build_prompts(tokenizer, strategy, [example], labels, [chosen])[0]
            over = len(encode_prompt(tokenizer, prompt)) - budget
            if over <= 0:
                break
            ids = tokenizer(example.input, add_special_tokens=False)["input_ids"]
            example = replace(example, input=tokenizer.decode(ids[: max(len(ids) - over, 1)]))
        if example.input != examples[len(fitted)].input:
            cut.append(example.line)
        fitted.append(example)
    return fitted, cut


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

    Time is recorded per phase (``extra["timing"]``: shot retrieval, prompt rendering, model,
    metrics), so speed figures are model time only: ``examples_per_second`` at the batch size,
    and with ``settings.latency_rows`` the model time of one request (``latency_ms_batch1``).
    """
    started = time.perf_counter()
    rows, extra, clock = _predict(
        model, tokenizer, strategy, test, train=train, labels=labels, settings=settings,
        on_progress=on_progress, chosen_shots=chosen_shots,
    )  # fmt: skip
    with clock("metrics"):
        scores = _score_rows(rows, extra["modes"], labels, settings)
    extra["timing"] = clock.seconds
    return EvalResult(rows, scores, time.perf_counter() - started, labels, extra)


def _predict(
    model,
    tokenizer,
    strategy: PromptStrategy,
    test: list[Example],
    *,
    train,
    labels,
    settings: EvalSettings,
    on_progress,
    chosen_shots=None,
) -> tuple[list[dict], dict, "_PhaseClock"]:
    """Each test row's answers (a row per example: its prompt, each mode's prediction, raw
    output and checklist coverage), the speed record, and the time spent per phase. No
    metrics: they are computed over the whole test set (:func:`_score_rows`), which a
    distributed run gathers first."""
    if labels is not None and not labels:
        raise TuneLabError("the label set is empty")
    modes = resolve_modes(settings.mode, labels, strategy.cot)
    check_classifier(model, labels, modes)
    check_constraint(strategy, modes)
    check_vote(strategy, modes, labels)
    settings = with_constraint(settings, strategy)
    clock = _PhaseClock()
    with clock("retrieval"):
        shots, retriever = chosen_shots or select_shots(
            strategy, list(train), test, seed=settings.seed, embedder=settings.embedder
        )
    queries = test  # as retrieved: the vote weighs the shots by the same text
    with clock("prompts"):
        test, cut = fit_inputs(model, tokenizer, strategy, test, labels, shots, settings)
        prompts = build_prompts(tokenizer, strategy, test, labels, shots)
        prompt_tokens = [len(ids) for ids in encode_prompts(tokenizer, prompts)]
    vote = None
    if strategy.knn_weight:
        with clock("retrieval"):
            vote = _neighbour_vote(strategy, queries, shots, train, settings)
    rows = [
        {"line": e.line, "input": e.input, "reference": e.output, "prompt": readable(p)}
        for e, p in zip(test, prompts, strict=True)
    ]
    speed = {}
    for mode in modes:
        with clock("model") as elapsed:
            if mode == "score":
                answers = _predict_by_scoring(
                    model, tokenizer, prompts, labels, settings, on_progress, vote
                )
                raw = answers
            else:
                raw = generate(model, tokenizer, prompts, settings.generation, on_batch=on_progress)
                answers = [extract_answer(r, labels) for r in raw] if strategy.cot else raw
        speed[mode] = len(test) / max(elapsed(), 1e-9)
        with clock("metrics"):
            coverage = None
            if settings.checklist_field:
                coverage = m.checklist_coverage(answers, checklists(test, settings.checklist_field))
        for index, (row, answer, output) in enumerate(zip(rows, answers, raw, strict=True)):
            row[f"{mode}_prediction"] = answer
            if coverage is not None:
                row[f"{mode}_checklist"] = coverage[index]
            if mode == "generate":
                row["raw_output"] = output
    if vote is not None:  # what the shots alone would have answered
        for row, winner in zip(rows, vote.winners(labels), strict=True):
            row["neighbour_vote"] = winner
    for row in rows:
        row["prediction"] = row[f"{modes[0]}_prediction"]
        row["correct"] = m.exact_match([row["prediction"]], [row["reference"]])[0]
    extra = {
        "modes": modes,
        "examples_per_second": speed,
        "retriever": retriever,
        "prompt_tokens_mean": sum(prompt_tokens) / max(len(prompt_tokens), 1),
        "examples": len(test),
        "inputs_cut": cut,
        "constraint": constraint.kind if (constraint := settings.generation.constraint) else None,
    }
    if settings.latency_rows:
        extra["latency_ms_batch1"] = _one_request_ms(
            model, tokenizer, prompts[: settings.latency_rows], labels, modes[0], settings, vote
        )
    return rows, extra, clock


def _score_rows(rows: list[dict], modes: list[str], labels, settings: EvalSettings) -> dict:
    """The metrics of every mode's answers over all ``rows``, with intervals; each row gets
    its own values (``scores``), so two strategies can be compared row by row."""
    scores = {}
    for mode in modes:
        answers = [row[f"{mode}_prediction"] for row in rows]
        raw = [row.get("raw_output", a) if mode == "generate" else a
               for row, a in zip(rows, answers, strict=True)]  # fmt: skip
        coverage = [row[f"{mode}_checklist"] for row in rows] if settings.checklist_field else None
        prefix = f"{mode}/" if len(modes) > 1 else ""
        metrics, per_example = _mode_metrics(
            answers, raw, [row["reference"] for row in rows], labels, settings, prefix, coverage
        )
        scores.update(metrics)
        for index, row in enumerate(rows):
            row.setdefault("scores", {}).update(
                {name: values[index] for name, values in per_example.items()}
            )
    return scores


def check_constraint(strategy: PromptStrategy, modes: list[str]) -> None:
    """A constraint shapes generated answers; label scoring generates none. Callers that can
    check it before any model loads do (``modes`` from :func:`resolve_modes`)."""
    if strategy.constrain is not None and "generate" not in modes:
        raise TuneLabError(
            "constrained decoding applies to generated answers, and this evaluation scores "
            "labels; use --mode generate (mode: generate) or drop the constraint"
        )


def check_vote(strategy: PromptStrategy, modes: list[str], labels: list[str] | None) -> None:
    """A neighbour vote blends label answers: it needs a label set and label scoring. Callers
    check it before any model loads (``modes`` from :func:`resolve_modes`)."""
    if not strategy.knn_weight or "score" in modes:
        return
    if labels is None:
        why = "there is no label set (auto found none: name one with --labels a,b,c)"
    elif strategy.cot:
        why = "chain of thought generates its answers"
    else:
        why = "the answers are generated (mode generate): use mode score or both"
    raise TuneLabError(
        f"knn_weight {strategy.knn_weight:g} blends label scores with the shots' vote, and {why}; "
        "knn_weight 0 answers without the vote"
    )


def check_classifier(model, labels: list[str] | None, modes: list[str]) -> None:
    """A classification head answers with one of its own labels and generates nothing."""
    if not is_classifier(model):
        return
    if "generate" in modes:
        raise TuneLabError(
            "this run answers through a classification head, which generates no text; "
            "evaluate it with --mode score or auto (mode: score)"
        )
    if labels is not None and set(labels) != set(classifier_labels(model)):
        unknown = sorted(set(labels) - set(classifier_labels(model)))[:3]
        raise TuneLabError(
            "the classification head was trained on another label set"
            + (f"; it cannot answer {', '.join(unknown)}" if unknown else "")
        )


def with_constraint(settings: EvalSettings, strategy: PromptStrategy) -> EvalSettings:
    """The strategy's ``constrain`` (compiled here, so a bad grammar stops before any
    generation) becomes the generation's constraint."""
    constraint = Constraint.of(strategy.constrain)
    if constraint == settings.generation.constraint:
        return settings
    return replace(settings, generation=replace(settings.generation, constraint=constraint))


class _PhaseClock:
    """Seconds spent per named phase: ``with clock("model") as elapsed: ...; elapsed()``."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str):
        began = time.perf_counter()
        spent = [0.0]
        try:
            yield lambda: spent[0]
        finally:
            spent[0] = time.perf_counter() - began
            self.seconds[phase] = round(self.seconds.get(phase, 0.0) + spent[0], 4)


def _one_request_ms(
    model, tokenizer, prompts, labels, mode, settings: EvalSettings, vote=None
) -> float:
    """Mean model time of answering each prompt alone (batch size 1): what one request to
    this strategy costs, whatever batch size the evaluation used (with a neighbour vote, its
    pruning included; the query's embedding is not counted)."""
    single = replace(settings, generation=replace(settings.generation, batch_size=1))
    began = time.perf_counter()
    for index, prompt in enumerate(prompts):
        if mode == "score":
            own = vote.rows([index]) if vote is not None else None
            _predict_by_scoring(model, tokenizer, [prompt], labels, single, None, own)
        else:
            generate(model, tokenizer, [prompt], single.generation)
    return round(1000 * (time.perf_counter() - began) / max(len(prompts), 1), 1)


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
    part = distributed.shard(test)
    started = time.perf_counter()
    own_rows, own_extra = [], None
    if part:
        own_rows, own_extra, clock = _predict(
            model, tokenizer, strategy, part, train=train, labels=labels, settings=settings,
            on_progress=on_progress,
        )  # fmt: skip
        own_extra["timing"] = clock.seconds
    rows = distributed.unshard(distributed.gather(own_rows))
    seconds = max(distributed.gather(time.perf_counter() - started))
    modes = resolve_modes(settings.mode, labels, strategy.cot)
    scoring = time.perf_counter()
    scores = _score_rows(rows, modes, labels, settings)  # over the whole test set
    scoring = time.perf_counter() - scoring
    extra = {"modes": modes, "processes": distributed.world_size()}
    parts = distributed.gather(own_extra)
    extra["inputs_cut"] = sorted(line for p in parts if p for line in p.get("inputs_cut", []))
    extra |= _merged_speed(parts)
    if "timing" in extra:  # the whole-set scoring, after the shards' own phases
        timing = extra["timing"]
        timing["metrics"] = round(timing.get("metrics", 0.0) + scoring, 4)
    return EvalResult(rows, scores, seconds + scoring, labels, extra)


def _merged_speed(parts: list[dict | None]) -> dict:
    """Speed figures of a sharded evaluation from each process's own: the processes run side
    by side, so throughputs add up and a phase takes as long as its slowest process; one
    request costs the mean of what each process measured; prompt tokens are weighted by
    shard size."""
    parts = [p for p in parts if p]
    if not parts:
        return {}
    merged = {
        "examples_per_second": {
            mode: sum(p["examples_per_second"][mode] for p in parts)
            for mode in parts[0]["examples_per_second"]
        },
        "timing": {
            phase: max(p["timing"].get(phase, 0.0) for p in parts) for phase in parts[0]["timing"]
        },
        "prompt_tokens_mean": sum(p["prompt_tokens_mean"] * p["examples"] for p in parts)
        / max(sum(p["examples"] for p in parts), 1),
    }
    latencies = [p["latency_ms_batch1"] for p in parts if "latency_ms_batch1" in p]
    if latencies:
        merged["latency_ms_batch1"] = round(sum(latencies) / len(latencies), 1)
    return merged


def _mode_metrics(answers, raw, references, labels, settings, prefix, coverage):
    """The metrics of one mode's answers and the per-example values behind them (the
    checklist coverage included when measured); per-example values let two strategies be
    compared row by row."""
    scores, per_example = _score(answers, raw, references, labels, settings, prefix)
    if coverage is not None:
        boot = {"resamples": settings.resamples, "seed": settings.seed}
        scores[f"{prefix}checklist"] = m.mean_with_interval(coverage, **boot)
        per_example[f"{prefix}checklist"] = list(coverage)
    return scores, per_example


def checklists(examples: list[Example], field_name: str) -> list[list[str]]:
    """Each example's required phrases from ``field_name`` (a ';'-separated text field)."""
    lists = []
    for example in examples:
        value = dict(example.fields).get(field_name)
        if value is None:
            raise TuneLabError(f"line {example.line}: field '{field_name}' (checklist) is missing")
        lists.append([item.strip() for item in value.split(";") if item.strip()])
    return lists


def _predict_by_scoring(
    model, tokenizer, prompts, labels, settings, on_progress, vote: NeighbourVote | None = None
) -> list[str]:
    """Each prompt's label: a classification head's answer, else the best-scored label; with a
    vote, the best label of the blend (label scoring then prunes for the blend's answer)."""
    batch = settings.generation.batch_size
    if is_classifier(model):
        order = classifier_labels(model)
        ids = encode_prompts(tokenizer, prompts)
        table = classifier_logits(model, tokenizer, ids, batch_size=batch, on_batch=on_progress)
    else:
        order = labels
        table = score_labels(
            model,
            tokenizer,
            prompts,
            labels,
            batch_size=batch,
            votes=vote.table(labels) if vote is not None else None,
            weight=vote.weight if vote is not None else 0.0,
            on_batch=on_progress,
        )
    if vote is not None:
        table = vote.blend(table, order)
    return [order[i] for i in table.argmax(-1).tolist()]


def _neighbour_vote(strategy, queries, shots, train, settings: EvalSettings) -> NeighbourVote:
    """The vote of each query's shots, embedded with the retriever that chose them."""
    embedder = get_embedder([e.input for e in train], settings.embedder)
    return NeighbourVote.of(
        queries,
        shots,
        embedder,
        weight=strategy.knn_weight,
        temperature=strategy.knn_temperature,
    )


def _score(answers, raw, references, labels, settings: EvalSettings, prefix: str):
    """(metrics with intervals, per-example values of the metrics that have them). JSON
    answers get JSON metrics only: text metrics would score them as strings (after removing
    punctuation an empty answer "equals" {})."""
    boot = {"resamples": settings.resamples, "seed": settings.seed}
    per_example, corpus = {}, {}
    json_task = labels is None and m.is_json_task(references)
    if json_task:
        per_example["json_match"] = m.json_match(answers, references)
        per_example["json_valid"] = m.json_valid(raw, settings.format_schema)
        # reported micro-averaged over every pair (below); per example for paired comparisons
        per_example["field_f1"] = m.field_f1(answers, references)
        corpus |= m.field_scores_with_intervals(answers, references, **boot)
    if labels is not None:
        per_example["accuracy"] = m.exact_match(answers, references)
        corpus["macro_f1"] = m.corpus_with_interval(
            lambda p, r: m.macro_f1(p, r, labels), answers, references, seed=settings.seed
        )
    elif not json_task:
        # the stock embedder for the metric: a tuned retriever (--embedder FOLDER) would make
        # it incomparable across runs
        stock = "tfidf" if settings.embedder == "tfidf" else "auto"
        embedder = get_embedder(answers + references, stock)
        per_example |= {
            "exact_match": m.exact_match(answers, references),
            "token_f1": m.token_f1(answers, references),
            "rouge_l": m.rouge_l(answers, references),
            "embedding_similarity": m.embedding_similarity(answers, references, embedder),
        }
        corpus["bleu"] = m.corpus_with_interval(m.bleu, answers, references, seed=settings.seed)
        corpus["chrf"] = m.corpus_with_interval(m.chrf, answers, references, seed=settings.seed)
    # with JSON answers, a schema alone is already json_valid's
    if settings.format_regex or (settings.format_schema is not None and "json_valid" not in
                                 per_example):  # fmt: skip
        per_example["format_compliance"] = m.format_compliance(
            raw, regex=settings.format_regex, schema=settings.format_schema
        )
    out = {
        name: corpus.pop(name) if name in corpus else m.mean_with_interval(values, **boot)
        for name, values in per_example.items()
    } | corpus
    return (
        {prefix + name: value for name, value in out.items()},
        {prefix + name: value for name, value in per_example.items()},
    )


def check_paraphrases(
    templates: list[str], examples: list[Example], labels: list[str] | None
) -> None:
    """Render every template with these examples, so a bad one stops before any is run."""
    for index, template in enumerate(templates):
        try:
            for example in examples:
                render_user_turn(template, example, labels)
        except TuneLabError as err:
            raise TuneLabError(f"paraphrase {index + 1} ({template[:40]!r}): {err}") from None


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

    The metric is the task's headline (accuracy for a label set, ROUGE-L for free text); the
    spread is its max - min across templates. Agreement, per example: with a label set, 1 when
    every template gives the same normalised label, else 0; for free text (where two good
    answers rarely match word for word), the mean pairwise ROUGE-L of the templates' answers.
    The reported agreement is the mean over examples with its interval.
    """
    if len(templates) < 2:
        raise TuneLabError("consistency needs at least two paraphrased templates")
    chosen_shots = select_shots(
        strategy, list(train), test, seed=settings.seed, embedder=settings.embedder
    )
    check_paraphrases(templates, test[:1] + [s for shots in chosen_shots[0][:1] for s in shots],
                      labels)  # fmt: skip
    per_template, answers = [], []
    for index, template in enumerate(templates):
        variant = strategy.model_copy(  # the model's answers only: the shots' vote is
            update={"template": template, "name": f"paraphrase-{index}", "knn_weight": 0.0}
        )  # the same under every template and would hide how the template moves them
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
        metric = "accuracy" if labels is not None else "rouge_l"
        metric = metric if metric in result.metrics else next(iter(result.metrics))
        per_template.append({"template": template, metric: result.metrics[metric]["value"]})
        answers.append([r["prediction"] for r in result.predictions])
    values = [row[metric] for row in per_template]
    agree = [_agreement(column, labels is not None) for column in zip(*answers, strict=True)]
    return {
        "metric": metric,
        "per_template": per_template,
        "spread": max(values) - min(values),
        "mean": sum(values) / len(values),
        "agreement": m.mean_with_interval(agree, resamples=settings.resamples, seed=settings.seed),
    }


def _agreement(answers: tuple[str, ...], labels: bool) -> float:
    """How far the templates' answers to one example agree (see evaluate_consistency)."""
    if labels:
        return float(len({m.normalize_answer(a) for a in answers}) == 1)
    pairs = [(a, b) for i, a in enumerate(answers) for b in answers[i + 1 :]]
    similarity = m.rouge_l([a for a, _ in pairs], [b for _, b in pairs])
    return sum(similarity) / len(similarity) if similarity else 1.0


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
    lines = (json.dumps(strict_json(p), ensure_ascii=False, allow_nan=False) for p in predictions)
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
