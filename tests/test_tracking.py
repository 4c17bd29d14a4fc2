"""Tracking a comparison: every strategy reaches each tracker with its metrics, curves and
files, read back through each tracker's own API."""

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunelab.cli.main import app
from tunelab.compare.progress import ProgressFile
from tunelab.errors import TuneLabError
from tunelab.tracking import Tracking, check_trackers
from tunelab.tracking.record import strategy_record

runner = CliRunner()
STRATEGIES = {"base", "refined", "lora"}


def test_every_strategy_is_an_mlflow_run_with_metrics_curves_and_files(finished_comparison):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{finished_comparison / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tracked")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    parents = [r for name, r in runs.items() if name.startswith("compare ")]
    assert len(parents) == 1 and set(runs) >= STRATEGIES
    parent = parents[0].info.run_id
    results = {n: json.loads((finished_comparison / n / "result.json").read_text())
               for n in STRATEGIES}  # fmt: skip
    for name in STRATEGIES:
        run = runs[name]
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent
        accuracy = results[name]["metrics"]["accuracy"]
        assert run.data.metrics["test/accuracy"] == pytest.approx(accuracy["value"])
        assert run.data.metrics["test/accuracy_low"] == pytest.approx(accuracy["low"])
        assert run.data.metrics["cost/adapt_seconds"] == pytest.approx(
            results[name]["adapt_seconds"]
        )
        files = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"result.json", "predictions.jsonl"} <= files
    lora = runs["lora"].info.run_id
    assert runs["lora"].data.params["train.method"] == "lora"
    context = runs["lora"].data.params  # the experiment's own settings, on every run
    assert context["experiment.seed"] == "0" and "sha256" in context["experiment.data.train"]
    assert parents[0].data.params["model"] == context["experiment.model"]
    loss = client.get_metric_history(lora, "train/loss")
    dev = client.get_metric_history(lora, "dev/accuracy")
    assert len(loss) >= 2 and len(dev) == 2  # a dev evaluation per epoch
    assert [m.step for m in loss] == sorted(m.step for m in loss)
    search = client.get_metric_history(runs["refined"].info.run_id, "search/dev_score")
    assert len(search) >= 1
    trajectory = {a.path for a in client.list_artifacts(runs["refined"].info.run_id, "search")}
    assert "search/trajectory.jsonl" in trajectory
    board = client.download_artifacts(parent, "leaderboard.json")
    rows = json.loads(Path(board).read_text(encoding="utf-8"))["rows"]
    assert {r["strategy"] for r in rows} == STRATEGIES
    assert {a.path for a in client.list_artifacts(parent)} >= {"leaderboard.md", "report.html"}


def test_tensorboard_event_files_hold_the_same_numbers(finished_comparison):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (root,) = (finished_comparison / "tensorboard").iterdir()  # one folder per compare
    result = json.loads((finished_comparison / "lora" / "result.json").read_text())
    events = EventAccumulator(str(root / "lora")).Reload()
    accuracy = events.Scalars("test/accuracy")[0].value
    assert accuracy == pytest.approx(result["metrics"]["accuracy"]["value"], abs=1e-6)
    assert len(events.Scalars("train/loss")) >= 2
    board = EventAccumulator(str(root / "_leaderboard")).Reload()
    assert board.Tags()["scalars"] and "leaderboard/text_summary" in board.Tags()["tensors"]


def test_trackio_and_wandb_offline(finished_comparison, tmp_path, monkeypatch):
    pytest.importorskip("trackio")
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline is the default
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # stored credentials never mean "upload"
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    import trackio

    # trackio reads TRACKIO_DIR once, at import: point its store at this test's folder
    monkeypatch.setattr(trackio.sqlite_storage, "TRACKIO_DIR", tmp_path / "trackio")
    warnings = []
    tracking = Tracking(["trackio", "wandb"], "tracked", tmp_path, warnings.append)
    assert tracking.trackers["wandb"].mode == "offline"
    result = json.loads((finished_comparison / "lora" / "result.json").read_text())
    tracking.strategy(result, finished_comparison / "lora")
    tracking.close()
    assert warnings == []
    runs = list(trackio.Api().runs("tracked"))
    assert [r.name for r in runs] == ["lora"] and runs[0].config["train.method"] == "lora"
    offline = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    assert (offline[0] / "files" / "predictions.jsonl").is_file()
    assert next(offline[0].glob("*.wandb")).stat().st_size > 0


def test_a_failing_tracker_is_reported_once_closed_and_dropped(tmp_path, finished_comparison):
    pytest.importorskip("tensorboard")
    warnings, closed = [], []
    tracking = Tracking(["tensorboard"], "x", tmp_path, warnings.append)
    tracker = tracking.trackers["tensorboard"]
    tracker.log_strategy = lambda record: 1 / 0
    tracker.close = closed.append
    result = json.loads((finished_comparison / "base" / "result.json").read_text())
    tracking.strategy(result, finished_comparison / "base")
    tracking.strategy(result, finished_comparison / "base")
    assert len(warnings) == 1 and "ZeroDivisionError" in warnings[0]
    assert tracking.trackers == {} and closed == ["FAILED"]


def test_a_compare_finishes_when_its_tracker_fails_and_logs_are_cut_short(
    finished_comparison, tmp_path, monkeypatch
):
    """A tracker that cannot start, and a metrics.jsonl whose last line was cut: the compare
    (every strategy cached here) still writes its leaderboard, and says what went wrong."""
    pytest.importorskip("tensorboard")
    from tunelab.tracking import backends

    out = tmp_path / "copy"
    shutil.copytree(finished_comparison, out)
    with (out / "lora" / "metrics.jsonl").open("a") as log:
        log.write('{"loss": 1.0, "st')
    (out / "leaderboard.md").unlink()

    def broken(*args):
        raise ConnectionError("no tracking server")

    monkeypatch.setitem(backends.BACKENDS, "mlflow", broken)
    experiment = finished_comparison.parents[1] / "experiment.yaml"
    result = runner.invoke(app, ["compare", str(experiment), "--out", str(out), "--track",
                                 "mlflow", "--track", "tensorboard"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "tracking mlflow: ConnectionError: no tracking server" in result.output
    assert (out / "leaderboard.md").is_file()
    folders = sorted((out / "tensorboard").iterdir())
    assert len(folders) == 2  # this compare's own folder beside the first one's
    assert {p.name for p in folders[-1].iterdir()} == STRATEGIES | {"_leaderboard"}
    state = json.loads((out / "progress.json").read_text())
    assert state["state"] == "finished"


def test_track_none_turns_off_the_files_trackers(tmp_path):
    assert check_trackers(["none"]) == [] and check_trackers(["none", "none"]) == []
    with pytest.raises(TuneLabError, match="--track none turns tracking off: give it alone"):
        check_trackers(["tensorboard", "none"])


def test_only_one_strategy_keeps_the_others_on_the_leaderboard(finished_comparison, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(finished_comparison, out)
    experiment = finished_comparison.parents[1] / "experiment.yaml"
    result = runner.invoke(app, ["compare", str(experiment), "--out", str(out), "--only", "base",
                                 "--track", "none"])  # fmt: skip
    assert result.exit_code == 0, result.output
    names = {r["name"] for r in json.loads((out / "results.json").read_text())["results"]}
    assert names == STRATEGIES


def test_strategy_record_reads_the_files_a_strategy_wrote(finished_comparison):
    result = json.loads((finished_comparison / "refined" / "result.json").read_text())
    record = strategy_record(result, finished_comparison / "refined")
    assert record.params["kind"] == "optimize"
    assert "search/dev_score" in record.curves and record.metrics["search/candidates"] >= 1
    assert all(len(v) <= 250 for v in record.params.values())


def test_a_missing_tracker_package_names_its_extra(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(TuneLabError, match=r"pip install 'tunelab\[wandb\]'"):
        check_trackers(["wandb"])
    with pytest.raises(TuneLabError, match="choose from mlflow, trackio, wandb, tensorboard"):
        check_trackers(["neptune"])


def test_an_unknown_tracker_in_the_file_is_one_line_naming_it(tmp_path, finished_comparison):
    text = (finished_comparison.parents[1] / "experiment.yaml").read_text()
    experiment = tmp_path / "e.yaml"
    experiment.write_text(text.replace("track: tensorboard", "track: [tensorboard, neptune]"))
    result = runner.invoke(app, ["compare", str(experiment), "--plan"])
    assert result.exit_code == 1
    assert "e.yaml:4: track" in result.output and "neptune" in result.output


def test_progress_file_of_a_finished_compare_and_its_estimates(finished_comparison, tmp_path):
    state = json.loads((finished_comparison / "progress.json").read_text())
    assert state["state"] == "finished"
    assert [s["status"] for s in state["strategies"]] == ["done"] * 3

    class Spec:
        def __init__(self, name):
            self.name, self.kind = name, "prompt"

    progress = ProgressFile(tmp_path, [Spec("a"), Spec("b")], {"a": 10.0, "b": 30.0}, set())
    assert progress.seconds_left() == 40.0
    progress.start("a")
    progress.step("test", 5, 10)
    progress.current["since"] -= 4  # as if it had run 4 s
    assert progress.seconds_left() == pytest.approx(36.0, abs=0.5)
    progress.finish("a")
    assert progress.seconds_left() == 30.0
    written = json.loads((tmp_path / "progress.json").read_text())
    assert written["strategies"][0]["status"] == "done" and written["pid"] > 0


def test_reserved_strategy_names_are_refused(tmp_path, finished_comparison):
    text = (finished_comparison.parents[1] / "experiment.yaml").read_text()
    experiment = tmp_path / "e.yaml"
    experiment.write_text(text.replace("name: base,", "name: progress.json,"))
    result = runner.invoke(app, ["compare", str(experiment), "--plan"])
    assert result.exit_code == 1 and "'progress.json' is a name the experiment folder uses" in (
        result.output
    )


def test_unparseable_log_lines_are_skipped(tmp_path):
    from tunelab.training.artifacts import read_curves

    (tmp_path / "metrics.jsonl").write_text(
        '{"loss": 2.0, "step": 1}\n[1]\nnot json\n{"eval_accuracy": 0.5, "step": 4}\n{"loss": 1.'
    )
    assert read_curves(tmp_path) == {"train/loss": [(1, 2.0)], "dev/accuracy": [(4, 0.5)]}
