"""Chain of thought: ask for reasoning, then pull the final answer out of the free text."""

import re

from tunelab.data.stats import normalize_answer

_ANSWER_MARK = re.compile(r"answer\s*[:：]", re.IGNORECASE)


def extract_answer(text: str, labels: list[str] | None = None) -> str:
    """The text after the last ``Answer:``; failing that, the last label mentioned; else the
    last non-empty line."""
    for line in reversed(text.splitlines()):
        pieces = [p.strip(" *\t") for p in _ANSWER_MARK.split(line)[1:]]
        answer = next((p for p in reversed(pieces) if p), None)
        if answer:
            return _closest_label(answer, labels) if labels else answer
    if labels:
        mentioned = _last_label_mentioned(text, labels)
        if mentioned:
            return mentioned
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _closest_label(answer: str, labels: list[str]) -> str:
    """An answer line that contains a label (e.g. 'refund.' or 'It is refund') is that label."""
    return _last_label_mentioned(answer, labels) or answer


def _last_label_mentioned(text: str, labels: list[str]) -> str | None:
    haystack = normalize_answer(text)
    best, best_end = None, -1
    # Longer labels first so 'card_arrival' wins over 'card' at the same place.
    for label in sorted(labels, key=len, reverse=True):
        needle = normalize_answer(label)
        if not needle:
            continue
        end = haystack.rfind(needle)
        if end >= 0 and end + len(needle) > best_end:
            best, best_end = label, end + len(needle)
    return best
