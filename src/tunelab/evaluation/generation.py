"""Batched text generation: left padding, KV cache, greedy or seeded sampling, stop strings."""

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 32
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    batch_size: int = 8


def generate(
    model,
    tokenizer,
    prompts: list[str],
    config: GenerationConfig = GenerationConfig(),
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Complete every prompt; returns the new text only, cut at the first stop string.

    Prompts are sorted by length before batching, so each batch pads little; the outputs come
    back in the caller's order.
    """
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    for start in range(0, len(order), config.batch_size):
        batch = order[start : start + config.batch_size]
        encoded = tokenizer(
            [prompts[i] for i in batch],
            return_tensors="pt",
            padding=True,
            padding_side="left",
            add_special_tokens=False,
        ).to(device)
        generated = _generate_batch(model, tokenizer, encoded, config, seed=config.seed + start)
        new_tokens = generated[:, encoded["input_ids"].shape[1] :]
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        for index, text in zip(batch, texts, strict=True):
            outputs[index] = cut_at_stop(text, config.stop).strip()
        if on_batch:
            on_batch(len(batch))
    return outputs


@torch.inference_mode()
def _generate_batch(model, tokenizer, encoded, config: GenerationConfig, seed: int):
    sampling = config.temperature > 0
    kwargs = {"temperature": config.temperature, "top_p": config.top_p} if sampling else {}
    if config.stop:
        kwargs.update(stop_strings=list(config.stop), tokenizer=tokenizer)
    if sampling:
        torch.manual_seed(seed)
    return model.generate(
        **encoded,
        max_new_tokens=config.max_new_tokens,
        do_sample=sampling,
        top_k=None,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        use_cache=True,
        **kwargs,
    )


def cut_at_stop(text: str, stops: tuple[str, ...]) -> str:
    cut = min((text.find(s) for s in stops if s and s in text), default=-1)
    return text if cut < 0 else text[:cut]
