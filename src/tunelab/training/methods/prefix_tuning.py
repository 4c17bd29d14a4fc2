"""Prefix tuning (Li & Liang, 2021): learned keys and values prepended in every layer.

Defaults: 20 virtual tokens, learning rate 1e-2, no reparameterisation. Li & Liang trained
the prefix through an MLP because direct optimisation was unstable at their rates; with AdamW
at 1e-2 the direct prefix trains stably on small decoders and has ~10x fewer trainable
parameters. ``projection=true`` restores the MLP (hidden size ``encoder_hidden``); it is used
only during training and folded away when the adapter is saved for inference.
"""

from pydantic import Field

from tunelab.training.methods import Method, MethodContext, MethodOptions


class PrefixTuningOptions(MethodOptions):
    virtual_tokens: int = Field(20, gt=0, description="prefix length in every layer")
    projection: bool = Field(False, description="train the prefix through an MLP")
    encoder_hidden: int = Field(512, gt=0, description="MLP hidden size when projection=true")


def apply(model, options: PrefixTuningOptions, context: MethodContext):
    from peft import PrefixTuningConfig, TaskType, get_peft_model

    config = PrefixTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=options.virtual_tokens,
        prefix_projection=options.projection,
        encoder_hidden_size=options.encoder_hidden,
    )
    return get_peft_model(model, config)


METHOD = Method(
    name="prefix-tuning",
    summary="learned key/value prefix in every layer",
    learning_rate=1e-2,
    options=PrefixTuningOptions,
    apply=apply,
    why="per-layer prefixes train directly at 1e-2 with AdamW; the MLP is optional",
    aliases=("prefix",),
)
