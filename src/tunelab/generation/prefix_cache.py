"""The KV cache of a token prefix many rows share, computed once and copied per batch.

Used by free generation (:mod:`tunelab.generation.batch`), label scoring and soft prompts:
a prompt start that every row has (system text, label list, fixed shots, virtual tokens) runs
through the model once, and each batch starts from a copy repeated to its size.
"""

import copy

import torch


def shared_prefix_length(ids: list[list[int]]) -> int:
    """Longest common token prefix, leaving every prompt at least one token of its own
    (a forward pass needs an uncached input)."""
    shortest = min(len(x) for x in ids)
    length = 0
    while length < shortest - 1 and all(x[length] == ids[0][length] for x in ids):
        length += 1
    return length


@torch.inference_mode()
def encode_prefix(model, prefix: list[int]):
    device = next(model.parameters()).device
    out = model(input_ids=torch.tensor([prefix], device=device), use_cache=True, logits_to_keep=1)
    return out.past_key_values


def repeat_cache(cache, batch_size: int):
    """A copy of a batch-of-one cache for ``batch_size`` rows (the original stays intact)."""
    copied = copy.deepcopy(cache)
    if batch_size > 1:
        copied.batch_repeat_interleave(batch_size)
    return copied
