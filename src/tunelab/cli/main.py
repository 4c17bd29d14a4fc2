"""The ``tunelab`` command: wires the sub-commands and turns user errors into one-line messages."""

import os
import warnings

import click
import typer
from typer.core import TyperGroup

from tunelab import __version__
from tunelab.cli.output import stderr
from tunelab.errors import TuneLabError


class _FriendlyErrors(TyperGroup):
    """Show a :class:`TuneLabError` as ``error: …`` lines and exit 1, never as a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TuneLabError as err:
            for line in str(err).splitlines():
                stderr.print(f"[bold red]error:[/] {line}")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:  # commands that can resume say so themselves, before this
            stderr.print("interrupted")
            raise typer.Exit(130) from None


app = typer.Typer(
    cls=_FriendlyErrors,
    help="Adapt a language model to your task and measure which adaptation works best.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"tunelab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_show_version, is_eager=True, help="Show the version."
    ),
) -> None:
    _quiet_libraries()


def _quiet_libraries() -> None:
    """Library progress bars and advisory warnings would bury TuneLab's own output."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # save_pretrained's "Writing model shards" bar
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*is deprecated")
    # transformers 5.24 renames the cache argument; PEFT's wrappers still pass the old name.
    warnings.filterwarnings(
        "ignore", message="`past_key_values` is deprecated", category=FutureWarning
    )


def _register_commands() -> None:
    from tunelab.cli import (
        chat,
        compare,
        data,
        evaluate,
        export,
        models,
        optimize,
        retriever,
        serve,
        train,
        ui,
    )

    app.add_typer(models.app, name="models")
    app.add_typer(data.app, name="data")
    app.command("eval")(evaluate.eval_command)
    app.command("train")(train.train_command)
    app.command("methods")(train.methods_command)
    app.command("optimize")(optimize.optimize_command)
    app.command("tune-retriever")(retriever.tune_retriever_command)
    app.command("compare")(compare.compare_command)
    app.command("serve")(serve.serve_command)
    app.command("chat")(chat.chat_command)
    app.command("export")(export.export_command)
    app.command("ui")(ui.ui_command)


_register_commands()


def main() -> None:
    app()


if __name__ == "__main__":  # `python -m tunelab.cli.main ...`, as distributed launchers run it
    main()
