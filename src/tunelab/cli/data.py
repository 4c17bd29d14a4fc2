"""``tunelab data``: check a dataset before spending compute on it, and split it."""

from pathlib import Path

import typer
from rich.table import Table

from tunelab.cli.output import console, first_lines
from tunelab.data import load_dataset, split_examples
from tunelab.data.stats import DatasetStats, LengthStats, compute_stats, looks_like_classification
from tunelab.models import DEFAULT_MODEL

app = typer.Typer(help="Inspect and split datasets.", no_args_is_help=True)


InputOpt = typer.Option(None, "--input", help="Field/column holding the input text.")
OutputOpt = typer.Option(None, "--output", help="Field/column holding the expected output.")


@app.command("inspect")
def inspect_command(
    file: Path = typer.Argument(..., help="JSONL, CSV or chat-format JSONL file."),
    input_field: str | None = InputOpt,
    output_field: str | None = OutputOpt,
    test: Path | None = typer.Option(None, help="A test file to check for overlap with FILE."),
    model: str = typer.Option(DEFAULT_MODEL, help="Model whose tokenizer counts tokens."),
    no_tokens: bool = typer.Option(False, "--no-tokens", help="Skip token counts."),
) -> None:
    """Validate a dataset and show rows, token lengths, labels, duplicates and leaks."""
    dataset = load_dataset(file, input_field, output_field)
    test_set = load_dataset(test, input_field, output_field) if test else None
    tokenizer = None
    if not no_tokens:
        from tunelab.models import load_tokenizer, resolve_model

        tokenizer = load_tokenizer(resolve_model(model))
    stats = compute_stats(dataset.examples, tokenizer, test=test_set.examples if test_set else None)
    console.print(
        f"[bold]{file}[/]  format={dataset.format}  input={dataset.input_field}  "
        f"output={dataset.output_field}"
    )
    print_stats(stats, model if tokenizer else None, test)


@app.command("split")
def split_command(
    file: Path = typer.Argument(..., help="JSONL, CSV or chat-format JSONL file."),
    out: Path = typer.Option(..., help="Folder for train.jsonl and test.jsonl."),
    input_field: str | None = InputOpt,
    output_field: str | None = OutputOpt,
    test_size: float = typer.Option(0.2, help="Fraction (<1) or row count (>=1) for test."),
    seed: int = typer.Option(0, help="Shuffle seed; the same seed gives the same split."),
    stratify: bool | None = typer.Option(
        None, help="Keep label shares; default: on when outputs look like labels."
    ),
) -> None:
    """Write a deterministic train/test split as JSONL (stratified for label data)."""
    from tunelab.data.writing import write_examples_jsonl

    dataset = load_dataset(file, input_field, output_field)
    if stratify is None:
        stratify = looks_like_classification(dataset.examples)
    size = int(test_size) if test_size >= 1 else test_size
    train, test = split_examples(dataset.examples, size, seed=seed, stratify=stratify)
    for name, part in (("train", train), ("test", test)):
        write_examples_jsonl(out / f"{name}.jsonl", part)
    console.print(
        f"wrote {out}/train.jsonl ({len(train)} rows) and {out}/test.jsonl ({len(test)} rows)"
        f"{' stratified by output' if stratify else ''}, seed {seed}"
    )


def print_stats(stats: DatasetStats, model: str | None, test: Path | None) -> None:
    console.print(f"rows: {stats.rows}")
    if model:
        table = Table("tokens (" + model + ")", "min", "mean", "median", "p95", "max")
        for name, lengths in (("input", stats.input_tokens), ("output", stats.output_tokens)):
            table.add_row(name, *_length_cells(lengths))
        console.print(table)
    if stats.labels is not None:
        counts = stats.labels.most_common()
        console.print(
            f"labels: {len(counts)} (classification); most common {counts[0][1]} "
            f"x {counts[0][0]!r}, least common {counts[-1][1]} x {counts[-1][0]!r}"
        )
        table = Table("label", "rows", "share")
        for label, count in counts[:10]:
            table.add_row(label, str(count), f"{count / stats.rows:.1%}")
        if len(counts) > 10:
            table.add_row(f"... {len(counts) - 10} more", "", "")
        console.print(table)
    else:
        console.print("labels: none (outputs are free text)")
    _print_duplicates(stats)
    if test is not None:
        leaks = stats.overlap_with_test
        console.print(
            f"overlap with {test}: {len(leaks)} test rows also in training"
            + (f" (test lines {first_lines(leaks)})" if leaks else "")
        )


def _print_duplicates(stats: DatasetStats) -> None:
    groups = stats.duplicates
    extra_rows = sum(len(g.lines) - 1 for g in groups)
    conflicting = sum(g.conflicting for g in groups)
    console.print(
        f"duplicates: {len(groups)} inputs repeated ({extra_rows} extra rows, "
        f"{conflicting} with different outputs)"
    )
    for group in groups[:5]:
        flag = " [red]different outputs[/]" if group.conflicting else ""
        console.print(f"  lines {first_lines(group.lines)}: {group.text[:70]!r}{flag}")
    if len(groups) > 5:
        console.print(f"  ... and {len(groups) - 5} more")


def _length_cells(lengths: LengthStats | None) -> list[str]:
    if lengths is None:
        return ["-"] * 5
    return [
        str(lengths.min),
        f"{lengths.mean:.1f}",
        f"{lengths.median:g}",
        str(lengths.p95),
        str(lengths.max),
    ]
