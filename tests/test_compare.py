"""`tunelab compare`: experiment validation, resume after an interrupted strategy, stale
results, the leaderboard arithmetic, the checklist metric and the HTML report."""

import json
import math
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunelab import runs
from tunelab.cli.main import app
from tunelab.compare.experiment import load_experiment
from tunelab.compare.leaderboard import markdown, recommend, rows_of
from tunelab.compare.report import write_report
from tunelab.compare.runner import ExperimentRunner
from tunelab.errors import TuneLabError
from tunelab.evaluation import metrics as m

runner = CliRunner()
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tech_support" / "experiment.yaml"


def write_experiment(tmp_path, text: str) -> Path:
    path = tmp_path / "experiment.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_validation_names_file_line_and_field_of_each_mistake(tmp_path):
    path = write_experiment(
        tmp_path,
        """name: demo
data:
  train: train.jsonl
  colour: blue
strategies:
  - name: base
    prompt: {shots: -2}
  - name: lora
    train:
      method: lora
      learning_rate: -1
  - name: soft
    train: {method: prompt-tuning, options: {virtual_tokens: 0}}
  - name: what
""",
    )
    with pytest.raises(TuneLabError) as caught:
        load_experiment(path)
    lines = str(caught.value).splitlines()
    assert f"{path}:4: data.colour: unknown field" in lines
    assert (
        f"{path}:7: strategies[0](base).prompt.shots: Input should be greater than or equal to 0"
        in lines
    )
    assert any(
        line.startswith(f"{path}:11: strategies[1](lora).train.learning_rate:") for line in lines
    )
    assert any(
        f"{path}:13: strategies[2](soft).train: options.virtual_tokens" in line for line in lines
    )
    assert (
        f"{path}:14: strategies[3](what): give prompt, prompt_file, prompt_from, train or optimize"
        in lines
    )


def test_prefer_names_the_cost_that_decides(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"input": "a", "output": "b"}\n', encoding="utf-8")
    text = (
        "name: demo\ndata: {train: t.jsonl}\nprefer: PREF\nstrategies:\n  - {name: a, prompt: {}}\n"
    )
    assert load_experiment(write_experiment(tmp_path, text.replace("PREF", "serving"))).prefer == (
        "serving"
    )
    with pytest.raises(TuneLabError) as caught:
        load_experiment(write_experiment(tmp_path, text.replace("PREF", "latency")))
    assert f"{tmp_path / 'experiment.yaml'}:3: prefer:" in str(caught.value)


def test_validation_of_names_and_prompt_sources(tmp_path):
    path = write_experiment(
        tmp_path,
        """name: demo
data: {train: train.jsonl}
strategies:
  - {name: lora, train: {method: lora}, prompt_from: refined}
  - {name: refined, optimize: {budget: 3}}
  - {name: refined, prompt: {}}
""",
    )
    with pytest.raises(TuneLabError, match="strategy names must be unique; repeated: refined"):
        load_experiment(path)
    path.write_text(path.read_text().replace("  - {name: refined, prompt: {}}\n", ""))
    with pytest.raises(
        TuneLabError, match="prompt_from 'refined' must name a strategy listed before"
    ):
        load_experiment(path)
    path.write_text("name: [unclosed\n")
    with pytest.raises(TuneLabError, match=r"experiment.yaml:\d+:\d+: not valid YAML"):
        load_experiment(path)


def test_bundled_example_is_valid_and_paths_resolve_next_to_it():
    experiment = load_experiment(EXAMPLE)
    assert experiment.data.train == EXAMPLE.parent / "train.jsonl"
    assert [s.kind for s in experiment.strategies].count("train") == 4  # + lora-retrieved
    lines = (EXAMPLE.parent / "train.jsonl").read_text().splitlines()
    test_lines = (EXAMPLE.parent / "test.jsonl").read_text().splitlines()
    assert len(lines) == 10 and len(test_lines) == 5
    asked = {json.loads(x)["question"] for x in lines}
    assert not asked & {json.loads(x)["question"] for x in test_lines}


def test_a_broken_prompt_file_is_refused_when_the_experiment_loads(tmp_path):
    (tmp_path / "bad.yaml").write_text("shots: many\n", encoding="utf-8")
    (tmp_path / "t.jsonl").write_text('{"input": "a", "output": "b"}\n', encoding="utf-8")
    text = (
        "name: x\ndata: {train: t.jsonl}\nstrategies:\n  - {name: base, prompt: {}}\n"
        "  - {name: mine, prompt_file: PROMPT}\n"
    )
    for prompt, why in [("bad.yaml", "field shots"), ("gone.yaml", "no such prompt strategy")]:
        path = write_experiment(tmp_path, text.replace("PROMPT", prompt))
        with pytest.raises(TuneLabError) as err:
            load_experiment(path)
        assert str(err.value).startswith(f"{path}:5: strategies[1](mine).prompt_file: ")
        assert why in str(err.value)


@pytest.mark.parametrize(
    ("field", "line", "value", "why"),
    [("data.train", 3, "gone.jsonl", "no such data file"),
     ("data.shot_pool", 6, ".", "is a folder"),
     ("data.test", 4, "gone.jsonl", "no such data file"),
     ("data.dev", 5, "gone.jsonl", "no such data file"),
     ("eval.format_schema", 8, "gone.json", "cannot read JSON schema"),
     ("eval.format_schema", 8, "t.jsonl", "cannot read JSON schema")],  # not JSON
)  # fmt: skip
def test_a_missing_data_file_is_named_with_its_line_when_the_experiment_loads(
    tmp_path, field, line, value, why
):
    (tmp_path / "t.jsonl").write_text('{"input": "a", "output": "b"}\n' * 2, encoding="utf-8")
    (tmp_path / "s.json").write_text('{"type": "object"}', encoding="utf-8")
    files = {"train": "t.jsonl", "test": "t.jsonl", "dev": "t.jsonl", "shot_pool": "t.jsonl",
             "format_schema": "s.json"} | {field.split(".")[1]: value}  # fmt: skip
    text = (
        "name: x\ndata:\n  train: {train}\n  test: {test}\n  dev: {dev}\n"
        "  shot_pool: {shot_pool}\neval:\n  format_schema: {format_schema}\n"
        "strategies:\n  - {{name: base, prompt: {{shots: 1}}}}\n"
    ).format(**files)
    path = write_experiment(tmp_path, text)
    with pytest.raises(TuneLabError) as err:
        load_experiment(path)
    assert str(err.value).startswith(f"{path}:{line}: {field}: {tmp_path / value}")
    assert why in str(err.value)
    assert "\n" not in str(err.value)


def test_an_unused_shot_order_is_refused_and_a_default_one_changes_no_result(tmp_path):
    from tunelab.compare.runner import check_strategy_prompt, load_experiment_data
    from tunelab.prompting import PromptStrategy

    (tmp_path / "t.jsonl").write_text(
        "".join(f'{{"input": "q{i}", "output": "{"ab"[i % 2]}"}}\n' for i in range(10)),
        encoding="utf-8",
    )
    keys = []
    for order in ("", ", shot_order: nearest_last", ", shot_order: shuffled"):
        path = write_experiment(tmp_path, (
            "name: x\ndata: {train: t.jsonl}\nstrategies:\n"
            f"  - {{name: lora, train: {{method: lora{order}}}, prompt: {{shots: 2}}}}\n"
        ))  # fmt: skip
        experiment = load_experiment(path)
        runner = ExperimentRunner(experiment, load_experiment_data(experiment), tmp_path / "o")
        spec = experiment.strategies[0]
        keys.append(runner.spec_key(spec))
    assert keys[0] == keys[1] != keys[2]  # the default written out keeps the result current
    with pytest.raises(TuneLabError, match=r"^lora: shot_order shuffled orders .* has none"):
        check_strategy_prompt(spec, runner.train_settings(spec), PromptStrategy(shots=0))
    check_strategy_prompt(spec, runner.train_settings(spec), PromptStrategy(shots=2))

    head = "name: x\ndata: {train: t.jsonl}\nstrategies:\n"
    for source, refused in [
        ("", True),  # the default training prompt: no shots
        ("prompt: {shots: 0}", True),
        ("prompt_from: few", False),
        ("prompt_from: zero", True),
        ("prompt_from: refined", False),  # a prompt search's result: known when it trains
    ]:
        text = head + (
            "  - {name: zero, prompt: {}}\n  - {name: few, prompt: {shots: 2}}\n"
            "  - {name: refined, optimize: {budget: 2}}\n"
            f"  - {{name: lora, train: {{method: lora, shot_order: shuffled}}, {source}}}\n"
        )
        path = write_experiment(tmp_path, text)
        if not refused:
            load_experiment(path)
            continue
        with pytest.raises(TuneLabError, match=r"^\S+:7: strategies\[3\]\(lora\)\.train\."
                           r"shot_order: shuffled orders .* has none"):  # fmt: skip
            load_experiment(path)


def test_a_shot_pool_resolves_beside_the_file_and_never_holds_a_held_out_input(tmp_path):
    from tunelab.compare.runner import load_experiment_data

    def rows(name, pairs):
        lines = "".join(json.dumps({"input": i, "output": o}) + "\n" for i, o in pairs)
        (tmp_path / name).write_text(lines, encoding="utf-8")

    rows("train.jsonl", [("reset my password", "login"), ("refund please", "billing")])
    rows("test.jsonl", [("charged twice", "billing")])
    rows("more.jsonl", [("charged twice", "billing"), ("locked out", "login"),
                        ("refund please", "billing")])  # fmt: skip
    path = write_experiment(tmp_path, (
        "name: x\ndata: {train: train.jsonl, test: test.jsonl, shot_pool: more.jsonl}\n"
        "strategies:\n  - {name: few, prompt: {shots: 1, selector: similar}}\n"
    ))  # fmt: skip
    experiment = load_experiment(path)
    assert experiment.data.shot_pool == tmp_path / "more.jsonl"
    data = load_experiment_data(experiment)
    pool = [e.input for e in data.shot_pool()]
    assert pool == ["reset my password", "refund please", "locked out"]


def test_adding_a_shot_pool_reruns_only_the_strategies_it_can_change(tmp_path):
    from tunelab.compare.runner import ExperimentRunner, load_experiment_data

    lines = "".join(
        json.dumps({"input": f"question {i}", "output": "yes" if i % 2 else "no"}) + "\n"
        for i in range(12)
    )
    for name in ("train.jsonl", "test.jsonl", "more.jsonl"):
        (tmp_path / name).write_text(lines.replace("question", name[:4]), encoding="utf-8")
    strategies = (
        "strategies:\n  - {name: zero, prompt: {}}\n"
        "  - {name: few, prompt: {shots: 2, selector: similar}}\n"
        "  - {name: opt, optimize: {budget: 2}}\n"
        "  - {name: opt0, optimize: {budget: 2, max_shots: 0}}\n"
        "  - {name: lora, train: {method: lora}}\n"
        "  - {name: lora-shots, train: {method: lora}, prompt: {shots: 2}}\n"
        "  - {name: lora-json, run_from: lora, constrain: json}\n"
    )
    (tmp_path / "held-out.jsonl").write_text(lines.replace("question", "test"), encoding="utf-8")
    keys = {}
    for pool in ("", ", shot_pool: more.jsonl", ", shot_pool: held-out.jsonl"):
        path = write_experiment(
            tmp_path, f"name: x\ndata: {{train: train.jsonl, test: test.jsonl{pool}}}\n{strategies}"
        )
        experiment = load_experiment(path)
        runner = ExperimentRunner(experiment, load_experiment_data(experiment), tmp_path / "out")
        keys[pool] = {s.name: runner.spec_key(s) for s in experiment.strategies}
    changed = {name for name in keys[""] if keys[""][name] != keys[", shot_pool: more.jsonl"][name]}
    assert changed == {"few", "opt", "opt0", "lora-shots"}  # a search reads the pool anyway
    assert keys[""] == keys[", shot_pool: held-out.jsonl"]  # every row left out: no change


def result(name, kind, value, low, high, trainable=0, seconds=0.0, latency=10.0, method=None,
           prompt_tokens=50.0):  # fmt: skip
    record = {
        "name": name,
        "kind": kind,
        "metrics": {"rouge_l": {"value": value, "low": low, "high": high}},
        "trainable_parameters": trainable,
        "adapt_seconds": seconds,
        "latency_ms_per_example": latency,
        "prompt_tokens": prompt_tokens,
        "peak_memory_mb": 100.0,
        "size_bytes": 2048,
    }
    if method:
        record["training"] = {"method": method}
        record["total_parameters"] = 1000 + trainable
    return record


def scored(values: list[float]) -> list[dict]:
    """Prediction rows with stored per-example ROUGE-L, on the same test lines."""
    return [
        {"line": i + 1, "reference": "r", "prediction": "p", "scores": {"rouge_l": v}}
        for i, v in enumerate(values)
    ]


def board(specs: dict[str, tuple], prefer=None):
    """specs: name -> (per-example scores, result() keyword arguments)."""
    results, predictions = [], {}
    for name, (values, options) in specs.items():
        mean = sum(values) / len(values)
        kind = "train" if options.get("method") else "prompt"
        results.append(result(name, kind, mean, mean - 0.05, mean + 0.05, **options))
        predictions[name] = scored(values)
    rows = rows_of(results, "rouge_l", 1000, predictions)
    return rows, recommend(rows, prefer)


def test_a_clearly_worse_cheap_strategy_is_not_recommended():
    rng = random.Random(0)
    lora = [rng.uniform(0.6, 1.0) for _ in range(300)]
    prompt = [x - 0.2 + rng.uniform(-0.05, 0.05) for x in lora]  # cheaper, clearly worse
    rows, rec = board({
        "lora": (lora, {"trainable": 100, "seconds": 60, "method": "lora"}),
        "prompt": (prompt, {}),
    })  # fmt: skip
    assert rec.best.name == "lora"
    worse = next(r for r in rows if r.name == "prompt")
    assert worse.diff.high < 0 and worse.diff.value == pytest.approx(-0.2, abs=0.01)
    assert [r.name for r in rec.equivalent] == ["lora"]
    assert rec.pick.name == "lora" and "lora is the pick" in rec.text("rouge_l")
    assert rec.runner_up is None  # the data tell them apart: no "cannot tell" sentence


def test_a_pick_the_data_cannot_separate_from_the_runner_up_is_called_tentative():
    rng = random.Random(3)
    lora = [rng.uniform(0.3, 0.9) for _ in range(100)]
    prompt = [x - 0.02 + rng.uniform(-0.4, 0.4) for x in lora]  # a bit worse, very noisy
    rows, rec = board({
        "lora": (lora, {"trainable": 100, "seconds": 60, "method": "lora"}),
        "prompt": (prompt, {}),
    })  # fmt: skip
    assert [r.name for r in rec.equivalent] == ["lora"] and rec.runner_up.name == "prompt"
    text = " ".join(rec.text("rouge_l").split())
    assert "This test set cannot tell the best from prompt" in text
    assert "lora is the pick, a tentative one: it is not shown better than prompt either" in text


def test_an_equivalent_cheaper_strategy_is_recommended_and_both_costs_are_named():
    rng = random.Random(1)
    lora = [rng.uniform(0.3, 0.9) for _ in range(400)]
    prompt = [x + rng.choice([-0.01, 0.01]) for x in lora]  # same quality, paired noise
    rows, rec = board({
        "lora": (lora, {"trainable": 100, "seconds": 60, "method": "lora", "latency": 20,
                        "prompt_tokens": 40}),
        "prompt": (prompt, {"latency": 120, "prompt_tokens": 900}),  # 6x the time per answer
    })  # fmt: skip
    assert {r.name for r in rec.equivalent} == {"lora", "prompt"}
    assert rec.cheapest_to_adapt.name == "prompt" and rec.cheapest_to_serve.name == "lora"
    text = rec.text("rouge_l")
    assert "cheapest to adapt is prompt" in text and "cheapest to serve is lora" in text
    _, serving = board({"lora": (lora, {"trainable": 100, "seconds": 60, "method": "lora",
                                        "latency": 20}),
                        "prompt": (prompt, {"latency": 120})}, prefer="serving")  # fmt: skip
    assert serving.pick.name == "lora" and "Recommended: lora" in serving.text("rouge_l")
    # the preference decides, and the reading it set aside is still shown
    assert "Cheapest to adapt would be prompt" in serving.text("rouge_l")
    table = markdown(rows, "rouge_l", rec)
    assert "| best |" in table and "| 120 |" in table and "| 900 |" in table


def test_too_small_a_test_set_is_said_with_the_rows_needed():
    a = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0]
    b = [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0]  # 0.2 lower, on 10 rows
    rows, rec = board({"a": (a, {"trainable": 10, "method": "lora"}), "b": (b, {})})
    diff = next(r for r in rows if r.name == "b").diff
    assert diff.low <= 0 <= diff.high and diff.value == pytest.approx(-0.2)
    assert [r.name for r in rec.equivalent] == ["a"]  # 0.2 below is not "as good"
    text = rec.text("rouge_l")
    assert "cannot tell the best from b" in text
    needed = m.rows_to_separate(diff.se, 10, diff.value)
    assert 10 < needed < 1000 and f"about {needed:,.0f} paired test rows" in text


def test_an_unmeasured_latency_is_shown_as_such_and_is_not_the_cheapest_to_serve():
    values = [0.5, 0.7, 0.9, 0.6] * 5
    rows, rec = board(
        {"unmeasured": (values, {"latency": None}), "timed": (values, {"latency": 30})}
    )
    assert {r.name for r in rec.equivalent} == {"unmeasured", "timed"}
    assert rec.cheapest_to_serve.name == "timed"
    unmeasured = next(line for line in markdown(rows, "rouge_l", rec).splitlines()
                      if "| unmeasured |" in line)  # fmt: skip
    assert "| - |" in unmeasured and "nan" not in unmeasured


def test_recommendation_when_nothing_cheaper_is_close_and_missing_metric():
    results = [
        result("lora", "train", 0.8, 0.75, 0.85, trainable=10, seconds=5, method="lora"),
        result("base", "prompt", 0.3, 0.2, 0.4),
        {**result("broken", "prompt", 0, 0, 0), "metrics": {}},
    ]
    rows = rows_of(results, "rouge_l", 1000)
    assert rows[-1].name == "broken" and math.isnan(rows[-1].value)
    rec = recommend(rows)
    assert rec.best.name == rec.pick.name == "lora"
    assert "No paired comparison for base:" in rec.text("rouge_l")


def test_checklist_coverage_is_the_share_of_phrases_found():
    answers = ["Restart the Hub, then open the Lumo app.", "No idea.", "anything"]
    lists = [["restart the hub", "Lumo app", "refresh"], ["reset"], []]
    assert m.checklist_coverage(answers, lists) == [pytest.approx(2 / 3), 0.0, 1.0]


def test_report_is_self_contained_and_escapes_data(tmp_path):
    folder = tmp_path / "base"
    folder.mkdir()
    rows_file = [{"input": "<script>alert(1)</script>", "reference": "a", "prediction": "b",
                  "correct": 0.0}]  # fmt: skip
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows_file))
    results = [result("base", "prompt", 0.2, 0.1, 0.3)]
    rows = rows_of(results, "rouge_l", 1000)
    path = write_report(
        tmp_path / "report.html", "t", "rouge_l", rows, recommend(rows),
        {"base": results[0]}, {"base": folder}, {"model": "tiny", "test": 1},
    )  # fmt: skip
    page = path.read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert page.count("data:image/png;base64,") >= 3
    assert "http://" not in page and "https://" not in page


@pytest.fixture
def tiny_experiment(tmp_path, write_jsonl, label_rows, tiny_model_dir):
    write_jsonl(label_rows * 2, "train.jsonl")
    write_jsonl(label_rows[::3], "test.jsonl")
    return write_experiment(
        tmp_path,
        f"""name: tiny
data: {{train: train.jsonl, test: test.jsonl, input: text, output: label}}
model: {tiny_model_dir}
task_prefix: "[T]"
metrics: [accuracy, macro_f1]
strategies:
  - {{name: base, prompt: {{}}}}
  - {{name: refined, optimize: {{budget: 2, operators: [format, persona], dev_rows: 4}}}}
  - {{name: lora, train: {{method: lora, epochs: 1, batch_size: 4}}}}
  - {{name: lora-refined, train: {{method: lora, epochs: 1, batch_size: 4}}, prompt_from: refined}}
""",
    )


def run_compare(*args):
    return runner.invoke(app, ["compare", *[str(a) for a in args]])


def test_compare_resumes_after_an_interrupted_strategy(tiny_experiment, tmp_path, monkeypatch):
    out = tmp_path / "out"
    original = ExperimentRunner._train
    calls = []

    def interrupted(self, spec, folder):
        calls.append(spec.name)
        raise KeyboardInterrupt

    monkeypatch.setattr(ExperimentRunner, "_train", interrupted)
    first = run_compare(tiny_experiment, "--out", out, "--no-estimate")
    assert first.exit_code == 130 and "run the same command again" in first.output
    assert (out / "base" / "result.json").exists() and (out / "refined" / "result.json").exists()
    assert not (out / "lora" / "result.json").exists()
    base_written = (out / "base" / "result.json").stat().st_mtime_ns

    monkeypatch.setattr(ExperimentRunner, "_train", original)
    second = run_compare(tiny_experiment, "--out", out, "--no-estimate")
    assert second.exit_code == 0, second.output
    assert (out / "base" / "result.json").stat().st_mtime_ns == base_written  # skipped
    for name in ("base", "refined", "lora", "lora-refined"):
        assert json.loads((out / name / "result.json").read_text())["name"] == name
    refined = json.loads((out / "refined" / "result.json").read_text())["prompt"]
    trained = json.loads((out / "lora-refined" / "adapter" / "tunelab.json").read_text())
    assert trained["strategy"]["system"] == refined["system"]
    assert trained["task_prefix"] == "[T]"
    board = (out / "leaderboard.md").read_text()
    assert board.count("\n| ") >= 4 + 2 and "macro_f1" in board
    paired = re.findall(r"\| [+-]\d\.\d{3} \([+-]\d\.\d{3} to [+-]\d\.\d{3}\) \|", board)
    assert "| best |" in board and len(paired) == 3  # each other strategy vs the best
    assert board.count("cpu/float32") == 4  # every strategy on the same device, shown
    for name in ("base", "refined", "lora", "lora-refined"):
        record = json.loads((out / name / "result.json").read_text())
        assert record["latency_ms_per_example"] > 0  # batch-1 model time, training included
        assert record["eval_timing"]["model"] > 0 and "retrieval" in record["eval_timing"]
        rows = [json.loads(x) for x in (out / name / "predictions.jsonl").read_text().splitlines()]
        assert all(row["scores"]["accuracy"] in (0.0, 1.0) for row in rows)
    assert (out / "report.html").read_text().count("<img") >= 3
    assert "report:" in second.output

    monkeypatch.setattr(ExperimentRunner, "_train", interrupted)
    monkeypatch.setattr(ExperimentRunner, "_prompt", interrupted)
    third = run_compare(tiny_experiment, "--out", out)
    assert third.exit_code == 0, third.output  # everything cached: nothing runs again
    assert "4 already finished" in third.output

    monkeypatch.setattr(ExperimentRunner, "_train", original)
    text = tiny_experiment.read_text().replace(
        "name: lora, train: {method: lora, epochs: 1,",
        "name: lora, train: {method: lora, epochs: 2,",
    )
    tiny_experiment.write_text(text)
    fourth = run_compare(tiny_experiment, "--out", out, "--no-estimate")
    assert fourth.exit_code == 0, fourth.output
    settings = json.loads((out / "lora" / "result.json").read_text())["training"]["settings"]
    assert settings["epochs"] == 2  # the changed strategy ran again; the others stayed cached
    assert (out / "base" / "result.json").stat().st_mtime_ns == base_written


def test_plan_measures_without_running(tiny_experiment, tmp_path):
    out = tmp_path / "planned"
    planned = run_compare(
        tiny_experiment, "--out", out, "--plan", "--only", "lora", "--only", "base"
    )
    assert planned.exit_code == 0, planned.output
    assert "data check" in planned.output and "plan (measured on this machine)" in planned.output
    assert (
        "lora: lora at " in planned.output
        and "tok/s (3 steps measured) x 6 steps" in planned.output
    )
    assert "estimated total" in planned.output
    assert not (out / "lora").exists() and not (out / "base").exists()


def test_the_plan_says_which_strategies_are_reused_and_which_run_again(tiny_experiment, tmp_path):
    out = tmp_path / "out"
    text = tiny_experiment.read_text()
    tiny_experiment.write_text(text + "  - {name: zero, prompt: {system: Be brief.}}\n")
    done = run_compare(tiny_experiment, "--out", out, "--only", "base", "--only", "zero")
    assert done.exit_code == 0, done.output
    runs.claim(out / "lora", "train")  # an interrupted training run's folder, half written
    (out / "lora" / "config.json").write_text("")
    runs.claim(out / "refined", "eval")  # the folder of a strategy that changed kind
    (out / "mine").mkdir()  # a strategy folder holding someone else's files
    (out / "mine" / "notes.txt").write_text("mine")
    more = "  - {name: zero, prompt: {system: Be terse.}}\n  - {name: mine, prompt: {}}\n"
    tiny_experiment.write_text(text + more)
    only = ["--only", "base", "--only", "zero", "--only", "lora", "--only", "refined"]
    only += ["--only", "mine"]
    planned = run_compare(tiny_experiment, "--out", out, "--plan", *only)
    said = " ".join(planned.output.split())
    assert planned.exit_code == 0, planned.output
    assert "reused, finished and current: base" in said
    assert "zero: runs again (its settings, data, prompt files or device changed since)" in said
    assert "lora: starts afresh (its earlier run had other settings or none)" in said
    assert "refined: starts afresh: its folder holds a run of another kind (eval)" in said
    assert "mine: new, beside the files already in its folder" in said
    ran = run_compare(tiny_experiment, "--out", out, "--only", "refined", "--only", "mine")
    assert ran.exit_code == 0, ran.output  # the eval folder of refined replaced by its search
    assert runs.is_run(out / "refined", "optimize") and (out / "mine" / "notes.txt").exists()


def test_the_plan_counts_the_shot_pool_and_says_when_no_strategy_uses_it(
    tiny_experiment, tmp_path, write_jsonl, label_rows
):
    write_jsonl(label_rows[::3] + [{"text": "a new row", "label": "no such label"}], "more.jsonl")
    text = tiny_experiment.read_text().replace(
        "test: test.jsonl,", "test: test.jsonl, shot_pool: more.jsonl,"
    )
    tiny_experiment.write_text(text)
    planned = run_compare(tiny_experiment, "--out", tmp_path / "a", "--plan", "--only", "base")
    said = " ".join(planned.output.split())
    assert planned.exit_code == 0, planned.output
    assert "0 more labelled rows (" in said and "with a dev or test input, 1 with a label" in said
    assert "no strategy's prompt holds shots" not in said  # refined may add shots
    tiny_experiment.write_text(text.split("  - {name: refined")[0])
    alone = run_compare(tiny_experiment, "--out", tmp_path / "b", "--plan")
    assert alone.exit_code == 0, alone.output
    assert "data.shot_pool is set, but no strategy's prompt holds shots" in " ".join(
        alone.output.split()
    )


def test_a_constraint_on_label_scoring_is_refused_before_anything_runs(tiny_experiment, tmp_path):
    text = tiny_experiment.read_text().replace(
        "{name: base, prompt: {}}", "{name: base, prompt: {}, constrain: json}"
    )
    tiny_experiment.write_text(text)
    refused = run_compare(tiny_experiment, "--out", tmp_path / "x")
    assert refused.exit_code == 1
    assert "base: constrained decoding applies to generated answers" in " ".join(
        refused.output.split()
    )
    assert not (tmp_path / "x").exists()
    tiny_experiment.write_text(
        text.replace(
            "metrics: [accuracy, macro_f1]", "metrics: [accuracy, macro_f1]\neval: {mode: generate}"
        )
    )
    planned = run_compare(tiny_experiment, "--out", tmp_path / "y", "--plan", "--only", "base")
    assert planned.exit_code == 0, planned.output


def test_unknown_metric_is_refused(tiny_experiment, tmp_path):
    tiny_experiment.write_text(
        tiny_experiment.read_text().replace("[accuracy, macro_f1]", "[rouge_l]")
    )
    refused = run_compare(tiny_experiment, "--out", tmp_path / "x", "--plan")
    assert refused.exit_code == 1
    assert "metrics: rouge_l not available for this classification task" in refused.output


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed")
def test_report_renders_in_headless_chromium(tmp_path):
    folder = tmp_path / "lora"
    folder.mkdir()
    (folder / "predictions.jsonl").write_text(
        json.dumps({"input": "q", "reference": "a", "prediction": "a", "correct": 1.0}) + "\n"
    )
    (folder / "metrics.jsonl").write_text(
        "".join(json.dumps({"loss": 2.0 / s, "step": s}) + "\n" for s in range(1, 6))
    )
    results = [result("lora", "train", 0.7, 0.6, 0.8, trainable=10, seconds=5, method="lora")]
    rows = rows_of(results, "rouge_l", 1000)
    page = write_report(
        tmp_path / "report.html", "t", "rouge_l", rows, recommend(rows),
        {"lora": results[0]}, {"lora": folder}, {"model": "tiny", "test": 1},
    )  # fmt: skip
    shot = tmp_path / "shot.png"
    subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
         "--window-size=1200,1600", page.as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    from PIL import Image

    image = Image.open(shot).convert("L")
    assert image.size == (1200, 1600)
    assert len(set(image.getdata())) > 20  # text and plots, not a blank page


def test_a_searched_training_strategy_shows_default_and_tuned_rows(
    tmp_path, write_jsonl, label_rows, tiny_model_dir
):
    pytest.importorskip("optuna")
    write_jsonl(label_rows * 2, "train.jsonl")
    write_jsonl(label_rows[::3], "test.jsonl")
    experiment = write_experiment(
        tmp_path,
        f"""name: searched
data: {{train: train.jsonl, test: test.jsonl, input: text, output: label, dev_size: 0.3}}
model: {tiny_model_dir}
strategies:
  - name: lora
    train: {{method: lora, epochs: 1, batch_size: 4, options: {{r: 4}}}}
    search: {{trials: 2, space: {{learning_rate: {{choices: [0.002, 0.02]}}}}}}
  - name: lora-shots
    train: {{method: lora, epochs: 1, batch_size: 4, options: {{r: 4}}}}
    prompt: {{instruction: "", shots: 2, selector: similar}}
""",
    )
    out = tmp_path / "out"
    result = run_compare(experiment, "--out", out, "--no-estimate")
    assert result.exit_code == 0, result.output
    tuned = json.loads((out / "lora" / "result.json").read_text())
    default = json.loads((out / "lora-default" / "result.json").read_text())
    summary = json.loads((out / "lora" / "search.json").read_text())
    assert [t["params"]["learning_rate"] for t in summary["trials"]][0] == 0.002
    assert tuned["search"]["trials"] == 2 and default["run_from"] == "lora"
    best = summary["best"]["params"]["learning_rate"]
    assert tuned["training"]["settings"]["learning_rate"] == best
    assert tuned["metrics"]["accuracy"]["value"] == summary["best"]["test"]["accuracy"]
    assert default["metrics"]["accuracy"]["value"] == summary["default"]["test"]["accuracy"]
    board = (out / "leaderboard.md").read_text()
    assert "| lora |" in board and "| lora-default |" in board and "| lora-shots |" in board
    tuned_rows = (out / "lora" / "predictions.jsonl").read_text().splitlines()
    assert len(tuned_rows) == len(label_rows[::3])  # paired with the others, in the report
    assert "Settings searches" in (out / "report.html").read_text()
    shots = [
        json.loads(x)
        for x in (out / "lora-shots" / "predictions.jsonl").read_text().split("\n")
        if x
    ]
    assert all(row["prompt"].count("user") >= 3 for row in shots)  # two shots and the query
    again = run_compare(experiment, "--out", out, "--no-estimate")
    assert again.exit_code == 0 and "3 already finished" in again.output


def test_a_retriever_resolves_beside_the_file_and_reruns_only_strategies_with_shots(tmp_path):
    from tunelab.compare.runner import ExperimentRunner, load_experiment_data

    lines = "".join(
        json.dumps({"input": f"question {i}", "output": "yes" if i % 2 else "no"}) + "\n"
        for i in range(12)
    )
    for name in ("train.jsonl", "test.jsonl"):
        (tmp_path / name).write_text(lines.replace("question", name[:4]), encoding="utf-8")
    folder = tmp_path / "retriever"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    strategies = (
        "strategies:\n  - {name: zero, prompt: {}}\n"
        "  - {name: few, prompt: {shots: 2, selector: similar}}\n"
        "  - {name: lora, train: {method: lora}}\n"
        "  - {name: lora-shots, train: {method: lora}, prompt: {shots: 2}}\n"
    )
    keys = {}
    for retriever in ("", ", retriever: retriever", ", retriever: retriever "):
        if retriever.endswith(" "):
            (folder / "model.safetensors").write_bytes(b"tuned again")
        path = write_experiment(
            tmp_path,
            f"name: x\ndata: {{train: train.jsonl, test: test.jsonl{retriever}}}\n" + strategies,
        )
        experiment = load_experiment(path)
        data = load_experiment_data(experiment)
        runner = ExperimentRunner(experiment, data, tmp_path / "out")
        keys[retriever] = {s.name: runner.spec_key(s) for s in experiment.strategies}
    assert data.embedder == str(folder) and runner.settings.embedder == str(folder)
    for before, after in (("", ", retriever: retriever"),
                          (", retriever: retriever", ", retriever: retriever ")):  # fmt: skip
        changed = {n for n in keys[before] if keys[before][n] != keys[after][n]}
        assert changed == {"few", "lora-shots"}

    path = write_experiment(tmp_path, (
        "name: x\ndata:\n  train: train.jsonl\n  retriever: gone\n"
        "strategies:\n  - {name: few, prompt: {shots: 2, selector: similar}}\n"
    ))  # fmt: skip
    with pytest.raises(TuneLabError) as err:
        load_experiment(path)
    assert str(err.value).startswith(f"{path}:4: data.retriever: {tmp_path / 'gone'}: no such")
    path = write_experiment(tmp_path, (
        "name: x\ndata:\n  train: train.jsonl\n  retriever: retriever\n"
        "strategies:\n  - {name: opt, optimize: {budget: 2}}\n"
    ))  # fmt: skip
    with pytest.raises(TuneLabError, match=r":4: data.retriever: prompt searches \(opt\) score"):
        load_experiment(path)


def test_an_edited_prompt_file_makes_its_strategies_stale(tmp_path, monkeypatch):
    """Edited, a prompt file re-runs the strategies that read it (its own and through
    prompt_from), also when edited while they ran; a result stored before file contents were
    recorded stays current."""
    from tunelab.compare.runner import RESULT_FILE, ExperimentRunner, load_experiment_data
    from tunelab.paths import write_json_atomic
    from tunelab.prompting import load_strategy

    rows = "".join(json.dumps({"input": f"q {i}", "output": "yes" if i % 2 else "no"}) + "\n"
                   for i in range(8))  # fmt: skip
    (tmp_path / "train.jsonl").write_text(rows, encoding="utf-8")
    prompt = tmp_path / "few.yaml"
    prompt.write_text("shots: 2\nselector: similar\nknn_weight: 0.5\n", encoding="utf-8")
    path = write_experiment(tmp_path, "name: x\ndata: {train: train.jsonl}\nstrategies:\n"
                            "  - {name: few, prompt_file: few.yaml}\n"
                            "  - {name: lora, prompt_from: few, train: {method: lora}}\n"
                            "  - {name: zero, prompt: {}}\n")  # fmt: skip
    experiment = load_experiment(path)
    runner = ExperimentRunner(experiment, load_experiment_data(experiment), tmp_path / "out")
    edit_while_running = []

    def ran(spec, folder):  # what a strategy's run returns, without running a model
        folder.mkdir(parents=True, exist_ok=True)
        used = load_strategy(prompt).model_dump()
        if edit_while_running:
            prompt.write_text(edit_while_running.pop(), encoding="utf-8")
        return {"prompt": used}

    for kind in ("_prompt", "_train"):
        monkeypatch.setattr(runner, kind, ran)
    for spec in experiment.strategies:
        runner.run(spec)
    assert all(runner.finished(spec) for spec in experiment.strategies)
    prompt.write_text("shots: 2\nselector: similar\nknn_weight: 0.9\n", encoding="utf-8")
    stale = {spec.name for spec in experiment.strategies if runner.finished(spec) is None}
    assert stale == {"few", "lora"}
    few = experiment.strategy("few")
    edit_while_running.append("shots: 2\nselector: similar\nknn_weight: 0.7\n")
    runner.run(few)  # ran with 0.9, the file says 0.7 by the end: not current
    assert runner.finished(few) is None
    old = runner.out / "few" / RESULT_FILE  # as stored before: no prompt_files
    write_json_atomic(old, {"spec_key": runner.spec_key(few), "prompt": {}})
    assert runner.finished(few) is not None


def test_a_strategy_with_a_neighbour_vote_is_marked_and_its_serving_gap_named():
    rng = random.Random(0)
    voted = [rng.uniform(0.6, 1.0) for _ in range(300)]
    plain = [x - 0.2 + rng.uniform(-0.05, 0.05) for x in voted]
    results, predictions = [], {}
    for name, values, prompt in (("vote", voted, {"knn_weight": 0.5}), ("plain", plain, {})):
        mean = sum(values) / len(values)
        results.append(result(name, "prompt", mean, mean - 0.05, mean + 0.05) | {"prompt": prompt})
        predictions[name] = scored(values)
    rows = rows_of(results, "rouge_l", 1000, predictions)
    shown = {r.name: (r.method, r.shown_method) for r in rows}
    assert shown == {"vote": ("prompt", "prompt + knn vote 0.5"), "plain": ("prompt", "prompt")}
    text = recommend(rows).text("rouge_l")
    assert "(vote blends a neighbour vote into label scores;" in text
    assert "plain blends" not in text
