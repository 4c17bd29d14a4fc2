"""P-tuning (Liu et al., 2021): a small prompt encoder (MLP or LSTM) produces the soft prompt.

Defaults: 20 virtual tokens, an MLP encoder with hidden size 128, learning rate 3e-3. The
encoder couples the virtual tokens, which makes optimisation smoother than free embeddings, so
it tolerates a lower rate than prompt tuning; the encoder only runs once per forward pass and
is evaluated once to a fixed prompt at inference.
"""

from typing import Literal

from pydantic import Field

from tunelab.training.methods import Method, MethodContext, MethodOptions


class PTuningOptions(MethodOptions):
    virtual_tokens: int = Field(20, gt=0, description="length of the produced prompt")
    encoder: Literal["mlp", "lstm"] = Field("mlp", description="prompt encoder type")
    encoder_hidden: int = Field(128, gt=0, description="encoder hidden size")
    encoder_layers: int = Field(2, gt=0, description="layers of the encoder")
    encoder_dropout: float = Field(0.0, ge=0, lt=1)


def apply(model, options: PTuningOptions, context: MethodContext):
    from peft import PromptEncoderConfig, TaskType, get_peft_model

    config = PromptEncoderConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=options.virtual_tokens,
        encoder_reparameterization_type=options.encoder.upper(),
        encoder_hidden_size=options.encoder_hidden,
        encoder_num_layers=options.encoder_layers,
        encoder_dropout=options.encoder_dropout,
    )
    return get_peft_model(model, config)


METHOD = Method(
    name="p-tuning",
    summary="soft prompt produced by an MLP/LSTM prompt encoder",
    learning_rate=3e-3,
    options=PTuningOptions,
    apply=apply,
    why="the encoder smooths optimisation, so a lower rate than prompt tuning suffices",
    aliases=("ptuning", "prompt-encoder"),
)
