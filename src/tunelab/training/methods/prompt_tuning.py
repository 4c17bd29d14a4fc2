"""Prompt tuning (Lester et al., 2021): only a few virtual token embeddings are learned.

Defaults: 20 virtual tokens, learning rate 3e-2 with AdamW, initialised from the class labels
(classification) or from an instruction text. Lester et al. trained with 0.3 under Adafactor;
with AdamW's normalised steps, rates between 1e-2 and 1e-1 train, the 1e-3..1e-4 rates of
weight fine-tuning leave the prompt where it started. Initialising from real token embeddings
(labels or text) keeps the prompt in the region of embedding space the model understands;
random vectors start far outside it and train slowly.

Batch size 2 by default (weight methods use 8): a soft prompt changes the model only through
a few thousand numbers, and on small data it is short of updates, not of examples per update.
On Banking77 (1,000 rows, 2 epochs; bench/RESULTS.md) batch 2 raised test accuracy from 0.293
to 0.340; batch 1, a 3x rate, 50 tokens and a text start did not beat it on dev (label start:
dev 0.38 after one epoch, text start 0.26). That is still below prefix tuning's 0.603: the
prompt enters at the input only and every frozen layer above decides what it means, which
limits small models (Liu et al., 2022); Lester et al. also trained for ~30,000 steps, not
1,000.
"""

from typing import Literal

import torch
from pydantic import Field

from tunelab.errors import TuneLabError
from tunelab.training.methods import Method, MethodContext, MethodOptions


class PromptTuningOptions(MethodOptions):
    virtual_tokens: int = Field(20, gt=0, description="length of the learned prompt")
    init: Literal["auto", "labels", "text", "vocab", "random"] = Field(
        "auto", description="auto: labels for classification, else text"
    )
    init_text: str | None = Field(None, description="text for init=text")


def apply(model, options: PromptTuningOptions, context: MethodContext):
    from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

    config = PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=options.virtual_tokens,
        prompt_tuning_init=PromptTuningInit.RANDOM,
    )
    peft_model = get_peft_model(model, config)
    init = options.init
    if init == "auto":
        init = "labels" if context.labels else "text"
    if init != "random":
        vectors = initial_vectors(model, context, init, options)
        embedding = peft_model.prompt_encoder[peft_model.active_adapter].embedding
        with torch.no_grad():
            embedding.weight.copy_(vectors.to(embedding.weight.dtype))
    return peft_model


def initial_vectors(model, context: MethodContext, init: str, options) -> torch.Tensor:
    """``virtual_tokens`` x hidden starting embeddings taken from real tokens.

    labels: the mean embedding of each class label's tokens, one label per virtual token
    (cycled when there are fewer labels than tokens); text: the tokens of ``init_text``,
    cycled to length; vocab: random vocabulary rows (seeded by the Trainer's seed).
    """
    table = model.get_input_embeddings().weight.detach()
    n = options.virtual_tokens
    tokenizer = context.tokenizer
    if init == "vocab":
        return table[torch.randint(0, table.shape[0], (n,))].clone()
    if init == "labels":
        if not context.labels:
            raise TuneLabError("--option init=labels needs a label set (classification data)")
        rows = [
            table[tokenizer(label, add_special_tokens=False)["input_ids"]].mean(0)
            for label in context.labels
        ]
        return torch.stack([rows[i % len(rows)] for i in range(n)])
    return table[context.init_text_ids(options.init_text, n)].clone()


METHOD = Method(
    name="prompt-tuning",
    summary="learned soft prompt of virtual token embeddings",
    learning_rate=3e-2,
    options=PromptTuningOptions,
    apply=apply,
    batch_size=2,
    why="soft prompts need rates ~100x LoRA's; label/text init starts inside embedding space",
    aliases=("prompt", "soft-prompt"),
)
