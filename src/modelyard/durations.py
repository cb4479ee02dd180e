"""Durations and points in time as users write them, in one grammar for every command.

A duration is a number and a unit: ``30s``, ``5m``, ``1.5h``, ``7d`` (``s``
seconds, ``m`` minutes, ``h`` hours, ``d`` days; the number may have a
fraction). It must be positive, unless the option allows zero (``0``, with or
without a unit, e.g. ``--bake 0s`` or ``--grace 0``). Key expiry and grace,
rollout bake times and timeouts, drift and alert windows and every ``--since``
read durations through ``parse_duration``; ``--since`` (``parse_since``) also
takes an ISO date or date-time.

A bad value is a ``ConfigError`` that names the option (``field``), quotes
what was given and shows examples.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from modelyard.errors import ConfigError

UNITS: dict[str, float] = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
"""Seconds per unit."""
EXAMPLES = "30s, 5m, 1.5h, 7d"
_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_ZERO_RE = re.compile(r"^0+(?:\.0+)?[smhd]?$")


def _invalid(text: str, field: str | None, allow_zero: bool) -> ConfigError:
    where = f" for {field}" if field else ""
    what = "0 or a number and a unit" if allow_zero else "a number and a unit"
    return ConfigError(
        f"invalid duration {text!r}{where}: use {what} (s, m, h or d), e.g. {EXAMPLES}",
        field=field or "duration",
    )


def is_duration(text: str) -> bool:
    """Whether ``text`` has the shape of a duration (``7d``, ``1.5h``), whatever its value."""
    return _DURATION_RE.match(text.strip()) is not None


def parse_duration(text: str, *, field: str | None = None, allow_zero: bool = False) -> timedelta:
    """``30s``, ``5m``, ``1.5h``, ``7d`` → a timedelta; ``field`` names the option in errors.

    ``allow_zero`` also accepts ``0`` (with or without a unit), e.g. an immediate cut-over.
    """
    value = text.strip()
    if allow_zero and _ZERO_RE.match(value):
        return timedelta(0)
    match = _DURATION_RE.match(value)
    if match is None:
        raise _invalid(text, field, allow_zero)
    if float(match.group(1)) <= 0:  # the right shape, the wrong value: say so
        where = f" for {field}" if field else ""
        raise ConfigError(
            f"duration {text!r}{where} is zero: give a length above zero, e.g. {EXAMPLES}",
            field=field or "duration",
        )
    try:
        length = timedelta(seconds=float(match.group(1)) * UNITS[match.group(2)])
        datetime.now(UTC) + length  # an expiry, a deadline: a date this long from now
    except OverflowError:
        raise ConfigError(
            f"duration {text!r}{f' for {field}' if field else ''} is longer than a date can "
            "reach (from now to the year 9999)",
            field=field or "duration",
        ) from None
    return length


def parse_since(
    text: str, *, field: str = "--since", now: datetime | None = None, allow_future: bool = False
) -> datetime:
    """A duration back from ``now`` (``12h``, ``7d``), or an ISO date or date-time (naive is
    UTC): ``2026-01-31``, ``2026-01-31T12:00Z``. Always an aware UTC datetime. A start more
    than a day ahead of ``now`` is refused, unless ``allow_future`` (an end, an until)."""
    value = text.strip()
    if is_duration(value):
        try:
            return (now or datetime.now(UTC)) - parse_duration(value, field=field)
        except OverflowError:
            raise ConfigError(
                f"{field} {text!r} reaches back before the year 1",
                hint="Give a shorter duration, or a date such as 2026-01-31.",
                field=field,
            ) from None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            f"invalid {field} {text!r}: use a date (2026-01-31), a date-time "
            "(2026-01-31T12:00Z) or a duration back from now such as 12h or 7d",
            field=field,
        ) from None
    try:
        moment = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 is before the year 1 in UTC
        raise ConfigError(
            f"{field} {text!r} is out of the range of dates (years 1 to 9999, in UTC)",
            hint="Give a date such as 2026-01-31.",
            field=field,
        ) from None
    if not allow_future and moment > (now or datetime.now(UTC)) + timedelta(days=1):
        raise ConfigError(
            f"{field} {text!r} is in the future: nothing has happened since then",
            hint="Give a past date, or a duration back from now such as 12h or 7d.",
            field=field,
        )
    return moment


__all__ = ["EXAMPLES", "UNITS", "is_duration", "parse_duration", "parse_since"]
