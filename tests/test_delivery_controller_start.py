"""A controller process's start: what its ticks need is loaded before it takes the lease."""

from __future__ import annotations

import subprocess
import sys


def test_a_controller_loads_the_guards_statistics_before_it_takes_the_lease() -> None:
    """A fresh controller imported scipy.stats (seconds on a busy machine) in its first
    tick, after taking the lease: with a short --lease-ttl the lease lapsed meanwhile and
    the tick's transition was refused, so killed and restarted controllers hardly moved."""
    code = """
import sys, threading
from modelyard.delivery import Controller

class Store:
    def acquire_lease(self, name, holder, ttl_s):
        print("scipy.stats" in sys.modules)
        stop.set()
        return False

    def release_lease(self, name, holder):
        pass

stop = threading.Event()
print("scipy.stats" in sys.modules)
Controller(Store()).run(stop, 0.01)
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True"], done.stdout
