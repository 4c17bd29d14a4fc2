"""Run folders: TuneLab writes only where it may, never loses a user's file, and every run can
be finished after a crash."""

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunelab import runs
from tunelab.cli.main import app
from tunelab.errors import TuneLabError
from tunelab.paths import atomic_directory, remove_leftovers, write_json_atomic

cli = CliRunner()


def run(*args):
    return cli.invoke(app, [str(a) for a in args])


def one_error_line(result) -> str:
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1, result.output
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


@pytest.fixture
def files(write_jsonl, label_rows):
    return write_jsonl(label_rows * 2, "train.jsonl"), write_jsonl(label_rows[::3], "test.jsonl")


@pytest.fixture
def user_folder(tmp_path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "notes.txt").write_text("my thesis notes")
    return folder


def assert_untouched(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    assert (folder / "notes.txt").read_text() == "my thesis notes"


# -- the rule ------------------------------------------------------------------------------


def test_check_out_refuses_files_unmarked_folders_and_other_kinds(tmp_path, user_folder):
    assert runs.check_out(tmp_path / "new", "eval").state == "new"
    (tmp_path / "empty").mkdir()
    assert runs.check_out(tmp_path / "empty", "eval").state == "new"
    with pytest.raises(TuneLabError, match="did not write.*choose another --out"):
        runs.check_out(user_folder, "eval")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(TuneLabError, match="is a file"):
        runs.check_out(tmp_path / "file.txt", "train")
    runs.claim(tmp_path / "t", "train")
    with pytest.raises(TuneLabError, match="holds a tunelab train run, not an eval run"):
        runs.check_out(tmp_path / "t", "eval")
    assert runs.check_out(tmp_path / "t", "train").state == "existing"
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_remove_run_refuses_a_folder_that_is_not_ours(user_folder):
    with pytest.raises(TuneLabError):
        runs.remove_run(user_folder, "train")
    assert_untouched(user_folder)


def test_a_run_is_written_inside_another_only_as_its_part(tmp_path):
    train_run = runs.claim(tmp_path / "lora", "train")
    inside = f"inside the tunelab train run {train_run}, which may replace"
    for kind in ("retriever", "eval", "export", "train"):
        with pytest.raises(TuneLabError, match=inside):
            runs.check_out(train_run / "adapter" / kind, kind)
    compare = runs.claim(tmp_path / "cmp", "compare")
    for folder in (compare / "base", compare / "retriever"):  # a user's, or a strategy's name
        with pytest.raises(TuneLabError, match="inside the tunelab compare run"):
            runs.check_out(folder, "eval")
    # while a comparison writes its strategies, and a search its trials, in their places
    with runs.writing_parts_of(compare):
        assert runs.check_out(compare / "lora", "train").state == "new"
        with pytest.raises(TuneLabError, match="inside the tunelab compare run"):
            runs.check_out(compare / "deeper" / "lora", "train")
        search = runs.claim(compare / "tuned", "search")
        with runs.writing_parts_of(search):
            assert runs.check_out(search / "trials" / "trial-000", "train").state == "new"
            with pytest.raises(TuneLabError, match="inside the tunelab search run"):
                runs.check_out(search / "foo", "train")
            with pytest.raises(TuneLabError, match="inside the tunelab search run"):
                runs.check_out(search / "trials" / "x", "eval")


def test_overwrite_refuses_a_run_holding_another_run(tmp_path):
    outer = runs.claim(tmp_path / "lora", "train")
    retriever = runs.claim(outer / "my-retriever", "retriever")  # as an older TuneLab allowed
    runs.claim(retriever / "inner", "eval")  # the outermost stray is the one named
    with pytest.raises(TuneLabError, match=r"holds another tunelab run, \S*my-retriever,"):
        runs.remove_run(outer, "train")
    assert runs.is_run(retriever, "retriever")
    search = runs.claim(tmp_path / "search", "search")
    runs.claim(search / "foo", "train")  # a train run, but not in a trial's place
    with pytest.raises(TuneLabError, match="foo"):
        runs.remove_run(search, "search")
    shutil.rmtree(search / "foo")
    runs.claim(search / "trials" / "trial-000", "train")  # its own trials go with it
    runs.remove_run(search, "search")
    assert not search.exists()


# -- atomic writes -------------------------------------------------------------------------


def test_replacing_a_folder_keeps_user_entries_and_leaves_no_siblings(tmp_path):
    target = tmp_path / "export"
    with atomic_directory(target) as scratch:
        (scratch / "model.bin").write_text("old")
    (target / "README.user").write_text("mine")
    inode = target.stat().st_ino
    with atomic_directory(target, keep=lambda entry: entry.name == "README.user") as scratch:
        (scratch / "model.bin").write_text("new")
    assert (target / "model.bin").read_text() == "new"
    assert (target / "README.user").read_text() == "mine"
    assert target.stat().st_ino != inode  # swapped, not written in place
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


def test_leftovers_of_a_dead_process_are_removed_but_not_a_live_ones(tmp_path):
    target = tmp_path / "run"
    dead = tmp_path / ".tmp-run-999999999-abc"  # no such process
    alive = tmp_path / f".tmp-run-{os.getppid()}-abc"
    old = tmp_path / ".old-run-999999999"
    for folder in (dead, alive, old):
        folder.mkdir()
    other = tmp_path / ".tmp-run-2-999999999-x"  # the scratch of another target, "run-2"
    other.mkdir()
    remove_leftovers(target)
    assert not dead.exists() and not old.exists()
    assert alive.exists() and other.exists()


def test_written_files_and_folders_follow_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        write_json_atomic(tmp_path / "a.json", {"x": 1})
        with atomic_directory(tmp_path / "folder") as scratch:
            (scratch / "f").write_text("x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o750


# -- every command that writes -------------------------------------------------------------


def test_eval_refuses_a_user_folder_and_replaces_its_own_run(files, tiny_model_dir, user_folder):
    train, test = files
    args = ["eval", "--data", train, "--test", test, "--input", "text", "--output", "label",
            "--model", tiny_model_dir, "--show", 0]  # fmt: skip
    line = one_error_line(run(*args, "--out", user_folder))
    assert str(user_folder) in line and "--out" in line
    assert_untouched(user_folder)

    own = user_folder.parent / "eval-run"
    assert run(*args, "--out", own).exit_code == 0
    assert runs.read_marker(own)["kind"] == "eval"
    (own / "my-analysis.ipynb").write_text("{}")
    again = run(*args, "--out", own, "--limit", 2)
    assert again.exit_code == 0, again.output
    assert (own / "my-analysis.ipynb").read_text() == "{}"
    assert json.loads((own / "metrics.json").read_text())["examples"] == 2


def test_train_refuses_user_folders_files_and_overwrite_of_them(
    files, tiny_model_dir, user_folder, tmp_path
):
    train, test = files
    args = ["train", "--data", train, "--input", "text", "--output", "label", "--model",
            tiny_model_dir, "--method", "lora", "--epochs", 1, "--batch-size", 4]  # fmt: skip
    for extra in ([], ["--overwrite"], ["--resume"], ["--search", 2]):
        result = run(*args, "--out", user_folder, *extra)
        one_error_line(result)
        assert " → " not in result.output  # refused before the data is read and the plan shown
        assert_untouched(user_folder)
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep")
    assert "is a file" in one_error_line(run(*args, "--out", a_file))
    assert a_file.read_text() == "keep"


def test_a_failed_settings_check_leaves_no_folder_behind(files, tiny_model_dir, tmp_path):
    train, _ = files
    out = tmp_path / "r"
    args = ["train", "--data", train, "--input", "text", "--output", "label", "--model",
            tiny_model_dir, "--method", "lora", "--out", out, "--epochs", 1]  # fmt: skip
    one_error_line(run(*args, "-o", "target_modules=qq_proj"))  # found only once the model loads
    assert not out.exists()
    assert run(*args).exit_code == 0  # the next attempt is not blocked


def test_optimize_refuses_a_user_folder(files, tiny_model_dir, user_folder):
    train, test = files
    result = run(
        "optimize", "--data", train, "--test", test, "--input", "text", "--output", "label",
        "--model", tiny_model_dir, "--budget", 2, "--llm", 0, "--dev-rows", 6,
        "--out", user_folder,
    )  # fmt: skip
    one_error_line(result)
    assert_untouched(user_folder)


def test_export_refuses_a_user_folder_and_replaces_its_own_export(tiny_model_dir, tmp_path):
    from tests.test_training import run as train

    outcome = train(tmp_path, tiny_model_dir, "lora", epochs=1)
    user = tmp_path / "work"
    user.mkdir()
    (user / "notes.txt").write_text("my thesis notes")
    one_error_line(run("export", outcome.run_dir, "--out", user))
    assert_untouched(user)

    out = tmp_path / "exported"
    assert run("export", outcome.run_dir, "--out", out).exit_code == 0
    assert runs.read_marker(out)["kind"] == "export"
    (out / "DEPLOY.md").write_text("how we deploy")
    again = run("export", outcome.run_dir, "--out", out)
    assert again.exit_code == 0, again.output
    assert (out / "DEPLOY.md").read_text() == "how we deploy"
    assert (out / "config.json").is_file()


# -- train: crashes and resumes ------------------------------------------------------------


def test_a_run_killed_during_its_final_evaluation_resumes_with_that_alone(
    tmp_path, tiny_model_dir, monkeypatch
):
    from tests.test_training import CountSteps
    from tests.test_training import run as train
    from tunelab.training import artifacts
    from tunelab.training import run as run_module

    original = run_module._write_final

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stands for kill -9 between the adapter and metrics.json

    monkeypatch.setattr(run_module, "_write_final", killed)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path, tiny_model_dir, "lora", name="cut", epochs=1)
    cut = tmp_path / "cut"
    assert artifacts.has_adapter(cut) and not artifacts.is_finished(cut)
    with pytest.raises(TuneLabError, match="unfinished run.*--resume"):
        train(tmp_path, tiny_model_dir, "lora", name="cut", epochs=1)

    monkeypatch.setattr(run_module, "_write_final", original)
    counter = CountSteps()
    resumed = train(tmp_path, tiny_model_dir, "lora", name="cut", epochs=1, resume=True,
                    callbacks=(counter,))  # fmt: skip
    assert counter.steps == 0  # no training again: only the evaluation that was missing
    assert artifacts.is_finished(cut)
    summary = json.loads((cut / "metrics.json").read_text())["training"]
    assert summary["steps"] == resumed.summary["steps"] > 0


def test_a_resumed_run_reports_the_whole_run(tmp_path, tiny_model_dir):
    from tests.test_training import Interrupt
    from tests.test_training import run as train

    whole = train(tmp_path, tiny_model_dir, "lora", name="whole", save_steps=3, lr=3e-3)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path, tiny_model_dir, "lora", name="cut", save_steps=3, lr=3e-3,
              callbacks=(Interrupt(at_step=5),))  # fmt: skip
    resumed = train(tmp_path, tiny_model_dir, "lora", name="cut", save_steps=3, lr=3e-3,
                    resume=True)  # fmt: skip
    summary = resumed.summary
    assert summary["resumed"] is True
    # tokens of the steps before the checkpoint count too: the same total as one session
    assert summary["train_tokens"] == whole.summary["train_tokens"]  # the earlier steps count
    assert summary["steps"] == whole.summary["steps"]
    records = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert not any("train_runtime" in r for r in records)  # no per-session summary lines


# -- compare -------------------------------------------------------------------------------


def write_experiment(folder: Path, model: Path, strategies: str) -> Path:
    path = folder / "experiment.yaml"
    path.write_text(
        f"name: tiny\ndata: {{train: train.jsonl, test: test.jsonl, input: text, "
        f"output: label}}\nmodel: {model}\nstrategies:\n{strategies}",
        encoding="utf-8",
    )
    return path


def test_compare_refuses_user_folders_and_files(files, tiny_model_dir, tmp_path, user_folder):
    experiment = write_experiment(tmp_path, tiny_model_dir, "  - {name: base, prompt: {}}\n")
    one_error_line(run("compare", experiment, "--out", user_folder, "--no-estimate"))
    assert_untouched(user_folder)
    a_file = tmp_path / "results.txt"
    a_file.write_text("keep")
    assert "is a file" in one_error_line(run("compare", experiment, "--out", a_file))
    assert a_file.read_text() == "keep"


def test_compare_keeps_the_search_files_of_its_optimize_strategy(files, tiny_model_dir, tmp_path):
    experiment = write_experiment(
        tmp_path, tiny_model_dir,
        "  - {name: refined, optimize: {budget: 2, operators: [format], dev_rows: 4}}\n",
    )  # fmt: skip
    out = tmp_path / "out"
    result = run("compare", experiment, "--out", out, "--no-estimate")
    assert result.exit_code == 0, result.output
    search = out / "refined" / "search"
    assert (search / "trajectory.jsonl").is_file() and (search / "best.yaml").is_file()
    assert (search / "cache.jsonl").stat().st_size > 0
    assert (out / "refined" / "predictions.jsonl").is_file()


def test_compare_honours_the_llm_writer_of_an_optimize_strategy(
    files, tiny_model_dir, tmp_path, monkeypatch
):
    from tunelab.optimize import llm

    asked = []

    def complete(self, messages, n, seed):
        asked.append(n)
        return ["Name the category of the message."] * n

    monkeypatch.setattr(llm.LocalWriter, "complete", complete)
    experiment = write_experiment(
        tmp_path, tiny_model_dir,
        "  - {name: refined, optimize: {budget: 3, operators: [], llm: 1, dev_rows: 4}}\n",
    )  # fmt: skip
    result = run("compare", experiment, "--out", tmp_path / "out", "--no-estimate")
    assert result.exit_code == 0, result.output
    assert asked  # today the writer was never built, so llm: 1 was silently ignored
    lines = (tmp_path / "out" / "refined" / "search" / "trajectory.jsonl").read_text()
    assert "Name the category of the message." in lines


def test_compare_restarts_an_edited_training_strategy_whose_run_was_interrupted(
    files, tiny_model_dir, tmp_path, monkeypatch
):
    from tests.test_training import Interrupt
    from tunelab.training import run as run_module

    strategies = "  - {name: lora, train: {method: lora, epochs: 1, batch_size: 4, save_steps: 1}}"
    experiment = write_experiment(tmp_path, tiny_model_dir, strategies + "\n")
    out = tmp_path / "out"
    original = run_module.train_run

    def interrupted(*args, callbacks=(), **kwargs):
        return original(*args, callbacks=(*callbacks, Interrupt(at_step=2)), **kwargs)

    monkeypatch.setattr(run_module, "train_run", interrupted)
    assert run("compare", experiment, "--out", out, "--no-estimate").exit_code == 130
    assert (out / "lora" / "checkpoints").is_dir()
    monkeypatch.setattr(run_module, "train_run", original)
    experiment.write_text(experiment.read_text().replace("epochs: 1", "epochs: 2"))
    result = run("compare", experiment, "--out", out, "--no-estimate")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "lora" / "result.json").read_text())
    assert record["training"]["settings"]["epochs"] == 2


def test_weights_written_in_a_run_folder_follow_the_umask(tmp_path):
    """safetensors writes 0600 whatever the umask (safetensors#782); TuneLab's folders give
    the weights the mode of every other file, so a server run by another user reads them."""
    import os
    import stat

    import torch
    from safetensors.torch import save_file

    from tunelab.paths import atomic_directory

    previous = os.umask(0o022)
    try:
        with atomic_directory(tmp_path / "adapter") as scratch:
            save_file({"w": torch.zeros(2)}, scratch / "adapter_model.safetensors")
            (scratch / "config.json").write_text("{}")
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "adapter").iterdir()}
    assert modes == {"adapter_model.safetensors": 0o644, "config.json": 0o644}
