"""Reading the YAML files users write (experiments, prompt strategies, search spaces)."""

from pathlib import Path

import yaml

from tunelab.errors import TuneLabError


def read_yaml(path: Path, what: str = ""):
    """The parsed file; a syntax error becomes one line, ``<what>FILE:LINE:COLUMN: problem``,
    instead of PyYAML's multi-line report."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or "not valid YAML"
        raise TuneLabError(f"{what}{where}: not valid YAML: {problem}") from None
