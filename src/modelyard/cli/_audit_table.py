"""``audit log`` as a reader sees it: the key columns whole at any width, the details wrapped.

seq, time, actor, action and subject never wrap or shrink. Where they leave room
for a details column (``DETAILS_MIN`` characters), the details wrap inside it;
on a narrower terminal (80 columns) each event is its key line with the details
wrapped on the lines under it, indented.

Every cell is a ``rich.text.Text``: an actor, a subject or a payload is anyone's text,
shown as typed however the table is printed (``[red]`` is never read as Rich markup),
and a control character in it (a terminal escape sequence, say) as its escape code.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from modelyard.audit import AuditEvent, late_reason

KEYS = ("seq", "time (UTC)", "actor", "action", "subject")
DETAILS_MIN = 30
DETAILS_MAX_CHARS = 400  # the rest is in `audit log --json`
# Table borders and padding: 7 rules and 2 spaces around each of 6 columns.
_TABLE_OVERHEAD = 7 + 2 * 6
_GAP = "  "


def _printable(text: str) -> str:
    """``text`` with each control character (ESC, a newline, a C1 code) as its escape code."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def details_text(payload: Mapping[str, Any] | Any) -> str:
    """``key: value, …`` with JSON values: readable, and it wraps at its spaces. A
    ``reason`` (an override's, an acknowledgment's) comes first: it is what a reader
    looks for, and long details are cut."""
    if isinstance(payload, Mapping):
        keys = sorted(payload, key=lambda k: k != "reason")  # stable: the rest keep their order
        text = ", ".join(
            f"{k}: {json.dumps(payload[k], sort_keys=True, ensure_ascii=False)}" for k in keys
        )
    else:
        text = json.dumps(payload, sort_keys=True, ensure_ascii=False)
    text = _printable(text)  # JSON escapes C0 codes in values, not in keys nor C1 codes
    if len(text) > DETAILS_MAX_CHARS:
        text = text[: DETAILS_MAX_CHARS - 1] + "…"
    return text


def anchor_text(payload: Mapping[str, Any]) -> str | None:
    """A ``records.anchored`` event in one short line: how many records in how many seals,
    their time span and the root, instead of every seal's id, root and index hash (a
    server under traffic writes one every five seconds, and their hashes buried the
    rest of the log; `audit log --json` and `audit export` keep every field)."""
    records, seals = payload.get("records"), payload.get("seals")
    if not isinstance(records, list) or not isinstance(seals, list):
        return None
    try:
        count = sum(int(n) for n in records)
    except (TypeError, ValueError):
        return None
    span = f"{_clock(payload.get('first'))} to {_clock(payload.get('last'))}"
    root = str(payload.get("root", ""))[:16]
    plural = "" if count == 1 else "s"
    line = f"{count} inference record{plural} sealed in {len(seals)} seal(s), {span}, root {root}…"
    reason = late_reason(payload)
    return line if reason is None else f"anchored late: {reason}; {line}"


def _clock(value: object) -> str:
    """``HH:MM:SS`` of an ISO time (the event's own column has the date)."""
    text = str(value) if value is not None else "?"
    return text[11:19] if len(text) >= 19 and text[10] == "T" else text


def _details(e: AuditEvent) -> str:
    payload = e.payload
    if e.action == "records.anchored" and isinstance(payload, Mapping):
        short = anchor_text(payload)
        if short is not None:
            return _printable(short)
    breach = payload.get("breach") if isinstance(payload, Mapping) else None
    if isinstance(breach, Mapping) and isinstance(breach.get("message"), str):
        # a rollback: why first (the guards' numbers would cut it off)
        rest = details_text({k: v for k, v in payload.items() if k != "breach"})
        return details_text({"why": breach["message"]}) + (", " + rest if rest else "")
    return details_text(payload)


def _key_cells(e: AuditEvent) -> tuple[str, ...]:
    cells = (str(e.seq), f"{e.time:%Y-%m-%d %H:%M:%S}", e.actor, e.action, e.subject)
    return tuple(_printable(c) for c in cells)


def render_events(events: Sequence[AuditEvent], width: int) -> RenderableType:
    """A table whose details column wraps, or stacked lines when it would be too narrow."""
    rows = [(_key_cells(e), _details(e)) for e in events]
    widths = [max([len(h)] + [len(cells[i]) for cells, _ in rows]) for i, h in enumerate(KEYS)]
    if sum(widths) + _TABLE_OVERHEAD + DETAILS_MIN <= width:
        return _table(rows, widths)
    return _stacked(rows, widths, width)


def _table(rows: list[tuple[tuple[str, ...], str]], widths: list[int]) -> Table:
    table = Table()
    for header, w in zip(KEYS, widths, strict=True):
        table.add_column(
            header, no_wrap=True, min_width=w, justify="right" if header == "seq" else "left"
        )
    table.add_column("details", overflow="fold", min_width=DETAILS_MIN)
    for cells, details in rows:  # Text, not str: a cell is never parsed as markup
        table.add_row(*(Text(c) for c in cells), Text(details))
    return table


def _stacked(rows: list[tuple[tuple[str, ...], str]], widths: list[int], width: int) -> Group:
    indent = " " * (widths[0] + len(_GAP))
    wrap_at = max(width - len(indent), 20)

    def line(cells: Sequence[str]) -> str:
        first = cells[0].rjust(widths[0])
        rest = [c.ljust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return _GAP.join([first, *rest]).rstrip()

    parts: list[Text] = [Text(line(KEYS), style="bold"), Text(indent + "details", style="dim")]
    for cells, details in rows:
        parts.append(Text(line(cells)))
        wrapped = textwrap.wrap(details, wrap_at, break_long_words=True, break_on_hyphens=False)
        parts.extend(Text(indent + piece, style="dim") for piece in wrapped)
    return Group(*parts)
