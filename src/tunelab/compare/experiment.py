"""The experiment file: one dataset, one model, many strategies, all on the same splits.

    name: tech-support
    data: {train: train.jsonl, test: test.jsonl, input: question, output: answer}
    task_prefix: "[TECH_SUPPORT]"
    metrics: [rouge_l, embedding_similarity, checklist]
    strategies:
      - {name: base, prompt: {}}
      - {name: few-shot, prompt: {shots: 3, selector: similar}}
      - {name: refined, optimize: {budget: 8}}
      - {name: lora, train: {method: lora, epochs: 8}}
      - {name: lora-refined, train: {method: lora}, prompt_from: refined}

Relative paths are relative to the experiment file, so an example folder runs from anywhere.
"""

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunelab.errors import TuneLabError
from tunelab.models import DEFAULT_MODEL
from tunelab.prompting.strategy import PromptStrategy
from tunelab.training.config import TrainSettings

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(Strict):
    train: Path
    test: Path | None = Field(None, description="held-out test file; default: a split of train")
    dev: Path | None = Field(None, description="dev file for training/optimisation")
    input: str | None = None
    output: str | None = None
    test_size: float = Field(0.2, gt=0, lt=1, description="share of train held out without test")
    dev_size: float = Field(
        0.0, ge=0, lt=1, description="share of train used as dev by training methods (0: none)"
    )
    labels: str = "auto"


class EvalSpec(Strict):
    mode: Literal["auto", "score", "generate"] = "auto"
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(8, ge=1)
    checklist_field: str | None = Field(
        None, description="test field listing required phrases, separated by ';'"
    )


class TrainSpec(TrainSettings):
    """`tunelab train` settings; task prefix and seed default to the experiment's."""

    @model_validator(mode="after")
    def _known_method(self) -> "TrainSpec":
        from tunelab.training.methods import get_method

        try:
            get_method(self.method).parse_options(self.options)
        except TuneLabError as err:
            raise ValueError(str(err).replace("--option ", "options.")) from None
        return self


class OptimizeSpec(Strict):
    """`tunelab optimize` settings (same set-up: tunelab.optimize.run.search_setup)."""

    budget: int = Field(12, ge=1)
    width: int = Field(1, ge=1)
    operators: list[str] | None = Field(None, description="edit operators; default all")
    max_shots: int = Field(4, ge=0)
    llm: int = Field(0, ge=0, description="instructions the LLM writer proposes per round")
    race: int = Field(0, ge=0)
    dev_rows: float = Field(0.3, gt=0)
    proposer_url: str | None = Field(
        None, description="OpenAI-compatible endpoint for the writer; default the local model"
    )
    proposer_model: str = "gpt-4o-mini"
    proposer_key_env: str = "OPENAI_API_KEY"

    @field_validator("operators")
    @classmethod
    def _known_operators(cls, operators: list[str] | None) -> list[str] | None:
        from tunelab.optimize.edits import OPERATORS

        unknown = [name for name in operators or [] if name not in OPERATORS]
        if unknown:
            raise ValueError(f"unknown {', '.join(unknown)}; choose from {', '.join(OPERATORS)}")
        return operators

    def search_options(self):
        from tunelab.optimize.run import SearchOptions

        values = self.model_dump()
        values["operators"] = tuple(self.operators) if self.operators is not None else None
        return SearchOptions(**values)


class StrategySpec(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    prompt: PromptStrategy | None = Field(None, description="inline prompt strategy fields")
    prompt_file: Path | None = Field(None, description="a prompt strategy file instead")
    train: TrainSpec | None = None
    optimize: OptimizeSpec | None = None
    prompt_from: str | None = Field(None, description="use another strategy's (refined) prompt")

    @model_validator(mode="after")
    def _one_kind(self) -> "StrategySpec":
        if self.train and self.optimize:
            raise ValueError("a strategy either trains or optimises a prompt, not both")
        sources = [self.prompt is not None, self.prompt_file is not None, bool(self.prompt_from)]
        if sum(sources) > 1:
            raise ValueError("give at most one of prompt, prompt_file and prompt_from")
        if not any(sources) and not self.train and not self.optimize:
            raise ValueError("give prompt, prompt_file, prompt_from, train or optimize")
        return self

    @property
    def kind(self) -> str:
        return "train" if self.train else "optimize" if self.optimize else "prompt"


class Experiment(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    data: DataSpec
    model: str = DEFAULT_MODEL
    task_prefix: str | None = None
    seed: int = 0
    metrics: list[str] = Field(
        default_factory=list, description="first = headline; default accuracy / rouge_l"
    )
    eval: EvalSpec = EvalSpec()
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto", description="where every strategy runs (--device overrides)"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="precision of every strategy's model (--dtype overrides)"
    )
    prefer: Literal["serving", "adaptation"] | None = Field(
        None,
        description="which cost decides among strategies as good as the best: serving (time "
        "and prompt tokens per answer) or adaptation (trainable parameters, training time); "
        "default: both readings",
    )
    strategies: list[StrategySpec] = Field(min_length=1)

    @field_validator("strategies")
    @classmethod
    def _unique_names(cls, strategies: list[StrategySpec]) -> list[StrategySpec]:
        names = [s.name for s in strategies]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"strategy names must be unique; repeated: {', '.join(repeated)}")
        for index, strategy in enumerate(strategies):
            if strategy.prompt_from and strategy.prompt_from not in names[:index]:
                raise ValueError(
                    f"{strategy.name}: prompt_from {strategy.prompt_from!r} must name a strategy "
                    "listed before it"
                )
        return strategies

    def strategy(self, name: str) -> StrategySpec:
        return next(s for s in self.strategies if s.name == name)


def load_experiment(path: Path) -> Experiment:
    """Read and validate; every problem is one line ``file: field.path: message``."""
    if not path.is_file():
        raise TuneLabError(f"{path}: no such experiment file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" line {where.line + 1}" if where else ""
        raise TuneLabError(
            f"{path}:{line} not valid YAML ({getattr(err, 'problem', err)})"
        ) from None
    if not isinstance(raw, dict):
        raise TuneLabError(f"{path}: expected a mapping with name, data and strategies")
    try:
        experiment = Experiment.model_validate(raw)
    except ValidationError as err:
        tree = yaml.compose(path.read_text(encoding="utf-8"))
        lines = [
            f"{path}:{_line_of(tree, e['loc'])}: {_location(e['loc'], raw)}: {_message(e)}"
            for e in err.errors()
        ]
        raise TuneLabError("\n".join(lines)) from None
    return _with_paths_resolved(experiment, path.parent)


def _location(loc: tuple, raw: dict) -> str:
    """``strategies[2](lora).train.lr`` — the index and the strategy's name, when it has one."""
    parts, node = [], raw
    for key in loc:
        if isinstance(key, int):
            item = node[key] if _has(node, key) else None
            name = item.get("name") if isinstance(item, dict) else None
            parts[-1] += f"[{key}]" + (f"({name})" if name else "")
        else:
            parts.append(str(key))
        node = node[key] if isinstance(node, (dict, list)) and _has(node, key) else None
    return ".".join(parts) or "(top)"


def _line_of(node, loc: tuple) -> int:
    """1-based line of the deepest YAML node on the error's path."""
    line = node.start_mark.line + 1
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            found = [v for k, v in node.value if k.value == key]
            if not found:
                break
            node = found[0]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            break
        line = node.start_mark.line + 1
    return line


def _has(node, key) -> bool:
    return (isinstance(node, dict) and key in node) or (
        isinstance(node, list) and isinstance(key, int) and key < len(node)
    )


def _message(error: dict) -> str:
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return "unknown field"
    return message


def _with_paths_resolved(experiment: Experiment, base: Path) -> Experiment:
    def resolve(path: Path | None) -> Path | None:
        return path if path is None or path.is_absolute() else base / path

    data = experiment.data.model_copy(
        update={name: resolve(getattr(experiment.data, name)) for name in ("train", "test", "dev")}
    )
    strategies = [
        s.model_copy(update={"prompt_file": resolve(s.prompt_file)}) for s in experiment.strategies
    ]
    return experiment.model_copy(update={"data": data, "strategies": strategies})
