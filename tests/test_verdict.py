"""The numbers a verdict rests on: intervals that contain their estimate, metrics that read
every script, paired differences, and latency that is model time only."""

import random
import time

import pytest

from tunelab.compare.leaderboard import paired_difference
from tunelab.data import Example
from tunelab.evaluation import metrics as m
from tunelab.evaluation.runner import EvalSettings, evaluate
from tunelab.generation import GenerationConfig
from tunelab.prompting import PromptStrategy


def skewed_cases():
    rng = random.Random(0)
    labels = [f"intent_{i}" for i in range(77)]
    # Banking77-like: 300 rows over 77 labels, most right, so rare labels drop out of resamples
    refs = [rng.choice(labels) for _ in range(300)]
    preds = [r if rng.random() < 0.9 else rng.choice(labels) for r in refs]
    yield "77 labels, 300 rows", preds, refs, labels
    yield "one class", ["a"] * 6, ["a"] * 6, ["a"]
    yield "95% wrong", ["a"] * 19 + ["b"], ["b"] * 20, ["a", "b"]
    yield "three rows", ["x", "y", "x"], ["x", "x", "y"], ["x", "y"]
    words = ["restart", "the", "router", "then", "open", "the", "app", "and", "sign", "in"]
    refs = [" ".join(rng.sample(words, 7)) for _ in range(12)]
    preds = [r if i < 2 else " ".join(rng.sample(words, 7)) for i, r in enumerate(refs)]
    yield "free text, 12 rows, 2 right", preds, refs, None


@pytest.mark.parametrize("case", list(skewed_cases()), ids=lambda c: c[0])
def test_every_interval_contains_its_own_estimate(case):
    """Checked on the raw percentile interval, before the widening that guarantees it."""
    _, preds, refs, labels = case
    em, f1 = m.exact_match(preds, refs), m.token_f1(preds, refs)
    statistics = {
        "accuracy": lambda p, r, idx: sum(em[i] for i in idx) / len(idx),
        "token_f1": lambda p, r, idx: sum(f1[i] for i in idx) / len(idx),
        "macro_f1": lambda p, r, idx: m.macro_f1(p, r, labels),
        "bleu": lambda p, r, idx: m.bleu(p, r),
        "chrf": lambda p, r, idx: m.chrf(p, r),
    }
    for name, statistic in statistics.items():

        def on(idx, statistic=statistic):
            return statistic([preds[i] for i in idx], [refs[i] for i in idx], idx)

        value = on(range(len(preds)))
        low, high = m.bootstrap_interval(on, len(preds), resamples=200)
        assert low <= value <= high, name
    reported = m.corpus_with_interval(m.chrf, preds, refs)
    assert reported["low"] <= reported["value"] <= reported["high"]


def test_an_interval_is_widened_to_contain_its_estimate():
    # a statistic whose resamples all land above the estimate (the skewed case in the limit)
    assert m.bootstrap_interval(lambda idx: 1.0, 5, resamples=10, point=0.5) == (0.5, 1.0)


def test_macro_f1_resamples_describe_the_reported_statistic():
    """The Banking77 bug: the point estimate averaged over one label set and the resamples
    over another, so 0.850 came with the interval 0.739–0.845. The raw percentile interval
    (before any widening) now brackets the estimate."""
    _, preds, refs, labels = next(skewed_cases())
    value = m.macro_f1(preds, refs, labels)

    def on(idx):
        return m.macro_f1([preds[i] for i in idx], [refs[i] for i in idx], labels)

    low, high = m.bootstrap_interval(on, len(preds), resamples=200)
    assert low <= value <= high


def test_macro_f1_counts_test_labels_missing_from_training():
    # "c" is never in the label set (absent from training) and never predicted: F1 0 for it
    assert m.macro_f1(["a", "b", "a"], ["a", "b", "c"], ["a", "b"]) == pytest.approx(
        (2 / 3 + 1 + 0) / 3
    )
    assert (
        m.macro_f1(["a", "a"], ["a", "c"], ["a", "b"])
        <= m.mean_with_interval(m.exact_match(["a", "a"], ["a", "c"]))["value"]
    )


def test_macro_f1_label_set_is_the_labels_and_the_references():
    refs = ["a", "b", "a", "b"]
    # Wrong free-text answers add no labels of their own: their spelling cannot matter.
    spelt_two_ways = m.macro_f1(["a", "b", "zzz", "yyy"], refs, ["a", "b"])
    assert spelt_two_ways == m.macro_f1(["a", "b", "zzz", "zzz"], refs, ["a", "b"])
    assert spelt_two_ways == pytest.approx(2 / 3)  # a and b: tp 1, fn 1 each
    # A label of the set predicted but absent from the test counts 0; one neither in the test
    # nor predicted has no F1 (0/0) and is left out.
    assert m.macro_f1(["a", "c"], ["a", "a"], ["a", "b", "c"]) == pytest.approx((2 / 3 + 0) / 2)


def test_paired_macro_f1_difference_is_the_difference_of_the_reported_values():
    labels = ["a", "b", "c"]
    refs = ["a", "b"] * 10
    best = [{"line": i, "reference": r, "prediction": r} for i, r in enumerate(refs)]
    # "c" is a label of the task, predicted but never a reference: it counts, with F1 0
    worse = [dict(row, prediction="c" if i < 4 else row["prediction"]) for i, row in
             enumerate(best)]  # fmt: skip
    predictions = {"best": best, "worse": worse}
    diff = paired_difference(predictions, "worse", "best", "macro_f1", labels)
    reported = m.macro_f1([r["prediction"] for r in worse], refs, labels) - 1.0
    assert diff.value == pytest.approx(reported)
    assert diff.low <= diff.value <= diff.high


def test_rouge_l_and_token_f1_read_chinese_and_russian():
    chinese = "请重新启动路由器然后再试一次"
    assert m.rouge_l([chinese], [chinese]) == [1.0]
    assert m.rouge_l(["перезагрузите роутер"], ["перезагрузите роутер"]) == [1.0]
    partly = m.rouge_l(["请重新启动电脑"], [chinese])[0]
    assert 0 < partly < 1
    assert m.token_f1([chinese], [chinese]) == [1.0]
    assert 0 < m.token_f1(["请重新启动电脑"], [chinese])[0] < 1
    # Latin text scores as rouge-score's own tokenizer did (stemming included)
    assert m.rouge_l(["the cats are running"], ["a cat runs"])[0] == pytest.approx(4 / 7)


def test_paired_difference_cancels_what_two_strategies_share():
    rng = random.Random(2)
    a = [rng.random() for _ in range(200)]
    b = [x - 0.03 for x in a]  # always 0.03 lower: unpaired intervals would overlap widely
    import numpy as np

    x, y = np.asarray(b), np.asarray(a)
    diff = m.paired_difference(lambda idx: (x[idx].mean(), y[idx].mean()), 200)
    assert diff["value"] == pytest.approx(-0.03)
    assert diff["high"] < 0  # the paired interval is tight around -0.03
    assert m.rows_to_separate(0.01, 100, -0.03) == pytest.approx(100 * (2.8 / 3) ** 2)


TRAIN = [Example(f"message {i}", ["yes", "no"][i % 2], i + 1) for i in range(6)]
TEST = [Example(f"is it {w}", w, i + 1) for i, w in enumerate(["yes", "no", "yes", "no"])]


def test_latency_is_model_time_only(tiny_model, tiny_tokenizer, monkeypatch):
    from tunelab.evaluation import runner

    settings = EvalSettings(generation=GenerationConfig(max_new_tokens=2), resamples=20,
                            latency_rows=2)  # fmt: skip
    strategy = PromptStrategy(shots=1, selector="random")

    def run():
        return evaluate(tiny_model, tiny_tokenizer, strategy, TEST, train=TRAIN,
                        labels=["no", "yes"], settings=settings)  # fmt: skip

    quick = run()
    slow_select, slow_metric = runner.select_shots, runner.m.exact_match

    def sleepy_select(*args, **kwargs):
        time.sleep(0.4)
        return slow_select(*args, **kwargs)

    def sleepy_metric(*args, **kwargs):
        time.sleep(0.4)
        return slow_metric(*args, **kwargs)

    monkeypatch.setattr(runner, "select_shots", sleepy_select)
    monkeypatch.setattr(runner.m, "exact_match", sleepy_metric)
    slowed = run()
    assert slowed.extra["timing"]["retrieval"] >= 0.4 and slowed.extra["timing"]["metrics"] >= 0.4
    assert slowed.extra["latency_ms_batch1"] < 300  # neither sleep is in one request's time
    assert slowed.extra["timing"]["model"] < 0.4 + quick.extra["timing"]["model"]
    assert slowed.extra["examples_per_second"]["score"] > len(TEST) / 0.4
    assert slowed.predictions[0]["scores"]["accuracy"] in (0.0, 1.0)
    assert slowed.extra["prompt_tokens_mean"] > 0


def test_consistency_agreement_fits_the_task():
    from tunelab.evaluation.runner import _agreement

    # labels agree once normalised; exact strings would call these two different answers
    assert _agreement(("Yes", "yes."), labels=True) == 1.0
    assert _agreement(("yes", "no"), labels=True) == 0.0
    # free text: two paraphrases of one answer mostly agree, an unrelated answer does not
    close = _agreement(("Restart the router, then try again.",
                        "Restart the router and try again."), labels=False)  # fmt: skip
    assert 0.7 < close < 1.0
    assert _agreement(("Restart the router.", "Call your bank."), labels=False) == 0.0


def test_consistency_on_free_text_reports_the_task_metric(tiny_model, tiny_tokenizer):
    from tunelab.evaluation.runner import evaluate_consistency

    settings = EvalSettings(generation=GenerationConfig(max_new_tokens=2), resamples=20,
                            embedder="tfidf")  # fmt: skip
    report = evaluate_consistency(tiny_model, tiny_tokenizer, PromptStrategy(),
                                  ["{{ input }}", "Text: {{ input }}"], TEST,
                                  settings=settings)  # fmt: skip
    assert report["metric"] == "rouge_l"  # not exact match on free text
    assert set(report["per_template"][0]) == {"template", "rouge_l"}


def test_heatmap_plots_the_stored_metric_its_title_names():
    import matplotlib.pyplot as plt

    from tunelab.compare.leaderboard import rows_of
    from tunelab.compare.report import _breakdown_plot

    stored = [0.9, 0.1, 0.5]  # ROUGE-L of these rows would be 0: the words differ
    rows_file = [{"line": i + 1, "reference": "fine", "prediction": "good", "correct": 0.0,
                  "scores": {"embedding_similarity": v}} for i, v in enumerate(stored)]  # fmt: skip
    score = {"value": 0.5, "low": 0.1, "high": 0.9}
    result = {"name": "base", "kind": "prompt", "metrics": {"embedding_similarity": score}}
    rows = rows_of([result], "embedding_similarity", None)
    title, fig = _breakdown_plot(rows, {"base": rows_file}, "embedding_similarity", None)
    assert title == "Per-example embedding_similarity"
    plotted = fig.axes[0].images[0].get_array()
    assert [round(float(x), 3) for x in plotted[0]] == stored
    plt.close(fig)


def test_predictions_with_line_separators_read_back(tmp_path):
    from tunelab.compare.report import read_predictions
    from tunelab.evaluation.runner import write_predictions

    rows = [{"line": 1, "input": "a\u2028b\u0085c\u2029d", "prediction": "x"}, {"line": 2}]
    write_predictions(tmp_path / "predictions.jsonl", rows)
    assert read_predictions(tmp_path) == rows
