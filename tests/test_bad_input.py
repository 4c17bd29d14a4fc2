"""Input as users really have it: each case ends in one line naming the problem, or in a
warning where the run can go on, and never in a traceback or a silently wrong number."""

import json
import math

import pytest
from typer.testing import CliRunner

from tunelab.cli.main import app
from tunelab.data import Example, load_dataset
from tunelab.data.stats import label_warnings
from tunelab.errors import TuneLabError
from tunelab.paths import write_json_atomic

cli = CliRunner()


def run(*args):
    return cli.invoke(app, [str(a) for a in args])


def one_error(result) -> str:
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and len(errors) == 1, result.output
    assert "Traceback" not in result.output
    return errors[0]


# -- files ---------------------------------------------------------------------------------


def test_jsonl_records_end_at_newline_only(tmp_path):
    odd = "line\u2028separator, para\u2029graph, next\u0085line, form\x0cfeed, tab\x0b"
    path = tmp_path / "data.jsonl"
    path.write_text(
        json.dumps({"input": odd, "output": "a"}, ensure_ascii=False) + "\r\n"
        + json.dumps({"input": "two", "output": "b"}) + "\n",
        encoding="utf-8",
    )  # fmt: skip
    examples = load_dataset(path).examples
    assert [e.input for e in examples] == [odd, "two"] and [e.line for e in examples] == [1, 2]


def test_csv_keeps_quoted_breaks_and_reports_true_lines(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('text,label\n"two\nlines\x0cand\u2028more",a\nplain,b\n,c\n', encoding="utf-8")
    with pytest.raises(TuneLabError, match=r"data.csv:5: field 'text': empty text"):
        load_dataset(path)
    path.write_text('text,label\n"two\nlines\x0cand\u2028more",a\nplain,b\n', encoding="utf-8")
    examples = load_dataset(path).examples
    assert examples[0].input == "two\nlines\x0cand\u2028more"
    assert [e.line for e in examples] == [2, 4]


def test_csv_field_larger_than_pythons_default_limit_loads(tmp_path):
    path = tmp_path / "big.csv"
    path.write_text("text,label\n" + "w " * 100_000 + ",a\n", encoding="utf-8")  # 200 KB
    assert len(load_dataset(path).examples[0].input) == 200_000


def test_duplicate_csv_header_is_refused(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("text,label,text\nhello,a,shadow\n", encoding="utf-8")
    with pytest.raises(TuneLabError, match=r"dup.csv:1: column 'text' appears more than once"):
        load_dataset(path)


@pytest.mark.parametrize(
    ("suffix", "body"),
    [(".csv", "text,label\ncafé,a\n"), (".jsonl", '{"text": "café", "label": "a"}\n')],
)
def test_a_byte_order_mark_is_not_part_of_the_first_field(tmp_path, suffix, body):
    path = tmp_path / f"excel{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))  # Excel's "CSV UTF-8"
    dataset = load_dataset(path)
    assert dataset.input_field == "text" and dataset.examples[0].input == "café"


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_non_utf8_bytes_name_the_line_and_the_fix(tmp_path, suffix):
    path = tmp_path / f"latin{suffix}"
    first = b"text,label\nok,a\n" if suffix == ".csv" else b'{"input": "ok", "output": "a"}\n'
    bad = b"caf\xe9,b\n" if suffix == ".csv" else b'{"input": "caf\xe9", "output": "b"}\n'
    path.write_bytes(first + bad)
    line = 3 if suffix == ".csv" else 2
    train = ["train", "--data", path, "--method", "lora", "--out", tmp_path / "r"]
    for command in (["data", "inspect", path, "--no-tokens"], ["eval", "--data", path], train):
        message = one_error(run(*command))
        assert f"latin{suffix}:{line}: not valid UTF-8 (byte 0xe9" in message
        assert "iconv" in message


# -- labels ----------------------------------------------------------------------------------


def test_label_warnings_count_unknown_test_labels_and_single_labels():
    test = [Example("a", "x", 1), Example("b", "new", 2), Example("c", "new", 3)]
    warnings = label_warnings(["x", "y"], test)
    assert len(warnings) == 1 and warnings[0].startswith("2 test rows (1 labels: 'new')")
    assert "single label" in label_warnings(["x"], test[:1])[0]
    assert label_warnings(None, test) == []


def test_eval_warns_about_test_labels_absent_from_training(write_jsonl, tiny_model_dir):
    train = write_jsonl([{"text": f"t{i}", "label": "ab"[i % 2]} for i in range(8)], "tr.jsonl")
    test = write_jsonl([{"text": "q", "label": "c"}, {"text": "r", "label": "a"}], "te.jsonl")
    result = run("eval", "--data", train, "--test", test, "--model", tiny_model_dir,
                 "--labels", "a,b", "--show", 0, "--out", tiny_model_dir.parent / "ev")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "warning: 1 test rows (1 labels: 'c')" in result.output


# -- training settings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "option"),
    [(["--epochs", "inf"], "--epochs"), (["--lr", "inf"], "--learning-rate"),
     (["--lr", "nan"], "--learning-rate"), (["--weight-decay", "nan"], "--weight-decay")],
)  # fmt: skip
def test_non_finite_settings_are_refused(args, option, write_jsonl, label_rows, tmp_path):
    data = write_jsonl(label_rows, "train.jsonl")
    message = one_error(run("train", "--data", data, "--method", "lora",
                            "--out", tmp_path / "r", *args))  # fmt: skip
    assert option in message and "finite" in message
    assert not (tmp_path / "r").exists()


def test_huge_virtual_token_counts_are_refused_before_allocating(files_and_model, tmp_path):
    train, model = files_and_model
    message = one_error(run("train", "--data", train, "--model", model, "--method",
                            "prompt-tuning", "-o", "virtual_tokens=100000000",
                            "--out", tmp_path / "r"))  # fmt: skip
    assert "virtual_tokens=100000000" in message and "context of 1024 tokens" in message
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("method", "options", "limit"),
    [("lora", ["r=33"], "at most 32"),
     ("p-tuning", ["encoder_hidden=513"], "at most 512"),
     ("prefix-tuning", ["projection=true", "encoder_hidden=513"], "at most 512")],
)  # fmt: skip
def test_sizes_beyond_what_the_model_can_use_are_refused(
    method, options, limit, files_and_model, tmp_path
):
    """The tiny model's hidden size is 32: a LoRA rank above it adds no capacity, and a prompt
    encoder wider than 16x it outweighs the model (a typo would allocate hundreds of GB)."""
    train, model = files_and_model
    pairs = [x for option in options for x in ("-o", option)]
    message = one_error(run("train", "--data", train, "--model", model, "--method", method,
                            *pairs, "--out", tmp_path / "r"))  # fmt: skip
    assert f"--option {options[-1]}" in message and limit in message
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("value", [math.inf, "inf", math.nan])  # -o alpha=.inf / inf / .nan
def test_non_finite_method_options_are_refused(value):
    from tunelab.training.methods import get_method

    with pytest.raises(TuneLabError, match=r"--option alpha \(lora\): .*finite"):
        get_method("lora").parse_options({"alpha": value})


@pytest.fixture
def files_and_model(write_jsonl, label_rows, tiny_model_dir):
    return write_jsonl(label_rows * 2, "train.jsonl"), tiny_model_dir


def test_a_diverging_run_fails_instead_of_reporting_success(files_and_model, tmp_path):
    train, model = files_and_model
    result = run("train", "--data", train, "--input", "text", "--output", "label",
                 "--model", model, "--method", "full", "--lr", "1e12", "--epochs", 2,
                 "--batch-size", 4, "--out", tmp_path / "r")  # fmt: skip
    message = one_error(result)
    assert "training diverged at step" in message and "lower --lr" in message
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_metrics_files_are_strict_json(tmp_path):
    write_json_atomic(tmp_path / "m.json", {"loss": math.nan, "x": [math.inf, 1.0]})
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"loss": None, "x": [None, 1.0]}


def test_predictions_and_training_logs_are_strict_json(tmp_path):
    from types import SimpleNamespace

    from tunelab.evaluation.runner import write_predictions
    from tunelab.training.trainer import MetricsFile

    write_predictions(tmp_path / "p.jsonl", [{"scores": {"bleu": math.nan}, "x": "\u2028"}])
    state = SimpleNamespace(is_world_process_zero=True, global_step=3, epoch=0.5)
    MetricsFile(tmp_path / "m.jsonl").on_log(None, state, None, logs={"loss": math.inf})
    for name in ("p.jsonl", "m.jsonl"):
        text = (tmp_path / name).read_text(encoding="utf-8")
        assert "NaN" not in text and "Infinity" not in text, text
    assert json.loads((tmp_path / "p.jsonl").read_text(encoding="utf-8")) == {
        "scores": {"bleu": None}, "x": "\u2028"}  # fmt: skip
    assert json.loads((tmp_path / "m.jsonl").read_text())["loss"] is None


# -- inputs longer than the context ------------------------------------------------------------


def test_an_input_longer_than_the_context_is_cut_with_a_warning(tiny_model, tiny_tokenizer):
    from tunelab.evaluation.runner import EvalSettings, evaluate, evaluate_sharded
    from tunelab.generation import GenerationConfig
    from tunelab.prompting import PromptStrategy

    huge = "word " * 200_000  # 1 MB on one line; the tiny model's context is 1024 tokens
    test = [Example(huge, "yes", 7), Example("short", "no", 8)]
    settings = EvalSettings(generation=GenerationConfig(max_new_tokens=4), resamples=10)
    for mode in ("score", "generate"):
        result = evaluate(tiny_model, tiny_tokenizer, PromptStrategy(), test,
                          labels=["no", "yes"], settings=settings.__class__(
                              **{**settings.__dict__, "mode": mode}))  # fmt: skip
        assert result.extra["inputs_cut"] == [7]
        prompt = result.predictions[0]["prompt"]
        assert len(tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"]) <= 1024
        assert result.predictions[1]["input"] == "short"
    sharded = evaluate_sharded(tiny_model, tiny_tokenizer, PromptStrategy(), test,
                               labels=["no", "yes"], settings=settings)  # fmt: skip
    assert sharded.extra["inputs_cut"] == [7]  # what train and compare report


def test_leaderboard_reads_null_numbers_as_missing():
    """Strict JSON writes NaN/inf as null; the leaderboard must read null as 'not measured',
    not crash on it; a missing per-example score is recomputed from the row's text."""
    from tunelab.compare.leaderboard import markdown, recommend, rows_of

    nulls = dict.fromkeys(("adapt_seconds", "latency_ms_per_example", "prompt_tokens",
                           "peak_memory_mb", "examples_per_second"))  # fmt: skip
    results = [
        {"name": "good", "kind": "prompt", "metrics": {"rouge_l": {"value": 0.8}}},
        {
            "name": "null",
            "kind": "prompt",
            **nulls,
            "metrics": {"rouge_l": {"value": None, "low": None, "high": None}},
        },  # fmt: skip
    ]
    rows = [{"line": i, "reference": "r", "prediction": "p", "scores": {"rouge_l": 0.8}}
            for i in range(3)]  # fmt: skip
    predictions = {"good": rows, "null": [{**r, "scores": {"rouge_l": None}} for r in rows]}
    board = rows_of(results, "rouge_l", 1000, predictions)
    assert [r.name for r in board] == ["good", "null"] and math.isnan(board[1].value)
    assert board[1].adapt_seconds == 0.0 and board[1].peak_memory_mb == 0.0
    assert board[1].diff.value == pytest.approx(-0.8)  # recomputed from the rows' text
    line = next(x for x in markdown(board, "rouge_l", recommend(board)).splitlines() if "null" in x)
    assert "None" not in line


def test_compare_warns_about_inputs_cut_to_the_context(tmp_path, write_jsonl, label_rows,
                                                       tiny_model_dir):  # fmt: skip
    write_jsonl(label_rows, "train.jsonl")
    write_jsonl([{"text": "word " * 3000, "label": "login"}, *label_rows[:2]], "test.jsonl")
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(
        "name: long\n"
        "data: {train: train.jsonl, test: test.jsonl, input: text, output: label}\n"
        f"model: {tiny_model_dir}\n"
        "strategies:\n  - {name: base, prompt: {}}\n",
        encoding="utf-8",
    )
    result = run("compare", experiment, "--out", tmp_path / "out", "--no-estimate")
    assert result.exit_code == 0, result.output
    assert "warning: base: 1 inputs were longer than the model's context" in result.output
