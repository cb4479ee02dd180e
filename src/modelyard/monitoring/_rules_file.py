"""Where a process finds its alert rules, and what it does when the file goes bad.

``serve`` and ``modelyard controller`` read the rules file again at every monitoring
tick, so an edit takes effect without a restart. An edit with a mistake in it must not
stop the alerting of a running server: as Prometheus keeps its last good rules when a
reload fails, ``rules_from`` keeps, per file, the rules it last loaded in this process and
evaluates those (with an error in the log at each tick) until the file is fixed. A file
never loaded well in this process is an error (``serve`` and ``controller`` refuse to
start on it); a file that was removed means no rules, as it always did.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from pathlib import Path

from modelyard.errors import ConfigError
from modelyard.monitoring._alerts import AlertRules

log = logging.getLogger("modelyard.alerts")

_last_good: dict[Path, tuple[datetime, AlertRules]] = {}
_lock = threading.Lock()


def default_rules_path(home: Path) -> Path:
    return home / "alerts.yml"


def rules_from(source: AlertRules | Path | str | None, home: Path) -> AlertRules | None:
    """``source`` as rules: given as such, a file, or (None) ``<home>/alerts.yml`` when it
    exists; a file that no longer loads gives the rules last loaded from it here."""
    if isinstance(source, AlertRules):
        return source
    path = default_rules_path(home) if source is None else Path(source)
    if source is None and not path.exists():
        return None
    key = path.resolve()
    try:
        loaded = AlertRules.load(path)
    except ConfigError as exc:
        with _lock:
            kept = _last_good.get(key)
        if kept is None or not path.exists():
            raise
        log.error(
            "alerts: %s; evaluating the rules loaded from it at %s until it is fixed",
            exc.one_line(),
            f"{kept[0]:%Y-%m-%d %H:%M:%S} UTC",
        )
        return kept[1]
    with _lock:
        _last_good[key] = (datetime.now(UTC), loaded)
    return loaded


__all__ = ["default_rules_path", "rules_from"]
