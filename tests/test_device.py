"""--device/--dtype on every command that loads a model: resolved, recorded, refused early."""

import json
import threading
import time

import pytest
import torch
from typer.testing import CliRunner

from tunelab.cli.main import app
from tunelab.errors import TuneLabError
from tunelab.models.device import resolve_placement

cli = CliRunner()
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")


def run(*args):
    return cli.invoke(app, [str(a) for a in args])


@no_gpu
def test_auto_is_the_cpu_in_float32_here():
    placement = resolve_placement()
    assert (placement.device, placement.dtype) == ("cpu", "float32")
    assert resolve_placement("cpu", "float32").record() == {"device": "cpu", "dtype": "float32"}


@no_gpu
@pytest.mark.parametrize(
    ("device", "dtype", "message"),
    [("cuda", "auto", "no CUDA device is visible"), ("mps", "auto", "MPS backend"),
     ("tpu", "auto", "--device must be one of"), ("cpu", "float64", "--dtype must be one of"),
     ("cpu", "bfloat16", "--dtype bfloat16 on the CPU")],
)  # fmt: skip
def test_impossible_placements_are_refused(device, dtype, message):
    with pytest.raises(TuneLabError, match=message):
        resolve_placement(device, dtype)


@no_gpu
@pytest.mark.parametrize("command", ["eval", "train"])
def test_cli_refuses_a_missing_gpu_in_one_line_before_loading(command, write_jsonl, label_rows):
    data = write_jsonl(label_rows, "train.jsonl")
    extra = ["--method", "lora"] if command == "train" else []
    result = run(command, "--data", data, "--model", "no-such-model", *extra, "--device", "cuda")
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and len(errors) == 1, result.output
    assert "--device cuda: no CUDA device is visible" in errors[0]  # not "unknown model"


@pytest.mark.parametrize(
    "command", [["eval"], ["optimize"], ["compare"], ["train"], ["chat"], ["serve"], ["export"]]
)
def test_every_model_loading_command_takes_device_and_dtype(command):
    result = run(*command, "--help")
    assert result.exit_code == 0
    assert "--device" in result.output and "--dtype" in result.output


@no_gpu
def test_device_and_dtype_are_recorded_in_run_configs(write_jsonl, label_rows, tiny_model_dir,
                                                      tmp_path):  # fmt: skip
    data = write_jsonl(label_rows * 2, "train.jsonl")
    common = ["--data", data, "--input", "text", "--output", "label", "--model", tiny_model_dir]
    assert run("eval", *common, "--out", tmp_path / "e", "--show", 0).exit_code == 0
    config = json.loads((tmp_path / "e" / "config.json").read_text())
    assert config["placement"] == {"device": "cpu", "dtype": "float32"}
    trained = run("train", *common, "--method", "lora", "--epochs", 1, "--out", tmp_path / "t")
    assert trained.exit_code == 0, trained.output
    config = json.loads((tmp_path / "t" / "config.json").read_text())
    assert config["placement"] == {"device": "cpu", "dtype": "float32"}


def test_torchrun_children_share_one_run_folder(monkeypatch, write_jsonl, label_rows, tmp_path,
                                                tiny_model_dir):  # fmt: skip
    import subprocess

    launched = []
    monkeypatch.setattr(subprocess, "call", lambda command: launched.append(command) or 0)
    monkeypatch.chdir(tmp_path)
    data = write_jsonl(label_rows, "train.jsonl")
    result = run("train", "--data", data, "--model", tiny_model_dir, "--method", "lora",
                 "--launcher", "torchrun", "--nproc", 2)  # fmt: skip
    assert result.exit_code == 0, result.output
    command = launched[0]
    out = command[command.index("--out") + 1]
    assert out.startswith("runs/train-lora-")  # computed once, here, for every rank
    assert "--launcher" not in command and "--nproc" not in command


def test_concurrent_conversions_of_the_embedded_model_happen_once(monkeypatch, tmp_path):
    from tunelab.models import embedded

    target = tmp_path / "models" / "smollm2-1"
    calls = []

    def slow_convert(source, out_dir):
        calls.append(out_dir)
        time.sleep(0.3)
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setattr(embedded, "cache_dir", lambda name: target)
    monkeypatch.setattr(embedded, "gguf_path", lambda: tmp_path / "model.gguf")
    monkeypatch.setattr(embedded, "_convert_gguf", slow_convert)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(embedded.ensure_converted("smollm2")))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and results == [target] * 3
    assert (target / "config.json").is_file()
