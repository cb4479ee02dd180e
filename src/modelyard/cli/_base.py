"""``modelyard base``: base models."""

from __future__ import annotations

from pathlib import Path

import typer

from modelyard.cli._common import console, open_store, print_json, progress_bar

app = typer.Typer(help="Base models: build a tiny one locally, register any HF model.")


@app.command("create-tiny")
def create_tiny(
    corpus: Path = typer.Option(..., "--corpus", help="Plain text, one document per line."),
    out: Path = typer.Option(..., "--out", help="Directory to write the model to (HF format)."),
    steps: int = typer.Option(300, min=1, help="Pretraining steps."),
    seed: int = typer.Option(0, help="Random seed (same seed and corpus: same weights)."),
    name: str | None = typer.Option(
        None, "--name", help="Register the base in the store under this name (default: none)."
    ),
    overwrite: bool = typer.Option(False, help="Replace an existing model in --out."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Train a byte-level BPE tokenizer and briefly pretrain a small Llama on CORPUS.

    Seconds on a CPU. The result loads with the ordinary
    ``AutoModelForCausalLM.from_pretrained(OUT)`` like any Hugging Face model.
    """
    from modelyard.base import create_tiny_base, read_corpus, weight_hashes

    documents = read_corpus(corpus)  # a bad corpus fails before anything is drawn or written
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
