"""Asynchronous, batched writer of inference records.

The data plane never waits on the store: ``submit`` is a non-blocking put
into a bounded buffer; a background thread writes batches. When the buffer is
full or the store is down, rows are dropped and counted, never retried
forever, so a database outage cannot take serving down with it.

Each record may come with its drift features (``RecordFeatures``), computed
from the raw text before the tenant's storage policy; both are written in
one transaction. With an ``embedder`` (``monitoring.Embedder``, MiniLM) the
writer thread also embeds each record's raw prompt, handed to ``submit`` and
held only in memory until then, into ``features.embedding`` for semantic drift
of tenants whose policy keeps no text: the request path never waits on it.

The request journal (``_journal``): ``started`` queues the ``running`` record of a
request just admitted. The writer keeps it ``start_delay`` seconds; a request that
ends within them is written once, as before; one still running then is written
as ``running`` and updated when it ends, so a server killed mid-request leaves a
row that the next server to start closes as failed. What a kill -9 loses is what
is queued or in the transaction being written (records are written as soon as
they arrive, not on a timer), and requests younger than ``start_delay``.

Seals (issue 19, ``modelyard.store._seals``): with ``seal`` (the default) each batch's
records in a final state are sealed in the transaction that writes them (the seal's
index row: its records' ids, tenants, times and leaf hashes; the rows themselves carry
nothing of it), with no audit event there. At most every ``anchor_s`` seconds (and on ``flush`` and
``close``, or once ``anchor_seals`` seals wait) the writer appends ONE
``records.anchored`` audit event listing the seals written since its previous anchor
and the Merkle root over them, so `modelyard audit verify --records` finds a record
edited, deleted or inserted later: a quiet server writes one event per interval, not
one per request. A seal is not vouched for until its anchor (the window an attacker
with write access to the database has: ``anchor_s``, seconds). When the audit chain
refuses the anchor (a recorded break, a wrong or missing audit key) or the database
is down, the records stay written and sealed, the writer logs an error, counts them in
``unanchored`` and tries again at the next interval; a writer killed before its anchor
leaves its last seals unanchored, which verification reports once they are older than
its grace period. ``seal=False`` is for measuring what sealing costs
(``benchmarks/monitoring.py``). The leaves (the hashes of the records' canonical
bytes) and their tree are computed for each batch at once from the rows the store
writes (``audit.seal_rows``: in C where it is built, hashing outside the GIL); a
record's time is fixed by ``submit``.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

import numpy as np

from modelyard.audit import SealEntry
from modelyard.errors import AuditError, AuditKeyMissing, ModelyardError
from modelyard.store import NewInferenceRecord, RecordFeatures, Store, utcnow

_Item = tuple[NewInferenceRecord, RecordFeatures | None, str | None]


@dataclasses.dataclass(frozen=True)
class _Started:
    record: NewInferenceRecord
    at: float  # time.monotonic() of its admission


@dataclasses.dataclass(eq=False)
class _Mark:
    """A place in the queue that a caller waits for: answered once every item queued before
    it is written (or dropped); ``everything`` also writes the ``running`` records of the
    requests still running and anchors the seals, in the same round."""

    everything: bool
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    ok: bool = False

    def answer(self, ok: bool) -> None:
        self.ok = ok
        self.done.set()


class _Embedder(Protocol):
    def embed(self, texts: list[str]) -> object: ...


log = logging.getLogger(__name__)


def _at(record: NewInferenceRecord, at: datetime) -> NewInferenceRecord:
    """A copy of the (frozen) record created at ``at``: ``dataclasses.replace`` without its
    ``__init__`` call, a fifth of its cost on the request path."""
    copy = object.__new__(NewInferenceRecord)
    copy.__dict__.update(record.__dict__, created_at=at)
    return copy


class RecordWriter:
    """Buffers records and writes them to the store in batches on a daemon thread."""

    def __init__(
        self,
        store: Store,
        *,
        batch_size: int = 256,
        flush_interval: float = 0.25,
        max_buffer: int = 10_000,
        on_drop: Callable[[int], None] | None = None,
        embedder: _Embedder | None = None,
        server_id: str | None = None,
        start_delay: float = 0.1,
        sweep: Callable[[], object] | None = None,
        sweep_s: float = 30.0,
        seal: bool = True,
        anchor_s: float = 5.0,
        anchor_seals: int = 512,
    ) -> None:
        self._store = store
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._queue: queue.Queue[_Item | _Started | _Mark] = queue.Queue(maxsize=max_buffer)
        self.server_id = server_id  # written on every row: the server running the request
        self._start_delay = start_delay
        self._pending: dict[str, _Started] = {}  # started, not written yet (insertion order)
        self._running: set[str] = set()  # written as running, not ended yet
        self._sweep, self._sweep_s = sweep, sweep_s  # close_abandoned, every sweep_s
        self._next_sweep = time.monotonic() + sweep_s
        self._on_drop = on_drop or (lambda n: None)
        self._embedder = embedder
        self._seal = seal
        self._anchor_s, self._anchor_seals = anchor_s, anchor_seals
        self._unanchored: list[SealEntry] = []  # sealed since the last anchor, in order
        self._next_anchor = time.monotonic() + anchor_s
        self._stop = threading.Event()
        # a mark is queued only while the thread runs (and answered by it): see ``_run``
        self._marks = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="record-writer", daemon=True)
        self.written = 0
        self.dropped = 0
        self.anchored = 0  # records whose seals an anchor event vouches for
        self.unanchored = 0  # records sealed whose anchor failed (the chain refused): retried
        self._thread.start()

    def submit(
        self,
        record: NewInferenceRecord,
        features: RecordFeatures | None = None,
        text: str | None = None,
    ) -> None:
        """Queue one record (its features, and the raw prompt to embed when the writer has an
        embedder) without blocking; a full buffer drops it (and counts it)."""
        if self._embedder is None:
            text = None  # nothing will embed it: do not hold the raw text at all
        if record.created_at is None:  # its time: when it ended, not when it is written
            record = _at(record, utcnow())
        try:
            self._queue.put_nowait((record, features, text))
        except queue.Full:
            self._dropped(1)

    def started(self, record: NewInferenceRecord) -> None:
        """Queue the ``running`` record of a request just admitted (written if the request
        still runs ``start_delay`` later; its ``submit`` then updates it) without blocking."""
        try:  # noqa: SIM105 (a try costs nothing on the request path; suppress() does)
            self._queue.put_nowait(_Started(record, time.monotonic()))
        except queue.Full:
            pass  # its end record (if there is room then) is inserted instead

    def wait_written(self, timeout: float = 10.0) -> bool:
        """Wait until the records submitted so far are written (or dropped): what a caller
        about to read them back needs (a batch committing its answers, feedback on a request
        just answered). It hurries nothing else (the ``running`` records, the anchor), so
        calling it often under traffic costs the writer nothing. False when ``timeout``
        passed first. What is submitted meanwhile is not waited for: under steady traffic
        the queue is never empty."""
        return self._wait(_Mark(everything=False), timeout)

    def flush(self, timeout: float = 10.0) -> bool:
        """``wait_written``, and the ``running`` records of the requests still running written
        and every seal anchored (or the anchor refused): the store as a reader after a
        crash would find it (tests, ``close``)."""
        return self._wait(_Mark(everything=True), timeout)

    def _wait(self, mark: _Mark, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._marks:
            if self._stopped:
                return self._queue.empty()
            try:  # behind everything submitted before it; waits for room in a full queue
                self._queue.put(mark, timeout=timeout)
            except queue.Full:
                return False
        return mark.done.wait(max(0.0, deadline - time.monotonic())) and mark.ok

    def close(self, timeout: float = 10.0) -> None:
        """Write what is buffered and anchor its seals, then stop the thread."""
        self._stop.set()
        self._thread.join(timeout)

    def _dropped(self, n: int) -> None:
        self.dropped += n
        self._on_drop(n)

    def _take_batch(self) -> list[_Item | _Started | _Mark]:
        batch: list[_Item | _Started | _Mark] = []
        timeout = self._flush_interval
        if self._pending:  # wake up when the oldest start is due
            oldest = next(iter(self._pending.values()))
            timeout = min(timeout, max(0.0, oldest.at + self._start_delay - time.monotonic()))
        try:
            batch.append(self._queue.get(timeout=timeout))
            while len(batch) < self._batch_size:
                batch.append(self._queue.get_nowait())
        except queue.Empty:
            pass
        return batch

    def _embed(self, batch: list[_Item]) -> list[tuple[NewInferenceRecord, RecordFeatures | None]]:
        todo = [i for i, (_, f, t) in enumerate(batch) if f is not None and t]
        out = [(r, f) for r, f, _ in batch]
        if self._embedder is None or not todo:
            return out
        try:
            vectors = self._embedder.embed([str(batch[i][2]) for i in todo])
            blobs = np.asarray(vectors, dtype=np.float16)
        except Exception as exc:
            log.warning("writing %d records without embeddings: %s", len(todo), exc)
            return out
        for i, blob in zip(todo, blobs, strict=True):
            record, feats = out[i]
            assert feats is not None
            out[i] = (record, dataclasses.replace(feats, embedding=blob.tobytes()))
        return out

    def _due(self, everything: bool) -> list[NewInferenceRecord]:
        """The started records to write as ``running`` now (taken out of ``_pending``)."""
        cutoff = time.monotonic() - self._start_delay
        due = [p.record.id for p in self._pending.values() if everything or p.at <= cutoff]
        return [self._pending.pop(rid).record for rid in due]

    def _write(self, batch: list[_Item], started: list[NewInferenceRecord]) -> None:
        ended = {r.id for r, _, _ in batch} & self._running
        self._running -= ended
        items = self._embed(batch)
        sealed: list[SealEntry] = []
        try:
            self.written += self._store.add_monitored_records(
                items, started=started, running=ended, server_id=self.server_id,
                seal=self._seal, sealed=sealed,
            )  # fmt: skip
            self._running.update(r.id for r in started)
            self._unanchored += sealed
        except ModelyardError as exc:
            log.warning("dropping %d inference records: %s", len(batch), exc.one_line())
            self._dropped(len(batch))

    def _anchor(self) -> None:
        """One ``records.anchored`` event for the seals written since the last one."""
        self._next_anchor = time.monotonic() + self._anchor_s
        seals, self._unanchored = self._unanchored, []
        if not seals:
            return
        records = sum(e.records for e in seals)
        try:
            self._store.anchor_record_seals(seals)
            self.anchored += records
            self.unanchored = 0
        except (AuditError, AuditKeyMissing, ModelyardError) as exc:
            self._unanchored = seals + self._unanchored  # tried again at the next interval
            self.unanchored = sum(e.records for e in self._unanchored)
            log.error(
                "%d sealed inference records (%d seals) not anchored in the audit chain, "
                "tried again in %.0f s: %s",
                records, len(seals), self._anchor_s, exc.one_line(),
            )  # fmt: skip

    def _run(self) -> None:
        closed = False
        try:
            self._loop()  # returns once closed, with all it took written and anchored
            closed = True
        finally:  # the marks queued meanwhile are answered, not left to their timeout
            with self._marks:
                self._stopped = True
                unwritten = False
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if isinstance(item, _Mark):  # all before it written: nothing was left
                        item.answer(closed and not unwritten)
                    else:
                        unwritten = True

    def _loop(self) -> None:
        while True:
            batch: list[_Item] = []
            marks: list[_Mark] = []
            taken = self._take_batch()
            for item in taken:
                if isinstance(item, _Started):
                    self._pending[item.record.id] = item
                elif isinstance(item, _Mark):
                    marks.append(item)
                else:  # ended: inserted (its start, if still pending, is never written)
                    self._pending.pop(item[0].id, None)
                    batch.append(item)
            force = any(m.everything for m in marks)
            started = self._due(force or self._stop.is_set())
            if batch or started:
                self._write(batch, started)
            if self._unanchored and (
                force
                or self._stop.is_set()
                or len(self._unanchored) >= self._anchor_seals
                or time.monotonic() >= self._next_anchor
            ):
                self._anchor()
            for mark in marks:
                mark.answer(True)
            if not (batch or started or marks) and self._stop.is_set():
                return
            if self._sweep is not None and time.monotonic() >= self._next_sweep:
                self._next_sweep = time.monotonic() + self._sweep_s
                self._sweep()
