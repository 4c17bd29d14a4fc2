"""Real 2-process DDP training on CPU (gloo) through torchrun, on the tiny model."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("ddp_worker.py")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_process_ddp_shards_data_syncs_gradients_and_writes_one_run(tiny_model_dir, tmp_path):
    run_dir, record = tmp_path / "run", tmp_path / "record"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "CUDA_VISIBLE_DEVICES": ""}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         f"--master_port={free_port()}", str(WORKER), str(tiny_model_dir), str(run_dir),
         str(record)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads(record.with_suffix(f".{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    # Different shards: the two processes never trained on the same rows in a step.
    for mine, theirs in zip(ranks[0]["seen"], ranks[1]["seen"], strict=True):
        assert not set(mine) & set(theirs)
    assert len(ranks[0]["seen"]) == 4  # 16 rows / (2 processes x batch 2) = 4 steps
    # Synchronised gradients: identical trainable weights after every step.
    assert ranks[0]["checksums"] == ranks[1]["checksums"]
    assert len(set(ranks[0]["checksums"])) > 1  # and the weights did change
    # Evaluation was sharded and gathered: both report the metric over all 6 rows.
    assert ranks[0]["accuracy"] == ranks[1]["accuracy"]
    assert ranks[0]["dev_rows"] == ranks[1]["dev_rows"] == 6
    # Per-row scores (for paired comparisons) and model-only speed survive the gathering.
    assert ranks[0]["row_scores"] == ranks[1]["row_scores"] and len(ranks[0]["row_scores"]) == 6
    assert sum(ranks[0]["row_scores"]) / 6 == pytest.approx(ranks[0]["accuracy"])
    assert ranks[0]["speed"] and all(v > 0 for v in ranks[0]["speed"].values())
    # One run folder, written once: a finished adapter and one line per logged step.
    assert (run_dir / "adapter" / "tunelab.json").is_file()
    logged = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["step"], r["loss"]) for r in logged if "loss" in r]
    assert losses and len(losses) == len(set(losses))  # one writer: no line twice
    assert json.loads((run_dir / "metrics.json").read_text())["training"]["processes"] == 2


def test_train_cli_relaunches_itself_under_torchrun(
    tiny_model_dir, tmp_path, write_jsonl, label_rows
):
    data = write_jsonl(label_rows * 2, "train.jsonl")
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "tunelab.cli.main", "train", "--data", str(data),
         "--input", "text", "--output", "label", "--model", str(tiny_model_dir),
         "--method", "prefix-tuning", "--epochs", "1", "--launcher", "torchrun", "--nproc", "2",
         "--device", "cpu", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "launching 2 processes" in done.stdout
    summary = json.loads((out / "metrics.json").read_text())["training"]
    assert summary["processes"] == 2
    assert (out / "adapter" / "tunelab.json").is_file()


def test_missing_cuda_is_a_clear_error_before_loading(tmp_path, write_jsonl, label_rows):
    import torch
    from typer.testing import CliRunner

    from tunelab.cli.main import app

    if torch.cuda.is_available():
        pytest.skip("the error only exists where no GPU is visible")
    data = write_jsonl(label_rows, "train.jsonl")
    args = ["train", "--data", str(data), "--input", "text", "--output", "label",
            "--method", "lora", "--device", "cuda"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "--device cuda: no CUDA device is visible" in result.output
