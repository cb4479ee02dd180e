"""Values the admin API reads itself: durations in the CLI's grammar, with an upper bound,
and times (a time without an offset is UTC, as on the command line)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from modelyard.durations import EXAMPLES, parse_duration
from modelyard.errors import ConfigError

YEAR = timedelta(days=366)


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


__all__ = ["duration", "utc"]
