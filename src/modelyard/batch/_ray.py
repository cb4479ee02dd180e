"""A job's rows answered on a Ray cluster: ``modelyard batch run --ray ADDRESS``.

The driver (the command's process) does everything a local job does (reads and
checks the input, holds the job's state and lock, discards the records of the
rows it is about to answer, commits results, writes the output); only the
answering moves. ``RayJobRunner`` starts a pool of actors (``_RowActor``) once
for the job: each actor opens its own store connection, artifact store and
engine from the driver's settings (``WorkerSpec``) and runs its own
``InProcessPlane``, so a row meets the same traffic plan, limits, storage
policy and records as in a local job. The driver reads the rows still to answer
as it goes, a block of ``concurrency`` rows at a time, and keeps at most
``in_flight`` blocks sent to each actor (``_Window``): a block's results coming
back make room for the next block, so the driver never holds more than
``actors x in_flight`` blocks of rows, whatever the job's size (a job once
built every block before the first answer). An actor returns a block's results
only after their records are written; the driver commits what it receives to
the job's parts. So exactly once holds as locally: a row is in the output only
once its record is written, and a run that stopped (the driver killed, an actor
lost) is resumed by the same command, which answers again only the rows not
committed, their earlier records discarded first. Actors are started with no
restarts and their calls with no retries: a lost actor stops the job rather than
having its block answered again elsewhere.

Ray is imported only here, and only when a job asks for it (``import_ray``):
it is an optional extra (``pip install "modelyard[ray]"``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import re
import socket
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from modelyard.batch._asking import operator_version
from modelyard.batch._rows import JobSummary, Row, RowResult, RowSink
from modelyard.batch._runner import JobRunner, JobSettings, Progress
from modelyard.batch._worker import WorkerSpec
from modelyard.errors import ConfigError, ModelyardError
from modelyard.serving import InProcessPlane
from modelyard.store import ApiKey

INSTALL = 'pip install "modelyard[ray]"'
log = logging.getLogger(__name__)
_ADDRESS = re.compile(r"^(auto|local|ray://[^\s/]+|[A-Za-z0-9.\-\[\]:]+:\d+)$")


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a job runs: the cluster at ``address`` (``auto``: the one this
    machine belongs to; ``local``: a new one on this machine for this job alone;
    ``ray://HOST:10001``; ``HOST:6379``), ``actors`` actors of ``cpus`` CPUs and
    ``gpus`` GPUs each."""

    address: str = "auto"
    actors: int = 1
    cpus: float = 1.0
    gpus: float = 0.0

    def __post_init__(self) -> None:
        if not _ADDRESS.match(self.address):
            raise ConfigError(
                f"--ray {self.address!r} is not a Ray address",
                hint="Give auto (the cluster this machine belongs to), local (a Ray for "
                "this job on this machine), ray://HOST:10001 or HOST:6379.",
            )
        if self.actors < 1:
            raise ConfigError(f"--ray-actors is {self.actors}; it must be at least 1")
        if self.cpus <= 0 or self.gpus < 0:
            raise ConfigError("--ray-cpus must be above 0 and --ray-gpus 0 or more")


def import_ray() -> Any:
    """Ray, imported now; a ConfigError saying how to install it when it is not (Ray is an
    optional extra). The job needs Ray's core alone (actors, ``ray.wait``), not Ray Data."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            f"--ray needs Ray, which is not installed here ({exc.msg})",
            hint=f"Install it with: {INSTALL}",
        ) from exc
    return ray


@contextmanager
def ray_cluster(options: RayOptions, *, store_dialect: str) -> Iterator[None]:
    """Ray connected for the job's length: to ``options.address``, or, when this process
    has Ray already, that one. A Ray this started (``local``) is shut down at the end,
    its processes with it. Refused before anything is written (ConfigError): Ray missing,
    a cluster it cannot reach, fewer CPUs or GPUs than the actors ask, a SQLite store
    with actors on other machines."""
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        _init(ray, options)
        started = True
    try:
        _check_resources(ray, options)
        _check_store(ray, store_dialect)
        _note_busy(ray, options)
        yield
    finally:
        if started:
            ray.shutdown()


def _init(ray: Any, options: RayOptions) -> None:
    local: dict[str, Any] = {}
    if options.address == "local":  # exactly what the actors ask, no more
        local = {
            "num_cpus": math.ceil(options.actors * options.cpus),
            "num_gpus": math.ceil(options.actors * options.gpus),
            "include_dashboard": False,
        }
    try:
        ray.init(address=options.address, log_to_driver=False, logging_level=logging.WARNING,
                 **local)  # fmt: skip
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(
            f"cannot reach the Ray cluster at {options.address}: {_last_line(exc)}",
            hint="Start one (`ray start --head` on its head node, then `ray start "
            "--address HEAD:6379` on the others), or give its address (RAY_ADDRESS for "
            "auto); --ray local runs one on this machine for this job.",
        ) from exc


def _check_resources(ray: Any, options: RayOptions) -> None:
    """Actors that ask for more than the cluster has would wait for ever, silently."""
    have = ray.cluster_resources()
    for name, each in (("CPU", options.cpus), ("GPU", options.gpus)):
        wanted = options.actors * each
        if wanted > have.get(name, 0.0) + 1e-9:
            flag = f"--ray-{name.lower()}s"
            raise ConfigError(
                f"{options.actors} actors of {each:g} {name} each need {wanted:g} {name}s; "
                f"the Ray cluster has {have.get(name, 0.0):g}",
                hint=f"Ask for fewer: --ray-actors, {flag} (or add nodes first).",
            )


def _note_busy(ray: Any, options: RayOptions) -> None:
    """Actors that fit the cluster but not what other jobs leave free wait, and Ray says
    nothing: the job would seem to hang at its first row. Say so, once, and wait."""
    free = ray.available_resources()
    for name, each in (("CPU", options.cpus), ("GPU", options.gpus)):
        wanted = options.actors * each
        if wanted > free.get(name, 0.0) + 1e-9:
            log.warning(
                "waiting for the Ray cluster: %d actors of %g %s each need %g %ss and %g are "
                "free now (other jobs hold the rest); the job starts when they are",
                options.actors, each, name, wanted, name, free.get(name, 0.0),
            )  # fmt: skip
            return


def _check_store(ray: Any, dialect: str) -> None:
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if dialect == "sqlite" and len(nodes) > 1:
        raise ConfigError(
            f"the store is a SQLite file on this machine; the Ray cluster's {len(nodes)} "
            "nodes cannot all write to it",
            hint="Use a PostgreSQL store (MODELYARD_STORE_URL=postgresql://...) that every "
            "node reaches, and artifacts they all read (s3://... or a shared directory).",
        )


@dataclass(frozen=True)
class _ActorJob:
    """What each actor is built from: plain values, sent through the cluster."""

    worker: WorkerSpec
    key: ApiKey  # authenticated by the driver (an entity: the secret itself never travels)
    job_id: str
    settings: JobSettings
    prices: Mapping[str, tuple[float, float]]
    pinned: bool  # an operator's job: settings.endpoint is the version's ref


class _RowActor:
    """One actor of a job: its own store connection, engine and data plane, answering the
    blocks of rows the driver sends it, several blocks at once but at most
    ``settings.concurrency`` rows."""

    def __init__(self, job: _ActorJob) -> None:
        try:
            self._store, self._engine = job.worker.open()
            pinned = None
            if job.pinned:
                pinned = operator_version(self._store, job.settings.endpoint, job.key.tenant)
            self._plane = InProcessPlane(
                self._store, self._engine, limits=job.worker.limits, pinned=pinned
            ).start()
        except ModelyardError as exc:  # its one line reaches the driver's error
            raise RuntimeError(f"a Ray actor on {socket.gethostname()}: {exc.one_line()}") from exc
        self._runner = JobRunner(self._plane, job.key, job.job_id, job.settings, job.prices)
        self._slots: asyncio.Semaphore | None = None

    async def answer(self, rows: Sequence[Row]) -> list[RowResult]:
        """A block of rows in, their results out, once their records are written."""
        if self._slots is None:  # made on the actor's event loop, where it is used
            self._slots = asyncio.Semaphore(self._runner.settings.concurrency)
        results = await asyncio.gather(*(self._one(row) for row in rows))
        await asyncio.to_thread(self._runner.ensure_recorded, results)
        return results

    async def _one(self, row: Row) -> RowResult:
        assert self._slots is not None
        async with self._slots:
            return await self._runner.answer(row)


IN_FLIGHT = 4
"""Blocks of rows each actor holds at once by default: one being answered, the next ones
filling its slots as the first's rows end, while its results travel back."""


class _Window:
    """The blocks sent to a job's actors and not back yet: at most ``in_flight`` per actor,
    each sent to the actor with the fewest."""

    def __init__(self, ray: Any, actors: Sequence[Any], in_flight: int) -> None:
        self._ray, self._actors, self.in_flight = ray, actors, in_flight
        self._load = [0] * len(actors)
        self._sent: dict[Any, int] = {}  # a block's results (an ObjectRef) -> its actor

    def __len__(self) -> int:
        return len(self._sent)

    @property
    def full(self) -> bool:
        return len(self._sent) >= self.in_flight * len(self._actors)

    def send(self, rows: Sequence[Row]) -> None:
        actor = min(range(len(self._actors)), key=self._load.__getitem__)
        self._sent[self._actors[actor].answer.remote(rows)] = actor
        self._load[actor] += 1

    def back(self, wait_s: float) -> Iterator[list[RowResult]]:
        """The results of the blocks that came back within ``wait_s`` seconds (at least
        one, if any does); a failure of Ray's (an actor that could not start or was lost)
        as one ModelyardError."""
        ready, _ = self._ray.wait(list(self._sent), num_returns=1, timeout=wait_s)
        for ref in ready:
            self._load[self._sent.pop(ref)] -= 1
            yield _got(self._ray, ref)


def _got(ray: Any, ref: Any) -> list[RowResult]:
    try:
        results: list[RowResult] = ray.get(ref)
    except ModelyardError:
        raise
    except ray.exceptions.RayActorError as exc:
        if exc.actor_init_failed:  # its own error (the engine, the store) says why
            raise _failed(exc) from exc
        raise _lost(exc) from exc
    except Exception as exc:  # the job stops; the rows not committed are answered again
        raise _failed(exc) from exc
    return results


class RayJobRunner(JobRunner):
    """``JobRunner`` with the rows answered by Ray actors (see the module's docstring); the
    driver's ``plane`` only authenticates and discards. ``options`` say where and how
    wide, ``worker`` what each actor builds, ``in_flight`` how many blocks of
    ``concurrency`` rows each actor is sent at once."""

    def __init__(
        self,
        plane: InProcessPlane,
        key: ApiKey,
        job_id: str,
        settings: JobSettings,
        prices: Mapping[str, tuple[float, float]] | None = None,
        *,
        options: RayOptions,
        worker: WorkerSpec,
        in_flight: int = IN_FLIGHT,
    ) -> None:
        super().__init__(plane, key, job_id, settings, prices)
        if in_flight < 1:
            raise ConfigError(f"in_flight is {in_flight}; it must be at least 1")
        self.options, self.worker, self.in_flight = options, worker, in_flight

    def answer_rows(
        self, rows: Iterable[Row], sink: RowSink, summary: JobSummary, progress: Progress | None
    ) -> None:
        ray = import_ray()
        job = _ActorJob(self.worker, self.key, self.job_id, self.settings, self.prices,
                        pinned=self.plane.endpoint is not None)  # fmt: skip
        # no restarts, no retries: an actor lost must stop the job, the same command
        # resuming it, since a block retried elsewhere would answer rows whose records the
        # lost actor may have written already
        kind = ray.remote(_RowActor).options(
            num_cpus=self.options.cpus, num_gpus=self.options.gpus or None,
            max_restarts=0, max_task_retries=0,
        )  # fmt: skip
        actors = [kind.remote(job) for _ in range(self.options.actors)]
        window = _Window(ray, actors, self.in_flight)
        blocks = _blocks(rows, self.settings.concurrency)
        staged: list[RowResult] = []
        last = time.monotonic()
        try:
            while True:
                # the next blocks read only as earlier ones come back: at most the window's
                while not window.full and not summary.stopped:
                    block = next(blocks, None)
                    if block is None:
                        break
                    window.send(block)
                if not window:
                    break  # every block back (or the job stopped and the rest came back)
                for results in window.back(self.settings.commit_s):
                    staged += results
                    summary.answered += len(results)
                    for result in results:
                        summary.add(result)
                    if progress is not None:
                        progress(summary.skipped + summary.answered, summary.rows)
                    self._too_many_errors(summary)  # the blocks sent still come back
                due = time.monotonic() - last >= self.settings.commit_s
                if staged and (due or len(staged) >= self.settings.commit_rows):
                    group, staged, last = staged, [], time.monotonic()
                    sink.commit(group)
        finally:
            try:
                if staged:  # their records are written: keep what came back, whatever stops it
                    sink.commit(staged)
            finally:
                for actor in actors:  # a block still out is answered again by the next run
                    ray.kill(actor)


def _blocks(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    """``rows`` in blocks of ``size``, each read when it is asked for."""
    rest = iter(rows)
    while block := list(itertools.islice(rest, size)):
        yield block


def _failed(exc: BaseException) -> ModelyardError:
    """A Ray failure as one error: the ModelyardError behind it, else its last line."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, ModelyardError):
            return cause
        seen.add(id(cause))
        inner = getattr(cause, "cause", None)
        cause = inner if isinstance(inner, BaseException) else cause.__cause__
    return ModelyardError(
        f"the job's Ray actors failed: {_last_line(exc)}",
        hint="Ray's logs say more (its dashboard, or /tmp/ray/session_latest/logs on each "
        "node). Fix the cause, then run the same command again to go on from the rows kept.",
    )


def _lost(exc: BaseException) -> ModelyardError:
    """An actor lost while it held blocks (its process killed, out of memory, its node
    gone): one line saying so and where, not Ray's page of possible causes."""
    text = str(exc)
    pid, ip = (re.search(rf"^\s*{name}: (\S+)", text, re.M) for name in ("pid", "ip"))
    where = " ".join(f"{label} {m.group(1)}" for label, m in (("pid", pid), ("on", ip)) if m)
    kind = re.search(r"Worker exit type: (\w+)", text)
    where = f" ({where})" if where else ""
    exit_type = f"; exit type {kind.group(1)}" if kind else ""
    return ModelyardError(
        f"a Ray actor of the job was lost: its process{where} died (killed, out of memory, "
        f"or its node gone{exit_type})",
        hint="The rows answered before are kept: run the same command again to answer the "
        "others, each keeping one record. Ray's logs on that node say why "
        "(/tmp/ray/session_latest/logs).",
    )


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


__all__ = ["INSTALL", "RayJobRunner", "RayOptions", "import_ray", "ray_cluster"]
