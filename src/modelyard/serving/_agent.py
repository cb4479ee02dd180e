"""A server's agent: heartbeats into the store, preparing rollout targets, the controller.

Every ``interval_s`` the agent writes this server's heartbeat (what it holds,
what failed to load here, which rollout targets it has prepared), and for each
rollout that is ``preparing`` it loads the target version and runs one smoke
request through the engine, so the controller switches traffic only to a
version every live server can answer with. With ``controller`` set, the same
process also runs the rollout controller (leader by lease: with many servers
on one store, one of them acts).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

import modelyard
from modelyard.errors import ModelyardError
from modelyard.serving._types import SamplingParams
from modelyard.store import Store, utcnow

if TYPE_CHECKING:
    from modelyard.delivery import Controller
    from modelyard.serving._plane import DataPlane

log = logging.getLogger(__name__)

SMOKE = SamplingParams(max_tokens=1, temperature=0.0)


class ServerAgent:
    def __init__(
        self,
        store: Store,
        plane: DataPlane,
        *,
        address: str = "",
        interval_s: float = 2.0,
        controller: Controller | None = None,
        controller_interval_s: float = 1.0,
    ) -> None:
        self.store, self.plane = store, plane
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.address = address
        self.interval_s = interval_s
        self.started_at: datetime = utcnow()
        self.prepared: dict[str, dict[str, Any]] = {}
        self.controller = controller
        self.controller_interval_s = controller_interval_s
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._threads.append(threading.Thread(target=self._loop, name="modelyard-agent",
                                              daemon=True))  # fmt: skip
        if self.controller is not None:
            controller = self.controller
            self._threads.append(
                threading.Thread(
                    target=controller.run,
                    args=(self._stop, self.controller_interval_s),
                    name="modelyard-controller",
                    daemon=True,
                )
            )
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        try:
            self.store.remove_server(self.id)
        except ModelyardError as exc:
            log.warning("could not remove this server's heartbeat: %s", exc.one_line())

    def beat(self) -> None:
        """Prepare what needs preparing, then write one heartbeat."""
        self._prepare()
        engine = self.plane.engine
        self.store.heartbeat_server(
            self.id,
            address=self.address,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            engine=engine.name,
            modelyard_version=modelyard.__version__,
            started_at=self.started_at,
            ready=self.plane.ready.is_set(),
            draining=self.plane.drain.draining,
            state={
                "loaded": engine.loaded(),
                "failures": self.plane.health.failures(),
                "prepared": self.prepared,
            },
        )

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.beat()
            except ModelyardError as exc:  # the store may be down for a moment
                log.warning("heartbeat failed: %s", exc.one_line())
            self._stop.wait(self.interval_s)

    def _prepare(self) -> None:
        active = {r.id: r for r in self.store.list_rollouts(active=True)}
        for rollout_id in [k for k in self.prepared if k not in active]:
            del self.prepared[rollout_id]
        for r in active.values():
            if r.phase != "preparing" or r.id in self.prepared:
                continue
            version = self.store.get_model_version_by_id(r.target_version_id)
            report: dict[str, Any] = {"version": version.ref, "at": utcnow().isoformat()}
            try:
                prompt = self.plane.engine.render_chat(version, [{"role": "user", "content": "ok"}])
                self.plane.engine.generate(version, prompt, SMOKE)
                report["ok"] = True
            except ModelyardError as exc:
                report.update(ok=False, error=exc.one_line())
                self.plane.health.failed(version.ref, exc.message)
                log.warning("rollout %s: %s cannot be served here: %s", r.id, version.ref,
                            exc.one_line())  # fmt: skip
            self.prepared[r.id] = report
