"""``modelyard base``: base models."""

from __future__ import annotations

from pathlib import Path

import typer

from modelyard.cli._common import (
    bad_input,
    console,
    open_store,
    print_json,
    progress_bar,
    settings,
)
from modelyard.cli._home import check_home

app = typer.Typer(
    help="Base models: build a tiny one locally and register it by name. Any Hugging Face "
    "model directory or hub id also works as a base (runs register it on first use)."
)


@app.command("create-tiny")
def create_tiny(
    corpus: Path = typer.Option(..., "--corpus", help="Plain text, one document per line."),
    out: Path = typer.Option(..., "--out", help="Directory to write the model to (HF format)."),
    steps: int = typer.Option(300, min=1, help="Pretraining steps."),
    seed: int = typer.Option(0, help="Random seed (same seed and corpus: same weights)."),
    name: str | None = typer.Option(
        None,
        "--name",
        help="Register the base in the store under this name (default: none); a finetune "
        "config's base_model can then name it.",
    ),
    overwrite: bool = typer.Option(False, help="Replace an existing model in --out."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Train a byte-level BPE tokenizer and briefly pretrain a small Llama on CORPUS.

    Seconds on a CPU. The result loads with the ordinary
    `AutoModelForCausalLM.from_pretrained(OUT)` like any Hugging Face model.
    A missing or empty corpus is bad input (exit 2), as for `data validate`.
    """
    from modelyard.base import create_tiny_base, read_corpus, weight_hashes

    with bad_input():  # a bad corpus fails before anything is drawn or written
        documents = read_corpus(corpus)
    if name:
        check_home(settings())  # no store to register in: say so before pretraining
    with progress_bar("pretraining", steps) as update:
        info = create_tiny_base(
            documents,
            out,
            steps=steps,
            seed=seed,
            overwrite=overwrite,
            progress=lambda step, total, loss: update(step, total, f"loss {loss:.3f}"),
        )
    if name:
        with open_store() as store:
            store.register_base_model(name, str(out.resolve()), weight_hashes(out))
    if json_out:
        print_json(info)
        return
    console.print(
        f"[green]tiny base written[/] to {out} "
        f"({info.parameters:,} parameters, vocab {info.vocab_size}, "
        f"final loss {info.final_loss:.3f}, {info.seconds:.1f} s)"
    )
    if name:
        console.print(
            f"registered as base {name!r}: a finetune config can say `base_model: {name}`",
            highlight=False,
        )
