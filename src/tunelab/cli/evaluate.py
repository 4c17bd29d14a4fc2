"""``tunelab eval``: measure a prompt strategy on held-out data."""

import time
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from tunelab.cli.output import console
from tunelab.data import load_dataset, split_examples
from tunelab.data.stats import looks_like_classification
from tunelab.errors import TuneLabError
from tunelab.evaluation.generation import GenerationConfig
from tunelab.evaluation.runner import EvalResult, config_record, evaluate, write_run
from tunelab.models import DEFAULT_MODEL, load_model
from tunelab.prompting import PromptStrategy, load_strategy


def eval_command(
    data: Path = typer.Option(..., help="Training data (shots, label set); split if no --test."),
    test: Path | None = typer.Option(None, help="Held-out test file."),
    input_field: str | None = typer.Option(None, "--input", help="Input field/column."),
    output_field: str | None = typer.Option(None, "--output", help="Output field/column."),
    model: str = typer.Option(DEFAULT_MODEL, help="Registered name, local folder or hub id."),
    prompt: Path | None = typer.Option(None, help="Prompt strategy file (YAML/JSON)."),
    labels: str = typer.Option(
        "auto",
        help="auto: a label set when outputs look like labels; "
        "none: free text; or a comma-separated list.",
    ),
    limit: int | None = typer.Option(None, min=1, help="Evaluate only the first N test rows."),
    max_new_tokens: int = typer.Option(32, min=1),
    temperature: float = typer.Option(0.0, min=0.0, help="0 = greedy decoding."),
    seed: int = typer.Option(0),
    batch_size: int = typer.Option(8, min=1),
    out: Path | None = typer.Option(None, help="Run folder (default runs/eval-<time>)."),
    show: int = typer.Option(10, min=0, help="Predictions to print."),
) -> None:
    """Evaluate a prompt strategy and write predictions + metrics to a run folder."""
    train_set = load_dataset(data, input_field, output_field)
    if test:
        train, held_out = train_set.examples, load_dataset(test, input_field, output_field).examples
    else:
        train, held_out = split_examples(train_set.examples, 0.2, seed=seed)
    held_out = held_out[:limit] if limit else held_out
    label_set = _resolve_labels(labels, train)
    strategy = load_strategy(prompt) if prompt else PromptStrategy()
    generation = GenerationConfig(
        max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, batch_size=batch_size
    )
    console.print(f"loading {model} ...")
    loaded = load_model(model)
    result = _run_with_progress(loaded, strategy, held_out, label_set, generation)
    run_dir = out or Path("runs") / time.strftime("eval-%Y%m%d-%H%M%S")
    config = config_record(
        data=data,
        test=test,
        model=model,
        strategy=strategy,
        generation=generation,
        labels=label_set,
        limit=limit,
    )
    write_run(run_dir, result, config)
    _print_result(result, strategy, show)
    console.print(f"run folder: {run_dir}")


def _resolve_labels(option: str, train) -> list[str] | None:
    if option == "none":
        return None
    if option == "auto":
        return sorted({e.output for e in train}) if looks_like_classification(train) else None
    chosen = [label.strip() for label in option.split(",") if label.strip()]
    if not chosen:
        raise TuneLabError("--labels: the label list is empty")
    return chosen


def _run_with_progress(loaded, strategy, examples, labels, generation) -> EvalResult:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(f"eval {strategy.name}", total=len(examples))
        return evaluate(
            loaded.model,
            loaded.tokenizer,
            strategy,
            examples,
            labels=labels,
            generation=generation,
            on_progress=lambda n: progress.advance(task, n),
        )


def _print_result(result: EvalResult, strategy: PromptStrategy, show: int) -> None:
    if show:
        table = Table("input", "reference", "prediction", "", title="predictions")
        for row in result.predictions[:show]:
            mark = "[green]✓[/]" if row["correct"] else "[red]✗[/]"
            table.add_row(row["input"][:60], row["reference"][:40], row["prediction"][:40], mark)
        console.print(table)
    table = Table("strategy", *result.metrics, "examples", "seconds", title="metrics")
    table.add_row(
        strategy.name,
        *(f"{v:.3f}" for v in result.metrics.values()),
        str(len(result.predictions)),
        f"{result.seconds:.1f}",
    )
    console.print(table)
