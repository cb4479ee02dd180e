"""The job runner: rows from a source through the data plane into a sink, exactly once.

``JobRunner.run`` asks the in-process data plane (``serving.InProcessPlane``,
the one ``modelyard serve`` runs behind HTTP) for every row the sink does not
hold yet, ``concurrency`` rows at once so the engine's continuous batching packs
them, and commits results to the sink in groups.

Exactly once, whatever instant the process dies at:

- every row's record has an id derived from the job and the row
  (``record_id``), so a row has at most one record at a time;
- a group of results is committed to the sink only after the record writer
  has written their records (``flush``; a record it dropped stops the job),
  so a row in the output always has its record;
- a run first discards the records of the rows it is about to answer (rows a
  stopped run answered but never committed), so answering them again leaves
  one record each.

A row that fails keeps its error and the job goes on, until more than
``max_errors`` rows have failed. A run of a job that stopped asks again the rows
that failed on the server's side (a 5xx: an engine or upstream error, a timeout;
a 429 that outlasted its retries): the cause may have passed, as the stopped
job's hint says. Rows the API refused as a client's mistake (4xx) keep their
error. A 429 (the key's requests/min or tokens/min)
is not a failure: every row waits the ``Retry-After`` and the row is sent
again (at most ``rate_limit_retries`` times).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from modelyard.batch._kept import DONE, TODO, KeptRows
from modelyard.batch._rows import JobSummary, Row, RowResult, RowSink, RowSource
from modelyard.errors import (
    ConfigError,
    ModelyardError,
    RateLimited,
    StoreUnavailable,
    status_of,
)
from modelyard.serving import Answer, InProcessPlane, Origin, SamplingParams
from modelyard.store import ApiKey

Progress = Callable[[int, int | None], None]  # (rows done, rows in the job)
_MAX_ID = 57  # a record id is at most 64 characters, and its shadow's is 7 more
DISCARD_PAGE = 1000  # record ids handed to the store at a time


@dataclass(frozen=True)
class JobSettings:
    """How a job asks: which ``endpoint`` (or pinned version ref) with which ``params``,
    ``concurrency`` rows at once; ``max_errors`` failed rows before it stops (None: no
    limit); results committed every ``commit_rows`` rows or ``commit_s`` seconds."""

    endpoint: str
    params: SamplingParams
    concurrency: int = 16
    max_errors: int | None = None
    commit_rows: int = 256
    commit_s: float = 1.0
    rate_limit_retries: int = 20
    source: str = "batch"  # the records' source

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ConfigError(f"concurrency is {self.concurrency}; it must be at least 1")
        if self.max_errors is not None and self.max_errors < 0:
            raise ConfigError(f"max_errors is {self.max_errors}; it must be 0 or more")


class JobRunner:
    """Runs one job's rows through ``plane`` as ``key``; see the module's docstring."""

    def __init__(
        self,
        plane: InProcessPlane,
        key: ApiKey,
        job_id: str,
        settings: JobSettings,
        prices: Mapping[str, tuple[float, float]] | None = None,
    ) -> None:
        self.plane, self.key, self.job_id, self.settings = plane, key, job_id, settings
        self.prices = dict(prices or {})  # base model -> (input, output) per 1,000 tokens
        self._pause_until = 0.0  # after a 429, every row waits until then
        self._dropped = plane.dropped

    def record_id(self, row_key: str) -> str:
        """The id of ``row_key``'s record: the same in every run of the job."""
        rid = f"{self.job_id}-{row_key}"
        if len(rid) > _MAX_ID:
            rid = f"{self.job_id}-{hashlib.sha256(row_key.encode()).hexdigest()[:32]}"
        return rid

    def run(self, source: RowSource, sink: RowSink, progress: Progress | None = None) -> JobSummary:
        """Answer every row of ``source`` that ``sink`` does not hold; returns the summary of
        the whole job. Raises what stops it early (the store losing records, the sink).

        Rows and results stream: the sink's results are read once into one byte a row
        (``KeptRows``), and the source is read again to discard the records a stopped run
        left and again to answer the rows, a row at a time."""
        started = time.perf_counter()
        summary = JobSummary(self.job_id)
        kept = KeptRows.of(sink.kept(), source.total, summary)
        summary.skipped, summary.retried = kept.done, kept.again
        todo = self._discard(source, kept, summary)
        summary.rows = kept.done + todo
        if self._too_many_errors(summary):
            return summary
        if progress is not None:
            progress(summary.skipped, summary.rows)
        if todo:
            rows = (row for row in source.rows() if kept.state(row.key) != DONE)
            self.answer_rows(rows, sink, summary, progress)
        summary.elapsed_s = time.perf_counter() - started
        return summary

    def _discard(self, source: RowSource, kept: KeptRows, summary: JobSummary) -> int:
        """Discard the records of the rows about to be answered (a stopped run answered
        them, or failed them on the server's side, but they are not kept as answered), a
        page of ids at a time, counting those of rows never kept into ``replaced``;
        returns how many rows are to be answered."""
        store = self.plane.store
        fresh = not kept.done and not kept.again and source.total is not None
        if fresh and not store.count_inference_records(job_id=self.job_id):
            assert source.total is not None
            return source.total  # a new job: nothing to discard, every row to answer
        todo = 0
        page: list[str] = []
        for row in source.rows():
            state = kept.state(row.key)
            if state == DONE:
                continue
            todo += 1
            if state == TODO:
                page.extend(self.record_ids(row.key))
            if len(page) >= DISCARD_PAGE:
                summary.replaced += store.discard_job_records(self.job_id, page)
                page = []
        if page:
            summary.replaced += store.discard_job_records(self.job_id, page)
        if kept.again:
            again = (i for key in kept.again_keys() for i in self.record_ids(key))
            store.discard_job_records(self.job_id, again)
        return todo

    def answer_rows(
        self, rows: Iterable[Row], sink: RowSink, summary: JobSummary, progress: Progress | None
    ) -> None:
        """Answer ``rows`` (none in ``sink`` yet, their old records discarded) into ``sink``,
        counting them into ``summary``: here, ``concurrency`` at once through this
        process's plane, read from ``rows`` as slots free up; a runner elsewhere
        (``RayJobRunner``) replaces only this."""
        asyncio.run(self._run(rows, sink, summary, progress))

    def record_ids(self, row_key: str) -> tuple[str, str]:
        """The ids ``row_key``'s records may have: its own and its shadow's."""
        rid = self.record_id(row_key)
        return rid, f"{rid}-shadow"

    def _too_many_errors(self, summary: JobSummary) -> bool:
        limit = self.settings.max_errors
        why = f"rows failed, more than --max-errors {limit}"
        if summary.stopped and not summary.stopped.endswith(why):
            return True  # stopped for another reason
        if limit is None or summary.failed <= limit:
            return summary.stopped is not None
        # counted again as the rows in flight end: the line says what the summary counts
        summary.stopped = f"{summary.failed} {why}"
        return True

    async def _run(
        self, rows: Iterable[Row], sink: RowSink, summary: JobSummary, progress: Progress | None
    ) -> None:
        slots = asyncio.Semaphore(self.settings.concurrency)
        staged: list[RowResult] = []
        wake, finished = asyncio.Event(), asyncio.Event()
        failure: list[BaseException] = []

        async def one(row: Row) -> None:
            try:
                result = await self.answer(row)
            finally:
                slots.release()
            staged.append(result)
            summary.answered += 1
            summary.add(result)
            if len(staged) >= self.settings.commit_rows:
                wake.set()
            self._too_many_errors(summary)
            if progress is not None:
                progress(summary.skipped + summary.answered, summary.rows)

        async def committer() -> None:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), self.settings.commit_s)
                wake.clear()
                last = finished.is_set()
                if staged:
                    group = staged[:]
                    del staged[:]
                    try:
                        await asyncio.to_thread(self._commit, sink, group)
                    except BaseException as exc:  # the job stops; uncommitted rows run again
                        failure.append(exc)
                        return
                if last:
                    return

        commits = asyncio.create_task(committer())
        tasks: set[asyncio.Task[None]] = set()
        for row in rows:  # read as slots free up: the rows are never all in memory
            await slots.acquire()
            if summary.stopped or failure or commits.done():
                slots.release()
                break
            task = asyncio.create_task(one(row))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        try:
            await asyncio.gather(*tasks)
        finally:
            finished.set()
            wake.set()
            await commits
        if failure:
            raise failure[0]

    async def answer(self, row: Row) -> RowResult:
        """One row through the data plane (with its own params, if it has them): its result,
        or its error and the HTTP status the API answers it with; a 429 waits and tries
        again."""
        rid = self.record_id(row.key)
        origin = Origin(self.settings.source, self.job_id, rid)
        params = row.params or self.settings.params
        limited: RateLimited | None = None
        for _ in range(self.settings.rate_limit_retries + 1):
            wait = self._pause_until - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                answer = await self.plane.chat(
                    self.key, self.settings.endpoint, row.messages, params, origin=origin,
                )  # fmt: skip
            except RateLimited as exc:  # refused before it ran: no record under its id
                limited = exc
                self._pause_until = max(self._pause_until, time.monotonic() + exc.retry_after)
                continue
            except ModelyardError as exc:
                return RowResult(row.key, record_id=rid, error=exc.one_line(),
                                 status=status_of(exc).http_status)  # fmt: skip
            return self._result(row.key, answer)
        assert limited is not None
        return RowResult(row.key, error=limited.one_line(), status=status_of(limited).http_status)

    def _result(self, key: str, answer: Answer) -> RowResult:
        gen = answer.generation
        price = self.prices.get(answer.version.base_model)
        cost = None
        if price is not None:
            cost = (gen.prompt_tokens * price[0] + gen.completion_tokens * price[1]) / 1000
        return RowResult(
            key, gen.text, gen.finish_reason, gen.prompt_tokens, gen.completion_tokens,
            answer.version.ref, answer.record_id, None, cost,
        )  # fmt: skip

    def _commit(self, sink: RowSink, results: Sequence[RowResult]) -> None:
        """Commit ``results`` once their records are written (on a worker thread)."""
        self.ensure_recorded(results)
        sink.commit(results)

    def ensure_recorded(self, results: Sequence[RowResult]) -> None:
        """Return once the records of ``results`` (and every earlier one) are written; raise
        StoreUnavailable when they were not within 60 s or a record was dropped. Blocks:
        call it on a worker thread."""
        if not self.plane.flush(timeout=60.0):
            raise StoreUnavailable(
                f"the inference records of {len(results)} answered rows were not written "
                "within 60 s",
                hint="Check the store, then run the same command again: those rows are "
                "answered again, each keeping one record.",
            )
        if self.plane.dropped > self._dropped:
            raise StoreUnavailable(
                f"{self.plane.dropped - self._dropped} inference records could not be written "
                "to the store",
                hint="Check the store, then run the same command again: the rows not yet in "
                "the output are answered again, each keeping one record.",
            )


__all__ = ["JobRunner", "JobSettings", "Progress"]
