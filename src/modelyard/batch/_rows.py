"""What a batch job moves: rows in, results out, and the two interfaces around the runner.

A ``RowSource`` gives ``Row``\\ s (a key unique in its job, and the chat messages
to send), as many times as asked, each time read afresh; a ``RowSink`` keeps
``RowResult``\\ s durably and gives back the ones it holds already. Neither needs a
job's rows or results in memory at once: the runner streams both. The runner
(``_runner``) sits between them and never knows where rows come from or go: files
here (``_input``, ``_parts``), a stream or a cluster later.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Protocol

from modelyard.errors import DataError

if TYPE_CHECKING:
    from modelyard.serving import SamplingParams


@dataclass(frozen=True)
class Row:
    """One row to answer: ``key`` (unique in its job: a file's row number, a message id),
    the chat ``messages`` to send, ``number`` (1-based place in its input) for errors, and
    ``params`` when the row sets its own (a stream's message; None: the job's)."""

    key: str
    messages: tuple[Mapping[str, str], ...]
    number: int | None = None
    params: SamplingParams | None = None


@dataclass(frozen=True)
class RowResult:
    """How one row ended: its answer, or the error that failed it (one line)."""

    key: str
    answer: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    version: str | None = None
    record_id: str | None = None
    error: str | None = None
    cost: float | None = None  # from the version's base model's token prices, when set
    status: int | None = None  # the HTTP status the API answers its error with (429, 503...)

    @property
    def failed(self) -> bool:
        return self.error is not None

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _RESULT_FIELDS}  # asdict: 10x slower

    @classmethod
    def from_json(cls, value: Mapping[str, Any], where: str) -> RowResult:
        """A result written by ``to_json``; DataError naming ``where`` otherwise."""
        try:
            return cls(**value)
        except TypeError as exc:
            raise DataError(
                f"{where} holds a row that is not a batch result: {exc}",
                hint="Start the job over with --overwrite.",
            ) from exc


_RESULT_FIELDS = tuple(f.name for f in fields(RowResult))

# The output columns a result fills, in their order (after the input's id columns).
RESULT_COLUMNS: tuple[str, ...] = (
    "answer",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "version",
    "record_id",
    "error",
)


class RowSource(Protocol):
    """Where a job's rows come from."""

    @property
    def total(self) -> int | None:
        """How many rows there are, when known (for progress)."""

    def rows(self) -> Iterable[Row]:
        """Every row, in order (read afresh on each call: a job reads its rows more than
        once)."""


@dataclass(frozen=True)
class ListSource:
    """Rows already in memory (a file read whole and checked)."""

    items: Sequence[Row]

    @property
    def total(self) -> int | None:
        return len(self.items)

    def rows(self) -> Iterable[Row]:
        return iter(self.items)


class RowSink(Protocol):
    """Where a job's results go: kept durably, each commit whole or not at all."""

    def kept(self) -> Iterable[RowResult]:
        """The results committed so far, in the order they were committed (a key kept twice,
        failed on the server's side then answered again, counts as its later result); a
        resumed job skips them. Read afresh on each call."""

    def commit(self, results: Sequence[RowResult]) -> None:
        """Keep ``results`` durably and atomically: after a crash at any instant, all of
        them are kept or none is."""


@dataclass
class JobSummary:
    """What a job did, whole: this run's rows and those answered by earlier runs."""

    job_id: str
    rows: int = 0  # rows in the job
    answered: int = 0  # answered by this run (failed ones included)
    skipped: int = 0  # answered by an earlier run of the same job
    replaced: int = 0  # records of rows a stopped run answered but never kept: answered again
    retried: int = 0  # rows a stopped run kept as failed on the server's side: asked again
    failed: int = 0  # rows with an error, whichever run
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None  # None: no version of the job has token prices
    elapsed_s: float = 0.0
    versions: dict[str, int] = field(default_factory=dict)  # answered rows per version
    first_error: str | None = None
    stopped: str | None = None  # why the job stopped before its end (--max-errors)
    already_whole: bool = False  # the output was whole before this run: nothing asked or written

    @property
    def rows_per_s(self) -> float:
        return self.answered / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def add(self, result: RowResult) -> None:
        """Count one result into the totals."""
        self.prompt_tokens += result.prompt_tokens
        self.completion_tokens += result.completion_tokens
        if result.cost is not None:
            self.cost = (self.cost or 0.0) + result.cost
        if result.version is not None:
            self.versions[result.version] = self.versions.get(result.version, 0) + 1
        if result.failed:
            self.failed += 1
            self.first_error = self.first_error or result.error

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"rows_per_s": round(self.rows_per_s, 3)}


__all__ = ["RESULT_COLUMNS", "JobSummary", "ListSource", "Row", "RowResult", "RowSink", "RowSource"]
