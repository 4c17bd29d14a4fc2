"""Send every strategy of a comparison to the trackers a user watches.

``--track mlflow|trackio|wandb|tensorboard`` (or ``track:`` in the experiment file): after each
strategy finishes, its settings, test metrics with intervals, costs, training curves and prompt
search go to each tracker as one run, grouped under the experiment; the leaderboard goes last.
Everything is read from the files the strategy wrote, so a strategy finished by an earlier
compare is logged the same way. A tracker that fails is reported once, closed as failed where
it can be, and dropped: tracking never stops a comparison.
"""

import contextlib
import importlib.util
from collections.abc import Callable
from pathlib import Path

from tunelab.errors import TuneLabError

# tracker -> the module it needs (the extra is named after the tracker)
TRACKERS = {
    "mlflow": "mlflow",
    "trackio": "trackio",
    "wandb": "wandb",
    "tensorboard": "tensorboard",
}
NONE = "none"  # --track none: no tracking, whatever the file says


def check_trackers(names: list[str], where: str = "--track") -> list[str]:
    """The names, each known and installed; else one line naming the extra to install."""
    if NONE in names:
        if len(set(names)) > 1:
            raise TuneLabError(f"{where} none turns tracking off: give it alone")
        return []
    for name in names:
        if name not in TRACKERS:
            raise TuneLabError(f"{where} {name!r}: choose from {', '.join(TRACKERS)}, {NONE}")
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise TuneLabError(f"{where} {name} needs its package: pip install 'tunelab[{name}]'")
    return list(dict.fromkeys(names))


class Tracking:
    def __init__(self, names: list[str], experiment: str, out_dir: Path,
                 warn: Callable[[str], None], context: dict[str, str] | None = None):  # fmt: skip
        """``context``: what every run records besides its strategy (model, seed, data)."""
        from tunelab.tracking.backends import BACKENDS

        self.warn, self.trackers, self.context = warn, {}, context or {}
        for name in names:
            self._call(name, lambda name=name: self.trackers.__setitem__(
                name, BACKENDS[name](experiment, out_dir, self.context)))  # fmt: skip

    @property
    def where(self) -> list[str]:
        return [tracker.where for tracker in self.trackers.values()]

    def strategy(self, result: dict, folder: Path, *, cached: bool = False) -> None:
        from tunelab.tracking.record import strategy_record

        if self.trackers:
            self._each(lambda t, record: t.log_strategy(record),
                       lambda: strategy_record(result, folder, cached=cached,
                                               context=self.context))  # fmt: skip

    def leaderboard(self, rows, metric: str, recommendation, out_dir: Path) -> None:
        from tunelab.tracking.record import leaderboard_record

        if self.trackers:
            build = lambda: leaderboard_record(rows, metric, recommendation, out_dir)  # noqa: E731
            self._each(lambda t, board: t.log_leaderboard(board), build)

    def close(self, status: str = "FINISHED") -> None:
        for name, tracker in list(self.trackers.items()):
            self._call(name, lambda t=tracker: t.close(status))

    def _each(self, log, build) -> None:
        """``build`` the record once (a failure there drops every tracker), then ``log`` it
        to each tracker."""
        try:
            record = build()
        except Exception as err:
            for name in list(self.trackers):
                self._drop(name, err)
            return
        for name, tracker in list(self.trackers.items()):
            self._call(name, lambda t=tracker: log(t, record))

    def _call(self, name: str, action: Callable[[], None]) -> None:
        try:
            action()
        except Exception as err:  # a tracker's failure must not cost the comparison
            self._drop(name, err)

    def _drop(self, name: str, err: Exception) -> None:
        tracker = self.trackers.pop(name, None)
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        self.warn(f"tracking {name}: {type(err).__name__}: {first[:300]} (no longer tracked)")
        if tracker is not None:
            with contextlib.suppress(Exception):  # already reported; closing is best effort
                tracker.close("FAILED")
