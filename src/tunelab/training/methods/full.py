"""Full fine-tuning: every weight is trained.

Default learning rate 5e-5: the usual AdamW rate for fine-tuning a small pretrained decoder;
much higher rates (≥ 3e-4) make a 135M model forget its chat behaviour within an epoch.
"""

from tunelab.training.methods import Method, MethodContext, MethodOptions


class FullOptions(MethodOptions):
    pass


def apply(model, options: FullOptions, context: MethodContext):
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


METHOD = Method(
    name="full",
    summary="all weights trained",
    learning_rate=5e-5,
    options=FullOptions,
    apply=apply,
    why="standard AdamW fine-tuning rate; higher rates erase the chat behaviour",
    aliases=("full-finetune", "fft"),
)
