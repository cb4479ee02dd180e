"""A file job's state on disk: ``OUTPUT.batch/``, its committed parts, and the output.

While a job writing ``OUTPUT`` runs, ``OUTPUT.batch/`` holds:

- ``job.json``: the job's id and the settings its answers depend on (the input's
  sha256, the endpoint or version, the mapping, the sampling parameters);
  written once, whole, before any row is sent;
- ``lock``: held (``flock``) by the one run writing the job; the kernel lets it
  go when that process dies, ``kill -9`` included;
- ``part-00000001.jsonl``, ...: the committed results, one file per commit, in
  row order, each written whole under a temporary name and renamed into place
  (``_tables``).

A run that starts on an existing ``OUTPUT.batch/`` resumes it (with the same
settings only), reading the parts a line at a time (``PartsSink.kept``); when
every row is answered, ``OUTPUT`` is written from the parts merged in the input's
order (``PartsSink.in_order``: a heap over the parts, a line of each at a time,
the id columns read from the input again; one row per input row, whole, renamed
into place)
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
import heapq
import itertools
import json
import shutil
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from modelyard.batch._input import InputFile
from modelyard.batch._rows import RESULT_COLUMNS, JobSummary, RowResult
from modelyard.batch._tables import fsync_dir, json_lines, write_atomic, write_table
from modelyard.errors import ConfigError, Conflict, DataError, ModelyardError

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


class _Unsorted(Exception):
    """A part whose results are not in row order (written before parts were sorted)."""


def _number(result: RowResult, where: str) -> int:
    if not result.key.isdigit():
        raise DataError(
            f"{where} holds a result for {result.key!r}, not for a row of the input",
            hint="Start the job over with --overwrite.",
        )
    return int(result.key)


class _Parts:
    """The part files of a job read at once in row order, through at most ``OPEN`` open
    files (a part not read for a while is opened again at its place)."""

    OPEN = 32

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = paths
        self._at = [0] * len(paths)  # where each part's next line starts
        self._last = [0] * len(paths)  # the row of each part's last result read
        self._open: OrderedDict[int, BinaryIO] = OrderedDict()

    def close(self) -> None:
        for handle in self._open.values():
            handle.close()
        self._open.clear()

    def next(self, i: int) -> tuple[int, RowResult] | None:
        """Part ``i``'s next result and its row; None at its end."""
        handle = self._open.pop(i, None)
        if handle is None:
            handle = self.paths[i].open("rb")
            handle.seek(self._at[i])
        self._open[i] = handle
        if len(self._open) > self.OPEN:
            self._open.popitem(last=False)[1].close()
        while line := handle.readline():
            self._at[i] = handle.tell()
            if not line.strip():
                continue
            result = RowResult.from_json(json.loads(line), str(self.paths[i]))
            number = _number(result, str(self.paths[i]))
            if number < self._last[i]:
                raise _Unsorted(self.paths[i])
            self._last[i] = number
            return number, result
        handle.close()
        del self._open[i]
        return None


class PartsSink:
    """A ``RowSink`` over a directory of part files: one new file per commit, its results
    in row order."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._next = 1
        for path in self._paths():
            self._next = max(self._next, int(path.stem.removeprefix("part-")) + 1)
        for tmp in directory.glob(".*.tmp"):  # a part a stopped run did not finish
            tmp.unlink(missing_ok=True)

    def _paths(self) -> list[Path]:
        return sorted(self.directory.glob("part-*.jsonl"))

    def kept(self) -> Iterator[RowResult]:
        for path in self._paths():
            with path.open("rb") as handle:
                for line in handle:
                    if line.strip():
                        yield RowResult.from_json(json.loads(line), str(path))

    def commit(self, results: Sequence[RowResult]) -> None:
        if not results:
            return
        where = str(self.directory)
        ordered = sorted(results, key=lambda r: _number(r, where))
        path = self.directory / f"part-{self._next:08d}.jsonl"
        write_atomic(path, json_lines(r.to_json() for r in ordered))
        self._next += 1

    def in_order(self) -> Iterator[RowResult]:
        """Every row's result, by row number, once: a row kept twice (failed on the
        server's side, then answered again) gives the later. Raises ``_Unsorted`` at a part
        written before parts were sorted (``sort_parts``)."""
        parts = _Parts(self._paths())
        try:
            heap: list[tuple[int, int, int]] = []
            current: list[RowResult | None] = [None] * len(parts.paths)

            def advance(i: int) -> None:
                found = parts.next(i)
                if found is not None:
                    current[i] = found[1]
                    heapq.heappush(heap, (found[0], -i, i))

            for i in range(len(parts.paths)):
                advance(i)
            last = 0
            while heap:
                number, _, i = heapq.heappop(heap)
                result = current[i]
                current[i] = None
                advance(i)
                if number != last:  # the first of a row is the latest part's
                    assert result is not None
                    yield result
                    last = number
        finally:
            parts.close()

    def sort_parts(self) -> None:
        """Rewrite in row order each part that is not (a job started by an earlier
        modelyard, whose parts kept the order the rows were answered in)."""
        for path in self._paths():
            results = [
                RowResult.from_json(json.loads(line), str(path))
                for line in path.read_bytes().splitlines()
                if line.strip()
            ]
            ordered = sorted(results, key=lambda r: _number(r, str(path)))
            if ordered != results:
                write_atomic(path, json_lines(r.to_json() for r in ordered))


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
        try:
            if overwrite:
                shutil.rmtree(state, ignore_errors=True)
                output.unlink(missing_ok=True)
                done_file(output).unlink(missing_ok=True)
            resumed = state.is_dir()
            if not resumed:
                resumed = not _create(state, settings)  # False: another run created it first
            lock = _lock(state, output)
        except OSError as exc:  # before any row is sent: the output's place is bad input
            raise ConfigError(
                f"cannot write the output {output}: {_why(exc)}",
                hint="Give -o a path in a directory you can write to (the job keeps its "
                f"state beside the output, in {state.name}/).",
                field="--output",
            ) from None
        try:
            job = _read_job(state)
            _same_settings(job["settings"], settings, f"the job in {state} was started")
            return cls(output, str(job["id"]), resumed, lock)
        except BaseException:
            lock.close()
            raise

    def finish(self, given: InputFile) -> None:
        """Write the output (one row per input row, in order, each row's id columns read
        from the input again) and remove the state. The output is written as it is read:
        a row at a time from the parts and the input."""
        columns = [ROW_COLUMN, *given.id_columns, *RESULT_COLUMNS]
        try:
            try:
                write_table(self.output, lambda: self._rows(given), columns)
            except _Unsorted:
                self.sink.sort_parts()
                write_table(self.output, lambda: self._rows(given), columns)
            write_atomic(done_file(self.output), (self.state / "job.json").read_bytes())
        except OSError as exc:  # a full disk, a directory made read-only meanwhile
            raise ModelyardError(
                f"every row is answered, but the output {self.output} could not be written: "
                f"{_why(exc)}",
                hint=f"The answers are kept in {self.state}: fix the cause, then run the same "
                "command again to write the output (nothing is asked again).",
            ) from None
        shutil.rmtree(self.state, ignore_errors=True)
        fsync_dir(self.output.parent)

    def _rows(self, given: InputFile) -> Iterator[dict[str, Any]]:
        results = self.sink.in_order()
        inputs: Iterable[Mapping[str, Any]] = (
            given.values() if given.id_columns else itertools.repeat({})
        )
        result = next(results, None)
        for number, values in zip(range(1, given.total + 1), inputs, strict=False):
            while result is not None and int(result.key) < number:
                result = next(results, None)  # a result of no row of the input
            if result is None or int(result.key) != number:
                raise DataError(
                    f"the job in {self.state} holds no result for row {number} of the input",
                    hint="Run the same command again to answer it, or pass --overwrite.",
                )
            out: dict[str, Any] = {ROW_COLUMN: number}
            out |= {c: values.get(c) for c in given.id_columns}
            out |= {c: getattr(result, c) for c in RESULT_COLUMNS}
            yield out
            result = next(results, None)

    def close(self) -> None:
        self._lock.close()


def _why(exc: OSError) -> str:
    """An OSError in words, naming the path it is about."""
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"


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
            name, old, new = _difference(name, before.get(name), now.get(name))
            label = _FLAGS.get(name, name)
            raise ConfigError(
                f"{what} with {label} {_shown(old)}, not {_shown(new)}",
                hint=hint,
                setting=name,
            )


_FLAGS = {
    "endpoint": "--endpoint (or --model)",
    "tenant": "--tenant",
    "engine": "--engine",
    "id_columns": "--id-column",
    "mapping.prompt": "--prompt-column",
    "mapping.messages": "--messages-column",
    "mapping.fields": "--field",
    "mapping.system": "--system",
    "params.max_tokens": "--max-tokens",
    "params.temperature": "--temperature",
    "params.top_p": "--top-p",
    "params.stop": "--stop",
    "params.seed": "--seed",
}
"""The option of ``batch run`` that sets each setting: an error names what to change."""


def _difference(name: str, old: Any, new: Any) -> tuple[str, Any, Any]:
    """The first setting under ``name`` that differs (``params.max_tokens``, not the whole
    of ``params``), with its two values."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                return _difference(f"{name}.{key}", old.get(key), new.get(key))
    return name, old, new


def _shown(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def finished_output(path: Path, rows: int) -> tuple[JobSummary, str | None] | None:
    """The totals of the results in ``path`` and its first record id, when it is the whole
    output of a finished job of ``rows`` rows (one per row, the result columns there), else
    None. Read a row at a time."""
    from modelyard.data import iter_rows

    totals = JobSummary("")
    first: str | None = None
    count = 0
    with contextlib.suppress(DataError, ValueError):
        for count, row in enumerate(iter_rows(path), start=1):
            if count > rows or (count == 1 and not all(c in row for c in RESULT_COLUMNS)):
                return None
            result = _result_of(str(count), row)
            totals.add(result)
            first = first or result.record_id
        return (totals, first) if count == rows else None
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
