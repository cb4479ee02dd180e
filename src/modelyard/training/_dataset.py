"""Turn rows into causal-LM training features with the loss on the response only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from modelyard.data._templates import PromptTemplate
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
