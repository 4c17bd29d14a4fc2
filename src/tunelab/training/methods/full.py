"""Full fine-tuning: every weight is trained.

Default learning rate 1e-4: twice the usual 5e-5 of fine-tuning recipes, because TuneLab's
runs are short (a few hundred steps) and LoRA's search on Banking77 showed conventional rates
under-train there; rates of 3e-4 and more risk erasing the chat behaviour of a small model.
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
    learning_rate=1e-4,
    options=FullOptions,
    apply=apply,
    why="2x the usual rate for short runs; >=3e-4 erases the chat behaviour",
    aliases=("full-finetune", "fft"),
)
