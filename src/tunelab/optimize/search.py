"""Beam search over prompts, scored on the dev split, with racing to save evaluations.

Each round expands the beam: edit operators (and optionally an LLM writer) propose children,
and each child is scored chunk by chunk on the dev split. After every chunk the child is
compared with the best prompt so far *on the same examples*; once the 95% interval of the
paired difference lies below zero, the child is dropped ("pruned") without scoring the rest.
A child that survives the whole split gets its mean and bootstrap interval, and the best
`width` of them form the next beam. The search ends when the budget (prompts scored, the
start included) is spent, no new prompt can be proposed, or the user presses Ctrl-C.
"""

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from tunelab.data.loading import Example
from tunelab.errors import TuneLabError
from tunelab.evaluation import metrics as m
from tunelab.optimize.edits import EditSpace, Proposal, propose_edits
from tunelab.optimize.llm import ChatWriter, Failure, MetaContext, Scored, propose_instructions
from tunelab.optimize.parts import PromptParts
from tunelab.optimize.scoring import ExampleScore, fingerprint
from tunelab.prompting.strategy import PromptStrategy

Z_95 = 1.96


@dataclass(frozen=True)
class SearchSettings:
    budget: int = 20  # prompts scored, the starting prompt included
    width: int = 1  # beam width; 1 is greedy hill climbing
    chunk: int = 50  # dev examples between racing checks; 0 scores every child fully
    llm_proposals: int = 2  # instructions asked of the writer per beam member and round
    seed: int = 0
    resamples: int = 1000


@dataclass
class Candidate:
    id: int
    parent: int | None
    parts: PromptParts
    operator: str
    change: str
    round: int
    status: str = "pending"  # scored | pruned | failed | interrupted
    examples: int = 0
    score: dict | None = None  # {"value", "low", "high"} on the examples scored
    seconds: float = 0.0
    error: str | None = None

    def strategy(self) -> PromptStrategy:
        return self.parts.to_strategy(f"candidate-{self.id}")

    @property
    def value(self) -> float:
        return self.score["value"] if self.score else -math.inf

    def record(self) -> dict:
        return {
            "id": self.id,
            "parent": self.parent,
            "round": self.round,
            "operator": self.operator,
            "change": self.change,
            "status": self.status,
            "dev_examples": self.examples,
            "dev_score": self.score,
            "seconds": round(self.seconds, 2),
            "error": self.error,
            "prompt": fingerprint(self.strategy()),
            "strategy": self.strategy().model_dump(exclude={"name"}),
        }


@dataclass
class SearchResult:
    start: Candidate
    best: Candidate
    candidates: list[Candidate]
    stop_reason: str  # budget | converged | interrupted
    seconds: float
    rounds: int = 0
    cache: object = None  # the ScoreCache, for hit/miss counts


class Scorer(Protocol):
    """What the search needs from scoring (see `DevScorer`)."""

    def score(
        self, strategy: PromptStrategy, examples: list[Example], on_progress=None
    ) -> list[ExampleScore]: ...

    def cached(self, strategy: PromptStrategy, examples: list[Example]) -> list[ExampleScore]: ...


Event = Callable[[str, Candidate], None]


class PromptSearch:
    def __init__(
        self,
        scorer: Scorer,
        dev: list[Example],
        space: EditSpace,
        settings: SearchSettings = SearchSettings(),
        writer: ChatWriter | None = None,
        writer_examples: list[Example] = (),
        on_event: Event | None = None,
        on_progress: Callable[[int], None] | None = None,
    ):
        self.scorer, self.dev, self.space, self.settings = scorer, dev, space, settings
        self.writer, self.writer_examples = writer, list(writer_examples)
        self.on_event = on_event or (lambda event, candidate: None)
        self.on_progress = on_progress
        self.candidates: list[Candidate] = []
        self.seen: set[str] = set()
        self.best: Candidate | None = None

    def run(self, start: PromptParts) -> SearchResult:
        began = time.perf_counter()
        first = self._new(start, None, "start", "starting prompt", 0)
        stop, rounds = "converged", 0
        try:
            self._score(first, race=False)
            if first.status != "scored":
                return SearchResult(first, first, self.candidates, "failed", 0.0)
            self.best, beam = first, [first]
            while beam:
                rounds += 1
                children = self._propose(beam, rounds)
                scored = []
                for child in children:
                    if not self._claim(child.parts):
                        continue
                    if self._spent():
                        stop = "budget"
                        break
                    self._admit(child)
                    self._score(child, race=self.settings.chunk > 0)
                    if child.status == "scored":
                        scored.append(child)
                        if child.value > self.best.value:
                            self.best = child
                            self.on_event("improved", child)
                if stop == "budget":
                    break
                beam = sorted(scored, key=lambda c: (-c.value, c.id))[: self.settings.width]
        except KeyboardInterrupt:
            stop = "interrupted"
            for candidate in self.candidates:
                if candidate.status == "pending":
                    candidate.status = "interrupted"
                    self.on_event("finished", candidate)
        return SearchResult(
            first,
            self.best or first,
            self.candidates,
            stop,
            time.perf_counter() - began,
            rounds,
        )

    # -- proposals -------------------------------------------------------------------------

    def _propose(self, beam: list[Candidate], round_: int) -> list[Candidate]:
        """Children of every beam member, interleaved so each parent gets its share.

        Prompts already scored are dropped here; two parents proposing the same new prompt
        are left for `_claim`, so the prompt is scored once, at its first turn.
        """
        per_parent = []
        for parent in beam:
            proposals = propose_edits(parent.parts, self.space)
            if self.writer and self.settings.llm_proposals:
                proposals += self._written(parent, round_)
            per_parent.append([(parent, p) for p in proposals if not self._seen(p.parts)])
        return [
            Candidate(-1, parent.id, p.parts, p.operator, p.change, round_)
            for parent, p in _interleave(per_parent)
        ]

    def _seen(self, parts: PromptParts) -> bool:
        return fingerprint(parts.to_strategy("x")) in self.seen

    def _claim(self, parts: PromptParts) -> bool:
        """Mark ``parts`` as scored; False when it already was."""
        if self._seen(parts):
            return False
        self.seen.add(fingerprint(parts.to_strategy("x")))
        return True

    def _written(self, parent: Candidate, round_: int) -> list[Proposal]:
        failures = [
            Failure(e.input, e.output, s.prediction)
            for e, s in zip(self.dev, self.scorer.cached(parent.strategy(), self.dev), strict=False)
            if s.score < 1.0
        ][:3]
        rng = random.Random(self.settings.seed + round_)
        shown = rng.sample(self.writer_examples, min(3, len(self.writer_examples)))
        history = [Scored(c.parts.task, c.value) for c in self.candidates if c.status == "scored"]
        context = MetaContext(
            examples=[(e.input, e.output) for e in shown],
            history=history,
            failures=failures,
            classification=self.space.classification,
        )
        seed = self.settings.seed + 1000 * round_ + parent.id
        return propose_instructions(
            self.writer, parent.parts, context, self.settings.llm_proposals, seed
        )

    # -- scoring ---------------------------------------------------------------------------

    def _new(self, parts, parent, operator, change, round_) -> Candidate:
        self._claim(parts)
        return self._admit(Candidate(-1, parent, parts, operator, change, round_))

    def _admit(self, candidate: Candidate) -> Candidate:
        candidate.id = len(self.candidates)
        self.candidates.append(candidate)
        return candidate

    def _spent(self) -> bool:
        return len(self.candidates) >= self.settings.budget

    def _score(self, candidate: Candidate, race: bool) -> None:
        self.on_event("started", candidate)
        began = time.perf_counter()
        strategy = candidate.strategy()
        step = self.settings.chunk or len(self.dev)  # chunks also bound what Ctrl-C loses
        scores: list[float] = []
        try:
            for start in range(0, len(self.dev), step):
                chunk = self.dev[start : start + step]
                got = self.scorer.score(strategy, chunk, self.on_progress)
                scores += [s.score for s in got]
                candidate.examples = len(scores)
                if race and len(scores) < len(self.dev) and self._loses(scores):
                    candidate.status = "pruned"
                    break
            else:
                candidate.status = "scored"
        except TuneLabError as err:  # a broken candidate (bad template) must not end the search
            candidate.status, candidate.error = "failed", str(err)
        finally:
            candidate.seconds = time.perf_counter() - began
        if scores:
            candidate.score = m.mean_with_interval(
                scores, resamples=self.settings.resamples, seed=self.settings.seed
            )
        self.on_event("finished", candidate)

    def _loses(self, scores: list[float]) -> bool:
        """True when the paired 95% interval of (candidate - best) lies below zero."""
        reference = self.scorer.cached(self.best.strategy(), self.dev[: len(scores)])
        if len(reference) < len(scores):
            return False
        diffs = [s - r.score for s, r in zip(scores, reference, strict=True)]
        n = len(diffs)
        mean = sum(diffs) / n
        if n < 2:
            return False
        spread = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
        return mean + Z_95 * spread / math.sqrt(n) < 0


def _interleave(groups: list[list]) -> list:
    out = []
    for i in range(max((len(g) for g in groups), default=0)):
        out += [g[i] for g in groups if i < len(g)]
    return out
