"""``tunelab serve``: trained runs behind an OpenAI-compatible HTTP API."""

from pathlib import Path

import typer

from tunelab.cli.common import device_option, dtype_option
from tunelab.cli.output import console
from tunelab.models.device import resolve_placement


def serve_command(
    runs: list[Path] = typer.Argument(None, metavar="RUN_DIR...", help="`tunelab train` runs."),
    model: str | None = typer.Option(
        None, help="Base model (default: the runs' base model, else the embedded default)."
    ),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0: every one)."),
    port: int = typer.Option(8000),
    max_tokens: int = typer.Option(512, min=1, help="Largest max_tokens a request may ask."),
    max_request_kb: int = typer.Option(64, min=1, help="Largest request body, in KiB."),
    device: str = device_option(),
    dtype: str = dtype_option(),
) -> None:
    """Serve the base model and every run on it: /v1/models, /v1/chat/completions,
    /v1/completions (streaming too). Requests pick a run by `model` or by its task prefix."""
    import uvicorn

    from tunelab.models import DEFAULT_MODEL
    from tunelab.serving.api import Limits, create_app
    from tunelab.serving.pool import AdapterPool
    from tunelab.training.artifacts import read_meta

    placement = resolve_placement(device, dtype)
    runs = runs or []
    base = model or (read_meta(runs[0])["base_model"] if runs else DEFAULT_MODEL)
    console.print(f"loading {base} and {len(runs)} run(s) ...")
    pool = AdapterPool(base, runs, **placement.record())
    for served in pool.models.values():
        prefix = f" · prefix {served.task_prefix}" if served.task_prefix else ""
        console.print(f"  {served.name} ({served.kind}){prefix}")
    limits = Limits(max_request_bytes=max_request_kb * 1024, max_tokens=max_tokens)
    console.print(f"OpenAI-compatible API on http://{host}:{port}/v1")
    uvicorn.run(create_app(pool, limits), host=host, port=port, log_level="warning")
