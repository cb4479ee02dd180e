"""Feedback on inference records: a tenant's verdict (and correct answer) per request.

Data-plane traffic (``POST /v1/feedback``): not audited. A record of another tenant is
NotFound exactly like a missing one, and so is a shadow copy's (not ``user_facing``: its
answer was never returned, so no user can rate it, and a verdict on it would move the
shadow version's feedback mean blind). A verdict on a request that got no answer (refused,
failed: not ``answered``) is a Conflict, there being nothing to rate, unless it brings the
``label`` the request should have had: a correction, which ``data from-records`` trains
on. Its score (the API requires one) is kept but counts in no mean feedback score
(``answered``): the feedback says so (``Feedback.counted``).
"""

from __future__ import annotations

import math
import uuid
from datetime import datetime

from sqlalchemy import select

from modelyard.errors import ConfigError, Conflict, NotFound
from modelyard.store._convert import to_feedback
from modelyard.store._core import StoreCore
from modelyard.store._rows import get_locked, tenant_row
from modelyard.store._samples import answered, user_facing
from modelyard.store._schema import FeedbackRow, InferenceRecordRow, TenantRow, utcnow
from modelyard.store.entities import Feedback

FEEDBACK_LABEL_MAX = 500
"""The longest feedback label (characters): a correct answer or class, not a document."""


class FeedbackStore(StoreCore):
    """Feedback on records."""

    def add_feedback(
        self,
        record_id: str,
        *,
        tenant: str,
        score: float,
        comment: str | None = None,
        api_key_id: str | None = None,
        label: str | None = None,
    ) -> Feedback:
        """Record ``tenant``'s verdict on one of its inference records; the latest one wins.

        ``score`` is in [-1, 1]; ``label`` is a person's correct answer or class for the
        request (at most 500 characters). A record of another tenant, or a shadow copy's
        (an answer no user saw), is NotFound exactly like a missing one; a record whose
        request got no answer (not ``answered``) is a Conflict, checked after the tenant's,
        unless ``label`` corrects it (its score is kept and counts in no mean:
        ``Feedback.counted`` false).
        """
        if math.isnan(score) or not -1.0 <= score <= 1.0:
            raise ConfigError(
                f"feedback score {score} is out of range: use a number from -1 to 1", param="score"
            )
        if label is not None and len(label) > FEEDBACK_LABEL_MAX:
            raise ConfigError(
                f"feedback label of {len(label)} characters: at most {FEEDBACK_LABEL_MAX}",
                param="label",
            )
        with self._write(f"record feedback on {record_id!r}") as s:
            trow = tenant_row(s, tenant)
            # the record's lock: concurrent verdicts on one record update one feedback row
            record = get_locked(s, InferenceRecordRow, record_id)
            if record is None or record.tenant_id != trow.id or not user_facing(record.shadow):
                raise NotFound(
                    f"no request with id {record_id!r}",
                    hint="Send the `id` of a completion answered for a key of this tenant.",
                    param="request_id",
                )
            # after the tenant's check: another tenant's record stays the 404 of a missing one
            if not answered(record.status) and label is None:
                raise Conflict(
                    f"request {record_id!r} got no answer (its record says {record.status}, HTTP "
                    f"{record.http_status}): there is nothing to rate",
                    hint="Rate a request that was answered, or send this one's `label` (the "
                    "answer it should have had) to correct it.",
                    param="request_id",
                )
            row = s.scalar(select(FeedbackRow).where(FeedbackRow.record_id == record_id))
            now = utcnow()
            if row is None:
                row = FeedbackRow(
                    id=f"fb-{uuid.uuid4().hex}",
                    record_id=record_id,
                    tenant_id=trow.id,
                    api_key_id=api_key_id,
                    score=score,
                    comment=comment,
                    label=label,
                    created_at=now,
                    updated_at=now,
                )
                s.add(row)
            else:
                row.score, row.comment, row.label, row.api_key_id, row.updated_at = (
                    score, comment, label, api_key_id, now,
                )  # fmt: skip
            s.flush()
            return to_feedback(s, row, record, trow.name)

    def list_feedback(
        self,
        *,
        endpoint: str | None = None,
        tenant: str | None = None,
        since: datetime | None = None,
        limit: int | None = 1000,
    ) -> list[Feedback]:
        """Feedback, newest first; ``since`` keeps what was given or changed at or after it."""
        with self._session("list feedback") as s:
            query = (
                select(FeedbackRow, InferenceRecordRow, TenantRow.name)
                .join(InferenceRecordRow, InferenceRecordRow.id == FeedbackRow.record_id)
                .join(TenantRow, TenantRow.id == FeedbackRow.tenant_id)
                .order_by(FeedbackRow.updated_at.desc(), FeedbackRow.id)
            )
            if endpoint is not None:
                query = query.where(InferenceRecordRow.endpoint_name == endpoint)
            if tenant is not None:
                query = query.where(FeedbackRow.tenant_id == tenant_row(s, tenant).id)
            if since is not None:
                query = query.where(FeedbackRow.updated_at >= since)
            if limit is not None:
                query = query.limit(limit)
            return [to_feedback(s, f, r, t) for f, r, t in s.execute(query).all()]

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


__all__ = ["FEEDBACK_LABEL_MAX", "FeedbackStore"]
