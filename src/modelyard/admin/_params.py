"""Values the admin API reads itself: durations in the CLI's grammar, with an upper bound,
times (a time without an offset is UTC, as on the command line), and the paging of its
listings (``limit`` and a cursor)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import Query

from modelyard.durations import EXAMPLES, parse_duration
from modelyard.errors import ConfigError

YEAR = timedelta(days=366)
MAX_PAGE = 1000
"""The most items one page of a listing answers (``limit``)."""


def page_limit(what: str, default: int = MAX_PAGE) -> Any:
    """The ``limit`` query parameter of a listing of ``what`` (1 to ``MAX_PAGE``)."""
    return Query(
        default, ge=1, le=MAX_PAGE,
        description=f"At most this many {what} (default {default}, at most {MAX_PAGE}); a "
        "page shorter than limit is the last.",
    )  # fmt: skip


def page_after(what: str, by: str) -> Any:
    """The ``after`` query parameter of a listing of ``what`` ordered ``by``."""
    return Query(
        None, min_length=1, max_length=200,
        description=f"Only the {what} after this {by}: the next page is after= the {by} of "
        "the last one of a page.",
    )  # fmt: skip


def duration(
    text: str, field: str, *, allow_zero: bool = False, most: timedelta = YEAR
) -> timedelta:
    """``30s``, ``5m``, ``1.5h``, ``7d`` (and ``0`` with ``allow_zero``) up to ``most``; a bad
    or too long value (one no ``timedelta`` holds, too) is a 400 naming ``field``."""
    try:
        value = parse_duration(text, field=field, allow_zero=allow_zero)
    except ConfigError:
        raise
    except (OverflowError, ValueError):  # e.g. 1e400d
        value = None
    if value is None or value > most:
        raise ConfigError(
            f"{field} {text!r} is too long: at most {most.days} days, e.g. {EXAMPLES}",
            field=field,
        )
    return value


def utc(value: datetime | None, field: str) -> datetime | None:
    """An aware UTC time; a naive one is taken as UTC (the store refuses naive times). A
    time UTC cannot hold (year 1 at +14:00) is a 400 naming ``field``."""
    if value is None:
        return None
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        raise ConfigError(f"{field} {value.isoformat()} is out of range", field=field) from None


__all__ = ["MAX_PAGE", "duration", "page_after", "page_limit", "utc"]
