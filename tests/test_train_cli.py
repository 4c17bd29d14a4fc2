"""`tunelab train`, `tunelab methods` and `tunelab eval --adapter` end to end on the tiny model."""

import json
import re

import pytest
from typer.testing import CliRunner

from tunelab.cli.main import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def files(write_jsonl, label_rows):
    train = write_jsonl(label_rows * 2, "train.jsonl")
    test = write_jsonl(label_rows[::3], "test.jsonl")
    return train, test


def test_train_then_eval_adapter_applies_the_task_prefix(
    files, tiny_model_dir, tmp_path, write_jsonl
):
    train, test = files
    out = tmp_path / "run"
    common = ["--data", train, "--input", "text", "--output", "label"]
    result = run(
        "train", *common, "--test", test, "--model", tiny_model_dir, "--method", "prompt-tuning",
        "-o", "virtual_tokens=4", "--epochs", "1", "--batch-size", "4",
        "--task-prefix", "[SUPPORT]", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "final evaluation (prompt-tuning)" in result.output
    meta = json.loads((out / "adapter" / "tunelab.json").read_text())
    assert meta["task_prefix"] == "[SUPPORT]" and meta["labels"] == ["billing", "login", "shipping"]
    trained = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert all(row["input"].startswith("[SUPPORT] ") for row in trained)

    evaluated = tmp_path / "eval"
    result = run("eval", *common, "--test", test, "--adapter", out, "--out", evaluated, "--show", 0)
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in (evaluated / "predictions.jsonl").read_text().splitlines()]
    assert [r["input"] for r in rows] == [r["input"] for r in trained]
    assert [r["prediction"] for r in rows] == [r["prediction"] for r in trained]  # same model
    assert "Classify" not in rows[0]["prompt"]  # the training prompt, not the zero-shot one
    # these test rows are training rows: the score is not a held-out one, and eval says so
    said = " ".join(result.output.split())
    assert f"4 of the 4 test rows ({test} lines 1, 2, 3, 4) have inputs {out} learned" in said
    # a trained run keeps its labels: --test alone is enough, with the same answers
    alone = run("eval", "--test", test, "--input", "text", "--output", "label", "--adapter", out,
                "--out", tmp_path / "alone", "--show", 0)  # fmt: skip
    assert alone.exit_code == 0, alone.output
    again = [
        json.loads(x) for x in (tmp_path / "alone" / "predictions.jsonl").read_text().splitlines()
    ]
    assert [r["prediction"] for r in again] == [r["prediction"] for r in rows]
    refused = run("eval", "--test", test, "--input", "text", "--output", "label")
    assert refused.exit_code == 1 and "--data is needed" in refused.output
    fresh = write_jsonl([{"text": "never seen before", "label": "login"}], "fresh.jsonl")
    result = run(
        "eval", *common, "--test", fresh, "--adapter", out, "--out", evaluated, "--show", 0
    )
    assert result.exit_code == 0 and "learned from" not in result.output, result.output

    again = run("train", *common, "--model", tiny_model_dir, "--method", "lora", "--out", out)
    assert again.exit_code == 1 and "already holds a finished run" in again.output


def test_eval_counts_only_the_rows_a_run_learned_from(
    write_jsonl, label_rows, tiny_model_dir, tmp_path
):
    """Dev rows carved from the training file were not learned: evaluating the whole file
    warns about the training rows alone."""
    data = write_jsonl(label_rows, "all.jsonl")
    out = tmp_path / "run"
    common = ["--data", data, "--input", "text", "--output", "label"]
    trained = run("train", *common, "--model", tiny_model_dir, "--method", "lora",
                  "--epochs", 1, "--batch-size", 4, "--dev-size", 0.5, "--out", out)  # fmt: skip
    assert trained.exit_code == 0, trained.output
    result = run("eval", *common, "--test", data, "--adapter", out, "--out", tmp_path / "e",
                 "--show", 0)  # fmt: skip
    said = " ".join(result.output.split())
    count = int(re.search(r"(\d+) of the 12 test rows \(\S+ lines [^)]*\) have", said).group(1))
    assert 6 <= count <= 7, said  # 6 rows trained on (7: a dev row shares a trained input)
    limited = run("eval", *common, "--test", data, "--adapter", out, "--out", tmp_path / "e",
                  "--show", 0, "--limit", 3)  # fmt: skip
    assert "of the 3 test rows" in " ".join(limited.output.split())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "lora", "--lr", "-0.1"], "--learning-rate"),
        (["--method", "prompt-tuning", "-o", "virtual_tokens=0"], "virtual_tokens"),
        (["--method", "adapters"], "unknown method 'adapters'"),
        (["--method", "lora", "-o", "target_modules=qq_proj"], "qq_proj not in the model"),
        (["--method", "lora", "--resume"], "no train run to resume here"),
        (["--method", "lora", "--shot-order", "shuffled"], "this prompt has none: add shots"),
        (["--method", "lora", "--shot-order", "nearest"], "--shot-order: Input should be"),
    ],
)
def test_bad_hyperparameters_give_one_line_errors(files, tiny_model_dir, tmp_path, args, message):
    train, _ = files
    result = run(
        "train", "--data", train, "--input", "text", "--output", "label",
        "--model", tiny_model_dir, "--out", tmp_path / "r", *args,
    )  # fmt: skip
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "r" / "adapter").exists()


def test_methods_lists_every_method_with_defaults():
    result = run("methods")
    assert result.exit_code == 0
    for name in ("full", "lora", "prompt-tuning", "prefix-tuning", "p-tuning"):
        assert name in result.output
    assert "virtual_tokens=20" in result.output
