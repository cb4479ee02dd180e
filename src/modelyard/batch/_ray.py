"""A job's rows answered on a Ray cluster: ``modelyard batch run --ray ADDRESS``.

The driver (the command's process) does everything a local job does (reads and
checks the input, holds the job's state and lock, discards the records of the
rows it is about to answer, commits results, writes the output); only the
answering moves. ``RayJobRunner`` hands the rows still to answer to Ray Data
as blocks of ``(key, number, messages)`` and ``map_batches`` them through a
pool of actors (``_RowActor``): each actor opens its own store connection,
artifact store and engine from the driver's settings (``WorkerSpec``) and runs
its own ``InProcessPlane``, so a row meets the same traffic plan, limits,
storage policy and records as in a local job. An actor returns a block's
results only after their records are written; the driver commits what it
receives to the job's parts. So exactly once holds as locally: a row is in
the output only once its record is written, and a run that stopped (the
driver killed, an actor lost) is resumed by the same command, which answers
again only the rows not committed, their earlier records discarded first.

Ray is imported only here, and only when a job asks for it (``import_ray``):
it is an optional extra (``pip install "modelyard[ray]"``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import re
import socket
import time
import warnings
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
    """Ray with Ray Data, imported now; a ConfigError saying how to install them when they
    are not (Ray is an optional extra)."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ConfigError(
            f"--ray needs Ray Data, which is not installed here ({exc.msg})",
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
        _quiet(ray)
        _check_resources(ray, options)
        _check_store(ray, store_dialect)
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


def _quiet(ray: Any) -> None:
    """The command shows its own progress: none of Ray Data's bars and start-up lines."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "disabled"


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
    blocks of rows Ray Data hands it, several blocks at once but at most
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

    async def __call__(self, block: Any) -> Any:
        """A block of rows in, the block of their results out, once their records are
        written."""
        if self._slots is None:  # made on Ray Data's event loop, where it is used
            self._slots = asyncio.Semaphore(self._runner.settings.concurrency)
        rows = [
            Row(key, tuple(json.loads(messages)), number)
            for key, number, messages in zip(
                block.column("key").to_pylist(),
                block.column("number").to_pylist(),
                block.column("messages").to_pylist(),
                strict=True,
            )
        ]
        results = await asyncio.gather(*(self._one(row) for row in rows))
        await asyncio.to_thread(self._runner.ensure_recorded, results)
        return _results_block(results)

    async def _one(self, row: Row) -> RowResult:
        assert self._slots is not None
        async with self._slots:
            return await self._runner.answer(row)


def _rows_block(rows: Sequence[Row]) -> Any:
    import pyarrow as pa  # type: ignore[import-untyped]

    return pa.table(
        {
            "key": pa.array([r.key for r in rows], pa.string()),
            "number": pa.array([r.number for r in rows], pa.int64()),
            "messages": pa.array([json.dumps(list(r.messages)) for r in rows], pa.string()),
        }
    )


def _results_block(results: Sequence[RowResult]) -> Any:
    import pyarrow as pa

    return pa.table(
        {
            "key": pa.array([r.key for r in results], pa.string()),
            "result": pa.array([json.dumps(r.to_json()) for r in results], pa.string()),
        }
    )


class RayJobRunner(JobRunner):
    """``JobRunner`` with the rows answered by Ray actors (see the module's docstring); the
    driver's ``plane`` only authenticates and discards. ``options`` say where and how
    wide, ``worker`` what each actor builds."""

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
    ) -> None:
        super().__init__(plane, key, job_id, settings, prices)
        self.options, self.worker = options, worker

    def answer_rows(
        self, rows: Iterable[Row], sink: RowSink, summary: JobSummary, progress: Progress | None
    ) -> None:
        ray = import_ray()
        job = _ActorJob(self.worker, self.key, self.job_id, self.settings, self.prices,
                        pinned=self.plane.endpoint is not None)  # fmt: skip
        size = self.settings.concurrency  # Ray Data runs several blocks of an actor at once
        # the rows as Arrow blocks (a key, a number and the messages' JSON each): the
        # driver holds those of the rows to answer, not a Row object per row
        rest = iter(rows)
        blocks = []
        while chunk := list(itertools.islice(rest, size)):
            blocks.append(_rows_block(chunk))
        with warnings.catch_warnings():
            # max_restarts has no named parameter yet (Ray 2.60 warns about the others'
            # catch-all): an actor lost must stop the job, the same command resuming it,
            # since a block retried elsewhere would answer rows whose records the lost
            # actor may have written already
            warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated")
            answered = ray.data.from_arrow(blocks).map_batches(
                _RowActor, fn_constructor_kwargs={"job": job}, batch_size=None,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=self.options.actors),
                num_cpus=self.options.cpus, num_gpus=self.options.gpus or None,
                max_restarts=0,
            )  # fmt: skip
        staged: list[RowResult] = []
        last = time.monotonic()
        try:
            for results in _answers(answered):
                staged += results
                summary.answered += len(results)
                for result in results:
                    summary.add(result)
                due = time.monotonic() - last >= self.settings.commit_s
                if due or len(staged) >= self.settings.commit_rows:
                    group, staged, last = staged, [], time.monotonic()
                    sink.commit(group)
                if progress is not None:
                    progress(summary.skipped + summary.answered, summary.rows)
                if self._too_many_errors(summary):
                    break
        finally:
            if staged:  # their records are written: keep what came back, whatever stops it
                sink.commit(staged)


def _answers(answered: Any) -> Iterator[list[RowResult]]:
    """The results of each block as the actors finish it; a failure of Ray's (an actor
    that could not start or was lost) as one ModelyardError."""
    try:
        for block in answered.iter_batches(batch_size=None, batch_format="pyarrow"):
            yield [
                RowResult.from_json(json.loads(text), "a Ray actor's answer")
                for text in block.column("result").to_pylist()
            ]
    except ModelyardError:
        raise
    except Exception as exc:  # the job stops; the rows not committed are answered again
        raise _failed(exc) from exc


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


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


__all__ = ["INSTALL", "RayJobRunner", "RayOptions", "import_ray", "ray_cluster"]
