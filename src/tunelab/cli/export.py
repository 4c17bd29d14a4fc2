"""``tunelab export``: a trained run as a standard Hugging Face model folder."""

from pathlib import Path

import typer

from tunelab.cli.common import device_option, dtype_option
from tunelab.cli.output import console
from tunelab.errors import TuneLabError
from tunelab.models.device import resolve_placement


def export_command(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="A `tunelab train` run."),
    out: Path = typer.Option(
        ..., help="Folder to write: new, empty, or an earlier export (replaced in one swap)."
    ),
    device: str = device_option(),
    dtype: str = dtype_option("float32"),  # weights on disk keep full precision by default
) -> None:
    """LoRA merged into the base weights, full weights as they are, or a soft prompt beside
    the base weights with a loader script; `AutoModelForCausalLM.from_pretrained(OUT)` loads."""
    from tunelab.serving.export import export_run

    placement = resolve_placement(device, dtype)
    if out.resolve() == run_dir.resolve() or run_dir.resolve() in out.resolve().parents:
        raise TuneLabError(f"--out {out}: choose a folder outside the run folder")
    kind = export_run(run_dir, out, **placement.record())
    console.print(f"exported {run_dir} → {out} ({kind})")
