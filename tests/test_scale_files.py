"""A JSONL file is read a line at a time: the same rows and the same errors (line numbers,
encodings) as when it was read whole, and a JSON string holding a Unicode line separator
is one row, not two broken ones."""

from __future__ import annotations

import codecs
import hashlib
import json
from pathlib import Path

import pytest

from modelyard.batch import FileJobSpec, read_input
from modelyard.data import read_rows
from modelyard.errors import DataError
from modelyard.serving import SamplingParams

ROWS = [{"text": f"ticket {i}", "label": "a" if i % 2 else "b"} for i in range(5)]


def _lines(rows: list[dict[str, str]]) -> list[bytes]:
    return [json.dumps(r, ensure_ascii=False).encode() for r in rows]


@pytest.mark.parametrize(
    "end", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"]
)  # fmt: skip
def test_rows_read_a_line_at_a_time_are_the_rows(tmp_path: Path, end: bytes) -> None:
    path = tmp_path / "rows.jsonl"
    lines = _lines(ROWS)
    path.write_bytes(codecs.BOM_UTF8 + end.join(lines[:2]) + end + end + end.join(lines[2:]))
    assert read_rows(path) == ROWS  # the BOM dropped, the blank line skipped, no end at the end


def test_a_json_string_may_hold_the_characters_splitlines_cuts_at(tmp_path: Path) -> None:
    rows = [{"text": f"one{sep}two", "label": "a"} for sep in ("\u2028", "\u2029", "\x85", "\x0c")]
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"\n".join(_lines(rows)) + b"\n")
    assert read_rows(path) == rows


def test_errors_name_the_line_as_before(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"text": "ok"}\r\n\r\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"is not UTF-8 text: line 3 \(byte 31\)") as info:
        read_rows(path)
    assert info.value.context["line"] == 3
    path.write_bytes(b'{"text": "ok"}\r{"text": \n')
    with pytest.raises(DataError, match="line 2 is not valid JSON") as info:
        read_rows(path)
    assert info.value.context["line"] == 2
    path.write_text('{"text": "ok"}\n', encoding="utf-16")
    with pytest.raises(DataError, match="is UTF-16 text, not UTF-8"):
        read_rows(path)
    path.write_bytes(b"\n\r\n  \n")
    with pytest.raises(DataError, match="has no rows"):
        read_rows(path)


def test_a_batch_job_takes_its_input_and_digest_as_before(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(_lines([{"id": f"t{i}", "prompt": f"q {i}"} for i in range(3)])))
    spec = FileJobSpec(
        input=path, output=tmp_path / "out.jsonl", params=SamplingParams(), model="bot:1"
    )
    given = read_input(spec)
    assert [r.messages[-1]["content"] for r in given.rows] == ["q 0", "q 1", "q 2"]

    assert given.digest == hashlib.sha256(path.read_bytes()).hexdigest()
