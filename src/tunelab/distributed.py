"""Process-group helpers for runs launched by torchrun / accelerate (DDP, FSDP, DeepSpeed).

TuneLab never starts processes or a process group itself: the launcher sets RANK and
WORLD_SIZE and the HF Trainer initialises the group. These helpers only ask who we are, let
the main process do the writing, and shard and gather evaluation work.
"""

import os

import torch.distributed as dist


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else _env("RANK", 0)


def world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return _env("WORLD_SIZE", 1)


def is_main() -> bool:
    return rank() == 0


def launched() -> bool:
    """True inside a process started by a distributed launcher."""
    return "LOCAL_RANK" in os.environ or _env("WORLD_SIZE", 1) > 1


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def gather(value) -> list:
    """Every process's ``value``, in rank order (a one-item list when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def shard(items: list) -> list:
    """This process's share: every ``world_size``-th item from its rank on."""
    return items[rank() :: world_size()]


def unshard(parts: list[list]) -> list:
    """Undo `shard` on the gathered parts, restoring the original order."""
    total = sum(len(p) for p in parts)
    ordered = [None] * total
    for index, part in enumerate(parts):
        ordered[index :: len(parts)] = part
    return ordered


def _env(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value and value.isdigit() else default
