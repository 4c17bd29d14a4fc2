"""``--format ollama``: a GGUF and the ``Modelfile`` that imports it into Ollama.

Ollama prompts a model through a Go template, not the Jinja chat template that TuneLab
evaluated with. The Modelfile's ``TEMPLATE`` is written only for a chat format whose Go form is
known and only after checking that it renders a sample conversation exactly as the model's own
template does (ChatML today: SmolLM, Qwen, ...); otherwise it is left out and Ollama falls back
to the chat template stored in the GGUF. ``SYSTEM`` is the run's system text — or, when the run
has none, the system turn the chat template adds by itself — so the deployed model is prompted
as it was evaluated; decoding is greedy, as in TuneLab's evaluation.
"""

CHATML_GO_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n"
    "{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n"
)
CHATML_STOPS = ("<|im_end|>", "<|im_start|>")
_SAMPLE = [
    {"role": "system", "content": "S1"},
    {"role": "user", "content": "U1"},
    {"role": "assistant", "content": "A1"},
    {"role": "user", "content": "U2"},
]


def modelfile(
    tokenizer,
    gguf_name: str,
    *,
    name: str,
    system: str | None,
    task_prefix: str | None,
    max_new_tokens: int | None,
    source: str,
) -> str:
    """The Modelfile text for ``gguf_name`` (a file beside it)."""
    chatml = _renders_as_chatml(tokenizer)
    system = system or (_default_system(tokenizer) if chatml else None)
    lines = [
        f"# Exported by TuneLab from {source}",
        f"# Import:  ollama create {name} -f Modelfile    (run in this folder)",
        f"# Then:    ollama run {name}",
    ]
    if task_prefix:
        lines += [
            f"# Task prefix: this run was trained on user messages that start with "
            f"{task_prefix!r};",
            f"# start yours the same way, e.g. {task_prefix} <your question>",
        ]
    lines += ["", f"FROM ./{gguf_name}", ""]
    if chatml:
        lines += [f'TEMPLATE """{CHATML_GO_TEMPLATE}"""']
    else:
        lines += ["# TEMPLATE: not written (not ChatML); Ollama uses the GGUF's chat template"]
    if system:
        lines += [f'SYSTEM """{system}"""']
    for stop in stop_tokens(tokenizer, chatml):
        lines.append(f'PARAMETER stop "{stop}"')
    lines.append("PARAMETER temperature 0")
    if max_new_tokens:
        lines.append(f"PARAMETER num_predict {max_new_tokens}")
    return "\n".join(lines) + "\n"


def stop_tokens(tokenizer, chatml: bool) -> list[str]:
    stops = list(CHATML_STOPS) if chatml else []
    eos = tokenizer.eos_token
    return stops + [eos] if eos and eos not in stops else stops


def _renders_as_chatml(tokenizer) -> bool:
    """True when the model's chat template writes a conversation exactly as ChatML does."""
    if not isinstance(tokenizer.chat_template, str):
        return False
    expected = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in _SAMPLE)
    try:
        rendered = tokenizer.apply_chat_template(
            _SAMPLE, tokenize=False, add_generation_prompt=True
        )
    except Exception:  # a template that cannot render this conversation is not ChatML
        return False
    return rendered == expected + "<|im_start|>assistant\n"


def _default_system(tokenizer) -> str | None:
    """The system turn a ChatML template inserts when the conversation has none."""
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "U1"}], tokenize=False, add_generation_prompt=True
    )
    head = "<|im_start|>system\n"
    if not rendered.startswith(head):
        return None
    return rendered[len(head) : rendered.index("<|im_end|>")]
