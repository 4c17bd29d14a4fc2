"""The numbers a verdict rests on: intervals that contain their estimate, metrics that read
every script, paired differences, and latency that is model time only."""

import random
import time

import pytest

from tunelab.compare.leaderboard import paired_difference
from tunelab.data import Example
from tunelab.evaluation import metrics as m
from tunelab.evaluation.generation import GenerationConfig
from tunelab.evaluation.runner import EvalSettings, evaluate
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


@pytest.mark.parametrize("case", list(skewed_cases()), ids=lambda c: c[0])
def test_every_interval_contains_its_own_estimate(case):
    _, preds, refs, labels = case
    scores = {
        "accuracy": m.mean_with_interval(m.exact_match(preds, refs), resamples=200),
        "token_f1": m.mean_with_interval(m.token_f1(preds, refs), resamples=200),
        "macro_f1": m.corpus_with_interval(lambda p, r: m.macro_f1(p, r, labels), preds, refs),
        "bleu": m.corpus_with_interval(m.bleu, preds, refs),
        "chrf": m.corpus_with_interval(m.chrf, preds, refs),
    }
    for name, score in scores.items():
        assert score["low"] <= score["value"] <= score["high"], name


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
