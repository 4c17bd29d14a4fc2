"""--device/--dtype on every command that loads a model: resolved, recorded, refused early."""

import json
import multiprocessing
import os
import time

import pytest
import torch
from typer.testing import CliRunner

from tunelab.cli.main import app
from tunelab.errors import TuneLabError
from tunelab.models.device import process_device, resolve_placement

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


def _convert_in_a_process(target, calls, results):
    """One process asking for the embedded model while others do (torchrun ranks)."""
    from tunelab.models import embedded

    def slow_convert(source, out_dir):
        (calls / str(os.getpid())).touch()  # one file per conversion
        time.sleep(0.3)  # long enough for every other process to arrive meanwhile
        (out_dir / "config.json").write_text("{}")

    embedded.cache_dir = lambda name: target
    embedded.gguf_path = lambda: target.parent / "model.gguf"
    embedded._convert_gguf = slow_convert
    (results / str(os.getpid())).write_text(str(embedded.ensure_converted("smollm2")))


def test_concurrent_processes_convert_the_embedded_model_once(tmp_path):
    target, calls, results = tmp_path / "models" / "smollm2-1", tmp_path / "c", tmp_path / "r"
    calls.mkdir()
    results.mkdir()
    fork = multiprocessing.get_context("fork")  # fcntl locks are POSIX; fork starts in ms
    processes = [
        fork.Process(target=_convert_in_a_process, args=(target, calls, results)) for _ in range(3)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=30)
    assert [p.exitcode for p in processes] == [0, 0, 0]
    assert len(list(calls.iterdir())) == 1  # the others waited on the lock, then found it
    assert {r.read_text() for r in results.iterdir()} == {str(target)}
    assert (target / "config.json").is_file()


def test_each_launched_process_loads_onto_its_own_gpu(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert process_device("cuda") == "cuda"
    monkeypatch.setenv("LOCAL_RANK", "1")  # the second process of torchrun/accelerate
    assert process_device("cuda") == "cuda:1"  # not GPU 0, where rank 0 already is
    assert process_device("cpu") == "cpu" and process_device("mps") == "mps"


def test_own_launcher_without_out_is_refused_before_writing(
    monkeypatch, tmp_path, write_jsonl, label_rows
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LOCAL_RANK", "0")  # as torchrun sets it in every process it starts
    data = write_jsonl(label_rows * 2, "train.jsonl")
    result = run("train", "--data", data, "--method", "lora", "--device", "cpu")
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and len(errors) == 1, result.output
    assert "without --out" in errors[0]  # each rank would time-stamp its own folder
    assert not (tmp_path / "runs").exists()


@no_gpu
def test_compare_names_the_file_field_and_the_option_overrides_it(
    write_jsonl, label_rows, tiny_model_dir, tmp_path
):
    write_jsonl(label_rows * 2, "train.jsonl")
    write_jsonl(label_rows[::3], "test.jsonl")
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(
        f"name: tiny\ndata: {{train: train.jsonl, test: test.jsonl, input: text, output: label}}\n"
        f"model: {tiny_model_dir}\ndevice: cuda\nstrategies:\n  - {{name: base, prompt: {{}}}}\n"
    )
    out = tmp_path / "out"
    refused = run("compare", experiment, "--out", out, "--no-estimate")
    errors = [line for line in refused.output.splitlines() if line.startswith("error:")]
    assert refused.exit_code == 1 and len(errors) == 1, refused.output
    assert f"{experiment}: device cuda: no CUDA device" in errors[0]
    assert not out.exists()

    done = run("compare", experiment, "--out", out, "--no-estimate", "--device", "cpu")
    assert done.exit_code == 0, done.output
    recorded = json.loads((out / "experiment.json").read_text())
    assert recorded["placement"] == {"device": "cpu", "dtype": "float32"}
    result = json.loads((out / "base" / "result.json").read_text())
    assert (result["device"], result["dtype"]) == ("cpu", "float32")


def test_optimize_records_device_and_dtype(write_jsonl, label_rows, tiny_model_dir, tmp_path):
    data = write_jsonl(label_rows * 2, "train.jsonl")
    out = tmp_path / "opt"
    result = run("optimize", "--data", data, "--input", "text", "--output", "label",
                 "--model", tiny_model_dir, "--budget", 2, "--dev-rows", 4, "--device", "cpu",
                 "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["placement"] == {"device": "cpu", "dtype": "float32"}
