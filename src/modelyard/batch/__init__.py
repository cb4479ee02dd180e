"""Batch inference over the data plane: ``modelyard batch run``.

A job reads rows (``RowSource``: an input file here, ``ListSource`` of
``Row``\\ s), asks each through the same data plane as the HTTP API
(``serving.InProcessPlane``: traffic plans, tenants' limits, storage policy,
records marked ``batch`` with the job's id, costs) several at once, and keeps
each ``RowResult`` in a ``RowSink`` durably: ``JobRunner`` is that loop, and
knows nothing of files. ``run_file_job`` runs a ``FileJobSpec`` (JSONL, CSV or
Parquet in and out, a ``ColumnMapping`` from columns to the request), a row at
a time, never holding the input or the results whole, and resumes a job that
stopped at any instant without answering a row twice in its output or its
records (``FileJob``, ``PartsSink``). ``JobSummary`` is what a job
did: rows, failures, tokens, cost. ``RayJobRunner`` answers a job's rows on a Ray
cluster (``RayOptions``, ``ray_cluster``: Ray is an optional extra, imported only
then), each actor building its engine and store from an ``EngineSpec`` and a
``WorkerSpec``. ``job_plane`` is what every job asks through, checked first.
"""

from modelyard.batch._asking import JobPlane, check_upstream_keys, job_plane, job_versions
from modelyard.batch._files import FileJobSpec, RunnerFactory, read_input, run_file_job
from modelyard.batch._mapping import ROLES, ColumnMapping
from modelyard.batch._parts import FileJob, PartsSink, state_dir
from modelyard.batch._ray import RayJobRunner, RayOptions, import_ray, ray_cluster
from modelyard.batch._rows import (
    RESULT_COLUMNS,
    JobSummary,
    ListSource,
    Row,
    RowResult,
    RowSink,
    RowSource,
)
from modelyard.batch._runner import JobRunner, JobSettings
from modelyard.batch._tables import table_kind, write_table
from modelyard.batch._worker import EngineSpec, WorkerSpec

__all__ = [
    "RESULT_COLUMNS",
    "ROLES",
    "ColumnMapping",
    "EngineSpec",
    "FileJob",
    "FileJobSpec",
    "JobPlane",
    "JobRunner",
    "JobSettings",
    "JobSummary",
    "ListSource",
    "PartsSink",
    "RayJobRunner",
    "RayOptions",
    "Row",
    "RowResult",
    "RowSink",
    "RowSource",
    "RunnerFactory",
    "WorkerSpec",
    "check_upstream_keys",
    "import_ray",
    "job_plane",
    "job_versions",
    "ray_cluster",
    "read_input",
    "run_file_job",
    "state_dir",
    "table_kind",
    "write_table",
]
