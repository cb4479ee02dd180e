"""GPU benchmark (issue 20): modelyard's LoRA against a plain Trainer + peft script with bf16.

On a machine with a CUDA GPU, with a Llama of about 1 B parameters built here with random
weights (nothing is downloaded) and saved in bf16:

- LoRA tokens/s, modelyard's ``train_model`` (precision auto) divided by a plain
  ``transformers.Trainer`` + peft script with ``bf16=True``, on the same model, rows and
  seed; a warm-up round first, then the order alternated; peak GPU memory of each;
- packing vs padded batches (modelyard, real tokens/s);
- QLoRA against LoRA (needs bitsandbytes: pip install 'modelyard[gpu]'), on that model and
  on a 3.4 B one: the weights' bytes as loaded, and the peak GPU memory of 10 steps with
  activation checkpointing on both sides (and QLoRA's without), see _qlora_memory.py;
- the serving engine's decode rates (tokens/s, one request and 8 at once).

It writes its table as markdown (``--out``, default gpu-results.md) after every section,
so a run cut short keeps what it measured, with the numbers beside it (gpu-results.json),
and with ``--json`` prints them on stdout. ``--quick`` runs a tiny model on whatever is
here (CPU included) as a smoke test: its numbers say nothing about GPUs.

    .venv/bin/python benchmarks/gpu.py                 # on the GPU machine
    .venv/bin/python benchmarks/gpu.py --quick --json  # smoke test, under a minute on CPU
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _qlora_memory
import peft
import torch
import transformers
from _machine import leave, machine
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    LlamaConfig,
    LlamaForCausalLM,
    PrinterCallback,
    Trainer,
    TrainingArguments,
    set_seed,
)

from modelyard.base import create_tiny_base
from modelyard.data import DOMAINS, domain_corpus, synthetic_domain
from modelyard.gpu import gpu_readings
from modelyard.training import IGNORE_INDEX, TrainSettings, encode_row, train_model

Row = dict[str, str]


@dataclass(frozen=True)
class Config:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    rows: int
    row_tokens: int
    batch_size: int
    steps: int
    repeats: int
    new_tokens: int
    vocab: int


# about 1.0 B parameters with a 32 k vocabulary: the 0.85 B-class Llama on one GPU
FULL = Config(2048, 16, 32, 5632, 512, 512, 8, 30, 2, 128, 32000)
QUICK = Config(64, 2, 2, 128, 32, 96, 4, 3, 1, 8, 2048)  # more ids than its tokenizer has
# QLoRA's second model: about 3.4 B parameters (a Llama 3.2 3B's shape, without its grouped
# key-value heads), 10 steps of 4 rows: its memory, not its speed, is measured
BIG = Config(3072, 28, 24, 8192, 512, 512, 4, 10, 1, 0, 32000)
QUICK_BIG = Config(96, 2, 2, 192, 32, 96, 4, 2, 1, 0, 2048)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_base(config: Config, out: Path) -> Path:
    """A random-weight Llama of ``config``'s shape, saved in bf16 with a tokenizer trained
    here (the tokenizer of a tiny base on the synthetic corpus)."""
    tokenizer_dir = out.parent / f"tokenizer-{out.name}"
    corpus = domain_corpus(DOMAINS, 600, seed=0)
    create_tiny_base(corpus, tokenizer_dir, vocab_size=config.vocab, hidden_size=32, steps=1)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    set_seed(0)
    # initialised on the GPU where there is one (seconds, not minutes, at 3 B parameters)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = _llama(config, tokenizer)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    del model
    _cuda_reset()
    return out


def _llama(config: Config, tokenizer: Any) -> Any:
    return LlamaForCausalLM(
        LlamaConfig(
            # the vocabulary's size, not the tokenizer's (a corpus this small trains fewer
            # merges): the embedding, head and logits cost what a 32 k model's do
            vocab_size=max(config.vocab, len(tokenizer)),
            hidden_size=config.hidden,
            intermediate_size=config.intermediate,
            num_hidden_layers=config.layers,
            num_attention_heads=config.heads,
            num_key_value_heads=config.heads,
            max_position_embeddings=max(1024, config.row_tokens * 2),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    ).to(torch.bfloat16)


def build_rows(tokenizer: Any, config: Config) -> list[Row]:
    """Rows of varied length up to ``row_tokens`` (so padding and packing differ)."""
    base = synthetic_domain("it-support", config.rows, seed=0)
    rows = []
    for number, row in enumerate(base):
        target = config.row_tokens // 4 + (number * 37) % (config.row_tokens * 3 // 4)
        words = row["input"].split()
        text = row["input"]
        while len(tokenizer(text)["input_ids"]) < target - 16:
            text += " " + " ".join(words)
        rows.append(_fit({**row, "input": text}, tokenizer, config.row_tokens))
    return [r for r in rows if r is not None]


def _fit(row: Row, tokenizer: Any, cap: int) -> Row | None:
    """``row`` with words cut from the end of its input until the whole row (prompt and
    answer) fits ``cap`` tokens; None when even its answer alone does not."""
    words = row["input"].split()
    while len(encode_row(tokenizer, row, 1 << 30)["input_ids"]) > cap:
        if len(words) <= 1:
            return None
        words = words[: max(1, len(words) - max(1, len(words) // 8))]
        row = {**row, "input": " ".join(words)}
    return row


def _settings(config: Config, **changes: Any) -> TrainSettings:
    values: dict[str, Any] = {
        "max_steps": config.steps,
        "batch_size": config.batch_size,
        "max_seq_len": config.row_tokens,
        "learning_rate": 2e-4,
        "alpha": 16,
        "r": 16,
        "seed": 0,
    }
    return TrainSettings(**{**values, **changes})


def _cuda_reset() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak() -> float | None:
    return torch.cuda.max_memory_allocated() / 1024**3 if torch.cuda.is_available() else None


def modelyard_run(base: Path, rows: Sequence[Row], settings: TrainSettings, work: Path) -> dict:
    _cuda_reset()
    result = train_model(base, rows, work / "modelyard-out", settings, overwrite=True)
    return {
        "tokens_per_second": result.tokens_per_second,
        "loss": result.train_loss,
        "peak_gib": _peak(),
        "precision": result.compute.get("precision"),
        "attention": result.compute.get("attention"),
    }


def plain_run(base: Path, rows: Sequence[Row], settings: TrainSettings, work: Path) -> dict:
    """What a user writes with transformers and peft alone: bf16=True where the GPU has it."""
    _cuda_reset()
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.padding_side = "right"
    model = AutoModelForCausalLM.from_pretrained(
        base, dtype=torch.bfloat16 if bf16 else torch.float32
    )
    model.config.use_cache = False
    features = [encode_row(tokenizer, row, settings.max_seq_len) for row in rows]
    set_seed(settings.seed)
    target = (
        list(settings.target_modules)
        if not isinstance(settings.target_modules, str)
        else "all-linear"
    )
    model = get_peft_model(
        model,
        LoraConfig(task_type="CAUSAL_LM", r=settings.r, lora_alpha=settings.alpha,
                   target_modules=target, bias="none"),
    )  # fmt: skip
    args = TrainingArguments(
        output_dir=str(work / "plain"),
        per_device_train_batch_size=settings.batch_size,
        max_steps=settings.max_steps or -1,
        learning_rate=settings.learning_rate,
        warmup_steps=settings.warmup_ratio,
        seed=settings.seed,
        bf16=bf16,
        use_cpu=not torch.cuda.is_available(),
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        logging_steps=1,
        include_num_input_tokens_seen="non_padding",
    )
    collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX, padding=True)
    trainer = Trainer(model=model, args=args, train_dataset=features, data_collator=collator)
    trainer.remove_callback(PrinterCallback)
    output = trainer.train()
    seconds = float(output.metrics["train_runtime"])
    return {
        "tokens_per_second": trainer.state.num_input_tokens_seen / seconds,
        "loss": float(output.training_loss),
        "peak_gib": _peak(),
        "precision": "bf16" if bf16 else "fp32",
    }


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def lora_vs_plain(base: Path, rows: Sequence[Row], config: Config, work: Path) -> dict:
    """A warm-up of each, then ``repeats`` rounds with the order alternated."""
    settings = _settings(config)
    runs: dict[str, list[dict]] = {"modelyard": [], "plain": []}
    sides: dict[str, Callable[..., dict]] = {"modelyard": modelyard_run, "plain": plain_run}
    _say("warm-up (2 steps each, not counted)")
    for side in sides.values():
        side(base, rows, settings.model_copy(update={"max_steps": 2}), work)
    for repeat in range(config.repeats):
        order = ["modelyard", "plain"] if repeat % 2 == 0 else ["plain", "modelyard"]
        for name in order:
            runs[name].append(sides[name](base, rows, settings, work))
            _say(f"{name:<10} {runs[name][-1]['tokens_per_second']:10,.0f} tokens/s")
    mine = _median([r["tokens_per_second"] for r in runs["modelyard"]])
    plain = _median([r["tokens_per_second"] for r in runs["plain"]])
    peaks = {k: max((r["peak_gib"] or 0.0) for r in v) or None for k, v in runs.items()}
    return {"ratio": mine / plain, "modelyard": mine, "plain": plain, "peak_gib": peaks,
            "runs": runs}  # fmt: skip


def packing(base: Path, rows: Sequence[Row], config: Config, work: Path) -> dict:
    padded = modelyard_run(base, rows, _settings(config), work)
    packed = modelyard_run(base, rows, _settings(config, packing=True), work)
    rate = "tokens_per_second"
    return {"ratio": packed[rate] / padded[rate], "padded": padded[rate], "packed": packed[rate],
            "attention": packed["attention"]}  # fmt: skip


def qlora_memory(base: Path, rows: Sequence[Row], config: Config, work: Path) -> dict:
    """QLoRA against LoRA on the benchmark's model and on a 3 B one (see _qlora_memory)."""
    big = QUICK_BIG if config is QUICK else BIG
    result = {"1b": _qlora_memory.compare(base, rows, _settings(config), work, modelyard_run)}
    _say(f"QLoRA on {config.layers} layers x {config.hidden}: {result['1b']}")
    big_base = build_base(big, work / "big")
    result["3b"] = _qlora_memory.compare(big_base, rows, _settings(big), work, modelyard_run)
    result["3b"]["parameters"] = _parameters(big_base)
    _say(f"QLoRA on {big.layers} layers x {big.hidden}: {result['3b']}")
    return result


def _parameters(base: Path) -> int:
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base))
    return sum(p.numel() for p in model.parameters())


def decode_rates(base: Path, rows: Sequence[Row], config: Config, work: Path) -> dict:
    """The serving engine's decode rates with a trained adapter: one request, then 8 at once."""
    # imported here: the serving stack needs packages the GPU machine lacks unless carried
    from modelyard.artifacts import LocalArtifactStore
    from modelyard.serving import SamplingParams, TransformersEngine
    from modelyard.store import Store

    adapter = work / "modelyard-out"
    train_model(base, rows[:8], adapter, _settings(config, max_steps=1), overwrite=True)
    artifacts = LocalArtifactStore(work / "artifacts")
    with Store.open(f"sqlite:///{work / 'store.db'}") as store:
        store.register_base_model("bench", str(base), {})
        store.create_registered_model("bench-bot")
        version = store.create_model_version(
            "bench-bot", kind="adapter", base_model="bench", run_id=None,
            artifact_digest=artifacts.put_dir(adapter, kind="adapter").digest,
            lineage={"prompt_template": "alpaca"}, metrics={},
        )  # fmt: skip
        engine = TransformersEngine(artifacts, max_batch_size=8, store=store)
        try:
            params = SamplingParams(max_tokens=config.new_tokens, temperature=0)
            prompts = [r["input"][:200] for r in rows[:8]]
            engine.generate(version, prompts[0], params)  # warm-up: the adapter loads
            started = time.perf_counter()
            one = engine.generate(version, prompts[0], params).completion_tokens
            single = one / (time.perf_counter() - started)
            started = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                done = list(pool.map(lambda p: engine.generate(version, p, params), prompts))
            batched = sum(g.completion_tokens for g in done) / (time.perf_counter() - started)
        finally:
            engine.close()
    return {"single_tokens_per_second": single, "batch8_tokens_per_second": batched}


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "—"
    return f"{value:,.2f}{unit}" if isinstance(value, float) else f"{value}{unit}"


def _ratio(section: dict, value: float | None = None) -> str:
    return section.get("skipped", "—") if value is None else f"{value:.2f}"


def _qlora_lines(qlora: dict) -> list[str]:
    lines = []
    for size, label in (("1b", "the benchmark's model"), ("3b", "a 3 B model")):
        side = qlora.get(size)
        if side is None:
            continue
        weights = side.get("weights_gib")
        shown = (
            f"{side['weights_ratio']:.2f} ({weights['qlora']:.2f} vs {weights['lora']:.2f} GiB)"
            if weights
            else "bitsandbytes is not installed"
        )
        lines.append(f"| QLoRA / LoRA weights, {label} | {shown} | |")
        peaks = side.get("peak_gib")
        shown = (
            f"{side['ratio']:.2f} ({peaks['qlora']:.2f} vs {peaks['lora']:.2f} GiB; QLoRA "
            f"without checkpointing {peaks['qlora_no_checkpointing']:.2f})"
            if peaks
            else side.get("skipped", "—")
        )
        lines.append(f"| QLoRA / LoRA peak GPU memory, {label}, checkpointing | {shown} | < 0.5 |")
    return lines


def markdown(result: dict) -> str:
    """The table of what has been measured so far (a section not run yet is left out)."""
    gpus = ", ".join(f"{g['name']}" for g in result["gpus"]) or "none (CPU)"
    lines = [
        f"# GPU benchmark ({'quick smoke test' if result['quick'] else 'full'})",
        "",
        f"Machine: {gpus}; torch {result['machine']['torch']}, transformers "
        f"{result['machine']['transformers']}, peft {result['machine']['peft']}; "
        f"{result['parameters'] / 1e9:.2f} B parameters, {result['rows']} rows.",
        "",
        "| measure | value | target |",
        "|---|---|---|",
    ]
    if "lora" in result:
        lora = result["lora"]
        lines += [
            f"| LoRA tokens/s, modelyard / plain Trainer+peft (bf16) | {lora['ratio']:.2f}x "
            f"({lora['modelyard']:,.0f} vs {lora['plain']:,.0f}) | >= 1.0 |",
            f"| peak GPU memory GiB, modelyard / plain | {_fmt(lora['peak_gib']['modelyard'])} / "
            f"{_fmt(lora['peak_gib']['plain'])} | not above plain |",
        ]
    if "packing" in result:
        pack = result["packing"]
        lines.append(
            f"| packing vs padded tokens/s ({pack['attention']} attention) | "
            f"{pack['ratio']:.2f}x | >= 1.3 |"
        )
    lines += _qlora_lines(result.get("qlora", {}))
    for name, error in result.get("failed", {}).items():
        lines.append(f"| {name}: failed | {error} | |")
    if "decode" in result:
        decode = result["decode"]
        lines += [
            f"| engine decode tokens/s, 1 request | {decode['single_tokens_per_second']:,.1f} | |",
            f"| engine decode tokens/s, 8 at once | {decode['batch8_tokens_per_second']:,.1f} | |",
        ]
    return "\n".join([*lines, ""])


SECTIONS: dict[str, Callable[[Path, Sequence[Row], Config, Path], dict]] = {
    "lora": lora_vs_plain,
    "packing": packing,
    "qlora": qlora_memory,
    "decode": decode_rates,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny model: a smoke test")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--out", type=Path, default=Path("gpu-results.md"),
        help="the markdown table, written again after every section (a run cut short keeps "
        "what it measured); the JSON goes beside it as .json",
    )  # fmt: skip
    args = parser.parse_args(argv)
    config = QUICK if args.quick else FULL
    if not args.quick and not torch.cuda.is_available():
        _say("no CUDA GPU here: run with --quick for a smoke test, or on the GPU machine")
        return 2
    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory(prefix="modelyard-gpu-bench-") as tmp:
        work = Path(tmp)
        base = build_base(config, work / "base")
        rows = build_rows(AutoTokenizer.from_pretrained(base), config)
        _say(f"{len(rows)} rows; base of {config.layers} layers x {config.hidden}")
        result: dict[str, Any] = {
            "quick": args.quick,
            "machine": machine(transformers, peft),
            "gpus": [{"name": g.name, "memory_total_bytes": g.memory_total_bytes}
                     for g in gpu_readings()],
            "parameters": _parameters(base),
            "config": config.__dict__,
            "rows": len(rows),
        }  # fmt: skip
        for name, section in SECTIONS.items():
            started = time.perf_counter()
            try:
                result[name] = section(base, rows, config, work)
            except Exception as exc:  # one section's failure must not cost the others
                if args.quick:
                    raise
                _say(f"{name} failed:\n{traceback.format_exc()}")
                result["failed"] = {**result.get("failed", {}), name: repr(exc)}
            _say(f"{name}: {time.perf_counter() - started:.0f} s")
            args.out.write_text(markdown(result), encoding="utf-8")
            args.out.with_suffix(".json").write_text(json.dumps(result, default=str) + "\n")
    _say(markdown(result))
    if args.json:
        print(json.dumps(result, default=str))
    return 1 if "failed" in result else 0


if __name__ == "__main__":
    leave(main())  # sys.exit(main()), without 2 s of collections at the exit
