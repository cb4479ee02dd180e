"""Which of a job's rows its sink holds already, one byte a row: what a resumed run skips.

A row kept with an answer, or with an error the API gave a client's mistake (4xx),
is ``DONE``: a resumed run skips it and counts it. A row kept as failed on the
server's side (a 5xx, a 429 that outlasted its retries) is ``AGAIN``: the cause may
have passed, so it is asked again. Rows numbered 1 to the source's ``total`` (a
file's rows) take one byte each; any other key (a source of other keys) a dict entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from modelyard.batch._rows import JobSummary, RowResult

TODO, DONE, AGAIN = 0, 1, 2


def server_side(result: RowResult) -> bool:
    """Whether ``result`` failed on the server's side (a 5xx, or a 429 that outlasted its
    retries): worth asking again once the cause has passed."""
    status = result.status
    return result.failed and status is not None and (status >= 500 or status == 429)


class KeptRows:
    """The state of each row a sink holds (``DONE`` or ``AGAIN``; ``TODO``: none)."""

    def __init__(self, total: int | None) -> None:
        self._numbered = bytearray((total or 0) + 1)  # [0] unused: rows count from 1
        self._other: dict[str, int] = {}
        self.done = self.again = 0

    @classmethod
    def of(cls, kept: Iterable[RowResult], total: int | None, summary: JobSummary) -> KeptRows:
        """The states of the results ``kept`` (in the order committed), each ``DONE`` one
        counted into ``summary``."""
        rows = cls(total)
        for result in kept:
            if rows.keep(result):
                summary.add(result)
        return rows

    def _slot(self, key: str) -> int | None:
        if key.isdigit() and len(key) < 16 and key[0] != "0":
            number = int(key)
            if number < len(self._numbered):
                return number
        return None

    def state(self, key: str) -> int:
        slot = self._slot(key)
        return self._numbered[slot] if slot is not None else self._other.get(key, TODO)

    def keep(self, result: RowResult) -> bool:
        """Take ``result`` as its row's latest; True when the row is now ``DONE``. A row
        done stays done (a run never asks a done row again)."""
        before = self.state(result.key)
        if before == DONE:
            return False
        now = AGAIN if server_side(result) else DONE
        slot = self._slot(result.key)
        if slot is not None:
            self._numbered[slot] = now
        else:
            self._other[result.key] = now
        self.again += (now == AGAIN) - (before == AGAIN)
        self.done += now == DONE
        return now == DONE

    def again_keys(self) -> Iterator[str]:
        """The keys of the rows kept as failed on the server's side."""
        at = self._numbered.find(AGAIN)
        while at != -1:
            yield str(at)
            at = self._numbered.find(AGAIN, at + 1)
        yield from (key for key, state in self._other.items() if state == AGAIN)


__all__ = ["AGAIN", "DONE", "TODO", "KeptRows", "server_side"]
