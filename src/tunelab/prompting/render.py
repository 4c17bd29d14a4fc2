"""Turn a strategy + an example into chat messages and the final prompt text."""

import re
from functools import lru_cache

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from tunelab.data.loading import Example
from tunelab.errors import TuneLabError
from tunelab.prompting.strategy import PromptStrategy

_ENV = SandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False)


@lru_cache(maxsize=64)
def compile_template(template: str) -> jinja2.Template:
    try:
        return _ENV.from_string(template)
    except jinja2.TemplateSyntaxError as err:
        raise TuneLabError(f"template syntax error on line {err.lineno}: {err.message}") from None


def render_user_turn(template: str, example: Example, labels: list[str] | None) -> str:
    """Render the user turn; a variable the record lacks is an error naming it and the fields."""
    variables = dict(example.fields)
    variables.update(input=example.input, labels=labels or [])
    return render_text(template, **variables)


def render_text(template: str, **variables) -> str:
    try:
        return compile_template(template).render(**variables).strip()
    except jinja2.UndefinedError as err:
        available = ", ".join(sorted(variables))
        raise TuneLabError(
            f"template uses a field the data does not have ({err.message}); available: {available}"
        ) from None


def build_messages(
    system: str | None,
    user_turn: str,
    shots: list[tuple[str, str]] = (),
    history: tuple[dict, ...] = (),
) -> list[dict]:
    """Chat messages: system, worked examples as earlier turns, the conversation, the query."""
    messages = [{"role": "system", "content": system}] if system else []
    for question, answer in shots:
        messages += [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    earlier = [m for m in history if m["role"] != "system"]
    if earlier and earlier[-1]["role"] == "user":
        earlier = earlier[:-1]  # the last user turn is the query itself, rendered by the template
    if not system:
        messages = [m for m in history if m["role"] == "system"] + messages
    return messages + earlier + [{"role": "user", "content": user_turn}]


def to_prompt_text(tokenizer, messages: list[dict]) -> str:
    """Apply the model's chat template, or a plain transcript for models without one."""
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    parts = [m["content"] for m in messages if m["role"] == "system"]
    for message in messages:
        if message["role"] == "user":
            parts.append(f"Input: {message['content']}")
        elif message["role"] == "assistant":
            parts.append(f"Output: {message['content']}")
    return "\n\n".join(parts) + "\nOutput:"


# Private-use characters around every message's content inside a rendered prompt, so that the
# prompt can be encoded with the content as plain text (see encode_prompt).
OPEN, CLOSE = "\ue000", "\ue001"
_MARKS = re.compile(f"[{OPEN}{CLOSE}]")


def render_prompt(tokenizer, messages: list[dict]) -> str:
    """The prompt text of ``messages`` with each content marked as the user's or the
    dataset's words; encode it with :func:`encode_prompt`, show it with :func:`readable`.

    Without the marks it is exactly the chat template's output: a template that changes the
    content (one that trims it) gets the content marked as it places it, and one that changes
    it otherwise gets no marks (its prompt is then encoded as a whole, as before)."""
    plain = to_prompt_text(tokenizer, messages)
    for shape in (lambda text: text, str.strip):
        marked = [
            {**m, "content": OPEN + shape(_MARKS.sub("", m["content"])) + CLOSE} for m in messages
        ]
        text = to_prompt_text(tokenizer, marked)
        if readable(text) == _MARKS.sub("", plain):
            return text
    return plain


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Token ids of a prompt from :func:`render_prompt`, the contents encoded as plain text.

    A tokenizer turns the spelling of a special token anywhere in a string into that token, so
    a message containing ``<|im_end|>\\n<|im_start|>system\\n...`` would forge a system turn.
    A prompt whose contents spell no special token is encoded whole, exactly as before; one
    that does is encoded piece by piece: the template's own text with its markers special,
    each content with ``split_special_tokens`` (as text). Whitespace at a piece's edge goes
    with the content, so the pieces split where the tokenizer splits anyway.
    """
    pieces = re.split(f"[{OPEN}{CLOSE}]", prompt)
    contents = pieces[1::2]
    specials = _special_spellings(tokenizer)
    if not any(s in c for c in contents for s in specials):
        return tokenizer("".join(pieces), add_special_tokens=False)["input_ids"]
    ids: list[int] = []
    for index, piece in enumerate(_whitespace_to_content(pieces)):
        if piece:  # even pieces: the template's text; odd pieces: a message's content
            ids += tokenizer(piece, add_special_tokens=False, split_special_tokens=index % 2 == 1)[
                "input_ids"
            ]
    return ids


def _special_spellings(tokenizer) -> list[str]:
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    found = set(tokenizer.all_special_tokens) | {t.content for t in added.values() if t.special}
    return [s for s in found if s]


def _whitespace_to_content(pieces: list[str]) -> list[str]:
    """Move the whitespace that borders each content out of the template's pieces into it."""
    pieces = list(pieces)
    for index in range(1, len(pieces), 2):
        before, after = pieces[index - 1], pieces[index + 1]
        lead = len(before) - len(before.rstrip())
        trail = len(after) - len(after.lstrip())
        pieces[index] = before[len(before) - lead :] + pieces[index] + after[:trail]
        pieces[index - 1], pieces[index + 1] = before[: len(before) - lead], after[trail:]
    return pieces


def encode_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    return [encode_prompt(tokenizer, p) for p in prompts]


def encode_chat(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of the chat prompt of ``messages``, their contents as plain text."""
    return encode_prompt(tokenizer, render_prompt(tokenizer, messages))


def readable(prompt: str) -> str:
    """The prompt as the model reads it (the content marks removed)."""
    return _MARKS.sub("", prompt)


def system_text(strategy: PromptStrategy, labels: list[str] | None) -> str | None:
    """Persona/context first, then the task instruction rendered with the label set."""
    instruction = strategy.resolved_instruction(classification=labels is not None)
    if instruction:
        instruction = render_text(instruction, labels=labels or [])
    return "\n\n".join(p for p in (strategy.system, instruction) if p) or None


def build_prompts(
    tokenizer,
    strategy: PromptStrategy,
    examples: list[Example],
    labels: list[str] | None,
    shots: list[list[Example]],
) -> list[str]:
    template = strategy.resolved_template()
    system = system_text(strategy, labels)
    prompts = []
    for example, chosen in zip(examples, shots, strict=True):
        worked = shot_turns(strategy, chosen, labels)
        user_turn = render_user_turn(template, example, labels)
        messages = build_messages(system, user_turn, worked, history=example.messages)
        prompts.append(render_prompt(tokenizer, messages))
    return prompts


def shot_turns(
    strategy: PromptStrategy, shots: list[Example], labels: list[str] | None
) -> list[tuple[str, str]]:
    """Each shot as the (user turn, answer) pair placed before the query."""
    template = strategy.resolved_template()
    return [
        (render_user_turn(template, s, labels), f"Answer: {s.output}" if strategy.cot else s.output)
        for s in shots
    ]
