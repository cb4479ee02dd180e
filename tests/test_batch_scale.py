"""A batch job at scale: its memory is a window's, not its input's, and a resumed job
discards its records a page at a time.

The jobs here run ``run_file_job`` against a store of ``fake_world``; their rows are
answered by ``InstantRunner`` (the real ``JobRunner`` with its ``answer_rows``
answering each row with its own prompt, no engine): what is measured or counted is
the job's own reading, keeping and writing.
"""

from __future__ import annotations

import csv
import json
import tracemalloc
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from modelyard.batch import FileJobSpec, JobRunner, RowResult, run_file_job, write_table
from modelyard.data import iter_rows
from modelyard.errors import ConfigError
from modelyard.serving import EchoEngine, SamplingParams
from modelyard.store import NewInferenceRecord, Store
from worlds import fake_world


class Stop(Exception):
    """The job stopped (a kill, in effect) after ``InstantRunner.stop_after`` commits."""


class InstantRunner(JobRunner):
    """Answers each row at once with its prompt, committing 500 rows at a time; rows in
    ``fail`` fail on the server's side (503); stops after ``stop_after`` rows."""

    fail: frozenset[str] = frozenset()
    stop_after: int | None = None
    before: Any = None  # called before the first row is read

    def answer_rows(self, rows: Iterable[Any], sink: Any, summary: Any, progress: Any) -> None:
        if self.before is not None:
            self.before()
        group: list[RowResult] = []
        for row in rows:
            if row.key in self.fail:
                result = RowResult(row.key, error="503: the engine is down", status=503)
            else:
                content = row.messages[-1]["content"]
                result = RowResult(row.key, content, "stop", 2, 3, "bot:1", self.record_id(row.key))
            group.append(result)
            summary.answered += 1
            summary.add(result)
            if len(group) == 500:
                sink.commit(group)
                group = []
            if self.stop_after is not None and summary.answered >= self.stop_after:
                sink.commit(group)
                raise Stop
        sink.commit(group)


def runner_of(**attributes: Any) -> Any:
    def make(*args: Any) -> JobRunner:
        runner = InstantRunner(*args)
        for name, value in attributes.items():
            setattr(runner, name, value)
        return runner

    return make


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as opened:
        fake_world(opened, tenant="acme", model="bot", endpoint="support", versions=1)
        yield opened


@pytest.fixture
def key(store: Store) -> str:
    from modelyard.access import create_api_key

    return create_api_key(store, "acme", scopes=("infer",))[1]


def spec_of(tmp_path: Path, key: str, rows: int, output: str = "out.jsonl") -> FileJobSpec:
    path = tmp_path / f"in-{rows}.jsonl"
    if not path.exists():
        with path.open("w") as fh:
            for i in range(1, rows + 1):
                fh.write(json.dumps({"id": f"T-{i:06d}", "prompt": f"ticket {i} " + "x" * 200}))
                fh.write("\n")
    return FileJobSpec(
        input=path, output=tmp_path / output, params=SamplingParams(), id_columns=("id",),
        endpoint="support", api_key=key,
    )  # fmt: skip


def test_a_jobs_memory_does_not_grow_with_its_input(tmp_path: Path, store: Store, key: str) -> None:
    peaks = {}
    for rows in (1_000, 10_000):
        spec = spec_of(tmp_path, key, rows, f"out-{rows}.jsonl")
        tracemalloc.start()
        summary = run_file_job(store, EchoEngine(), spec, runner=runner_of())
        peaks[rows] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert (summary.rows, summary.answered, summary.failed) == (rows, rows, 0)
        lines = spec.output.read_text().splitlines()
        assert [json.loads(line)["row"] for line in lines] == list(range(1, rows + 1))
    # ten times the rows (2.2 MiB of input): not ten times the memory, nor twice
    assert peaks[10_000] < 1.5 * peaks[1_000], peaks


def test_a_resumed_job_discards_a_page_of_record_ids_at_a_time_and_writes_every_row_once(
    tmp_path: Path, store: Store, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = spec_of(tmp_path, key, 3_000)
    failing = frozenset({"7", "1500"})
    with pytest.raises(Stop):
        run_file_job(store, EchoEngine(), spec, runner=runner_of(fail=failing, stop_after=2_000))
    state = tmp_path / "out.jsonl.batch"
    job = json.loads((state / "job.json").read_text())["id"]
    tenant = store.get_tenant("acme").id
    # the stopped run had answered 2,500 rows (records written), 2,000 of them kept
    store.add_inference_records(
        NewInferenceRecord(f"{job}-{i}", "support", "chat.completions", 1.0, "ok", 200,
                           tenant_id=tenant, source="batch", job_id=job)
        for i in range(1, 2_501)
    )  # fmt: skip
    pages: list[int] = []
    discard = store.discard_job_records

    def counted(job_id: str, ids: Iterable[str]) -> int:
        page = list(ids)
        pages.append(len(page))
        return discard(job_id, page)

    monkeypatch.setattr(store, "discard_job_records", counted)
    summary = run_file_job(store, EchoEngine(), spec, runner=runner_of())
    assert (summary.skipped, summary.retried, summary.answered) == (1_998, 2, 1_002)
    assert summary.replaced == 500  # rows 2,001 to 2,500: answered, never kept
    assert max(pages) <= 1_000, pages  # never every id of the job at once
    assert store.count_inference_records(job_id=job) == 1_998  # the kept rows' records
    rows = [json.loads(line) for line in spec.output.read_text().splitlines()]
    assert [r["row"] for r in rows] == list(range(1, 3_001))
    assert [r["id"] for r in rows] == [f"T-{i:06d}" for i in range(1, 3_001)]
    assert all(r["error"] is None and r["answer"].startswith(f"ticket {r['row']} ") for r in rows)
    assert not state.exists()


def test_parts_a_stopped_job_kept_in_the_order_answered_still_give_the_rows_in_order(
    tmp_path: Path, store: Store, key: str
) -> None:
    """A job started by an earlier modelyard kept each part's rows as they were answered,
    not in row order: the output is in row order all the same."""
    spec = spec_of(tmp_path, key, 500)
    with pytest.raises(Stop):
        run_file_job(store, EchoEngine(), spec, runner=runner_of(stop_after=300))
    for part in (tmp_path / "out.jsonl.batch").glob("part-*.jsonl"):
        part.write_text("".join(reversed(part.read_text().splitlines(keepends=True))))
    summary = run_file_job(store, EchoEngine(), spec, runner=runner_of())
    assert (summary.skipped, summary.answered) == (300, 200)
    rows = [json.loads(line) for line in spec.output.read_text().splitlines()]
    assert [r["row"] for r in rows] == list(range(1, 501))
    assert all(r["answer"].startswith(f"ticket {r['row']} ") for r in rows)


def test_an_input_changed_while_its_job_runs_stops_the_job_with_one_error(
    tmp_path: Path, store: Store, key: str
) -> None:
    spec = spec_of(tmp_path, key, 50)

    def edit() -> None:
        with spec.input.open("a") as fh:
            fh.write(json.dumps({"id": "T-late", "prompt": "added while the job ran"}) + "\n")

    with pytest.raises(ConfigError, match=r"the input .*in-50.jsonl changed while its job ran"):
        run_file_job(store, EchoEngine(), spec, runner=runner_of(before=edit))
    assert not spec.output.exists()


def test_discarding_a_jobs_records_looks_up_only_the_ids_given(
    tmp_path: Path, store: Store
) -> None:
    tenant = store.get_tenant("acme").id

    def record(i: int, job: str) -> NewInferenceRecord:
        return NewInferenceRecord(f"{job}-{i}", "support", "chat.completions", 1.0, "ok", 200,
                                  tenant_id=tenant, source="batch", job_id=job)  # fmt: skip

    store.add_inference_records(record(i, "job-a") for i in range(3_000))
    store.add_inference_records(record(i, "job-b") for i in range(10))
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "inference_records" in statement:
            statements.append(statement)

    event.listen(Engine, "before_cursor_execute", seen)
    try:
        wanted = (f"job-a-{i}" for i in range(0, 3_000, 2))  # a generator of 1,500 ids
        gone = store.discard_job_records("job-a", [*wanted, "job-b-1", "job-a-99999"])
    finally:
        event.remove(Engine, "before_cursor_execute", seen)
    assert gone == 1_500
    assert store.count_inference_records(job_id="job-a") == 1_500
    assert store.count_inference_records(job_id="job-b") == 10  # another job's: kept
    assert statements and all(" IN (" in s for s in statements), statements
    assert max(s.count("?") for s in statements) <= 501


def test_a_parquet_output_written_in_chunks_has_the_types_of_the_whole_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import modelyard.batch._tables as tables

    monkeypatch.setattr(tables, "PARQUET_CHUNK", 3)
    rows: list[dict[str, Any]] = [
        {"row": i, "claim": None if i < 4 else (i if i < 7 else i + 0.5), "error": None}
        for i in range(1, 10)
    ]
    write_table(tmp_path / "out.parquet", lambda: iter(rows), ["row", "claim", "error"])
    written = pq.read_table(tmp_path / "out.parquet")
    whole = pa.Table.from_pydict({c: [r[c] for r in rows] for c in ("row", "claim", "error")})
    assert written.schema == whole.schema  # claim: double, error: null
    assert written.to_pylist() == whole.to_pylist()


def test_a_csv_read_a_line_at_a_time_gives_the_rows_the_whole_text_gave(tmp_path: Path) -> None:
    text = 'id,note\r\n1,"two\r\nlines"\r2,plain\n3,sep\u2028arated\n4,last'
    path = tmp_path / "in.csv"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    whole = text.replace("\r\n", "\n").replace("\r", "\n").splitlines(keepends=True)
    expected = [dict(r) for r in csv.DictReader(whole, restval=None, strict=True)]
    assert list(iter_rows(path)) == expected
    assert [r["id"] for r in expected] == ["1", "2", "3", "arated", "4"]
