"""Turn examples into training sequences whose loss covers the answer tokens only.

The prompt is rendered exactly as the evaluation engine renders it (same strategy, chat
template, task prefix), so the model is trained on the text it will be asked about. The answer
is followed by the end-of-turn token, which label scoring also scores and generation stops on.
"""

from dataclasses import dataclass

from tunelab.data.loading import Example
from tunelab.prompting.render import build_prompts, encode_prompts
from tunelab.prompting.strategy import PromptStrategy

IGNORE_INDEX = -100  # positions the loss skips (PyTorch's cross-entropy default)


@dataclass
class Encoded:
    features: list[dict]  # input_ids, attention_mask, labels per example
    skipped: list[int]  # source lines of examples longer than max_length
    retriever: str | None = None  # the embedder that chose similar shots, if any

    @property
    def answer_tokens(self) -> int:
        return sum(sum(1 for t in f["labels"] if t != IGNORE_INDEX) for f in self.features)

    @property
    def total_tokens(self) -> int:
        return sum(len(f["input_ids"]) for f in self.features)


def encode_examples(
    tokenizer,
    strategy: PromptStrategy,
    examples: list[Example],
    labels: list[str] | None,
    max_length: int,
    shots: list[list[Example]] | None = None,
) -> Encoded:
    """``shots``: the worked examples placed before each example's query (none by default)."""
    shots = shots if shots is not None else [[] for _ in examples]
    prompts = build_prompts(tokenizer, strategy, examples, labels, shots)
    prompt_ids = encode_prompts(tokenizer, prompts)
    answers = [e.output for e in examples]  # the dataset's words: special spellings stay text
    answer_ids = tokenizer(answers, add_special_tokens=False, split_special_tokens=True)[
        "input_ids"
    ]
    features, skipped = [], []
    for example, prompt, answer in zip(examples, prompt_ids, answer_ids, strict=True):
        answer = [*answer, tokenizer.eos_token_id]
        if len(prompt) + len(answer) > max_length:
            skipped.append(example.line)
            continue
        features.append(
            {
                "input_ids": prompt + answer,
                "attention_mask": [1] * (len(prompt) + len(answer)),
                "labels": [IGNORE_INDEX] * len(prompt) + answer,
            }
        )
    return Encoded(features, skipped)


def encode_labelled(
    tokenizer,
    strategy: PromptStrategy,
    examples: list[Example],
    labels: list[str],
    max_length: int,
    shots: list[list[Example]] | None = None,
) -> Encoded:
    """Sequences for a classification head: the prompt alone, its label's index as target."""
    shots = shots if shots is not None else [[] for _ in examples]
    prompts = build_prompts(tokenizer, strategy, examples, labels, shots)
    index = {label: i for i, label in enumerate(labels)}
    features, skipped = [], []
    for example, prompt in zip(examples, encode_prompts(tokenizer, prompts), strict=True):
        if len(prompt) > max_length:
            skipped.append(example.line)
            continue
        label = index[example.output]
        features.append({"input_ids": prompt, "attention_mask": [1] * len(prompt), "labels": label})
    return Encoded(features, skipped)


class FeatureList:
    """A sized, indexable dataset over encoded features (what the Trainer's samplers need)."""

    def __init__(self, features: list[dict]):
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict:
        return self.features[index]
