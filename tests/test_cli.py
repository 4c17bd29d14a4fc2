import json

import pytest
from typer.testing import CliRunner

from tunelab import __version__
from tunelab.cli.main import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_version_and_help():
    assert run("--version").stdout.strip() == f"tunelab {__version__}"
    help_text = run("--help").stdout
    for command in ("models", "data", "eval"):
        assert command in help_text


@pytest.fixture
def label_file(write_jsonl, label_rows):
    return write_jsonl(label_rows, "labels.jsonl")


def test_data_inspect_reports_rows_labels_lengths_and_duplicates(label_file, tiny_model_dir):
    result = run(
        "data",
        "inspect",
        label_file,
        "--input",
        "text",
        "--output",
        "label",
        "--model",
        tiny_model_dir,
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "rows: 12" in out
    assert "labels: 3 (classification)" in out
    assert "duplicates: 1 inputs repeated (1 extra rows, 1 with different outputs)" in out
    assert "lines 5, 12" in out
    assert "median" in out and "p95" in out


def test_data_inspect_overlap_with_test(label_file, write_jsonl):
    test_file = write_jsonl([{"text": "LATE delivery", "label": "shipping"}], "test.jsonl")
    result = run("data", "inspect", label_file, "--test", test_file, "--no-tokens")
    assert result.exit_code == 0, result.output
    assert "1 test rows also in training (test lines 1)" in result.stdout


@pytest.mark.parametrize(
    ("content", "name", "args", "message"),
    [
        ('{"text": "a", "label": "b"}\n{oops\n', "bad.jsonl", [], "bad.jsonl:2: malformed JSON"),
        (
            "text,label\nhi,x\n",
            "d.csv",
            ["--output", "category"],
            "d.csv:1: field 'category' (the output) not found; fields: text, label",
        ),
        ("", "empty.jsonl", [], "empty.jsonl: file is empty"),
        (None, "missing.csv", [], "missing.csv: no such file"),
    ],
)
def test_broken_inputs_exit_non_zero_with_one_line(tmp_path, content, name, args, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    result = run("data", "inspect", path, "--no-tokens", *args)
    assert result.exit_code == 1
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_data_split_writes_stratified_files(label_file, tmp_path):
    out = tmp_path / "split"
    result = run("data", "split", label_file, "--out", out, "--test-size", "3", "--seed", "1")
    assert result.exit_code == 0, result.output
    test_rows = [json.loads(x) for x in (out / "test.jsonl").read_text().splitlines()]
    train_rows = (out / "train.jsonl").read_text().splitlines()
    assert len(test_rows) == 3 and len(train_rows) == 9
    assert sorted(r["output"] for r in test_rows) == ["billing", "login", "shipping"]
    assert "stratified" in result.stdout


def test_models_info_of_local_folder(tiny_model_dir):
    result = run("models", "info", tiny_model_dir)
    assert result.exit_code == 0, result.output
    assert "LlamaForCausalLM" in result.stdout and "parameters" in result.stdout


def test_models_info_unknown_model_is_one_line():
    result = run("models", "info", "not-a-model")
    assert result.exit_code == 1
    assert "error: unknown model 'not-a-model'" in result.stderr


def test_eval_writes_run_folder(label_file, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    result = run(
        "eval",
        "--data",
        label_file,
        "--model",
        tiny_model_dir,
        "--out",
        out,
        "--max-new-tokens",
        "3",
        "--input",
        "text",
        "--output",
        "label",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["labels"] == ["billing", "login", "shipping"]
    accuracy = summary["metrics"]["accuracy"]
    lines = (out / "predictions.jsonl").read_text().splitlines()
    predictions = [json.loads(line) for line in lines]
    assert len(predictions) == summary["examples"] == 2  # 20% of 12 rows, rounded
    correct = [row["prediction"] == row["reference"] for row in predictions]
    assert accuracy["value"] == sum(correct) / len(correct)  # the metric counts these rows
    assert all(row["prediction"] in summary["labels"] for row in predictions)  # label scoring
    config = json.loads((out / "config.json").read_text())
    assert config["strategy"]["name"] == "zero-shot"
    assert "accuracy" in result.stdout


def test_eval_rejects_empty_label_list(label_file, tiny_model_dir):
    result = run("eval", "--data", label_file, "--model", tiny_model_dir, "--labels", " , ")
    assert result.exit_code == 1
    assert "label list is empty" in result.stderr


def test_eval_with_more_shots_than_rows(label_file, tiny_model_dir):
    result = run("eval", "--data", label_file, "--model", tiny_model_dir, "--shots", "50")
    assert result.exit_code == 1
    assert "shots=50 is more than the 10 rows to draw shots from" in result.stderr


def test_eval_template_with_missing_field(label_file, tiny_model_dir, tmp_path):
    strategy = tmp_path / "s.yaml"
    strategy.write_text("template: '{{ product }}: {{ input }}'\n", encoding="utf-8")
    result = run("eval", "--data", label_file, "--model", tiny_model_dir, "--prompt", strategy)
    assert result.exit_code == 1
    assert "'product' is undefined" in result.stderr and "available:" in result.stderr


def test_eval_few_shot_cot_consistency_run(label_file, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    result = run(
        "eval", "--data", label_file, "--model", tiny_model_dir, "--shots", "2",
        "--selector", "similar", "--embedder", "tfidf", "--cot", "--mode", "generate",
        "--consistency", "--max-new-tokens", "2", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["retriever"].startswith("tf-idf")
    assert summary["modes"] == ["generate"]
    assert len(summary["consistency"]["per_template"]) == 3
    strategy = (out / "strategy.yaml").read_text()
    assert strategy.startswith("name: 2-shot similar cot") and "cot: true" in strategy
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert all("Think step by step" in row["prompt"] for row in rows)
    assert all(row["prompt"].count("Answer: ") == 2 for row in rows)  # each shot ends so
    assert "consistency over 3 templates" in result.stdout


def test_a_paraphrase_naming_a_missing_field_stops_before_the_evaluation(
    label_file, tiny_model_dir, tmp_path
):
    paraphrases = tmp_path / "para.yaml"
    paraphrases.write_text("- 'Q: {{ input }}'\n- '{{ product }} {{ input }}'\n", encoding="utf-8")
    out = tmp_path / "run"
    result = run(
        "eval", "--data", label_file, "--model", tiny_model_dir, "--paraphrases", paraphrases,
        "--out", out,
    )  # fmt: skip
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {paraphrases}: paraphrase 2 (")
    assert "'product' is undefined" in result.stderr
    assert not out.exists()  # refused before anything ran or was written


def test_eval_unknown_selector_is_one_clear_line(label_file, tiny_model_dir):
    result = run("eval", "--data", label_file, "--model", tiny_model_dir, "--selector", "best")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: --selector: Input should be 'fixed', 'random' or 'similar'"
    )


def test_ctrl_c_while_the_commands_import_ends_quietly(monkeypatch, capsys):
    """The console script (tunelab.cli.entry) imports the commands inside its own guard."""
    import builtins
    import sys

    from tunelab.cli import entry

    real_import = builtins.__import__

    def interrupted(name, *args, **kwargs):
        if name == "tunelab.cli.main":
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "tunelab.cli.main", raising=False)
    monkeypatch.setattr(builtins, "__import__", interrupted)
    with pytest.raises(SystemExit) as stopped:
        entry.main()
    assert stopped.value.code == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_python_dash_m_tunelab_runs_the_cli():
    """`python -m tunelab` goes through the same entry as the console script."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "tunelab", "--version"], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0 and done.stdout.startswith("tunelab ")


def test_the_resume_hint_names_only_the_flags_missing_and_never_resume_with_overwrite():
    from tunelab.cli.output import resume_hint

    def hint(**flags):
        return resume_hint("runs/x", **{"out_given": False, "resumed": False} | flags)

    assert hint(overwrite=False) == "continue with the same command plus --out runs/x --resume"
    assert hint(out_given=True, overwrite=False) == "continue with the same command plus --resume"
    assert hint(out_given=True, resumed=True, overwrite=False) == (
        "continue by running the same command again"
    )
    assert hint(out_given=True, overwrite=True) == (
        "continue with the same command without --overwrite plus --resume"
    )
