"""Answers from a classification head (tunelab.training.classifier): one forward pass per
batch, the label read off the head, no label-scoring trie and no generation."""

import torch


def is_classifier(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return type(base).__name__.endswith("ForSequenceClassification")


def classifier_labels(model) -> list[str]:
    config = (model.get_base_model() if hasattr(model, "get_base_model") else model).config
    return [config.id2label[i] for i in range(config.num_labels)]


def classify(model, tokenizer, prompt_ids: list[list[int]], batch_size: int = 8, on_batch=None):
    """The label of each prompt (token ids), read off the head."""
    labels = classifier_labels(model)
    logits = classifier_logits(model, tokenizer, prompt_ids, batch_size, on_batch)
    return [labels[i] for i in logits.argmax(-1).tolist()]


@torch.inference_mode()
def classifier_logits(
    model, tokenizer, prompt_ids: list[list[int]], batch_size: int = 8, on_batch=None
) -> torch.Tensor:
    """(len(prompt_ids), labels) head logits, labels in :func:`classifier_labels` order: one
    forward pass per batch, right-padded as in training, read at each row's last real token."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    table = torch.empty(len(prompt_ids), len(classifier_labels(model)))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = max(len(prompt_ids[i]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, : len(prompt_ids[i])] = torch.tensor(prompt_ids[i])
            mask[r, : len(prompt_ids[i])] = 1
        # The model pools at each row's rightmost token that is not the pad id: the prompt's
        # last token, since every prompt ends with the template's own answer cue.
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        table[rows] = logits.float().cpu()
        if on_batch:
            on_batch(len(rows))
    return table
