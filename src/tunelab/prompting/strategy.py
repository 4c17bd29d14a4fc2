"""A prompt strategy is a small, versionable file: template, system text, shots, CoT flag.

# tunelab eval --data train.csv --test test.csv --prompt this-file.yaml
name: support-agent
system: You are a support agent for Acme Bank.
template: "Customer message: {{ input }}"
shots: 4
selector: similar
"""

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tunelab.errors import TuneLabError

DEFAULT_TEMPLATE = "{{ input }}"
DEFAULT_CLASSIFY_TEMPLATE = (
    "Classify the text into exactly one of these categories:\n{{ labels | join(', ') }}\n\n"
    "Text: {{ input }}\nAnswer with the category name only."
)


class PromptStrategy(BaseModel):
    """Everything that decides the prompt a model sees for one example."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("zero-shot", description="Label shown in reports.")
    system: str | None = Field(None, description="System/context text: persona, background.")
    template: str | None = Field(
        None,
        description="Jinja2 template of the user turn; sees `input`, `labels` and every field "
        "of the record. Default: the input, or a classification instruction when the outputs "
        "are labels.",
    )
    shots: int = Field(0, ge=0, description="Number of worked examples placed before the query.")
    selector: Literal["fixed", "random", "similar"] = Field(
        "random", description="How shots are chosen: listed ids, seeded random, or nearest."
    )
    shot_ids: list[int] = Field(
        default_factory=list, description="Row indices of the training set, for selector=fixed."
    )
    cot: bool = Field(False, description="Ask for step-by-step reasoning, then a final answer.")

    @field_validator("template")
    @classmethod
    def _template_compiles(cls, template: str | None) -> str | None:
        if template is not None:
            from tunelab.prompting.render import compile_template

            compile_template(template)
        return template

    def resolved_template(self, classification: bool) -> str:
        if self.template:
            return self.template
        return DEFAULT_CLASSIFY_TEMPLATE if classification else DEFAULT_TEMPLATE


def load_strategy(path: Path) -> PromptStrategy:
    """Read a strategy from YAML or JSON, naming the file and field of any mistake."""
    if not path.is_file():
        raise TuneLabError(f"{path}: no such prompt strategy file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise TuneLabError(f"{path}: not valid YAML/JSON ({err})") from None
    if not isinstance(raw, dict):
        raise TuneLabError(f"{path}: expected a mapping of strategy fields")
    raw.setdefault("name", path.stem)
    try:
        return PromptStrategy.model_validate(raw)
    except ValidationError as err:
        problems = [
            f"{path}: field {'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}"
            for e in err.errors()
        ]
        raise TuneLabError("\n".join(problems)) from None
