"""Describe a model without loading its weights (the parameter count comes from a meta model)."""

from tunelab.models.loading import explain_load_errors, hub_options, load_tokenizer
from tunelab.models.registry import resolve_model


def describe_model(name: str) -> dict[str, object]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    source = resolve_model(name)
    with explain_load_errors(source):
        config = AutoConfig.from_pretrained(source.location, **hub_options(source))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    tokenizer = load_tokenizer(source)
    return {
        "name": name,
        "source": f"{source.kind}: {source.location}",
        "cache path": source.cache_path or "(not cached by TuneLab)",
        "architecture": ", ".join(config.architectures or [type(model).__name__]),
        "parameters": f"{count_parameters(model):,}",
        "layers": getattr(config, "num_hidden_layers", "?"),
        "hidden size": getattr(config, "hidden_size", "?"),
        "vocabulary": len(tokenizer),
        "context length": getattr(config, "max_position_embeddings", "?"),
        "chat template": "yes" if tokenizer.chat_template else "no",
    }


def count_parameters(model) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())
