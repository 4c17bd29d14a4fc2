"""Several trained runs on one base model, loaded once, answered by one generation engine.

LoRA runs become named adapters of one PEFT model (chosen per row of a batch); soft-prompt runs
(prompt, prefix and P-tuning) become a KV-cache prefix in front of the same frozen base, with
the LoRA layers switched off; a full fine-tune brings its own weights. Requests go to the
:class:`~tunelab.generation.engine.Engine`, whose one worker batches whatever is waiting.
"""

import queue
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.errors import TuneLabError
from tunelab.generation.constraints import Constraint, grammar_problem
from tunelab.generation.engine import BASE_ADAPTER, Engine, Request, Route
from tunelab.models.registry import portable_model_name
from tunelab.prompting.render import encode_chat, shot_turns, system_text
from tunelab.prompting.shots import ShotSource
from tunelab.prompting.strategy import PromptStrategy
from tunelab.prompting.task_prefix import apply_task_prefix
from tunelab.training.artifacts import read_shot_pool, run_retriever


@dataclass
class Served:
    """One routable model: the base, or a trained run."""

    name: str
    kind: str  # base | lora | prompt-tuning | prefix-tuning | p-tuning | full
    task_prefix: str | None = None
    strategy: PromptStrategy | None = None
    labels: list[str] | None = None
    lora_name: str | None = None
    model: object = None  # a full fine-tune's own model, or None
    prefix: object = None  # a soft prompt's virtual tokens as a KV cache (batch of one)
    max_new_tokens: int | None = None
    constraint: Constraint | None = None  # the run's own (its strategy's constrain)
    shots: ShotSource | None = None  # a run trained with shots retrieves them the same way
    retriever_warning: str | None = None  # why its similar shots differ from training's
    classifier: object = None  # a classification-head run: answers with a label, no decoding
    meta: dict = field(default_factory=dict)
    route: Route | None = None  # how the engine runs it (set once every run is loaded)


class AdapterPool:
    def __init__(
        self,
        base_model: str,
        run_dirs: list[Path],
        device: str = "cpu",
        dtype: str = "float32",
        max_batch: int = 8,
    ):
        from tunelab.models import load_model

        metas = [(Path(d), _meta(Path(d))) for d in run_dirs]
        self.base_name = base_model
        loaded = load_model(base_model, device=device, dtype=dtype)
        self.dtype = dtype
        self.base, self.tokenizer = loaded.model, loaded.tokenizer
        self.models: dict[str, Served] = {"base": Served(self.base_name, "base")}
        self.host = None  # the PEFT model holding every LoRA adapter
        self._classifier_thread = None  # answers classification-head runs, made on first use
        for run_dir, meta in sorted(metas, key=lambda item: item[1]["method"] == "lora"):
            self._add(run_dir, meta, device)  # soft prompts first: their caches need no LoRA
        prefixes = [s.task_prefix for s in self.models.values() if s.task_prefix]
        repeated = {p for p in prefixes if prefixes.count(p) > 1}
        if repeated:
            raise TuneLabError(f"two runs share the task prefix {sorted(repeated)[0]!r}")
        for served in self.models.values():
            served.route = self._route_of(served)
        self.context = getattr(self.base.config, "max_position_embeddings", None)
        eos = self.base.generation_config.eos_token_id
        eos_ids = {self.tokenizer.eos_token_id} | set(eos if isinstance(eos, list) else [eos])
        self.engine = Engine(self.tokenizer, max_batch=max_batch, eos_ids=eos_ids - {None})
        vocab = self.base.get_output_embeddings().weight.shape[0]
        # why constrained decoding (response_format, a run's constrain) is unavailable, if so
        self.grammar_problem = grammar_problem(self.tokenizer, vocab, self.engine.eos_ids)
        constrained = [s.name for s in self.models.values() if s.constraint is not None]
        if self.grammar_problem and constrained:
            raise TuneLabError(f"{constrained[0]} decodes with a constraint, but "
                               f"{self.grammar_problem}")  # fmt: skip

    def _route_of(self, served: Served) -> Route:
        if served.model is not None:  # a full fine-tune
            return Route(served.model)
        module = self.host or self.base
        off = BASE_ADAPTER if self.host is not None else None
        return Route(module, served.lora_name or off, served.prefix)

    def _add(self, run_dir: Path, meta: dict, device: str) -> None:
        name = run_dir.resolve().name
        if name in self.models or name == self.base_name:
            raise TuneLabError(f"{run_dir}: a model named {name!r} is already served")
        served = Served(
            name,
            meta["method"],
            task_prefix=meta.get("task_prefix"),
            strategy=PromptStrategy.model_validate(meta["strategy"]),
            labels=meta.get("labels"),
            max_new_tokens=meta.get("max_new_tokens"),
            meta=meta,
        )
        served.constraint = Constraint.of(served.strategy.constrain)
        if served.strategy.shots:
            pool = read_shot_pool(run_dir, meta)
            seed = (meta.get("settings") or {}).get("seed", 0)
            embedder, why = run_retriever(run_dir, meta)
            served.retriever_warning = why if served.strategy.similar_shots else None
            served.shots = ShotSource(served.strategy, pool, seed=seed, embedder=embedder)
        adapter = run_dir / "adapter"
        if meta["method"] != "full" and meta["base_model"] != portable_model_name(self.base_name):
            raise TuneLabError(
                f"{run_dir}: trained on {meta['base_model']}, but this server's base model "
                f"is {self.base_name}; serve it with --model {meta['base_model']}"
            )
        if meta.get("head") == "classifier":
            from tunelab.training.artifacts import load_trained_run

            served.classifier = load_trained_run(run_dir, device=device, dtype=self.dtype).model
        elif meta["method"] == "full":
            from tunelab.models import load_model

            served.model = load_model(str(adapter), device=device, dtype=self.dtype).model
        else:
            if meta["method"] == "lora":
                served.lora_name = name
                self._load_lora(adapter, name)
            else:
                served.prefix = _soft_prompt_cache(self.base, adapter)
        self.models[name] = served

    def warnings(self) -> list[str]:
        """What the person starting the server should know about the runs it serves."""
        notes = [
            f"{served.name}: {served.retriever_warning}"
            for served in self.models.values()
            if served.retriever_warning
        ]
        return notes + [
            f"{served.name}: answers without its neighbour vote (knn_weight "
            f"{served.strategy.knn_weight:g}), which only its evaluations (eval, compare, train) "
            "blend into label scores"
            for served in self.models.values()
            if served.strategy is not None and served.strategy.knn_weight
        ]

    def _load_lora(self, adapter: Path, name: str) -> None:
        from peft import PeftModel

        if self.host is None:
            self.host = PeftModel.from_pretrained(self.base, adapter, adapter_name=name).eval()
        else:
            self.host.load_adapter(str(adapter), adapter_name=name)

    # -- routing ---------------------------------------------------------------------------

    def route(self, model: str | None, messages: list[dict]) -> Served:
        """By ``model`` (a run name, or the base's name), else by the task prefix that starts
        the last user message, else the base model."""
        if model and model not in ("base", self.base_name):
            if model not in self.models:
                raise LookupError(model)
            return self.models[model]
        if model is None:
            last = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
            for served in self.models.values():
                if served.task_prefix and last.lstrip().startswith(served.task_prefix):
                    return served
        return self.models["base"]

    def messages(self, served: Served, messages: list[dict]) -> list[dict]:
        """The run's conversation: its system text unless the client sent one; its task
        prefix in front of the last user message."""
        messages = [dict(m) for m in messages]
        if served.strategy is not None and not any(m["role"] == "system" for m in messages):
            system = system_text(served.strategy, served.labels)
            if system:
                messages.insert(0, {"role": "system", "content": system})
        last = next((m for m in reversed(messages) if m["role"] == "user"), None)
        if served.task_prefix and last is not None:
            last["content"] = apply_task_prefix(last["content"], served.task_prefix)
        if served.shots is not None and last is not None:
            messages = _with_shots(messages, served, last["content"])
        return messages

    def encode(self, served: Served, messages: list[dict]) -> list[int]:
        """The prompt's token ids; message contents are plain text (a special-token spelling
        typed by a user stays text), only the chat template's own markers are special."""
        return encode_chat(self.tokenizer, self.messages(served, messages))

    # -- generation ------------------------------------------------------------------------

    def submit(self, served: Served, ids: list[int], max_new_tokens: int, sink, **sampling):
        """Queue one generation; ``sink(kind, value)`` hears ("delta", text)... then
        ("done", finish_reason) or ("error", message), from the engine's thread."""
        if served.classifier is not None:
            return self._classify(served, ids, sink)
        request = Request(served.route, ids, max_new_tokens, sink, **sampling)
        return self.engine.submit(request)

    def _classify(self, served: Served, ids: list[int], sink) -> "Labelled":
        """A classification head's answer, its label as the whole reply, computed on the
        pool's own thread (one forward pass; not worth a place in the decoding batch)."""
        from concurrent.futures import ThreadPoolExecutor

        from tunelab.evaluation.classifier import classify

        def answer() -> None:
            try:
                label = classify(served.classifier, self.tokenizer, [ids])[0]
            except Exception as err:  # reported to the client, like a failed generation
                sink("error", f"classification failed: {err}")
                return
            sink("delta", label)
            sink("done", "stop")

        if self._classifier_thread is None:
            self._classifier_thread = ThreadPoolExecutor(1, thread_name_prefix="classify")
        self._classifier_thread.submit(answer)
        return Labelled()

    def stream(
        self, served: Served, ids: list[int], max_new_tokens: int, **sampling
    ) -> Iterator[str]:
        """Text pieces as they are generated, for a caller that blocks (the terminal chat).
        Closing the iterator early cancels the generation."""
        events: queue.Queue = queue.Queue()
        request = self.submit(
            served, ids, max_new_tokens, lambda *event: events.put(event), **sampling
        )
        try:
            while True:
                kind, value = events.get()
                if kind == "delta":
                    yield value
                elif kind == "error":
                    raise TuneLabError(value)
                else:
                    return
        finally:
            request.cancel()

    def close(self) -> None:
        self.engine.close()
        if self._classifier_thread is not None:
            self._classifier_thread.shutdown(wait=True, cancel_futures=True)


class Labelled:
    """The request handle of a classification head's answer (one label: one token)."""

    completion_tokens = 1

    def cancel(self) -> None:
        """Nothing to stop: the answer is one forward pass."""


def _with_shots(messages: list[dict], served: Served, query: str) -> list[dict]:
    """The run's retrieved shots, as in training and evaluation: worked turns after the
    system message, before the conversation."""
    turns = shot_turns(served.strategy, served.shots.for_query(query), served.labels)
    worked = [
        {"role": role, "content": text}
        for question, answer in turns
        for role, text in (("user", question), ("assistant", answer))
    ]
    system = [m for m in messages if m["role"] == "system"]
    return system + worked + [m for m in messages if m["role"] != "system"]


def _meta(run_dir: Path) -> dict:
    from tunelab.training.artifacts import read_meta

    return read_meta(run_dir)


def _soft_prompt_cache(base, adapter: Path):
    """The run's virtual prefix as a KV cache for ``base`` (PEFT wrapper discarded)."""
    from peft import PeftConfig, PeftModel

    from tunelab.training.soft_prompt import prefix_cache_of

    if not PeftConfig.from_pretrained(adapter).is_prompt_learning:
        raise TuneLabError(f"{adapter}: not a soft-prompt adapter")
    wrapper = PeftModel.from_pretrained(base, adapter).eval()
    return prefix_cache_of(wrapper)
