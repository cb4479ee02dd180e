"""Turn rows into causal-LM training features with the loss on the response only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from modelyard.data import PromptTemplate
from modelyard.errors import DataError

IGNORE_INDEX = -100
"""Label value that ``torch.nn.CrossEntropyLoss`` (and so every HF model) skips."""

Features = dict[str, list[int]]


ALPACA = PromptTemplate("alpaca")


def encode_row(
    tokenizer: Any,
    row: Mapping[str, Any],
    max_seq_len: int,
    template: PromptTemplate = ALPACA,
) -> Features:
    """Tokenize ``prompt + response + eos`` and mask the prompt out of the labels.

    Prompt and response are tokenized separately and concatenated, so the prompt
    tokens are exactly those that generation later conditions on (tokenizing the
    joined string could merge tokens across the boundary).
    """
    prompt, response = template.render(row)
    prompt_ids: list[int] = list(tokenizer(prompt)["input_ids"])
    answer_ids: list[int] = list(tokenizer(response, add_special_tokens=False)["input_ids"])
    answer_ids.append(int(tokenizer.eos_token_id))
    input_ids = prompt_ids + answer_ids
    if len(input_ids) > max_seq_len:
        raise DataError(
            f"an example is {len(input_ids)} tokens long, over max_seq_len={max_seq_len}",
            hint="Raise max_seq_len or shorten the example.",
            tokens=len(input_ids),
        )
    return {
        "input_ids": input_ids,
        "attention_mask": [1] * len(input_ids),
        "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids,
    }


class SupervisedDataset(torch.utils.data.Dataset[Features]):
    """Pre-tokenized rows; a plain map-style dataset that ``Trainer`` can shard and shuffle."""

    def __init__(
        self,
        tokenizer: Any,
        rows: Sequence[Mapping[str, Any]],
        max_seq_len: int,
        template: PromptTemplate = ALPACA,
    ) -> None:
        if not rows:
            raise DataError("no rows to train or evaluate on", hint="Give at least one example.")
        self.features = [encode_row(tokenizer, row, max_seq_len, template) for row in rows]

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> Features:
        return self.features[index]

    @property
    def tokens(self) -> int:
        """Total tokens (prompt and response) in one pass over the dataset."""
        return sum(len(feature["input_ids"]) for feature in self.features)


def pack_features(features: Sequence[Features], max_seq_len: int) -> list[Features]:
    """Bin examples into rows of at most ``max_seq_len`` tokens (first-fit, longest first).

    Each packed row concatenates whole examples; ``position_ids`` restart at 0 for
    every example, which transformers turns into a block-diagonal causal mask, so
    no example attends to another. The order is deterministic.
    """
    order = sorted(range(len(features)), key=lambda i: (-len(features[i]["input_ids"]), i))
    bins: list[list[int]] = []
    room: list[int] = []
    for index in order:
        size = len(features[index]["input_ids"])
        slot = next((b for b, free in enumerate(room) if free >= size), None)
        if slot is None:
            bins.append([index])
            room.append(max_seq_len - size)
        else:
            bins[slot].append(index)
            room[slot] -= size
    packed: list[Features] = []
    for members in bins:
        row: Features = {"input_ids": [], "labels": [], "position_ids": []}
        for index in members:
            feature = features[index]
            row["input_ids"] += feature["input_ids"]
            row["labels"] += feature["labels"]
            row["position_ids"] += list(range(len(feature["input_ids"])))
        packed.append(row)
    return packed


class PackedDataset(torch.utils.data.Dataset[Features]):
    """``SupervisedDataset`` rows packed into sequences of up to ``max_seq_len`` tokens."""

    def __init__(self, dataset: SupervisedDataset, max_seq_len: int) -> None:
        self.features = pack_features(dataset.features, max_seq_len)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> Features:
        return self.features[index]


class PackedCollator:
    """Batches of packed rows: padded at the end, no attention mask, position ids per example.

    The padding is a segment of its own (positions restart at 0, labels ignored),
    so it attends only to itself and never changes a real token's output. With
    ``pad_to_multiple_of`` the batch's length is rounded up to that multiple.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[Mapping[str, list[int]]]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        ids, labels, positions = [], [], []
        for feature in features:
            n = len(feature["input_ids"])
            pad = longest - n
            ids.append(list(feature["input_ids"]) + [self.pad_token_id] * pad)
            labels.append(list(feature["labels"]) + [IGNORE_INDEX] * pad)
            own = feature.get("position_ids") or list(range(n))
            positions.append(list(own) + list(range(pad)))
        return {
            "input_ids": torch.tensor(ids),
            "labels": torch.tensor(labels),
            "position_ids": torch.tensor(positions),
        }
