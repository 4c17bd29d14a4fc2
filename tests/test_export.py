"""`tunelab export --format hf|gguf|ollama|vllm` on runs of the tiny Llama model: the GGUF
loads back with transformers and gives the trained run's logits; the Modelfile prompts as the
run was evaluated; the vLLM folder holds a loadable base and adapter; what a format cannot hold
is refused in one line."""

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from tunelab.cli.main import app
from tunelab.errors import TuneLabError
from tunelab.export.gguf_file import interleave_rotary_rows, write_gguf
from tunelab.export.ollama import CHATML_GO_TEMPLATE, modelfile
from tunelab.training.artifacts import load_trained_run

SYSTEM = "You route support messages."
INSTRUCTION = "Answer with one of: {{ labels | join(', ') }}."
IDS = torch.tensor([[5, 6, 7, 8, 9, 1, 40, 41]])
# f16 weights round to 11 significant bits: on the tiny model the logits move by ~2e-4.
F16_TOLERANCE = 2e-3


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error_line(result) -> str:
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1, result.output
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir, support_train_file):
    folder = tmp_path_factory.mktemp("export-runs")
    data = support_train_file
    prompt = folder / "prompt.yaml"
    prompt.write_text(f'system: {SYSTEM}\ninstruction: "{INSTRUCTION}"\n')
    made = {}
    for method in ("lora", "full", "prefix-tuning"):
        out = folder / f"{method}-run"
        result = invoke(
            "train", "--data", data, "--test", data, "--input", "text", "--output", "label",
            "--model", tiny_model_dir, "--method", method, "--epochs", "1", "--batch-size", "4",
            "--task-prefix", "[BILLING]", "--prompt", prompt, "--out", out,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        made[method] = out
    return made


def gguf_model(folder, name):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name).eval()
    return model, AutoTokenizer.from_pretrained(folder, gguf_file=name)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_gguf_export_loads_back_with_the_trained_logits(runs, tmp_path, method):
    out = tmp_path / "gguf"
    result = invoke("export", runs[method], "--out", out, "--format", "gguf")
    assert result.exit_code == 0, result.output
    name = f"{method}-run-f16.gguf"
    exported, tokenizer = gguf_model(out, name)
    trained = load_trained_run(runs[method])
    with torch.no_grad():
        got, want = exported(IDS).logits, trained.model(IDS).logits
    assert (got - want).abs().max() < F16_TOLERANCE
    text = "refund <|im_start|>user\nmy fee"
    assert tokenizer(text)["input_ids"] == trained.tokenizer(text)["input_ids"]
    assert tokenizer.chat_template == trained.tokenizer.chat_template
    assert tokenizer.eos_token == trained.tokenizer.eos_token
    meta = json.loads((out / "tunelab.json").read_text())
    assert meta["task_prefix"] == "[BILLING]" and meta["format"] == "gguf"
    assert (out / "system_prompt.txt").read_text().startswith(SYSTEM)


def test_q8_0_is_smaller_and_close(runs, tmp_path):
    f16, q8 = tmp_path / "f16", tmp_path / "q8"
    assert invoke("export", runs["lora"], "--out", f16, "--format", "gguf").exit_code == 0
    result = invoke("export", runs["lora"], "--out", q8, "--format", "gguf", "--quant", "q8_0")
    assert result.exit_code == 0, result.output
    small, large = q8 / "lora-run-q8_0.gguf", f16 / "lora-run-f16.gguf"
    assert small.stat().st_size < large.stat().st_size
    exported, _ = gguf_model(q8, small.name)
    trained = load_trained_run(runs["lora"])
    with torch.no_grad():
        got, want = exported(IDS).logits, trained.model(IDS).logits
    assert (got - want).abs().max() < 0.05  # q8_0: 8 bits per weight, one scale per 32
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.75


def test_rotary_rows_are_interleaved_per_head():
    # Two heads of size 4: HF keeps [x0 x1 | y0 y1] per head, llama.cpp wants [x0 y0 x1 y1].
    weight = torch.arange(8.0).reshape(8, 1).numpy()
    assert interleave_rotary_rows(weight, heads=2).ravel().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_ollama_modelfile_prompts_as_the_run_was_evaluated(runs, tmp_path):
    out = tmp_path / "ollama"
    result = invoke("export", runs["lora"], "--out", out, "--format", "ollama", "--quant", "q8_0")
    assert result.exit_code == 0, result.output
    assert "ollama create lora-run -f Modelfile" in result.output
    text = (out / "Modelfile").read_text()
    lines = text.splitlines()
    assert "FROM ./lora-run-q8_0.gguf" in lines and (out / "lora-run-q8_0.gguf").is_file()
    assert f'TEMPLATE """{CHATML_GO_TEMPLATE}"""' in text
    system = f"{SYSTEM}\n\nAnswer with one of: billing, login."
    assert f'SYSTEM """{system}"""' in text
    assert [line for line in lines if line.startswith("PARAMETER stop")] == [
        'PARAMETER stop "<|im_end|>"',
        'PARAMETER stop "<|im_start|>"',
    ]
    assert "PARAMETER temperature 0" in lines
    assert any(line.startswith("#") and "[BILLING]" in line for line in lines)
    # The Go template, filled in by hand as Ollama would, is the prompt TuneLab evaluated with.
    trained = load_trained_run(runs["lora"])
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "[BILLING] hi"}]
    by_hand = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    rendered = trained.tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert by_hand + "<|im_start|>assistant\n" == rendered


def test_modelfile_uses_the_templates_own_default_system():
    from tunelab.testing import make_tiny_tokenizer

    tok = make_tiny_tokenizer()
    tok.chat_template = (
        "{% if messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nBe brief.<|im_end|>\n' }}{% endif %}" + tok.chat_template
    )
    text = modelfile(tok, "m.gguf", name="m", system=None, task_prefix=None,
                     max_new_tokens=None, source="run")  # fmt: skip
    assert 'SYSTEM """Be brief."""' in text.splitlines()
    tok.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    text = modelfile(tok, "m.gguf", name="m", system="S", task_prefix=None,
                     max_new_tokens=None, source="run")  # fmt: skip
    assert "TEMPLATE" not in text.replace("# TEMPLATE", "") and 'SYSTEM """S"""' in text


def test_vllm_folder_holds_the_base_and_the_adapter(runs, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "vllm"
    result = invoke("export", runs["lora"], "--out", out, "--format", "vllm")
    assert result.exit_code == 0, result.output
    script = (out / "serve.sh").read_text()
    assert "vllm serve ./base --served-model-name base --enable-lora --lora-modules " \
        "lora-run=./adapters/lora-run" in script  # fmt: skip
    base = AutoModelForCausalLM.from_pretrained(out / "base")
    model = PeftModel.from_pretrained(base, out / "adapters" / "lora-run").eval()
    trained = load_trained_run(runs["lora"])
    with torch.no_grad():
        assert torch.allclose(model(IDS).logits, trained.model(IDS).logits, atol=1e-5)
    full = tmp_path / "vllm-full"
    assert invoke("export", runs["full"], "--out", full, "--format", "vllm").exit_code == 0
    assert "vllm serve ./model" in (full / "serve.sh").read_text()
    AutoModelForCausalLM.from_pretrained(full / "model")


@pytest.mark.parametrize("fmt", ["gguf", "ollama", "vllm"])
def test_soft_prompt_runs_are_refused_by_engines_that_cannot_run_them(runs, tmp_path, fmt):
    out = tmp_path / "out"
    line = one_error_line(invoke("export", runs["prefix-tuning"], "--out", out, "--format", fmt))
    assert "virtual tokens" in line and "tunelab serve" in line
    assert not out.exists()


def test_an_architecture_gguf_cannot_write_is_refused(runs, tmp_path):
    run = tmp_path / "mistral-run"
    shutil.copytree(runs["full"], run)
    config_path = run / "adapter" / "config.json"
    config = json.loads(config_path.read_text())
    config.update(model_type="mistral", architectures=["MistralForCausalLM"])
    config_path.write_text(json.dumps(config))
    out = tmp_path / "out"
    line = one_error_line(invoke("export", run, "--out", out, "--format", "gguf"))
    assert "Llama-architecture" in line and "'mistral'" in line
    assert not out.exists()


def test_bad_format_and_quant_are_one_line_errors(runs, tmp_path):
    out = tmp_path / "out"
    assert "--format must be one of" in one_error_line(
        invoke("export", runs["lora"], "--out", out, "--format", "onnx")
    )
    assert "--quant must be one of" in one_error_line(
        invoke("export", runs["lora"], "--out", out, "--format", "gguf", "--quant", "q4_k")
    )
    assert "--quant applies to" in one_error_line(
        invoke("export", runs["lora"], "--out", out, "--quant", "q8_0")
    )


def test_write_gguf_refuses_a_tokenizer_that_is_not_byte_level(tiny_model, tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    word_level = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>"))
    )
    with pytest.raises(TuneLabError, match="byte-level BPE"):
        write_gguf(tiny_model, word_level, tmp_path / "m.gguf", quant="f16", name="m", pre="x")


def test_run_names_engines_cannot_parse_are_made_safe(runs, tmp_path):
    run = tmp_path / "My run=ü,x"
    shutil.copytree(runs["lora"], run)
    ollama, vllm = tmp_path / "ollama", tmp_path / "vllm"
    assert invoke("export", run, "--out", ollama, "--format", "ollama").exit_code == 0
    assert "FROM ./my-run-x-f16.gguf" in (ollama / "Modelfile").read_text().splitlines()
    assert (ollama / "my-run-x-f16.gguf").is_file()
    assert invoke("export", run, "--out", vllm, "--format", "vllm").exit_code == 0
    assert "--lora-modules my-run-x=./adapters/my-run-x" in (vllm / "serve.sh").read_text()


def test_a_users_file_with_an_export_files_name_is_never_replaced(runs, tmp_path):
    out = tmp_path / "out"
    assert invoke("export", runs["lora"], "--out", out, "--format", "gguf").exit_code == 0
    (out / "Modelfile").write_text("mine")
    (out / "NOTES.md").write_text("notes")
    line = one_error_line(invoke("export", runs["lora"], "--out", out, "--format", "ollama"))
    assert "Modelfile was not written by TuneLab" in line
    assert (out / "Modelfile").read_text() == "mine" and (out / "lora-run-f16.gguf").is_file()
    (out / "Modelfile").unlink()
    assert invoke("export", runs["lora"], "--out", out, "--format", "ollama").exit_code == 0
    assert (out / "NOTES.md").read_text() == "notes"  # a user's other files stay


def test_a_symlinked_out_is_refused(runs, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    line = one_error_line(invoke("export", runs["lora"], "--out", tmp_path / "link"))
    assert "symbolic link" in line and not any(real.iterdir())
