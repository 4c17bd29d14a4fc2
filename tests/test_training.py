"""Training engine on the tiny model: methods, loss masking, soft-prompt inference, resume."""

import json
import os

import pytest
import torch
from transformers import TrainerCallback

from tunelab.data.loading import Example
from tunelab.errors import TuneLabError
from tunelab.evaluation.label_scoring import score_labels
from tunelab.generation import GenerationConfig, generate
from tunelab.prompting.task_prefix import apply_task_prefix, with_task_prefix
from tunelab.testing import make_tiny_model
from tunelab.training import artifacts
from tunelab.training.config import make_settings, parse_option_pairs
from tunelab.training.data import TrainData
from tunelab.training.encoding import IGNORE_INDEX, encode_examples
from tunelab.training.methods import MethodContext, all_methods, get_method
from tunelab.training.run import default_training_strategy, train_run
from tunelab.training.soft_prompt import inference_view

METHODS = list(all_methods())
PROMPT_METHODS = ["prompt-tuning", "prefix-tuning", "p-tuning"]
# Small enough for the tiny model, and covering the reparameterised variants.
TINY_OPTIONS = {
    "full": {},
    "lora": {"r": 4},
    "prompt-tuning": {"virtual_tokens": 4},
    "prefix-tuning": {"virtual_tokens": 4, "projection": True, "encoder_hidden": 16},
    "p-tuning": {"virtual_tokens": 4, "encoder_hidden": 16, "encoder": "lstm"},
}
LABELS = ["billing", "login", "shipping"]


def examples(n_per_label: int = 4) -> list[Example]:
    texts = {
        "billing": ["card charged twice", "refund my fee", "wrong amount", "invoice error"],
        "login": ["cannot sign in", "password reset", "locked out", "two factor broken"],
        "shipping": ["where is my parcel", "late delivery", "package lost", "wrong address"],
    }
    rows = [(t, label) for label, ts in texts.items() for t in ts[:n_per_label]]
    return [Example(input=t, output=label, line=i + 1) for i, (t, label) in enumerate(rows)]


def adapted(tiny_tokenizer, method: str, seed: int = 0):
    """Tiny model with ``method`` applied and its trainable weights moved off their init."""
    model = make_tiny_model(tiny_tokenizer, seed=seed)
    spec = get_method(method)
    options = spec.parse_options(TINY_OPTIONS[method])
    model = spec.apply(model, options, MethodContext(tiny_tokenizer, LABELS, "[X]"))
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.5 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


# --- loss masking ---------------------------------------------------------------------------


def test_loss_covers_answer_and_end_token_only(tiny_tokenizer):
    data = examples(1)
    strategy = default_training_strategy("t")
    encoded = encode_examples(tiny_tokenizer, strategy, data, LABELS, max_length=512)
    for example, feature in zip(data, encoded.features, strict=True):
        ids, labels = feature["input_ids"], feature["labels"]
        answer_start = next(i for i, t in enumerate(labels) if t != IGNORE_INDEX)
        prompt_text = tiny_tokenizer.decode(ids[:answer_start])
        assert prompt_text.endswith("<|im_start|>assistant\n")
        assert example.input in prompt_text
        assert all(t == IGNORE_INDEX for t in labels[:answer_start])
        assert labels[answer_start:] == ids[answer_start:]  # every answer token is learned
        answer = tiny_tokenizer.decode(labels[answer_start:])
        assert answer == example.output + "<|im_end|>"
    assert encoded.answer_tokens == sum(len(e.output.encode()) + 1 for e in data)


def test_too_long_examples_are_skipped_and_reported(tiny_tokenizer):
    data = examples(1)
    data[0] = Example(input="x" * 400, output="billing", line=7)
    encoded = encode_examples(tiny_tokenizer, default_training_strategy("t"), data, None, 200)
    assert encoded.skipped == [7] and len(encoded.features) == 2


def test_training_prompt_has_no_label_list(tiny_tokenizer):
    encoded = encode_examples(
        tiny_tokenizer, default_training_strategy("t"), examples(1), LABELS, 512
    )
    prompt = tiny_tokenizer.decode(encoded.features[0]["input_ids"])
    assert "shipping" not in prompt.split("<|im_start|>assistant")[0]


# --- task prefix ----------------------------------------------------------------------------


def test_task_prefix_is_prepended_once():
    assert apply_task_prefix("my router is down", "[TECH_SUPPORT]") == (
        "[TECH_SUPPORT] my router is down"
    )
    assert apply_task_prefix("[TECH_SUPPORT] router", "[TECH_SUPPORT]") == "[TECH_SUPPORT] router"
    assert apply_task_prefix("router", None) == "router"
    assert [e.input for e in with_task_prefix(examples(1), "[T]")][0] == "[T] card charged twice"


# --- soft prompts at inference ---------------------------------------------------------------


@pytest.mark.parametrize("method", PROMPT_METHODS)
def test_soft_prompt_view_matches_peft_forward(tiny_tokenizer, method):
    model = adapted(tiny_tokenizer, method)
    view = inference_view(model)
    for text in ["hello world, how are", "hi"]:
        ids = tiny_tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            expected = model(**ids).logits[0, -ids["input_ids"].shape[1] :]
            got = view(**ids).logits[0]
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", PROMPT_METHODS)
def test_soft_prompt_label_scoring_matches_full_forward(tiny_tokenizer, method):
    model = adapted(tiny_tokenizer, method)
    prompts = ["prompt one", "prompt two x"]
    table = score_labels(inference_view(model), tiny_tokenizer, prompts, LABELS, exhaustive=True)
    for i, prompt in enumerate(prompts):
        for k, label in enumerate(LABELS):
            p_ids = tiny_tokenizer(prompt)["input_ids"]
            l_ids = tiny_tokenizer(label)["input_ids"] + [tiny_tokenizer.eos_token_id]
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([p_ids + l_ids])).logits[0]
            logprobs = logits[-len(p_ids) - len(l_ids) :].log_softmax(-1)
            expected = sum(logprobs[len(p_ids) - 1 + j, t] for j, t in enumerate(l_ids))
            assert table[i, k].item() == pytest.approx(expected.item(), abs=1e-4)


@pytest.mark.parametrize("method", PROMPT_METHODS)
def test_soft_prompt_generation_is_greedy_decoding_of_the_adapted_model(tiny_tokenizer, method):
    model = adapted(tiny_tokenizer, method)
    prompts = ["hello", "hi there friend"]
    batched = generate(inference_view(model), tiny_tokenizer, prompts, GenerationConfig(6))
    for prompt, got in zip(prompts, batched, strict=True):
        ids = tiny_tokenizer(prompt, return_tensors="pt")["input_ids"]
        start = ids.shape[1]
        with torch.no_grad():
            for _ in range(6):
                next_id = model(input_ids=ids).logits[0, -1].argmax()
                if next_id.item() == tiny_tokenizer.eos_token_id:
                    break
                ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
        expected = tiny_tokenizer.decode(ids[0, start:], skip_special_tokens=True).strip()
        assert got == expected


# --- save / reload ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_adapter_reloads_with_identical_logits(tiny_tokenizer, tiny_model_dir, tmp_path, method):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    spec = get_method(method)
    model = spec.apply(
        base, spec.parse_options(TINY_OPTIONS[method]), MethodContext(tiny_tokenizer, LABELS)
    )
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.3 * torch.randn_like(parameter))
    model.eval()
    meta = {"method": method, "base_model": str(tiny_model_dir), "labels": LABELS}
    artifacts.save_adapted_model(tmp_path / "run", model, tiny_tokenizer, meta)
    reloaded = artifacts.load_trained_run(tmp_path / "run")
    ids = tiny_tokenizer(["a test sentence", "another"], return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = inference_view(model)(**ids).logits
        got = reloaded.model(**ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert reloaded.meta["labels"] == LABELS


def test_unfinished_run_is_not_loadable(tmp_path):
    from tunelab.runs import claim

    claim(tmp_path, "train")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(TuneLabError, match="did not finish.*--resume"):
        artifacts.load_trained_run(tmp_path)
    other = tmp_path / "a-model-folder"  # a config.json alone is not an unfinished run
    other.mkdir()
    (other / "config.json").write_text("{}")
    with pytest.raises(TuneLabError, match="not a tunelab training run"):
        artifacts.load_trained_run(other)


# --- settings validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"method": "lora", "learning_rate": -1e-3}, "--learning-rate: Input should be greater"),
        ({"method": "lora", "epochs": 0}, "--epochs"),
        ({"method": "dreambooth"}, "unknown method 'dreambooth'"),
        ({"method": "prompt-tuning", "options": {"virtual_tokens": 0}}, "virtual_tokens"),
        ({"method": "lora", "options": {"rank": 8}}, "--option rank"),
        ({"method": "p-tuning", "options": {"encoder": "gru"}}, "--option encoder"),
    ],
)
def test_bad_settings_fail_before_training(values, message):
    with pytest.raises(TuneLabError, match=message):
        make_settings(**values)


def test_option_pairs_are_typed():
    assert parse_option_pairs(["r=8", "dropout=0.1", "target_modules=q_proj,v_proj"]) == {
        "r": 8,
        "dropout": 0.1,
        "target_modules": "q_proj,v_proj",
    }
    with pytest.raises(TuneLabError, match="KEY=VALUE"):
        parse_option_pairs(["r"])


def test_unknown_lora_target_module_lists_the_real_ones(tiny_tokenizer):
    spec = get_method("lora")
    options = spec.parse_options({"target_modules": "q_proj,attn_out"})
    with pytest.raises(TuneLabError, match="attn_out not in the model.*q_proj"):
        spec.apply(make_tiny_model(tiny_tokenizer), options, MethodContext(tiny_tokenizer))


def test_metric_must_suit_the_task():
    settings = make_settings(method="lora", metric="rouge_l")
    with pytest.raises(TuneLabError, match="not a classification metric"):
        settings.resolved(classification=True)


def test_prompt_tuning_initialises_from_label_embeddings(tiny_tokenizer):
    model = make_tiny_model(tiny_tokenizer)
    table = model.get_input_embeddings().weight.detach().clone()
    spec = get_method("prompt-tuning")
    peft_model = spec.apply(
        model, spec.parse_options({"virtual_tokens": 4}), MethodContext(tiny_tokenizer, LABELS)
    )
    prompt = peft_model.prompt_encoder["default"].embedding.weight
    first = table[tiny_tokenizer("billing", add_special_tokens=False)["input_ids"]].mean(0)
    torch.testing.assert_close(prompt[0], first)
    torch.testing.assert_close(prompt[3], first)  # 3 labels cycle over 4 tokens


def test_prefix_tuning_starts_as_the_keys_and_values_of_real_text(tiny_tokenizer):
    """A text-initialised prefix must read exactly as if the text preceded the input."""
    model = make_tiny_model(tiny_tokenizer).eval()
    text_ids = tiny_tokenizer("answer the question", add_special_tokens=False)["input_ids"]
    spec = get_method("prefix-tuning")
    options = spec.parse_options(
        {"virtual_tokens": len(text_ids), "init_text": "answer the question"}
    )
    peft_model = spec.apply(model, options, MethodContext(tiny_tokenizer, LABELS)).eval()
    input_ids = tiny_tokenizer("card charged twice", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        prefixed = peft_model(input_ids=input_ids).logits
        reference = model(torch.cat([torch.tensor([text_ids]), input_ids], dim=1)).logits
    torch.testing.assert_close(prefixed, reference[:, len(text_ids) :], rtol=1e-4, atol=1e-4)


def test_prefix_text_init_refuses_the_mlp():
    with pytest.raises(TuneLabError, match="init=text .* projection=false"):
        get_method("prefix-tuning").parse_options({"init": "text", "projection": True})


# --- full runs ---------------------------------------------------------------------------------


def tiny_data(tmp_path) -> TrainData:
    data = examples() * 2
    path = tmp_path / "train.jsonl"
    path.write_text(
        "".join(json.dumps({"input": e.input, "output": e.output}) + "\n" for e in data)
    )
    return TrainData(data, examples(2), None, LABELS, {"train": path})


def run(tmp_path, tiny_model_dir, method="lora", name="run", lr=None, **kwargs):
    settings = make_settings(
        method=method,
        options=TINY_OPTIONS[method],
        learning_rate=lr,
        epochs=kwargs.pop("epochs", 3),
        batch_size=4,
        save_steps=kwargs.pop("save_steps", 50),
        task_prefix=kwargs.pop("task_prefix", None),
        patience=kwargs.pop("patience", 0),
    ).resolved(classification=True)
    return train_run(
        settings,
        tiny_data(tmp_path),
        default_training_strategy(method),
        str(tiny_model_dir),
        tmp_path / name,
        **kwargs,
    )


def losses(run_dir) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if '"loss"' in line]


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_and_loss_falls(tmp_path, tiny_model_dir, method):
    lr = {"full": 3e-3, "lora": 3e-3}.get(method)  # a random tiny model needs big steps
    outcome = run(tmp_path, tiny_model_dir, method, lr=lr, epochs=4)
    history = losses(outcome.run_dir)
    assert len(history) >= 2 and history[-1] < history[0]
    assert artifacts.is_finished(outcome.run_dir)
    assert not (outcome.run_dir / "checkpoints").exists()
    summary = json.loads((outcome.run_dir / "metrics.json").read_text())
    assert summary["training"]["trainable_parameters"] > 0
    assert summary["evaluated_on"] == "dev" and "accuracy" in summary["metrics"]
    evals = [json.loads(x) for x in (outcome.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sum("eval_accuracy" in e for e in evals) == 4  # one dev evaluation per epoch


class CountSteps(TrainerCallback):
    def __init__(self):
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


class Interrupt(TrainerCallback):
    def __init__(self, at_step: int):
        self.at_step = at_step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at_step:
            raise KeyboardInterrupt


@pytest.mark.parametrize("method", ["lora", "p-tuning"])
def test_resumed_run_ends_like_an_uninterrupted_one(tmp_path, tiny_model_dir, method):
    from safetensors.torch import load_file

    whole = run(tmp_path, tiny_model_dir, method, name="whole", save_steps=3, lr=3e-3)
    previous = os.umask(0o022)  # safetensors alone would write its checkpoints 0600
    try:
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path, tiny_model_dir, method, name="cut", save_steps=3, lr=3e-3,
                callbacks=(Interrupt(at_step=5),))  # fmt: skip
    finally:
        os.umask(previous)
    assert not artifacts.is_finished(tmp_path / "cut")
    saved = list((tmp_path / "cut" / "checkpoints").rglob("*.safetensors"))
    assert saved and all(p.stat().st_mode & 0o777 == 0o644 for p in saved)  # the umask's
    with pytest.raises(TuneLabError, match="unfinished run.*--resume"):
        run(tmp_path, tiny_model_dir, method, name="cut", save_steps=3, lr=3e-3)
    counter = CountSteps()
    resumed = run(tmp_path, tiny_model_dir, method, name="cut", save_steps=3, lr=3e-3,
                  resume=True, callbacks=(counter,))  # fmt: skip
    assert counter.steps == whole.summary["steps"] - 3  # resumed from checkpoint-3
    a = load_file(str(whole.run_dir / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(resumed.run_dir / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-4)
    # checkpoints fall on logging steps (every 3), so every logged window is the same
    assert losses(whole.run_dir) == pytest.approx(losses(resumed.run_dir), abs=1e-4)


def test_resume_refuses_changed_settings(tmp_path, tiny_model_dir):
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, tiny_model_dir, name="cut", save_steps=2, callbacks=(Interrupt(3),))
    with pytest.raises(TuneLabError, match="same settings.*settings"):
        run(tmp_path, tiny_model_dir, name="cut", save_steps=2, lr=1e-2, resume=True)


def test_batches_are_padded_to_their_own_longest_sequence(tmp_path, tiny_model_dir):
    from tunelab.training import run as run_module

    seen = []
    original = run_module._build_trainer

    def spy(*args, **kwargs):
        trainer = original(*args, **kwargs)
        for batch in trainer.get_train_dataloader():
            lengths = batch["attention_mask"].sum(-1)
            seen.append((batch["input_ids"].shape[1], int(lengths.max())))
        return trainer

    run_module._build_trainer = spy
    try:
        run(tmp_path, tiny_model_dir, epochs=1)
    finally:
        run_module._build_trainer = original
    assert seen and all(width == longest for width, longest in seen)


def test_report_to_needs_a_known_installed_integration():
    with pytest.raises(TuneLabError, match="choose from tensorboard"):
        make_settings(method="lora", report_to=["slack"])
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        with pytest.raises(TuneLabError, match="pip install mlflow"):
            make_settings(method="lora", report_to=["mlflow"])


@pytest.mark.parametrize(
    ("method", "batch"), [("lora", 8), ("full", 8), ("prefix-tuning", 1), ("p-tuning", 2)]
)
def test_batch_size_defaults_to_the_methods_and_an_explicit_one_wins(method, batch):
    assert make_settings(method=method).resolved(classification=True).batch_size == batch
    explicit = make_settings(method=method, batch_size=5).resolved(classification=True)
    assert explicit.batch_size == 5
