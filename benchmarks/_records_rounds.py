"""Records on vs off, measured side by side: ``serving.py``'s fourth ratio (issue 19).

Two serving processes (``_server_process``), each one engine behind a records-on
and a records-off app, take the same load at the same moment from two client
processes (``_client_process``): one process's records-on app against the other's
records-off app, then the sides swapped. A pair's ratio is the records-on load's
tokens/s over the records-off load's; a round is ``pairs`` pairs, each process on
each side equally often, and its ratio is their geometric mean (a process that is
faster than the other weighs on both sides alike).

Why not one app after the other: on this 2-core machine identical loads of one app
run 15 % apart a few seconds later (tokens/s and CPU time per token alike; the
engine called in process without HTTP moved by 30 % from one call to the next), and
a round of two on and two off loads in a row could not resolve a 5 % target. Run at
the same moment, the two sides share whatever the machine does meanwhile.
"""

from __future__ import annotations

import math
import statistics
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from _client_process import ClientProcess
from _server_process import ServerProcess, ServerSettings

Say = Callable[[str], None]
Jobs = Sequence[Sequence[tuple[str, str]]]  # per client: (model, prompt) jobs
SIDES = ("on", "off")


@dataclass(frozen=True)
class RecordsLoad:
    """One timed load of a pair: which round, pair and process, records on or off."""

    round: int
    pair: int
    process: int  # 0 or 1
    records: str  # "on" or "off"
    requests: int
    tokens: int
    seconds: float
    short: int  # requests that ended before max_tokens
    gc_seconds: float  # the full collection the process ran just before the pair

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


def run_rounds(
    settings: ServerSettings,
    key: str,
    max_tokens: int,
    clients: Jobs,
    *,
    rounds: int,
    pairs: int,
    say: Say,
    control: bool = False,
) -> list[RecordsLoad]:
    """``rounds`` rounds of ``pairs`` pairs (even: each process on each side as often).
    ``control``: both sides on the records-off apps (an A/A run: the benchmark's own
    resolution)."""
    if pairs < 2 or pairs % 2:
        raise ValueError(f"pairs is {pairs}; it must be even and at least 2")
    loads: list[RecordsLoad] = []
    with (
        ServerProcess(settings) as p0,
        ServerProcess(settings) as p1,
        ClientProcess() as c0,
        ClientProcess() as c1,
    ):
        procs, runners = (p0, p1), (c0, c1)

        def url(process: int, side: str) -> str:
            return procs[process].urls["off" if control else side]

        def pair(sides: tuple[str, str], jobs: Jobs) -> list[tuple[tuple[int, int, float], float]]:
            collected = [p.collect() for p in procs]  # none inside the timed loads
            out: list[Any] = [None, None]

            def load(i: int) -> None:
                try:
                    out[i] = runners[i].run(url(i, sides[i]), key, max_tokens, jobs)
                except BaseException as exc:  # raised below, on the benchmark's thread
                    out[i] = exc

            threads = [threading.Thread(target=load, args=(i,)) for i in (0, 1)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for result in out:
                if isinstance(result, BaseException):
                    raise result
            return list(zip(out, collected, strict=True))

        say("records rounds: two serving processes warming up (not counted)")
        for sides in (("on", "off"), ("off", "on")):
            pair(sides, [jobs[:4] for jobs in clients])
        for r in range(1, rounds + 1):
            for p in range(1, pairs + 1):
                sides = ("on", "off") if p % 2 else ("off", "on")
                results = pair(sides, clients)
                for process, ((tokens, short, seconds), gc_s) in enumerate(results):
                    loads.append(
                        RecordsLoad(r, p, process, sides[process], sum(map(len, clients)),
                                    tokens, seconds, short, gc_s)
                    )  # fmt: skip
                on, off = (loads[-2], loads[-1]) if sides[0] == "on" else (loads[-1], loads[-2])
                say(
                    f"records round {r}/{rounds}, pair {p}/{pairs}: process {on.process} on "
                    f"{on.tokens_per_second:,.0f} tokens/s, process {off.process} off "
                    f"{off.tokens_per_second:,.0f}: {pair_ratio(on, off):.3f}x"
                )
    return loads


def pair_ratio(on: RecordsLoad, off: RecordsLoad) -> float:
    return on.tokens_per_second / off.tokens_per_second


def pair_ratios(loads: Sequence[RecordsLoad], round_: int) -> list[float]:
    """The round's pair ratios, in the order they ran."""
    mine = [x for x in loads if x.round == round_]
    ratios = []
    for p in sorted({x.pair for x in mine}):
        on = next(x for x in mine if x.pair == p and x.records == "on")
        off = next(x for x in mine if x.pair == p and x.records == "off")
        ratios.append(pair_ratio(on, off))
    return ratios


def summarize(loads: Sequence[RecordsLoad], target: float, control: bool) -> dict[str, Any]:
    """The ``records`` section of ``serving.py``'s results: the median of the rounds,
    every round's ratio and its pairs."""
    rounds = sorted({x.round for x in loads})
    pairs = [pair_ratios(loads, r) for r in rounds]
    per_round = [math.exp(statistics.fmean(map(math.log, p))) for p in pairs]
    ratio = statistics.median(per_round)
    return {
        "a": "records on (one process)",
        "b": "records off (the other process, at the same moment)",
        "a_tokens_per_second": statistics.median(
            x.tokens_per_second for x in loads if x.records == "on"
        ),
        "b_tokens_per_second": statistics.median(
            x.tokens_per_second for x in loads if x.records == "off"
        ),
        "ratio": ratio,
        "target": target,
        "met": ratio >= target,
        "rounds": per_round,
        "met_every_round": min(per_round) >= target,
        "pairs": pairs,
        "control": control,
    }
