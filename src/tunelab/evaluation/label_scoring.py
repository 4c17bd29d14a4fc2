"""Classification by label log-likelihood, with each prompt encoded once.

For a batch of prompts: one forward pass fills the KV cache; a second pass feeds every label's
tokens at once, arranged as a prefix trie (labels sharing a first token share that node), with
a tree attention mask so each node sees the prompt plus its own ancestors only. A label's score
is the sum of its tokens' log-probabilities, plus the end-of-answer token, so "card" and
"card_arrival" are told apart:

    log p(label | prompt) = sum_t log p(y_t | prompt, y_<t) + log p(<eos> | prompt, y)

Exact pruning: every term is <= 0, so no label can score above its first token's
log-probability. Per example, the subtrees of the most likely first tokens are scored first;
a first token already less likely than the best complete label cannot hold the winner and is
skipped (its labels get -inf). The argmax is exactly that of the full table, which
``exhaustive=True`` computes.

With a neighbour vote (``votes``, ``weight``: the answer is the argmax of
``(1 - w) * exp(score) / Z + w * vote``, Z summing every label), the pruning stays exact:
every voted label is scored; a first token less likely than the best scored label still
cannot win (unvoted, its blend is below that label's); and Z, unknown while labels are
skipped, lies between the scored labels' sum and that sum plus the skipped first tokens'
probabilities. Each label's blend is a line in 1/Z, so when one label wins at both ends of
that interval it wins throughout; until it does, the likeliest skipped first tokens are
scored too (also while the lead is within rounding). The table returned then holds -inf for
skipped labels, and blending it (normalising over the scored labels) picks that same winner.
Labels must be distinct (a label listed twice would count its probability twice).
"""

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tunelab.generation.prefix_cache import encode_prefix, repeat_cache, shared_prefix_length
from tunelab.prompting.render import encode_prompts


@dataclass
class LabelTrie:
    """Trie over tokenised labels. Node i holds ``tokens[i]``, ``parents[i]`` (-1 = the prompt).

    ``paths[k]`` lists the nodes of label k followed by its end-of-answer node.
    """

    tokens: list[int]
    parents: list[int]
    depths: list[int]
    paths: list[list[int]]

    @classmethod
    def build(cls, tokenizer, labels: list[str]) -> "LabelTrie":
        tokens, parents, depths, paths = [], [], [], []
        children: dict[tuple[int, int], int] = {}
        for label in labels:
            ids = tokenizer(label, add_special_tokens=False)["input_ids"]
            parent, path = -1, []
            for depth, token in enumerate([*ids, tokenizer.eos_token_id]):
                key = (parent, token)
                if key not in children:
                    children[key] = len(tokens)
                    tokens.append(token)
                    parents.append(parent)
                    depths.append(depth)
                parent = children[key]
                path.append(parent)
            paths.append(path)
        return cls(tokens, parents, depths, paths)

    @property
    def first_nodes(self) -> list[int]:
        return [node for node, parent in enumerate(self.parents) if parent < 0]

    def root_of(self, node: int) -> int:
        while self.parents[node] >= 0:
            node = self.parents[node]
        return node

    def fed_nodes_under(self, roots: set[int]) -> list[int]:
        """Nodes whose output logits are needed: those with a child, below the given roots."""
        return sorted({p for p in self.parents if p >= 0 and self.root_of(p) in roots})


@torch.inference_mode()
def score_labels(
    model,
    tokenizer,
    prompts: list[str],
    labels: list[str],
    *,
    batch_size: int = 8,
    exhaustive: bool = False,
    votes: torch.Tensor | None = None,
    weight: float = 0.0,
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Return a (len(prompts), len(labels)) tensor of label log-likelihoods.

    The token prefix that all prompts share (system text, instruction, label list, fixed
    shots) is encoded once and its KV cache reused for every batch. ``votes`` (prompts x
    labels, rows summing to 1 or 0) and ``weight`` prune for the blended answer instead of
    the model's own (module docstring).
    """
    trie = LabelTrie.build(tokenizer, labels)
    ids = encode_prompts(tokenizer, prompts)
    shared = shared_prefix_length(ids)
    prefix_cache = encode_prefix(model, ids[0][:shared]) if shared else None
    order = sorted(range(len(prompts)), key=lambda i: len(ids[i]))
    scores = torch.empty(len(prompts), len(labels))
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        suffixes = [ids[i][shared:] for i in batch]
        blend = (votes[batch].double(), weight) if votes is not None and weight else None
        scores[batch] = _score_batch(
            model, tokenizer, suffixes, trie, prefix_cache, shared, exhaustive, blend
        )
        if on_batch:
            on_batch(len(batch))
    return scores


def _score_batch(
    model, tokenizer, suffixes, trie: LabelTrie, prefix_cache, shared: int, exhaustive: bool,
    blend: tuple[torch.Tensor, float] | None = None,
) -> torch.Tensor:  # fmt: skip
    device = next(model.parameters()).device
    padded = tokenizer.pad(
        {"input_ids": suffixes}, padding=True, padding_side="left", return_tensors="pt"
    ).to(device)
    suffix_mask = padded["attention_mask"]
    batch = len(suffixes)
    cache = repeat_cache(prefix_cache, batch) if prefix_cache is not None else None
    mask = torch.cat([suffix_mask.new_ones(batch, shared), suffix_mask], dim=-1)
    positions = shared + (suffix_mask.cumsum(-1) - 1).clamp(min=0)
    prefill = model(
        input_ids=padded["input_ids"],
        attention_mask=mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,  # only the last position predicts a label's first token
    )
    cache = prefill.past_key_values
    prompt_length = cache.get_seq_length()
    first = prefill.logits[:, -1].float().log_softmax(-1).cpu()  # (B, V)
    roots = trie.first_nodes
    bound = first[:, [trie.tokens[r] for r in roots]]  # (B, R): upper bound per first token
    scores = torch.full((batch, len(trie.paths)), -torch.inf)
    done: list[set[int]] = [set() for _ in range(batch)]
    if exhaustive:
        wanted = [set(roots) for _ in range(batch)]
    else:
        top = bound.topk(min(INITIAL_ROOTS, len(roots)), dim=-1).indices.tolist()
        wanted = [{roots[i] for i in row} for row in top]
        if blend is not None:  # every voted label is scored
            for row, voted in enumerate(blend[0].gt(0).tolist()):
                wanted[row] |= {trie.paths[k][0] for k, v in enumerate(voted) if v}
    while any(wanted):
        fed = [trie.fed_nodes_under(w) for w in wanted]
        node_logprobs = _tree_forward(model, cache, mask, fed, trie).cpu()  # (B, M, V)
        cache.crop(-(cache.get_seq_length() - prompt_length))  # drop the trie nodes again
        for row in range(batch):
            _fill_scores(scores[row], trie, wanted[row], first[row], node_logprobs[row], fed[row])
            done[row] |= wanted[row]
        best = scores.max(-1).values
        wanted = [
            {r for i, r in enumerate(roots) if r not in done[row] and bound[row, i] > best[row]}
            for row in range(batch)
        ]
        if blend is not None:
            for row in range(batch):
                if not wanted[row]:
                    wanted[row] = _unsettled_blend(
                        scores[row], bound[row], roots, done[row], blend[0][row], blend[1]
                    )
    return scores


def _unsettled_blend(scores, bound, roots, done: set[int], votes, weight: float) -> set[int]:
    """The skipped first tokens to score next for an exact blended answer: none when the same
    label wins, by more than rounding, at both ends of the interval Z may lie in; else the
    likeliest few."""
    skipped = [i for i, r in enumerate(roots) if r not in done]
    if not skipped:
        return set()
    scored = scores.double()
    known = torch.logsumexp(scored, dim=-1)  # log of the scored labels' share of Z
    rest = torch.logsumexp(bound[skipped].double(), dim=-1)  # at most the skipped share
    winners = set()
    for log_z in (known, torch.logaddexp(known, rest)):
        blend = (1 - weight) * (scored - log_z).exp() + weight * votes
        top = blend.topk(min(2, len(blend)))
        clear = len(top.values) < 2 or top.values[0] - top.values[1] > BLEND_MARGIN
        winners.add(int(top.indices[0]) if clear else -1)  # -1: too close to call yet
    if len(winners) == 1 and -1 not in winners:
        return set()
    order = sorted(skipped, key=lambda i: -float(bound[i]))
    return {roots[i] for i in order[:INITIAL_ROOTS]}


BLEND_MARGIN = 1e-6  # a lead the float32 blend of the caller cannot reverse
INITIAL_ROOTS = 3  # first tokens whose labels are scored before the bound can prune


def _fill_scores(scores, trie: LabelTrie, roots: set[int], first, node_logprobs, fed) -> None:
    """Exact log-likelihood of every label under ``roots`` for one example."""
    row_of = {node: i for i, node in enumerate(fed)}
    for k, path in enumerate(trie.paths):
        if path[0] not in roots:
            continue
        total = first[trie.tokens[path[0]]]
        for parent, node in itertools.pairwise(path):
            total = total + node_logprobs[row_of[parent], trie.tokens[node]]
        scores[k] = total


def _tree_forward(model, cache, prompt_mask: torch.Tensor, fed: list[list[int]], trie):
    """Feed each row's trie nodes after its cached prompt; a node sees the prompt + ancestors.

    Rows may feed different nodes; shorter rows are padded with copies of their last node.
    """
    batch, prompt_len = prompt_mask.shape
    device = prompt_mask.device
    width = max(len(nodes) for nodes in fed)
    tree = torch.zeros(batch, width, width, dtype=torch.bool)
    tokens = torch.zeros(batch, width, dtype=torch.long)
    depths = torch.zeros(batch, width, dtype=torch.long)
    for row, nodes in enumerate(fed):
        nodes = nodes or [trie.first_nodes[0]]
        index = {node: i for i, node in enumerate(nodes)}
        for i in range(width):
            node = nodes[min(i, len(nodes) - 1)]
            tokens[row, i], depths[row, i] = trie.tokens[node], trie.depths[node]
            tree[row, i, i] = True
            ancestor = trie.parents[node]
            while ancestor >= 0:
                tree[row, i, index[ancestor]] = True
                ancestor = trie.parents[ancestor]
    allowed = torch.cat(
        [prompt_mask.bool()[:, None, :].expand(batch, width, prompt_len), tree.to(device)], dim=-1
    )  # (B, M, P + M)
    dtype = next(model.parameters()).dtype
    bias = torch.zeros(allowed.shape, dtype=dtype, device=device)
    bias.masked_fill_(~allowed, torch.finfo(dtype).min)
    out = model(
        input_ids=tokens.to(device),
        attention_mask=bias[:, None],
        position_ids=prompt_mask.sum(-1, keepdim=True) + depths.to(device),
        past_key_values=cache,
        use_cache=True,
    )
    return out.logits.float().log_softmax(-1)
