"""Structured outputs: JSON metrics by hand, constrained decoding (offline batches with LoRA
and soft prompts, the engine's mixed batches), and constraints in experiment files."""

import json
import re

import jsonschema
import pytest

from tests.test_engine import setup  # noqa: F401  (the engine's mixed-model fixture)
from tests.test_generation import _adapted
from tunelab.errors import TuneLabError
from tunelab.evaluation import metrics as m
from tunelab.generation import GenerationConfig, generate
from tunelab.generation.constraints import Constraint, constraint_value
from tunelab.generation.engine import BASE_ADAPTER, Engine, Request, Route
from tunelab.prompting.render import encode_chat

# Every string bounded and the numbers an enum: the random tiny model must finish in budget.
SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 6},
        "seats": {"enum": [1, 2, 3]},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
    },
    "required": ["city", "seats"],
    "additionalProperties": False,
}


# -- metrics -------------------------------------------------------------------------------


def test_key_order_and_whitespace_do_not_matter_but_types_do():
    assert m.json_match(['{"b":1,"a":2}'], ['{"a": 2, "b": 1}']) == [1.0]
    assert m.json_match(['{"n": 1.0, "m": [2.0]}'], ['{"n": 1, "m": [2]}']) == [1.0]
    assert m.json_match(["true"], ["1"]) == [0.0]
    assert m.json_valid(["NaN", '{"a": Infinity}', '{"a": 1}']) == [0.0, 0.0, 1.0]
    assert m.json_match(['{"a": "1"}', "not json", "{}"], ['{"a": 1}', "{}", "{}"]) == [
        0.0,
        0.0,
        1.0,
    ]


def test_json_valid_checks_parsing_and_the_schema():
    outputs = ['{"city": "Paris", "seats": 2}', '{"city": "Paris"}', "{'city': 1}", ' {"x": 1} ']
    assert m.json_valid(outputs) == [1.0, 1.0, 0.0, 1.0]
    assert m.json_valid(outputs, SCHEMA) == [1.0, 0.0, 0.0, 0.0]


def test_field_f1_by_hand():
    predictions = [
        '{"city": "NY", "date": "today"}',  # 1 right (city), 1 wrong
        '{"city": "LA", "event": {"name": "X"}}',  # nested: event.name right; city wrong
        "I don't know",  # not JSON: one wrong pair predicted; 1 expected
        "{}",  # nothing predicted, nothing expected: no pairs at all
    ]
    references = [
        '{"city": "NY"}',
        '{"city": "SF", "event": {"name": "X"}}',
        '{"date": "friday"}',
        "{}",
    ]
    assert m.field_counts(predictions, references) == [(1, 2, 1), (1, 2, 2), (0, 1, 1), (0, 0, 0)]
    # micro: right 2, predicted 5, expected 4 -> P = 0.4, R = 0.5, F1 = 2PR/(P+R) = 4/9
    scores = m.field_scores_with_intervals(predictions, references, resamples=50)
    assert scores["field_precision"]["value"] == pytest.approx(2 / 5)
    assert scores["field_recall"]["value"] == pytest.approx(2 / 4)
    assert scores["field_f1"]["value"] == pytest.approx(4 / 9)
    low, high = scores["field_f1"]["low"], scores["field_f1"]["high"]
    assert 0.0 <= low <= 4 / 9 <= high <= 1.0
    # prose to an empty reference is wrong, not an empty answer
    assert m.field_f1(["no events here"], ["{}"]) == [0.0]
    # per example: 2/3, 1/2, 0, and 1 for an empty answer to an empty reference
    assert m.field_f1(predictions, references) == pytest.approx([2 / 3, 0.5, 0.0, 1.0])
    # a dotted key is not a nested path; a list is one value
    assert m.field_counts(
        ['{"a.b": 1}', '{"x": [1, 2]}'], ['{"a": {"b": 1}}', '{"x": [2, 1]}']
    ) == [
        (0, 1, 1),
        (0, 1, 1),
    ]


def test_json_task_needs_objects_or_arrays_everywhere():
    assert m.is_json_task(['{"a": 1}', "[]", "{}"])
    assert not m.is_json_task(['{"a": 1}', "2"])  # a bare number is text here
    assert not m.is_json_task([])


# -- constraints ---------------------------------------------------------------------------


def test_constraint_values_and_their_one_line_errors(tmp_path):
    schema_file = tmp_path / "s.json"
    schema_file.write_text(json.dumps(SCHEMA))
    assert constraint_value("json") == "json"
    assert constraint_value("none") is None
    assert constraint_value(str(schema_file)) == SCHEMA
    assert constraint_value("schema", format_schema=SCHEMA) == SCHEMA
    assert constraint_value("regex", format_regex="[ab]+") == "regex:[ab]+"
    with pytest.raises(TuneLabError, match="no such schema file"):
        constraint_value(str(tmp_path / "missing.json"))
    with pytest.raises(TuneLabError, match="no format schema is set"):
        constraint_value("schema")
    with pytest.raises(TuneLabError, match=r"constrain \[1\]: use json"):
        constraint_value([1])
    for bad, message in (
        ({"type": "objectx"}, "not a valid JSON schema"),
        ({"minLength": "two"}, "not a valid JSON schema"),
        ("regex:[", "regex constraint not usable: .*regex"),
        ("jsn", "use json, regex:PATTERN"),
        ("regex:", "a non-empty pattern"),
    ):
        with pytest.raises(TuneLabError, match=message) as caught:
            Constraint.of(bad)
        assert "\n" not in str(caught.value)
    bad_file = tmp_path / "bad.json"
    bad_file.write_text('{"type": "objectx"}')
    with pytest.raises(TuneLabError, match="bad.json: not a valid JSON schema"):
        constraint_value(str(bad_file))


def _chat_prompts(tokenizer, texts):
    return [
        tokenizer.apply_chat_template(
            [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": t}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for t in texts
    ]


TEXTS = ["card charged twice", "cannot sign in", "refund my fee please", "hi", "locked out"]


@pytest.mark.parametrize("method", ["base", "lora", "prompt-tuning", "prefix-tuning"])
def test_constrained_batches_parse_against_the_schema(tiny_tokenizer, method):
    model = _adapted(method, tiny_tokenizer)  # random weights: unconstrained, never JSON
    prompts = _chat_prompts(tiny_tokenizer, TEXTS)
    free = generate(model, tiny_tokenizer, prompts, GenerationConfig(40, batch_size=3))
    assert not any(m.json_valid(free))
    config = GenerationConfig(60, batch_size=3, constraint=Constraint.of(SCHEMA))
    answers = generate(model, tiny_tokenizer, prompts, config)
    for answer in answers:
        jsonschema.validate(json.loads(answer), SCHEMA)
    sampled = generate(
        model, tiny_tokenizer, prompts, GenerationConfig(60, batch_size=3, temperature=1.0,
                                                         top_p=0.9, constraint=config.constraint)
    )  # fmt: skip
    for answer in sampled:
        jsonschema.validate(json.loads(answer), SCHEMA)


def test_a_regex_constraint_is_matched_whole(tiny_tokenizer):
    model = _adapted("base", tiny_tokenizer)
    config = GenerationConfig(20, batch_size=4, constraint=Constraint.of("regex:(yes|no)-[0-9]"))
    for answer in generate(model, tiny_tokenizer, _chat_prompts(tiny_tokenizer, TEXTS), config):
        assert answer[:-1] in ("yes-", "no-") and answer[-1].isdigit()


def test_the_engine_mixes_constrained_and_free_rows_in_one_batch(setup):  # noqa: F811
    tokenizer, host, prefixes = setup
    rows = [
        (Route(host, "lora-a"), Constraint.of(SCHEMA)),
        (Route(host, BASE_ADAPTER, prefixes["prefix"]), Constraint.of("json")),
        (Route(host, "lora-b"), None),
        (Route(host, BASE_ADAPTER), Constraint.of(SCHEMA)),
    ]
    got: dict[int, list] = {}
    requests = []
    for index, (route, constraint) in enumerate(rows):
        ids = encode_chat(tokenizer, [{"role": "user", "content": TEXTS[index]}])

        def sink(kind, value, index=index):
            got.setdefault(index, []).append((kind, value))

        requests.append(Request(route, ids, 60, sink, constraint=constraint))
    engine = Engine(tokenizer, max_batch=4)
    engine._decode(requests)
    engine.close()
    texts = ["".join(v for k, v in got[i] if k == "delta") for i in range(len(rows))]
    jsonschema.validate(json.loads(texts[0]), SCHEMA)
    assert isinstance(json.loads(texts[1]), dict)
    assert not m.json_valid([texts[2]])[0]  # the free row is untouched by its neighbours
    jsonschema.validate(json.loads(texts[3]), SCHEMA)
    assert all(got[i][-1] == ("done", "stop") for i in (0, 1, 3))


# -- experiment files ----------------------------------------------------------------------


def test_a_constrain_list_gives_one_row_per_value_from_one_adaptation(tmp_path):
    from tunelab.compare.experiment import load_experiment

    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    (tmp_path / "train.jsonl").write_text('{"a": "x", "b": "{}"}\n')
    path = tmp_path / "experiment.yaml"
    path.write_text(
        """name: j
data: {train: train.jsonl, input: a, output: b}
eval: {format_schema: schema.json}
strategies:
  - {name: zero, prompt: {}, constrain: [none, json]}
  - {name: tuned, train: {method: lora}, constrain: [schema, none]}
  - {name: refined, optimize: {budget: 2}, constrain: schema}
"""
    )
    experiment = load_experiment(path)
    got = {s.name: (s.kind, s.constrain, s.run_from, s.prompt_from) for s in experiment.strategies}
    assert got == {
        "zero": ("prompt", [None], None, None),
        "zero-json": ("prompt", ["json"], None, None),
        "tuned": ("train", [SCHEMA], None, None),
        "tuned-free": ("rerun", [None], "tuned", None),
        "refined": ("optimize", [SCHEMA], None, None),
    }
    # --constrain adds a row per value (none new for zero's json), the file's rows unchanged
    added = {s.name: (s.run_from, s.constrain) for s in load_experiment(path, ["json"]).strategies}
    assert set(added) == set(got) | {"tuned-json", "refined-json"}
    assert added["tuned-json"] == ("tuned", ["json"]) and added["tuned"] == (None, [SCHEMA])

    path.write_text(path.read_text().replace("[none, json]", "[none, 'regex:[']"))
    with pytest.raises(
        TuneLabError, match=r"yaml:\d+: strategies\[\d\]\(zero\)\.constrain\[1\]: .*regex"
    ):
        load_experiment(path)


def test_spec_keys_cover_the_schema_file_and_the_rerun_source(tmp_path):
    from tunelab.cli.compare import _selected
    from tunelab.compare.experiment import load_experiment
    from tunelab.compare.runner import ExperimentRunner, load_experiment_data

    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    rows = "".join(json.dumps({"a": f"x{i}", "b": '{"k": 1}'}) + "\n" for i in range(6))
    (tmp_path / "train.jsonl").write_text(rows)
    path = tmp_path / "experiment.yaml"
    text = """name: j
data: {train: train.jsonl, input: a, output: b, test_size: 0.5}
eval: {format_schema: schema.json}
strategies:
  - {name: start, prompt: {instruction: "Answer in JSON."}}
  - {name: tuned, train: {method: lora, epochs: EPOCHS}, prompt_from: start,
     constrain: [none, schema]}
"""
    path.write_text(text.replace("EPOCHS", "1"))

    def keys() -> dict[str, str]:
        experiment = load_experiment(path)
        runner = ExperimentRunner(experiment, load_experiment_data(experiment), tmp_path / "out")
        return {s.name: runner.spec_key(s) for s in experiment.strategies}

    first = keys()
    (tmp_path / "schema.json").write_text(json.dumps({**SCHEMA, "required": ["city"]}))
    assert all(keys()[name] != first[name] for name in first)  # the schema decides every score
    changed = keys()
    path.write_text(text.replace("EPOCHS", "2"))
    assert keys()["tuned-schema"] != changed["tuned-schema"]  # its trained run changed
    experiment = load_experiment(path)
    assert [s.name for s in _selected(experiment, ["tuned-schema"])] == [
        "start", "tuned", "tuned-schema",
    ]  # fmt: skip


def test_constraint_mistakes_in_experiment_and_strategy_files(tmp_path):
    from tunelab.compare.experiment import load_experiment
    from tunelab.prompting.strategy import validate_strategy

    with pytest.raises(TuneLabError, match="cot and constrain exclude each other"):
        validate_strategy({"cot": True, "constrain": "json"}, where="")
    (tmp_path / "train.jsonl").write_text('{"a": "x", "b": "{}"}\n')
    path = tmp_path / "experiment.yaml"
    for strategies, message in (
        ("- {name: z, prompt: {}, constrain: []}", "at least one value"),
        ("- {name: z, prompt: {}, constrain: 5}", r"z\)\.constrain: use json, schema"),
        ("- {name: z, prompt: {}, constrain: [json, json]}", r"constrain\[1\]: the same .* twice"),
        ("- {name: z, prompt: {cot: true}, constrain: [none, json]}", "chain of thought"),
        ("- {name: z, prompt: {}, constrain: schema}", "no format schema is set"),
        ("- {name: t, train: {method: lora}}\n  - {name: r, run_from: t, prompt_from: t}",
         "run_from re-evaluates a trained run"),
        ("- {name: z, prompt: {}}\n  - {name: r, run_from: z}", "must name a training"),
    ):  # fmt: skip
        head = "name: j\ndata: {train: train.jsonl, input: a, output: b}\nstrategies:\n  "
        path.write_text(head + strategies + "\n")
        with pytest.raises(TuneLabError, match=message) as caught:
            load_experiment(path)
        assert re.match(rf"{re.escape(str(path))}:[45]: strategies", str(caught.value))


def test_a_row_near_its_token_budget_closes_its_json(tiny_tokenizer, monkeypatch):
    """The random model writes junk into an unbounded string until max_new_tokens; in its last
    steps the row is steered to close the string and the object, so the answer parses."""
    from tunelab.generation.constraints import GrammarProcessor

    model = _adapted("lora", tiny_tokenizer)
    schema = {
        "type": "object",
        "properties": {"note": {"type": "string"}, "tags": {"type": "array"}},
        "required": ["note"],
        "additionalProperties": False,
    }
    prompts = _chat_prompts(tiny_tokenizer, TEXTS)
    config = GenerationConfig(24, batch_size=3, constraint=Constraint.of(schema))
    for answer in generate(model, tiny_tokenizer, prompts, config):
        jsonschema.validate(json.loads(answer), schema)
    monkeypatch.setattr(GrammarProcessor, "RESERVE", 0)  # no steering: cut mid-string
    assert not any(m.json_valid(generate(model, tiny_tokenizer, prompts, config)))
