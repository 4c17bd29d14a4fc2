"""Serve a trained soft prompt as a ready-made KV cache in front of the frozen base model.

Prompt tuning, P-tuning and prefix tuning all learn something that sits *before* the input: a
few virtual token embeddings (prompt/P-tuning) or per-layer keys and values (prefix tuning).
At inference both reduce to the same thing — a key/value cache of ``n`` virtual positions that
every real token attends to, with real tokens at positions ``n, n+1, ...`` exactly as in PEFT's
training forward. Computing that cache once and handing it to the base model lets the whole
evaluation engine (shared-prefix label scoring, tree attention, batched left-padded generation)
run unchanged, instead of going through PEFT's per-call prompt concatenation, which drops
position ids and cannot take a caller's cache.
"""

import torch

from tunelab.generation.prefix_cache import repeat_cache


class SoftPromptLM(torch.nn.Module):
    """A causal LM whose every sequence starts with a fixed virtual-prefix KV cache.

    Callers use it like the base model: masks and position ids describe their own tokens only;
    the wrapper prepends the ``n`` virtual positions to masks and shifts positions by ``n``. A
    cache the caller passes back in came from this wrapper and already holds the prefix.
    """

    def __init__(self, base_model, prefix_cache):
        super().__init__()
        self.base_model = base_model
        self.prefix_cache = prefix_cache
        self.virtual_tokens = prefix_cache.get_seq_length()

    @property
    def config(self):
        return self.base_model.config

    @property
    def device(self) -> torch.device:
        return next(self.base_model.parameters()).device

    def _fresh_cache(self, batch_size: int):
        return repeat_cache(self.prefix_cache, batch_size)

    def forward(
        self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, **kwargs
    ):
        batch, length = input_ids.shape
        n = self.virtual_tokens
        if past_key_values is None:
            past_key_values = self._fresh_cache(batch)
            seen = 0
        else:
            seen = past_key_values.get_seq_length() - n
        if attention_mask is None:
            attention_mask = input_ids.new_ones(batch, seen + length)
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]
        return self.base_model(
            input_ids=input_ids,
            attention_mask=_with_prefix_columns(attention_mask, n),
            position_ids=position_ids + n,
            past_key_values=past_key_values,
            **kwargs,
        )

    @torch.inference_mode()
    def generate(self, input_ids, attention_mask=None, **kwargs):
        """Generate after the virtual prefix; returns ids laid out as the base model's would be.

        The ``n`` cached positions get placeholder ids (never embedded, since the cache covers
        them) and a mask of ones; they are stripped from the result.
        """
        batch = input_ids.shape[0]
        n = self.virtual_tokens
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        placeholder = input_ids.new_full((batch, n), self.config.pad_token_id or 0)
        output = self.base_model.generate(
            input_ids=torch.cat([placeholder, input_ids], dim=1),
            attention_mask=torch.cat([attention_mask.new_ones(batch, n), attention_mask], dim=1),
            past_key_values=self._fresh_cache(batch),
            **kwargs,
        )
        return output[:, n:]


def _with_prefix_columns(mask: torch.Tensor, n: int) -> torch.Tensor:
    """Let every query attend to the ``n`` virtual positions (2D 0/1 or 4D additive masks)."""
    if mask.dim() == 2:
        return torch.cat([mask.new_ones(mask.shape[0], n), mask], dim=-1)
    visible = mask.new_zeros(*mask.shape[:-1], n)  # 0 = allowed in an additive float mask
    return torch.cat([visible, mask], dim=-1)


@torch.no_grad()
def prefix_cache_of(peft_model):
    """The KV cache of a PEFT prompt-learning adapter's virtual tokens (batch of one)."""
    prompt = peft_model.get_prompt(batch_size=1)
    if not isinstance(prompt, torch.Tensor):  # prefix tuning: already keys/values per layer
        return prompt
    base = peft_model.get_base_model()
    out = base(inputs_embeds=prompt.to(base.dtype), use_cache=True, logits_to_keep=1)
    return out.past_key_values


def inference_view(model):
    """What the evaluation engine should call: soft prompts become a cached prefix."""
    config = getattr(model, "active_peft_config", None)
    if config is not None and config.is_prompt_learning:
        was_training = model.training
        model.eval()
        cache = prefix_cache_of(model)
        model.train(was_training)
        return SoftPromptLM(model.get_base_model(), cache)
    return model
