"""Deterministic synthetic data for the quickstart: routing tasks and a pretraining corpus.

The quickstart needs data that (a) a tiny model can learn in seconds, (b) has a
held-out split that is not a copy of the training split, and (c) comes with
in-domain prose for pretraining a base model that knows the vocabulary but has
never seen the instruction format. Everything here is a pure function of its
arguments (``random.Random`` seeded with a string is stable across processes).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from modelyard.data._domains import SPECS, DomainSpec, Template
from modelyard.errors import DataError

DOMAINS: tuple[str, ...] = tuple(SPECS)
"""The synthetic domains, in a stable order."""

_MAX_ATTEMPTS_PER_ROW = 200


def _spec(domain: str) -> DomainSpec:
    """Look a domain up, naming the valid ones when it is unknown."""
    try:
        return SPECS[domain]
    except KeyError:
        raise DataError(
            f"unknown synthetic domain {domain!r}",
            hint=f"Choose one of: {', '.join(DOMAINS)}.",
            domain=domain,
        ) from None


def _check_count(what: str, n: int) -> None:
    if n < 0:
        raise DataError(f"{what} must be zero or more, got {n}")


def _fill(template: Template, cue: str, spec: DomainSpec, rng: random.Random) -> str:
    """Render one template: a cue clause (with a fitting possessive) plus random slot values."""
    clause = cue.format(poss=rng.choice(template.possessives))
    values = {slot: rng.choice(options) for slot, options in spec.slots.items()}
    values["ref"] = f"{rng.choice('ABCKPTX')}{rng.choice('ABCKPTX')}-{rng.randrange(1000, 10000)}"
    values["amount"] = f"${rng.randrange(2, 90) * 50:,}"
    text = template.text.format(cue=clause, Cue=clause[:1].upper() + clause[1:], **values)
    return " ".join(text.split())


def synthetic_domain(domain: str, n: int, seed: int) -> list[dict[str, str]]:
    """Generate ``n`` alpaca rows routing a message of ``domain`` to its label.

    Rows come in shuffled rounds that use every (label, cue) pair once, so labels
    are balanced and any prefix (e.g. the first 200 rows for training, the rest
    held out) covers the whole domain. Inputs are distinct, so such a split is
    disjoint. The same ``(domain, seed)`` always gives the same rows, and a
    smaller ``n`` gives a prefix of a larger one.
    """
    spec = _spec(domain)
    _check_count("n", n)
    order_rng = random.Random(f"{domain}:{seed}:order")
    text_rng = random.Random(f"{domain}:{seed}:text")
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    for label, cue in _cue_rounds(spec, n, order_rng):
        text = _unique_text(spec, cue, text_rng, seen)
        rows.append({"instruction": spec.instruction, "input": text, "output": label})
    return rows


def _cue_rounds(spec: DomainSpec, n: int, rng: random.Random) -> list[tuple[str, str]]:
    """``n`` (label, cue) pairs: rounds of every pair once, each round in a random order."""
    pairs = [(label, cue) for label, cues in spec.cues.items() for cue in cues]
    picked: list[tuple[str, str]] = []
    while len(picked) < n:
        round_ = pairs.copy()
        rng.shuffle(round_)
        picked.extend(round_)
    return picked[:n]


def _unique_text(spec: DomainSpec, cue: str, rng: random.Random, seen: set[str]) -> str:
    """Frame ``cue`` in random task templates until the text is new; fail clearly if exhausted."""
    for _ in range(_MAX_ATTEMPTS_PER_ROW):
        text = _fill(rng.choice(spec.task_templates), cue, spec, rng)
        if text not in seen:
            seen.add(text)
            return text
    raise DataError(
        f"cannot generate that many distinct {spec.name} examples",
        hint="Ask for fewer rows (a few thousand per domain is the practical limit).",
    )


def _case_document(spec: DomainSpec, rng: random.Random) -> str:
    """A short case description followed by prose naming how it was routed."""
    label = rng.choice(spec.labels)
    case = _fill(rng.choice(spec.corpus_templates), rng.choice(spec.cues[label]), spec, rng)
    return f"{case} {rng.choice(spec.routing_sentences).format(label=label)}"


def _facts_document(spec: DomainSpec, rng: random.Random) -> str:
    """A few general sentences about one label, in natural prose."""
    label = rng.choice(spec.labels)
    return " ".join(rng.sample(spec.facts[label], k=rng.randint(2, 4)))


def domain_corpus(domains: Sequence[str], n_docs: int, seed: int) -> list[str]:
    """Generate ``n_docs`` plain-text documents about ``domains`` for pretraining a base.

    Documents describe cases and say in prose which team handled them, so a base
    model learns the vocabulary and the label words. They never contain the
    instruction/response prompt format, so the base alone cannot do the routing
    task: that is what an adapter has to add.
    """
    specs = [_spec(domain) for domain in domains]
    if not specs:
        raise DataError(
            "no domains given for the corpus", hint=f"Use some of: {', '.join(DOMAINS)}."
        )
    _check_count("n_docs", n_docs)
    rng = random.Random(f"corpus:{','.join(domains)}:{seed}")
    docs: list[str] = []
    for i in range(n_docs):
        spec = specs[i % len(specs)]
        make = _facts_document if rng.random() < 0.3 else _case_document
        docs.append(make(spec, rng))
    return docs
