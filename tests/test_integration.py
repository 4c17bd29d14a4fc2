"""Integration tests on the real embedded model and the shared datasets (kept few and short)."""

import math
import time

import pytest
from typer.testing import CliRunner

from tests.conftest import SHARED_DATASETS, needs_embedded_model, needs_shared_datasets
from tunelab.cli.main import app

pytestmark = pytest.mark.integration


@needs_embedded_model()
def test_embedded_model_converts_once_and_answers():
    from tunelab.generation import GenerationConfig, generate
    from tunelab.models import load_model
    from tunelab.prompting.render import to_prompt_text

    loaded = load_model("smollm2-135m")  # converts on the first ever call
    assert (loaded.source.cache_path / "model.safetensors").is_file()
    assert sum(p.numel() for p in loaded.model.parameters()) == 134_515_008
    prompt = to_prompt_text(
        loaded.tokenizer, [{"role": "user", "content": "What is the capital of France?"}]
    )
    [answer] = generate(
        loaded.model, loaded.tokenizer, [prompt], GenerationConfig(max_new_tokens=12)
    )
    assert "Paris" in answer


@needs_embedded_model()
@needs_shared_datasets()
def test_inspect_banking77():
    started = time.perf_counter()
    result = CliRunner().invoke(
        app,
        [
            "data",
            "inspect",
            str(SHARED_DATASETS / "banking77" / "train.csv"),
            "--input",
            "text",
            "--output",
            "category",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "rows: 10003" in result.stdout
    assert "labels: 77 (classification)" in result.stdout
    assert "duplicates:" in result.stdout
    assert time.perf_counter() - started < 120  # generous: a hang, not a speed target


@needs_embedded_model()
def test_prefix_tuning_trains_and_reloads_on_the_embedded_model(tmp_path):
    """Prefix tuning is where the KV-cache changes of recent transformers broke other tools."""
    import json

    examples = "examples/support_intents"
    out = tmp_path / "run"
    common = ["--data", f"{examples}/train.jsonl", "--input", "text", "--output", "intent"]
    result = CliRunner().invoke(
        app,
        ["train", *common, "--test", f"{examples}/test.jsonl", "--method", "prefix-tuning",
         "--epochs", "1", "--batch-size", "8", "--task-prefix", "[SUPPORT]", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    losses = [
        json.loads(line)["loss"]
        for line in (out / "metrics.jsonl").read_text().splitlines()
        if '"loss"' in line
    ]
    assert losses and all(math.isfinite(loss) for loss in losses)  # logged, neither nan nor inf
    trained = json.loads((out / "metrics.json").read_text())["metrics"]["accuracy"]["value"]
    evaluated = CliRunner().invoke(
        app,
        ["eval", *common, "--test", f"{examples}/test.jsonl", "--adapter", str(out),
         "--out", str(tmp_path / "eval"), "--show", "0"],
    )  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]["accuracy"]
    assert again["value"] == trained  # the reloaded adapter predicts what the trained one did
