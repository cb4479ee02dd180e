"""Build a tiny pretrained Llama-style base model from a text corpus, on CPU, in seconds.

The quickstart must run anywhere without downloading a model, so it makes its
own: a byte-level BPE tokenizer and a 2-layer Llama trained briefly on in-domain
prose. The result is an ordinary Hugging Face model directory (safetensors), so
everything downstream treats it exactly like a hub model.

Pretraining uses a short plain torch loop: it is a fixed-size toy job, and the
fine-tuning path (``modelyard.training``) is the one that must scale.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelyard.base._fs import check_out_dir, publish_dir
from modelyard.base._hf import quiet_progress
from modelyard.base._tokenizer import train_tokenizer
from modelyard.errors import ConfigError, DataError, DatasetNotFound

if TYPE_CHECKING:  # torch and transformers load when a base is built: importing them is slow
    import torch

ProgressFn = Callable[[int, int, float], None]
"""``progress(step, total_steps, loss)``, called after every optimizer step."""


HEAD_DIM = 32  # the head size of tiny bases, when their hidden size allows it


@dataclass(frozen=True)
class TinyBaseInfo:
    """What ``create_tiny_base`` built, for the CLI and the registry's lineage.

    ``final_loss`` is the smoothed (moving-average) pretraining loss at the end;
    ``corpus_tokens`` counts the tokens packed into training blocks.
    """

    path: Path
    parameters: int
    vocab_size: int
    hidden_size: int
    layers: int
    steps: int
    final_loss: float
    corpus_documents: int
    corpus_tokens: int
    seconds: float
    seed: int


@dataclass(frozen=True)
class _Shape:
    hidden_size: int
    layers: int
    heads: int
    max_positions: int


@dataclass(frozen=True)
class _Schedule:
    steps: int
    batch_size: int
    seq_len: int
    learning_rate: float
    warmup_steps: int


def read_corpus(corpus: Sequence[str] | Path) -> list[str]:
    """The corpus as a list of non-blank documents (a Path is read one document per line)."""
    if isinstance(corpus, Path):
        if not corpus.is_file():
            what = "is a directory, not a file" if corpus.is_dir() else "does not exist"
            raise DatasetNotFound(
                f"corpus file {corpus} {what}",
                hint="Pass a UTF-8 text file with one document per line.",
                path=str(corpus),
            )
        try:
            lines = corpus.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read corpus file {corpus}: {exc}", path=str(corpus)) from exc
        docs = [line.strip() for line in lines]
    else:
        docs = [str(doc).strip() for doc in corpus]
    docs = [doc for doc in docs if doc]
    if not docs:
        raise DataError(
            "the corpus is empty",
            hint="A base model needs some text: give at least a few hundred documents.",
        )
    return docs


def _pack(tokenizer: Any, docs: Sequence[str], seq_len: int) -> torch.Tensor:
    """Tokenize ``<s> doc </s>`` per document, concatenate, cut into rows of ``seq_len``."""
    import torch

    eos = int(tokenizer.eos_token_id)
    stream: list[int] = []
    for ids in tokenizer(list(docs))["input_ids"]:
        stream.extend(ids)
        stream.append(eos)
    rows = len(stream) // seq_len
    if rows < 1:
        raise DataError(
            f"the corpus is too small to pretrain on ({len(stream)} tokens)",
            hint=f"Give at least {seq_len} tokens of text; a few hundred documents work well.",
        )
    return torch.tensor(stream[: rows * seq_len], dtype=torch.long).view(rows, seq_len)


def _new_model(shape: _Shape, tokenizer: Any) -> Any:
    """A freshly initialised small Llama whose special token ids match ``tokenizer``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.hidden_size * 2,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        max_position_embeddings=shape.max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def _lr_at(step: int, schedule: _Schedule) -> float:
    """Linear warmup then cosine decay to 10% of the peak learning rate."""
    if step < schedule.warmup_steps:
        return schedule.learning_rate * (step + 1) / schedule.warmup_steps
    span = max(1, schedule.steps - schedule.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * (step - schedule.warmup_steps) / span))
    return schedule.learning_rate * (0.1 + 0.9 * cosine)


def _pretrain(
    model: Any, blocks: torch.Tensor, schedule: _Schedule, seed: int, progress: ProgressFn | None
) -> float:
    """Causal-LM pretraining on random batches of packed blocks; returns the final loss.

    The reported loss is an exponential moving average, which is what a progress
    bar and lineage want (the last batch alone is noisy).
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=schedule.learning_rate, weight_decay=0.01, betas=(0.9, 0.95)
    )
    model.train()
    smoothed = math.nan
    for step in range(schedule.steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, schedule)
        index = torch.randint(len(blocks), (schedule.batch_size,), generator=generator)
        batch = blocks[index]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        value = float(loss.detach())
        smoothed = value if math.isnan(smoothed) else 0.9 * smoothed + 0.1 * value
        if progress is not None:
            progress(step + 1, schedule.steps, smoothed)
    model.eval()
    return smoothed


def _save(model: Any, tokenizer: Any, out_dir: Path) -> None:
    """Save weights (safetensors) and tokenizer as one atomic directory."""
    with publish_dir(out_dir) as staging, quiet_progress():
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)


def create_tiny_base(
    corpus: Sequence[str] | Path,
    out_dir: Path,
    *,
    vocab_size: int = 1024,
    hidden_size: int = 96,
    layers: int = 2,
    heads: int | None = None,
    max_positions: int = 256,
    steps: int = 300,
    batch_size: int = 16,
    seq_len: int = 128,
    learning_rate: float = 6e-3,
    seed: int = 0,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> TinyBaseInfo:
    """Train a tokenizer and a small Llama on ``corpus`` and save both to ``out_dir``.

    ``corpus`` is a list of documents or a text file with one document per line.
    ``heads`` defaults to heads of 32 dimensions (``HEAD_DIM``) when ``hidden_size``
    divides by 32 (the default 96: 3 heads), so that vLLM, whose CPU attention
    refuses smaller heads, serves the base as the transformers engine does.
    The same corpus, arguments and ``seed`` give the same weights. The directory
    loads with ``AutoModelForCausalLM``/``AutoTokenizer.from_pretrained`` (and
    ``modelyard.base.load_base``).
    """
    started = time.perf_counter()
    if heads is None:  # head_dim 32 where it can be: vLLM's CPU attention refuses smaller ones
        heads = hidden_size // HEAD_DIM if hidden_size % HEAD_DIM == 0 else 4
    shape_ok = heads >= 1 and hidden_size % heads == 0 and seq_len <= max_positions
    if not shape_ok or min(steps, batch_size, layers) < 1:
        raise ConfigError(
            "invalid tiny base shape: hidden_size must divide by heads, seq_len must not exceed "
            "max_positions, and steps, batch_size and layers must be positive"
        )
    import torch

    docs = read_corpus(corpus)
    check_out_dir(out_dir, overwrite)
    tokenizer = train_tokenizer(docs, vocab_size, max_positions)
    blocks = _pack(tokenizer, docs, seq_len)
    schedule = _Schedule(steps, batch_size, seq_len, learning_rate, max(1, steps // 10))
    with torch.random.fork_rng(devices=[]):  # seed locally; leave the caller's RNG alone
        torch.manual_seed(seed)
        model = _new_model(_Shape(hidden_size, layers, heads, max_positions), tokenizer)
        final_loss = _pretrain(model, blocks, schedule, seed, progress)
    _save(model, tokenizer, out_dir)
    return TinyBaseInfo(
        path=out_dir,
        parameters=sum(p.numel() for p in model.parameters()),
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        layers=layers,
        steps=steps,
        final_loss=final_loss,
        corpus_documents=len(docs),
        corpus_tokens=blocks.numel(),
        seconds=time.perf_counter() - started,
        seed=seed,
    )
