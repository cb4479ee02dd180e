"""``modelyard base``: base models."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from modelyard.cli._common import (
    bad_input,
    console,
    open_store,
    print_json,
    progress_bar,
    settings,
)
from modelyard.cli._home import check_home, store_exists
from modelyard.cli._remote import remote_url
from modelyard.errors import Conflict, NotFound
from modelyard.store import BaseModel

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
    A --name registered for other weights is refused before pretraining (exit 1), and
    --overwrite leaves a registered base's directory as it was when the new weights
    differ (exit 1): the versions trained on it name those bytes.
    """
    from modelyard.base import create_tiny_base, read_corpus, weight_hashes

    with bad_input():  # a bad corpus fails before anything is drawn or written
        documents = read_corpus(corpus)
    if name:
        check_home(settings())  # no store to register in: say so before pretraining
    known = _registered_weights(name, out, overwrite)  # the base --overwrite would replace
    # Weights a registered base names are not overwritten by others: build beside them
    # and compare, so lineage and the versions trained on them keep meaning those bytes.
    target = out if known is None else Path(tempfile.mkdtemp(prefix=f".{out.name}.",
                                                               dir=out.parent))  # fmt: skip
    try:
        with progress_bar("pretraining", steps) as update:
            info = create_tiny_base(
                documents,
                target,
                steps=steps,
                seed=seed,
                overwrite=overwrite or target != out,
                progress=lambda step, total, loss: update(step, total, f"loss {loss:.3f}"),
            )
        if known is not None and weight_hashes(target) != dict(known.weight_hashes):
            raise Conflict(
                f"{out} holds the weights of registered base {known.name!r}, and the new "
                "ones differ; the directory is left as it was",
                hint="Write the new base to another --out (a registered base's directory "
                "keeps its weights: the versions trained on it name them).",
            )
    finally:
        if target != out:  # the same weights as those registered: the directory stays
            shutil.rmtree(target, ignore_errors=True)
    info = dataclasses.replace(info, path=out)
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


@app.command("list")
def base_list(
    json_out: bool = typer.Option(False, "--json", help="Print the bases as JSON."),
) -> None:
    """List the registered bases: the names a finetune config's base_model can give."""
    with open_store() as store:
        bases = store.list_base_models()
    if json_out:
        print_json([{"name": b.name, "source": b.source, "created_at": b.created_at,
                     "weight_files": len(b.weight_hashes)} for b in bases])  # fmt: skip
        return
    if not bases:
        console.print("no registered bases: `modelyard base create-tiny --name NAME` registers "
                      "one, and a run registers the base it trains on")  # fmt: skip
        return
    table = Table("name", "source", "registered")
    for b in bases:  # names and paths are text: never read as markup
        table.add_row(escape(b.name), escape(b.source), f"{b.created_at:%Y-%m-%d %H:%M}")
    console.print(table)


def _registered_weights(name: str | None, out: Path, overwrite: bool) -> BaseModel | None:
    """The base registered for the weights ``--overwrite`` would replace in ``out`` (None:
    none, or no store here), once ``--name`` is checked free: a name registered for
    weights elsewhere is refused before pretraining (its registration failed after
    minutes of it, leaving ``--out`` written and unregistered)."""
    replaces = overwrite and out.is_dir()
    if not (name or replaces) or remote_url() is not None or not store_exists(settings()):
        return None
    source = str(out.resolve())
    with open_store() as store:
        if name:
            try:
                taken = store.get_base_model(name)
            except NotFound:
                pass
            else:
                if taken.source != source:
                    raise Conflict(
                        f"base model {name!r} is registered already, for the weights in "
                        f"{taken.source}",
                        hint="Choose another --name (a base's name always means the same weights).",
                    )
        here = [b for b in store.list_base_models() if b.source == source]
    return here[0] if here and replaces else None
