"""P-tuning (Liu et al., 2021): a small prompt encoder (MLP or LSTM) produces the soft prompt.

Defaults: 20 virtual tokens, an MLP encoder with hidden size 128, learning rate 3e-3. The
encoder couples the virtual tokens, which makes optimisation smoother than free embeddings, so
it tolerates a lower rate than prompt tuning; the encoder only runs once per forward pass and
is evaluated once to a fixed prompt at inference.

Batch size 2 by default (weight methods use 8): a soft prompt changes the model only through
a few thousand numbers, and on small data it is short of updates, not of examples per update.
On Banking77 (1,000 rows, 2 epochs) prefix tuning went from 0.363 test accuracy at batch 8
(250 steps) to 0.503 at batch 2 (1,000 steps) at the same rate (bench/RESULTS.md).
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
    batch_size=2,
    why="the encoder smooths optimisation, so a lower rate than prompt tuning suffices",
    aliases=("ptuning", "prompt-encoder"),
)
