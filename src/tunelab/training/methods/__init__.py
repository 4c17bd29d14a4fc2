"""The registry of training methods. Adding a method = one module here + one line below.

A method turns a loaded base model into the model the Trainer optimises, and carries the
defaults that make it train well on small models (the learning rate above all: soft prompts
need one to three orders of magnitude more than weight updates).
"""

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from tunelab.errors import TuneLabError

DEFAULT_INIT_TEXT = "Read the input carefully and answer with the correct output."


class MethodOptions(BaseModel):
    """Base of each method's own options; unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # -o alpha=inf is a typo


def check_size(option: str, value: int, limit: int, why: str) -> None:
    """Refuse a size option above what the model can use, before anything is allocated
    (a typo such as ``r=100000000`` would otherwise ask for hundreds of GB)."""
    if value > limit:
        raise TuneLabError(f"--option {option}={value}: at most {limit} for this model ({why})")


# Beyond 16x the hidden size d, an MLP prompt encoder (~h^2 + 2hd parameters) outweighs ~24
# transformer blocks (~12d^2 each): about a whole small model, for a prompt of a few tokens.
ENCODER_WIDTH_FACTOR = 16


@dataclass
class MethodContext:
    """What a method may need besides the model: initialisation text comes from these."""

    tokenizer: Any
    labels: list[str] | None = None
    task_prefix: str | None = None
    head: str = "lm"  # "classifier": the model is a *ForSequenceClassification

    def init_text_ids(self, init_text: str | None, n: int) -> list[int]:
        """``n`` token ids of the initialisation text (``init_text``, else the task prefix,
        else a generic instruction), cycled to length: the real tokens a soft prompt or a
        prefix starts from."""
        text = init_text or self.task_prefix or DEFAULT_INIT_TEXT
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise TuneLabError("--option init_text: the text has no tokens")
        return [ids[i % len(ids)] for i in range(n)]


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    learning_rate: float  # default, documented in the method's module
    options: type[MethodOptions]
    apply: Any  # (model, options, context) -> trainable model
    why: str = ""  # one sentence on the defaults, shown by `tunelab methods`
    aliases: tuple[str, ...] = field(default=())
    batch_size: int = 8  # default; soft prompts gain from more, smaller updates

    def parse_options(self, raw: dict) -> MethodOptions:
        try:
            return self.options.model_validate(raw)
        except ValidationError as err:
            problems = [
                f"--option {'.'.join(map(str, e['loc'])) or '(top)'} ({self.name}): {e['msg']}"
                for e in err.errors()
            ]
            raise TuneLabError("\n".join(problems)) from None


def _registry() -> dict[str, Method]:
    from tunelab.training.methods import full, lora, p_tuning, prefix_tuning, prompt_tuning

    methods = [
        full.METHOD,
        lora.METHOD,
        prompt_tuning.METHOD,
        prefix_tuning.METHOD,
        p_tuning.METHOD,
    ]
    return {m.name: m for m in methods}


def all_methods() -> dict[str, Method]:
    return _registry()


def get_method(name: str) -> Method:
    methods = _registry()
    normalised = name.strip().lower().replace("_", "-")
    for method in methods.values():
        if normalised == method.name or normalised in method.aliases:
            return method
    raise TuneLabError(f"unknown method {name!r}; choose one of: {', '.join(methods)}")
