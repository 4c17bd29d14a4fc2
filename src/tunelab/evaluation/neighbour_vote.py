"""Label answers blended with a vote of the retrieved shots (``knn_weight`` of a strategy).

A small model shown similar examples mostly copies one of them, and it copies the wrong one
on other rows than a plain nearest-neighbour vote gets wrong. Interpolating the two, as kNN-LM
does for next tokens (Khandelwal et al., 2020), keeps the model's answer where it is sure and
the neighbours' where it is not:

    p(label) = (1 - w) * p_model(label | prompt) + w * p_vote(label)

p_model is the softmax over the label set of the label log-likelihoods (or of a head's
logits); p_vote spreads softmax(similarity / temperature) over the shots' labels, so at the
default temperature the nearest shot carries most of the vote. Shots whose label is outside
the label set abstain (the others' shares are renormalised); a query with no shot, or none
similar at all (a TF-IDF query sharing no word with the pool), gets no vote: the model alone
answers it.
"""

from dataclasses import dataclass, replace

import torch

from tunelab.data.loading import Example
from tunelab.models.embeddings import Embedder


@dataclass(frozen=True)
class NeighbourVote:
    """Each query's shots' labels, weighted by their similarity to the query (``ballots``,
    computed once by :meth:`of`), and the weight the vote gets in the blend."""

    weight: float
    ballots: list[dict[str, float]]

    @classmethod
    def of(
        cls,
        queries: list[Example],
        shots: list[list[Example]],
        embedder: Embedder,
        *,
        weight: float,
        temperature: float,
    ) -> "NeighbourVote":
        texts = list(
            dict.fromkeys([q.input for q in queries] + [s.input for r in shots for s in r])
        )
        vectors = embedder.embed(texts)
        row_of = {text: i for i, text in enumerate(texts)}
        ballots: list[dict[str, float]] = []
        for query, chosen in zip(queries, shots, strict=True):
            ballot: dict[str, float] = {}
            similarity = vectors[[row_of[s.input] for s in chosen]] @ vectors[row_of[query.input]]
            if len(chosen) and similarity.max() > 0:
                weights = torch.softmax(similarity.float() / temperature, dim=-1).tolist()
                for shot, share in zip(chosen, weights, strict=True):
                    ballot[shot.output] = ballot.get(shot.output, 0.0) + share
            ballots.append(ballot)
        return cls(weight, ballots)

    def rows(self, indices: list[int]) -> "NeighbourVote":
        """The same votes for some of the queries (to time single requests)."""
        return replace(self, ballots=[self.ballots[i] for i in indices])

    def table(self, labels: list[str]) -> torch.Tensor:
        """(queries, labels) vote shares over ``labels``: each row sums to 1, or to 0 when no
        shot of the row has a label of the set."""
        column = {label: i for i, label in enumerate(labels)}
        votes = torch.zeros(len(self.ballots), len(labels))
        for row, ballot in enumerate(self.ballots):
            for label, share in ballot.items():
                if label in column:
                    votes[row, column[label]] = share
        total = votes.sum(dim=-1, keepdim=True)
        return torch.where(total > 0, votes / total.clamp(min=1e-12), votes)

    def winners(self, labels: list[str]) -> list[str | None]:
        """The label the shots alone would answer, per query (None: no vote)."""
        votes = self.table(labels)
        return [
            labels[int(row.argmax())] if row.sum() > 0 else None for row in votes
        ]  # fmt: skip

    def blend(self, model_scores: torch.Tensor, labels: list[str]) -> torch.Tensor:
        """Label probabilities: the model's (softmax of ``model_scores``, columns in ``labels``
        order) mixed with the vote's; rows without a vote keep the model's alone."""
        model_probs = model_scores.float().softmax(dim=-1)
        votes = self.table(labels)
        voted = votes.sum(dim=-1, keepdim=True) > 0
        mixed = (1 - self.weight) * model_probs + self.weight * votes
        return torch.where(voted, mixed, model_probs)
