import pytest
import torch

from tunelab.generation import GenerationConfig, cut_at_stop, generate, generate_ids
from tunelab.generation.batch import SharedPrefix


def _prompts(tokenizer):
    texts = ["hi", "a much longer question about parcels", "mid length one"]
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True
        )
        for t in texts
    ]


def test_batched_generation_matches_one_at_a_time(tiny_model, tiny_tokenizer):
    """Left padding and the attention mask must not change greedy outputs."""
    prompts = _prompts(tiny_tokenizer)
    config = GenerationConfig(max_new_tokens=6, batch_size=3)
    batched = generate(tiny_model, tiny_tokenizer, prompts, config)
    single = [
        generate(tiny_model, tiny_tokenizer, [p], GenerationConfig(max_new_tokens=6))[0]
        for p in prompts
    ]
    assert batched == single
    assert all(isinstance(text, str) for text in batched)


def test_sampling_is_reproducible_with_a_seed(tiny_model, tiny_tokenizer):
    prompts = _prompts(tiny_tokenizer)
    config = GenerationConfig(max_new_tokens=8, temperature=1.0, seed=7)
    first = generate(tiny_model, tiny_tokenizer, prompts, config)
    assert first == generate(tiny_model, tiny_tokenizer, prompts, config)


def test_progress_callback_counts_every_prompt(tiny_model, tiny_tokenizer):
    seen = []
    generate(
        tiny_model,
        tiny_tokenizer,
        _prompts(tiny_tokenizer),
        GenerationConfig(max_new_tokens=2, batch_size=2),
        on_batch=seen.append,
    )
    assert seen == [2, 1]


def test_cut_at_first_stop_string():
    assert cut_at_stop("answer\nQ: next", ("\nQ:", "###")) == "answer"
    assert cut_at_stop("a ### b \nQ:", ("\nQ:", "###")) == "a "
    assert cut_at_stop("plain", ()) == "plain"


SYSTEM = "You sort support messages into billing or login. Answer with one word."
QUESTIONS = ["hi", "card charged twice please help", "cannot sign in", "refund", "locked out"]


def _varied_tiny_model(tokenizer):
    """The tiny model with larger random weights, so its greedy answers differ by input (at
    the default init every input gets the same repeated token, and any bug would pass)."""
    from tunelab.testing import make_tiny_model

    model = make_tiny_model(tokenizer)
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0, 0.25)
    return model


def _adapted(method: str, tokenizer):
    """The model as evaluation calls it after training ``method`` (random adapter weights)."""
    from peft import (
        LoraConfig,
        PrefixTuningConfig,
        PromptEncoderConfig,
        PromptTuningConfig,
        TaskType,
        get_peft_model,
    )

    from tunelab.training.soft_prompt import inference_view

    model = _varied_tiny_model(tokenizer)
    configs = {
        "base": None,
        "lora": LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, init_lora_weights=False),
        "prompt-tuning": PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=5),
        "prefix-tuning": PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=5),
        "p-tuning": PromptEncoderConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=5, encoder_hidden_size=16
        ),
    }
    if configs[method] is None:
        return model
    model = get_peft_model(model, configs[method])
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.normal_(0, 0.5)
    return inference_view(model.eval())


@pytest.mark.parametrize("method", ["base", "lora", "prompt-tuning", "prefix-tuning", "p-tuning"])
def test_shared_prefix_batches_give_the_one_by_one_tokens(tiny_tokenizer, method):
    """The shared system prompt is encoded once and the rows are batched; every row's greedy
    tokens (up to its end of sequence) are those of the row generated alone."""
    model = _adapted(method, tiny_tokenizer)
    prompts = [
        tiny_tokenizer.apply_chat_template(
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for q in QUESTIONS
    ]
    encoded = [tiny_tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    assert SharedPrefix.of(model, encoded).length >= len(SYSTEM)  # the shared path is taken

    def upto_eos(ids):
        eos = tiny_tokenizer.eos_token_id
        return ids[: ids.index(eos) + 1] if eos in ids else ids

    batched = generate_ids(model, tiny_tokenizer, prompts, GenerationConfig(8, batch_size=3))
    alone = [generate_ids(model, tiny_tokenizer, [p], GenerationConfig(8))[0] for p in prompts]
    assert [upto_eos(ids) for ids in batched] == [upto_eos(ids) for ids in alone]
    assert len({tuple(ids) for ids in alone}) > 1  # the answers depend on the input
