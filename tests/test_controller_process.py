"""`modelyard controller` processes killed at any moment converge, and never both act."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from modelyard.delivery import start_rollout
from modelyard.store import NewInferenceRecord, Store
from worlds import fake_world

CLI = [sys.executable, "-m", "modelyard"]


def _controller(env: dict[str, str], log: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*CLI, "controller", "--interval", "0.05", "--lease-ttl", "0.6"],
        env=env, stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip


def _wait_until_one_leads(store: Store, pair: list[subprocess.Popen[bytes]]) -> None:
    """Until one of ``pair`` holds the controller lease (its holder names its pid)."""
    pids = {str(p.pid) for p in pair}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        held = store.lease_holder("controller")
        if held is not None and held[0].split(":")[1] in pids:
            return
        time.sleep(0.05)
    raise AssertionError("no controller of the pair took the lease within 60 s")


@pytest.mark.slow
def test_killed_controllers_converge_and_two_never_both_act(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    env = {**os.environ, "MODELYARD_STORE_URL": url}  # the same home: the same audit key
    with Store.open(url) as store:
        ids = [v.id for v in fake_world(store, template=None)]
        start_rollout(store, "support", "bot:2", steps="10,50,100", bake_s=2.0,
                      min_requests=5)  # fmt: skip

        stop = threading.Event()

        def traffic() -> None:  # what servers would write, bounded in time
            deadline = time.monotonic() + 150
            while not stop.is_set() and time.monotonic() < deadline:
                store.add_inference_records(
                    NewInferenceRecord(
                        id=f"cmpl-{uuid.uuid4().hex}",
                        endpoint_name="support",
                        route="completions",
                        latency_ms=10.0,
                        status="ok",
                        http_status=200,
                        version_id=vid,
                    )
                    for vid in ids
                )
                time.sleep(0.05)

        log = (tmp_path / "controllers.log").open("ab")
        writer = threading.Thread(target=traffic)
        writer.start()
        rng = random.Random(7)
        killed_at: list[tuple[str, int]] = []  # (phase, step) of the rollout at each kill
        try:
            deadline = time.monotonic() + 140
            while store.latest_rollout("support").active and time.monotonic() < deadline:
                # two controllers at once, both killed without warning at a random moment
                pair = [_controller(env, log), _controller(env, log)]
                _wait_until_one_leads(store, pair)  # however long they take to start
                time.sleep(rng.uniform(0.1, 2.5))
                for p in pair:
                    p.send_signal(signal.SIGKILL)
                    p.wait(10)
                now = store.latest_rollout("support")
                killed_at.append((now.phase if now.active else now.status, now.step_index))
            last = _controller(env, log)  # one that is left to finish, if needed
            try:
                while store.latest_rollout("support").active and time.monotonic() < deadline:
                    time.sleep(0.2)
            finally:
                last.terminate()
                last.wait(20)
        finally:
            stop.set()
            writer.join(30)
        log.close()
        r = store.latest_rollout("support")
        assert r.status == "succeeded", (tmp_path / "controllers.log").read_text()[-3000:]
        # killed while it was in the middle of its steps, not only before or after them
        assert ("baking", 0) in killed_at or ("baking", 1) in killed_at, killed_at
        # every transition happened exactly once, in order, whatever was killed when
        assert [e.kind for e in r.events] == ["started", "step", "step", "step", "succeeded"]
        assert [e.detail["percent"] for e in r.events if e.kind == "step"] == [10, 50, 100]
        assert {x.version: x.weight for x in store.get_endpoint("support").routes} == {2: 100}
        steps = store.list_audit_events(action="rollout.step", limit=None)
        assert len(steps) == 3
        assert store.verify_audit_chain().ok
