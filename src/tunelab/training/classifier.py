"""A classification head on the last token: one forward pass per example, one label out.

Label scoring asks the language model how likely each label's tokens are (a trie of 459
tokens for Banking77's 77 labels); a head reads the label off the hidden state of the
prompt's last token instead, like a sequence classifier (Transformers'
``*ForSequenceClassification``, PEFT's SEQ_CLS task). The head starts from the language
model's own output embeddings of each label's words, so before any training it already
prefers the label whose name the model would have started to write.
"""

import torch

from tunelab.errors import TuneLabError

HEAD = "classifier"


def to_classifier(lm, tokenizer, labels: list[str]):
    """A ``*ForSequenceClassification`` model sharing ``lm``'s body (no copy), its head
    initialised from the label names."""
    from transformers import AutoModelForSequenceClassification

    config = classifier_config(lm.config, tokenizer, labels)
    with torch.device("meta"):  # no second body in memory: the LM's own is put in below
        model = AutoModelForSequenceClassification.from_config(config, dtype=lm.dtype)
    prefix = model.base_model_prefix
    if not hasattr(lm, prefix):
        raise TuneLabError(
            f"{type(lm).__name__} has no sequence-classification counterpart TuneLab can "
            "build; train it without --head classifier"
        )
    setattr(model, prefix, getattr(lm, prefix))
    name, head = _head_of(model)
    real = torch.nn.Linear(head.in_features, head.out_features, bias=head.bias is not None,
                           dtype=lm.dtype, device=lm.device)  # fmt: skip
    with torch.no_grad():
        real.weight.copy_(_label_rows(lm, tokenizer, labels).to(real.weight))
        if real.bias is not None:
            real.bias.zero_()
    setattr(model, name, real)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise TuneLabError(f"{type(model).__name__}: {left[0]} was not built; no head here")
    return model


def classifier_config(lm_config, tokenizer, labels: list[str]):
    config = lm_config.__class__.from_dict(lm_config.to_dict())
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    config.problem_type = "single_label_classification"
    config.pad_token_id = tokenizer.pad_token_id  # how the model finds each row's last token
    config.architectures = None
    return config


def _head_of(model) -> tuple[str, torch.nn.Linear]:
    for name in ("score", "classifier"):
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Linear):
            return name, head
    raise TuneLabError(f"{type(model).__name__}: no linear classification head found")


def _label_rows(lm, tokenizer, labels: list[str]) -> torch.Tensor:
    """Each label's row: the mean output embedding of its name's tokens, so the head's
    start logits are the LM's own logits for (the average token of) each label name."""
    out = lm.get_output_embeddings().weight.detach().float()
    rows = []
    for label in labels:
        ids = tokenizer(label, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]
        rows.append(out[ids].mean(0))
    return torch.stack(rows)
