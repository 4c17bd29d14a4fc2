"""An LLM writes new instructions from the scored history (OPRO / APE style).

The meta-prompt shows a few input→output pairs, the instructions tried so far with their dev
scores (worst to best, so the best sits closest to the request), and cases the best one got
wrong; it asks for one new instruction. The writer is the local model by default or any
OpenAI-compatible chat endpoint.
"""

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from tunelab.errors import TuneLabError
from tunelab.generation import GenerationConfig, generate
from tunelab.optimize.edits import Proposal
from tunelab.optimize.parts import PromptParts
from tunelab.prompting.render import render_prompt

MAX_INSTRUCTION_CHARS = 600


class ChatWriter(Protocol):
    name: str

    def complete(self, messages: list[dict], n: int, seed: int) -> list[str]: ...


@dataclass(frozen=True)
class Scored:
    task: str
    score: float


@dataclass(frozen=True)
class Failure:
    input: str
    expected: str
    got: str


@dataclass(frozen=True)
class MetaContext:
    """What the writer sees: task examples, scored instructions, failures of the parent."""

    examples: Sequence[tuple[str, str]]
    history: Sequence[Scored]
    failures: Sequence[Failure]
    classification: bool


def meta_prompt(context: MetaContext, max_history: int = 8) -> list[dict]:
    shown = sorted(_unique_best(context.history), key=lambda s: s.score)[-max_history:]
    lines = [
        "Your job is to write the instruction that a language model receives before each "
        "input, so that it produces the expected output.",
        "",
        "Examples of inputs and expected outputs:",
    ]
    lines += [f"Input: {_clip(i, 200)}\nOutput: {_clip(o, 200)}" for i, o in context.examples]
    lines += ["", "Instructions tried so far, with their scores (higher is better):"]
    lines += [f"Instruction: {s.task or '(none)'}\nScore: {s.score:.3f}" for s in shown]
    if context.failures:
        lines += ["", "Cases the best instruction got wrong:"]
        lines += [
            f"Input: {_clip(f.input, 200)}\nExpected: {_clip(f.expected, 120)}\n"
            f"Got: {_clip(f.got, 120)}"
            for f in context.failures
        ]
    if context.classification:
        lines += ["", "The list of allowed categories is added after the instruction for you."]
    lines += [
        "",
        "Write one new instruction that differs from all the ones above and would score "
        "higher. Reply with the instruction only, in one to three sentences.",
    ]
    return [{"role": "user", "content": "\n".join(lines)}]


def propose_instructions(
    writer: ChatWriter, parent: PromptParts, context: MetaContext, n: int, seed: int
) -> list[Proposal]:
    """Up to ``n`` children of ``parent`` whose instruction the writer rewrote."""
    seen = {s.task for s in context.history} | {parent.task}
    proposals = []
    for text in writer.complete(meta_prompt(context), n, seed):
        task = clean_instruction(text)
        if not task or task in seen:
            continue
        seen.add(task)
        # The label list must survive a rewrite: the writer never sees the Jinja variable.
        edited = parent.edit(task=task, list_labels=parent.mentions_labels)
        proposals.append(Proposal(edited, f"llm:{writer.name}", f"instruction: {task}"))
    return proposals


def clean_instruction(text: str) -> str:
    """First paragraph, no quotes, no 'Instruction:' label, no template braces."""
    quotes = "\"'`“”"
    text = text.strip().split("\n\n")[0].strip().strip(quotes)
    text = re.sub(r"^(new |improved )?instruction\s*:\s*", "", text, flags=re.IGNORECASE)
    text = text.strip().strip(quotes).strip()
    text = re.sub(r"[{}%]", "", text)  # never let model output become Jinja2 syntax
    return " ".join(text.split())[:MAX_INSTRUCTION_CHARS]


class LocalWriter:
    """The evaluated model itself writes instructions (seeded sampling, so runs repeat)."""

    def __init__(self, model, tokenizer, name: str = "local", max_new_tokens: int = 80):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.max_new_tokens = max_new_tokens

    def complete(self, messages: list[dict], n: int, seed: int) -> list[str]:
        prompt = render_prompt(self.tokenizer, messages)  # the examples in it stay text
        config = GenerationConfig(
            max_new_tokens=self.max_new_tokens, temperature=0.8, top_p=0.95, seed=seed, batch_size=n
        )
        return generate(self.model, self.tokenizer, [prompt] * n, config)


class EndpointWriter:
    """Any OpenAI-compatible ``/v1/chat/completions`` server (OpenAI, vLLM, llama.cpp, ...)."""

    def __init__(self, url: str, model: str, key_env: str = "OPENAI_API_KEY", timeout=60.0):
        from openai import OpenAI

        self.url, self.model, self.name = url, model, model
        # Local servers accept any key; the client insists on one.
        key = os.environ.get(key_env) or "not-needed"
        self.client = OpenAI(base_url=url, api_key=key, timeout=timeout, max_retries=1)

    def complete(self, messages: list[dict], n: int, seed: int) -> list[str]:
        import openai

        texts = []
        for index in range(n):  # one call each: many servers ignore or reject n > 1
            try:
                reply = self.client.chat.completions.create(
                    model=self.model,
                    messages=messages,
                    temperature=0.8,
                    max_tokens=200,
                    seed=seed + index,
                )
            except openai.OpenAIError as err:
                raise TuneLabError(f"--proposer-url {self.url}: {_one_line(err)}") from None
            if reply.choices and reply.choices[0].message.content:
                texts.append(reply.choices[0].message.content)
        return texts


def _unique_best(history: Sequence[Scored]) -> list[Scored]:
    best: dict[str, Scored] = {}
    for item in history:
        if item.task not in best or item.score > best[item.task].score:
            best[item.task] = item
    return list(best.values())


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())[:300]
