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

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tunelab.errors import TuneLabError, validation_message
from tunelab.paths import require_file
from tunelab.yaml_files import read_yaml

DEFAULT_TEMPLATE = "{{ input }}"
# The task instruction goes into the system message once, not into every few-shot turn.
CLASSIFY_INSTRUCTION = (
    "Classify the text into exactly one of these categories: {{ labels | join(', ') }}."
)
ANSWER_ONLY = "Answer with the category name only."
COT_ANSWER = (
    "Think step by step. Then write the final answer on its own last line, starting with 'Answer:'."
)

# Paraphrases used by `tunelab eval --consistency` when the user gives none.
PARAPHRASES_CLASSIFY = [
    "{{ input }}",
    "Message: {{ input }}\nCategory:",
    "Which category fits this message best?\n{{ input }}",
]
PARAPHRASES_FREE = [
    "{{ input }}",
    "Please respond to the following.\n\n{{ input }}",
    "Request: {{ input }}\nWrite the response.",
]


class PromptStrategy(BaseModel):
    """Everything that decides the prompt a model sees for one example."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("zero-shot", description="Label shown in reports.")
    system: str | None = Field(None, description="System/context text: persona, background.")
    instruction: str | None = Field(
        None,
        description="Task instruction (Jinja2, sees `labels`), placed in the system message "
        "after `system`. Default: for a label set, 'classify into one of <labels>'; an empty "
        "string means no instruction (trained models).",
    )
    template: str | None = Field(
        None,
        description="Jinja2 template of each user turn (query and shots); sees `input`, "
        "`labels` and every field of the record. Default: the input itself.",
    )
    shots: int = Field(0, ge=0, description="Number of worked examples placed before the query.")
    selector: Literal["fixed", "random", "similar"] = Field(
        "random", description="How shots are chosen: listed ids, seeded random, or nearest."
    )
    shot_ids: list[int] = Field(
        default_factory=list, description="Row indices of the training set, for selector=fixed."
    )
    knn_weight: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="Blend label answers with a vote of the retrieved shots (kNN-LM style): "
        "0 = the model alone, 1 = the shots' labels alone. Needs similar shots and label "
        "answers (label scoring or a classification head).",
    )
    knn_temperature: float = Field(
        0.02,
        gt=0.0,
        allow_inf_nan=False,
        description="Softmax temperature over the shots' cosine similarities in the vote; "
        "small values let the nearest shot carry it.",
    )
    cot: bool = Field(False, description="Ask for step-by-step reasoning, then a final answer.")
    constrain: str | dict | None = Field(
        None,
        description="Keep generated answers inside a grammar: 'json' (any JSON object), "
        "'regex:PATTERN', or a JSON schema (inline; a schema file path in experiment files "
        "and on the command line).",
    )

    @field_validator("template", "instruction")
    @classmethod
    def _template_compiles(cls, template: str | None) -> str | None:
        if template is not None:
            from tunelab.prompting.render import compile_template

            compile_template(template)
        return template

    @field_validator("constrain")
    @classmethod
    def _known_constraint(cls, value: str | dict | None) -> str | dict | None:
        return check_constraint_value(value)

    @model_validator(mode="after")
    def _grammar_leaves_room_for_reasoning(self) -> "PromptStrategy":
        if self.cot and self.constrain is not None:
            raise ValueError(
                "cot and constrain exclude each other: a grammar leaves no room for the "
                "reasoning and the final 'Answer:' line"
            )
        return self

    @model_validator(mode="after")
    def _vote_needs_neighbours(self) -> "PromptStrategy":
        if self.knn_weight and not self.similar_shots:
            raise ValueError(
                f"knn_weight {self.knn_weight:g} votes with the retrieved shots: it needs "
                "shots > 0 and selector similar (knn_weight 0 answers without the vote)"
            )
        return self

    @property
    def similar_shots(self) -> bool:
        """Whether its shots are retrieved per query (the only shots a retriever finds)."""
        return bool(self.shots) and self.selector == "similar"

    def resolved_template(self) -> str:
        return self.template or DEFAULT_TEMPLATE

    def resolved_instruction(self, classification: bool) -> str | None:
        """The instruction, with the answer-format sentence that suits labels and CoT."""
        default = CLASSIFY_INSTRUCTION if classification else None
        parts = [default if self.instruction is None else self.instruction]
        if self.cot:
            parts.append(COT_ANSWER)
        elif classification and self.instruction is None:
            parts.append(ANSWER_ONLY)
        return "\n".join(p for p in parts if p) or None


# Fields added after runs were stored: a stored strategy without one ran at its default, so
# resume checks and compare's cache keys compare them only where they are set.
LATER_FIELDS = ("knn_weight", "knn_temperature")


def with_later_fields(strategy: dict) -> dict:
    """A dumped strategy (a stored run's) with every later-added field it lacks at its
    default, and the vote's temperature at its default where no vote uses it."""
    fields = PromptStrategy.model_fields
    filled = {name: fields[name].default for name in LATER_FIELDS} | strategy
    if not filled["knn_weight"]:
        filled["knn_temperature"] = fields["knn_temperature"].default
    return filled


def without_later_fields(strategy: dict) -> dict:
    """A dumped strategy less the later-added fields that change nothing: at their defaults,
    or the temperature of no vote (compare's cache keys)."""
    fields = PromptStrategy.model_fields
    filled = with_later_fields(strategy)
    return {
        k: v for k, v in strategy.items() if k not in LATER_FIELDS or filled[k] != fields[k].default
    }


def check_constraint_value(value: str | dict | None) -> str | dict | None:
    """The stored form of a constraint: None, 'json', 'regex:PATTERN' or a JSON schema (a
    mapping). Only the form is checked here; decoding compiles it, and a schema or regex that
    cannot be compiled is refused there (tunelab.generation.constraints.Constraint.of)."""
    if value is None or value == "json" or isinstance(value, dict):
        return value
    if isinstance(value, str) and value.startswith("regex:"):
        return value
    raise ValueError(
        "use json, regex:PATTERN or an inline JSON schema (a schema file is named in an "
        "experiment's constrain: or with --constrain)"
    )


def load_strategy(path: Path) -> PromptStrategy:
    """Read a strategy from YAML or JSON, naming the file and field of any mistake."""
    require_file(path, "prompt strategy file")
    raw = read_yaml(path)
    raw = {} if raw is None else raw  # an empty file: the default strategy
    if not isinstance(raw, dict):
        raise TuneLabError(f"{path}: expected a mapping of strategy fields")
    raw.setdefault("name", path.stem)
    return validate_strategy(raw, where=f"{path}: field ")


def validate_strategy(raw: dict, where: str) -> PromptStrategy:
    """Build a strategy; each invalid field becomes one line ``<where><field>: <problem>``."""
    try:
        return PromptStrategy.model_validate(raw)
    except ValidationError as err:
        raise TuneLabError("\n".join(_problem(where, e) for e in err.errors())) from None


def _problem(where: str, error: dict) -> str:
    """One line per invalid field (an option's name when ``where`` is "--"); a rule across
    fields names the place only."""
    message = validation_message(error)
    field = ".".join(map(str, error["loc"]))
    if field:
        return f"{where}{field.replace('_', '-') if where == '--' else field}: {message}"
    return f"{where.removesuffix('field ').removesuffix('--')}{message}"
