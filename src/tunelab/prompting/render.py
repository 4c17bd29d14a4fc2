"""Turn a strategy + an example into chat messages and the final prompt text."""

from functools import lru_cache

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from tunelab.data.loading import Example
from tunelab.errors import TuneLabError

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
