"""``tunelab eval``: measure a prompt strategy on held-out data."""

import time
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from tunelab.cli.common import choice, device_option, dtype_option
from tunelab.cli.output import console, first_lines, inputs_cut_warning, warn
from tunelab.data import load_dataset, split_examples
from tunelab.data.loading import load_like
from tunelab.data.stats import input_hash, label_warnings, resolve_labels
from tunelab.errors import TuneLabError
from tunelab.evaluation.runner import (
    EvalResult,
    EvalSettings,
    check_constraint,
    check_vote,
    config_record,
    evaluate,
    evaluate_consistency,
    resolve_modes,
    write_run,
)
from tunelab.generation import GenerationConfig
from tunelab.generation.constraints import Constraint, constraint_value, read_schema
from tunelab.models import DEFAULT_MODEL, load_model
from tunelab.models.device import resolve_placement
from tunelab.models.embeddings import (
    EMBEDDER_HELP,
    check_not_learned,
    embedder_choice,
    is_model_folder,
)
from tunelab.paths import require_file
from tunelab.prompting import PromptStrategy, load_strategy
from tunelab.prompting.shot_pool import SHOT_POOL_HELP, shot_pool_line, usable_shot_rows
from tunelab.prompting.shots import check_retriever_use
from tunelab.prompting.strategy import (
    PARAPHRASES_CLASSIFY,
    PARAPHRASES_FREE,
    validate_strategy,
)
from tunelab.prompting.task_prefix import apply_task_prefix, with_task_prefix
from tunelab.runs import check_out, claim
from tunelab.training.artifacts import load_trained_run
from tunelab.yaml_files import read_yaml


def eval_command(
    data: Path | None = typer.Option(
        None,
        help="Training data (shots, label set); split if no --test. Needed unless --adapter "
        "and --test are given (the run keeps its labels and its shot pool).",
    ),
    test: Path | None = typer.Option(None, help="Held-out test file."),
    input_field: str | None = typer.Option(None, "--input", help="Input field/column."),
    output_field: str | None = typer.Option(None, "--output", help="Output field/column."),
    model: str = typer.Option(DEFAULT_MODEL, help="Registered name, local folder or hub id."),
    adapter: Path | None = typer.Option(
        None, help="A `tunelab train` run folder: its model, prompt, labels and task prefix."
    ),
    prompt: Path | None = typer.Option(None, help="Prompt strategy file (YAML/JSON)."),
    system: str | None = typer.Option(None, help="System/context text (overrides the file)."),
    shots: int | None = typer.Option(None, min=0, help="Few-shot examples (overrides the file)."),
    selector: str | None = typer.Option(None, help="fixed | random | similar."),
    cot: bool | None = typer.Option(None, "--cot/--no-cot", help="Chain of thought."),
    knn_weight: float | None = typer.Option(
        None, help=PromptStrategy.model_fields["knn_weight"].description + " Overrides the file."
    ),
    knn_temperature: float | None = typer.Option(
        None,
        help=PromptStrategy.model_fields["knn_temperature"].description + " Overrides the file.",
    ),
    labels: str = typer.Option(
        "auto",
        help="auto: a label set when outputs look like labels; "
        "none: free text; or a comma-separated list.",
    ),
    mode: str = typer.Option(
        "auto",
        help="auto | score (label log-likelihood) | generate | "
        "both. auto scores labels when there is a label set.",
    ),
    limit: int | None = typer.Option(None, min=1, help="Evaluate only the first N test rows."),
    max_new_tokens: int = typer.Option(32, min=1),
    temperature: float = typer.Option(0.0, min=0.0, help="0 = greedy decoding."),
    stop: list[str] = typer.Option([], help="Stop string (repeatable)."),
    format_regex: str | None = typer.Option(None, help="Regex the raw output must fully match."),
    format_schema: Path | None = typer.Option(None, help="JSON schema file for the output."),
    constrain: str | None = typer.Option(
        None,
        help="Constrained decoding: json (any JSON object) | schema (--format-schema) | regex "
        "(--format-regex) | a JSON schema file | regex:PATTERN | none (drop the strategy's).",
    ),
    consistency: bool = typer.Option(False, help="Also run paraphrased templates."),
    paraphrases: Path | None = typer.Option(None, help="YAML list of templates for consistency."),
    embedder: str = typer.Option("auto", help=EMBEDDER_HELP),
    shot_pool: Path | None = typer.Option(
        None,
        help=SHOT_POOL_HELP + " Not with an --adapter run trained with shots (it has its own).",
    ),
    seed: int = typer.Option(0),
    batch_size: int = typer.Option(8, min=1),
    out: Path | None = typer.Option(
        None, help="Run folder (default runs/eval-<time>): new, empty or an earlier eval run."
    ),
    show: int = typer.Option(10, min=0, help="Predictions to print."),
    device: str = device_option(),
    dtype: str = dtype_option(),
) -> None:
    """Evaluate a prompt strategy and write predictions + metrics to a run folder."""
    run_dir = out or Path("runs") / time.strftime("eval-%Y%m%d-%H%M%S")
    check_out(run_dir, "eval")  # before any work: a folder that is not ours is refused
    placement = resolve_placement(device, dtype)
    trained = _trained_run_meta(adapter)
    strategy = _strategy(
        prompt,
        system=system,
        shots=shots,
        selector=selector,
        cot=cot,
        knn_weight=knn_weight,
        knn_temperature=knn_temperature,
        base=trained.get("strategy"),
    )
    schema = read_schema(format_schema) if format_schema else None
    if constrain is not None:
        value = constraint_value(constrain, format_schema=schema, format_regex=format_regex)
        strategy = validate_strategy(strategy.model_dump() | {"constrain": value}, "--")
    Constraint.of(strategy.constrain)  # a grammar that cannot compile stops here, not later
    _check_data_given(data, test, adapter, trained, strategy)
    train_set = load_dataset(data or test, input_field, output_field)  # fields as in --data
    if data is None:  # --adapter and --test alone: what was read are the test rows
        train, held_out = [], train_set.examples
    elif test:
        train, held_out = train_set.examples, load_dataset(test, input_field, output_field).examples
    else:
        train, held_out = split_examples(train_set.examples, 0.2, seed=seed)
    every_test_row = held_out  # the stored pool is filtered against all, whatever --limit
    test_rows = held_out  # as read (no task prefix): what a tuned retriever's record holds
    held_out = held_out[:limit] if limit else held_out
    if labels == "auto" and "labels" in trained:
        label_set = trained["labels"]
    else:
        label_set = resolve_labels(labels, train)
    warn(label_warnings(label_set, held_out))
    if adapter:
        source = test or data  # the file the test rows were read from
        warn(_trained_rows_warning(adapter, held_out, source, trained.get("task_prefix")))
    if shot_pool:
        train = train + _usable_pool_rows(shot_pool, strategy, trained, train_set, train,
                                          every_test_row, label_set)  # fmt: skip
    train = with_task_prefix(train, trained.get("task_prefix"))
    embedder = embedder_choice(embedder)
    check_retriever_use(embedder, strategy)
    if trained.get("shot_pool") and strategy.shots:  # the rows the run was trained with
        from tunelab.training.artifacts import read_shot_pool, run_retriever

        train = read_shot_pool(adapter, trained)
        if strategy.selector == "similar":
            embedder, why = run_retriever(adapter, trained, embedder)
            warn([why] if why else [])
            every_test_row = with_task_prefix(every_test_row, trained.get("task_prefix"))
            train = _pool_without_test_rows(train, every_test_row)
    if is_model_folder(embedder):  # given, or the run's own: no test row learned
        check_not_learned(Path(embedder), test_rows, "test")
    held_out = with_task_prefix(held_out, trained.get("task_prefix"))
    settings = EvalSettings(
        mode=choice("--mode", mode, ("auto", "score", "generate", "both")),
        generation=GenerationConfig(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed,
            stop=tuple(stop),
            batch_size=batch_size,
        ),
        format_regex=format_regex,
        format_schema=schema,
        seed=seed,
        embedder=embedder,
    )
    modes = resolve_modes(settings.mode, label_set, strategy.cot)
    check_constraint(strategy, modes)  # before the model loads
    check_vote(strategy, modes, label_set)
    passes = len(modes)
    templates = None
    if consistency or paraphrases:
        templates = _paraphrases(paraphrases, label_set, held_out[:1])
    console.print(f"loading {adapter or model} ...")
    where = placement.record()
    loaded = load_trained_run(adapter, **where) if adapter else load_model(model, **where)
    with _progress() as progress:
        result = _run(
            progress,
            strategy.name,
            len(held_out) * passes,
            evaluate,
            loaded.model,
            loaded.tokenizer,
            strategy,
            held_out,
            train=train,
            labels=label_set,
            settings=settings,
        )
        if templates:
            result.extra["consistency"] = _run(
                progress,
                "paraphrases",
                len(held_out) * len(templates),
                evaluate_consistency,
                loaded.model,
                loaded.tokenizer,
                strategy,
                templates,
                held_out,
                train=train,
                labels=label_set,
                settings=settings,
            )
    config = config_record(
        data=data,
        test=test,
        model=trained.get("base_model", model),
        adapter=adapter,
        strategy=strategy,
        settings=settings,
        labels=label_set,
        limit=limit,
        shot_pool=shot_pool,
        placement=placement.record(),
    )
    write_run(claim(run_dir, "eval"), result, config)
    _print_result(result, strategy, show)
    warn(inputs_cut_warning(result.extra.get("inputs_cut", [])))
    console.print(f"run folder: {run_dir}")


def _check_data_given(data, test, adapter, trained: dict, strategy: PromptStrategy) -> None:
    """--data may be left out only where nothing is read from it: a trained run (its labels)
    evaluated on --test, whose shots, if any, come from the pool it stores."""
    if data is not None:
        return
    if adapter is None or test is None:
        raise TuneLabError(
            "--data is needed: the shots and the label set come from it (only --adapter RUN "
            "with --test FILE may go without)"
        )
    if strategy.shots and not trained.get("shot_pool"):
        raise TuneLabError(
            f"--data is needed: the prompt shows {strategy.shots} shots, and {adapter} keeps "
            "no shot pool of its own"
        )


def _trained_run_meta(adapter: Path | None) -> dict:
    if adapter is None:
        return {}
    from tunelab.training.artifacts import read_meta

    return read_meta(adapter)


def _trained_rows_warning(adapter: Path, rows, source: Path, prefix: str | None) -> list[str]:
    """Test rows whose inputs the run learned from score as remembered, not as answered
    (told for runs that record what they learned from: trained_inputs.json)."""
    from tunelab.training.artifacts import trained_inputs

    seen = trained_inputs(adapter)
    if not seen:
        return []
    lines = [r.line for r in rows if input_hash(apply_task_prefix(r.input, prefix)) in seen]
    if not lines:
        return []
    if len(lines) == 1:
        which = f"{source} line {lines[0]}) has an input"
        verdict = "its score is not a held-out score"
    else:
        which = f"{source} lines {first_lines(lines)}) have inputs"
        verdict = "their scores are not held-out scores"
    return [
        f"{len(lines)} of the {len(rows)} test rows ({which} {adapter} learned from in "
        f"training: {verdict}"
    ]


def _strategy(path: Path | None, base: dict | None = None, **overrides) -> PromptStrategy:
    """The strategy file, else the one a trained run was trained with, else zero-shot."""
    if path:
        strategy = load_strategy(path)
    elif base:
        strategy = validate_strategy(base, where="trained run strategy: ")
    else:
        strategy = PromptStrategy()
    changes = {key: value for key, value in overrides.items() if value is not None}
    if not changes:
        return strategy
    if path is None and base is None and "name" not in changes:
        changes["name"] = _describe(changes)
    return validate_strategy({**strategy.model_dump(), **changes}, where="--")


def _describe(changes: dict) -> str:
    parts = [f"{changes['shots']}-shot" if changes.get("shots") else "zero-shot"]
    if changes.get("shots") and changes.get("selector"):
        parts.append(changes["selector"])
    if changes.get("system"):
        parts.append("context")
    if changes.get("knn_weight"):
        parts.append(f"knn {changes['knn_weight']:g}")
    if changes.get("cot"):
        parts.append("cot")
    return " ".join(parts)


def _paraphrases(path: Path | None, labels, examples: list) -> list[str]:
    """The consistency templates, each rendered with a test row before the evaluation runs:
    a template that does not compile or names a missing field stops here, naming its file."""
    if path is None:
        return PARAPHRASES_CLASSIFY if labels else PARAPHRASES_FREE
    require_file(path, "paraphrase file")
    templates = read_yaml(path)
    if not isinstance(templates, list) or not all(isinstance(t, str) for t in templates):
        raise TuneLabError(f"{path}: expected a YAML list of template strings")
    from tunelab.evaluation.runner import check_paraphrases

    try:
        check_paraphrases(templates, examples, labels)
    except TuneLabError as err:
        raise TuneLabError(f"{path}: {err}") from None
    return templates


def _progress() -> Progress:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    return Progress(*columns, console=console, transient=True)


def _run(progress: Progress, label: str, total: int, function, *args, **kwargs):
    task = progress.add_task(label, total=total)
    return function(*args, on_progress=lambda n: progress.advance(task, n), **kwargs)


def _print_result(result: EvalResult, strategy: PromptStrategy, show: int) -> None:
    if show:
        table = Table("input", "reference", "prediction", "", title="predictions")
        for row in result.predictions[:show]:
            mark = "[green]✓[/]" if row["correct"] else "[red]✗[/]"
            table.add_row(row["input"][:60], row["reference"][:40], row["prediction"][:40], mark)
        console.print(table)
    table = Table(
        "metric",
        "value",
        "95% interval",
        title=f"{strategy.name} ({len(result.predictions)} examples, {result.seconds:.1f} s)",
    )
    for name, value in result.metrics.items():
        table.add_row(name, f"{value['value']:.3f}", f"{value['low']:.3f} – {value['high']:.3f}")
    console.print(table)
    if result.extra.get("retriever"):
        console.print(f"similar shots retrieved with {result.extra['retriever']}")
    speeds = ", ".join(f"{k} {v:.1f} ex/s" for k, v in result.extra["examples_per_second"].items())
    console.print(f"speed: {speeds}")
    if "consistency" in result.extra:
        c = result.extra["consistency"]
        console.print(
            f"consistency over {len(c['per_template'])} templates: {c['metric']} mean "
            f"{c['mean']:.3f}, spread {c['spread']:.3f}; "
            + (
                f"all answers agree on {c['agreement']['value']:.1%} of examples"
                if result.labels
                else f"answers agree (mean pairwise ROUGE-L) {c['agreement']['value']:.3f}"
            )
        )


def _pool_without_test_rows(pool: list, held_out: list) -> list:
    """The run's stored shot pool less the rows that share an input with these test rows (for
    retrieved shots; fixed and random ones keep the training pool's indices and draws, and
    never show a query its own row)."""
    from tunelab.prompting.shot_pool import without_held_out

    kept = without_held_out(pool, held_out)
    if len(kept) < len(pool):
        warn(
            [f"{len(pool) - len(kept)} rows of the run's shot pool share an input with the test "
             "rows: left out of the prompts, so no test answer is shown"]
        )  # fmt: skip
    if not kept:
        raise TuneLabError("every row of the run's shot pool is a test row: no shots are left")
    return kept


def _usable_pool_rows(path: Path, strategy, trained: dict, train_set, train, test, labels):
    """The rows of --shot-pool that may join the shot source (as `tunelab train` and
    `optimize` filter them), with the plan's line saying what was left out."""
    if not strategy.shots:
        raise TuneLabError("--shot-pool is where shots come from: it needs --shots N (N > 0)")
    if trained.get("shot_pool"):
        raise TuneLabError(
            "--shot-pool: the --adapter run retrieves its shots from the pool it was trained "
            "with (adapter/shots.jsonl); train it again with --shot-pool to change that pool"
        )
    extra = load_like(path, train_set).examples
    kept, left_out = usable_shot_rows(train, extra, test, labels)
    console.print(shot_pool_line(len(train), len(kept), left_out) or f"{path}: no usable rows")
    return kept
