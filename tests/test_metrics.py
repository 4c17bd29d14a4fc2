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


def test_token_f1_by_hand():
    # pred {the, cat, sat}, ref {the, cat, ran, away}: common 2, P 2/3, R 2/4 -> F1 4/7
    from tunelab.evaluation.metrics import token_f1

    assert token_f1(["the cat sat"], ["The cat ran away"]) == pytest.approx([4 / 7])
    assert token_f1(["", "x"], ["", "y"]) == [1.0, 0.0]


def test_rouge_l_by_hand():
    from tunelab.evaluation.metrics import rouge_l

    # LCS("a b c d", "a c d e") = "a c d" = 3; P = R = 3/4 -> F 0.75
    assert rouge_l(["a b c d"], ["a c d e"]) == pytest.approx([0.75])


def test_bleu_and_chrf_are_sacrebleu_scaled_to_unit_interval():
    import sacrebleu

    from tunelab.evaluation.metrics import bleu, chrf

    preds, refs = ["the cat sat on the mat"], ["the cat sat on a mat"]
    assert bleu(preds, refs) == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score / 100)
    assert chrf(refs, refs) == pytest.approx(1.0)
    assert 0 < chrf(preds, refs) < 1


def test_format_compliance_regex_and_schema():
    from tunelab.evaluation.metrics import format_compliance

    assert format_compliance(["ID-12", "id 7", " ID-3 "], regex=r"ID-\d+") == [1.0, 0.0, 1.0]
    schema = {
        "type": "object",
        "required": ["intent"],
        "properties": {"intent": {"type": "string"}},
    }
    outputs = ['{"intent": "refund"}', '{"intent": 3}', "not json"]
    assert format_compliance(outputs, schema=schema) == [1.0, 0.0, 0.0]


def test_bootstrap_interval_brackets_the_mean_and_is_seeded():
    from tunelab.evaluation.metrics import mean_with_interval

    scores = [1.0] * 30 + [0.0] * 10
    first = mean_with_interval(scores, seed=3)
    assert first == mean_with_interval(scores, seed=3)
    assert first["value"] == 0.75
    assert 0.55 < first["low"] < 0.75 < first["high"] < 0.9
    assert mean_with_interval([1.0] * 5) == {"value": 1.0, "low": 1.0, "high": 1.0}


def test_embedding_similarity_of_identical_text_is_one():
    from tunelab.evaluation.metrics import embedding_similarity
    from tunelab.models.embeddings import TfidfEmbedder

    embedder = TfidfEmbedder().fit(["reset the hub", "hold the button"])
    sims = embedding_similarity(["reset the hub", "hold"], ["reset the hub", "reset"], embedder)
    assert sims[0] == pytest.approx(1.0) and sims[1] == pytest.approx(0.0)
