"""Where a model runs and in which precision: one rule for every command.

``--device auto`` takes the GPU when PyTorch sees one (CUDA, else Apple's MPS), else the CPU;
``--dtype auto`` is bfloat16 on a GPU that supports it, float16 on one that does not, and
float32 on the CPU (half precision on a CPU is slow and, for float16, inaccurate, so it is
refused there). A request the machine cannot honour fails in one line before any model loads.
"""

import os
from dataclasses import dataclass

from tunelab.errors import TuneLabError

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Placement:
    device: str  # cpu | cuda | mps
    dtype: str  # float32 | bfloat16 | float16

    def record(self) -> dict:
        return {"device": self.device, "dtype": self.dtype}


def resolve_placement(
    device: str = "auto", dtype: str = "auto", *, names: tuple[str, str] = ("--device", "--dtype")
) -> Placement:
    """The device and dtype to use for ``--device``/``--dtype`` on this machine.

    ``names`` is how an error names the two settings (an experiment file's fields, say).
    """
    import torch

    device_name, dtype_name = names
    if device not in DEVICES:
        raise TuneLabError(f"{device_name} must be one of {', '.join(DEVICES)}, got {device!r}")
    if dtype not in DTYPES:
        raise TuneLabError(f"{dtype_name} must be one of {', '.join(DTYPES)}, got {dtype!r}")
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if device == "auto":
        device = "cuda" if cuda else "mps" if mps else "cpu"
    elif device == "cuda" and not cuda:
        raise TuneLabError(
            f"{device_name} cuda: no CUDA device is visible to PyTorch on this machine"
        )
    elif device == "mps" and not mps:
        raise TuneLabError(
            f"{device_name} mps: Apple's MPS backend is not available on this machine"
        )
    if dtype == "auto":
        dtype = _auto_dtype(device)
    elif device == "cpu" and dtype != "float32":
        raise TuneLabError(
            f"{dtype_name} {dtype} on the CPU: half precision is slow there and float16 "
            "inaccurate; use float32 (the default) or a GPU"
        )
    elif device == "cuda" and dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        raise TuneLabError(f"{dtype_name} bfloat16: this GPU does not support it; use float16")
    return Placement(device, dtype)


def process_device(device: str) -> str:
    """The torch device this process loads onto: under torchrun/accelerate each process
    takes its own GPU (``LOCAL_RANK``) instead of every one of them filling GPU 0."""
    local_rank = os.environ.get("LOCAL_RANK", "")
    return f"cuda:{local_rank}" if device == "cuda" and local_rank.isdigit() else device


def _auto_dtype(device: str) -> str:
    import torch

    if device == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if device == "mps":
        return "float16"
    return "float32"
