"""The stream consumer: messages from a ``MessageSource`` through the data plane, each
settled once.

``StreamConsumer.run`` takes at most as many messages as ``concurrency`` leaves room
for (a message holds its place from its delivery until its answer is staged, and
reading pauses while ``commit_rows`` answers wait to be settled: the backlog stays
on the broker, not in memory), asks each through the job runner
(``batch.JobRunner``: the in-process data plane, a record per message with an id
derived from the stream, the group and the message id, source ``stream``), and
settles them in groups:

- a group is settled only after the record writer has written its records, so a
  message answered in the output always has its record (a record the store could
  not take stops the consumer, and the messages not settled are delivered again);
- a message delivered again (its consumer stopped, or it was left for a retry)
  first loses the records of its earlier delivery, so it keeps one;
- an answer, or the data plane's refusal of the request (a client's mistake: the
  prompt too long for the model, ...) with its ``error``, goes to the output;
- a message that is not a request, or that failed on the server's side (an engine
  error, a timeout, a 429 that outlasted its retries) ``max_attempts`` times, or
  that was delivered more often than that without an answer (it stopped every
  consumer that took it), goes to the dead-letter stream with its reason; a
  server failure before the last attempt leaves the message pending, and it is
  claimed again once idle (``--claim-idle``).

``stop`` (SIGTERM, SIGINT) drains: nothing more is read, the messages in flight
are answered and settled, and ``run`` returns. A second signal stops at once; the
messages in flight stay pending for another delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from modelyard.batch import JobRunner, RowResult
from modelyard.errors import ConfigError
from modelyard.stream._messages import BadMessage, answer_fields, dead_letter_fields, parse_request
from modelyard.stream._source import Delivery, MessageSource, Settlement

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamSettings:
    """How the consumer runs: ``concurrency`` messages in flight at most; a server failure
    retried until ``max_attempts`` deliveries; groups settled every ``commit_s`` (or
    ``commit_rows`` messages); messages in flight renewed every ``keep_s``; new messages
    awaited ``poll_s`` at a time; ``system``: a system message before each ``prompt``;
    ``max_tokens_cap``: the most ``max_tokens`` a message may ask for; ``until_empty``:
    drain and stop once nothing is left to answer."""

    concurrency: int = 16
    max_attempts: int = 3
    commit_s: float = 0.25
    commit_rows: int = 256
    keep_s: float = 15.0
    poll_s: float = 1.0
    system: str | None = None
    max_tokens_cap: int = 256
    until_empty: bool = False

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ConfigError(f"concurrency is {self.concurrency}; it must be at least 1")
        if self.max_attempts < 1:
            raise ConfigError(f"max attempts is {self.max_attempts}; it must be at least 1")


@dataclass
class StreamSummary:
    """What a consumer did since it started."""

    job_id: str
    received: int = 0  # deliveries taken (redeliveries included)
    redelivered: int = 0  # of them, messages delivered before (a stopped consumer's, retries)
    answered: int = 0  # answers published to the output
    refused: int = 0  # refusals published to the output, with their error
    dead_lettered: int = 0
    retried: int = 0  # server failures left pending for another attempt
    duplicates: int = 0  # settled already (by another consumer): nothing published
    lost: int = 0  # pending messages deleted from the stream before they were answered
    in_flight: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None  # None: no version answering has token prices
    versions: dict[str, int] = field(default_factory=dict)
    first_error: str | None = None
    elapsed_s: float = 0.0
    stopped: str | None = None  # why it stopped

    @property
    def settled(self) -> int:
        return self.answered + self.refused + self.dead_lettered

    @property
    def messages_per_s(self) -> float:
        return self.settled / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def add(self, result: RowResult) -> None:
        """Count a published answer's usage."""
        self.prompt_tokens += result.prompt_tokens
        self.completion_tokens += result.completion_tokens
        if result.cost is not None:
            self.cost = (self.cost or 0.0) + result.cost
        if result.version is not None:
            self.versions[result.version] = self.versions.get(result.version, 0) + 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"messages_per_s": round(self.messages_per_s, 3)}


@dataclass(frozen=True)
class _Outcome:
    settlement: Settlement
    result: RowResult | None  # what the data plane said (None: never asked)
    latency_s: float | None = None  # how long the data plane took to say it


Progress = Callable[[StreamSummary], None]
OnAnswer = Callable[[float], None]  # an answer published: its latency (s)


class StreamConsumer:
    """Answers ``source``'s messages through ``runner``; see the module's docstring.
    ``on_answer`` is told the latency of each answer published (a metric's histogram)."""

    def __init__(
        self,
        runner: JobRunner,
        source: MessageSource,
        settings: StreamSettings,
        on_answer: OnAnswer | None = None,
    ):
        self.runner, self.source, self.settings = runner, source, settings
        self._on_answer = on_answer
        self.summary = StreamSummary(source.job_id)
        self._in_flight: dict[str, Delivery] = {}  # delivered, not settled yet
        self._asking = 0  # of them, being asked (the others wait to be settled)
        self._staged: list[_Outcome] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()  # a second stop: leave what is in flight
        self._room = asyncio.Event()
        self._wake = asyncio.Event()
        self._failure: list[BaseException] = []
        self._lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        """Messages taken and not settled yet (read from any thread)."""
        return len(self._in_flight)

    def stop(self, why: str = "stopped") -> None:
        """Drain and return (from any thread); a second call stops at once."""
        with self._lock:
            first = self.summary.stopped is None
            self.summary.stopped = self.summary.stopped or why
        if self._loop is None:
            return
        target = self._stop if first else self._hurry
        self._loop.call_soon_threadsafe(target.set)

    def run(self, progress: Progress | None = None, progress_s: float = 10.0) -> StreamSummary:
        """Consume until ``stop`` (or, with ``until_empty``, nothing left to answer); returns
        the summary. Raises what stopped it otherwise (the store, the broker)."""
        started = time.perf_counter()
        try:
            asyncio.run(self._run(progress, progress_s, started))
        finally:
            self.summary.elapsed_s = time.perf_counter() - started
            self.summary.in_flight = len(self._in_flight)
        if self._failure:
            raise self._failure[0]
        return self.summary

    async def _run(self, progress: Progress | None, progress_s: float, started: float) -> None:
        self._loop = asyncio.get_running_loop()
        for event in (self._stop, self._hurry, self._room, self._wake):
            event.clear()
        if self.summary.stopped is not None:  # stopped before it started
            self._stop.set()
        helpers = [asyncio.create_task(self._keeper())]
        if progress is not None:
            helpers.append(asyncio.create_task(self._reporter(progress, progress_s, started)))
        committer = asyncio.create_task(self._committer())
        tasks: set[asyncio.Task[None]] = set()
        with self._signals():
            try:
                await self._read(tasks)
                await self._drain(tasks)
            finally:  # drained, hurried or failed: what is staged is settled, then stop
                for task in tasks:
                    task.cancel()
                self._stop.set()
                self._hurry.set()
                self._wake.set()
                await asyncio.gather(committer, return_exceptions=True)
                for task in helpers:
                    task.cancel()
                await asyncio.gather(*helpers, return_exceptions=True)
        if progress is not None:
            self.summary.elapsed_s = time.perf_counter() - started
            progress(self.summary)

    async def _read(self, tasks: set[asyncio.Task[None]]) -> None:
        """Take messages while there is room, until stopped."""
        while not self._stop.is_set() and not self._failure:
            room = self.settings.concurrency - self._asking
            if room <= 0 or len(self._staged) >= self.settings.commit_rows:
                self._room.clear()
                await _first(self._room, self._stop)
                continue
            deliveries = await asyncio.to_thread(self.source.fetch, room, self.settings.poll_s)
            for delivery in deliveries:
                if delivery.id in self._in_flight:  # renewed too late: claimed back by us
                    continue
                self._in_flight[delivery.id] = delivery
                self._asking += 1
                self.summary.received += 1
                task = asyncio.create_task(self._handle(delivery))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            idle = not deliveries and not self._in_flight
            if idle and self.settings.until_empty and await self._nothing_left():
                self.stop("nothing left to answer")

    async def _nothing_left(self) -> bool:
        return await asyncio.to_thread(self.source.backlog) == 0

    async def _drain(self, tasks: set[asyncio.Task[None]]) -> None:
        """Finish the messages in flight (all of them settled), unless hurried or failed."""
        while (tasks or self._in_flight) and not self._failure and not self._hurry.is_set():
            self._wake.set()
            self._room.clear()
            await _first(self._room, self._hurry)

    async def _handle(self, delivery: Delivery) -> None:
        try:
            outcome = await self._outcome(delivery)
        except Exception as exc:  # the store: the consumer stops, the message stays pending
            self._fail(exc)
            return
        finally:
            self._asking -= 1
            self._room.set()
        if outcome is None:  # left pending for another attempt
            self._in_flight.pop(delivery.id, None)
            try:
                await asyncio.to_thread(self.source.release, [delivery.id])
            except Exception as exc:  # the broker delivers it again after the idle time anyway
                log.warning("stream: could not leave message %s for a retry: %s", delivery.id, exc)
            return
        self._staged.append(outcome)
        if len(self._staged) >= self.settings.commit_rows:
            self._wake.set()

    async def _outcome(self, d: Delivery) -> _Outcome | None:
        """How ``d`` ends: answered (or refused), dead-lettered, or None (try again later)."""
        limit = self.settings.max_attempts
        if d.attempt > 1:
            self.summary.redelivered += 1
        if d.attempt > limit:
            return self._dead(d, f"delivered {d.attempt} times without an answer (more than "
                                 f"--max-attempts {limit}): every consumer that took it "
                                 "stopped before answering it")  # fmt: skip
        try:
            request = parse_request(d, self.runner.settings.params, self.settings.system,
                                    self.settings.max_tokens_cap)  # fmt: skip
        except BadMessage as exc:
            return self._dead(d, exc.message)
        if d.attempt > 1:  # what an earlier delivery recorded goes: one record per message
            # once written: an earlier delivery here handed its record to the writer as it
            # ended (a NATS message may come back within --claim-idle-s), and a record written
            # after the discard made this one's a duplicate, dropped. Only that is waited
            # for (wait_written): a full flush anchored the seals once per redelivered message
            await asyncio.to_thread(self.runner.plane.writer.wait_written)
            ids = self.runner.record_ids(d.id)
            await asyncio.to_thread(self.runner.plane.store.discard_job_records,
                                    self.runner.job_id, ids)  # fmt: skip
        began = time.perf_counter()
        result = await self.runner.answer(request.row)
        latency_s = time.perf_counter() - began
        if result.status is not None and (result.status >= 500 or result.status == 429):
            self.summary.first_error = self.summary.first_error or result.error
            if d.attempt >= limit:
                return self._dead(d, f"failed {d.attempt} times (--max-attempts {limit}); "
                                     f"the last: {result.error}", result)  # fmt: skip
            self.summary.retried += 1
            return None
        settlement = Settlement(d, answer_fields(d, request.client_id, result))
        return _Outcome(settlement, result, latency_s)

    def _dead(self, d: Delivery, reason: str, result: RowResult | None = None) -> _Outcome:
        self.summary.first_error = self.summary.first_error or reason
        return _Outcome(Settlement(d, dead_letter_fields(d, reason), dead=True), result)

    def _fail(self, exc: BaseException) -> None:
        self._failure.append(exc)
        self.stop(f"failed: {exc}")
        self._hurry.set()
        self._room.set()

    async def _committer(self) -> None:
        """Settle staged outcomes every ``commit_s``, after their records are written."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.commit_s)
            self._wake.clear()
            last = self._stop.is_set()
            if self._staged and not self._failure:
                group = self._staged[:]
                del self._staged[:]
                try:
                    await self._settle(group)
                except Exception as exc:  # the store or the broker: stop; they stay pending
                    self._fail(exc)
                    return
            if last and (self._hurry.is_set() or self._failure or not self._in_flight):
                return

    async def _settle(self, group: list[_Outcome]) -> None:
        asked = [o.result for o in group if o.result is not None and o.result.record_id]
        if asked:
            await asyncio.to_thread(self.runner.ensure_recorded, asked)
        published = await asyncio.to_thread(self.source.settle, [o.settlement for o in group])
        for outcome, done in zip(group, published, strict=True):
            self._count(outcome, done)
            self._in_flight.pop(outcome.settlement.delivery.id, None)
        self._room.set()

    def _count(self, outcome: _Outcome, published: bool) -> None:
        if not published:
            self.summary.duplicates += 1
        elif outcome.settlement.dead:
            self.summary.dead_lettered += 1
        elif outcome.result is not None and outcome.result.failed:
            self.summary.refused += 1
            self.summary.first_error = self.summary.first_error or outcome.result.error
        else:
            self.summary.answered += 1
            if self._on_answer is not None and outcome.latency_s is not None:
                self._on_answer(outcome.latency_s)
        if published and outcome.result is not None:
            self.summary.add(outcome.result)

    async def _keeper(self) -> None:
        """Renew the messages in flight, so no other consumer claims them as abandoned."""
        while True:
            await asyncio.sleep(self.settings.keep_s)
            if self._in_flight:
                try:
                    await asyncio.to_thread(self.source.keep, list(self._in_flight))
                except Exception as exc:
                    self._fail(exc)
                    return

    async def _reporter(self, progress: Progress, every_s: float, started: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            self.summary.elapsed_s = time.perf_counter() - started
            self.summary.in_flight = len(self._in_flight)
            progress(self.summary)

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGTERM and SIGINT drain (a second one stops at once), in the main thread."""
        if threading.current_thread() is not threading.main_thread() or self._loop is None:
            yield
            return
        loop = self._loop
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop, signal.Signals(sig).name)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)


async def _first(*events: asyncio.Event) -> None:
    """Wait until one of ``events`` is set."""
    waits = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


__all__ = ["OnAnswer", "Progress", "StreamConsumer", "StreamSettings", "StreamSummary"]
