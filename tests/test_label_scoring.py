import pytest
import torch

from tunelab.evaluation.label_scoring import LabelTrie, score_labels

LABELS = ["card", "card_arrival", "cash", "refund", "x", "ab", "abc"]


def _prompts(tokenizer, system=None):
    turns = [{"role": "system", "content": system}] if system else []
    return [
        tokenizer.apply_chat_template(
            turns + [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
        for text in ["hi", "a longer question here", "mid one"]
    ]


def _naive_scores(model, tokenizer, prompts, labels):
    """Reference: one full forward per (prompt, label), summing the label + EOS log-probs."""
    table = torch.empty(len(prompts), len(labels))
    for i, prompt in enumerate(prompts):
        start = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        for k, label in enumerate(labels):
            ids = tokenizer(
                prompt + label + tokenizer.eos_token, add_special_tokens=False, return_tensors="pt"
            )["input_ids"]
            with torch.no_grad():
                logprobs = model(ids).logits.log_softmax(-1)[0]
            table[i, k] = sum(logprobs[t - 1, ids[0, t]] for t in range(start, ids.shape[1]))
    return table


@pytest.mark.parametrize("system", [None, "You sort support messages into categories."])
def test_exhaustive_scores_equal_one_forward_per_label(tiny_model, tiny_tokenizer, system):
    prompts = _prompts(tiny_tokenizer, system)  # with a system text they share a long prefix
    expected = _naive_scores(tiny_model, tiny_tokenizer, prompts, LABELS)
    got = score_labels(tiny_model, tiny_tokenizer, prompts, LABELS, batch_size=2, exhaustive=True)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_pruned_scoring_keeps_the_argmax_and_exact_scores(tiny_model, tiny_tokenizer):
    prompts = _prompts(tiny_tokenizer)
    full = score_labels(tiny_model, tiny_tokenizer, prompts, LABELS, exhaustive=True)
    pruned = score_labels(tiny_model, tiny_tokenizer, prompts, LABELS)
    assert pruned.argmax(-1).tolist() == full.argmax(-1).tolist()
    scored = pruned.isfinite()
    torch.testing.assert_close(pruned[scored], full[scored])


def test_pruning_skips_labels_that_cannot_win(tiny_tokenizer):
    """A model that always predicts 'a' then EOS: only the 'a...' subtree needs scoring."""
    from tunelab.testing import make_tiny_model

    model = make_tiny_model(tiny_tokenizer)
    a, eos = tiny_tokenizer.convert_tokens_to_ids("a"), tiny_tokenizer.eos_token_id
    with torch.no_grad():
        head = model.lm_head.weight
        model.lm_head = torch.nn.Linear(head.shape[1], head.shape[0], bias=True)
        model.lm_head.weight.zero_()
        model.lm_head.bias.fill_(-20.0)
        model.lm_head.bias[a] = 10.0
        model.lm_head.bias[eos] = 9.0
    labels = ["a", "b", "c", "d", "e"]
    scores = score_labels(model, tiny_tokenizer, _prompts(tiny_tokenizer)[:1], labels)
    assert scores.argmax(-1).item() == 0
    assert scores.isinf().sum() >= 2  # at most 3 first tokens were expanded


def test_trie_shares_prefixes_and_ends_each_label_with_eos(tiny_tokenizer):
    trie = LabelTrie.build(tiny_tokenizer, ["ab", "abc", "b"])
    # a, b(under a), eos(ab), c, eos(abc), b(root), eos(b)
    assert len(trie.tokens) == 7
    assert trie.paths[0][:2] == trie.paths[1][:2]
    assert all(trie.tokens[path[-1]] == tiny_tokenizer.eos_token_id for path in trie.paths)
    assert [len(p) for p in trie.paths] == [3, 4, 2]


def _peaked_model(tokenizer):
    """A model sure of a few characters (a, then EOS, b, c): scoring prunes most labels."""
    from tunelab.testing import make_tiny_model

    model = make_tiny_model(tokenizer, seed=3)
    with torch.no_grad():
        head = model.lm_head.weight
        model.lm_head = torch.nn.Linear(head.shape[1], head.shape[0], bias=True)
        model.lm_head.weight.copy_(head)
        model.lm_head.bias.copy_(
            torch.randn(head.shape[0], generator=torch.Generator().manual_seed(1)) * 2
        )
        for token, value in [("a", 8.0), ("b", 6.0), ("c", 5.0)]:
            model.lm_head.bias[tokenizer.convert_tokens_to_ids(token)] = value
        model.lm_head.bias[tokenizer.eos_token_id] = 7.0
    return model


def test_pruning_for_a_neighbour_vote_keeps_the_blended_answer(tiny_tokenizer):
    """Pruned for the blend, the table's blended argmax equals the full table's, for random
    votes and weights, while about half the labels are skipped. (Stopping at the plain
    bound, without settling Z, answers one of these 480 rows wrongly.)"""
    model = _peaked_model(tiny_tokenizer)
    labels = ["a", "ab", "b", "ba", "c", "d", "e", "f", "g", "h", "i", "j"]
    texts = ["hi", "a longer question here", "mid one", "what", "card lost again", "x"]
    prompts = [
        tiny_tokenizer.apply_chat_template(
            [{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True
        )
        for t in texts
    ]
    full = score_labels(model, tiny_tokenizer, prompts, labels, exhaustive=True)
    draw = torch.Generator().manual_seed(0)
    skipped = 0
    for _ in range(20):
        votes = torch.zeros(len(prompts), len(labels))
        for row in range(len(prompts)):
            count = int(torch.randint(0, 3, (1,), generator=draw))
            if count:
                chosen = torch.randperm(len(labels), generator=draw)[:count]
                votes[row, chosen] = torch.rand(count, generator=draw)
                votes[row] /= votes[row].sum()
        for weight in (0.05, 0.2, 0.5, 0.9):
            pruned = score_labels(model, tiny_tokenizer, prompts, labels, votes=votes,
                                  weight=weight)  # fmt: skip
            skipped += int((~pruned.isfinite()).sum())

            def blended(table, weight=weight, votes=votes):
                mixed = (1 - weight) * table.softmax(-1) + weight * votes
                return torch.where(votes.sum(-1, keepdim=True) > 0, mixed, table.softmax(-1))

            assert blended(pruned).argmax(-1).tolist() == blended(full).argmax(-1).tolist()
            scored = pruned.isfinite()
            torch.testing.assert_close(pruned[scored], full[scored])
            assert scored[votes > 0].all()  # a voted label's model share counts
    assert skipped > 0.4 * 80 * len(prompts) * len(labels)
