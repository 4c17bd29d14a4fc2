"""``tunelab serve``: trained runs behind an OpenAI-compatible HTTP API."""

from pathlib import Path

import typer

from tunelab.cli.common import device_option, dtype_option, is_loopback, listen
from tunelab.cli.output import console, warn
from tunelab.models.device import resolve_placement
from tunelab.serving.api import Limits

DEFAULTS = Limits()


def serve_command(
    runs: list[Path] = typer.Argument(None, metavar="RUN_DIR...", help="`tunelab train` runs."),
    model: str | None = typer.Option(
        None, help="Base model (default: the runs' base model, else the embedded default)."
    ),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0: every one)."),
    port: int = typer.Option(8000, min=0, max=65535, help="0: any free port (printed)."),
    max_tokens: int = typer.Option(
        DEFAULTS.max_tokens, min=1, help="Largest max_tokens a request may ask."
    ),
    max_request_kb: int = typer.Option(
        DEFAULTS.max_request_bytes // 1024, min=1, help="Largest request body, in KiB."
    ),
    max_batch: int = typer.Option(
        8, min=1, help="Requests decoded together at most (1: one at a time)."
    ),
    api_key: str | None = typer.Option(
        None,
        envvar="TUNELAB_API_KEY",
        help="Require 'Authorization: Bearer KEY' on every /v1 route (or TUNELAB_API_KEY).",
        show_default=False,
    ),
    device: str = device_option(),
    dtype: str = dtype_option(),
) -> None:
    """Serve the base model and every run on it: /v1/models, /v1/chat/completions,
    /v1/completions (streaming too), /health. Requests pick a run by `model` or by its task
    prefix; the requests waiting are decoded together in batches."""
    import uvicorn

    from tunelab.models import DEFAULT_MODEL
    from tunelab.serving.api import create_app
    from tunelab.serving.pool import AdapterPool
    from tunelab.training.artifacts import read_meta

    placement = resolve_placement(device, dtype)
    listener = listen(host, port)  # a taken port or a bad --host fails before any loading
    bound = listener.getsockname()[1]
    runs = runs or []
    base = model or (read_meta(runs[0])["base_model"] if runs else DEFAULT_MODEL)
    console.print(f"loading {base} and {len(runs)} run(s) ...")
    pool = AdapterPool(base, runs, **placement.record(), max_batch=max_batch)
    for served in pool.models.values():
        prefix = f" · prefix {served.task_prefix}" if served.task_prefix else ""
        console.print(f"  {served.name} ({served.kind}){prefix}", highlight=False)
    warn(pool.warnings())
    limits = Limits(
        max_request_bytes=max_request_kb * 1024,
        max_tokens=max_tokens,
        default_max_tokens=min(DEFAULTS.default_max_tokens, max_tokens),
        api_key=api_key or None,
    )
    if not api_key and not is_loopback(host):
        warn([f"listening on {host} without --api-key: anyone who can reach it can use it"])
    shown = f"[{host}]" if ":" in host else host
    console.print(f"OpenAI-compatible API on http://{shown}:{bound}/v1", highlight=False)
    server = uvicorn.Server(
        uvicorn.Config(create_app(pool, limits), log_level="warning", timeout_graceful_shutdown=5)
    )
    try:
        server.run(sockets=[listener])
    finally:
        pool.close()
