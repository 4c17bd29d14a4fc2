import pytest

from tunelab.evaluation.metrics import exact_match, macro_f1, normalize_answer


def test_normalisation_ignores_case_space_and_punctuation():
    assert normalize_answer("  Card_Arrival.\n") == "cardarrival"
    assert normalize_answer("Hello,   World!") == "hello world"


def test_exact_match_per_example():
    assert exact_match(["Yes.", "no", "maybe"], ["yes", "No", "no"]) == [1.0, 1.0, 0.0]


def test_macro_f1_by_hand():
    refs = ["a", "a", "b", "c"]
    preds = ["a", "b", "b", "b"]
    # a: tp1 fp0 fn1 -> 2/3 ; b: tp1 fp2 fn0 -> 2/4 ; c: tp0 -> 0
    assert macro_f1(preds, refs, ["a", "b", "c"]) == pytest.approx((2 / 3 + 0.5 + 0) / 3)
