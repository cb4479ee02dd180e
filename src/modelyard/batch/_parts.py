"""A file job's state on disk: ``OUTPUT.batch/``, its committed parts, and the output.

While a job writing ``OUTPUT`` runs, ``OUTPUT.batch/`` holds:

- ``job.json``: the job's id and the settings its answers depend on (the input's
  sha256, the endpoint or version, the mapping, the sampling parameters);
  written once, whole, before any row is sent;
- ``lock``: held (``flock``) by the one run writing the job; the kernel lets it
  go when that process dies, ``kill -9`` included;
- ``part-00000001.jsonl``, ...: the committed results, one file per commit,
  each written whole under a temporary name and renamed into place (``_tables``).

A run that starts on an existing ``OUTPUT.batch/`` resumes it (with the same
settings only); when every row is answered, ``OUTPUT`` is written from the
parts in the input's order (one row per input row, whole, renamed into place)
and the directory removed, leaving ``.OUTPUT.batch.json`` (``job.json`` of the
finished job) beside it: a later run of the same command finds the output whole
and does nothing, and one with other settings or an edited input is refused
rather than taking the old answers for new ones. Any instant a run dies at leaves
either the parts as they were or the whole output; the next run finishes what is
missing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from modelyard.batch._rows import RESULT_COLUMNS, RowResult
from modelyard.batch._tables import fsync_dir, json_lines, write_atomic, write_table
from modelyard.errors import ConfigError, Conflict, DataError

ROW_COLUMN = "row"  # the input's 1-based row number, first in every output row


def state_dir(output: Path) -> Path:
    """Where the job writing ``output`` keeps its state while it runs."""
    return output.with_name(output.name + ".batch")


def done_file(output: Path) -> Path:
    """Where a finished job's ``job.json`` stays beside ``output``: what it was answered
    with, so a run with other settings is not told the old answers are its own."""
    return output.with_name(f".{output.name}.batch.json")


def finished_job(output: Path, settings: Mapping[str, Any]) -> str | None:
    """The id of the finished job that wrote ``output`` with ``settings``; None when no
    finished job's record is beside it (an output written before records were kept). A
    job of other settings is a ConfigError naming the first that differs."""
    path = done_file(output)
    if not path.exists():
        return None
    try:
        job = json.loads(path.read_text(encoding="utf-8"))
        before, job_id = job["settings"], str(job["id"])
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise DataError(
            f"{path} is not the record of a finished batch job ({exc})",
            hint="Pass --overwrite to answer the rows again.",
        ) from exc
    _same_settings(before, settings, f"the output {output} was written", fresh=True)
    return job_id


class PartsSink:
    """A ``RowSink`` over a directory of part files: one new file per commit."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._answered: dict[str, RowResult] = {}
        self._next = 1
        for path in sorted(directory.glob("part-*.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                result = RowResult.from_json(json.loads(line), str(path))
                self._answered[result.key] = result
            self._next = max(self._next, int(path.stem.removeprefix("part-")) + 1)
        for tmp in directory.glob(".*.tmp"):  # a part a stopped run did not finish
            tmp.unlink(missing_ok=True)

    def answered(self) -> Mapping[str, RowResult]:
        return dict(self._answered)

    def commit(self, results: Sequence[RowResult]) -> None:
        if not results:
            return
        path = self.directory / f"part-{self._next:08d}.jsonl"
        write_atomic(path, json_lines([r.to_json() for r in results]))
        self._next += 1
        self._answered.update((r.key, r) for r in results)


class FileJob:
    """One job writing one output file (see the module's docstring). ``open`` it, run its
    ``sink``, then ``finish`` it; ``close`` lets its lock go."""

    def __init__(self, output: Path, job_id: str, resumed: bool, lock: TextIO) -> None:
        self.output, self.job_id, self.resumed = output, job_id, resumed
        self.state = state_dir(output)
        self._lock = lock
        self.sink = PartsSink(self.state)

    @classmethod
    def open(cls, output: Path, settings: Mapping[str, Any], *, overwrite: bool) -> FileJob:
        """The job writing ``output``: resumed from its state when there is one (with the
        same ``settings`` only), else a new one; ``overwrite`` starts over."""
        state = state_dir(output)
        if overwrite:
            shutil.rmtree(state, ignore_errors=True)
            output.unlink(missing_ok=True)
            done_file(output).unlink(missing_ok=True)
        resumed = state.is_dir()
        if not resumed:
            resumed = not _create(state, settings)  # False: another run created it first
        lock = _lock(state, output)
        try:
            job = _read_job(state)
            _same_settings(job["settings"], settings, f"the job in {state} was started")
            return cls(output, str(job["id"]), resumed, lock)
        except BaseException:
            lock.close()
            raise

    def finish(
        self,
        table: Sequence[Mapping[str, Any]],
        id_columns: Sequence[str],
    ) -> None:
        """Write the output (one row per input row, in order) and remove the state."""
        answered = self.sink.answered()
        rows = []
        for number, values in enumerate(table, start=1):
            result = answered[str(number)]
            out: dict[str, Any] = {ROW_COLUMN: number}
            out |= {c: values.get(c) for c in id_columns}
            out |= {c: getattr(result, c) for c in RESULT_COLUMNS}
            rows.append(out)
        write_table(self.output, rows, [ROW_COLUMN, *id_columns, *RESULT_COLUMNS])
        write_atomic(done_file(self.output), (self.state / "job.json").read_bytes())
        shutil.rmtree(self.state, ignore_errors=True)
        fsync_dir(self.output.parent)

    def close(self) -> None:
        self._lock.close()


def _create(state: Path, settings: Mapping[str, Any]) -> bool:
    """Create ``state`` whole (job.json in a directory renamed into place); False when
    another run created it first."""
    tmp = state.with_name(f".{state.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir(parents=True)
    try:
        job = {"id": f"batch-{uuid.uuid4().hex[:12]}", "settings": settings}
        write_atomic(tmp / "job.json", json.dumps(job, indent=2, sort_keys=True).encode())
        try:
            tmp.rename(state)
        except OSError:
            if state.is_dir():
                return False
            raise
        fsync_dir(state.parent)
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _lock(state: Path, output: Path) -> TextIO:
    handle = (state / "lock").open("a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise Conflict(
            f"another `modelyard batch run` is writing {output} now (it holds {state}/lock)",
            hint="Wait for it to end, or stop it; a stopped job resumes when its command "
            "runs again.",
        ) from None
    return handle


def _read_job(state: Path) -> dict[str, Any]:
    try:
        job = json.loads((state / "job.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{state} is not the state of a batch job ({exc})",
            hint="Remove it, or pass --overwrite to start the job over.",
        ) from exc
    if not isinstance(job, dict) or "id" not in job or "settings" not in job:
        raise DataError(f"{state}/job.json is not a batch job's", hint="Pass --overwrite.")
    return job


_LATER = frozenset({"engine"})
"""Settings a job's state did not always keep."""


def _same_settings(
    before: Mapping[str, Any], now: Mapping[str, Any], what: str, *, fresh: bool = False
) -> None:
    """A job resumes (or is found done) with the settings it started with, or its rows would
    be answered two ways: the first that differs is a ConfigError naming it. ``what`` says
    whose settings ``before`` are; ``fresh``: a finished job's, which only a new job with
    --overwrite (or another output) replaces."""
    for name in sorted(set(before) | set(now)):
        if name in _LATER and name not in before:
            continue  # a job started before the setting was kept
        if before.get(name) != now.get(name):
            hint = (
                "Pass --overwrite to answer every row again with these settings, or write "
                "to another output."
                if fresh
                else "Run the job's own command again to resume it, or pass --overwrite to "
                "start over."
            )
            raise ConfigError(
                f"{what} with {name} {_shown(before.get(name))}, not {_shown(now.get(name))}",
                hint=hint,
                setting=name,
            )


def _shown(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def finished_output(path: Path, rows: int) -> list[RowResult] | None:
    """The results in ``path`` when it is the whole output of a finished job of ``rows``
    rows (one per row, the result columns there), else None."""
    from modelyard.data import read_rows

    with contextlib.suppress(DataError):
        table = read_rows(path)
        if len(table) == rows and all(c in table[0] for c in RESULT_COLUMNS):
            return [_result_of(str(i), row) for i, row in enumerate(table, start=1)]
    return None


def _result_of(key: str, row: Mapping[str, Any]) -> RowResult:
    def text(name: str) -> str | None:
        value = row.get(name)
        return None if value in (None, "") else str(value)

    return RowResult(
        key, text("answer"), text("finish_reason"), int(row.get("prompt_tokens") or 0),
        int(row.get("completion_tokens") or 0), text("version"), text("record_id"),
        text("error"),
    )  # fmt: skip


__all__ = [
    "ROW_COLUMN",
    "FileJob",
    "PartsSink",
    "done_file",
    "finished_job",
    "finished_output",
    "state_dir",
]
