"""Training throughput: modelyard against a plain Trainer + peft script, packing, LoRA vs full.

One run, one synthetic dataset, one config, three measurements. They are
ratios measured side by side, not timed assertions: the script exits 0 whether
or not a target is met, and non-zero only when something fails.

1. LoRA tokens/s of ``modelyard.training.train_model`` divided by a plain
   script's (``plain_run`` below: ``transformers.Trainer`` on a
   ``peft.get_peft_model`` model), with the same base, the same token streams
   (both tokenize with ``encode_row``), LoRA config, batch size, epochs, seed and
   ``DataCollatorForSeq2Seq`` padding. Target >= 1.0: the platform adds no
   overhead to the training loop.
2. tokens/s with ``packing=True`` (examples binned into rows of max_seq_len) divided by tokens/s
   with padded batches, on rows built so that >= 40% of the padded batches is
   padding (short alpaca rows mixed with rows whose ``input`` is long). The
   padding fraction is the Trainer's own count of the padded tokens it fed the
   model in the plain run (``include_num_input_tokens_seen="all"``), i.e. the
   batches the seeded sampler and the padding collator really formed. Target
   >= 1.3.
3. Peak resident memory of a LoRA and a full fine-tuning run, each in a child
   process of its own (``--child lora|full``) that reports its own peak
   (``peak_rss_mib``), and their trainable parameter counts.

The variants of 1 and 2 run round-robin (modelyard padded, plain, modelyard
packed; ``repeats`` times) after a discarded warm-up round, and each reports the
median of its runs. Every variant's tokens/s is the same count, the
non-padding tokens of the encoded rows times the epochs, divided by that run's
``train_runtime`` as the Trainer measures it; the variants differ only in time.

    .venv/bin/python benchmarks/train_throughput.py           # under 2 minutes on 2 idle CPU cores
    .venv/bin/python benchmarks/train_throughput.py --quick   # smoke test, under a minute
    .venv/bin/python benchmarks/train_throughput.py --json    # JSON on stdout, the table on stderr
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no fork warnings from the children

import peft
import transformers
from _machine import finite, leave
from _machine import machine as measured_on
from peft import LoraConfig, get_peft_model
from rich.console import Console
from rich.table import Table
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    PrinterCallback,
    Trainer,
    TrainingArguments,
    set_seed,
)

from modelyard.base import create_tiny_base, load_base, load_tokenizer
from modelyard.data import DOMAINS, domain_corpus, synthetic_domain
from modelyard.errors import ModelyardError
from modelyard.training import IGNORE_INDEX, TrainSettings, encode_row, train_model

PLATFORM_TARGET = 1.0
PACKING_TARGET = 1.3
PADDING_TARGET = 0.4
FULL_LEARNING_RATE = 1e-4  # full fine-tuning wants a lower rate; memory does not depend on it
LONG_INSTRUCTION = "Which team should handle this case file? Answer with the team's name."

Row = dict[str, str]
Say = Callable[[str], None]

MODELYARD, PLAIN, PACKED = "modelyard", "plain", "modelyard packed"
VARIANTS = (MODELYARD, PLAIN, PACKED)
"""The order of each round: the two padded LoRA runs, then the packed one."""


class BenchmarkError(ModelyardError):
    code = "benchmark_error"


@dataclass(frozen=True)
class Config:
    """Sizes of one benchmark run: the base, the rows, the training loop, the repeats."""

    hidden_size: int
    layers: int
    heads: int
    vocab_size: int
    base_steps: int  # pretraining steps: weights only need to be a valid model, not a good one
    corpus_docs: int
    short_rows: int
    long_rows: int
    long_tokens: tuple[int, int]  # length range of the long rows, in tokens
    max_seq_len: int
    batch_size: int
    epochs: int
    repeats: int
    warmup: bool
    seed: int = 0


FULL = Config(
    hidden_size=256,
    layers=4,
    heads=4,
    vocab_size=2048,
    base_steps=4,
    corpus_docs=2000,
    short_rows=128,
    long_rows=32,
    long_tokens=(216, 252),
    max_seq_len=256,
    batch_size=8,
    epochs=1,
    repeats=5,
    warmup=True,
)
QUICK = Config(
    hidden_size=64,
    layers=2,
    heads=4,
    vocab_size=1024,
    base_steps=2,
    corpus_docs=600,
    short_rows=12,
    long_rows=4,
    long_tokens=(180, 240),
    max_seq_len=256,
    batch_size=4,
    epochs=1,
    repeats=1,
    warmup=False,
)


@dataclass(frozen=True)
class Run:
    """One timed training run: what it processed, how long the training loop took."""

    variant: str
    repeat: int
    tokens: int  # non-padding tokens processed: encoded rows x epochs (the same for every variant)
    train_seconds: float  # the Trainer's train_runtime
    wall_seconds: float  # load + tokenize + train + save
    train_loss: float
    trainer_tokens: int  # the Trainer's own token counter (padded tokens for the plain run)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.train_seconds


# -- data ------------------------------------------------------------------------------------


def _length(tokenizer: Any, row: Mapping[str, str]) -> int:
    return len(encode_row(tokenizer, row, max_seq_len=1 << 30)["input_ids"])


def _long_row(tokenizer: Any, domain: str, docs: Iterator[str], target: int) -> Row:
    """A routing row whose ``input`` is a case file of documents, at most ``target`` tokens long."""
    parts: list[str] = []
    for doc in itertools.islice(docs, 1000):
        row = {"instruction": LONG_INSTRUCTION, "input": " ".join([*parts, doc]), "output": domain}
        if _length(tokenizer, row) <= target:
            parts.append(doc)
        elif parts:
            return {**row, "input": " ".join(parts)}
    raise BenchmarkError(f"no case file of at most {target} tokens can be made for {domain}")


def build_rows(tokenizer: Any, config: Config) -> list[Row]:
    """Short alpaca routing rows mixed (seeded shuffle) with long case-file rows."""
    rng = random.Random(config.seed)
    rows: list[Row] = []
    for i, domain in enumerate(DOMAINS):
        share = config.short_rows // len(DOMAINS) + (i < config.short_rows % len(DOMAINS))
        rows += synthetic_domain(domain, share, seed=config.seed)
    docs = {
        domain: itertools.cycle(domain_corpus((domain,), 200, seed=config.seed + 1))
        for domain in DOMAINS
    }
    for i in range(config.long_rows):
        domain = DOMAINS[i % len(DOMAINS)]
        rows.append(_long_row(tokenizer, domain, docs[domain], rng.randint(*config.long_tokens)))
    rng.shuffle(rows)
    return rows


# -- the runs --------------------------------------------------------------------------------


def _settings(
    config: Config, *, packing: bool = False, max_steps: int | None = None
) -> TrainSettings:
    return TrainSettings(
        batch_size=config.batch_size,
        epochs=config.epochs,
        max_steps=max_steps,
        max_seq_len=config.max_seq_len,
        packing=packing,
        seed=config.seed,
    )


def modelyard_run(
    base: Path, rows: Sequence[Row], settings: TrainSettings, work: Path, tokens: int, repeat: int
) -> Run:
    """modelyard's own path: ``train_model``, as the CLI and the quickstart call it."""
    result = train_model(base, rows, work / "modelyard-out", settings, overwrite=True)
    if result.tokens_per_second <= 0:
        raise BenchmarkError("train_model reported no training time or no tokens")
    return Run(
        variant=PACKED if settings.packing else MODELYARD,
        repeat=repeat,
        tokens=tokens,
        train_seconds=result.train_tokens / result.tokens_per_second,
        wall_seconds=result.seconds,
        train_loss=result.train_loss,
        trainer_tokens=result.train_tokens,
    )


def plain_run(
    base: Path, rows: Sequence[Row], settings: TrainSettings, work: Path, tokens: int, repeat: int
) -> Run:
    """The reference: the script a user would write with transformers and peft alone.

    Only ``settings``' values are read (LoRA shape, batch, epochs, learning-rate
    schedule, seed); no modelyard code runs except ``encode_row``, so that both
    sides train on identical token streams and prompt-masked labels.
    """
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.padding_side = "right"
    model = AutoModelForCausalLM.from_pretrained(base)
    features = [encode_row(tokenizer, row, settings.max_seq_len) for row in rows]
    set_seed(settings.seed)
    model = get_peft_model(
        model,
        LoraConfig(
            task_type="CAUSAL_LM",
            r=settings.r,
            lora_alpha=settings.alpha,
            lora_dropout=settings.dropout,
            target_modules=(
                settings.target_modules
                if isinstance(settings.target_modules, str)
                else list(settings.target_modules)
            ),
            bias="none",
        ),
    )
    args = TrainingArguments(
        output_dir=str(work / "plain-trainer"),
        per_device_train_batch_size=settings.batch_size,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps or -1,
        learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.scheduler,
        warmup_steps=settings.warmup_ratio,
        weight_decay=0.0,
        seed=settings.seed,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        include_num_input_tokens_seen="all",  # padded tokens: gives the padding fraction
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=features,
        data_collator=DataCollatorForSeq2Seq(
            tokenizer, label_pad_token_id=IGNORE_INDEX, padding=True
        ),
    )
    trainer.remove_callback(PrinterCallback)  # it would print the final metrics dict
    output = trainer.train()
    model.save_pretrained(work / "plain-adapter")
    wall = time.perf_counter() - started
    own_tokens = sum(len(f["input_ids"]) for f in features) * int(settings.epochs)
    if settings.max_steps is None and own_tokens != tokens:
        raise BenchmarkError(
            f"the plain script counted {own_tokens} tokens where modelyard counted {tokens}",
            hint="Both must tokenize with encode_row and the same tokenizer.",
        )
    return Run(
        variant=PLAIN,
        repeat=repeat,
        tokens=tokens,
        train_seconds=float(output.metrics["train_runtime"]),
        wall_seconds=wall,
        train_loss=float(output.training_loss),
        trainer_tokens=int(trainer.state.num_input_tokens_seen),
    )


def round_robin(
    base: Path, rows: Sequence[Row], config: Config, work: Path, tokens: int, say: Say
) -> list[Run]:
    """modelyard padded, plain, modelyard packed, ``repeats`` times (after a warm-up round)."""
    if config.warmup:
        say("warm-up round (2 steps per variant, not counted)")
        for variant in VARIANTS:
            _run(variant, base, rows, config, work, tokens, 0, max_steps=2)
    runs: list[Run] = []
    for repeat in range(1, config.repeats + 1):
        for variant in VARIANTS:
            run = _run(variant, base, rows, config, work, tokens, repeat)
            runs.append(run)
            say(
                f"{run.variant:<16} repeat {repeat}/{config.repeats}: "
                f"{run.tokens_per_second:8,.0f} tokens/s ({run.train_seconds:.1f} s)"
            )
    return runs


def _run(
    variant: str,
    base: Path,
    rows: Sequence[Row],
    config: Config,
    work: Path,
    tokens: int,
    repeat: int,
    max_steps: int | None = None,
) -> Run:
    settings = _settings(config, packing=variant == PACKED, max_steps=max_steps)
    if variant == PLAIN:
        return plain_run(base, rows, settings, work, tokens, repeat)
    return modelyard_run(base, rows, settings, work, tokens, repeat)


# -- memory: one child process per method ----------------------------------------------------


def peak_rss_mib() -> float:
    """This process's own peak resident set size so far, in MiB.

    On Linux it is ``VmHWM`` from ``/proc/self/status``. ``ru_maxrss`` would not
    do for a child: the kernel carries the parent's peak over into it at
    ``exec`` (``sig->maxrss``), so every child of a parent that has trained
    reports at least the parent's peak. Elsewhere ``ru_maxrss`` is the fallback.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text(encoding="ascii").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def child_main(base: Path, rows_file: Path, settings_file: Path) -> int:
    """Train once and print this process's memory as one JSON line (``--child``)."""
    rows = json.loads(rows_file.read_text(encoding="utf-8"))
    settings = TrainSettings.model_validate_json(settings_file.read_text(encoding="utf-8"))
    load_base(base)  # imports and a first model load: the baseline, before any training
    baseline = peak_rss_mib()
    with tempfile.TemporaryDirectory(prefix="modelyard-bench-child-") as tmp:
        result = train_model(base, rows, Path(tmp) / "out", settings)
    report = {
        "method": settings.method,
        "peak_rss_mib": peak_rss_mib(),
        "baseline_rss_mib": baseline,
        "trainable_parameters": result.trainable_parameters,
        "total_parameters": result.total_parameters,
        "train_seconds": result.train_tokens / result.tokens_per_second,
    }
    print(json.dumps(report))
    return 0


def memory_run(base: Path, rows_file: Path, settings: TrainSettings, work: Path) -> dict[str, Any]:
    """Run ``--child`` for ``settings.method`` in a fresh interpreter and read its report."""
    settings_file = work / f"{settings.method}-settings.json"
    settings_file.write_text(settings.model_dump_json(), encoding="utf-8")
    command = [sys.executable, str(Path(__file__).resolve()), "--child", settings.method]
    command += ["--base", str(base), "--rows", str(rows_file), "--settings", str(settings_file)]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchmarkError(
            f"the {settings.method} memory run failed (exit {proc.returncode}): {last}",
            hint=f"Run it alone to see everything: {' '.join(command)}",
        )
    report: dict[str, Any] = json.loads(lines[-1])
    return report


# -- report ----------------------------------------------------------------------------------


def _median(runs: Sequence[Run], variant: str, field: str) -> float:
    return statistics.median(float(getattr(r, field)) for r in runs if r.variant == variant)


def summarize(runs: Sequence[Run], memory: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The three ratios, with the medians and targets they come from."""
    ours = _median(runs, MODELYARD, "tokens_per_second")
    plain = _median(runs, PLAIN, "tokens_per_second")
    packed = _median(runs, PACKED, "tokens_per_second")
    padded = next(r for r in runs if r.variant == PLAIN)  # every plain run sees the same batches
    lora, full = memory["lora"], memory["full"]
    lora_training = lora["peak_rss_mib"] - lora["baseline_rss_mib"]
    full_training = full["peak_rss_mib"] - full["baseline_rss_mib"]
    return {
        "platform_vs_plain": {
            "modelyard_tokens_per_second": ours,
            "plain_tokens_per_second": plain,
            "ratio": ours / plain,
            "target": PLATFORM_TARGET,
            "met": ours / plain >= PLATFORM_TARGET,
            "modelyard_wall_seconds": _median(runs, MODELYARD, "wall_seconds"),
            "plain_wall_seconds": _median(runs, PLAIN, "wall_seconds"),
            "modelyard_train_loss": _median(runs, MODELYARD, "train_loss"),
            "plain_train_loss": _median(runs, PLAIN, "train_loss"),
        },
        "packing": {
            "tokens": padded.tokens,
            "padded_tokens": padded.trainer_tokens,
            "padding_fraction": 1 - padded.tokens / padded.trainer_tokens,
            "padding_target": PADDING_TARGET,
            "packed_tokens_per_second": packed,
            "padded_tokens_per_second": ours,
            "ratio": packed / ours,
            "target": PACKING_TARGET,
            "met": packed / ours >= PACKING_TARGET,
        },
        "memory": {
            "lora": dict(lora),
            "full": dict(full),
            "ratio": full["peak_rss_mib"] / lora["peak_rss_mib"],
            "training_ratio": full_training / lora_training if lora_training > 0 else math.nan,
            "trainable_ratio": full["trainable_parameters"] / lora["trainable_parameters"],
        },
    }


def _ratio(value: float) -> str:
    return f"{value:.2f}x" if math.isfinite(value) else "-"


def _verdict(met: bool) -> str:
    return "[green]PASS[/green]" if met else "[red]MISS[/red]"


def results_table(summary: Mapping[str, Any], repeats: int) -> Table:
    """One row per measurement: A, B, A/B, the target and whether it is met."""
    pvp, pack, mem = summary["platform_vs_plain"], summary["packing"], summary["memory"]
    lora, full = mem["lora"], mem["full"]
    table = Table(title="Training throughput", title_justify="left")
    for name, justify in [("measurement (A vs B)", "left"), ("A", "right"), ("B", "right")]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for name in ("A / B", "target", "result"):
        table.add_column(name, justify="right")
    median = f"median of {repeats}"
    table.add_row(
        f"LoRA tokens/s: modelyard vs plain Trainer + peft ({median})",
        f"{pvp['modelyard_tokens_per_second']:,.0f}",
        f"{pvp['plain_tokens_per_second']:,.0f}",
        f"{pvp['ratio']:.2f}x",
        f">= {PLATFORM_TARGET:.2f}x",
        _verdict(pvp["met"]),
    )
    table.add_row(
        "padding share of the padded batches",
        f"{pack['padding_fraction']:.0%}",
        "",
        "",
        f">= {PADDING_TARGET:.0%}",
        _verdict(pack["padding_fraction"] >= PADDING_TARGET),
    )
    table.add_row(
        f"LoRA tokens/s: packing vs padded batches ({median})",
        f"{pack['packed_tokens_per_second']:,.0f}",
        f"{pack['padded_tokens_per_second']:,.0f}",
        f"{pack['ratio']:.2f}x",
        f">= {PACKING_TARGET:.2f}x",
        _verdict(pack["met"]),
    )
    table.add_row(
        "peak RSS MiB: full vs LoRA fine-tuning",
        f"{full['peak_rss_mib']:,.0f}",
        f"{lora['peak_rss_mib']:,.0f}",
        f"{mem['ratio']:.2f}x",
        "-",
        "-",
    )
    table.add_row(
        "  of which training (peak - after loading)",
        f"{full['peak_rss_mib'] - full['baseline_rss_mib']:,.0f}",
        f"{lora['peak_rss_mib'] - lora['baseline_rss_mib']:,.0f}",
        _ratio(mem["training_ratio"]),
        "-",
        "-",
    )
    table.add_row(
        "trainable parameters: full vs LoRA",
        f"{full['trainable_parameters']:,}",
        f"{lora['trainable_parameters']:,}",
        f"{mem['trainable_ratio']:.0f}x",
        "-",
        "-",
    )
    return table


def runs_table(runs: Sequence[Run]) -> Table:
    """Every timed run, so the spread behind each median is visible."""
    table = Table(title="Runs (in the order they ran)", title_justify="left")
    for name in ("variant", "repeat", "tokens", "train s", "tokens/s", "wall s", "train loss"):
        table.add_column(name, justify="left" if name == "variant" else "right")
    for r in runs:
        table.add_row(
            r.variant,
            str(r.repeat),
            f"{r.tokens:,}",
            f"{r.train_seconds:.2f}",
            f"{r.tokens_per_second:,.0f}",
            f"{r.wall_seconds:.2f}",
            f"{r.train_loss:.4f}",
        )
    return table


def machine() -> dict[str, Any]:
    """Where and with what the numbers were measured."""
    return measured_on(transformers, peft)


# -- main ------------------------------------------------------------------------------------


def benchmark(config: Config, work: Path, say: Say) -> tuple[dict[str, Any], list[Run]]:
    """Build the base and the rows, run everything; the results as JSON-able data, and the runs."""
    started = time.perf_counter()
    say(f"building a tiny base: hidden {config.hidden_size}, {config.layers} layers")
    info = create_tiny_base(
        domain_corpus(DOMAINS, config.corpus_docs, seed=config.seed),
        work / "base",
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        layers=config.layers,
        heads=config.heads,
        max_positions=max(config.max_seq_len, 128),
        steps=config.base_steps,
        batch_size=8,
        seed=config.seed,
    )
    tokenizer = load_tokenizer(info.path)
    rows = build_rows(tokenizer, config)
    lengths = [len(encode_row(tokenizer, r, config.max_seq_len)["input_ids"]) for r in rows]
    say(f"{len(rows)} rows, {sum(lengths):,} tokens, {min(lengths)} to {max(lengths)} per row")
    runs = round_robin(info.path, rows, config, work, sum(lengths) * config.epochs, say)
    rows_file = work / "rows.json"
    rows_file.write_text(json.dumps(rows), encoding="utf-8")
    full = {"method": "full", "learning_rate": FULL_LEARNING_RATE}
    memory: dict[str, dict[str, Any]] = {}
    for settings in (_settings(config), _settings(config).model_copy(update=full)):
        say(f"memory: {settings.method} fine-tuning in a child process")
        memory[settings.method] = memory_run(info.path, rows_file, settings, work)
    results = {
        "benchmark": "train_throughput",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "config": asdict(config),
        "base": {"parameters": info.parameters, "vocab_size": info.vocab_size},
        "rows": {"count": len(rows), "min_tokens": min(lengths), "max_tokens": max(lengths)},
        "runs": [{**asdict(r), "tokens_per_second": r.tokens_per_second} for r in runs],
        **summarize(runs, memory),
        "seconds": time.perf_counter() - started,
    }
    return results, runs


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test (< 1 min)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    parser.add_argument("--child", choices=("lora", "full"), help=argparse.SUPPRESS)
    parser.add_argument("--base", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--settings", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child and not (args.base and args.rows and args.settings):
        parser.error("--child needs --base, --rows and --settings")
    return args


def _quiet() -> None:
    """No library chatter (progress bars, deprecation notices) between the benchmark's lines."""
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    for category in (FutureWarning, UserWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(torch|transformers|peft)\.")


def _header(results: Mapping[str, Any], config: Config) -> str:
    machine_, base = results["machine"], results["base"]
    return (
        f"{results['date']}: {machine_['cpu_count']} CPUs, {machine_['torch_threads']} torch "
        f"threads, load average {machine_['load_average_1m']:.1f}; torch {machine_['torch']}, "
        f"transformers {machine_['transformers']}, peft {machine_['peft']}\n"
        f"base: {base['parameters']:,} parameters (hidden {config.hidden_size}, "
        f"{config.layers} layers, vocab {base['vocab_size']}); {results['rows']['count']} rows, "
        f"batch {config.batch_size}, {config.epochs} epoch(s), max_seq_len {config.max_seq_len}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    _quiet()
    err = Console(stderr=True)
    try:
        if args.child:
            return child_main(args.base, args.rows, args.settings)
        config = QUICK if args.quick else FULL
        with tempfile.TemporaryDirectory(prefix="modelyard-bench-") as tmp:
            results, runs = benchmark(config, Path(tmp), lambda m: err.print(f"[dim]{m}[/dim]"))
    except ModelyardError as exc:
        err.print(f"error: {exc.one_line()}", markup=False, highlight=False)
        return 1
    out = err if args.json else Console()
    if not out.is_terminal:
        out.width = 120  # not the 80 columns Rich assumes for pipes and files
    out.print(_header(results, config), highlight=False)
    out.print(runs_table(runs))
    out.print(results_table(results, config.repeats))
    if args.json:
        print(json.dumps(finite(results), indent=2))
    return 0


if __name__ == "__main__":
    leave(main())  # sys.exit(main()), without 2 s of collections at the exit
