"""A classification head (``--head classifier``): trained with LoRA or full fine-tuning, it
answers with one of its labels in one forward pass, and the same answers come back through
eval, serve and an exported Hugging Face folder."""

import json

import pytest
import torch
from typer.testing import CliRunner

from tunelab.cli.main import app
from tunelab.errors import TuneLabError
from tunelab.serving.pool import AdapterPool
from tunelab.training import artifacts
from tunelab.training.config import make_settings


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def predictions(folder):
    lines = (folder / "predictions.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


RATES = {"lora": "1e-2", "full": "1e-3"}
DEV = {"lora": "0.25", "full": "0"}  # with a dev split the best epoch's checkpoint is restored


@pytest.fixture(scope="module")
def head_runs(tmp_path_factory, tiny_model_dir, support_train_file):
    folder = tmp_path_factory.mktemp("head-runs")
    made = {}
    for method in ("lora", "full"):
        out = folder / method
        result = invoke(
            "train", "--data", support_train_file, "--test", support_train_file, "--input",
            "text", "--output", "label", "--model", tiny_model_dir, "--method", method,
            "--head", "classifier", "--epochs", "4", "--batch-size", "4", "--lr", RATES[method],
            "--dev-size", DEV[method], "--out", out,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        made[method] = out
    return made


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_head_run_trains_and_answers_with_its_labels(head_runs, method):
    run_dir = head_runs[method]
    meta = artifacts.read_meta(run_dir)
    assert meta["head"] == "classifier"
    rows = predictions(run_dir)
    assert {row["prediction"] for row in rows} <= {"billing", "login"}
    records = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    curve = [r["loss"] for r in records if "loss" in r]
    half = len(curve) // 2
    assert sum(curve[half:]) / (len(curve) - half) < sum(curve[:half]) / half, curve


@pytest.mark.parametrize("method", ["lora", "full"])
def test_eval_of_a_head_run_gives_the_runs_own_answers(
    head_runs, method, support_train_file, tmp_path
):
    run_dir = head_runs[method]
    result = invoke(
        "eval", "--data", support_train_file, "--test", support_train_file, "--input", "text",
        "--output", "label", "--adapter", run_dir, "--out", tmp_path / "eval",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    again = [row["prediction"] for row in predictions(tmp_path / "eval")]
    assert again == [row["prediction"] for row in predictions(run_dir)]
    refused = invoke(
        "eval", "--data", support_train_file, "--test", support_train_file, "--input", "text",
        "--output", "label", "--adapter", run_dir, "--mode", "generate",
        "--out", tmp_path / "eval-generate",
    )  # fmt: skip
    assert refused.exit_code != 0
    assert "classification head, which generates no text" in " ".join(refused.output.split())


def test_a_served_head_run_replies_with_its_label(head_runs, tiny_model_dir):
    run_dir = head_runs["lora"]
    expected = {row["input"]: row["prediction"] for row in predictions(run_dir)}
    pool = AdapterPool(str(tiny_model_dir), [run_dir, head_runs["full"]])
    try:
        for name in ("lora", "full"):
            served = pool.models[name]
            wanted = {row["input"]: row["prediction"] for row in predictions(head_runs[name])}
            for text in list(expected)[:4]:
                messages = [{"role": "user", "content": text}]
                reply = "".join(pool.stream(served, pool.encode(served, messages), 8))
                assert reply == wanted[text]
    finally:
        pool.close()


def test_the_api_refuses_a_response_format_for_a_head_run(head_runs, tiny_model_dir):
    from fastapi.testclient import TestClient

    from tunelab.serving.api import create_app

    pool = AdapterPool(str(tiny_model_dir), [head_runs["lora"]])
    try:
        client = TestClient(create_app(pool))
        body = {"model": "lora", "messages": [{"role": "user", "content": "refund my fee"}]}
        plain = client.post("/v1/chat/completions", json=body)
        assert plain.status_code == 200
        assert plain.json()["choices"][0]["message"]["content"] in ("billing", "login")
        formatted = body | {"response_format": {"type": "json_object"}}
        refused = client.post("/v1/chat/completions", json=formatted)
        assert refused.status_code == 400 and "classification head" in refused.text
    finally:
        pool.close()


def test_a_head_run_exports_to_a_sequence_classifier(head_runs, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run_dir = head_runs["lora"]
    out = tmp_path / "hf"
    result = invoke("export", run_dir, "--out", out)
    assert result.exit_code == 0, result.output
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    for row in predictions(run_dir)[:4]:
        messages = [{"role": "user", "content": row["input"]}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0]
        assert model.config.id2label[int(logits.argmax())] == row["prediction"]
    refused = invoke("export", run_dir, "--out", tmp_path / "gguf", "--format", "gguf")
    assert refused.exit_code != 0 and "export --format hf" in " ".join(refused.output.split())


@pytest.mark.parametrize(
    ("values", "classification", "message"),
    [
        ({"method": "prefix-tuning"}, True, "trains with --method lora or full"),
        ({"method": "lora"}, False, "needs a label set"),
    ],
)
def test_a_head_is_refused_where_it_cannot_work(values, classification, message):
    settings = make_settings(head="classifier", **values)
    with pytest.raises(TuneLabError, match=message):
        settings.resolved(classification)
