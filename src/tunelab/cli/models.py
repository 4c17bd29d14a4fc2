"""``tunelab models``: which base models exist and what they are."""

import typer
from rich.table import Table

from tunelab.cli.output import console
from tunelab.models import registry

app = typer.Typer(help="List and describe base models.", no_args_is_help=True)


@app.command("list")
def list_command() -> None:
    """List registered models (any local model folder or hub id works too)."""
    table = Table("name", "description", "cached")
    for model in registry.list_models():
        cached = _cache_state(model.name)
        table.add_row(
            model.name + (" (default)" if model.name == registry.DEFAULT_MODEL else ""),
            model.description,
            cached,
        )
    console.print(table)
    console.print("Also accepted: a local Hugging Face model folder, or a hub id (org/model).")


@app.command("info")
def info_command(
    name: str = typer.Argument(registry.DEFAULT_MODEL, help="Registered name, folder or hub id."),
) -> None:
    """Show a model's architecture, parameter count and where it is cached."""
    from tunelab.models.inspect import describe_model

    info = describe_model(name)
    table = Table(show_header=False, box=None)
    for key, value in info.items():
        table.add_row(f"[bold]{key}[/]", str(value))
    console.print(table)


def _cache_state(name: str) -> str:
    from tunelab.errors import TuneLabError

    try:
        path = registry.resolve_model(name, convert=False).cache_path
    except TuneLabError as err:
        return f"not installed ({err})"
    return str(path) if path and (path / "config.json").is_file() else "converted on first use"
