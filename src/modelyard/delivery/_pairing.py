"""Which production record answered the request a shadow record is a copy of.

A shadow record whose id is ``ID-shadow`` belongs to production record ``ID`` (the
server derives it so for batch and stream rows). Any other shadow record is paired
with a production record of the same endpoint, API key, route and request (the
user's words, parsed back from each version's rendered prompt, or the prompt itself),
the one whose record is nearest in time to the shadow's (both are written when their
answers end), each production record used once. Two identical requests of one key
close together may swap partners: each pair is still one request's two answers.

A pair is compared only when both answers are there to read; every shadow record
that gives no pair is counted under one reason (``SKIP_REASONS``, checked in that
order), so the counts add up to the shadow records read.
"""

from __future__ import annotations

import unicodedata
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

from modelyard.data import has_redactions
from modelyard.judges import question_from_prompt
from modelyard.store import SHADOW_SUFFIX, PairedRecord, ShadowWindow

SKIP_REASONS: dict[str, str] = {
    "other_version": "a shadow of another version than the one compared",
    "unpaired": "no production record of the same request in the window",
    "production_failed": "the production request failed or has not ended",
    "shadow_failed": "the shadow request failed or has not ended",
    "hashed": "the tenant keeps only hashes",
    "not_kept": "the tenant keeps no text",
    "redacted": "the text has redaction placeholders",
}
"""Why a shadow record gives no pair to compare, in the order they are checked."""


@dataclass(frozen=True)
class Pair:
    """A shadow answer and the production answer to the same request."""

    production: PairedRecord
    shadow: PairedRecord
    question: str  # the user's words when the prompt parses back, else the prompt
    by_id: bool  # paired by the ``ID-shadow`` id (else by the request)


@dataclass
class Pairing:
    shadow_records: int = 0
    pairs: list[Pair] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))


def normalise(text: str) -> str:
    """What two answers are compared as: NFKC, case folded, runs of whitespace as one space."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def question(record: PairedRecord, templates: Mapping[str | None, str]) -> str | None:
    """What the request asked: the user's words parsed back from the prompt with its version's
    template (``modelyard.data.parse_prompt``), or the prompt as it is."""
    if record.prompt is None:
        return None
    return question_from_prompt(templates.get(record.version), record.prompt)


def _key(record: PairedRecord, templates: Mapping[str | None, str]) -> tuple[object, ...]:
    return (record.api_key_id, record.route, question(record, templates))


def _skip_reason(pair: Pair) -> str | None:
    prod, shadow = pair.production, pair.shadow
    if prod.status != "ok":
        return "production_failed"
    if shadow.status != "ok":
        return "shadow_failed"
    policies = {prod.storage_policy, shadow.storage_policy}
    if "hash" in policies:
        return "hashed"
    if "none" in policies or None in (prod.prompt, prod.response, shadow.response):
        return "not_kept"
    texts = (prod.prompt or "", prod.response or "", shadow.response or "")
    if "redacted" in policies and has_redactions(*texts):
        return "redacted"  # what the redaction replaced is gone: equal masks, unequal text
    return None


def pair_records(
    window: ShadowWindow, shadow_version: str, templates: Mapping[str | None, str]
) -> Pairing:
    """The pairs of ``window`` for the shadows of ``shadow_version``; ``templates`` maps a
    version ref to its prompt template's name (to parse prompts back)."""
    out = Pairing(shadow_records=len(window.shadows))
    productions = {p.id: p for p in window.productions}
    taken: set[str] = set()
    found: list[tuple[PairedRecord, PairedRecord, bool]] = []
    by_request: list[PairedRecord] = []
    for shadow in window.shadows:
        if shadow.version != shadow_version:
            out.skipped["other_version"] += 1
            continue
        own = shadow.id[: -len(SHADOW_SUFFIX)] if shadow.id.endswith(SHADOW_SUFFIX) else None
        if own is not None and own in productions and own not in taken:
            taken.add(own)
            found.append((productions[own], shadow, True))
        else:
            by_request.append(shadow)
    if by_request:
        candidates: dict[tuple[object, ...], list[PairedRecord]] = defaultdict(list)
        for prod in window.productions:  # oldest first
            if prod.id not in taken:
                candidates[_key(prod, templates)].append(prod)
        for shadow in by_request:
            match = min(
                (p for p in candidates.get(_key(shadow, templates), []) if p.id not in taken),
                key=lambda p: abs((p.created_at - shadow.created_at).total_seconds()),
                default=None,
            )
            if match is None:
                out.skipped["unpaired"] += 1
                continue
            taken.add(match.id)
            found.append((match, shadow, False))
    found.sort(key=lambda item: (item[1].created_at, item[1].id))
    for prod, shadow, by_id in found:
        asked = question(prod, templates) or question(shadow, templates) or ""
        pair = Pair(prod, shadow, asked, by_id)
        reason = _skip_reason(pair)
        if reason is None:
            out.pairs.append(pair)
        else:
            out.skipped[reason] += 1
    return out
