"""Reading the YAML files users write (experiments, prompt strategies, search spaces)."""

from pathlib import Path

import yaml

from tunelab.data.loading import read_utf8
from tunelab.errors import TuneLabError


def read_yaml(path: Path, what: str = ""):
    """The parsed file; a problem becomes one line, ``<what>FILE:LINE:COLUMN: ...``, instead
    of PyYAML's multi-line report or a traceback."""
    try:
        text = read_utf8(path)
    except OSError as err:
        raise TuneLabError(f"{what}{path}: cannot read it ({err.strerror or err})") from None
    except TuneLabError as err:
        raise TuneLabError(f"{what}{err}") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as err:
        raise TuneLabError(
            f"{what}{_where(path, text, err)}: not valid YAML: {_problem(err)}"
        ) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error: YAML
    forbids it, and silently keeping the last value would run a setting the user did not
    mean (two ``strategies:`` lists, a ``lr`` set twice)."""

    def flatten_mapping(self, node):
        # Every mapping passes here before PyYAML folds its `<<` merges into it (in place,
        # also for a merged anchor that an alias reuses later): check each one once, as
        # written, so merged keys and their overrides never count as repeats.
        checked = self.__dict__.setdefault("_checked", set())
        if id(node) not in checked:
            checked.add(id(node))
            self._refuse_repeated_keys(node)
        super().flatten_mapping(node)

    def _refuse_repeated_keys(self, node) -> None:
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *x`, overridden on purpose
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # an unhashable key: PyYAML's own error follows
                continue
            if first is not key_node:
                raise yaml.constructor.ConstructorError(
                    None, None,
                    f"key {key!r} is given twice (first on line {first.start_mark.line + 1})",
                    key_node.start_mark,
                )  # fmt: skip


def _where(path: Path, text: str, err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    if mark is not None:
        return f"{path}:{mark.line + 1}:{mark.column + 1}"
    position = getattr(err, "position", None)  # a reader error: a character YAML refuses
    if position is not None:
        line = text.count("\n", 0, position) + 1
        return f"{path}:{line}:{position - (text.rfind(chr(10), 0, position) + 1) + 1}"
    return str(path)


def _problem(err: yaml.YAMLError) -> str:
    if isinstance(err, yaml.reader.ReaderError):
        char = chr(err.character) if isinstance(err.character, int) else err.character
        return f"character {char!r} is not allowed ({err.reason})"
    return getattr(err, "problem", None) or "not valid YAML"
