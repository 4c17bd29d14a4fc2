from tunelab.evaluation.generation import GenerationConfig, cut_at_stop, generate


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
