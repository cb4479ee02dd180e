"""The audit chain as the store keeps it: reading, verifying, and acknowledging a break.

Verification reads the whole chain (``modelyard.audit.scan_chain``), compares its
end with the head the store recorded, and sets the breaks it finds against the
acknowledgments in the chain (``judge_chain``). The first break nobody
acknowledged is recorded (table ``audit_breaks``): from then on the store refuses
every audited change (``_audit.check_chain_end``) until an admin acknowledges it.

The acknowledgment is an event of its own (``audit.break_acknowledged``, role
admin, with the admin's reason), appended after the whole chain was verified
again under the chain's lock. It lists every break it covers with the chain's
state there, so verification passes after it, still reports the breaks it
covers, and fails again on any other change anywhere in the chain.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select

from modelyard.audit import (
    ACK_ACTION,
    EMPTY_HEAD,
    AuditEvent,
    AuditHead,
    ChainBreak,
    ChainReport,
    ChainScan,
    RecordedBreak,
    fingerprint,
    head_problem,
    judge_chain,
    scan_chain,
)
from modelyard.errors import AuditChainBroken, AuditKeyMismatch, ConfigError, Conflict
from modelyard.store import _audit
from modelyard.store._core import StoreCore
from modelyard.store._schema import AuditEventRow


class AuditStore(StoreCore):
    """Reading and verifying the audit chain, and acknowledging its breaks."""

    def record_audit_event(
        self, action: str, subject: str, payload: Mapping[str, Any] | None = None
    ) -> AuditEvent:
        """Append an event that comes with no row change (a refused import, a failed check)."""
        _audit.check_action(action)
        _audit.check_subject(subject)
        if action.startswith("audit."):
            raise ConfigError(
                f"the audit action {action!r} is reserved: the store writes audit.* events "
                "itself (an acknowledgment: `modelyard audit acknowledge`)"
            )
        with self._write(f"record audit event {action}") as s:
            return self._audit(s, action, subject, payload)

    def list_audit_events(
        self,
        *,
        since: datetime | None = None,
        action: str | None = None,
        subject: str | None = None,
        actor: str | None = None,
        limit: int | None = 100,
        newest_first: bool = True,
        before_seq: int | None = None,
        exclude_actions: Sequence[str] = (),
    ) -> list[AuditEvent]:
        """Events matching the filters; ``action``/``subject`` ending in ``*`` match a prefix.
        ``exclude_actions`` (each one an action, or a prefix ending in ``*``) leaves those
        out. ``before_seq`` keeps the events older than that seq: the next page, newest
        first, is the one before the last seq of this one."""
        query = select(AuditEventRow)
        if before_seq is not None:
            query = query.where(AuditEventRow.seq < before_seq)
        if since is not None:
            query = query.where(AuditEventRow.time >= since)
        for column, wanted in ((AuditEventRow.action, action), (AuditEventRow.subject, subject)):
            if wanted is not None:
                if wanted.endswith("*"):
                    query = query.where(column.startswith(wanted.rstrip("*"), autoescape=True))
                else:
                    query = query.where(column == wanted)
        if actor is not None:
            query = query.where(AuditEventRow.actor == actor)
        for unwanted in exclude_actions:
            column = AuditEventRow.action
            if unwanted.endswith("*"):
                query = query.where(~column.startswith(unwanted.rstrip("*"), autoescape=True))
            else:
                query = query.where(column != unwanted)
        order = AuditEventRow.seq.desc() if newest_first else AuditEventRow.seq
        query = query.order_by(order)
        if limit is not None:
            query = query.limit(limit)
        with self._session("read the audit chain") as s:
            return _audit.read_events(s, query)

    def iter_audit_events(
        self, *, since: datetime | None = None, page: int = 1000
    ) -> Iterator[AuditEvent]:
        """Every event in ``seq`` order, read page by page (for verify and export)."""
        after = 0
        while True:
            query = (
                select(AuditEventRow)
                .where(AuditEventRow.seq > after)
                .order_by(AuditEventRow.seq)
                .limit(page)
            )
            if since is not None:
                query = query.where(AuditEventRow.time >= since)
            with self._session("read the audit chain") as s:
                events = _audit.read_events(s, query)
            yield from events
            if len(events) < page:
                return
            after = events[-1].seq

    def audit_head(self) -> AuditHead:
        """The newest event's ``SEQ:HASH`` (``0:000…`` for an empty chain)."""
        with self._session("read the audit head") as s:
            last = _audit.last_event(s)
        return EMPTY_HEAD if last is None else AuditHead(last.seq, last.hash)

    def open_audit_breaks(self) -> list[RecordedBreak]:
        """Breaks the store found and no admin acknowledged yet: while there is one, every
        audited change is refused."""
        with self._session("read the audit breaks") as s:
            return _audit.open_breaks(s)

    def verify_audit_chain(self, head: AuditHead | str | None = None) -> ChainReport:
        """Recompute the whole chain with the key and compare its end with the head the
        store recorded (an emptied or shortened chain is broken); ``head``, kept outside
        the store, also reveals a removal when that record was rewritten too.

        Breaks that an acknowledgment covers are reported, and do not fail the chain.
        The first break that none covers is recorded, so that the store refuses
        audited changes until an admin acknowledges it; unless the key verifies no
        event at all (it is the wrong key, not a broken chain). A break that only
        ``head`` shows is recorded when an admin gives it; for anyone else it is
        reported, not recorded, so that a mistyped or made-up head cannot stop every
        audited change.
        """
        expected = AuditHead.parse(head) if isinstance(head, str) else head
        with self._session("read the actor's role") as s:
            admin = _audit.effective_role(s, self.policy, self.actor) == "admin"
        if expected is None or admin:
            return self._verify_chain(expected, record=True)
        report = self._verify_chain(None, record=True)
        return report if not report.ok else self._verify_chain(expected, record=False)

    def _verify_chain(self, expected: AuditHead | None, *, record: bool) -> ChainReport:
        with self._session("read the audit head") as s:
            actual = _audit.head_of(_audit.last_event(s))
            recorded = _audit.recorded_head(s)
            open_ = _audit.open_breaks(s)
        # The end against the recorded head is judged from one snapshot (events appended
        # after it are fine); the events themselves are read after it, page by page.
        problem = head_problem(actual, recorded)
        extra = [] if problem is None else [_head_break(actual, recorded, problem)]
        if actual == EMPTY_HEAD:
            scan = scan_chain((), b"", expected_head=expected)  # no event: no key needed
        else:
            key = self.audit_key_source.load(create=False)
            scan = scan_chain(self.iter_audit_events(), key, expected_head=expected)
        report = judge_chain(scan, extra=extra, recorded=open_)
        first = report.breaks[0] if report.breaks else None
        if record and first is not None and first.fingerprint is not None and not scan.wrong_key:
            self._keep_break(first, "verify")  # not recorded yet: writes stop here
        return report

    def acknowledge_audit_breaks(self, reason: str) -> AuditEvent:
        """Acknowledge every break of the chain and every recorded one (role admin).

        Appends an ``audit.break_acknowledged`` event listing them (with the chain's
        state at each) and the admin's reason, and closes the recorded breaks: audited
        changes are accepted again, and verification passes from here while it still
        reports what was acknowledged. ``Conflict`` when there is nothing to acknowledge.
        """
        why = reason.strip()
        if not why:
            raise ConfigError(
                "acknowledging a break of the audit chain needs a reason",
                hint='Say what happened and what was checked, e.g. --reason "restored from '
                'the 02:00 backup after incident INC-7; events 7..9 were lost"',
                field="reason",
            )
        doing = "acknowledge a break of the audit chain"
        with self._write(doing) as s:
            self._require(s, ACK_ACTION, "audit", doing)
            _audit.lock_chain(s)
            last = _audit.last_event(s)
            actual, recorded = _audit.head_of(last), _audit.recorded_head(s)
            problem = head_problem(actual, recorded)
            key = self.audit_key_source.load(create=False)
            scan = scan_chain(_audit.events_in_order(s), key)
            _check_scan(scan, self.audit_key_source.description)
            extra = [] if problem is None else [_head_break(actual, recorded, problem)]
            report = judge_chain(scan, extra=extra, recorded=_audit.open_breaks(s))
            if report.ok:
                raise Conflict(
                    "nothing to acknowledge: the audit chain verifies and no break is recorded",
                    hint="`modelyard audit verify` says so too.",
                )
            first = report.breaks[0]
            payload = {
                "reason": why,
                "breaks": [b.to_json() for b in report.breaks],
                "head": str(actual),
                "recorded_head": None if recorded is None else str(recorded),
            }
            event = _audit.append_event(
                s,
                self.audit_key_source,
                actor=self.actor,
                action=ACK_ACTION,
                subject=f"audit:{first.seq}",
                payload=payload,
                after=(last, key),
            )
            _audit.close_breaks(s, event.seq)
            return event

    def check_audit_key(self) -> None:
        """Raise AuditKeyMismatch unless the key verifies the newest event (no-op when empty)."""
        with self._session("read the audit head") as s:
            last = _audit.last_event(s)
        if last is not None:
            key = self.audit_key_source.load(create=False)
            _audit.check_key(key, last, self.audit_key_source)

    def ensure_audit_key(self) -> bool:
        """Make sure a usable key exists: create the key file for an empty chain.

        Returns whether a key file was created. A store whose chain has events
        needs the key that wrote them: AuditKeyMissing / AuditKeyMismatch otherwise.
        """
        source = self.audit_key_source
        if source.available():
            self.check_audit_key()
            return False
        empty = self.audit_head() == EMPTY_HEAD
        source.load(create=empty)
        return True


def _head_break(
    actual: AuditHead, recorded: AuditHead | None, problem: tuple[int, str]
) -> ChainBreak:
    """The chain's end against the recorded head, as a break with the state it saw."""
    return ChainBreak(*problem, fingerprint=fingerprint("head", actual, recorded))


def _check_scan(scan: ChainScan, key_from: str) -> None:
    """An acknowledgment covers breaks, never a wrong key or a chain past counting."""
    if scan.wrong_key:
        raise AuditKeyMismatch(
            f"the audit key from {key_from} verifies none of the {scan.events} events: it is "
            "not the key that wrote the chain, and nothing was acknowledged",
            hint="Use the key that wrote the chain (copy its key file, or set "
            "MODELYARD_AUDIT_KEY).",
        )
    if scan.truncated:
        raise AuditChainBroken(
            f"more than {len(scan.breaks)} breaks in the audit chain: too many to acknowledge "
            "one by one, and nothing was acknowledged",
            hint="Restore the audit tables from a backup, then run `modelyard audit verify`.",
        )
