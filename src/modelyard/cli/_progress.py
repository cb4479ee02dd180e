"""Progress of long work on stderr: a live Rich bar on a terminal, else plain lines.

Rich draws a bar only when it ends where stderr is not a terminal (a log file, a pipe, a
supervisor's journal), so an hour of fine-tuning showed nothing until its last step.
There, progress is a line when the work starts, one every ``LOG_EVERY_S``, and the last:
``fine-tuning (lora): 120/300 steps, 4.1 steps/s, eta 0:00:43, loss 2.310``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Column
from rich.text import Text

ProgressFn = Callable[[int, int, str], None]

LOG_EVERY_S = 10.0
"""How often work whose stderr is not a terminal (a log file, a pipe) prints its progress."""


def live(console: Console) -> bool:
    """Whether ``console`` redraws a bar in place (a terminal, a notebook)."""
    return console.is_terminal or console.is_jupyter


class RateColumn(ProgressColumn):
    """Work per second, e.g. ``12.3 steps/s``."""

    def __init__(self, unit: str) -> None:
        super().__init__(table_column=Column(no_wrap=True))  # "6.6 steps/s" on one line
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:.1f} {self.unit}/s", style="dim")


class ProgressLines:
    """Progress as plain lines on ``console``: ``NAME: DONE/TOTAL UNIT, RATE UNIT/s, eta
    H:MM:SS, INFO``. A line comes with the first update, then one every ``LOG_EVERY_S``
    and one where the work is done, never two for the same count; ``finish`` prints the
    last state when no line has said it. Work done before the first update (a resumed
    job's rows) is no part of the rate. A total of 0 or below is not known yet: no total,
    no eta."""

    def __init__(self, console: Console, name: str, unit: str, total: int | None = None) -> None:
        self._console, self._name, self._unit, self._total = console, name, unit, total
        self._base: int | None = None
        self._started = self._printed = time.monotonic()
        self._last: tuple[int, str] | None = None  # the latest update not printed yet
        self._shown = -1  # what the latest line said was done

    def update(self, done: int, total: int | None = None, info: str = "") -> None:
        now = time.monotonic()
        first = self._base is None
        if self._base is None:
            self._base = done
        if total is not None:
            self._total = total
        known = self._total is not None and self._total > 0
        last = known and done >= (self._total or 0)
        due = last or now - self._printed >= LOG_EVERY_S
        if not (first or (due and done != self._shown)):
            self._last = (done, info) if done != self._shown else None
            return
        self._printed, self._last = now, None
        self._print(done, info, now, last)

    def finish(self) -> None:
        """The last state, where the latest update printed nothing."""
        if self._last is not None:
            done, info = self._last
            self._last = None
            self._print(done, info, time.monotonic(), True)

    def _print(self, done: int, info: str, now: float, last: bool) -> None:
        self._shown = done
        known = self._total is not None and self._total > 0
        line = f"{self._name}: {done}{f'/{self._total}' if known else ''} {self._unit}"
        elapsed, base = now - self._started, self._base or 0
        if done > base and elapsed > 0:
            rate = (done - base) / elapsed
            line += f", {rate:.1f} {self._unit}/s"
            if known and not last:
                eta = int(((self._total or 0) - done) / rate)
                line += f", eta {eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}"
        if info:
            line += f", {info}"
        self._console.print(line, markup=False, highlight=False, soft_wrap=True)


@contextmanager
def progress_bar(
    console: Console, description: str, total: int, *, unit: str = "steps"
) -> Iterator[ProgressFn]:
    """A Rich bar with rate on a terminal, lines elsewhere; yields ``update(done, total,
    info)`` for long-running work."""
    if not live(console):
        lines = ProgressLines(console, description, unit, total)
        yield lines.update
        lines.finish()
        return
    # one line at any width: the bar gives way first, then the info is cut short
    columns = (
        TextColumn("[bold]{task.description}", table_column=Column(no_wrap=True)),
        BarColumn(bar_width=None, table_column=Column(ratio=1)),
        MofNCompleteColumn(table_column=Column(no_wrap=True)),
        RateColumn(unit),
        TextColumn(
            "{task.fields[info]}",
            table_column=Column(no_wrap=True, overflow="ellipsis", ratio=2),
        ),
        TimeElapsedColumn(table_column=Column(no_wrap=True)),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(description, total=total, info="")

        def update(done: int, total: int, info: str = "") -> None:
            bar.update(task, completed=done, total=total, info=info)

        yield update
