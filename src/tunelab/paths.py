"""Where TuneLab keeps its files, and how it writes them without leaving half-written ones."""

import ctypes
import glob
import json
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tunelab.errors import TuneLabError


def require_file(path: Path, what: str, where: str = "") -> None:
    """A one-line error when ``path`` is not a readable file: a folder is named as one, not
    reported missing (``where``: the option or field it came from, e.g. ``--search-space ``)."""
    if path.is_dir():
        raise TuneLabError(f"{where}{path}: is a folder; give the {what}")
    if not path.is_file():
        raise TuneLabError(f"{where}{path}: no such {what}")


def tunelab_home() -> Path:
    """The user cache: ``$TUNELAB_HOME`` or ``~/.cache/tunelab``."""
    home = os.environ.get("TUNELAB_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "tunelab"


@contextmanager
def atomic_directory(target: Path, keep: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a scratch folder that replaces ``target`` only once the block finished cleanly.

    Readers see the old folder or the complete new one, never a half-written one and never
    no folder at all: on Linux the two are exchanged in one ``renameat2`` call. ``keep`` names
    entries of the old folder to carry into the new one (a user's own files). A crash leaves
    only ``.tmp-*``/``.old-*`` siblings, which the next write to ``target`` removes.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target)
    scratch = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-{os.getpid()}-", dir=target.parent))
    os.chmod(scratch, 0o777 & ~_umask())
    try:
        yield scratch
        safetensors_respect_umask(scratch)
        if target.exists():
            for entry in target.iterdir():
                if not (keep and keep(entry)):
                    continue
                if (scratch / entry.name).exists():  # never replace what a user put there
                    raise TuneLabError(
                        f"{entry} was not written by TuneLab, and this run writes a file of that "
                        "name: move it away, or write to another folder"
                    )
                _copy_entry(entry, scratch / entry.name)
            _replace_directory(scratch, target)
        else:
            os.replace(scratch, target)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)


def safetensors_respect_umask(folder: Path) -> None:
    """safetensors >= 0.8 writes through a temporary file and keeps its 0600 mode whatever
    the umask (safetensors/safetensors#782): give the weights the mode every other file
    written here has, so another user (a server, a container) can read them."""
    mode = 0o666 & ~_umask()
    for path in folder.rglob("*.safetensors"):
        if path.is_file() and not path.is_symlink() and path.stat().st_mode & 0o777 == 0o600:
            path.chmod(mode)


def _replace_directory(new: Path, target: Path) -> None:
    """Put ``new`` in ``target``'s place; the old folder is deleted afterwards."""
    if _exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # ``new`` now holds the old folder
        return
    backup = target.with_name(f".old-{target.name}-{os.getpid()}")
    os.replace(target, backup)  # no atomic exchange here: a brief gap between two renames
    os.replace(new, target)
    shutil.rmtree(backup, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False when unsupported."""
    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return result == 0


def _copy_entry(source: Path, destination: Path) -> None:
    """Hard links where the file system allows (no copy of large files), else a copy."""
    if source.is_dir() and not source.is_symlink():
        shutil.copytree(source, destination, symlinks=True, copy_function=_link_or_copy)
    else:
        _link_or_copy(source, destination, follow_symlinks=False)


def _link_or_copy(source, destination, *, follow_symlinks: bool = True) -> None:
    if Path(source).is_symlink():
        os.symlink(os.readlink(source), destination)
        return
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination, follow_symlinks=follow_symlinks)


def remove_leftovers(target: Path) -> None:
    """Delete the ``.tmp-``/``.old-`` siblings of ``target`` left by a process that died.

    Only names of TuneLab's own pattern whose process is gone are removed, so another
    process writing the same target at the same moment is left alone.
    """
    if not target.parent.is_dir():
        return
    # .tmp-NAME-PID-RANDOM (mkdtemp/mkstemp: RANDOM has no '-') and .old-NAME-PID; a sibling
    # target whose name extends NAME ("run-2" beside "run") does not fit the pattern.
    patterns = {f".tmp-{target.name}-": r"(\d+)-[A-Za-z0-9_]+", f".old-{target.name}-": r"(\d+)"}
    for prefix, rest in patterns.items():
        for leftover in target.parent.glob(f"{glob.escape(prefix)}*"):
            match = re.fullmatch(rest, leftover.name[len(prefix) :])
            if match is None or process_alive(int(match.group(1))):
                continue
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (signal 0 probes, sends nothing)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _umask() -> int:
    """The process umask, read without changing it where Linux tells it (threads are safe)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-{os.getpid()}-", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; a result is the user's file
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    text = json.dumps(strict_json(data), indent=2, ensure_ascii=False, allow_nan=False)
    write_text_atomic(path, text + "\n")


def strict_json(data: Any) -> Any:
    """``data`` with every NaN/infinite float replaced by None: Python's json writes them
    as NaN/Infinity, which no strict JSON reader (jq, JavaScript, Go) accepts."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: strict_json(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [strict_json(value) for value in data]
    return data
