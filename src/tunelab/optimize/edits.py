"""Edit operators: each turns one prompt into neighbours that differ in exactly one part.

One part per edit keeps the trajectory readable ("added 4 similar shots: +0.31") and lets
the search attribute every gain to a change.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from tunelab.optimize.parts import PromptParts
from tunelab.prompting.strategy import ANSWER_ONLY

PERSONAS_CLASSIFY = (
    "You are an expert annotator. You read each message carefully and assign the single "
    "category that fits it best.",
    "You are a precise text classification system used by a customer service team.",
)
PERSONAS_FREE = (
    "You are a knowledgeable, friendly expert. Your answers are accurate and to the point.",
    "You are a customer support agent. You give clear, practical help, step by step when "
    "steps are needed.",
)
CONSTRAINTS_CLASSIFY = (
    ANSWER_ONLY,
    "Reply with exactly one category name, copied from the list, and nothing else.",
)
SHOT_COUNTS = (0, 2, 4, 8, 16)


@dataclass(frozen=True)
class Proposal:
    parts: PromptParts
    operator: str
    change: str


@dataclass(frozen=True)
class EditSpace:
    """What the operators may try on this task."""

    classification: bool
    max_shots: int = 8
    answer_words: int = 40  # typical reference length, for the free-text length constraint
    operators: tuple[str, ...] | None = None  # None: all; () : none (LLM writer only)

    def personas(self) -> tuple[str, ...]:
        return PERSONAS_CLASSIFY if self.classification else PERSONAS_FREE

    def constraints(self) -> tuple[str, ...]:
        if self.classification:
            return CONSTRAINTS_CLASSIFY
        return (
            f"Answer in at most {self.answer_words} words.",
            "Answer directly, without greetings or repeating the question.",
        )

    def shot_counts(self) -> list[int]:
        return [k for k in SHOT_COUNTS if k <= self.max_shots]


def _persona(parts: PromptParts, space: EditSpace) -> Iterator[Proposal]:
    for persona in space.personas():
        if persona != parts.persona:
            yield Proposal(parts.edit(persona=persona), "persona", f"persona: {_short(persona)}")
    if parts.persona:
        yield Proposal(parts.edit(persona=None), "persona", "removed the persona/context")


def _format(parts: PromptParts, space: EditSpace) -> Iterator[Proposal]:
    if parts.cot:
        return  # chain of thought sets its own answer format
    for constraint in space.constraints():
        if constraint != parts.constraint:
            change = f"format: {_short(constraint)}"
            yield Proposal(parts.edit(constraint=constraint), "format", change)
    if parts.constraint:
        yield Proposal(parts.edit(constraint=None), "format", "removed the format constraint")


def _cot(parts: PromptParts, space: EditSpace) -> Iterator[Proposal]:
    if parts.cot:
        yield Proposal(parts.edit(cot=False), "cot", "removed chain of thought")
    else:
        yield Proposal(parts.edit(cot=True, constraint=None), "cot", "added chain of thought")


def _shots(parts: PromptParts, space: EditSpace) -> Iterator[Proposal]:
    """One step up or down the shot ladder; from zero shots, one step with each selector."""
    counts = space.shot_counts()
    lower = [k for k in counts if k < parts.shots]
    higher = [k for k in counts if k > parts.shots]
    if parts.shots == 0 and higher:
        for selector in ("random", "similar"):
            edited = parts.edit(shots=higher[0], selector=selector, shot_ids=())
            yield Proposal(edited, "shots", f"added {higher[0]} {selector} shots")
        return
    if parts.selector == "fixed":
        return  # the user's hand-picked shots are kept as they are
    if higher:
        yield Proposal(parts.edit(shots=higher[0]), "shots", f"shots {parts.shots} → {higher[0]}")
    if lower:
        yield Proposal(parts.edit(shots=lower[-1]), "shots", f"shots {parts.shots} → {lower[-1]}")


def _selector(parts: PromptParts, space: EditSpace) -> Iterator[Proposal]:
    if parts.shots == 0 or parts.selector == "fixed":
        return
    other = "similar" if parts.selector == "random" else "random"
    yield Proposal(parts.edit(selector=other), "selector", f"{parts.selector} → {other} shots")


def _labels(parts: PromptParts, space: EditSpace) -> Iterator[Proposal]:
    if not space.classification or "labels" in parts.task:
        return
    change = "removed the label list" if parts.list_labels else "listed the label set"
    yield Proposal(parts.edit(list_labels=not parts.list_labels), "labels", change)


def _placement(parts: PromptParts, space: EditSpace) -> Iterator[Proposal]:
    if not parts.instruction():
        return
    moved = "user" if parts.placement == "system" else "system"
    change = f"moved the instruction to the {'user turn' if moved == 'user' else 'system message'}"
    yield Proposal(parts.edit(placement=moved), "placement", change)


OPERATORS: dict[str, Callable[[PromptParts, EditSpace], Iterator[Proposal]]] = {
    "shots": _shots,
    "selector": _selector,
    "labels": _labels,
    "format": _format,
    "persona": _persona,
    "placement": _placement,
    "cot": _cot,
}


def propose_edits(parts: PromptParts, space: EditSpace) -> list[Proposal]:
    """Every single-part neighbour of ``parts`` under the enabled operators."""
    names = tuple(OPERATORS) if space.operators is None else space.operators
    return [proposal for name in names for proposal in OPERATORS[name](parts, space)]


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
