"""The generation engine: one batch mixing the base model, two LoRA adapters and the three
soft-prompt methods gives every row the tokens it gets alone; rows stop on their own."""

import threading
import time

import pytest
import torch

from tunelab.generation.engine import BASE_ADAPTER, Engine, Request, Route
from tunelab.prompting.render import encode_chat
from tunelab.testing import make_tiny_model, make_tiny_tokenizer
from tunelab.training.soft_prompt import SoftPromptLM, prefix_cache_of

QUESTIONS = ["card charged twice", "cannot sign in", "refund my fee please", "hi", "locked out"]


def _randomise(module, std: float, seed: int, only_trainable: bool = False) -> None:
    """Larger random weights than the default init, so answers differ by input and adapter."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            if only_trainable and not parameter.requires_grad:
                continue
            if parameter.dim() >= 2 or only_trainable:
                parameter.normal_(0, std)


@pytest.fixture(scope="module")
def setup():
    from peft import (
        LoraConfig,
        PeftModel,
        PrefixTuningConfig,
        PromptEncoderConfig,
        PromptTuningConfig,
        TaskType,
        get_peft_model,
    )

    tokenizer = make_tiny_tokenizer()
    base = make_tiny_model(tokenizer)
    _randomise(base, 0.25, seed=0)
    prefixes = {}
    soft = {
        "prompt": PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4),
        "prefix": PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=6),
        "p-tuning": PromptEncoderConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=3, encoder_hidden_size=16
        ),
    }
    for seed, (name, config) in enumerate(soft.items()):
        wrapper = get_peft_model(base, config)
        _randomise(wrapper, 0.5, seed=10 + seed, only_trainable=True)
        prefixes[name] = prefix_cache_of(wrapper.eval())
        base = wrapper.get_base_model()
    host = None
    for seed, name in enumerate(("lora-a", "lora-b")):
        config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, init_lora_weights=False)
        if host is None:
            host = get_peft_model(base, config, adapter_name=name)
        else:
            host.add_adapter(name, config)
        host.set_adapter(name)
        _randomise(host, 0.3, seed=20 + seed, only_trainable=True)
    host.eval()
    assert isinstance(host, PeftModel)
    return tokenizer, host, prefixes


def _alone(tokenizer, host, route_name: str, prefixes, ids: list[int], budget: int) -> list[int]:
    """Greedy tokens of one prompt run the plain way: the adapter set on the model, or a
    soft prompt's SoftPromptLM with LoRA switched off."""
    inputs = torch.tensor([ids])
    options = dict(
        max_new_tokens=budget,
        do_sample=False,
        top_k=None,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.inference_mode():
        if route_name.startswith("lora"):
            host.set_adapter(route_name)
            out = host.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), **options)
        else:
            with host.disable_adapter():
                model = host.get_base_model()
                if route_name != "base":
                    model = SoftPromptLM(model, prefixes[route_name])
                out = model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs),
                                     **options)  # fmt: skip
    new = out[0, len(ids) :].tolist()
    eos = tokenizer.eos_token_id
    return new[: new.index(eos)] if eos in new else new


@pytest.mark.parametrize("fuse_lora", [True, False], ids=["fused", "peft-adapter-names"])
def test_one_mixed_batch_gives_each_row_its_own_tokens(setup, fuse_lora):
    tokenizer, host, prefixes = setup
    names = ["base", "lora-a", "prompt", "lora-b", "prefix", "p-tuning", "lora-a", "base"]
    routes = {
        "base": Route(host, BASE_ADAPTER),
        "lora-a": Route(host, "lora-a"),
        "lora-b": Route(host, "lora-b"),
        **{n: Route(host, BASE_ADAPTER, prefixes[n]) for n in ("prompt", "prefix", "p-tuning")},
    }
    engine = Engine(tokenizer, max_batch=8, fuse_lora=fuse_lora)
    got: dict[int, list[int]] = {}
    requests = []
    for index, name in enumerate(names):
        question = QUESTIONS[index % len(QUESTIONS)]
        ids = encode_chat(tokenizer, [{"role": "user", "content": question}])
        budget = 4 + index % 3  # every row stops at its own max_tokens

        def sink(kind, value, index=index):
            got.setdefault(index, []).append((kind, value))

        requests.append(Request(routes[name], ids, budget, sink))
    engine._decode(requests)  # one batch, decoded on this thread
    engine.close()
    answers = []
    for index, (name, request) in enumerate(zip(names, requests, strict=True)):
        tokens = _alone(tokenizer, host, name, prefixes, request.ids, request.max_new_tokens)
        text = "".join(v for k, v in got[index] if k == "delta")
        assert text == tokenizer.decode(tokens, skip_special_tokens=True), name
        reason = got[index][-1]
        expected = "length" if len(tokens) == request.max_new_tokens else "stop"
        assert reason == ("done", expected), name
        assert request.completion_tokens == len(tokens)
        answers.append(text)
    assert len(set(answers)) > 3  # rows really differ: adapters and prefixes took effect


def test_the_worker_batches_what_is_waiting_and_cancels_on_request(setup):
    tokenizer, host, prefixes = setup
    engine = Engine(tokenizer, max_batch=4, start=False)  # every request waits before it runs
    sizes = []
    decode = engine._decode
    engine._decode = lambda batch: (sizes.append(len(batch)), decode(batch))[1]
    done = threading.Event()
    finished = []
    requests = []
    for index in range(6):
        ids = encode_chat(tokenizer, [{"role": "user", "content": QUESTIONS[index % 5]}])

        def sink(kind, value, index=index):
            if kind != "delta":
                finished.append((index, value))
                if len(finished) == 5:
                    done.set()

        requests.append(engine.submit(Request(Route(host, "lora-a"), ids, 3, sink)))
    requests[2].cancel()  # its client went away before it ran: it is never answered
    engine.start()
    assert done.wait(30)
    engine.close()
    assert sorted(i for i, _ in finished) == [0, 1, 3, 4, 5]
    assert sizes[0] == 4 and sum(sizes) == 6  # 4 together, then the rest


def test_requests_arriving_a_moment_apart_share_one_batch(setup):
    """Closed-loop clients answered together resubmit milliseconds apart: the worker waits
    its gather window for them instead of starting a batch of one."""
    tokenizer, host, prefixes = setup
    engine = Engine(tokenizer, max_batch=4, gather_seconds=0.5)
    sizes = []
    decode = engine._decode
    engine._decode = lambda batch: (sizes.append(len(batch)), decode(batch))[1]
    finished = threading.Semaphore(0)
    ids = encode_chat(tokenizer, [{"role": "user", "content": QUESTIONS[0]}])

    def sink(kind, value):
        if kind == "done":
            finished.release()

    for _ in range(3):
        engine.submit(Request(Route(host, "lora-a"), ids, 2, sink))
        time.sleep(0.05)
    for _ in range(3):
        assert finished.acquire(timeout=30)
    engine.close()
    assert sizes == [3]


def test_a_stop_string_cuts_the_text_and_ends_the_row(setup):
    tokenizer, host, prefixes = setup
    ids = encode_chat(tokenizer, [{"role": "user", "content": "card charged twice"}])
    full = tokenizer.decode(_alone(tokenizer, host, "lora-a", prefixes, ids, 8))
    stop = full[2:4]  # a piece of the answer the row would otherwise write
    events = []
    engine = Engine(tokenizer)
    request = Request(Route(host, "lora-a"), ids, 8, lambda *e: events.append(e), stop=(stop,))
    engine._decode([request])
    engine.close()
    text = "".join(v for k, v in events if k == "delta")
    assert text == full[: full.index(stop)] and events[-1] == ("done", "stop")


def test_a_long_stop_string_never_leaks_its_start(setup):
    tokenizer, host, prefixes = setup
    ids = encode_chat(tokenizer, [{"role": "user", "content": "card charged twice"}])
    full = tokenizer.decode(_alone(tokenizer, host, "lora-a", prefixes, ids, 8))
    stop = full[1:6]  # five characters starting at the second one
    events = []
    engine = Engine(tokenizer)
    request = Request(Route(host, "lora-a"), ids, 8, lambda *e: events.append(e), stop=(stop,))
    engine._decode([request])
    engine.close()
    assert [v for k, v in events if k == "delta"] == [full[:1]]
    assert events[-1] == ("done", "stop")


def test_a_failing_sink_cancels_its_request_only(setup):
    tokenizer, host, prefixes = setup
    ids = encode_chat(tokenizer, [{"role": "user", "content": "hi"}])
    events = []

    def broken(kind, value):
        raise RuntimeError("event loop is closed")

    engine = Engine(tokenizer)
    gone = Request(Route(host, "lora-a"), ids, 4, broken)
    kept = Request(Route(host, "lora-b"), ids, 4, lambda *e: events.append(e))
    engine._decode([gone, kept])
    assert gone.cancelled.is_set() and events[-1][0] == "done"
    done = threading.Event()
    engine.submit(
        Request(Route(host, BASE_ADAPTER), ids, 2, lambda k, v: k == "done" and done.set())
    )
    assert done.wait(30)  # the worker is alive
    engine.close()


def test_fused_adapters_give_pefts_mixed_batch_logits(setup):
    """Every adapter computed at once per layer (a per-row mask) equals PEFT's per-row
    adapter_names path; the layers' own forward comes back afterwards."""
    from tunelab.generation.multi_lora import fusable_layers, fused_adapters

    tokenizer, host, prefixes = setup
    names = ["lora-a", BASE_ADAPTER, "lora-b", "lora-a", "lora-b", BASE_ADAPTER]
    rows = [encode_chat(tokenizer, [{"role": "user", "content": QUESTIONS[i % 5]}])
            for i in range(len(names))]  # fmt: skip
    longest = max(map(len, rows))
    ids = torch.tensor([[tokenizer.pad_token_id] * (longest - len(r)) + r for r in rows])
    mask = torch.arange(longest)[None] >= torch.tensor([longest - len(r) for r in rows])[:, None]
    layers = fusable_layers(host)
    assert layers and all(set(layer.lora_A) == {"lora-a", "lora-b"} for layer in layers)
    with torch.inference_mode():
        expected = host(input_ids=ids, attention_mask=mask.long(), adapter_names=names).logits
        with fused_adapters(layers, names):
            fused = host(input_ids=ids, attention_mask=mask.long()).logits
        host.set_adapter("lora-a")
        plain = host(input_ids=ids, attention_mask=mask.long()).logits
        with host.disable_adapter():
            base = host(input_ids=ids, attention_mask=mask.long()).logits
            with fused_adapters(layers, names):  # switched off stays off
                off = host(input_ids=ids, attention_mask=mask.long()).logits
    assert torch.allclose(fused, expected, atol=1e-4) and torch.equal(off, base)
    assert not torch.allclose(plain, expected, atol=1e-2)  # rows really use other adapters
    assert all("forward" not in vars(layer) for layer in layers)


@pytest.mark.parametrize(
    "option", [{"use_dora": True}, {"lora_bias": True}, {"modules_to_save": ["lm_head"]}]
)
def test_adapters_the_fused_path_cannot_compute_are_left_to_peft(tiny_tokenizer, option):
    from peft import LoraConfig, TaskType, get_peft_model

    from tunelab.generation.multi_lora import fusable_layers

    config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, **option)
    model = get_peft_model(make_tiny_model(tiny_tokenizer), config)
    assert fusable_layers(model) is None
    assert fusable_layers(make_tiny_model(tiny_tokenizer)) is None  # no LoRA at all
