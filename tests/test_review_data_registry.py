"""An outside review of data and the registry: odd files, odd paths, tenants, refusal hints.

Each test runs what a user runs (the CLI in a subprocess, or the library call the CLI
makes) and asserts what they rely on: the exit code, the one error line, the rows read,
the rows and files left behind.
"""

from __future__ import annotations

import json
from pathlib import Path

from clihelp import modelyard


def _error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err  # one line, never a traceback
    assert lines[0].startswith("error: "), err
    return lines[0]


# -- data: files that parse badly ------------------------------------------------------------


def test_deeply_nested_jsonl_row_is_one_error_not_a_traceback(tmp_path: Path) -> None:
    data = tmp_path / "deep.jsonl"
    good = json.dumps({"instruction": "a", "output": "b"})
    data.write_text(good + "\n" + '{"instruction": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    r = modelyard("data", "validate", str(data), "--format", "alpaca", home=tmp_path / "h")
    assert r.code == 2, r.err
    assert "line 2 nests lists or objects too deeply" in _error_line(r.err)


def test_deeply_nested_json_file_is_one_error(tmp_path: Path) -> None:
    data = tmp_path / "deep.json"
    data.write_text("[" + "[" * 100_000 + "]" * 100_000 + "]")
    r = modelyard("data", "validate", str(data), "--format", "text", home=tmp_path / "h")
    assert r.code == 2, r.err
    assert "deep.json nests lists or objects too deeply" in _error_line(r.err)


def test_csv_with_a_long_document_is_read(tmp_path: Path) -> None:
    """A cell over the csv module's default 128 KiB limit is a long document, not an error."""
    data = tmp_path / "docs.csv"
    long_text = "word " * 40_000  # 200 kB
    data.write_text(f'text,label\nshort one,a\n"{long_text}",b\n')
    r = modelyard(
        "data", "validate", str(data), "--format", "classification", "--json", home=tmp_path / "h"
    )
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["rows"] == 2
    assert report["lengths"]["stats"]["max"] >= 40_000


def test_csv_with_an_unclosed_quote_names_its_line_and_loses_no_rows(tmp_path: Path) -> None:
    """An unclosed quote used to swallow the rest of the file into one value silently."""
    data = tmp_path / "tickets.csv"
    data.write_text('text,label\nfine,a\n"unclosed,b\nnext row,c\nlast row,d\n')
    r = modelyard("data", "validate", str(data), "--format", "classification", home=tmp_path / "h")
    assert r.code == 2, r.out
    line = _error_line(r.err)
    assert "tickets.csv line 3 is not valid CSV" in line
    assert "quot" in line
