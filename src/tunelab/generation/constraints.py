"""Constrained decoding: at each step only the tokens that keep the answer inside a grammar
(any JSON object, a JSON schema, or a regex) may be chosen.

The grammar engine is llguidance (the one llama.cpp and vLLM ship): it compiles JSON schemas
and regexes itself, computes a step's token mask in ~0.2 ms for this 49k vocabulary on one CPU
core (xgrammar: ~0.3 ms) and is an 8 MB wheel with no dependencies (xgrammar pulls in triton,
1 GB). The mask is applied by a transformers ``LogitsProcessor`` with one matcher per row, so
one batch can mix rows with different grammars and rows with none (the server does this).
"""

import functools
import json
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from tunelab.errors import TuneLabError

Kind = Literal["json", "schema", "regex"]


@dataclass(frozen=True)
class Constraint:
    """What an answer must be: ``json`` (any JSON object), ``schema`` (JSON valid under
    ``value``, a schema as JSON text) or ``regex`` (text fully matching ``value``)."""

    kind: Kind
    value: str = ""

    @classmethod
    def of(cls, stored) -> "Constraint | None":
        """From a strategy's ``constrain`` (None, 'json', 'regex:PATTERN' or a JSON schema),
        checked and compiled here, the one place that does: a schema that is not valid JSON
        Schema, or a regex or schema the grammar engine cannot compile, is one TuneLabError."""
        if stored is None:
            return None
        if isinstance(stored, dict):
            _check_schema(stored)
            # property order kept: the grammar writes keys in the schema's order
            constraint = cls("schema", json.dumps(stored))
        elif stored == "json":
            constraint = cls("json")
        elif isinstance(stored, str) and stored.startswith("regex:") and stored != "regex:":
            constraint = cls("regex", stored.removeprefix("regex:"))
        else:
            raise TuneLabError(
                f"constrain {stored!r}: use json, regex:PATTERN (a non-empty pattern) or a JSON "
                "schema"
            )
        constraint.grammar()
        return constraint

    def grammar(self) -> str:
        """The llguidance grammar; a schema or regex it cannot compile raises TuneLabError."""
        return _compile(self.kind, self.value)


@functools.lru_cache(maxsize=64)  # a server sees the same few schemas again and again
def _compile(kind: Kind, value: str) -> str:
    from llguidance import LLMatcher

    if kind == "regex":
        grammar = LLMatcher.grammar_from_regex(value)
    else:
        schema = json.loads(value) if kind == "schema" else {"type": "object"}
        # ", " and ": " as json.dumps writes them, so answers look like the usual data
        options = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False}
        try:
            grammar = LLMatcher.grammar_from_json_schema(schema, defaults=options)
        except (ValueError, TypeError) as err:
            raise TuneLabError(f"JSON schema not usable as a constraint: {err}") from None
    error = LLMatcher.validate_grammar(grammar)
    if error:
        raise TuneLabError(f"{kind} constraint not usable: {' '.join(error.split())}")
    return grammar


def _check_schema(schema: dict) -> None:
    import jsonschema

    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as err:
        raise TuneLabError(f"not a valid JSON schema ({' '.join(err.message.split())})") from None


def constraint_value(
    text: str | dict | None,
    *,
    format_schema: dict | None = None,
    format_regex: str | None = None,
    base: Path | None = None,
) -> str | dict | None:
    """``--constrain`` / ``constrain:`` as a strategy stores it. Accepted: ``none``; ``json``;
    ``schema`` / ``regex`` (the evaluation's own format schema / regex); ``regex:PATTERN``; a
    JSON schema file (relative to ``base``), read here so a run carries its schema inline;
    an inline schema (a mapping, from YAML)."""
    if isinstance(text, dict):
        return text
    if text is not None and not isinstance(text, str):
        raise TuneLabError(f"constrain {text!r}: use json, schema, regex, regex:PATTERN, none or a "
                           "schema file")  # fmt: skip
    if text is None or text.strip().lower() in ("none", "off"):
        return None
    text = text.strip()
    if text == "json" or text.startswith("regex:"):
        return text
    if text == "schema":
        if format_schema is None:
            raise TuneLabError("constrain schema: no format schema is set (--format-schema, or "
                               "eval.format_schema in an experiment file)")  # fmt: skip
        return format_schema
    if text == "regex":
        if not format_regex:
            raise TuneLabError("constrain regex: no format regex is set (--format-regex, or "
                               "eval.format_regex in an experiment file)")  # fmt: skip
        return f"regex:{format_regex}"
    path = Path(text).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    if path.is_file():
        return read_schema(path)
    hint = "no such schema file" if text.endswith(".json") else "unknown constraint"
    raise TuneLabError(
        f"constrain {text!r}: {hint}; use json, schema, regex, regex:PATTERN or a schema file"
    )


def read_schema(path: Path) -> dict:
    """A JSON schema file, checked against the meta-schema (one line naming the file)."""
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TuneLabError(f"{path}: cannot read JSON schema ({err})") from None
    if not isinstance(schema, dict):
        raise TuneLabError(f"{path}: a JSON schema must be an object")
    try:
        _check_schema(schema)
    except TuneLabError as err:
        raise TuneLabError(f"{path}: {err}") from None
    return schema


# -- applying it ------------------------------------------------------------------------------

_TOKENIZERS: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()


def _ll_tokenizer(tokenizer, vocab_size: int, eos_ids: list[int]):
    """llguidance's view of a tokenizer (~1 s to build, so kept per tokenizer)."""
    import llguidance.hf

    per_tokenizer = _TOKENIZERS.setdefault(tokenizer, {})
    key = (vocab_size, tuple(eos_ids))
    if key not in per_tokenizer:
        if not getattr(tokenizer, "is_fast", False):
            raise TuneLabError("constrained decoding needs a fast (Rust) tokenizer")
        per_tokenizer[key] = llguidance.hf.from_tokenizer(
            tokenizer, n_vocab=vocab_size, eos_token=eos_ids
        )
    return per_tokenizer[key]


CLOSING = set('"}]')  # characters that end a JSON string, object or array


def _closing_tokens(tokenizer, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which token ids spell only closing characters (``"``, ``}``, ``]``, ``"}`` ...), and
    which of those start with a quote (the ones that can end a string): what a row about to
    run out of tokens is steered to, so its JSON ends in time."""
    per_tokenizer = _TOKENIZERS.setdefault(tokenizer, {})
    key = ("closing", vocab_size)
    if key not in per_tokenizer:
        texts = tokenizer.batch_decode([[i] for i in range(min(vocab_size, len(tokenizer)))])
        closing = torch.zeros(vocab_size, dtype=torch.bool)
        quoted = torch.zeros(vocab_size, dtype=torch.bool)
        for index, text in enumerate(texts):
            closing[index] = bool(text) and set(text) <= CLOSING
            quoted[index] = bool(closing[index]) and text.startswith('"')
        per_tokenizer[key] = (closing, quoted)
    return per_tokenizer[key]


def grammar_problem(tokenizer, vocab_size: int, eos_ids) -> str | None:
    """Why constrained decoding cannot run with this tokenizer and model (None: it can).
    Builds the grammar engine's tokenizer now, so a server pays its ~1 s at start-up rather
    than inside its first constrained batch."""
    try:
        _ll_tokenizer(tokenizer, vocab_size, sorted(eos_ids))
    except TuneLabError as err:
        return str(err)
    except (ValueError, TypeError) as err:  # llguidance: e.g. the vocabulary is larger
        return f"the grammar engine cannot use this tokenizer ({' '.join(str(err).split())})"
    return None


class GrammarProcessor:
    """A logits processor (transformers' ``LogitsProcessor`` protocol) that masks each
    constrained row to its grammar's next tokens.

    ``constraints`` has one entry per batch row (None: unconstrained). The first call sees the
    prompts (and the logits' width, the vocabulary the mask covers); each later call first
    feeds every row's last chosen token to its matcher. A row that chose end of sequence is
    left alone from then on (generate pads it); one whose grammar is complete (llguidance
    stops the matcher when nothing may follow) or broken may only end.

    ``budgets`` (each row's max_new_tokens) let a row finish inside its grammar: in its last
    ``RESERVE`` steps, end of sequence is taken as soon as the grammar allows it, and before
    that the tokens that close strings, objects and arrays are preferred whenever the grammar
    allows one (an answer cut mid-string is not valid JSON).

    ``warpers`` (temperature, top-p) run after the mask: transformers runs a caller's
    processors after its own, and a top-p cut made before the mask could leave a row with no
    allowed token.
    """

    RESERVE = 10  # closing a string, a key's value and a few levels of nesting fits

    def __init__(self, tokenizer, constraints: list, eos_ids, warpers=(), budgets=None):
        self.tokenizer, self.constraints = tokenizer, list(constraints)
        self.budgets = list(budgets) if budgets is not None else [None] * len(self.constraints)
        self.steps = 0  # tokens generated so far (every row of a batch steps together)
        self.eos_ids = sorted(eos_ids)
        self.warpers = list(warpers)
        self.matchers: list | None = None
        self.ended = [False] * len(self.constraints)  # the row chose end of sequence
        self.prompt_seen = False

    def _start(self, vocab_size: int) -> None:
        """One matcher per constrained row: each grammar built once, then copied per row."""
        from llguidance import LLMatcher

        ll = _ll_tokenizer(self.tokenizer, vocab_size, self.eos_ids)
        built: dict[Constraint, LLMatcher] = {}
        self.matchers = []
        for constraint in self.constraints:
            if constraint is None:
                self.matchers.append(None)
                continue
            if constraint not in built:
                built[constraint] = LLMatcher(ll, constraint.grammar(), log_level=0)
            self.matchers.append(built[constraint].deep_copy())

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.matchers is None:
            self._start(scores.shape[-1])
        if not self.prompt_seen:  # the first call: nothing generated yet
            self.prompt_seen = True
        else:
            self.steps += 1
            for row, token in enumerate(input_ids[:, -1].tolist()):
                matcher = self.matchers[row]
                if matcher is None or self.ended[row]:
                    continue
                if token in self.eos_ids:
                    self.ended[row] = True
                elif not matcher.is_stopped() and not matcher.is_error():
                    matcher.consume_token(token)
        rows = [i for i, m in enumerate(self.matchers) if m is not None and not self.ended[i]]
        if rows:
            scores = self._mask(scores, rows)
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        return scores

    def _mask(self, scores: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """Each row's allowed tokens; a row whose grammar is complete (or broken) may only end."""
        width = scores.shape[-1]
        bits = torch.zeros((len(rows), (width + 31) // 32), dtype=torch.int32)
        only_end = []
        for slot, row in enumerate(rows):
            matcher = self.matchers[row]
            if matcher.is_stopped() or matcher.is_error():
                only_end.append(slot)
            else:
                view = bits[slot]
                matcher.unsafe_compute_mask_ptr(view.data_ptr(), view.numel() * 4)
        unpacked = np.unpackbits(bits.numpy().view(np.uint8), axis=1, bitorder="little")
        allowed = torch.from_numpy(unpacked[:, :width].astype(bool))
        for slot in only_end:
            allowed[slot, self.eos_ids] = True
        self._steer_to_an_end(allowed, rows, width)
        index = torch.tensor(rows, device=scores.device)
        scores = scores.clone()
        scores[index] = scores[index].masked_fill(~allowed.to(scores.device), float("-inf"))
        return scores

    def _steer_to_an_end(self, allowed: torch.Tensor, rows: list[int], width: int) -> None:
        """Rows in their last RESERVE steps take end of sequence as soon as the grammar allows
        it; before that, a closing token when the grammar allows one: inside a string (most
        of the vocabulary allowed) one that starts with a quote, elsewhere a bracket."""
        closers = None
        for slot, row in enumerate(rows):
            budget = self.budgets[row]
            if budget is None or budget - self.steps > self.RESERVE:
                continue
            mask = allowed[slot]
            if mask[self.eos_ids].any():
                mask[:] = False
                mask[self.eos_ids] = True
                continue
            closers = closers or _closing_tokens(self.tokenizer, width)
            closing, quoted = closers
            in_string = int(mask.sum()) > width // 2
            for wanted in ((quoted if in_string else closing & ~quoted), closing):
                if (mask & wanted).any():
                    mask &= wanted
                    break


def grammar_processors(tokenizer, constraints, eos_ids, temperature=0.0, top_p=1.0, budgets=None):
    """(logits processors, generate options) for a batch with these per-row constraints
    (and each row's max_new_tokens); nothing to add when no row is constrained."""
    if not any(c is not None for c in constraints):
        return [], {}
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    warpers, options = [], {}
    if temperature > 0:  # sampling: temperature and top-p after the mask, generate's own off
        warpers.append(TemperatureLogitsWarper(temperature))
        if top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p))
        options = {"temperature": 1.0, "top_p": 1.0}
    return [GrammarProcessor(tokenizer, constraints, eos_ids, warpers, budgets)], options
