"""Train a byte-level BPE tokenizer on a corpus and wrap it for transformers.

Byte-level BPE can encode any text (every byte is in the alphabet), so prompts
with words the corpus never saw still tokenize; wrapping it as a
``PreTrainedTokenizerFast`` makes it load with ``AutoTokenizer`` like any hub model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)


def train_tokenizer(corpus: Sequence[str], vocab_size: int, model_max_length: int) -> Any:
    """Train byte-level BPE on ``corpus``; return a transformers fast tokenizer.

    Like Llama's tokenizer it prepends ``<s>`` to every encoded text and a space
    to its first word, so an answer tokenized on its own (``" auto"``) uses the
    same tokens as inside running prose; it pads with ``<pad>`` and ends
    generations with ``</s>``.
    """
    # at use: importing transformers takes seconds, and the CLI imports this package
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    # Undo the prefix space on decode, so decode(encode(text)) == text (like Llama's
    # sentencepiece): the single leading space of the decoded string is stripped.
    backend.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(list(corpus), trainer=trainer, length=len(corpus))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        add_bos_token=True,
        add_eos_token=False,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
        add_prefix_space=True,
    )
