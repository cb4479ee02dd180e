"""A job's input file, read a row at a time: checked whole first, then given again as rows.

``InputFile.check`` reads the file twice, a row at a time: once as the file's
parser reads it (it parses, it has rows; the columns every row has), then every row
against the mapping resolved from those columns (it can be asked, its ids are
there and tell it apart: the ids go to a temporary SQLite index on disk, not to
memory). Errors come in the order reading the file whole gave them: the file's, the
mapping's, then the first bad row's. Afterwards ``rows()`` gives the ``Row``\\ s and
``values()`` the raw rows again, in order, each a new read of the file: a job of a
million rows never holds them, only the one being asked. The file is taken as it
was checked: one changed since is a ConfigError, not rows answered against another
input.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelyard.batch._mapping import ColumnMapping
from modelyard.batch._rows import Row
from modelyard.errors import ConfigError, DataError


def _stamp(path: Path) -> tuple[int, int, int]:
    info = path.stat()
    return info.st_size, info.st_mtime_ns, info.st_ino


@dataclass(frozen=True)
class InputFile:
    """A checked input (a ``RowSource``): ``total`` rows, asked by ``mapping``."""

    path: Path
    mapping: ColumnMapping
    id_columns: tuple[str, ...]
    total: int
    stamp: tuple[int, int, int]  # size, mtime, inode when checked

    @classmethod
    def check(cls, path: Path, mapping: ColumnMapping, id_columns: Sequence[str]) -> InputFile:
        """The input at ``path``, every row checked (DataError naming a row or column)."""
        given = _read(path)  # a missing file or a directory is a DatasetNotFound here
        stamp = _stamp(path)
        columns: dict[str, None] = {}
        total = 0
        for values in given:
            total += 1
            columns.update(dict.fromkeys(values))
        names = list(columns)
        resolved = mapping.resolved(names, path)
        for column in id_columns:
            if column not in columns:
                raise DataError(
                    f"{path} has no id column {column!r}; its columns are: {', '.join(names)}",
                    column=column,
                )
        found = cls(path, resolved, tuple(id_columns), total, stamp)
        with _IdIndex() as seen:
            for number, values in found._numbered():
                place = f"{path} row {number}"
                if id_columns:
                    seen.add(number, values, id_columns, place)
                resolved.messages_of(values, place)
        return found

    def _numbered(self) -> Iterator[tuple[int, dict[str, Any]]]:
        if _stamp(self.path) != self.stamp:
            raise ConfigError(
                f"the input {self.path} changed while its job ran",
                hint="Run the job again on a file that stays as it is while the job runs "
                "(with --overwrite, its answers were given to the file as it was before).",
                path=str(self.path),
            )
        yield from enumerate(_read(self.path), start=1)

    def rows(self) -> Iterator[Row]:
        """Every row, in order, as a ``Row`` (key: its 1-based number)."""
        for number, values in self._numbered():
            place = f"{self.path} row {number}"
            yield Row(str(number), self.mapping.messages_of(values, place), number)

    def values(self) -> Iterator[Mapping[str, Any]]:
        """Every row as the file holds it, in order."""
        for _, values in self._numbered():
            yield values

    def __iter__(self) -> Iterator[Row]:
        return self.rows()


def _read(path: Path) -> Iterator[dict[str, Any]]:
    from modelyard.data import iter_rows

    return iter_rows(path)


class _IdIndex:
    """The ids seen so far, in a temporary SQLite database on disk (deleted on close): a
    million ids cost its page cache, not a Python set of them."""

    def __enter__(self) -> _IdIndex:
        self._db = sqlite3.connect("")  # "": a private temporary file
        self._db.execute("CREATE TABLE ids (id TEXT PRIMARY KEY, row INTEGER) WITHOUT ROWID")
        return self

    def __exit__(self, *exc: object) -> None:
        self._db.close()

    def add(
        self, number: int, values: Mapping[str, Any], id_columns: Sequence[str], place: str
    ) -> None:
        """Keep row ``number``'s ids; a DataError when one is empty or an earlier row had
        them."""
        missing = [c for c in id_columns if values.get(c) in (None, "")]
        if missing:
            raise DataError(f"{place}: the id column {missing[0]!r} is empty")
        ids = json.dumps([json.dumps(values.get(c), default=str) for c in id_columns])
        try:
            self._db.execute("INSERT INTO ids VALUES (?, ?)", (ids, number))
        except sqlite3.IntegrityError:
            (first,) = self._db.execute("SELECT row FROM ids WHERE id = ?", (ids,)).fetchone()
            raise DataError(
                f"{place} has the same id as row {first} "
                f"({', '.join(f'{c}={values.get(c)!r}' for c in id_columns)})",
                hint="Id columns must tell the rows apart.",
            ) from None


__all__ = ["InputFile"]
