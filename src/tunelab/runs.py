"""Run folders: the one rule by which every command decides whether it may write to a folder.

Each folder TuneLab writes a run into (eval, train, optimize, compare, export) carries a marker,
``tunelab-run.json``, with the kind of run and the format version. TuneLab writes into a folder
only when it is new, empty, or carries the marker of the same kind; a folder with anything else
in it is the user's and is never touched. Replacing a marked run keeps the files a user put
there by hand, except on ``--overwrite``, which removes the marked folder whole. So a run is
written inside another run only where that run keeps its own parts (a comparison's strategy
runs, a settings search's trials): anywhere else the outer run's ``--overwrite`` would delete it.

    check_out(path, kind, ...)   before any work: what the folder holds and what may be done
    claim(path, kind)            after every check passed: create the folder, write the marker
"""

import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tunelab import __version__
from tunelab.errors import TuneLabError
from tunelab.paths import write_json_atomic

MARKER = "tunelab-run.json"
FORMAT = 1
Kind = Literal["eval", "train", "optimize", "compare", "export", "search", "retriever"]
State = Literal["new", "existing"]

# Where a run keeps other runs as its own parts: the subfolder they sit in directly (a
# comparison's strategies, a search's trials), and their kinds. Nowhere else is a run written
# inside another, since replacing or removing the outer one would take it along.
PARTS: dict[str, tuple[str, frozenset[str]]] = {
    "compare": ("", frozenset({"eval", "train", "optimize", "search"})),
    "search": ("trials", frozenset({"train"})),  # training.search.TRIALS_DIR
}
_WRITING_PARTS_OF: ContextVar[tuple[Path, ...]] = ContextVar("writing_parts_of", default=())


@dataclass(frozen=True)
class RunFolder:
    path: Path
    kind: str
    state: State  # "new": nothing of ours there yet; "existing": a marked run of this kind


def read_marker(path: Path) -> dict | None:
    """The marker of a run folder, or None when ``path`` is not one."""
    marker = path / MARKER
    if not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("kind") else None


def is_run(path: Path, kind: str | None = None) -> bool:
    marker = read_marker(path)
    return marker is not None and (kind is None or marker["kind"] == kind)


def check_out(path: Path, kind: Kind, *, flag: str = "--out") -> RunFolder:
    """Refuse, with one line naming the folder and the flag, any ``path`` that is not ours.

    Creates nothing: call it before loading models or data, so a refused or failed command
    leaves no folder behind that would block the next attempt.
    """
    if path.is_symlink():  # replacing the folder would replace the link, not its target
        raise TuneLabError(
            f"{flag} {path}: is a symbolic link; give the folder it points to, "
            f"{path.resolve()}, or another {flag}"
        )
    if path.exists() and not path.is_dir():
        raise TuneLabError(f"{flag} {path}: is a file, not a folder; choose another {flag}")
    under_file = next((parent for parent in path.parents if parent.is_file()), None)
    if under_file is not None:
        raise TuneLabError(
            f"{flag} {path}: {under_file} is a file, not a folder; choose another {flag}"
        )
    _check_not_inside_a_run(path, kind, flag)
    if not path.exists() or not any(path.iterdir()):
        return RunFolder(path, kind, "new")
    marker = read_marker(path)
    if marker is None:
        raise TuneLabError(
            f"{flag} {path}: the folder holds files TuneLab did not write (no {MARKER}); "
            f"TuneLab never replaces them: choose another {flag} or an empty folder"
        )
    if marker["kind"] != kind:
        raise TuneLabError(
            f"{flag} {path}: holds a tunelab {marker['kind']} run, not {_a(kind)} run; "
            f"choose another {flag}"
        )
    if marker.get("format", FORMAT) > FORMAT:
        raise TuneLabError(
            f"{flag} {path}: written by a newer TuneLab (format {marker['format']}); "
            f"upgrade TuneLab or choose another {flag}"
        )
    return RunFolder(path, kind, "existing")


@contextmanager
def writing_parts_of(folder: Path) -> Iterator[None]:
    """Within the block, runs written in ``folder``'s part places are its own (a comparison
    writing its strategies, a search its trials); any other run there is refused."""
    token = _WRITING_PARTS_OF.set((*_WRITING_PARTS_OF.get(), folder.resolve()))
    try:
        yield
    finally:
        _WRITING_PARTS_OF.reset(token)


def _check_not_inside_a_run(path: Path, kind: str, flag: str) -> None:
    """Refuse a folder inside another run, unless that run is writing it as its part."""
    inner = path.resolve()
    outer, marker = _holder(inner)
    if outer is None:
        return
    if outer in _WRITING_PARTS_OF.get() and _is_part(inner, kind, outer, marker["kind"]):
        return
    raise TuneLabError(
        f"{flag} {path}: is inside the tunelab {marker['kind']} run {outer}, which may replace "
        "or remove what is in it; choose a folder outside that run"
    )


def _is_part(inner: Path, kind: str, outer: Path, outer_kind: str) -> bool:
    where, kinds = PARTS.get(outer_kind, ("", frozenset()))
    return kind in kinds and inner.parent == (outer / where if where else outer)


def _holder(path: Path) -> tuple[Path | None, dict]:
    """The nearest run folder above ``path``, and its marker."""
    for parent in path.parents:
        marker = read_marker(parent)
        if marker is not None:
            return parent, marker
    return None, {}


def nested_runs(path: Path) -> list[Path]:
    """Runs inside ``path`` that are not parts of the run holding them (written by hand, or
    by an older TuneLab), outermost first: removing ``path`` whole would delete them."""
    strays: list[Path] = []
    for marker_file in sorted(path.rglob(MARKER), key=lambda f: len(f.parts)):
        inner = marker_file.parent
        marker = read_marker(inner)
        if inner == path or marker is None or any(s in inner.parents for s in strays):
            continue
        outer, holder = _holder(inner)
        if outer is None or not _is_part(inner, marker["kind"], outer, holder["kind"]):
            strays.append(inner)
    return strays


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def check_request(path: Path, kind: Kind, *, resume: bool, overwrite: bool) -> RunFolder:
    """`check_out` plus what ``--resume`` and ``--overwrite`` mean for every kind of run."""
    if resume and overwrite:
        raise TuneLabError("--resume and --overwrite exclude each other")
    folder = check_out(path, kind)
    if folder.state == "new" and resume:
        raise TuneLabError(f"{path}: no {kind} run to resume here")
    if overwrite:
        _refuse_nested_runs(path)
    return folder


def claim(path: Path, kind: Kind, *, files: list[str] | None = None) -> Path:
    """Create ``path`` (if needed) and mark it as a ``kind`` run; keep an existing marker's
    creation time so a resumed or replaced run keeps its history. ``files`` lists what the
    run consists of, for a folder that is replaced whole (an export)."""
    path.mkdir(parents=True, exist_ok=True)
    previous = read_marker(path) or {}
    marker = {
        "kind": kind,
        "format": FORMAT,
        "created_at": previous.get("created_at", time.strftime("%Y-%m-%dT%H:%M:%S")),
        "tunelab_version": __version__,
    }
    write_json_atomic(path / MARKER, marker | ({"files": files} if files is not None else {}))
    return path


def user_entries(path: Path) -> Callable[[Path], bool]:
    """For replacing a marked run whole: which of its entries a user added (to keep them)."""
    marker = read_marker(path) or {}
    ours = set(marker.get("files", [])) | {MARKER}
    return lambda entry: entry.name not in ours


def remove_run(path: Path, kind: Kind) -> None:
    """``--overwrite``: remove a marked run folder whole; anything else is refused."""
    if not path.exists():
        return
    check_out(path, kind)  # raises unless it is ours (or empty)
    _refuse_nested_runs(path)
    shutil.rmtree(path)


def _refuse_nested_runs(path: Path) -> None:
    strays = nested_runs(path) if path.is_dir() else []
    if strays:
        raise TuneLabError(
            f"{path}: holds another tunelab run, {strays[0]}, which replacing {path} would "
            "delete with it; move that run out of the folder first"
        )
