"""Every shipped YAML is a runnable document: it loads, and its first line is its command."""

from pathlib import Path

import pytest
import yaml

from tunelab.prompting import load_strategy

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


PROMPT_FILES = sorted((EXAMPLES / "prompts").glob("*.yaml")) + sorted(
    p for p in (EXAMPLES / "dstc8_events").glob("*.yaml") if p.name != "experiment.yaml"
)


@pytest.mark.parametrize("path", PROMPT_FILES, ids=str)
def test_shipped_prompt_files_load(path):
    first_line = path.read_text(encoding="utf-8").splitlines()[0]
    assert (
        first_line.startswith(("# tunelab eval ", "# tunelab train "))
        and str(path.relative_to(EXAMPLES.parent)) in first_line
    )
    if path.name == "paraphrases.yaml":
        templates = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert len(templates) >= 2 and all(isinstance(t, str) for t in templates)
    else:
        assert load_strategy(path).name


SHARED = EXAMPLES.parents[1] / "shared" / "datasets"


def test_json_example_loads_with_its_variants_and_json_data():
    from tunelab.compare.experiment import load_experiment
    from tunelab.compare.runner import headline_metric, json_answers, load_experiment_data

    folder = EXAMPLES / "dstc8_events"
    experiment = load_experiment(folder / "experiment.yaml")
    assert [s.name for s in experiment.strategies] == [
        "zero-shot", "zero-shot-schema", "few-shot-similar", "few-shot-similar-schema",
        "lora", "lora-schema",
    ]  # fmt: skip
    assert experiment.strategy("lora-schema").run_from == "lora"
    data = load_experiment_data(experiment)
    assert len(data.train) + len(data.dev) == 400 and len(data.test) == 150
    assert json_answers(data) and headline_metric(experiment, data) == "json_match"


@pytest.mark.skipif(not (SHARED / "dstc8_events").is_dir(), reason="no ../shared/datasets here")
def test_json_example_is_the_subset_its_script_draws(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_subset", EXAMPLES / "dstc8_events" / "make_subset.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for split, count in module.SIZES.items():
        drawn = module.sample(SHARED / "dstc8_events" / f"{split}.jsonl", count)
        shipped = (EXAMPLES / "dstc8_events" / f"{split}.jsonl").read_text(encoding="utf-8")
        assert shipped.splitlines() == drawn
