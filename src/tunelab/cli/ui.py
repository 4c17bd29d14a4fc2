"""``tunelab ui``: browse experiments and talk to runs in a local web page."""

import importlib.util
import os
from pathlib import Path

import typer

from tunelab.cli.common import device_option, dtype_option, is_loopback, listen
from tunelab.cli.output import console, warn
from tunelab.errors import TuneLabError
from tunelab.models.device import resolve_placement


def ui_command(
    runs_dir: Path = typer.Argument(
        Path("runs"), metavar="[RUNS_DIR]", help="Folder of comparisons and runs."
    ),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0: every one)."),
    port: int = typer.Option(7860, min=0, max=65535, help="0: any free port (printed)."),
    model: str | None = typer.Option(
        None, help="Base model of the chat tab's 'base model' entry (default: embedded)."
    ),
    device: str = device_option(),
    dtype: str = dtype_option(),
) -> None:
    """A local web page over RUNS_DIR: each experiment's leaderboard and plots, answers beside
    the references (filter to disagreements), training curves, the progress of a running
    compare, and a chat with any run. Read-only on the run folders."""
    if importlib.util.find_spec("gradio") is None:
        raise TuneLabError("tunelab ui needs Gradio: pip install 'tunelab[ui]'")
    if runs_dir.exists() and not runs_dir.is_dir():
        raise TuneLabError(f"{runs_dir}: is a file; give the folder your runs are in")
    if not runs_dir.is_dir():
        raise TuneLabError(f"{runs_dir}: no such folder (give the folder your runs are in)")
    placement = resolve_placement(device, dtype)
    listener = listen(host, port)  # a taken port fails before anything loads
    bound = listener.getsockname()[1]
    listener.close()  # Gradio binds the port itself
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    from tunelab.models import DEFAULT_MODEL
    from tunelab.ui.app import build_app, serve_app
    from tunelab.ui.chat import ChatRooms

    rooms = ChatRooms(runs_dir.resolve(), placement.record(), model or DEFAULT_MODEL)
    app = build_app(runs_dir.resolve(), rooms)
    if not is_loopback(host):
        warn([f"listening on {host}: anyone who can reach it can read these runs and chat"])
    shown = f"[{host}]" if ":" in host else host
    console.print(f"TuneLab UI on http://{shown}:{bound}/ (Ctrl-C stops it)", highlight=False)
    try:
        serve_app(app, host, bound, loopback=is_loopback(host))
    finally:
        rooms.close()
