"""The batch worker: every serving replica runs the OpenAI batches of the store.

``BatchWorker`` runs on the app's event loop (started and stopped by its
lifespan). Every ``poll_s`` (and at once when a batch is created here) it takes
the lease ``batch:<id>`` of batches waiting to run, at most ``max_running`` at
once, tenants taking turns (``Store.batches_to_claim``: one tenant's thousand
batches do not hold up another's); a replica that dies stops renewing its
leases and another takes its batches over after ``lease_s``.

A batch (``BatchRun``) is checked first (``_batch_input``: a bad file ends it
``failed`` with every problem and its line), then its lines are asked through
the app itself, in process, ``concurrency`` at once (``concurrency_busy`` while
live clients' requests are in flight on this replica: ``_live``), as the key that
created the batch (``_batch_context``): the same routes, guard, limits, budgets, storage
policy and records as a live request of that key; their records are marked
``batch`` with the batch's id. A line refused for a while (429
``rate_limit_exceeded``, 503 ``overloaded``) is not its answer: every line waits
the ``Retry-After`` and it is asked again, as ``modelyard batch run`` does; a
request larger than the limit itself (``x-should-retry: false``) is answered at
once. Answers are committed to the store in groups
(``commit_lines``: the lines and ``request_counts`` at once, fenced by the lease)
once their records are written. A cancel stops taking lines, lets those in flight
finish, and ends ``cancelled`` with what finished; past ``expires_at`` it ends
``expired`` the same way; the lines never asked are in its error file with
OpenAI's ``batch_cancelled`` / ``batch_expired``. Output and error files are
then written (the tenant's ``batch_output`` files, expiring as the batch's
``output_expires_after`` says) and the committed lines deleted. Every
``PURGE_EVERY_S`` the worker also deletes the files whose time is up
(``FileKeeper.purge_expired``).

A server stopped mid-batch commits what finished; the requests still in flight
are cancelled and asked again by whichever replica resumes the batch (their
first records discarded, so each line keeps one record): a resumed batch asks
again at most the lines that were in flight. Draining (SIGTERM) stops taking
lines and lets those in flight finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from starlette.types import ASGIApp

from modelyard.errors import (
    ArtifactIntegrityError,
    ArtifactNotFound,
    ConfigError,
    InvalidApiKey,
    ModelyardError,
    NotFound,
)
from modelyard.serving._batch_context import CURRENT, BatchCall, record_ids
from modelyard.serving._batch_input import InputLine, check_input, input_lines
from modelyard.serving._files import FileKeeper
from modelyard.serving._http_errors import error_of
from modelyard.serving._live import LineSlots
from modelyard.serving._plane import DataPlane
from modelyard.store import ACTIVE_BATCH_STATES as ACTIVE
from modelyard.store import ApiKey, LeaseLost, LineOutput, OutputFile, Store, StoredBatch

log = logging.getLogger(__name__)

COMPLETION_WINDOWS = {"24h": timedelta(hours=24)}
# Refusals a line waits out (Retry-After) rather than answers: the key's requests/min or
# tokens/min, the engine's queue full. A budget spent (insufficient_quota) is its answer.
# A line never asked, in the error file of a batch that ended so (OpenAI's codes and words).
UNASKED = {
    "cancelled": (
        "batch_cancelled",
        "This request was not executed because the batch was cancelled.",
    ),
    "expired": (
        "batch_expired",
        "This request could not be executed before the completion window expired.",
    ),
}
WAITED_OUT = frozenset({"rate_limit_exceeded", "overloaded"})
DISCARD_PAGE = 1000
PURGE_EVERY_S = 60.0  # how often a server deletes the files whose time is up


@dataclass(frozen=True)
class BatchSettings:
    """How a server runs batches: ``concurrency`` lines of a batch at once, only
    ``concurrency_busy`` while a live client's request is in flight on the replica (or ended
    within ``busy_quiet_s``), at most ``max_running`` batches at once, leases of ``lease_s``,
    new batches looked for every ``poll_s``, answers committed every ``commit_s`` or
    ``commit_rows``, at most ``max_lines`` requests in a batch; a line refused for a while
    (the key's rate limit, a full engine queue) waits its ``Retry-After`` and is asked
    again, at most ``retry_limit`` times. A tenant may have at most ``max_per_tenant``
    batches not finished (a new one is refused ``TooManyBatches``)."""

    concurrency: int = 16
    concurrency_busy: int = 1
    busy_quiet_s: float = 0.1
    max_running: int = 2
    lease_s: float = 30.0
    poll_s: float = 1.0
    commit_s: float = 0.5
    commit_rows: int = 64
    max_lines: int = 50_000
    retry_limit: int = 20
    max_per_tenant: int = 100

    def __post_init__(self) -> None:
        if not 1 <= self.concurrency_busy <= self.concurrency:
            raise ConfigError(
                f"--batch-concurrency-busy {self.concurrency_busy} is not between 1 and "
                f"--batch-concurrency ({self.concurrency}): it is how many lines of a batch "
                "start at once while live requests are in flight (0 would stall a batch under "
                "steady live traffic until it expires)",
                hint=f"Give --batch-concurrency-busy 1 to {self.concurrency}.",
            )


class BatchWorker:
    """Runs the store's batches on this server (see the module's text)."""

    def __init__(
        self,
        app: ASGIApp,
        plane: DataPlane,
        files: FileKeeper,
        holder: str,
        settings: BatchSettings | None = None,
    ) -> None:
        self.app, self.plane, self.files, self.holder = app, plane, files, holder
        self.store: Store = files.store
        self.settings = settings or BatchSettings()
        self.running: dict[str, asyncio.Task[None]] = {}
        self._purge_at = 0.0  # when to delete the expired files next
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.client: httpx.AsyncClient | None = None
        self.metrics = plane.metrics
        self.metrics.batches_running.set_function(lambda: len(self.running))

    def start(self) -> None:
        """Start looking for batches (on the running event loop)."""
        self._wake = asyncio.Event()
        transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
        self.client = httpx.AsyncClient(transport=transport, base_url="http://batch.internal")
        self._task = asyncio.create_task(self._loop())

    def wake(self) -> None:
        """Look for batches now (one was created)."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop: each running batch commits what finished and gives its lease back."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        running = list(self.running.values())
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        if self.client is not None:
            await self.client.aclose()

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_s)
            self._wake.clear()
            if self.plane.drain.draining:
                continue
            try:
                await self._claim()
                if time.monotonic() >= self._purge_at:  # files whose time is up
                    self._purge_at = time.monotonic() + PURGE_EVERY_S
                    await asyncio.to_thread(self.files.purge_expired)
            except ModelyardError as exc:
                log.warning("could not look for batches to run: %s", exc.one_line())

    async def _claim(self) -> None:
        counts = await asyncio.to_thread(self.store.unfinished_batches)
        for status, n in counts.items():
            self.metrics.batches_unfinished.labels(status).set(n)
        free = self.settings.max_running - len(self.running)
        if free <= 0:
            return
        for batch in await asyncio.to_thread(self.store.batches_to_claim, free):
            if batch.id in self.running or len(self.running) >= self.settings.max_running:
                continue
            taken = await asyncio.to_thread(
                self.store.acquire_lease, batch.lease, self.holder, self.settings.lease_s
            )
            if taken:
                task = asyncio.create_task(self._run(batch))
                self.running[batch.id] = task
                task.add_done_callback(self._forget(batch.id))

    def _forget(self, batch_id: str) -> Callable[[asyncio.Task[None]], None]:
        def forget(_task: asyncio.Task[None]) -> None:
            self.running.pop(batch_id, None)

        return forget

    async def _run(self, batch: StoredBatch) -> None:
        run = BatchRun(self, batch.id)
        keeper = asyncio.create_task(self._keep(batch.lease, asyncio.current_task()))
        try:
            await run.run()
        except LeaseLost:
            log.warning("batch %s: another server runs it now", batch.id)
        except ModelyardError as exc:  # the store down, say: it is taken up again later
            log.warning("batch %s stopped: %s", batch.id, exc.one_line())
        except Exception:
            log.exception("batch %s stopped", batch.id)
        finally:
            keeper.cancel()
            with contextlib.suppress(ModelyardError):
                await asyncio.to_thread(self.store.release_lease, batch.lease, self.holder)

    async def _keep(self, lease: str, runner: asyncio.Task[Any] | None) -> None:
        """Renew ``lease`` while the batch runs; stop the run once it is lost."""
        while True:
            await asyncio.sleep(self.settings.lease_s / 3)
            try:
                held = await asyncio.to_thread(
                    self.store.acquire_lease, lease, self.holder, self.settings.lease_s
                )
            except ModelyardError:
                continue  # the store is down: the fenced commits fail meanwhile
            if not held and runner is not None:
                runner.cancel()
                return


class BatchRun:
    """One batch run by one server, from where it stands to its end (or a stop)."""

    def __init__(self, worker: BatchWorker, batch_id: str) -> None:
        self.worker, self.batch_id = worker, batch_id
        self.store, self.settings = worker.store, worker.settings
        self.staged: list[LineOutput] = []
        self.cancelled = False
        self.key: ApiKey | None = None
        self.expires_at: datetime | None = None
        self._pause_until = 0.0  # after a Retry-After, every line waits until then

    async def run(self) -> None:
        batch = await asyncio.to_thread(self.store.batch, self.batch_id)
        holder = self.worker.holder
        if batch.status not in ACTIVE:  # another server finished it since it was listed
            return
        if batch.status == "cancelling" and "in_progress" not in batch.times:
            await asyncio.to_thread(self._finish, batch, "cancelled")  # before it started
            return
        try:
            source = await asyncio.to_thread(self._input_path, batch)
        except (NotFound, ArtifactIntegrityError) as exc:  # no retry brings it back
            if batch.status != "validating":
                raise
            why = f"the input file cannot be read: {exc.message}"
            if isinstance(exc, ArtifactNotFound):  # its row is there, its bytes are not
                log.error("batch %s: %s (with several replicas, the artifact store must be one "
                          "they share)", batch.id, why)  # fmt: skip
            gone = {"code": "invalid_file", "message": why, "param": "input_file_id",
                    "line": None}  # fmt: skip
            batch = await asyncio.to_thread(
                self.store.start_batch, batch.id, holder, total=0, errors=[gone]
            )
            self._ended(batch)
            return
        if batch.status == "validating":
            total, problems, model = await asyncio.to_thread(
                check_input, source, batch.endpoint, self.settings.max_lines
            )
            batch = await asyncio.to_thread(
                self.store.start_batch, batch.id, holder, total=total, errors=problems,
                model=model,
            )  # fmt: skip
            if batch.status == "failed":
                self._ended(batch)
                return
            log.info("batch %s of tenant %s: %d requests to ask", batch.id, batch.tenant, total)
        if batch.status in ("in_progress", "cancelling"):
            if batch.status == "in_progress" and not await self._answer(batch, source):
                return  # stopped (a shutdown, a drain): resumed later
            batch = await asyncio.to_thread(self.store.batch, self.batch_id)
        final = "completed"
        if batch.status == "cancelling":
            final = "cancelled"
        elif batch.completed + batch.failed < batch.total:
            final = "expired"
        if final == "completed" and batch.status != "finalizing":
            batch = await asyncio.to_thread(self.store.mark_batch, batch.id, holder, "finalizing")
        await asyncio.to_thread(self._finish, batch, final, source)

    def _input_path(self, batch: StoredBatch) -> Path:
        return self.worker.files.path(self.store.get_file(batch.tenant, batch.input_file_id))

    async def _answer(self, batch: StoredBatch, source: Path) -> bool:
        """Ask every line not committed yet; whether the batch got to its end (all its lines,
        a cancel, its expiry), not stopped by this server."""
        done = await asyncio.to_thread(self.store.done_lines, batch.id)
        await asyncio.to_thread(self._discard, batch, source, done)
        self.key = await asyncio.to_thread(batch_key, self.store, batch)
        settings = self.settings
        slots = LineSlots(self.worker.plane.live, settings.concurrency,
                          settings.concurrency_busy, settings.busy_quiet_s)  # fmt: skip
        tasks: set[asyncio.Task[None]] = set()
        wake, finished = asyncio.Event(), asyncio.Event()
        committer = asyncio.create_task(self._committer(batch, wake, finished))
        stopped = False
        try:
            for line in input_lines(source, batch.endpoint):
                if line.number in done:
                    continue
                await slots.acquire()
                if self._should_stop(batch) or committer.done():
                    slots.release()
                    break
                task = asyncio.create_task(self._one(batch, line, slots, wake))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.gather(*tasks)
        except asyncio.CancelledError:  # the server stops: what is in flight is asked again
            stopped = True
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            finished.set()
            wake.set()
            await asyncio.gather(committer, return_exceptions=True)
        if committer.done() and not committer.cancelled() and committer.exception() is not None:
            raise committer.exception()  # type: ignore[misc]
        return not stopped and not self.worker.plane.drain.draining

    def _should_stop(self, batch: StoredBatch) -> bool:
        return (
            self.cancelled
            or datetime.now(UTC) >= (self.expires_at or batch.expires_at)
            or self.worker.plane.drain.draining
        )

    async def _committer(
        self, batch: StoredBatch, wake: asyncio.Event, finished: asyncio.Event
    ) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.settings.commit_s)
            wake.clear()
            last = finished.is_set()
            group = self.staged[:]
            del self.staged[:]
            status, self.expires_at = await asyncio.to_thread(self._commit, batch, group)
            self.cancelled = self.cancelled or status == "cancelling"
            if last:
                return

    def _commit(self, batch: StoredBatch, group: list[LineOutput]) -> tuple[str, datetime]:
        """Commit ``group`` once its records are written; the batch's status and expiry.
        Also reads the key again, so a revoked key stops answering within a commit, and a
        rotated one is followed to its successor."""
        if group and not self.worker.plane.writer.wait_written(60.0):
            raise ModelyardError(f"the records of batch {batch.id}'s lines were not written")
        self.key = batch_key(self.store, batch)
        found = self.store.commit_lines(batch.id, self.worker.holder, group)
        ok = sum(line.ok for line in group)
        if ok:
            self.worker.metrics.batch_lines.labels(batch.tenant, "completed").inc(ok)
        if len(group) > ok:
            self.worker.metrics.batch_lines.labels(batch.tenant, "failed").inc(len(group) - ok)
        return found

    async def _one(
        self, batch: StoredBatch, line: InputLine, slots: LineSlots, wake: asyncio.Event
    ) -> None:
        rid = f"{batch.id}-{line.number}"
        try:
            for tries in range(self.settings.retry_limit + 1):
                wait = self._pause_until - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                    if self._should_stop(batch):
                        return  # never run: a cancel, the expiry, a drain came meanwhile
                status, body, request_id, retry_after = await self._ask(batch, line, rid)
                if (
                    _code(body) not in WAITED_OUT
                    or retry_after < 0
                    or tries == self.settings.retry_limit
                ):
                    break
                self._pause_until = max(self._pause_until, time.monotonic() + retry_after)
        finally:
            slots.release()
        if status == 503 and _code(body) == "shutting_down":
            return  # never run: asked again when the batch resumes
        output = {
            "id": _line_id(rid),
            "custom_id": line.custom_id,
            "response": {"status_code": status, "request_id": request_id, "body": body},
            "error": None,
        }
        ok = 200 <= status < 300
        self.staged.append(LineOutput(line.number, ok, json.dumps(output, ensure_ascii=False)))
        if len(self.staged) >= self.settings.commit_rows:
            wake.set()

    async def _ask(
        self, batch: StoredBatch, line: InputLine, rid: str
    ) -> tuple[int, Any, str, float]:
        """The line's request through the app as the batch's key: status, body, request id,
        and the seconds of its ``Retry-After`` (0 without one)."""
        key = self.key
        refused = _key_problem(key, batch.api_key_id)
        if refused is not None or key is None:
            exc = refused or InvalidApiKey("the API key that created this batch is gone")
            return 401, error_of(exc), rid, 0.0
        CURRENT.set(BatchCall(key, batch.id, rid))  # this task's requests only
        assert self.worker.client is not None
        reply = await self.worker.client.post(line.url, json=line.body)
        try:
            body: Any = reply.json()
        except ValueError:
            body = {"error": {"message": reply.text[:500], "type": "server_error", "code": None,
                              "param": None}}  # fmt: skip
        try:
            retry_after = float(reply.headers.get("retry-after", "0"))
        except ValueError:
            retry_after = 1.0
        if reply.headers.get("x-should-retry") == "false":
            retry_after = -1.0  # no wait helps (a request larger than the key's limit)
        return reply.status_code, body, reply.headers.get("x-request-id", rid), retry_after

    def _discard(self, batch: StoredBatch, source: Path, done: set[int]) -> None:
        """The records of lines a stopped run asked but never committed go (each line keeps
        the one record of its answer)."""
        if not done and not self.store.count_inference_records(job_id=batch.id):
            return
        page: list[str] = []
        for line in input_lines(source, batch.endpoint):
            if line.number in done:
                continue
            page.extend(record_ids(f"{batch.id}-{line.number}"))
            if len(page) >= DISCARD_PAGE:
                self.store.discard_job_records(batch.id, page)
                page = []
        if page:
            self.store.discard_job_records(batch.id, page)

    def _finish(self, batch: StoredBatch, final: str, source: Path | None = None) -> None:
        """Write the output and error files from the committed lines (and, for a batch
        cancelled or expired, the lines never asked: ``_final_lines``); end ``final``."""
        files = self.worker.files
        made: list[OutputFile] = []
        with files.staged() as out_path, files.staged() as err_path:
            counts = {True: 0, False: 0}
            with (
                out_path.open("w", encoding="utf-8") as out,
                err_path.open("w", encoding="utf-8") as err,
            ):
                for ok, output in self._final_lines(batch, final, source):
                    (out if ok else err).write(output + "\n")
                    counts[ok] += 1
            for ok, path, kind in ((True, out_path, "output"), (False, err_path, "error")):
                if counts[ok]:
                    digest, size = files.keep(path, batch.tenant)
                    made.append(OutputFile(kind, f"{batch.id}_{kind}.jsonl", size, digest))
        try:
            ended = self.store.finish_batch(batch.id, self.worker.holder, final, made)
        except BaseException:
            for f in made:
                files.discard_unused(f.digest)
            raise
        self._ended(ended)

    def _ended(self, batch: StoredBatch) -> None:
        """Log and count a batch this server ended."""
        self.worker.metrics.batches_ended.labels(batch.tenant, batch.status).inc()
        log.info(
            "batch %s of tenant %s %s: %d of %d requests completed, %d failed",
            batch.id, batch.tenant, batch.status, batch.completed, batch.total, batch.failed,
        )  # fmt: skip

    def _final_lines(
        self, batch: StoredBatch, final: str, source: Path | None
    ) -> Iterator[tuple[bool, str]]:
        """Every output line, in the input's order: the committed ones; for a batch that
        ended ``cancelled`` or ``expired`` after its input was checked, each line never
        asked is in the error file as OpenAI writes it (``response`` null, ``error``
        ``batch_cancelled`` / ``batch_expired``)."""
        committed = self.store.batch_lines(batch.id)
        if final not in UNASKED or source is None or "in_progress" not in batch.times:
            yield from ((line.ok, line.output) for line in committed)
            return
        code, message = UNASKED[final]
        pending = next(committed, None)
        for line in input_lines(source, batch.endpoint):
            if pending is not None and pending.line == line.number:
                yield pending.ok, pending.output
                pending = next(committed, None)
                continue
            never = {
                "id": _line_id(f"{batch.id}-{line.number}"),
                "custom_id": line.custom_id,
                "response": None,
                "error": {"code": code, "message": message},
            }
            yield False, json.dumps(never, ensure_ascii=False)


def _line_id(rid: str) -> str:
    """The output line's ``id`` for the line whose record id is ``rid``."""
    return f"batch_req_{hashlib.sha256(rid.encode()).hexdigest()[:32]}"


def _code(body: Any) -> str | None:
    error = body.get("error") if isinstance(body, dict) else None
    return error.get("code") if isinstance(error, dict) else None


def batch_key(store: Store, batch: StoredBatch) -> ApiKey | None:
    """The key a batch's lines are asked as: the key that created it or, once that key has
    been rotated since, its successor (the last of the chain made after the batch). A
    rotation replaces a key by one of the same tenant, scopes, limits and budgets, so what
    the old key started goes on when its grace period ends; a batch the old key made during
    its grace (a leaked key being rotated out, say) ends with it. A key revoked along the
    chain is where it stops: revoking is how a leaked key is cut off, with what it
    started."""
    key = store.get_api_key(batch.api_key_id)
    seen = {batch.api_key_id}
    while key is not None and key.revoked_at is None:
        successor = key.rotated_to
        if successor is None or successor in seen:
            break
        seen.add(successor)
        newer = store.get_api_key(successor)
        if newer is not None and newer.created_at <= batch.created_at:
            break  # rotated before the batch was made: it ends with the key that made it
        key = newer
    return key


def _key_problem(key: ApiKey | None, created_by: str) -> InvalidApiKey | None:
    which = (
        "the API key that created this batch"
        if key is None or key.id == created_by
        else f"the API key {key.id} that replaced the one that created this batch"
    )
    if key is None:
        return InvalidApiKey(f"{which} was deleted")
    if key.revoked_at is not None:
        return InvalidApiKey(f"{which} was revoked")
    if key.expires_at is not None and key.expires_at <= datetime.now(UTC):
        return InvalidApiKey(f"{which} has expired")
    return None


__all__ = ["COMPLETION_WINDOWS", "BatchRun", "BatchSettings", "BatchWorker"]
