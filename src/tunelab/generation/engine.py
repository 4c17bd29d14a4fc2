"""The request engine behind `tunelab serve` and `tunelab chat`: one worker thread, fed by a
queue, decodes the requests that are waiting together in one batch.

Why a dynamic batcher of our own around ``generate`` rather than transformers' continuous-
batching generator (``generate_batch``): that one measured 15 tok/s on this CPU against 56 tok/s
for one left-padded ``generate`` over the same 8 prompts, and it takes neither PEFT's mixed-
adapter batches nor a caller's KV prefix, which is how soft-prompt runs are served. Here one
batch mixes every kind of run on the shared base:

- LoRA runs share it, each row its own adapter, all adapters computed at once per layer
  (``generation.multi_lora``; PEFT's mixed-adapter batches, ``adapter_names``, where a layer
  cannot be fused); ``__base__`` switches LoRA off for a row;
- soft-prompt runs (prompt, prefix, P-tuning) bring their virtual prefix as KV cache rows,
  stacked and left-padded to the longest (the padding masked out), so each row's real tokens
  sit at the positions they have when run alone; the base model rides along with no prefix;
- a full fine-tune is its own model and is batched with requests for the same model only.

Greedy requests share batches; a sampled request runs alone so its seed means what it says.
A request may carry a grammar (JSON, a JSON schema, a regex): each row has its own matcher, so
constrained and free rows share a batch too.
Every row stops on its own (end of sequence, a stop string, its ``max_tokens``, or its client
going away); the batch ends when all rows have. Requests that arrive meanwhile wait for the next
batch (no slot refill mid-batch: ``generate`` cannot add rows). Before a batch starts with
free slots, the worker waits ``gather_seconds`` (50 ms) for more requests: clients answered
together by the last batch send their next requests a few milliseconds apart, and without the
wait the first to arrive would start a batch of one while the rest queue behind it.
"""

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from tunelab.generation.constraints import Constraint, grammar_processors
from tunelab.generation.multi_lora import fusable_layers, fused_adapters

log = logging.getLogger("tunelab.generation")
BASE_ADAPTER = "__base__"  # PEFT's name for "no LoRA" in a mixed-adapter batch


@dataclass(frozen=True)
class Route:
    """How a served model is run: the module ``generate`` is called on, the LoRA adapter of
    its rows (None when the module has no adapters) and its virtual prefix (a KV cache of
    batch one, or None)."""

    module: object
    adapter: str | None = None
    prefix: object = None


@dataclass
class Request:
    route: Route
    ids: list[int]  # the prompt's token ids
    max_new_tokens: int
    sink: Callable[
        [str, object], None
    ]  # ("delta", text) ... then ("done", reason) / ("error", msg)
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    constraint: Constraint | None = None  # the answer kept inside this grammar
    cancelled: threading.Event = field(default_factory=threading.Event)
    completion_tokens: int = 0

    def cancel(self) -> None:
        """Stop generating for this request (its client went away); its sink hears nothing more."""
        self.cancelled.set()

    def emit(self, kind: str, value) -> None:
        """Tell the sink; a sink that fails (its event loop is gone) cancels this request
        alone, never the batch or the worker."""
        if self.cancelled.is_set():
            return
        try:
            self.sink(kind, value)
        except Exception:
            log.debug("a request's sink failed; cancelling it", exc_info=True)
            self.cancel()


class Engine:
    def __init__(
        self, tokenizer, *, max_batch: int = 8, eos_ids: set[int] | None = None, start=True,
        gather_seconds: float = 0.05, fuse_lora: bool = True,
    ):  # fmt: skip
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.gather_seconds = gather_seconds if max_batch > 1 else 0.0
        self.eos_ids = eos_ids or {tokenizer.eos_token_id}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.queue: queue.Queue[Request | None] = queue.Queue()
        self.pending: deque[Request] = deque()  # taken off the queue, not yet decoded
        self.busy = 0  # requests being decoded now
        self.closed = False
        self.fuse_lora = fuse_lora
        self._fusable: dict[int, list | None] = {}  # id(module) -> its fusable LoRA layers
        self.worker = threading.Thread(target=self._run, name="tunelab-generation", daemon=True)
        if start:  # start=False: queue requests first, then start() (tests of batching)
            self.worker.start()

    def start(self) -> None:
        self.worker.start()

    def submit(self, request: Request) -> Request:
        if self.closed:  # nobody would ever answer it
            raise RuntimeError("the generation engine is closed")
        self.queue.put(request)
        return request

    def waiting(self) -> int:
        return self.queue.qsize() + len(self.pending)

    def close(self) -> None:
        self.closed = True
        self.queue.put(None)
        self.worker.join(timeout=30)

    # -- the worker --------------------------------------------------------------------------

    def _run(self) -> None:
        pending = self.pending
        while True:
            if not pending:
                first = self.queue.get()
                if first is None:
                    return
                pending.append(first)
            self._gather(pending)
            batch = self._next_batch(pending)
            self.busy = len(batch)
            try:
                self._decode(batch)
            except Exception as err:  # one failing batch must not end the server
                log.error("generation failed: %r", err, exc_info=log.isEnabledFor(logging.DEBUG))
                for request in batch:
                    request.emit("error", f"generation failed: {type(err).__name__}")
            finally:
                self.busy = 0

    def _gather(self, pending: deque[Request]) -> None:
        """Everything already waiting, and what arrives within ``gather_seconds`` while the
        batch has free slots, joins the choice of the next batch."""
        deadline = time.monotonic() + self.gather_seconds
        while True:
            left = deadline - time.monotonic()
            try:
                if left > 0 and len(pending) < self.max_batch:
                    item = self.queue.get(timeout=left)
                else:
                    item = self.queue.get_nowait()
            except queue.Empty:
                return
            if item is None:
                self.queue.put(None)  # stop after what is pending
                return
            pending.append(item)

    def _next_batch(self, pending: deque[Request]) -> list[Request]:
        """The oldest request and the waiting ones that can share its batch, oldest first."""
        first = pending.popleft()
        batch = [first]
        if first.temperature > 0:
            return batch
        kept: deque[Request] = deque()
        while pending:
            request = pending.popleft()
            joins = request.temperature == 0 and request.route.module is first.route.module
            (batch if joins and len(batch) < self.max_batch else kept).append(request)
        pending.extend(kept)
        return batch

    @torch.inference_mode()
    def _decode(self, batch: list[Request]) -> None:
        live = [r for r in batch if not r.cancelled.is_set()]
        if not live:
            return
        module = live[0].route.module
        device = next(module.parameters()).device
        ids, mask, cache = self._inputs(live, device)
        rows = RowStreams(self.tokenizer, live, self.eos_ids)
        kwargs = {}
        if cache is not None:
            kwargs["past_key_values"] = cache
        adapters = contextlib.nullcontext()
        if live[0].route.adapter is not None:
            names = [r.route.adapter for r in live]
            layers = self._lora_layers(module)
            if layers is not None:  # every row's adapter in two products per layer
                adapters = fused_adapters(layers, names)
            else:
                kwargs["adapter_names"] = names
        if live[0].temperature > 0:
            torch.manual_seed(live[0].seed)
            kwargs.update(do_sample=True, temperature=live[0].temperature, top_p=live[0].top_p)
        else:
            kwargs["do_sample"] = False
        processors, options = grammar_processors(
            self.tokenizer, [r.constraint for r in live], self.eos_ids,
            live[0].temperature, live[0].top_p, budgets=[r.max_new_tokens for r in live],
        )  # fmt: skip
        kwargs.update(options, logits_processor=processors)
        with adapters:
            module.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max(r.max_new_tokens for r in live),
                top_k=None,
                pad_token_id=self.pad_id,
                eos_token_id=sorted(self.eos_ids),
                streamer=rows,
                stopping_criteria=[rows],
                use_cache=True,
                **kwargs,
            )
        rows.finish_open_rows()

    def _lora_layers(self, module) -> list | None:
        """The module's LoRA layers when they can be fused (found once per module)."""
        key = id(module)
        if key not in self._fusable:
            self._fusable[key] = fusable_layers(module) if self.fuse_lora else None
        return self._fusable[key]

    def _inputs(self, live: list[Request], device):
        """Input ids and mask laid out ``[virtual prefix][padding][prompt]`` per row, and the
        stacked prefix cache (None when no row has a prefix)."""
        widths = [r.route.prefix.get_seq_length() if r.route.prefix is not None else 0
                  for r in live]  # fmt: skip
        virtual = max(widths)
        longest = max(len(r.ids) for r in live)
        ids, mask = [], []
        for request, width in zip(live, widths, strict=True):
            pad = longest - len(request.ids)
            ids.append([self.pad_id] * (virtual + pad) + request.ids)
            mask.append([0] * (virtual - width) + [1] * width + [0] * pad + [1] * len(request.ids))
        ids = torch.tensor(ids, device=device)
        mask = torch.tensor(mask, device=device)
        cache = _stacked_prefix(live, widths, virtual) if virtual else None
        return ids, mask, cache


def _stacked_prefix(live: list[Request], widths: list[int], virtual: int):
    """One cache for the batch: row i holds its request's prefix, right-aligned in
    ``virtual`` positions (zeros before it, masked out); rows without a prefix are all zeros."""
    from transformers import DynamicCache

    some = next(r.route.prefix for r in live if r.route.prefix is not None)
    cache = DynamicCache()
    for index, layer in enumerate(some.layers):
        keys = layer.keys.new_zeros(len(live), *layer.keys.shape[1:2], virtual,
                                    *layer.keys.shape[3:])  # fmt: skip
        values = layer.values.new_zeros(len(live), *layer.values.shape[1:2], virtual,
                                        *layer.values.shape[3:])  # fmt: skip
        for row, (request, width) in enumerate(zip(live, widths, strict=True)):
            if width:
                own = request.route.prefix.layers[index]
                keys[row, :, virtual - width :] = own.keys[0]
                values[row, :, virtual - width :] = own.values[0]
        cache.update(keys, values, index)
    return cache


class RowStreams:
    """Per-row streaming and stopping for one batched ``generate`` call.

    ``generate`` hands the streamer each step's new tokens, one per row ``(batch,)``, then asks
    the stopping criterion which rows are done; this class is both. A row is done at an end of
    sequence ("stop"), a stop string ("stop", text cut before it), its own ``max_new_tokens``
    ("length"), or when its request is cancelled. Text goes out as it is decoded, holding back
    an incomplete UTF-8 character and anything that may still turn into a stop string.
    """

    def __init__(self, tokenizer, requests: list[Request], eos_ids: set[int]):
        self.tokenizer, self.requests, self.eos_ids = tokenizer, requests, eos_ids
        self.tokens: list[list[int]] = [[] for _ in requests]
        self.sent = [0] * len(requests)  # characters already sent
        self.done = [False] * len(requests)
        self.prompt_seen = False

    # streamer protocol
    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # the first call carries the prompt
            self.prompt_seen = True
            return
        for row, token in enumerate(value.reshape(-1).tolist()):
            if self.done[row]:
                continue
            request = self.requests[row]
            if request.cancelled.is_set():
                self.done[row] = True
                continue
            if token in self.eos_ids:
                self._finish(row, "stop")
                continue
            self.tokens[row].append(token)
            request.completion_tokens = len(self.tokens[row])
            self._advance(row)

    def end(self) -> None:
        pass

    # stopping-criterion protocol
    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        for row, request in enumerate(self.requests):
            self.done[row] = self.done[row] or request.cancelled.is_set()
        return torch.tensor(self.done, device=input_ids.device)

    def finish_open_rows(self) -> None:
        for row in range(len(self.requests)):
            if not self.done[row] and not self.requests[row].cancelled.is_set():
                self._finish(row, "length")

    def _advance(self, row: int) -> None:
        request = self.requests[row]
        text = self.tokenizer.decode(self.tokens[row], skip_special_tokens=True)
        cut = min((text.find(s) for s in request.stop if s and s in text), default=-1)
        if cut >= 0:
            self._send(row, text[:cut])
            self._finish(row, "stop", flush=False)
            return
        if len(self.tokens[row]) >= request.max_new_tokens:
            self._send(row, text)
            self._finish(row, "length", flush=False)
            return
        hold = max((len(s) - 1 for s in request.stop), default=0)
        safe = max(len(text) - hold, 0)
        while safe > 0 and text[safe - 1] == "\ufffd":  # a character still being decoded
            safe -= 1
        self._send(row, text[:safe])

    def _send(self, row: int, text: str) -> None:
        if len(text) > self.sent[row]:
            self.requests[row].emit("delta", text[self.sent[row] :])
            self.sent[row] = len(text)

    def _finish(self, row: int, reason: str, flush: bool = True) -> None:
        if flush:
            self._send(row, self.tokenizer.decode(self.tokens[row], skip_special_tokens=True))
        self.done[row] = True
        self.requests[row].emit("done", reason)
