"""Hyperparameter search (tunelab.training.search): trials scored on dev only, the default
settings as trial 0, the best kept and evaluated on test, and a killed search resumes
without repeating finished trials."""

import json

import pytest
from transformers import TrainerCallback

from tunelab.errors import TuneLabError
from tunelab.training import run as training_run
from tunelab.training.config import make_settings
from tunelab.training.data import TrainData
from tunelab.training.run import default_training_strategy
from tunelab.training.search import (
    SearchSettings,
    default_params,
    prune_on_dev,
    resolve_space,
    run_search,
    same_search,
    with_start,
)

from .test_training import LABELS, examples

pytest.importorskip("optuna")

SPACE = {"learning_rate": {"low": 1e-4, "high": 3e-2, "log": True}, "r": {"choices": [2, 4]}}


def settings(**values):
    base = {"method": "lora", "options": {"r": 4}, "epochs": 2, "batch_size": 4,
            "save_steps": 1, "patience": 0}  # fmt: skip
    return make_settings(**(base | values)).resolved(classification=True)


def data(tmp_path) -> TrainData:
    path = tmp_path / "train.jsonl"
    rows = examples() * 2
    path.write_text("".join(json.dumps({"input": e.input, "output": e.output}) + "\n"
                            for e in rows))  # fmt: skip
    return TrainData(rows, examples(2), examples(1), LABELS, {"train": path})


def search(tmp_path, model, trials, **kwargs):
    return run_search(
        settings(), data(tmp_path), default_training_strategy("lora"), str(model),
        tmp_path / "search", SearchSettings(trials=trials, space=SPACE), **kwargs,
    )  # fmt: skip


def test_a_search_scores_on_dev_keeps_the_best_and_tests_default_and_best(tmp_path, tiny_model_dir):
    outcome = search(tmp_path, tiny_model_dir, 3)
    summary = json.loads((tmp_path / "search" / "search.json").read_text())
    assert summary == outcome.summary
    trials = summary["trials"]
    assert len(trials) == 3 and [t["state"] for t in trials] == ["complete"] * 3
    assert trials[0]["default"] and trials[0]["params"] == {"learning_rate": 2e-3, "r": 4}
    for trial in trials:  # each trial is a train run evaluated on dev: test is hidden
        metrics = json.loads((tmp_path / "search" / trial["folder"] / "metrics.json").read_text())
        assert metrics["evaluated_on"] == "dev"
        assert len(trial["dev_by_epoch"]) == 2
    best = max(trials, key=lambda t: (t["dev"], -t["number"]))
    assert summary["best"]["number"] == best["number"]
    assert outcome.best_dir == tmp_path / "search" / best["folder"]
    assert "accuracy" in summary["best"]["test"] and "accuracy" in summary["default"]["test"]
    assert (outcome.best_dir / "test-predictions.jsonl").is_file()


def test_a_killed_search_resumes_without_repeating_finished_trials(
    tmp_path, tiny_model_dir, monkeypatch
):
    calls: list[str] = []
    real = training_run.train_run

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise KeyboardInterrupt

    def counting(settings, data, strategy, model, folder, **kwargs):
        calls.append(folder.name + (" resumed" if kwargs.get("resume") else ""))
        if len(calls) == 2:  # the second trial is killed after its third step
            kwargs["callbacks"] = (*kwargs.get("callbacks", ()), Kill())
        return real(settings, data, strategy, model, folder, **kwargs)

    monkeypatch.setattr(training_run, "train_run", counting)
    with pytest.raises(KeyboardInterrupt):
        search(tmp_path, tiny_model_dir, 3)
    finished = (tmp_path / "search" / "trials" / "trial-000" / "metrics.json").stat().st_mtime_ns
    outcome = search(tmp_path, tiny_model_dir, 3, resume=True)
    assert calls == ["trial-000", "trial-001", "trial-001 resumed", "trial-003"]
    states = [t["state"] for t in outcome.summary["trials"]]
    assert states == ["complete", "interrupted", "complete", "complete"]
    assert outcome.summary["trials"][2]["folder"] == "trials/trial-001"  # continued in place
    assert outcome.summary["trials"][2]["params"] == outcome.summary["trials"][1]["params"]
    # the sampler is not reseeded as at the start: the next new trial tries new settings
    assert outcome.summary["trials"][3]["params"] != outcome.summary["trials"][1]["params"]
    after = (tmp_path / "search" / "trials" / "trial-000" / "metrics.json").stat().st_mtime_ns
    assert after == finished  # the finished trial was not run again
    calls.clear()
    search(tmp_path, tiny_model_dir, 3, resume=True)  # nothing left to do
    assert calls == []


def test_a_failing_trial_is_recorded_and_the_search_goes_on(tmp_path, tiny_model_dir, monkeypatch):
    calls: list[str] = []
    real = training_run.train_run

    def failing(settings, data, strategy, model, folder, **kwargs):
        calls.append(folder.name)
        if len(calls) == 2:
            raise TuneLabError("training diverged at step 3: loss is nan; lower --lr")
        return real(settings, data, strategy, model, folder, **kwargs)

    monkeypatch.setattr(training_run, "train_run", failing)
    outcome = search(tmp_path, tiny_model_dir, 3)
    trials = outcome.summary["trials"]
    assert [t["state"] for t in trials] == ["complete", "fail", "complete"]
    assert trials[1]["error"].startswith("training diverged")
    calls.clear()
    search(tmp_path, tiny_model_dir, 3, resume=True)
    assert calls == []  # a trial that failed on its own counts, and is not run again


class FakeTrial:
    def __init__(self, prune: bool):
        self.prune, self.reports = prune, []

    def report(self, value, step):
        self.reports.append((step, value))

    def should_prune(self):
        return self.prune


class State:
    epoch, global_step, max_steps = 1.0, 10, 20


def test_the_dev_metric_of_each_epoch_feeds_the_pruner():
    import optuna

    keep = FakeTrial(prune=False)
    prune_on_dev(keep, "eval_accuracy").on_evaluate(None, State(), None, {"eval_accuracy": 0.5})
    assert keep.reports == [(1, 0.5)]
    with pytest.raises(optuna.TrialPruned):
        prune_on_dev(FakeTrial(prune=True), "eval_accuracy").on_evaluate(
            None, State(), None, {"eval_accuracy": 0.1}
        )
    last = State()
    last.epoch, last.global_step = 2.0, 20  # the last evaluation: the trial finishes
    trailing = FakeTrial(prune=True)
    prune_on_dev(trailing, "eval_accuracy").on_evaluate(None, last, None, {"eval_accuracy": 0.1})
    assert trailing.reports == [(2, 0.1)]


def test_default_spaces_start_from_the_method_defaults():
    for method in ("lora", "full", "prompt-tuning", "prefix-tuning", "p-tuning"):
        resolved = make_settings(method=method).resolved(classification=True)
        space = resolve_space(resolved, SearchSettings(trials=2))
        assert default_params(resolved, space).keys() == space.keys(), method
    start = settings(epochs=6, learning_rate=1e-5)  # outside lora's space: the space grows
    space = with_start(start, resolve_space(start, SearchSettings(trials=2)))
    assert default_params(start, space)["epochs"] == 6
    assert default_params(start, space)["learning_rate"] == 1e-5


def test_a_space_key_that_is_no_setting_is_one_clear_error():
    with pytest.raises(TuneLabError, match="'virtual_tokens' is not a setting of lora"):
        space = {"virtual_tokens": {"choices": [4]}}
        resolve_space(settings(), SearchSettings(trials=2, space=space))


@pytest.mark.parametrize(
    ("space", "args", "message"),
    [
        (None, ["--search-space", "SPACE"], "--search-space needs --search N"),
        ("r: [1, 2]\n", ["--search", "2", "--search-space", "SPACE"], "r: expected {low, high"),
        ("r: {low: 1\n", ["--search", "2", "--search-space", "SPACE"], "space.yaml:2:1:"),
        (
            "r: {low: 4, high: 2}\n",
            ["--search", "2", "--search-space", "SPACE"],
            "r: Value error, a range needs low < high",
        ),
        (
            "alpha2: {choices: [1]}\n",
            ["--search", "2", "--search-space", "SPACE"],
            "'alpha2' is not a setting of lora",
        ),
        (None, ["--search", "2", "--dev-size", "0"], "a search needs a dev split"),
    ],
)
def test_bad_search_requests_are_one_line_errors(
    tmp_path, tiny_model_dir, support_train_file, space, args, message
):
    from typer.testing import CliRunner

    from tunelab.cli.main import app

    path = tmp_path / "space.yaml"
    if space is not None:
        path.write_text(space)
    args = [str(path) if a == "SPACE" else a for a in args]
    result = CliRunner().invoke(app, [
        "train", "--data", str(support_train_file), "--input", "text", "--output", "label",
        "--model", str(tiny_model_dir), "--method", "lora", "--out", str(tmp_path / "s"), *args,
    ])  # fmt: skip
    assert result.exit_code != 0
    assert message in " ".join(result.output.split()), result.output
    assert not (tmp_path / "s").exists()  # refused before anything was written


def test_a_search_stored_before_a_setting_existed_still_resumes(
    tmp_path, tiny_model_dir, monkeypatch
):
    search(tmp_path, tiny_model_dir, 1)
    stored = tmp_path / "search" / "search-config.json"
    config = json.loads(stored.read_text())
    for later in ("head", "shot_order"):  # what an older TuneLab did not write
        del config["settings"][later]
    stored.write_text(json.dumps(config))
    strategy, space = default_training_strategy("lora"), SearchSettings(trials=1, space=SPACE)
    assert same_search(tmp_path / "search", settings(), data(tmp_path), strategy,
                       str(tiny_model_dir), space)  # fmt: skip
    calls: list[str] = []
    monkeypatch.setattr(training_run, "train_run", lambda *a, **k: calls.append("trained"))
    search(tmp_path, tiny_model_dir, 1, resume=True)  # not refused, nothing to repeat
    assert calls == []
    assert not same_search(tmp_path / "search", settings(shot_order="shuffled"), data(tmp_path),
                           strategy, str(tiny_model_dir), space)  # fmt: skip
