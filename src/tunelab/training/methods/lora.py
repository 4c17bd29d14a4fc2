"""LoRA (Hu et al., 2021): trainable low-rank updates beside frozen linear layers.

Defaults: rank 16, alpha 32, every linear layer of the blocks ("all-linear"), learning rate
2e-3. Adapting all linear layers rather than only q/v is what QLoRA showed matters most at
small ranks. The rate is higher than the usual 2e-4..5e-4 of large-model recipes because the
runs TuneLab targets are short (a few hundred steps): on Banking77 (1,000 rows, 2 epochs,
250 steps) 5e-4 was still far from converged (dev accuracy 0.76, test 0.683) where 2e-3
reached dev 0.88, test 0.753 (bench/RESULTS.md).
"""

from pydantic import Field

from tunelab.errors import TuneLabError
from tunelab.training.methods import Method, MethodContext, MethodOptions, check_size


class LoraOptions(MethodOptions):
    r: int = Field(16, gt=0, description="rank of the update, at most the hidden size")
    alpha: float = Field(32, gt=0, description="scale: the update is multiplied by alpha / r")
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | str = Field(
        "all-linear", description="module names to adapt, or 'all-linear'"
    )


def apply(model, options: LoraOptions, context: MethodContext):
    from peft import LoraConfig, TaskType, get_peft_model

    hidden = model.config.hidden_size  # a rank above a layer's width adds no capacity
    check_size("r", options.r, hidden, f"the hidden size is {hidden}")
    targets = options.target_modules
    if isinstance(targets, str) and targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    if isinstance(targets, list):
        _check_targets_exist(model, targets)
    config = LoraConfig(
        # SEQ_CLS also trains (and saves) the classification head in full
        task_type=TaskType.SEQ_CLS if context.head == "classifier" else TaskType.CAUSAL_LM,
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=targets,
    )
    return get_peft_model(model, config)


def _check_targets_exist(model, targets: list[str]) -> None:
    import torch

    linear = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }
    missing = [t for t in targets if t not in linear]
    if missing:
        raise TuneLabError(
            f"--option target_modules: {', '.join(missing)} not in the model; "
            f"its linear layers are: {', '.join(sorted(linear))}"
        )


METHOD = Method(
    name="lora",
    summary="low-rank updates to every linear layer",
    learning_rate=2e-3,
    options=LoraOptions,
    apply=apply,
    why="rank 16 on all linear layers; short runs need a high rate (5e-4 under-trains)",
)
