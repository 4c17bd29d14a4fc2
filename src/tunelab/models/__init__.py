"""Base models: the embedded default, local Hugging Face folders and hub ids."""

from tunelab.models.loading import LoadedModel, load_model, load_tokenizer
from tunelab.models.registry import DEFAULT_MODEL, ModelSource, list_models, resolve_model

__all__ = [
    "DEFAULT_MODEL",
    "LoadedModel",
    "ModelSource",
    "list_models",
    "load_model",
    "load_tokenizer",
    "resolve_model",
]
