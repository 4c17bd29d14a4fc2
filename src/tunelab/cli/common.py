"""Option parsing shared by the commands that read a dataset or load a model."""

import typer

from tunelab.data.stats import looks_like_classification
from tunelab.errors import TuneLabError


def choice(option: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise TuneLabError(f"{option} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def resolve_labels(option: str, train) -> list[str] | None:
    """``auto``: the sorted outputs when they look like labels; ``none``; or a listed set."""
    if option == "none":
        return None
    if option == "auto":
        return sorted({e.output for e in train}) if looks_like_classification(train) else None
    chosen = [label.strip() for label in option.split(",") if label.strip()]
    if not chosen:
        raise TuneLabError("--labels: the label list is empty")
    return chosen


DEVICE_HELP = "auto (a GPU when PyTorch sees one, else the CPU) | cpu | cuda | mps."
DTYPE_HELP = "auto (bfloat16 on a GPU, float16 where bf16 is unsupported; float32 on CPU)."


def device_option(default: str = "auto"):
    return typer.Option(default, help=DEVICE_HELP)


def dtype_option(default: str = "auto"):
    return typer.Option(default, help=DTYPE_HELP + " | float32 | bfloat16 | float16")
