"""Several LoRA adapters in one batch, each row its own, in two matrix products per layer.

PEFT's mixed-adapter batches (``adapter_names``) split every LoRA layer's input into one
sub-batch per adapter (a gather, two products, a scatter each), through a forward hook per
layer per step; on a CPU that costs a third of the decoding speed of a batch with one adapter
set (bench/RESULTS.md). Here each LoRA layer computes every adapter at once instead: its
adapters' A matrices stacked, ``h = x @ [A_1; A_2; ...]^T``, a per-row mask that keeps each
row's own adapter's block (scaled by that adapter's ``alpha / r``) and zeros the others, then
``h @ [B_1, B_2, ...]^T`` added to the frozen layer's output. A row for the base model has an
all-zero mask. The result equals PEFT's per-row adapters up to float rounding.

Only plain LoRA is fused (no DoRA or other variants, no LoRA bias, no embedding or
convolution layers, no ``modules_to_save`` or trainable-token wrappers, which would answer
every row with the active adapter); anything else returns None and the caller keeps PEFT's own
path. The override is for the one thread that runs the model (the engine's worker).
"""

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F


def fusable_layers(module) -> list | None:
    """The model's LoRA linear layers, when every one of them can be fused; else None."""
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
        from peft.tuners.lora.layer import LoraLayer
        from peft.utils.other import AuxiliaryTrainingWrapper
    except ImportError:
        return None
    modules = list(module.modules())
    if any(isinstance(m, AuxiliaryTrainingWrapper) for m in modules):
        return None  # modules_to_save / trainable tokens: per-row adapters need PEFT's hooks
    layers = [m for m in modules if isinstance(m, LoraLayer)]
    if not layers or any(type(m) is not LoraLinear or m.lora_variant for m in layers):
        return None
    for layer in layers:
        if layer.merged or any(getattr(layer, "use_dora", {}).values()):
            return None
        if any(getattr(layer, "lora_bias", {}).values()):
            return None
    return layers


@contextlib.contextmanager
def fused_adapters(layers: list, adapter_names: list[str]) -> Iterator[None]:
    """While inside, every layer in ``layers`` answers row i with ``adapter_names[i]`` (an
    unknown name, such as PEFT's ``__base__``, means no adapter for that row)."""
    masks: dict[tuple, torch.Tensor] = {}  # layers with the same adapters share a mask
    wanted = set(adapter_names)
    try:
        for layer in layers:
            names = tuple(name for name in layer.lora_A if name in wanted)
            weight = layer.lora_A[names[0]].weight if names else None
            blocks = tuple((n, layer.lora_A[n].weight.shape[0], layer.scaling[n]) for n in names)
            key = (blocks, None if weight is None else (weight.dtype, weight.device))
            if key not in masks:
                masks[key] = _row_mask(blocks, adapter_names, weight)
            layer.forward = _fused_forward(layer, names, masks[key])
        yield
    finally:
        for layer in layers:
            vars(layer).pop("forward", None)  # back to the class's own forward


def _row_mask(adapters: tuple, adapter_names: list[str], like: torch.Tensor | None):
    """(rows, 1, sum of ranks): row i carries its adapter's scaling on that adapter's block."""
    if like is None:
        return None
    width = sum(rank for _, rank, _ in adapters)
    mask = torch.zeros(len(adapter_names), 1, width, dtype=like.dtype, device=like.device)
    start = 0
    for name, rank, scaling in adapters:
        rows = [i for i, own in enumerate(adapter_names) if own == name]
        mask[rows, :, start : start + rank] = scaling
        start += rank
    return mask


def _fused_forward(layer, names: tuple[str, ...], mask):
    if not names:  # no row in this batch uses this layer's adapters
        return lambda x, *args, **kwargs: layer.base_layer(x, *args, **kwargs)
    a = torch.cat([layer.lora_A[n].weight for n in names])  # (sum of ranks, in)
    b = torch.cat([layer.lora_B[n].weight for n in names], dim=1)  # (out, sum of ranks)

    rows = mask.shape[0]

    def forward(x, *args, **kwargs):
        result = layer.base_layer(x, *args, **kwargs)
        if layer.disable_adapters:
            return result
        h = F.linear(x.to(a.dtype), a)
        if h.dim() == 3 and h.shape[0] == rows:
            h = h * mask
        elif h.dim() == 2 and h.shape[0] % rows == 0:  # (rows * tokens, rank): rows in order
            h = (h.view(rows, -1, h.shape[-1]) * mask).view(h.shape)
        else:
            raise RuntimeError(f"fused LoRA: input of shape {tuple(x.shape)} for {rows} rows")
        return result + F.linear(h, b).to(result.dtype)

    return forward
