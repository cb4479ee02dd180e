"""``modelyard batch run`` over files: an input table in, the same table of answers out.

``run_file_job`` checks everything before anything is written (the input
parses as its extension says, every row can be asked, the ids tell rows apart,
the endpoint exists for the key and the key has the ``infer`` scope, or the
pinned version exists), then runs the job (``JobRunner``) into its state
(``FileJob``) and, when every row is answered, writes the output. The input is
read a row at a time each time (``InputFile``): a job's memory does not grow with it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelyard.batch._asking import job_plane
from modelyard.batch._input import InputFile
from modelyard.batch._mapping import ColumnMapping
from modelyard.batch._parts import (
    ROW_COLUMN,
    FileJob,
    finished_job,
    finished_output,
    state_dir,
)
from modelyard.batch._rows import RESULT_COLUMNS, JobSummary
from modelyard.batch._runner import JobRunner, JobSettings, Progress
from modelyard.batch._tables import table_kind
from modelyard.errors import ConfigError
from modelyard.serving import (
    MAX_STOP,
    MAX_STOP_CHARS,
    Engine,
    InProcessPlane,
    SamplingParams,
    ServerLimits,
)
from modelyard.store import ApiKey, Store

"""What the chat route takes of ``stop`` (``serving``'s request model): a row is asked as
the route would be asked."""

RunnerFactory = Callable[
    [InProcessPlane, ApiKey, str, JobSettings, Mapping[str, tuple[float, float]]], JobRunner
]
"""Makes a job's runner from (plane, key, job id, settings, token prices): ``JobRunner``."""


@dataclass(frozen=True)
class FileJobSpec:
    """One file job: ``input`` to ``output`` (JSONL, CSV or Parquet each), asked through
    ``endpoint`` with ``api_key``, or, by an operator, of the version ``model`` alone
    (records under ``tenant``, default the model's owner)."""

    input: Path
    output: Path
    params: SamplingParams
    mapping: ColumnMapping = dataclasses.field(default_factory=ColumnMapping)
    id_columns: tuple[str, ...] = ()
    endpoint: str | None = None
    api_key: str | None = None
    model: str | None = None
    tenant: str | None = None
    concurrency: int = 16
    max_errors: int | None = None
    overwrite: bool = False
    engine: str | None = None  # the engine's kind (echo, transformers): the answers depend on it

    def __post_init__(self) -> None:
        if (self.endpoint is None) == (self.model is None):
            raise ConfigError(
                "give either an endpoint (with an API key) or an operator's version (--model)"
            )
        if self.endpoint is not None and not self.api_key:
            raise ConfigError(
                f"calling endpoint {self.endpoint!r} needs a tenant's API key",
                hint="Pass --api-key (or set MODELYARD_API_KEY), or, as an operator, name a "
                "version with --model NAME:VERSION.",
            )
        if self.model is not None and self.api_key:
            raise ConfigError(
                "--model runs a version as an operator, with no API key",
                hint="Drop the key (--api-key, or MODELYARD_API_KEY in the environment: "
                "`unset MODELYARD_API_KEY`), or call an endpoint with it (--endpoint).",
            )
        if self.input.resolve() == self.output.resolve():
            raise ConfigError(
                f"the output {self.output} is the input file itself",
                hint="Write the answers to another file (-o): the input is read again when a "
                "stopped job resumes.",
            )
        if self.output.is_dir():
            raise ConfigError(
                f"the output {self.output} is a directory",
                hint="Give -o a file to write (.jsonl, .csv or .parquet), e.g. "
                f"{self.output / 'answers.jsonl'}.",
                field="--output",
            )
        self._check_stops()
        if self.tenant is not None and self.model is None:
            raise ConfigError("--tenant goes with --model (an endpoint's key says the tenant)")
        for column in self.id_columns:
            if column in (ROW_COLUMN, *RESULT_COLUMNS):
                raise ConfigError(
                    f"the id column {column!r} has the name of an output column",
                    hint=f"The output's own columns are {ROW_COLUMN}, {', '.join(RESULT_COLUMNS)}.",
                )

    def _check_stops(self) -> None:
        stops = self.params.stop
        if len(stops) > MAX_STOP:
            raise ConfigError(
                f"--stop is given {len(stops)} times; a request takes at most {MAX_STOP} stop "
                "strings",
                hint="Keep the stop strings that matter (the chat route refuses more too).",
                field="--stop",
            )
        for stop in stops:
            if not stop or len(stop) > MAX_STOP_CHARS:
                raise ConfigError(
                    f"--stop {stop[:40]!r}: a stop string has 1 to {MAX_STOP_CHARS} characters",
                    field="--stop",
                )


@dataclass(frozen=True)
class _Input:
    rows: InputFile  # the rows, read afresh from the file each time they are asked for
    mapping: ColumnMapping
    digest: str


def read_input(spec: FileJobSpec) -> _Input:
    """The input, every row checked (DataError naming a row or column), a row at a time:
    its rows are read again from the file when they are answered, never held."""
    table_kind(spec.input, "the input")
    table_kind(spec.output, "the output")
    rows = InputFile.check(spec.input, spec.mapping, spec.id_columns)
    with spec.input.open("rb") as fh:  # in chunks, never the file whole
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    return _Input(rows, rows.mapping, digest)


def run_file_job(
    store: Store,
    engine: Engine,
    spec: FileJobSpec,
    *,
    limits: ServerLimits | None = None,
    progress: Progress | None = None,
    on_start: Callable[[JobSummary, bool], None] | None = None,
    runner: RunnerFactory = JobRunner,
) -> JobSummary:
    """Run ``spec`` to its end (or ``--max-errors``); the summary of the whole job.

    Bad input (the input, the mapping, the endpoint, the key, the version) raises a
    ConfigError or DataError before anything is written. ``on_start(summary, resumed)``
    is told the job's id and rows once they are known. ``runner`` makes the job's runner
    (a ``RayJobRunner`` answers the rows on a Ray cluster; ``engine`` then answers none).
    """
    given = read_input(spec)
    with job_plane(
        store, engine, endpoint=spec.endpoint, api_key=spec.api_key, model=spec.model,
        tenant=spec.tenant, limits=limits,
    ) as asking:  # fmt: skip
        settings = _settings(spec, given, asking.endpoint)
        done = _finished(spec, given.rows.total, settings)
        if done is not None:
            return done
        job = FileJob.open(spec.output, settings, overwrite=spec.overwrite)
        try:
            job_settings = JobSettings(asking.endpoint, spec.params, spec.concurrency,
                                       spec.max_errors)  # fmt: skip
            job_runner = runner(asking.plane, asking.key, job.job_id, job_settings, asking.prices)
            if on_start is not None:
                on_start(JobSummary(job.job_id, rows=given.rows.total), job.resumed)
            summary = job_runner.run(given.rows, job.sink, progress)
            if summary.stopped is None:
                job.finish(given.rows)
            return summary
        finally:
            job.close()


def _finished(spec: FileJobSpec, rows: int, settings: Mapping[str, Any]) -> JobSummary | None:
    """The summary of a job whose output is already whole (its state gone), else None;
    an output that is not such a job's, or is one of other ``settings`` (an edited input,
    another mapping or sampling), is refused rather than overwritten or taken as this
    job's answers."""
    if spec.overwrite or not spec.output.exists() or state_dir(spec.output).exists():
        return None
    job_id = finished_job(spec.output, settings)
    found = finished_output(spec.output, rows)
    if found is None:
        raise ConfigError(
            f"the output {spec.output} exists and is not this job's",
            hint="Write to another file, or pass --overwrite to replace it.",
        )
    totals, record_id = found
    job_id = job_id or (record_id or "").rpartition("-")[0]  # a record's id: <job>-<row>
    return dataclasses.replace(totals, job_id=job_id, rows=rows, skipped=rows, already_whole=True)


def _settings(spec: FileJobSpec, given: _Input, endpoint: str) -> Mapping[str, Any]:
    """What the answers depend on: a job resumes only with the same."""
    return {
        "input_sha256": given.digest,
        "endpoint": endpoint,
        "tenant": spec.tenant,
        "mapping": given.mapping.describe(),
        "id_columns": list(spec.id_columns),
        "params": _jsonable(dataclasses.asdict(spec.params)),
    } | ({"engine": spec.engine} if spec.engine is not None else {})


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


__all__ = [
    "FileJobSpec",
    "RunnerFactory",
    "read_input",
    "run_file_job",
]
