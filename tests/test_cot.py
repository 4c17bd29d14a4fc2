from tunelab.prompting.cot import extract_answer

LABELS = ["card", "card_arrival", "refund"]


def test_final_answer_line_wins():
    text = "The card is mentioned.\nIt concerns a refund.\nAnswer: card_arrival"
    assert extract_answer(text, LABELS) == "card_arrival"


def test_answer_line_is_mapped_to_the_label_it_contains():
    assert extract_answer("...\n**Answer:** it is refund.", LABELS) == "refund"


def test_without_answer_line_the_last_label_mentioned_is_used():
    assert extract_answer("maybe card, but really card_arrival here", LABELS) == "card_arrival"


def test_free_text_without_labels_takes_the_answer_or_last_line():
    assert extract_answer("think\nAnswer: 42") == "42"
    assert extract_answer("first line\nlast line\n") == "last line"


def test_repeated_empty_markers_fall_back_to_the_last_line():
    assert extract_answer("Answer:\nsomething else") == "something else"
