"""Where TuneLab keeps its files, and how it writes them without leaving half-written ones."""

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def tunelab_home() -> Path:
    """The user cache: ``$TUNELAB_HOME`` or ``~/.cache/tunelab``."""
    home = os.environ.get("TUNELAB_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "tunelab"


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a scratch folder that replaces ``target`` only once the block finished cleanly.

    Readers therefore see either the old folder, or the complete new one, never a half-written
    one: a crash leaves only a ``.tmp-*`` sibling that is removed on the next attempt.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        yield scratch
        if target.exists():
            backup = target.with_name(f".old-{target.name}-{os.getpid()}")
            os.replace(target, backup)
            os.replace(scratch, target)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(scratch, target)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
