"""Every shipped YAML is a runnable document: it loads, and its first line is its command."""

from pathlib import Path

import pytest
import yaml

from tunelab.prompting import load_strategy

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("path", sorted((EXAMPLES / "prompts").glob("*.yaml")), ids=str)
def test_shipped_prompt_files_load(path):
    first_line = path.read_text(encoding="utf-8").splitlines()[0]
    assert (
        first_line.startswith("# tunelab eval ")
        and str(path.relative_to(EXAMPLES.parent)) in first_line
    )
    if path.name == "paraphrases.yaml":
        templates = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert len(templates) >= 2 and all(isinstance(t, str) for t in templates)
    else:
        assert load_strategy(path).name
