"""A prompt as separate parts the optimiser can edit one at a time.

A strategy file stores one instruction string; to add a format constraint, list the labels or
move the instruction into the user turn, the optimiser needs those pieces apart. `PromptParts`
holds them and renders back to an ordinary `PromptStrategy`, so every candidate is a strategy
file `tunelab eval --prompt` understands.
"""

from dataclasses import dataclass, replace
from typing import Literal

from tunelab.errors import TuneLabError
from tunelab.prompting.strategy import (
    ANSWER_ONLY,
    CLASSIFY_INSTRUCTION,
    DEFAULT_TEMPLATE,
    PromptStrategy,
)

LIST_LABELS = "Categories: {{ labels | join(', ') }}."
Placement = Literal["system", "user"]


@dataclass(frozen=True)
class PromptParts:
    task: str = ""  # the instruction proper (Jinja2); "" for none
    persona: str | None = None  # system/context text placed before the instruction
    list_labels: bool = False  # append the label list as its own sentence
    constraint: str | None = None  # output-format sentence
    placement: Placement = "system"  # instruction in the system message or in each user turn
    template: str = DEFAULT_TEMPLATE
    shots: int = 0
    selector: Literal["fixed", "random", "similar"] = "random"
    shot_ids: tuple[int, ...] = ()
    cot: bool = False
    decoding: str | dict | None = None  # the strategy's constrain, kept as it is (not edited)

    @property
    def mentions_labels(self) -> bool:
        return self.list_labels or "labels" in self.task

    def instruction(self) -> str:
        labels = LIST_LABELS if self.list_labels else None
        return "\n".join(p for p in (self.task, labels, self.constraint) if p)

    def to_strategy(self, name: str) -> PromptStrategy:
        instruction, template = self.instruction(), self.template
        if self.placement == "user" and instruction:
            template, instruction = f"{instruction}\n\n{template}", ""
        return PromptStrategy(
            name=name,
            system=self.persona,
            instruction=instruction,
            template=template,
            shots=self.shots,
            selector=self.selector,
            shot_ids=list(self.shot_ids),
            cot=self.cot,
            constrain=self.decoding,
        )

    def edit(self, **changes) -> "PromptParts":
        return replace(self, **changes)


def check_searchable(strategy: PromptStrategy) -> None:
    """A start prompt the search can carry whole: its edits change the shots, which a
    neighbour vote (knn_weight) depends on, and the candidates are scored without one."""
    if strategy.knn_weight:
        raise TuneLabError(
            "a prompt search does not keep knn_weight (its edits change the shots): search "
            "without it, then evaluate the best prompt with `tunelab eval --knn-weight`"
        )


def parts_of(strategy: PromptStrategy, classification: bool) -> PromptParts:
    """Split a strategy into parts; the rendered prompt says the same as the original.

    The built-in default instruction (``instruction`` unset) becomes its classification
    sentence plus the answer-only constraint, so either can be edited on its own.
    """
    check_searchable(strategy)
    task, constraint = strategy.instruction or "", None
    if strategy.instruction is None and classification:
        task, constraint = CLASSIFY_INSTRUCTION, None if strategy.cot else ANSWER_ONLY
    return PromptParts(
        task=task,
        persona=strategy.system,
        constraint=constraint,
        template=strategy.resolved_template(),
        shots=strategy.shots,
        selector=strategy.selector,
        shot_ids=tuple(strategy.shot_ids),
        cot=strategy.cot,
        decoding=strategy.constrain,
    )
