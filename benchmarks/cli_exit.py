"""How long a ``modelyard`` process takes to end once its command is done, with the
serving and training stack (torch, transformers, peft) imported, as ``serve``,
``finetune``, ``batch run`` and ``eval`` have.

Two ways to end, each in processes of its own, alternated:

- ``collected``: ``sys.exit(main())``, as ``modelyard`` ended before 2026-12-07: the
  interpreter's last collections walk every object those libraries made;
- ``frozen``: the ``modelyard`` entry point (``modelyard.cli.run``), which moves every object
  out of the collector's sight (``gc.freeze``) before it exits.

The command run is ``modelyard doctor --help`` (it reads nothing): what is measured is the
import, the command and the exit, and the ratio shows what the exit cost.

    python benchmarks/cli_exit.py            # 5 processes each
    python benchmarks/cli_exit.py --quick    # 2 each
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

_STACK = "import torch, transformers, peft, modelyard.serving, modelyard.training"
_WAYS = {
    "collected": f"{_STACK}; import sys; from modelyard.cli._app import main; sys.exit(main())",
    "frozen": f"{_STACK}; from modelyard.cli import run; run()",
}


def one(way: str) -> float:
    """Seconds from the process's start to its end (its command succeeding)."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _WAYS[way], "doctor", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{way}: exit {done.returncode}: {done.stderr[-2000:]}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 processes each, not 5")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args()
    rounds = 2 if args.quick else 5
    one("frozen")  # warm the page cache: the first import reads every file from disk
    times: dict[str, list[float]] = {way: [] for way in _WAYS}
    for i in range(rounds):
        for way in _WAYS if i % 2 == 0 else reversed(list(_WAYS)):
            times[way].append(one(way))
    medians = {way: statistics.median(ts) for way, ts in times.items()}
    report = {
        "seconds": times,
        "median_s": medians,
        "collected_over_frozen": medians["collected"] / medians["frozen"],
        "saved_s": medians["collected"] - medians["frozen"],
        "cpus": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{'way':<10} {'median s':>9}  each")
    for way, ts in times.items():
        print(f"{way:<10} {medians[way]:>9.2f}  {' '.join(f'{t:.2f}' for t in ts)}")
    print(
        f"a process ends {report['saved_s']:.2f} s sooner frozen: collected/frozen "
        f"{report['collected_over_frozen']:.2f}x (load {report['load_average_1m']:.1f}, "
        f"{report['cpus']} CPUs)"
    )


if __name__ == "__main__":
    main()
