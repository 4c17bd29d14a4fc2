"""``tunelab tune-retriever``: MiniLM tuned on the user's labelled rows, for similar shots."""

from pathlib import Path

import typer
from pydantic import ValidationError

from tunelab.cli.common import settings_option
from tunelab.cli.output import console, warn
from tunelab.errors import TuneLabError
from tunelab.prompting.shot_pool import SHOT_POOL_HELP, shot_pool_line, without_held_out
from tunelab.runs import check_out
from tunelab.training.retriever import RetrieverSettings, check_rows


def _option(name: str, *flags: str, **kwargs):
    return settings_option(RetrieverSettings, name, *flags, **kwargs)


def tune_retriever_command(
    data: Path = typer.Option(..., help="Labelled training data (JSONL, CSV or chat JSONL)."),
    dev: Path | None = typer.Option(
        None, help="Dev rows: scored before and after (their shots' nearest-answer accuracy)."
    ),
    test: Path | None = typer.Option(None, help="Test rows: their inputs are never learned."),
    shot_pool: Path | None = typer.Option(
        None, help=SHOT_POOL_HELP + " Learned from too: give the pool your prompts retrieve from."
    ),
    input_field: str | None = typer.Option(None, "--input", help="Input field/column."),
    output_field: str | None = typer.Option(None, "--output", help="Output field/column."),
    epochs: int = _option("epochs"),  # ranges: checked by the settings, one-line errors
    learning_rate: float = _option("learning_rate", "--lr"),
    batch_size: int = _option("batch_size"),
    temperature: float = _option("temperature"),
    max_length: int = _option("max_length"),
    seed: int = _option("seed"),
    out: Path = typer.Option(
        ..., help="Folder to write: new, empty, or an earlier retriever (replaced in one swap)."
    ),
) -> None:
    """Tune the shot retriever (MiniLM) so rows with the same label come out nearest; retrieve
    with it by --embedder OUT (eval)."""
    from tunelab.training.data import load_train_data
    from tunelab.training.retriever import tune_retriever

    check_out(out, "retriever")
    try:
        settings = RetrieverSettings(
            epochs=epochs,
            learning_rate=learning_rate,
            batch_size=batch_size,
            temperature=temperature,
            max_length=max_length,
            seed=seed,
        )
    except ValidationError as err:
        first = err.errors()[0]
        flag = {"learning_rate": "lr"}.get(str(first["loc"][0]), str(first["loc"][0]))
        raise TuneLabError(f"--{flag.replace('_', '-')}: {first['msg']}") from None
    data_ = load_train_data(
        data, input_field, output_field, dev=dev, test=test, seed=seed, shot_pool=shot_pool
    )
    held_out = data_.dev + (data_.test or [])
    pool = data_.shot_pool()
    rows = without_held_out(pool, held_out)  # dev scores must stay honest
    if not rows:
        raise TuneLabError(
            f"--data {data}: every row has a --dev or --test input; nothing to learn"
        )
    check_rows(rows, where=f"--data {data}")
    console.print(
        f"tuning all-MiniLM-L6-v2 on {len(rows)} rows · {settings.epochs} epoch(s) · lr "
        f"{settings.learning_rate:g} · {settings.batch_size} pairs a step → {out}",
        highlight=False,
    )
    pool_line = shot_pool_line(len(data_.train), len(data_.extra_shot_rows),
                               data_.left_out_shot_rows)  # fmt: skip
    if pool_line:
        console.print(pool_line, highlight=False)
    if dropped := len(pool) - len(rows):
        rows_ = "row" if dropped == 1 else "rows"
        console.print(f"left out {dropped} training {rows_} with a dev or test input")
    outcome = tune_retriever(rows, data_.dev, settings, out, log=console.print)
    console.print(f"{outcome.steps} steps in {outcome.seconds:.0f} s", highlight=False)
    if outcome.dev_before and outcome.dev_after:
        b, a = outcome.dev_before, outcome.dev_after
        console.print(
            f"dev ({len(data_.dev)} rows) nearest shot's answer right: {b.nearest:.3f} → "
            f"{a.nearest:.3f}; answer among 8 shots: {b.recall:.3f} → {a.recall:.3f}",
            highlight=False,
        )
        if a.nearest < b.nearest:
            warn([
                "tuning made the dev rows' nearest shots worse: keep the stock retriever, or "
                "try a lower --lr or fewer --epochs"
            ])  # fmt: skip
    console.print(f"retrieve with it: --embedder {out}", highlight=False)
