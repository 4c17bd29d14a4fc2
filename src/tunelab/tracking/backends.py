"""The four trackers, each behind the same three calls: a strategy, the leaderboard, close.

Each writes where its own tools look, offline, and never into a folder that is not the
experiment's own unless the user's environment says so (``MLFLOW_TRACKING_URI``,
``TRACKIO_DIR``, ``WANDB_MODE``/``WANDB_DIR``). Only ``WANDB_MODE=online`` or a remote
``MLFLOW_TRACKING_URI`` sends anything off the machine: predictions hold the user's test data.
"""

import contextlib
import io
import logging
import os
import shutil
import time
from pathlib import Path

from tunelab.paths import strict_json
from tunelab.tracking.record import TrackedLeaderboard, TrackedStrategy

BATCH = 500  # MLflow accepts at most 1,000 metrics and 100 parameters per call
LEADERBOARD_RUN = "_leaderboard"  # no strategy name starts with "_"


class MlflowTracker:
    """One MLflow experiment per TuneLab experiment; each compare is a parent run whose
    children are the strategies. Store: ``MLFLOW_TRACKING_URI``, else a SQLite file in the
    experiment folder (MLflow 3 no longer takes new plain-folder stores)."""

    def __init__(self, experiment: str, out_dir: Path, context: dict[str, str]):
        # MLflow 3 reports usage to its makers unless told not to; a user's own setting wins
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        # an unreachable server is reported at once, not after minutes of backed-off retries
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        from mlflow.tracking import MlflowClient

        for name in ("mlflow", "alembic"):  # their set-up notes would bury TuneLab's output
            logging.getLogger(name).setLevel(logging.WARNING)

        configured = os.environ.get("MLFLOW_TRACKING_URI")
        self.uri = configured or f"sqlite:///{(out_dir / 'mlflow.db').resolve()}"
        self.client = MlflowClient(self.uri)
        found = self.client.get_experiment_by_name(experiment)
        # files beside the default store; a configured server keeps its own artifact root
        location = None if configured else (out_dir / "mlartifacts").resolve().as_uri()
        self.experiment_id = (
            found.experiment_id
            if found is not None
            else self.client.create_experiment(experiment, artifact_location=location)
        )
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self.parent = self.client.create_run(
            self.experiment_id, run_name=f"compare {stamp}", tags={"tunelab.role": "compare"}
        ).info.run_id
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in context.items()]
        for start in range(0, len(params), 100):
            self.client.log_batch(self.parent, params=params[start : start + 100])
        if (out_dir / "experiment.json").is_file():  # the resolved experiment, data hashes
            self.client.log_artifact(self.parent, str(out_dir / "experiment.json"))
        self.where = f"MLflow {self.uri} (view: mlflow ui --backend-store-uri {self.uri})"

    def log_strategy(self, s: TrackedStrategy) -> None:
        from mlflow.entities import Metric, Param

        tags = {"mlflow.parentRunId": self.parent, "tunelab.kind": s.kind,
                "tunelab.cached": str(s.cached).lower()}  # fmt: skip
        run = self.client.create_run(self.experiment_id, run_name=s.name, tags=tags).info.run_id
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in s.metrics.items()]
        metrics += [Metric(k, v, now, step) for k, points in s.curves.items() for step, v in points]
        params = [Param(k, v) for k, v in s.params.items()]
        self.client.set_tag(run, "tunelab.folder", str(s.folder.resolve()) if s.folder else "")
        for start in range(0, len(metrics), BATCH):
            self.client.log_batch(run, metrics=metrics[start : start + BATCH])
        for start in range(0, len(params), 100):
            self.client.log_batch(run, params=params[start : start + 100])
        for path in s.artifacts:
            sub = path.parent.relative_to(s.folder).as_posix() if s.folder else ""
            self.client.log_artifact(run, str(path), artifact_path=sub if sub != "." else None)
        self.client.set_terminated(run)

    def log_leaderboard(self, board: TrackedLeaderboard) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(f"leaderboard/{row['strategy']}", row[board.metric], now, 0)
            for row in board.rows
            if row[board.metric] == row[board.metric]
        ]
        self.client.log_batch(self.parent, metrics=metrics[:BATCH])
        self.client.set_tag(self.parent, "tunelab.metric", board.metric)
        if board.recommendation:
            self.client.set_tag(self.parent, "tunelab.recommendation", board.recommendation[:4000])
        self.client.log_dict(self.parent, strict_json({"metric": board.metric, "rows": board.rows}),
                             "leaderboard.json")  # fmt: skip
        for path in board.files:
            self.client.log_artifact(self.parent, str(path))

    def close(self, status: str) -> None:
        self.client.set_terminated(self.parent, status=status)


class TrackioTracker:
    """One trackio project per experiment, one run per strategy, grouped by compare; stored
    where trackio keeps its local database (``TRACKIO_DIR``)."""

    def __init__(self, experiment: str, out_dir: Path, context: dict[str, str]):
        import trackio

        self.trackio, self.project = trackio, experiment
        self.group = f"compare {time.strftime('%Y-%m-%d %H:%M:%S')}"
        self.where = f'trackio project "{experiment}" (view: trackio show --project "{experiment}")'

    def _run(self, name: str, config: dict):
        with contextlib.redirect_stdout(io.StringIO()):  # its banner on every run
            return self.trackio.init(
                project=self.project, name=name, group=self.group, config=config,
                auto_log_cpu=False, auto_log_gpu=False,
            )  # fmt: skip

    def log_strategy(self, s: TrackedStrategy) -> None:
        self._run(s.name, s.params | {"tunelab.kind": s.kind, "tunelab.cached": s.cached})
        last = 0
        for step, values in s.steps():
            self.trackio.log(values, step=step)
            last = step
        self.trackio.log(s.metrics, step=last + 1)
        self._finish()

    def log_leaderboard(self, board: TrackedLeaderboard) -> None:
        self._run(LEADERBOARD_RUN, {"metric": board.metric})
        columns = list(board.rows[0]) if board.rows else ["strategy"]
        table = self.trackio.Table(columns=columns, data=[list(r.values()) for r in board.rows])
        values = {"leaderboard": table}
        if board.recommendation:
            values["recommendation"] = self.trackio.Markdown(board.recommendation)
        self.trackio.log(values)
        self._finish()

    def _finish(self) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            self.trackio.finish()

    def close(self, status: str) -> None:
        pass  # every run is finished as soon as it is logged


class WandbTracker:
    """One W&B project per experiment, one run per strategy, grouped by compare. Offline
    (files in the experiment folder; ``wandb sync`` uploads them) unless ``WANDB_MODE`` says
    otherwise: stored credentials alone never start an upload."""

    def __init__(self, experiment: str, out_dir: Path, context: dict[str, str]):
        import wandb

        self.wandb, self.project, self.dir = wandb, experiment, out_dir.resolve()
        self.group = f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
        self.mode = os.environ.get("WANDB_MODE") or "offline"
        self.where = f"W&B project {experiment} ({self.mode}" + (
            f"; upload: wandb sync {self.dir / 'wandb'})" if self.mode == "offline" else ")"
        )

    def _run(self, name: str, config: dict):
        return self.wandb.init(
            project=self.project, group=self.group, name=name, config=config,
            dir=os.environ.get("WANDB_DIR") or self.dir, mode=self.mode, reinit="create_new",
            settings=self.wandb.Settings(
                silent=True, console="off", save_code=False, x_disable_stats=True
            ),
        )  # fmt: skip

    def log_strategy(self, s: TrackedStrategy) -> None:
        run = self._run(s.name, s.params | {"tunelab.kind": s.kind, "tunelab.cached": s.cached})
        for step, values in s.steps():
            run.log(values, step=step)
        run.summary.update(s.metrics)
        _copy_into(Path(run.dir), s.artifacts, s.folder)
        run.finish()

    def log_leaderboard(self, board: TrackedLeaderboard) -> None:
        run = self._run(LEADERBOARD_RUN, {"metric": board.metric})
        columns = list(board.rows[0]) if board.rows else ["strategy"]
        table = self.wandb.Table(columns=columns, data=[list(r.values()) for r in board.rows])
        run.log({"leaderboard": table})
        if board.recommendation:
            run.summary["recommendation"] = board.recommendation
        _copy_into(Path(run.dir), board.files, None)
        run.finish()

    def close(self, status: str) -> None:
        pass


class TensorboardTracker:
    """Event files under ``<experiment>/tensorboard/<strategy>``: scalars by step, the
    settings and the leaderboard as text."""

    def __init__(self, experiment: str, out_dir: Path, context: dict[str, str]):
        from torch.utils.tensorboard import SummaryWriter

        # one folder per compare: a rerun's points never land on an earlier compare's curves
        self.writer_class = SummaryWriter
        self.root = out_dir / "tensorboard" / time.strftime("%Y%m%d-%H%M%S")
        self.where = f"TensorBoard (view: tensorboard --logdir {self.root.parent})"

    def log_strategy(self, s: TrackedStrategy) -> None:
        writer = self.writer_class(log_dir=str(self.root / s.name))
        try:
            for key, value in s.metrics.items():
                writer.add_scalar(key, value, 0)
            for key, points in s.curves.items():
                for step, value in points:
                    writer.add_scalar(key, value, step)
            table = "\n".join(f"| {k} | {_cell(v)} |" for k, v in s.params.items())
            writer.add_text("settings", "| setting | value |\n| --- | --- |\n" + table)
        finally:
            writer.close()

    def log_leaderboard(self, board: TrackedLeaderboard) -> None:
        writer = self.writer_class(log_dir=str(self.root / LEADERBOARD_RUN))
        try:
            board_file = next((p for p in board.files if p.name == "leaderboard.md"), None)
            text = board_file.read_text(encoding="utf-8") if board_file else ""
            writer.add_text("leaderboard", text or (board.recommendation or ""))
            for row in board.rows:
                if row[board.metric] == row[board.metric]:
                    writer.add_scalar(f"leaderboard/{row['strategy']}", row[board.metric], 0)
        finally:
            writer.close()

    def close(self, status: str) -> None:
        pass


BACKENDS = {
    "mlflow": MlflowTracker,
    "trackio": TrackioTracker,
    "wandb": WandbTracker,
    "tensorboard": TensorboardTracker,
}


def _copy_into(run_files: Path, paths: list[Path], folder: Path | None) -> None:
    """Files put in a W&B run's files folder are part of the run (uploaded on sync)."""
    for path in paths:
        target = run_files / (path.relative_to(folder) if folder else path.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)


def _cell(text: str) -> str:
    """A Markdown table cell: one line, its pipes escaped."""
    return text.replace("|", "\\|").replace("\n", " ")
