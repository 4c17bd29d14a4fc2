"""Prompt strategies: templates with context, few-shot examples and chain of thought."""

from tunelab.prompting.strategy import PromptStrategy, load_strategy

__all__ = ["PromptStrategy", "load_strategy"]
