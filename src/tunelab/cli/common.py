"""Option parsing shared by the commands that read a dataset."""

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
