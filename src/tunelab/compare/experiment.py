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

import json
from pathlib import Path
from typing import Literal, NoReturn

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunelab.errors import TuneLabError, validation_message
from tunelab.models import DEFAULT_MODEL
from tunelab.paths import require_file
from tunelab.prompting.shot_pool import SHOT_POOL_HELP
from tunelab.prompting.strategy import PromptStrategy
from tunelab.training.config import TrainSettings
from tunelab.training.search import SearchSettings
from tunelab.yaml_files import read_yaml

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
# what an experiment folder holds besides its strategies' folders (trackers included)
RESERVED_NAMES = {
    "experiment.json", "results.json", "progress.json", "leaderboard.md", "report.html",
    "tunelab-run.json", "mlflow.db", "mlartifacts", "tensorboard", "wandb",
}  # fmt: skip


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


DATA_FILES = ("train", "test", "dev", "shot_pool")  # the DataSpec fields that name files
DATA_FOLDERS = (*DATA_FILES, "retriever")  # ... and folders (paths relative to the experiment)


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
    shot_pool: Path | None = Field(
        None,
        description=SHOT_POOL_HELP + " Every strategy with shots uses it.",
    )
    retriever: Path | None = Field(
        None,
        description="a tuned retriever folder (`tunelab tune-retriever`): every strategy with "
        "similar shots retrieves them with it (training runs keep it)",
    )


class EvalSpec(Strict):
    mode: Literal["auto", "score", "generate"] = "auto"
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(8, ge=1)
    checklist_field: str | None = Field(
        None, description="test field listing required phrases, separated by ';'"
    )
    format_schema: Path | None = Field(
        None, description="JSON schema file every answer is checked against (json_valid)"
    )
    format_regex: str | None = Field(None, description="regex every answer must fully match")

    @field_validator("format_regex")
    @classmethod
    def _regex_compiles(cls, pattern: str | None) -> str | None:
        import re

        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"not a valid regex ({err})") from None
        return pattern


class TrainSpec(TrainSettings):
    """`tunelab train` settings; task prefix and seed default to the experiment's."""

    @model_validator(mode="after")
    def _known_method(self) -> "TrainSpec":
        from tunelab.training.methods import get_method

        try:
            method = get_method(self.method)
            method.parse_options(self.options)
        except TuneLabError as err:
            raise ValueError(str(err).replace("--option ", "options.")) from None
        if self.head == "classifier" and method.name not in ("lora", "full"):
            raise ValueError(f"head classifier trains with method lora or full, not {method.name}")
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
    run_from: str | None = Field(
        None, description="evaluate another training strategy's run again (e.g. constrained)"
    )
    search: SearchSettings | None = Field(
        None,
        description="tune the training settings first: {trials: N, space: {...}} (Optuna, "
        "scored on dev; the best trial is the strategy's run, and NAME-default is added to "
        "show the defaults beside it)",
    )
    trial: Literal["default"] | None = Field(
        None, description="with run_from on a searched strategy: evaluate its default trial"
    )
    constrain: str | dict | list[str | dict | None] | None = Field(
        None,
        description="constrained decoding: json | schema (eval.format_schema) | regex "
        "(eval.format_regex) | a schema file | regex:PATTERN | none; a list gives one "
        "leaderboard row per entry (NAME, then NAME-json ...) from one adaptation",
    )

    @field_validator("constrain", mode="before")
    @classmethod
    def _constraint_form(cls, value):
        entries = value if isinstance(value, list) else [value]
        if value is not None and not all(isinstance(e, str | dict) or e is None for e in entries):
            raise ValueError(
                "use json, schema, regex, regex:PATTERN, none or a schema file (or a list of them)"
            )
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> "StrategySpec":
        if self.train and self.optimize:
            raise ValueError("a strategy either trains or optimises a prompt, not both")
        if self.search and not self.train:
            raise ValueError("search tunes a training strategy's settings; add train: {...}")
        if self.search:
            from tunelab.training.search import resolve_space

            try:
                resolve_space(self.train, self.search)
            except TuneLabError as err:
                raise ValueError(str(err)) from None
        if self.trial and not self.run_from:
            raise ValueError("trial picks a trial of run_from's search; give run_from too")
        if self.run_from:
            others = (self.train, self.optimize, self.prompt, self.prompt_file, self.prompt_from,
                      self.search)  # fmt: skip
            if any(other is not None for other in others):
                raise ValueError("run_from re-evaluates a trained run; give only constrain")
            return self
        if isinstance(self.constrain, list) and not self.constrain:
            raise ValueError("constrain: give at least one value (none for unconstrained)")
        sources = [self.prompt is not None, self.prompt_file is not None, bool(self.prompt_from)]
        if sum(sources) > 1:
            raise ValueError("give at most one of prompt, prompt_file and prompt_from")
        if not any(sources) and not self.train and not self.optimize:
            raise ValueError("give prompt, prompt_file, prompt_from, train or optimize")
        return self

    @property
    def kind(self) -> str:
        if self.run_from:
            return "rerun"
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
    track: list[str] = Field(
        default_factory=list,
        description="trackers every strategy is logged to: mlflow, trackio, wandb, tensorboard "
        "(--track overrides)",
    )
    strategies: list[StrategySpec] = Field(min_length=1)

    @field_validator("track", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        return [value] if isinstance(value, str) else value

    @field_validator("track")
    @classmethod
    def _known_trackers(cls, names: list[str]) -> list[str]:
        from tunelab.tracking import TRACKERS

        unknown = [n for n in names if n not in TRACKERS]
        if unknown:
            raise ValueError(f"unknown tracker {unknown[0]!r}; choose from {', '.join(TRACKERS)}")
        return names

    @field_validator("strategies")
    @classmethod
    def _unique_names(cls, strategies: list[StrategySpec]) -> list[StrategySpec]:
        names = [s.name for s in strategies]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"strategy names must be unique; repeated: {', '.join(repeated)}")
        taken = [n for n in names if n.lower() in RESERVED_NAMES]
        if taken:
            raise ValueError(
                f"{taken[0]!r} is a name the experiment folder uses for its own files; "
                "rename the strategy"
            )
        for index, strategy in enumerate(strategies):
            for field_name in ("prompt_from", "run_from"):
                source = getattr(strategy, field_name)
                if source and source not in names[:index]:
                    raise ValueError(
                        f"{strategy.name}: {field_name} {source!r} must name a strategy "
                        "listed before it"
                    )
            if strategy.run_from and strategies[names.index(strategy.run_from)].kind != "train":
                raise ValueError(
                    f"{strategy.name}: run_from {strategy.run_from!r} must name a training strategy"
                )
            if strategy.trial and not strategies[names.index(strategy.run_from)].search:
                raise ValueError(
                    f"{strategy.name}: trial picks a trial of a search, and "
                    f"{strategy.run_from!r} has no search"
                )
        return strategies

    @model_validator(mode="after")
    def _searches_have_a_dev_split(self) -> "Experiment":
        searched = [s.name for s in self.strategies if s.search]
        if searched and self.data.dev is None and not self.data.dev_size:
            raise ValueError(
                f"{searched[0]}: a search scores its trials on a dev split; set data.dev or "
                "data.dev_size"
            )
        return self

    def strategy(self, name: str) -> StrategySpec:
        return next(s for s in self.strategies if s.name == name)


def load_experiment(path: Path, constrain: list[str] | None = None) -> Experiment:
    """Read and validate; every problem is one line ``file: field.path: message``.
    ``constrain`` (``--constrain``) adds, to every strategy, a row per value decoded that way
    from the same adaptation (``NAME-json`` ...); the file's own rows stay as they are."""
    require_file(path, "experiment file")
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise TuneLabError(f"{path}: expected a mapping with name, data and strategies")
    try:
        experiment = Experiment.model_validate(raw)
    except ValidationError as err:
        tree = yaml.compose(path.read_text(encoding="utf-8"))
        lines = [
            f"{path}:{_line_of(tree, e['loc'])}: {_location(e['loc'], raw)}: "
            + validation_message(e)
            for e in err.errors()
        ]
        raise TuneLabError("\n".join(lines)) from None
    experiment = _with_paths_resolved(experiment, path.parent)
    _check_files(experiment, path, raw)
    _check_shot_orders(experiment, path, raw)
    _check_search_starts(experiment, path, raw)
    # a schema file named on the command line is relative to where the command runs
    extra = [str(Path(v).resolve()) if Path(v).is_file() else v for v in constrain or []]
    return _with_constraints_expanded(experiment, path, raw, extra)


def _check_files(experiment: Experiment, path: Path, raw: dict) -> None:
    """Every file the experiment names is there, and its prompt files parse, before any
    strategy runs (not when its turn comes after hours of training); a problem names the
    experiment file's line."""
    from tunelab.generation.constraints import read_schema
    from tunelab.models.embeddings import embedder_choice
    from tunelab.prompting import load_strategy

    def fail(loc: tuple, problem: TuneLabError) -> NoReturn:
        raise _error_at(path, raw, loc, str(problem)) from None

    for role in DATA_FILES:
        file = getattr(experiment.data, role)
        if file is None:
            continue
        try:
            require_file(file, "data file")
        except TuneLabError as err:
            fail(("data", role), err)
    if experiment.data.retriever is not None:
        try:
            embedder_choice(str(experiment.data.retriever), "")
        except TuneLabError as err:
            fail(("data", "retriever"), err)
        searches = [spec.name for spec in experiment.strategies if spec.optimize is not None]
        if searches:  # its dev rows are carved from the training rows the retriever learned
            fail(("data", "retriever"), TuneLabError(
                f"prompt searches ({', '.join(searches)}) score on rows carved from the training "
                "data, which a tuned retriever learned; leave them out, or the retriever"
            ))  # fmt: skip
    if experiment.eval.format_schema is not None:
        try:
            read_schema(experiment.eval.format_schema)
        except TuneLabError as err:
            fail(("eval", "format_schema"), err)
    for index, spec in enumerate(experiment.strategies):
        if spec.prompt_file is None:
            continue
        try:
            load_strategy(spec.prompt_file)
        except TuneLabError as err:
            fail(("strategies", index, "prompt_file"), err)


def _check_search_starts(experiment: Experiment, path: Path, raw: dict) -> None:
    """A prompt search starts from a prompt it can carry whole (no neighbour vote), refused
    now wherever that prompt comes from, not when the search's turn comes."""
    from tunelab.optimize.parts import check_searchable

    for index, spec in enumerate(experiment.strategies):
        prompt = known_prompt(experiment, spec) if spec.optimize else None
        if prompt is None:
            continue
        try:
            check_searchable(prompt)
        except TuneLabError as err:
            raise _error_at(path, raw, ("strategies", index), str(err)) from None


def _check_shot_orders(experiment: Experiment, path: Path, raw: dict) -> None:
    """A training strategy that orders its prompt's shots needs a prompt with shots: refused
    now where the prompt is known (not a prompt search's result, checked when it trains)."""
    default = TrainSettings.model_fields["shot_order"].default
    for index, spec in enumerate(experiment.strategies):
        if not spec.train or spec.train.shot_order == default:
            continue
        if _known_shots(experiment, spec) == 0:
            raise _error_at(
                path, raw, ("strategies", index, "train", "shot_order"),
                f"{spec.train.shot_order} orders the training prompt's shots, and this "
                "strategy's prompt has none: give it prompt: {shots: N, selector: similar}",
            )  # fmt: skip


def _error_at(path: Path, raw: dict, loc: tuple, problem: str) -> TuneLabError:
    """``experiment.yaml:LINE: strategies[2](lora).train.x: problem`` for one field."""
    line = _line_of(yaml.compose(path.read_text(encoding="utf-8")), loc)
    return TuneLabError(f"{path}:{line}: {_location(loc, raw)}: {problem}")


def known_prompt(experiment: Experiment, spec: StrategySpec) -> PromptStrategy | None:
    """The strategy's prompt as the experiment states it (default: zero-shot); None where only
    a run can tell (the prompt comes from a prompt search or a trained run)."""
    if spec.prompt_from:
        source = experiment.strategy(spec.prompt_from)
        unknown = source.optimize or source.run_from  # a search's result, a trained run's
        return None if unknown else known_prompt(experiment, source)
    if spec.prompt_file:
        from tunelab.prompting import load_strategy

        return load_strategy(spec.prompt_file)  # (read, and checked, just before)
    return spec.prompt if spec.prompt is not None else PromptStrategy()


def _known_shots(experiment: Experiment, spec: StrategySpec) -> int | None:
    """How many shots the strategy's prompt holds; None where only a run can tell."""
    prompt = known_prompt(experiment, spec)
    return None if prompt is None else prompt.shots


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


def _with_paths_resolved(experiment: Experiment, base: Path) -> Experiment:
    def resolve(path: Path | None) -> Path | None:
        return path if path is None or path.is_absolute() else base / path

    data = experiment.data.model_copy(
        update={name: resolve(getattr(experiment.data, name)) for name in DATA_FOLDERS}
    )
    strategies = [
        s.model_copy(update={"prompt_file": resolve(s.prompt_file)}) for s in experiment.strategies
    ]
    evaluation = experiment.eval.model_copy(
        update={"format_schema": resolve(experiment.eval.format_schema)}
    )
    return experiment.model_copy(
        update={"data": data, "strategies": strategies, "eval": evaluation}
    )


_OWN = object()  # a strategy's first row when it sets no constrain: its prompt's own


def _with_constraints_expanded(
    experiment: Experiment, path: Path, raw: dict, extra: list[str]
) -> Experiment:
    """Each strategy's ``constrain`` in its stored form (a one-item list: set, even to none;
    absent: the prompt's own), and every further value (from the list, then ``extra`` from
    the command line) as an extra strategy reusing the first one's adaptation: ``NAME-json``
    after ``NAME``. A prompt strategy repeats its prompt, a prompt search's variant takes the
    refined prompt, a training strategy's variant evaluates the trained run again."""
    schema = None
    if experiment.eval.format_schema is not None:
        from tunelab.generation.constraints import read_schema

        try:
            schema = read_schema(experiment.eval.format_schema)
        except TuneLabError as err:
            raise TuneLabError(f"{path}: eval.format_schema: {err}") from None
    expanded: list[StrategySpec] = []
    for index, strategy in enumerate(experiment.strategies):
        if strategy.run_from:
            expanded.append(strategy)
            continue
        loc = ("strategies", index, "constrain")  # the file's line is looked up on error only
        entries = strategy.constrain
        listed = isinstance(entries, list)
        own = [_OWN] if entries is None else entries if listed else [entries]
        values = []
        for j, entry in enumerate(own):
            try:
                values.append(
                    entry
                    if entry is _OWN
                    else _stored_constraint(entry, schema, experiment.eval, path)
                )
            except TuneLabError as err:
                raise _error_at(path, raw, (*loc, j) if listed else loc, str(err)) from None
        seen: set[str] = set()
        for j, value in enumerate(values):
            key = json.dumps(value, sort_keys=True) if value is not _OWN else f"own-{j}"
            if key in seen:
                where = (*loc, j) if listed else loc
                raise _error_at(path, raw, where, "the same constraint is listed twice")
            seen.add(key)
        for entry in extra:
            try:
                value = _stored_constraint(entry, schema, experiment.eval, path)
            except TuneLabError as err:
                raise TuneLabError(f"--constrain: {err}") from None
            if value not in values:
                values.append(value)
        try:
            _check_reasoning(strategy, [v for v in values if v not in (_OWN, None)])
        except TuneLabError as err:
            raise _error_at(path, raw, loc, str(err)) from None
        first = strategy if values[0] is _OWN else strategy.model_copy(
            update={"constrain": values[:1]}
        )  # fmt: skip
        expanded.append(first)
        taken = {s.name for s in experiment.strategies} | {s.name for s in expanded}
        if strategy.search:  # the defaults' row beside the tuned one
            default = _free_name(f"{strategy.name}-default", taken)
            taken.add(default)
            expanded.append(StrategySpec(name=default, run_from=strategy.name, trial="default"))
        for value in values[1:]:
            variant = _variant(strategy, value, taken)
            taken.add(variant.name)
            expanded.append(variant)
    return experiment.model_copy(update={"strategies": expanded})


def _check_reasoning(strategy: StrategySpec, constraints: list) -> None:
    """Chain of thought needs free text before its answer; a grammar forbids it."""
    if not constraints:
        return
    from tunelab.prompting import load_strategy

    prompt = strategy.prompt
    if prompt is None and strategy.prompt_file is not None and strategy.prompt_file.is_file():
        prompt = load_strategy(strategy.prompt_file)
    if prompt is not None and prompt.cot:
        raise TuneLabError(
            "its prompt uses chain of thought (cot), which a grammar leaves no room for"
        )


def _stored_constraint(entry, schema, spec: EvalSpec, path: Path):
    """One ``constrain`` entry as a strategy stores it, compiled once so a bad schema or
    regex fails at load (the caller names where it was written)."""
    from tunelab.generation.constraints import Constraint, constraint_value

    value = constraint_value(
        entry, format_schema=schema, format_regex=spec.format_regex, base=path.parent
    )
    Constraint.of(value)  # checks the form too
    return value


def _variant(strategy: StrategySpec, value, taken: set[str]) -> StrategySpec:
    """The row of ``strategy`` decoded with ``value``: NAME-free / -json / -schema / -regex
    (a number added when the name is taken, e.g. a second schema)."""
    label = "free" if value is None else "json" if value == "json" else (
        "schema" if isinstance(value, dict) else "regex"
    )  # fmt: skip
    name = _free_name(f"{strategy.name}-{label}", taken)
    if strategy.kind == "train":
        return StrategySpec(name=name, run_from=strategy.name, constrain=[value])
    if strategy.kind == "optimize":
        return StrategySpec(name=name, prompt_from=strategy.name, constrain=[value])
    return strategy.model_copy(update={"name": name, "constrain": [value]})


def _free_name(name: str, taken: set[str]) -> str:
    """``name``, or with a number added when it is taken (NAME-schema2)."""
    candidate, number = name, 2
    while candidate in taken:
        candidate, number = f"{name}{number}", number + 1
    return candidate
