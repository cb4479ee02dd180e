"""Asynchronous, batched writer of inference records.

The data plane never waits on the store: ``submit`` is a non-blocking put
into a bounded buffer; a background thread writes batches. When the buffer is
full or the store is down, rows are dropped and counted, never retried
forever, so a database outage cannot take serving down with it.

Each record may come with its drift features (``RecordFeatures``), computed
from the raw text before the tenant's storage policy; both are written in
one transaction.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from modelyard.errors import ModelyardError
from modelyard.store import NewInferenceRecord, RecordFeatures, Store

_Item = tuple[NewInferenceRecord, RecordFeatures | None]

log = logging.getLogger(__name__)


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
    ) -> None:
        self._store = store
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=max_buffer)
        self._on_drop = on_drop or (lambda n: None)
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._thread = threading.Thread(target=self._run, name="record-writer", daemon=True)
        self.written = 0
        self.dropped = 0
        self._thread.start()

    def submit(self, record: NewInferenceRecord, features: RecordFeatures | None = None) -> None:
        """Queue one record (and its features) without blocking; a full buffer drops it
        (and counts it)."""
        try:
            self._queue.put_nowait((record, features))
            self._idle.clear()
        except queue.Full:
            self._dropped(1)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is written (or dropped)."""
        self._idle.clear()
        return self._idle.wait(timeout) if self._thread.is_alive() else self._queue.empty()

    def close(self, timeout: float = 10.0) -> None:
        """Write what is buffered, then stop the thread."""
        self._stop.set()
        self._thread.join(timeout)

    def _dropped(self, n: int) -> None:
        self.dropped += n
        self._on_drop(n)

    def _take_batch(self) -> list[_Item]:
        batch: list[_Item] = []
        try:
            batch.append(self._queue.get(timeout=self._flush_interval))
            while len(batch) < self._batch_size:
                batch.append(self._queue.get_nowait())
        except queue.Empty:
            pass
        return batch

    def _write(self, batch: list[_Item]) -> None:
        try:
            self.written += self._store.add_monitored_records(batch)
        except ModelyardError as exc:
            log.warning("dropping %d inference records: %s", len(batch), exc.one_line())
            self._dropped(len(batch))

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch:
                self._write(batch)
            elif self._stop.is_set():
                self._idle.set()
                return
            if self._queue.empty():
                self._idle.set()
