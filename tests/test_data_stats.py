from tunelab.data import Example, split_examples
from tunelab.data.stats import (
    LengthStats,
    compute_stats,
    find_duplicates,
    find_overlap,
    looks_like_classification,
)


def _examples(rows):
    return [Example(input=r["text"], output=r["label"], line=i + 1) for i, r in enumerate(rows)]


def test_label_distribution_and_duplicates(label_rows, tiny_tokenizer):
    stats = compute_stats(_examples(label_rows), tiny_tokenizer)
    assert stats.rows == 12
    assert dict(stats.labels) == {"billing": 4, "login": 4, "shipping": 4}
    [group] = stats.duplicates
    assert group.lines == [5, 12]
    assert group.conflicting  # same text, labels login vs shipping


def test_token_lengths_use_the_tokenizer(tiny_tokenizer):
    # The tiny tokenizer is byte-level without merges: one token per UTF-8 byte.
    examples = [Example("ab", "x", 1), Example("abcd", "yy", 2), Example("é", "z", 3)]
    stats = compute_stats(examples, tiny_tokenizer)
    assert (stats.input_tokens.min, stats.input_tokens.max) == (2, 4)
    assert stats.input_tokens.mean == (2 + 4 + 2) / 3
    assert stats.output_tokens.median == 1


def test_length_stats_percentile():
    stats = LengthStats.of(list(range(1, 101)))
    assert (stats.min, stats.median, stats.p95, stats.max) == (1, 50.5, 95, 100)


def test_duplicates_ignore_case_and_spacing():
    examples = [Example("Hello  World", "a", 1), Example("hello world", "a", 2)]
    [group] = find_duplicates(examples)
    assert group.lines == [1, 2] and not group.conflicting


def test_overlap_between_train_and_test():
    train = [Example("a b", "x", 1), Example("c", "y", 2)]
    test = [Example("A  B", "x", 1), Example("d", "y", 2)]
    assert find_overlap(train, test) == [1]


def test_free_text_is_not_classification():
    examples = [Example(f"q{i}", f"a long free text answer number {i} here", i) for i in range(10)]
    assert not looks_like_classification(examples)


def test_split_is_deterministic_and_stratified(label_rows):
    examples = _examples(label_rows * 5)  # 60 rows, 20 per label
    train, test = split_examples(examples, 0.25, seed=3, stratify=True)
    again_train, again_test = split_examples(examples, 0.25, seed=3, stratify=True)
    assert test == again_test and train == again_train
    assert len(test) == 15 and len(train) == 45
    assert sorted(e.output for e in test).count("billing") == 5
    assert {e.line for e in train}.isdisjoint({e.line for e in test})
    _, other = split_examples(examples, 0.25, seed=4, stratify=True)
    assert other != test


def test_stratified_split_hits_the_exact_size():
    examples = [Example(str(i), "ab"[i % 2] if i < 7 else "c", i) for i in range(10)]
    train, test = split_examples(examples, 3, seed=0, stratify=True)
    assert len(test) == 3 and len(train) == 7
