import pytest

from tunelab.data import Example
from tunelab.errors import TuneLabError
from tunelab.evaluation.runner import EvalSettings, evaluate, evaluate_consistency
from tunelab.generation import GenerationConfig
from tunelab.prompting import PromptStrategy
from tunelab.prompting.render import build_prompts, readable, system_text

TRAIN = [Example(f"message {i}", ["yes", "no"][i % 2], i + 1) for i in range(6)]
TEST = [Example("is it yes", "yes", 1), Example("is it no", "no", 2), Example("hm", "yes", 3)]
LABELS = ["no", "yes"]
FAST = EvalSettings(generation=GenerationConfig(max_new_tokens=3), resamples=50)


def _evaluate(model, tokenizer, strategy=None, **settings):
    strategy = strategy or PromptStrategy()
    chosen = EvalSettings(**{**FAST.__dict__, **settings})
    return evaluate(model, tokenizer, strategy, TEST, train=TRAIN, labels=LABELS, settings=chosen)


def test_both_modes_report_accuracy_and_f1_with_intervals(tiny_model, tiny_tokenizer):
    result = _evaluate(tiny_model, tiny_tokenizer, mode="both")
    assert set(result.metrics) == {
        "score/accuracy",
        "score/macro_f1",
        "generate/accuracy",
        "generate/macro_f1",
    }
    for mode in ("score", "generate"):
        correct = [r[f"{mode}_prediction"] == r["reference"] for r in result.predictions]
        assert result.metrics[f"{mode}/accuracy"]["value"] == pytest.approx(
            sum(correct) / len(correct)
        )
        interval = result.metrics[f"{mode}/accuracy"]
        assert 0.0 <= interval["low"] <= interval["value"] <= interval["high"] <= 1.0
    row = result.predictions[0]
    assert row["score_prediction"] in LABELS
    assert {"generate_prediction", "raw_output", "prompt", "reference"} <= set(row)
    assert set(result.extra["examples_per_second"]) == {"score", "generate"}


def test_label_scoring_predictions_are_counted_correctly(tiny_model, tiny_tokenizer):
    result = _evaluate(tiny_model, tiny_tokenizer, mode="score")
    correct = [row["prediction"] == row["reference"] for row in result.predictions]
    assert result.metrics["accuracy"]["value"] == pytest.approx(sum(correct) / len(correct))


def test_auto_mode_scores_labels_and_generates_free_text(tiny_model, tiny_tokenizer):
    assert _evaluate(tiny_model, tiny_tokenizer).extra["modes"] == ["score"]
    free = evaluate(tiny_model, tiny_tokenizer, PromptStrategy(), TEST, settings=FAST)
    assert free.extra["modes"] == ["generate"]
    assert {"exact_match", "token_f1", "rouge_l", "bleu", "chrf", "embedding_similarity"} == set(
        free.metrics
    )


def test_cot_generates_and_extracts_the_answer(tiny_model, tiny_tokenizer):
    result = _evaluate(tiny_model, tiny_tokenizer, PromptStrategy(cot=True))
    assert result.extra["modes"] == ["generate"]
    assert "Think step by step" in result.predictions[0]["prompt"]
    with pytest.raises(TuneLabError, match="chain of thought needs free generation"):
        _evaluate(tiny_model, tiny_tokenizer, PromptStrategy(cot=True), mode="score")


def test_scoring_free_text_is_refused(tiny_model, tiny_tokenizer):
    with pytest.raises(TuneLabError, match="--mode score needs a label set"):
        evaluate(
            tiny_model, tiny_tokenizer, PromptStrategy(), TEST, settings=EvalSettings(mode="score")
        )


def test_empty_label_set_is_refused(tiny_model, tiny_tokenizer):
    with pytest.raises(TuneLabError, match="the label set is empty"):
        evaluate(tiny_model, tiny_tokenizer, PromptStrategy(), TEST, labels=[])


def test_format_compliance_is_reported(tiny_model, tiny_tokenizer):
    result = _evaluate(tiny_model, tiny_tokenizer, mode="score", format_regex="yes|no")
    assert result.metrics["format_compliance"]["value"] == 1.0  # label scoring always complies


def test_prompt_holds_system_instruction_shots_and_query(tiny_tokenizer):
    strategy = PromptStrategy(system="You are a bot.", shots=2, template="Q: {{ input }}")
    shots = [[TRAIN[0], TRAIN[1]]]
    prompt = readable(build_prompts(tiny_tokenizer, strategy, TEST[:1], LABELS, shots)[0])
    assert prompt.startswith(
        "<|im_start|>system\nYou are a bot.\n\nClassify the text into "
        "exactly one of these categories: no, yes.\nAnswer with the"
    )
    assert (
        "<|im_start|>user\nQ: message 0<|im_end|>\n<|im_start|>assistant\nyes<|im_end|>" in prompt
    )
    assert prompt.endswith("<|im_start|>user\nQ: is it yes<|im_end|>\n<|im_start|>assistant\n")


def test_free_text_has_no_instruction_unless_given():
    assert system_text(PromptStrategy(), None) is None
    strategy = PromptStrategy(instruction="Answer in {{ labels | length }} words.")
    assert system_text(strategy, ["a", "b"]) == "Answer in 2 words."


def test_consistency_reports_spread_and_agreement(tiny_model, tiny_tokenizer):
    report = evaluate_consistency(
        tiny_model,
        tiny_tokenizer,
        PromptStrategy(),
        ["{{ input }}", "Text: {{ input }}"],
        TEST,
        train=TRAIN,
        labels=LABELS,
        settings=FAST,
    )
    assert report["metric"] == "accuracy"
    values = [row["accuracy"] for row in report["per_template"]]
    assert report["spread"] == pytest.approx(max(values) - min(values))
    assert 0.0 <= report["agreement"]["value"] <= 1.0
    with pytest.raises(TuneLabError, match="at least two"):
        evaluate_consistency(tiny_model, tiny_tokenizer, PromptStrategy(), ["x"], TEST)
    for bad, why in [("{{ input }", "syntax error"), ("{{ nope }}", "does not have")]:
        with pytest.raises(TuneLabError, match=rf"^paraphrase 2 \('.*'\): template .*{why}"):
            evaluate_consistency(
                tiny_model, tiny_tokenizer, PromptStrategy(), ["{{ input }}", bad], TEST,
                train=TRAIN, labels=LABELS, settings=FAST,
            )  # fmt: skip


def test_checklist_coverage_is_scored_per_example_and_a_missing_field_is_named(
    tiny_model, tiny_tokenizer
):
    from tunelab.evaluation.runner import EvalSettings, evaluate

    rows = [
        Example("hub offline", "restart the hub", 1, fields=(("checklist", "restart; hub"),)),
        Example("plug dead", "unplug it", 2, fields=(("checklist", "unplug"),)),
    ]
    settings = EvalSettings(
        generation=GenerationConfig(max_new_tokens=3), checklist_field="checklist", resamples=10
    )
    result = evaluate(tiny_model, tiny_tokenizer, PromptStrategy(), rows, settings=settings)
    per_example = [row["generate_checklist"] for row in result.predictions]
    assert all(0.0 <= v <= 1.0 for v in per_example)
    assert result.metrics["checklist"]["value"] == pytest.approx(sum(per_example) / 2)
    with pytest.raises(TuneLabError, match="line 3: field 'checklist' .* is missing"):
        evaluate(tiny_model, tiny_tokenizer, PromptStrategy(), [Example("x", "y", 3)],
                 settings=settings)  # fmt: skip
