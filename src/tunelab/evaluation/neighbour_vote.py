"""Label answers blended with a vote of the retrieved shots (``knn_weight`` of a strategy).

A small model shown similar examples mostly copies one of them, and it copies the wrong one
on other rows than a plain nearest-neighbour vote gets wrong. Interpolating the two, as kNN-LM
does for next tokens (Khandelwal et al., 2020), keeps the model's answer where it is sure and
the neighbours' where it is not:

    p(label) = (1 - w) * p_model(label | prompt) + w * p_vote(label)

p_model is the softmax over the label set of the label log-likelihoods (or of a head's
logits); p_vote spreads softmax(similarity / temperature) over the shots' labels, so at the
default temperature the nearest shot carries most of the vote.
"""

import torch

from tunelab.data.loading import Example
from tunelab.models.embeddings import Embedder


class NeighbourVote:
    """Each query's shots' labels, weighted by their similarity to the query (computed once)."""

    def __init__(
        self,
        queries: list[Example],
        shots: list[list[Example]],
        embedder: Embedder,
        *,
        weight: float,
        temperature: float,
    ):
        self.weight = weight
        texts = list(
            dict.fromkeys([q.input for q in queries] + [s.input for r in shots for s in r])
        )
        vectors = embedder.embed(texts)
        row_of = {text: i for i, text in enumerate(texts)}
        self.ballots: list[dict[str, float]] = []
        for query, chosen in zip(queries, shots, strict=True):
            ballot: dict[str, float] = {}
            if chosen:
                neighbours = vectors[[row_of[s.input] for s in chosen]]
                similarity = neighbours @ vectors[row_of[query.input]]
                weights = torch.softmax(similarity.float() / temperature, dim=-1).tolist()
                for shot, share in zip(chosen, weights, strict=True):
                    ballot[shot.output] = ballot.get(shot.output, 0.0) + share
            self.ballots.append(ballot)

    def table(self, labels: list[str]) -> torch.Tensor:
        """(queries, labels) vote shares; labels outside ``labels`` get none."""
        column = {label: i for i, label in enumerate(labels)}
        votes = torch.zeros(len(self.ballots), len(labels))
        for row, ballot in enumerate(self.ballots):
            for label, share in ballot.items():
                if label in column:
                    votes[row, column[label]] = share
        return votes

    def winners(self) -> list[str | None]:
        """The label the shots alone would answer, per query (None: no shots)."""
        return [max(b, key=b.get) if b else None for b in self.ballots]

    def blend(self, model_scores: torch.Tensor, labels: list[str]) -> torch.Tensor:
        """Label probabilities: the model's (softmax of ``model_scores``, columns in ``labels``
        order) mixed with the vote's. Rows whose shots hold no label of the set keep the
        model's alone."""
        model_probs = model_scores.float().softmax(dim=-1)
        votes = self.table(labels)
        voted = votes.sum(dim=-1, keepdim=True) > 0
        mixed = (1 - self.weight) * model_probs + self.weight * votes
        return torch.where(voted, mixed, model_probs)
