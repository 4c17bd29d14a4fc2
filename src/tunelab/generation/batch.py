"""Offline batched generation (eval, compare, optimize): left padding, KV cache, greedy or
seeded sampling, stop strings, and the prompt prefix every row shares encoded once.

Evaluation prompts mostly share a long start (system text, label list, fixed shots: 500+
tokens on Banking77) and differ only in the last few dozen tokens. That common start is run
through the model once; each batch then starts from a copy of its KV cache and encodes only
its rows' own suffixes. A row's layout is ``[shared prefix][padding][own suffix]`` with the
padding masked out, so every real token keeps the position it has when the row is encoded
alone (positions follow the attention mask).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from tunelab.generation.constraints import Constraint, grammar_processors
from tunelab.generation.prefix_cache import encode_prefix, repeat_cache, shared_prefix_length
from tunelab.prompting.render import encode_prompts

# Below this many shared tokens the extra forward pass is not worth it.
MIN_SHARED_TOKENS = 16


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 32
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    batch_size: int = 8
    share_prefix: bool = True  # False: every row encodes its whole prompt (for comparisons)
    constraint: Constraint | None = None  # every answer kept inside this grammar


def generate(
    model,
    tokenizer,
    prompts: list[str],
    config: GenerationConfig = GenerationConfig(),
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Complete every prompt; returns the new text only, cut at the first stop string."""
    new_tokens = generate_ids(model, tokenizer, prompts, config, on_batch)
    texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return [cut_at_stop(text, config.stop).strip() for text in texts]


def generate_ids(
    model,
    tokenizer,
    prompts: list[str],
    config: GenerationConfig = GenerationConfig(),
    on_batch: Callable[[int], None] | None = None,
) -> list[list[int]]:
    """The new token ids of every prompt, in the caller's order (padding after an end of
    sequence included, as ``generate`` returns it).

    Prompts are sorted by length before batching, so each batch pads little.
    """
    encoded = encode_prompts(tokenizer, prompts)
    shared = SharedPrefix.of(model, encoded) if config.share_prefix else SharedPrefix([])
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    outputs: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), config.batch_size):
        batch = order[start : start + config.batch_size]
        rows = [encoded[i][shared.length :] for i in batch]
        new_tokens = _generate_batch(model, tokenizer, rows, shared, config, config.seed + start)
        for index, ids in zip(batch, new_tokens.tolist(), strict=True):
            outputs[index] = ids
        if on_batch:
            on_batch(len(batch))
    return outputs


@dataclass
class SharedPrefix:
    """The token prefix every prompt starts with, and its KV cache (none when too short).

    The model may be a soft-prompt view (:class:`~tunelab.training.soft_prompt.SoftPromptLM`):
    its forward puts the virtual prefix first, so the cache then covers virtual tokens and the
    shared prefix, and generation continues on the frozen base model behind it.
    """

    ids: list[int]
    cache: object = None
    cached_positions: int = 0  # virtual tokens + shared prompt tokens the cache covers

    @property
    def length(self) -> int:
        return len(self.ids) if self.cache is not None else 0

    @classmethod
    def of(cls, model, encoded: list[list[int]]) -> "SharedPrefix":
        length = shared_prefix_length(encoded) if len(encoded) > 1 else 0
        if length < MIN_SHARED_TOKENS:
            return cls([])
        cache = encode_prefix(model, encoded[0][:length])
        return cls(encoded[0][:length], cache, cache.get_seq_length())


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def _generate_batch(model, tokenizer, rows, shared: SharedPrefix, config, seed: int):
    """New token ids for each row (prompt tokens, cached or not, stripped)."""
    device = _device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    kwargs = {}
    target = model
    if shared.cache is not None:
        # Placeholder ids stand for the cached positions; they are never embedded.
        batch, cached = len(rows), shared.cached_positions
        ids = torch.cat([ids.new_full((batch, cached), pad), ids], dim=1)
        mask = torch.cat([mask.new_ones(batch, cached), mask], dim=1)
        kwargs["past_key_values"] = repeat_cache(shared.cache, batch)
        target = getattr(model, "base_model", model) if hasattr(model, "prefix_cache") else model
    sampling = config.temperature > 0
    if sampling:
        kwargs.update(temperature=config.temperature, top_p=config.top_p)
        torch.manual_seed(seed)
    if config.stop:
        kwargs.update(stop_strings=list(config.stop), tokenizer=tokenizer)
    processors, options = grammar_processors(
        tokenizer, [config.constraint] * len(rows), [tokenizer.eos_token_id],
        config.temperature, config.top_p, budgets=[config.max_new_tokens] * len(rows),
    )  # fmt: skip
    kwargs.update(options, logits_processor=processors)
    generated = target.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=config.max_new_tokens,
        do_sample=sampling,
        top_k=None,
        pad_token_id=pad,
        eos_token_id=tokenizer.eos_token_id,
        use_cache=True,
        **kwargs,
    )
    return generated[:, ids.shape[1] :]


def cut_at_stop(text: str, stops: tuple[str, ...]) -> str:
    cut = min((text.find(s) for s in stops if s and s in text), default=-1)
    return text if cut < 0 else text[:cut]
