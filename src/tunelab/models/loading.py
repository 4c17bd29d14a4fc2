"""Load a resolved model and its tokenizer, with errors a user can act on."""

from dataclasses import dataclass
from typing import Any

from tunelab.errors import TuneLabError
from tunelab.models.device import process_device
from tunelab.models.registry import ModelSource, hub_offline, resolve_model


@dataclass
class LoadedModel:
    source: ModelSource
    model: Any  # transformers PreTrainedModel
    tokenizer: Any  # transformers PreTrainedTokenizerBase


def load_tokenizer(source: ModelSource):
    from transformers import AutoTokenizer

    with explain_load_errors(source):
        tokenizer = AutoTokenizer.from_pretrained(source.location, **hub_options(source))
    if tokenizer.pad_token is None:
        # Padding positions are masked out everywhere, so reusing EOS is safe.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str, *, device: str = "cpu", dtype: str = "float32") -> LoadedModel:
    """Resolve ``name`` and load the causal LM and its tokenizer in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    source = resolve_model(name)
    tokenizer = load_tokenizer(source)
    with explain_load_errors(source):
        model = AutoModelForCausalLM.from_pretrained(
            source.location, dtype=getattr(torch, dtype), **hub_options(source)
        )
    model.to(process_device(device)).eval()
    return LoadedModel(source=source, model=model, tokenizer=tokenizer)


def hub_options(source: ModelSource) -> dict:
    """Offline, only the local hub cache is tried (no minute-long network retries)."""
    return {"local_files_only": True} if source.kind == "hub" and hub_offline() else {}


class explain_load_errors:
    """Turn the hub's network/offline exceptions into one clear sentence."""

    def __init__(self, source: ModelSource):
        self.source = source

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or not isinstance(exc, OSError | ValueError):
            return False
        if self.source.kind == "hub":
            why = "HF_HUB_OFFLINE is set" if hub_offline() else "the hub could not be reached"
            raise TuneLabError(
                f"cannot load {self.source.name!r} from the Hugging Face hub ({why}); "
                "use a registered model (tunelab models list) or a local model folder"
            ) from None
        raise TuneLabError(f"cannot load model {self.source.name!r}: {exc}") from None
