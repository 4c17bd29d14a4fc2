"""Several trained runs on one base model, loaded once.

LoRA runs become named adapters of one PEFT model (switched per request); soft-prompt runs
(prompt, prefix and P-tuning) become a KV-cache prefix in front of the same frozen base, with
the LoRA layers switched off; a full fine-tune brings its own weights. One lock serialises
generation: adapter switching is model-wide state, and a CPU gains nothing from interleaving.
"""

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tunelab.errors import TuneLabError
from tunelab.evaluation.runner import system_text
from tunelab.prompting.render import to_prompt_text
from tunelab.prompting.strategy import PromptStrategy
from tunelab.prompting.task_prefix import apply_task_prefix


@dataclass
class Served:
    """One routable model: the base, or a trained run."""

    name: str
    kind: str  # base | lora | prompt-tuning | prefix-tuning | p-tuning | full
    task_prefix: str | None = None
    strategy: PromptStrategy | None = None
    labels: list[str] | None = None
    lora_name: str | None = None
    model: object = None  # the module to call (a SoftPromptLM, a full model) or None
    max_new_tokens: int | None = None
    meta: dict = field(default_factory=dict)


class AdapterPool:
    def __init__(
        self, base_model: str, run_dirs: list[Path], device: str = "cpu", dtype: str = "float32"
    ):
        from tunelab.models import load_model

        metas = [(Path(d), _meta(Path(d))) for d in run_dirs]
        self.base_name = base_model
        loaded = load_model(base_model, device=device, dtype=dtype)
        self.dtype = dtype
        self.base, self.tokenizer = loaded.model, loaded.tokenizer
        self.lock = threading.Lock()
        self.models: dict[str, Served] = {"base": Served(self.base_name, "base")}
        self.host = None  # the PEFT model holding every LoRA adapter
        for run_dir, meta in sorted(metas, key=lambda item: item[1]["method"] == "lora"):
            self._add(run_dir, meta, device)  # soft prompts first: their caches need no LoRA
        prefixes = [s.task_prefix for s in self.models.values() if s.task_prefix]
        repeated = {p for p in prefixes if prefixes.count(p) > 1}
        if repeated:
            raise TuneLabError(f"two runs share the task prefix {sorted(repeated)[0]!r}")

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
        adapter = run_dir / "adapter"
        if meta["method"] == "full":
            from tunelab.models import load_model

            served.model = load_model(str(adapter), device=device, dtype=self.dtype).model
        else:
            if meta["base_model"] != self.base_name:
                raise TuneLabError(
                    f"{run_dir}: trained on {meta['base_model']}, but this server's base model "
                    f"is {self.base_name}; serve it with --model {meta['base_model']}"
                )
            if meta["method"] == "lora":
                served.lora_name = name
                self._load_lora(adapter, name)
            else:
                served.model = _soft_prompt_view(self.base, adapter)
        self.models[name] = served

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

    def prompt(self, served: Served, messages: list[dict]) -> str:
        """The run's prompt: its system text unless the client sent one; its task prefix."""
        messages = [dict(m) for m in messages]
        if served.strategy is not None and not any(m["role"] == "system" for m in messages):
            system = system_text(served.strategy, served.labels)
            if system:
                messages.insert(0, {"role": "system", "content": system})
        if served.task_prefix:
            for message in reversed(messages):
                if message["role"] == "user":
                    message["content"] = apply_task_prefix(message["content"], served.task_prefix)
                    break
        return to_prompt_text(self.tokenizer, messages)

    # -- generation ------------------------------------------------------------------------

    def stream(
        self, served: Served, prompt: str, max_new_tokens: int, temperature: float, seed: int
    ) -> Iterator[str]:
        """Text pieces as they are generated. The lock is held until the last piece; closing
        the iterator early (a client that hung up) stops generation before releasing it."""
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        with self.lock:
            encoded = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
            streamer = TextIteratorStreamer(
                self.tokenizer, skip_prompt=True, skip_special_tokens=True
            )
            cancelled = threading.Event()
            kwargs = dict(
                **encoded.to(self.base.device),
                max_new_tokens=max_new_tokens,
                do_sample=temperature > 0,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
                streamer=streamer,
                stopping_criteria=StoppingCriteriaList([_Cancelled(cancelled)]),
            )
            if temperature > 0:
                kwargs.update(temperature=temperature, top_k=None)
                torch.manual_seed(seed)
            failure: list[BaseException] = []
            worker = threading.Thread(
                target=self._generate, args=(served, kwargs, failure), daemon=True
            )
            worker.start()
            try:
                yield from streamer
            finally:
                cancelled.set()
                worker.join()
            if failure:
                raise failure[0]

    def _generate(self, served: Served, kwargs: dict, failure: list) -> None:
        try:
            with torch.inference_mode(), self._adapter(served):
                target = served.model or (self.host if served.lora_name else self.base)
                target.generate(**kwargs)
        except BaseException as err:  # reported by stream(); the streamer must still end
            failure.append(err)
            kwargs["streamer"].end()

    def _adapter(self, served: Served):
        """Select the run's LoRA adapter, or switch every LoRA layer off."""
        import contextlib

        if self.host is None:
            return contextlib.nullcontext()
        if served.lora_name:
            self.host.set_adapter(served.lora_name)
            return contextlib.nullcontext()
        return self.host.disable_adapter()

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


class _Cancelled:
    """Stopping criterion that ends generation once the consumer has gone away."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool)


def _meta(run_dir: Path) -> dict:
    from tunelab.training.artifacts import read_meta

    return read_meta(run_dir)


def _soft_prompt_view(base, adapter: Path):
    """The run's virtual prefix as a KV cache in front of ``base`` (PEFT wrapper discarded)."""
    from peft import PeftConfig, PeftModel

    from tunelab.training.soft_prompt import SoftPromptLM, prefix_cache_of

    if not PeftConfig.from_pretrained(adapter).is_prompt_learning:
        raise TuneLabError(f"{adapter}: not a soft-prompt adapter")
    wrapper = PeftModel.from_pretrained(base, adapter).eval()
    cache = prefix_cache_of(wrapper)
    return SoftPromptLM(base, cache)
