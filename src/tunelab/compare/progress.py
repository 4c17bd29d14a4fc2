"""``progress.json``: where a running comparison is, for the terminal and for ``tunelab ui``.

Rewritten atomically at every strategy boundary and at most once a second in between: each
strategy's status (cached, done, running, pending, failed) and the plan's estimate, the
running strategy's phase with its done/total, the time left (the plan's estimates for what
has not started, plus what the running strategy's estimate has left after the time it has
run), and the host and process id, so a reader can tell a comparison that stopped from one
that runs.
"""

import os
import socket
import time
from pathlib import Path

from tunelab.paths import write_json_atomic

PROGRESS_FILE = "progress.json"
EVERY = 1.0  # seconds between writes inside a strategy


class ProgressFile:
    def __init__(self, folder: Path, specs, estimates: dict[str, float], cached: set[str]):
        self.path = folder / PROGRESS_FILE
        self.strategies = [
            {
                "name": s.name,
                "kind": s.kind,
                "status": "cached" if s.name in cached else "pending",
                "estimate_seconds": estimates.get(s.name),
                "seconds": None,
            }  # fmt: skip
            for s in specs
        ]
        self.current: dict | None = None
        self.began = time.time()
        self._written = 0.0
        self.state = "running"
        self._write()

    def start(self, name: str) -> None:
        self._entry(name)["status"] = "running"
        self.current = {"name": name, "phase": "", "done": 0, "total": 0, "since": time.time()}
        self._write()

    def step(self, phase: str, done: int, total: int) -> None:
        if self.current is None:
            return
        self.current.update(phase=phase, done=done, total=total)
        if time.time() - self._written >= EVERY or done >= total:
            self._write()

    def finish(self, name: str, status: str = "done") -> None:
        entry = self._entry(name)
        if entry["status"] == "running" and self.current:
            entry["seconds"] = round(time.time() - self.current["since"], 1)
        entry["status"] = status
        self.current = None
        self._write()

    def end(self, state: str) -> None:
        """finished | interrupted | failed"""
        self.state = state
        if self.current:
            self.finish(self.current["name"], "failed" if state == "failed" else "interrupted")
        self._write()

    def seconds_left(self) -> float | None:
        """The plan's estimates for what has not started, plus the running strategy's
        estimate less the time it has run (never below zero); None without a plan. Elapsed
        time rather than the progress bar's fraction: a strategy has several phases
        (training, then its test evaluation), each with its own bar."""
        left = 0.0
        for entry in self.strategies:
            estimate = entry["estimate_seconds"]
            if entry["status"] == "pending":
                if estimate is None:
                    return None
                left += estimate
            elif entry["status"] == "running":
                if estimate is None:
                    return None
                elapsed = time.time() - self.current["since"] if self.current else 0.0
                left += max(estimate - elapsed, 0.0)
        return left

    def _entry(self, name: str) -> dict:
        return next(e for e in self.strategies if e["name"] == name)

    def _write(self) -> None:
        self._written = time.time()
        left = self.seconds_left()
        write_json_atomic(
            self.path,
            {
                "state": self.state, "pid": os.getpid(), "host": socket.gethostname(),
                "started_at": self.began,
                "updated_at": self._written, "strategies": self.strategies,
                "current": self.current,
                "seconds_left": round(left, 1) if left is not None else None,
            },
        )  # fmt: skip
