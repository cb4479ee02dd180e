"""Desired state, as a server sees it: endpoints, their traffic plans and their versions.

Servers are stateless replicas: the ``Router`` keeps a snapshot of the store
and reconciles it every ``refresh_seconds`` in a background thread (requests
never wait for a reload; one runs at a time), so a new endpoint or a traffic
change takes effect without a restart. A name a key cannot use (missing, or
another tenant's: the same path, so timing does not tell them apart) may also
trigger one reload, so a brand-new endpoint answers at once; at most one such
reload runs per ``refresh_seconds``, shared by every caller (a negative cache:
random names cannot make the server hammer the store). Picking a version is
weighted, and sticky per ``user`` when given.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from dataclasses import dataclass

from modelyard.errors import ConfigError, EndpointNotFound, ModelyardError
from modelyard.store import ApiKey, Endpoint, ModelVersion, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    endpoint: Endpoint
    choices: tuple[tuple[ModelVersion, int], ...]  # (version, weight), weights sum to 100
    shadow: ModelVersion | None = None  # receives a copy of ``shadow_fraction`` of requests
    shadow_fraction: float = 0.0


class Router:
    MAX_REFRESH_S = 86400.0  # a day: a longer wait overflows the thread's timer

    def __init__(self, store: Store, *, refresh_seconds: float = 2.0) -> None:
        if not 0 < refresh_seconds <= self.MAX_REFRESH_S:  # nan and inf too
            raise ConfigError(
                f"refresh_seconds is {refresh_seconds}: it must be above 0 and at most "
                f"{self.MAX_REFRESH_S:g} (how often endpoints and traffic plans are re-read)",
                hint="Give --refresh-seconds a number of seconds such as 2.",
                field="refresh_seconds",
            )
        self._store = store
        self._refresh_seconds = refresh_seconds
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()  # one reload at a time
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._routes: dict[str, Route] = {}
        self._loaded_at = 0.0
        self._unknown_reload_at = -float("inf")  # the last reload an unknown name asked for
        self.reloads = 0  # reloads from the store so far (tests, benchmarks)
        self._rng = random.Random()

    def refresh(self) -> None:
        """Reload every endpoint and its versions from the store (one reload at a time: a
        caller that finds one running waits for it instead of starting another)."""
        asked = time.monotonic()
        with self._refresh_lock:
            if self._loaded_at >= asked:
                return  # another caller reloaded while this one waited
            self._reload()

    def _reload(self) -> None:
        endpoints = self._store.list_endpoints()
        wanted = {r.version_id for ep in endpoints for r in ep.routes}
        wanted |= {ep.shadow_version_id for ep in endpoints if ep.shadow_version_id is not None}
        versions = self._store.get_model_versions_by_ids(wanted)  # one read, not one each
        routes: dict[str, Route] = {}
        for ep in endpoints:
            choices = tuple((versions[r.version_id], r.weight) for r in ep.routes
                            if r.weight > 0 and r.version_id in versions)  # fmt: skip
            shadow = versions.get(ep.shadow_version_id) if ep.shadow_version_id else None
            routes[ep.name] = Route(ep, choices, shadow, ep.shadow_fraction)
        with self._lock:
            self._routes = routes
            self._loaded_at = time.monotonic()
            self.reloads += 1

    def start(self) -> None:
        """Reconcile in a background thread every ``refresh_seconds`` until ``stop``."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="router", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self._refresh_seconds):
            try:
                self.refresh()
            except ModelyardError as exc:  # the store is down: keep serving the last snapshot
                log.warning("cannot reload endpoints from the store: %s", exc.one_line())

    def maybe_refresh(self) -> None:
        """Reload now if the snapshot is stale: older than ``refresh_seconds`` without the
        background thread, or well past it with one (the thread is stuck on the store)."""
        age = time.monotonic() - self._loaded_at
        limit = self._refresh_seconds if self._thread is None else 5 * self._refresh_seconds + 1
        if age >= limit:
            self.refresh()

    def visible_endpoints(self, key: ApiKey) -> list[Endpoint]:
        """The endpoints a key may call: its tenant's and the shared ones."""
        self.maybe_refresh()
        with self._lock:
            routes = list(self._routes.values())
        return [r.endpoint for r in routes if _visible(r.endpoint, key)]

    def route(self, name: str, key: ApiKey) -> Route:
        """The endpoint's route; another tenant's endpoint is a 404 exactly like a missing one."""
        self.maybe_refresh()
        route = self._routes.get(name)
        if not _usable(route, key) and self._may_reload_for_unknown():
            self.refresh()  # a brand-new endpoint should not wait for the next reconcile
            route = self._routes.get(name)
        if route is None or not _usable(route, key):
            raise EndpointNotFound(
                f"the model {name!r} does not exist or you do not have access to it",
                hint="List the models your key can use with GET /v1/models.",
            )
        return route

    def _may_reload_for_unknown(self) -> bool:
        """Whether this unknown name may reload the snapshot: not when it is fresh (0.2 s),
        nor when another unknown name did within ``refresh_seconds`` (claimed here, so
        concurrent callers do not pile up behind it)."""
        now = time.monotonic()
        with self._lock:
            if now - self._loaded_at <= 0.2:
                return False
            if now - self._unknown_reload_at < self._refresh_seconds:
                return False
            self._unknown_reload_at = now
            return True

    def pick(
        self, route: Route, user: str | None = None, exclude: frozenset[int] = frozenset()
    ) -> ModelVersion | None:
        """A version by weight; the same ``user`` keeps landing on the same version.

        Versions in ``exclude`` (ids) are left out and the others share their weight
        (a fallback); None when nothing is left.
        """
        choices = [(v, w) for v, w in route.choices if v.id not in exclude]
        if not choices:
            return None
        if len(choices) == 1:
            return choices[0][0]
        total = sum(w for _, w in choices)
        if user:
            digest = hashlib.sha256(f"{route.endpoint.name}/{user}".encode()).digest()
            point = int.from_bytes(digest[:8], "big") % total
        else:
            point = self._rng.randrange(total)
        for version, weight in choices:
            if point < weight:
                return version
            point -= weight
        return choices[-1][0]

    def mirror(self, route: Route, answered_by: ModelVersion) -> bool:
        """Whether this request, answered by ``answered_by``, should also go to the route's
        shadow version: never when the shadow answered it (a shadow in the plan too)."""
        shadow = route.shadow
        if shadow is None or shadow.id == answered_by.id:
            return False
        return self._rng.random() < route.shadow_fraction


def _usable(route: Route | None, key: ApiKey) -> bool:
    return route is not None and _visible(route.endpoint, key) and bool(route.choices)


def _visible(endpoint: Endpoint, key: ApiKey) -> bool:
    return endpoint.shared or endpoint.tenant == key.tenant
