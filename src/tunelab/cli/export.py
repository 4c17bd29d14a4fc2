"""``tunelab export``: a trained run in the format a deployment engine takes."""

import shlex
from pathlib import Path

import typer

from tunelab.cli.common import device_option, dtype_option
from tunelab.cli.output import console, warn
from tunelab.errors import TuneLabError
from tunelab.export import FORMATS
from tunelab.export.gguf_file import QUANTS
from tunelab.models.device import resolve_placement


def export_command(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="A `tunelab train` run."),
    out: Path = typer.Option(
        ..., help="Folder to write: new, empty, or an earlier export (replaced in one swap)."
    ),
    fmt: str = typer.Option(
        "hf",
        "--format",
        help=f"{'|'.join(FORMATS)}: a Hugging Face folder; one GGUF file (llama.cpp); the GGUF "
        "and a Modelfile (Ollama); base + PEFT adapter and the `vllm serve` command.",
    ),
    quant: str = typer.Option(None, help=f"{'|'.join(QUANTS)} for gguf and ollama (default f16)."),
    device: str = device_option(),
    dtype: str = dtype_option("float32"),  # weights on disk keep full precision by default
) -> None:
    """Export a run: LoRA merged into the base weights (hf, gguf, ollama) or kept as an
    adapter (vllm); full weights as they are; a soft prompt only as hf, beside the base
    weights with a loader script. The run's system text and task prefix travel with it."""
    from tunelab.export import export_run

    placement = resolve_placement(device, dtype)
    if out.resolve() == run_dir.resolve() or run_dir.resolve() in out.resolve().parents:
        raise TuneLabError(f"--out {out}: choose a folder outside the run folder")
    exported = export_run(run_dir, out, fmt=fmt, quant=quant, **placement.record())
    console.print(f"exported {run_dir} → {out} ({exported.kind})", highlight=False)
    if exported.command:
        command = exported.command.format(out=shlex.quote(str(out)))
        console.print(f"run it: {command}", highlight=False, markup=False)
    warn([exported.note] if exported.note else [])
