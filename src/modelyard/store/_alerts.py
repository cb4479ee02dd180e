"""Alerts: each alert's state and the notifications of its changes (not audited).

The evaluator (``monitoring.evaluate_rules``) saves every alert it evaluated at
each evaluation, so the states of one evaluation are saved together
(``save_alert_states``: one transaction, the existing rows read in a few
queries), and what it needs of the notifications, the last delivery of each
alert to a webhook, is read together too (``last_deliveries``), by the index on
``(alert_id, id)``.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, insert, select, text

from modelyard.store._core import StoreCore
from modelyard.store._schema import AlertNotificationRow, AlertStateRow
from modelyard.store.entities import AlertNotification, AlertState

CHUNK = 500  # ids in one IN (...): well under SQLite's and PostgreSQL's limits


class AlertStore(StoreCore):
    def list_alert_states(self, *, state: str | None = None) -> list[AlertState]:
        a = AlertStateRow
        query = select(a).order_by(a.rule, a.id)
        if state is not None:
            query = query.where(a.state == state)
        with self._session("list alerts") as s:
            return [to_alert(r) for r in s.scalars(query)]

    def save_alert_state(self, alert: AlertState) -> None:
        """Insert or update one alert's state (the evaluator's bookkeeping; not audited)."""
        self.save_alert_states([alert])

    def save_alert_states(self, alerts: Sequence[AlertState]) -> None:
        """Insert or update the states of ``alerts`` (distinct ids) in one transaction."""
        if not alerts:
            return
        ids = sorted(a.id for a in alerts)
        with self._write(f"save {len(alerts)} alert state(s)") as s:
            if s.get_bind().dialect.name == "postgresql":  # lock_name's, in one order
                s.execute(
                    text("SELECT pg_advisory_xact_lock(hashtext('alert_state'), hashtext(x)) "
                         "FROM unnest(CAST(:ids AS text[])) AS x ORDER BY x"),
                    {"ids": ids},
                )  # fmt: skip
            rows: dict[str, AlertStateRow] = {}
            for i in range(0, len(ids), CHUNK):
                query = select(AlertStateRow).where(AlertStateRow.id.in_(ids[i : i + CHUNK]))
                rows |= {
                    r.id: r for r in s.scalars(query.execution_options(populate_existing=True))
                }
            for alert in alerts:
                row = rows.get(alert.id)
                if row is None:
                    row = rows[alert.id] = AlertStateRow(id=alert.id)
                    s.add(row)
                row.rule, row.labels, row.severity = alert.rule, dict(alert.labels), alert.severity
                row.state, row.value, row.summary = alert.state, alert.value, alert.summary
                row.active_since, row.fired_at = alert.active_since, alert.fired_at
                row.resolved_at, row.last_evaluated = alert.resolved_at, alert.last_evaluated

    def add_alert_notification(self, note: AlertNotification) -> None:
        self.add_alert_notifications([note])

    def add_alert_notifications(self, notes: Sequence[AlertNotification]) -> None:
        """Keep ``notes`` (one evaluation's deliveries) in one transaction."""
        if not notes:
            return
        with self._write(f"record {len(notes)} alert notification(s)") as s:
            rows = [
                {"alert_id": n.alert_id, "rule": n.rule, "state": n.state,
                 "target": n.target[:300], "sent_at": n.sent_at, "ok": n.ok,
                 "attempts": n.attempts, "error": n.error}
                for n in notes
            ]  # fmt: skip
            s.execute(insert(AlertNotificationRow), rows)  # one executemany

    def list_alert_notifications(
        self, *, alert_id: str | None = None, limit: int = 100
    ) -> list[AlertNotification]:
        n = AlertNotificationRow
        query = select(n).order_by(n.sent_at.desc(), n.id.desc()).limit(limit)
        if alert_id is not None:
            query = query.where(n.alert_id == alert_id)
        with self._session("list notifications") as s:
            return [_to_note(r) for r in s.scalars(query)]

    def last_deliveries(
        self, alert_ids: Sequence[str], target: str
    ) -> dict[str, AlertNotification]:
        """Each alert's last notification to ``target`` (cut to 300 characters, as kept),
        by alert id; alerts never notified there are absent."""
        n, found = AlertNotificationRow, dict[str, AlertNotification]()
        with self._session("read the alerts' last deliveries") as s:
            for i in range(0, len(alert_ids), CHUNK):
                last = (
                    select(func.max(n.id))
                    .where(n.alert_id.in_(alert_ids[i : i + CHUNK]), n.target == target[:300])
                    .group_by(n.alert_id)
                )
                found |= {
                    r.alert_id: _to_note(r) for r in s.scalars(select(n).where(n.id.in_(last)))
                }
        return found


def _to_note(r: AlertNotificationRow) -> AlertNotification:
    return AlertNotification(
        r.alert_id, r.rule, r.state, r.target, r.sent_at, r.ok, r.attempts, r.error
    )


def to_alert(r: AlertStateRow) -> AlertState:
    return AlertState(
        r.id,
        r.rule,
        dict(r.labels),
        r.severity,
        r.state,
        r.value,
        r.summary,
        r.active_since,
        r.fired_at,
        r.resolved_at,
        r.last_evaluated,
    )
