"""Store methods of the monitoring stage: features, profiles, drift, alerts, retention, prices.

A mixin that ``Store`` inherits, so callers see one ``Store``; it uses the
host's sessions (``_session``/``_write``) and audit chain (``_audit``/``_require``).
Writing records and their features is data-plane traffic and is not audited;
changing a retention policy or a price, purging records and running a retraining
command are audited.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, insert, select

from modelyard.errors import ConfigError, TenantNotFound
from modelyard.store._schema import (
    AlertNotificationRow,
    AlertStateRow,
    BaseModelRow,
    DriftResultRow,
    FeedbackRow,
    InferenceRecordRow,
    ModelVersionRow,
    MonitorStateRow,
    ProfileRow,
    RecordFeaturesRow,
    RegisteredModelRow,
    RetentionPolicyRow,
    TenantRow,
    TokenPriceRow,
    utcnow,
)
from modelyard.store.entities import (
    AlertNotification,
    AlertState,
    DriftResult,
    NewInferenceRecord,
    Profile,
    RecordFeatures,
    RetentionPolicy,
    TokenPrice,
)

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from modelyard.audit import AuditEvent, Role

_RECORD_COLUMNS = (
    "id",
    "created_at",
    "tenant_id",
    "api_key_id",
    "endpoint_name",
    "version_id",
    "route",
    "prompt",
    "response",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "ttft_ms",
    "status",
    "http_status",
    "error",
    "shadow",
    "fallback_from_id",
)
FEATURE_COLUMNS = (
    "prompt_chars",
    "response_chars",
    "prompt_non_ascii",
    "prompt_digits",
    "response_non_ascii",
    "response_digits",
    "unknown_token_rate",
    "cache_hit",
)
# Record columns copied onto its features, so a drift window needs no join (migration 0007).
_COPIED_COLUMNS = (
    "endpoint_name",
    "version_id",
    "status",
    "created_at",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
)
RECORD_STATUSES = ("ok", "error", "cancelled", "timeout")
PROFILE_WINDOWS = ("hour", "day")


class MonitoringStore:
    """Monitoring methods of ``Store`` (see the module docstring)."""

    if TYPE_CHECKING:
        actor: str

        def _session(self, what: str) -> contextlib.AbstractContextManager[Session]: ...
        def _write(self, what: str) -> contextlib.AbstractContextManager[Session]: ...
        def _audit(
            self, s: Session, action: str, subject: str, payload: Mapping[str, Any] | None = None
        ) -> AuditEvent: ...
        def _require(
            self, s: Session, action: str, subject: str, what: str, needed: Role | None = None
        ) -> Role: ...

    # -- records and their features (data plane: not audited) -------------------------------

    def add_monitored_records(
        self, items: Sequence[tuple[NewInferenceRecord, RecordFeatures | None]]
    ) -> int:
        """Insert records and their features in one transaction (bulk); returns the count."""
        if not items:
            return 0
        now = utcnow()
        records = []
        features = []
        for record, feats in items:
            row = {name: getattr(record, name) for name in _RECORD_COLUMNS}
            row["created_at"] = record.created_at or now
            records.append(row)
            if feats is not None:
                features.append(
                    {"record_id": record.id, "embedding": feats.embedding}
                    | {name: getattr(feats, name) for name in FEATURE_COLUMNS}
                    | {name: row[name] for name in _COPIED_COLUMNS}
                )
        with self._write(f"write {len(records)} inference records") as s:
            s.execute(insert(InferenceRecordRow), records)
            if features:
                s.execute(insert(RecordFeaturesRow), features)
        return len(records)

    def query_records(
        self,
        *,
        endpoint: str | None = None,
        tenant: str | None = None,
        version_id: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        status: str | None = None,
        limit: int | None = 100,
        newest_first: bool = True,
        embeddings: bool = False,
        text: bool = True,
    ) -> list[dict[str, Any]]:
        """Records with their features, tenant name, version ref and feedback score, as dicts.

        ``since`` is inclusive, ``until`` exclusive; ``status`` is one of
        ``ok|error|cancelled|timeout``; ``text=False`` leaves out prompt, response and error.
        """
        if status is not None and status not in RECORD_STATUSES:
            raise ConfigError(
                f"unknown record status {status!r}: use one of {', '.join(RECORD_STATUSES)}",
                field="status",
            )
        r, f, fb = InferenceRecordRow, RecordFeaturesRow, FeedbackRow
        names = [c for c in _RECORD_COLUMNS if text or c not in ("prompt", "response", "error")]
        columns: list[Any] = [getattr(r, c) for c in names]
        columns += [getattr(f, c) for c in FEATURE_COLUMNS]
        columns += [fb.score.label("feedback_score")]
        if embeddings:
            columns.append(f.embedding)
        query = (
            select(*columns).outerjoin(f, f.record_id == r.id).outerjoin(fb, fb.record_id == r.id)
        )
        with self._session("read inference records") as s:
            if tenant is not None:
                query = query.where(r.tenant_id == _tenant_id(s, tenant))
            if endpoint is not None:
                query = query.where(r.endpoint_name == endpoint)
            if version_id is not None:
                query = query.where(r.version_id == version_id)
            if since is not None:
                query = query.where(r.created_at >= since)
            if until is not None:
                query = query.where(r.created_at < until)
            if status is not None:
                query = query.where(r.status == status)
            order = (r.created_at.desc(), r.id) if newest_first else (r.created_at, r.id)
            query = query.order_by(*order)
            if limit is not None:
                query = query.limit(limit)
            rows = [dict(m) for m in s.execute(query).mappings()]
            refs = _version_info(s, {row["version_id"] for row in rows})
            tenants = _tenant_names(s)
        for row in rows:
            info = refs.get(row["version_id"])
            row["version"] = info[0] if info else None
            row["base_model"] = info[1] if info else None
            row["tenant"] = tenants.get(row["tenant_id"])
        return rows

    def feature_columns(
        self,
        *,
        endpoint: str,
        version_id: int | None,
        since: datetime,
        until: datetime,
        status: str = "ok",
    ) -> dict[str, tuple[Any, ...]]:
        """Drift feature columns (None where a record has no value) of the matching records.

        Columns, not rows: drift reads up to millions of records, and a row object per
        record would cost more than the statistics.
        """
        f = RecordFeaturesRow
        keys = ["prompt_tokens", "completion_tokens", "latency_ms"]
        keys += [c for c in FEATURE_COLUMNS if c != "cache_hit"]
        # One range scan of the covering index ix_record_features_window, no join.
        query = select(*(getattr(f, k) for k in keys)).where(
            f.endpoint_name == endpoint,
            f.version_id == version_id if version_id is not None else f.version_id.is_(None),
            f.status == status,
            f.created_at >= since,
            f.created_at < until,
        )
        with self._session("read drift features") as s:
            # plain numbers need no result processing: read the driver's rows directly
            result = s.connection().execute(query)
            rows = result.cursor.fetchall() if result.cursor is not None else []
        if not rows:
            return dict.fromkeys(keys, ())
        return dict(zip(keys, zip(*rows, strict=True), strict=True))

    def feedback_record_times(self, since: datetime) -> list[datetime]:
        """Creation times of the records whose feedback was given or changed since ``since``."""
        with self._session("read feedback times") as s:
            return list(
                s.scalars(
                    select(InferenceRecordRow.created_at)
                    .join(FeedbackRow, FeedbackRow.record_id == InferenceRecordRow.id)
                    .where(FeedbackRow.updated_at >= since)
                )
            )

    def oldest_record_time(self) -> datetime | None:
        with self._session("read the oldest record") as s:
            return s.scalar(
                select(InferenceRecordRow.created_at)
                .order_by(InferenceRecordRow.created_at)
                .limit(1)
            )

    # -- profiles ---------------------------------------------------------------------------

    def replace_profiles(
        self, window: str, start: datetime, end: datetime, rows: Iterable[Mapping[str, Any]]
    ) -> int:
        """Replace the ``window`` profile rows that start in [start, end) by ``rows``."""
        _check_window(window)
        values = [{**row, "window": window, "updated_at": utcnow()} for row in rows]
        with self._write(f"write {window} profiles") as s:
            s.execute(
                delete(ProfileRow).where(
                    ProfileRow.window == window, ProfileRow.start >= start, ProfileRow.start < end
                )
            )
            if values:
                s.execute(insert(ProfileRow), values)
        return len(values)

    def profile_rows(self, window: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
        """Raw profile rows (histograms included) of ``window`` starting in [start, end)."""
        _check_window(window)
        with self._session("read profiles") as s:
            query = select(ProfileRow).where(
                ProfileRow.window == window, ProfileRow.start >= start, ProfileRow.start < end
            )
            return [
                {c.name: getattr(p, c.key) for c in ProfileRow.__table__.columns}
                for p in s.scalars(query)
            ]

    def list_profiles(
        self,
        *,
        window: str = "hour",
        endpoint: str | None = None,
        tenant: str | None = None,
        version_id: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[Profile]:
        """Profiles, oldest window first."""
        _check_window(window)
        p = ProfileRow
        query = select(p).where(p.window == window).order_by(p.start, p.endpoint_name, p.id)
        with self._session("list profiles") as s:
            if tenant is not None:
                query = query.where(p.tenant_id == _tenant_id(s, tenant))
            if endpoint is not None:
                query = query.where(p.endpoint_name == endpoint)
            if version_id is not None:
                query = query.where(p.version_id == version_id)
            if since is not None:
                query = query.where(p.start >= since)
            if until is not None:
                query = query.where(p.start < until)
            rows = list(s.scalars(query))
            refs = _version_info(s, {r.version_id for r in rows})
            tenants = _tenant_names(s)
            return [
                Profile(
                    r.window,
                    r.start,
                    r.endpoint_name,
                    refs[r.version_id][0] if r.version_id in refs else None,
                    tenants.get(r.tenant_id),
                    r.requests,
                    r.errors,
                    r.latency_p50_ms,
                    r.latency_p95_ms,
                    r.latency_p99_ms,
                    r.ttft_p50_ms,
                    r.ttft_p95_ms,
                    r.tokens_in,
                    r.tokens_out,
                    r.cost,
                    r.cache_hits,
                    r.cache_known,
                    r.feedback_count,
                    r.feedback_sum,
                    r.updated_at,
                )
                for r in rows
            ]

    # -- small state of the monitoring loop -------------------------------------------------

    def get_monitor_state(self, key: str) -> dict[str, Any] | None:
        with self._session(f"read monitor state {key!r}") as s:
            row = s.get(MonitorStateRow, key)
            return dict(row.value) if row is not None else None

    def set_monitor_state(self, key: str, value: Mapping[str, Any]) -> None:
        with self._write(f"write monitor state {key!r}") as s:
            row = s.get(MonitorStateRow, key)
            if row is None:
                s.add(MonitorStateRow(key=key, value=dict(value), updated_at=utcnow()))
            else:
                row.value, row.updated_at = dict(value), utcnow()

    # -- drift results ----------------------------------------------------------------------

    def add_drift_results(self, results: Sequence[DriftResult], version_id: int | None) -> int:
        if not results:
            return 0
        with self._write(f"write {len(results)} drift results") as s:
            tenants = {name: tid for tid, name in _tenant_names(s).items()}
            s.execute(
                insert(DriftResultRow),
                [
                    {
                        "run_id": d.run_id,
                        "computed_at": d.computed_at,
                        "endpoint_name": d.endpoint_name,
                        "version_id": version_id,
                        "tenant_id": tenants.get(d.tenant) if d.tenant else None,
                        "reference": d.reference[:200],
                        "window_start": d.window_start,
                        "window_end": d.window_end,
                        "feature": d.feature,
                        "method": d.method,
                        "value": None if d.value is None or not math.isfinite(d.value) else d.value,
                        "threshold": d.threshold,
                        "drifted": d.drifted,
                        "status": d.status,
                        "n_reference": d.n_reference,
                        "n_current": d.n_current,
                        "details": dict(d.details),
                    }
                    for d in results
                ],
            )
        return len(results)

    def list_drift_results(
        self,
        *,
        endpoint: str | None = None,
        run_id: str | None = None,
        latest: bool = False,
        limit: int = 1000,
    ) -> list[DriftResult]:
        """Drift results, newest first; ``latest`` keeps each endpoint's last run only (by
        endpoint, features in their order)."""
        d = DriftResultRow
        query = select(d).order_by(d.computed_at.desc(), d.id.desc()).limit(limit)
        with self._session("list drift results") as s:
            if endpoint is not None:
                query = query.where(d.endpoint_name == endpoint)
            if run_id is not None:
                query = query.where(d.run_id == run_id)
            rows = list(s.scalars(query))
            refs = _version_info(s, {r.version_id for r in rows})
            tenants = _tenant_names(s)
        if latest:
            last: dict[str, str] = {}
            for r in rows:
                last.setdefault(r.endpoint_name, r.run_id)
            rows = sorted(
                (r for r in rows if last[r.endpoint_name] == r.run_id),
                key=lambda r: (r.endpoint_name, r.id),  # each run's features in their order
            )
        return [
            DriftResult(
                r.run_id,
                r.computed_at,
                r.endpoint_name,
                refs[r.version_id][0] if r.version_id in refs else None,
                tenants.get(r.tenant_id),
                r.reference,
                r.window_start,
                r.window_end,
                r.feature,
                r.method,
                r.value,
                r.threshold,
                r.drifted,
                r.status,
                r.n_reference,
                r.n_current,
                dict(r.details),
            )
            for r in rows
        ]

    # -- alerts -----------------------------------------------------------------------------

    def list_alert_states(self, *, state: str | None = None) -> list[AlertState]:
        a = AlertStateRow
        query = select(a).order_by(a.rule, a.id)
        if state is not None:
            query = query.where(a.state == state)
        with self._session("list alerts") as s:
            return [_alert(r) for r in s.scalars(query)]

    def save_alert_state(self, alert: AlertState) -> None:
        """Insert or update one alert's state (the evaluator's bookkeeping; not audited)."""
        with self._write(f"save alert {alert.rule!r}") as s:
            row = s.get(AlertStateRow, alert.id)
            if row is None:
                row = AlertStateRow(id=alert.id)
                s.add(row)
            row.rule, row.labels, row.severity = alert.rule, dict(alert.labels), alert.severity
            row.state, row.value, row.summary = alert.state, alert.value, alert.summary
            row.active_since, row.fired_at = alert.active_since, alert.fired_at
            row.resolved_at, row.last_evaluated = alert.resolved_at, alert.last_evaluated

    def add_alert_notification(self, note: AlertNotification) -> None:
        with self._write(f"record a notification of {note.rule!r}") as s:
            s.add(
                AlertNotificationRow(
                    alert_id=note.alert_id,
                    rule=note.rule,
                    state=note.state,
                    target=note.target[:300],
                    sent_at=note.sent_at,
                    ok=note.ok,
                    attempts=note.attempts,
                    error=note.error,
                )
            )

    def list_alert_notifications(
        self, *, alert_id: str | None = None, limit: int = 100
    ) -> list[AlertNotification]:
        n = AlertNotificationRow
        query = select(n).order_by(n.sent_at.desc(), n.id.desc()).limit(limit)
        if alert_id is not None:
            query = query.where(n.alert_id == alert_id)
        with self._session("list notifications") as s:
            return [
                AlertNotification(
                    r.alert_id, r.rule, r.state, r.target, r.sent_at, r.ok, r.attempts, r.error
                )
                for r in s.scalars(query)
            ]

    # -- retention --------------------------------------------------------------------------

    def set_retention(self, tenant: str, raw_days: int) -> RetentionPolicy:
        """Keep ``tenant``'s raw records ``raw_days`` days (their profiles stay); audited."""
        if raw_days < 1:
            raise ConfigError(
                f"retention of {raw_days} days: keep raw records at least 1 day",
                field="raw_days",
            )
        with self._write(f"set the retention of tenant {tenant!r}") as s:
            self._require(s, "retention.set", tenant, f"set the retention of {tenant!r}")
            tid = _tenant_id(s, tenant)
            row = s.get(RetentionPolicyRow, tid)
            before = row.raw_days if row is not None else None
            if row is None:
                row = RetentionPolicyRow(tenant_id=tid, raw_days=raw_days, updated_at=utcnow())
                s.add(row)
            else:
                row.raw_days, row.updated_at = raw_days, utcnow()
            self._audit(s, "retention.set", tenant, {"raw_days": raw_days, "before": before})
            return RetentionPolicy(tenant, row.raw_days, row.updated_at)

    def list_retention(self) -> list[RetentionPolicy]:
        with self._session("list retention policies") as s:
            return [
                RetentionPolicy(name, days, updated)
                for name, days, updated in s.execute(
                    select(
                        TenantRow.name, RetentionPolicyRow.raw_days, RetentionPolicyRow.updated_at
                    )
                    .join(TenantRow, TenantRow.id == RetentionPolicyRow.tenant_id)
                    .order_by(TenantRow.name)
                ).all()
            ]

    def purge_records(self, tenant: str, before: datetime) -> int:
        """Delete ``tenant``'s raw records (features, feedback) created before ``before``.

        The caller makes sure their profiles are final first. One audit event
        names how many went; audit events themselves are never deleted.
        """
        r = InferenceRecordRow
        with self._write(f"purge records of tenant {tenant!r}") as s:
            tid = _tenant_id(s, tenant)
            ids = select(r.id).where(r.tenant_id == tid, r.created_at < before)
            n = len(s.scalars(ids).all())
            if n == 0:
                return 0
            self._require(s, "records.purged", tenant, f"purge the records of {tenant!r}")
            s.execute(delete(RecordFeaturesRow).where(RecordFeaturesRow.record_id.in_(ids)))
            s.execute(delete(FeedbackRow).where(FeedbackRow.record_id.in_(ids)))
            s.execute(delete(r).where(r.tenant_id == tid, r.created_at < before))
            self._audit(s, "records.purged", tenant, {"records": n, "before": before.isoformat()})
            return n

    # -- prices -----------------------------------------------------------------------------

    def set_token_price(
        self, base_model: str, *, input_per_1k: float, output_per_1k: float
    ) -> TokenPrice:
        """The price per 1,000 prompt and completion tokens of ``base_model``; audited."""
        for name, value in (("input_per_1k", input_per_1k), ("output_per_1k", output_per_1k)):
            if not math.isfinite(value) or value < 0:
                raise ConfigError(
                    f"{name} is {value}: a price is a number of at least 0", field=name
                )
        with self._write(f"set the price of {base_model!r}") as s:
            self._require(s, "price.set", base_model, f"set the price of {base_model!r}")
            if s.scalar(select(BaseModelRow.id).where(BaseModelRow.name == base_model)) is None:
                raise ConfigError(
                    f"no base model named {base_model!r} in the store",
                    hint="Use the base model name that `modelyard registry show` prints.",
                    field="base_model",
                )
            row = s.get(TokenPriceRow, base_model)
            if row is None:
                row = TokenPriceRow(base_model=base_model)
                s.add(row)
            row.input_per_1k, row.output_per_1k, row.updated_at = (
                input_per_1k,
                output_per_1k,
                utcnow(),
            )
            self._audit(
                s,
                "price.set",
                base_model,
                {"input_per_1k": input_per_1k, "output_per_1k": output_per_1k},
            )
            return TokenPrice(base_model, input_per_1k, output_per_1k, row.updated_at)

    def list_token_prices(self) -> list[TokenPrice]:
        with self._session("list token prices") as s:
            return [
                TokenPrice(r.base_model, r.input_per_1k, r.output_per_1k, r.updated_at)
                for r in s.scalars(select(TokenPriceRow).order_by(TokenPriceRow.base_model))
            ]


def _check_window(window: str) -> None:
    if window not in PROFILE_WINDOWS:
        raise ConfigError(f"unknown profile window {window!r}: use hour or day", field="window")


def _tenant_id(s: Session, name: str) -> int:
    tid = s.scalar(select(TenantRow.id).where(TenantRow.name == name))
    if tid is None:
        raise TenantNotFound(f"no tenant named {name!r}")
    return tid


def _tenant_names(s: Session) -> dict[int | None, str]:
    return dict(s.execute(select(TenantRow.id, TenantRow.name)).all())


def _version_info(s: Session, ids: Iterable[int | None]) -> dict[int | None, tuple[str, str]]:
    """version id → (``model:N`` ref, base model name)."""
    wanted = {i for i in ids if i is not None}
    if not wanted:
        return {}
    rows = s.execute(
        select(
            ModelVersionRow.id, RegisteredModelRow.name, ModelVersionRow.version, BaseModelRow.name
        )
        .join(RegisteredModelRow, RegisteredModelRow.id == ModelVersionRow.registered_model_id)
        .join(BaseModelRow, BaseModelRow.id == ModelVersionRow.base_model_id)
        .where(ModelVersionRow.id.in_(wanted))
    ).all()
    return {vid: (f"{model}:{number}", base) for vid, model, number, base in rows}


def _alert(r: AlertStateRow) -> AlertState:
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
