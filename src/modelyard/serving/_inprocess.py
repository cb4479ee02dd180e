"""The data plane in process, without HTTP: what ``modelyard batch run`` calls.

``InProcessPlane`` builds the ``DataPlane`` exactly as ``create_app`` does (a
``Router`` over the store's endpoints and traffic plans, a ``RecordWriter``
with its request journal, the ``ServerLimits``) and asks it the way the chat
route does: ``DataPlane.enter`` (the key's limits, the tenant's slots, routing,
rendering, the engine) then ``wait_whole`` (a version that cannot load falls
back, a request past the timeout is cancelled, the outcome is recorded). So a
batch row meets the same traffic plan, shadow, limits, storage policy and
records as an API request; nothing of it is done a second way here.

An operator (the CLI on the store, no API key) may pin one version instead of
an endpoint (``pinned``): its requests are routed to that version alone, under
the tenant given, with no rate limits (``operator_key``), and their records
name the version's ref as their endpoint.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from modelyard.errors import EndpointNotFound, MissingScope
from modelyard.monitoring import RecordWriter, close_abandoned, new_server_id
from modelyard.serving._auth import KeyCache
from modelyard.serving._engine import Engine
from modelyard.serving._limits import ServerLimits
from modelyard.serving._plane import DataPlane
from modelyard.serving._router import Route, Router
from modelyard.serving._sse import wait_whole
from modelyard.serving._types import Generation, Origin, SamplingParams
from modelyard.store import ApiKey, Endpoint, ModelVersion, Store, Tenant

OPERATOR_KEY_ID = "operator"  # the api_key_id of an operator's own requests


@dataclass(frozen=True)
class Answer:
    """One request's answer: its record's id, the version that answered, the generation."""

    record_id: str
    version: ModelVersion
    generation: Generation


def operator_key(tenant: Tenant) -> ApiKey:
    """The identity of an operator's requests (no API key): ``tenant``'s storage policy and
    records, the ``infer`` scope, no rate limits of its own."""
    return ApiKey(
        id=OPERATOR_KEY_ID,
        tenant_id=tenant.id,
        tenant=tenant.name,
        key_hash="",
        scopes=("infer",),
        created_at=tenant.created_at,
        expires_at=None,
        revoked_at=None,
    )


class _PinnedRouter(Router):
    """A router with one route: ``version`` alone, named by its ref, for ``tenant``."""

    def __init__(self, store: Store, version: ModelVersion, tenant: str) -> None:
        super().__init__(store)
        now = datetime.now(UTC)
        endpoint = Endpoint(
            id=0, name=version.ref, tenant=tenant, model=version.model, model_ref=version.ref,
            shared=False, routes=(), created_at=now, updated_at=now,
        )  # fmt: skip
        self._pinned = Route(endpoint, ((version, 100),))

    def refresh(self) -> None:
        """Nothing to reload: the route is the version."""

    def start(self) -> None:
        """Nothing to reconcile."""

    def visible_endpoints(self, key: ApiKey) -> list[Endpoint]:
        return [self._pinned.endpoint] if key.tenant == self._pinned.endpoint.tenant else []

    def route(self, name: str, key: ApiKey) -> Route:
        if name != self._pinned.endpoint.name or key.tenant != self._pinned.endpoint.tenant:
            raise EndpointNotFound(f"the model {name!r} is not the version this job runs")
        return self._pinned


class InProcessPlane:
    """The data plane of ``create_app``, called in this process. Use as a context manager
    (``start``/``close``); the caller keeps ownership of ``store`` and ``engine``."""

    def __init__(
        self,
        store: Store,
        engine: Engine,
        *,
        limits: ServerLimits | None = None,
        refresh_seconds: float = 2.0,
        pinned: tuple[ModelVersion, Tenant] | None = None,
    ) -> None:
        self.store, self.engine = store, engine
        self.server_id = new_server_id()  # on its records (the request journal)
        self.router = (
            _PinnedRouter(store, pinned[0], pinned[1].name)
            if pinned is not None
            else Router(store, refresh_seconds=refresh_seconds)
        )
        self.endpoint = pinned[0].ref if pinned is not None else None  # what to ask, pinned
        self._operator = operator_key(pinned[1]) if pinned is not None else None
        self.writer = RecordWriter(
            store,
            server_id=self.server_id,
            sweep=lambda: close_abandoned(store, self.server_id),
            on_drop=lambda n: self.plane.metrics.dropped.inc(n),
        )
        self.plane = DataPlane(store, engine, self.router, self.writer, limits or ServerLimits())
        self._keys = KeyCache(store, self.plane.limits.key_cache_seconds)
        self._started = False

    def start(self) -> InProcessPlane:
        """As the app's lifespan starts: close what stopped servers left running, load the
        endpoints, keep them reconciled, watch the engine."""
        close_abandoned(self.store, self.server_id)
        self.router.refresh()
        self.router.start()
        self.engine.add_observer(self.plane.metrics)
        self.engine.add_observer(self.plane.health)
        self.plane.ready.set()
        self._started = True
        return self

    def close(self) -> None:
        """Stop reconciling and write every record still buffered."""
        if not self._started:
            self.writer.close()
            return
        self._started = False
        self.plane.ready.clear()
        self.router.stop()
        self.engine.remove_observer(self.plane.metrics)
        self.engine.remove_observer(self.plane.health)
        self.plane.budgets.close()  # the charges handed over counted
        self.writer.close()

    def __enter__(self) -> InProcessPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def key(self, raw: str | None, scope: str = "infer") -> ApiKey:
        """The caller's identity: ``raw`` authenticated and holding ``scope`` (InvalidApiKey,
        MissingScope), or, on a pinned plane, the operator's."""
        if raw is None and self._operator is not None:
            return self._operator
        if raw is None:
            raise MissingScope("an API key is needed to call an endpoint")
        key = self._keys.get(raw)
        if scope not in key.scopes:
            raise MissingScope(
                f"API key {key.id} lacks the {scope!r} scope",
                hint=f"Use a key created with --scopes {scope} (`modelyard keys create`).",
            )
        return key

    def check(self, key: ApiKey, endpoint: str) -> Route:
        """The route ``key`` would take to ``endpoint`` now (EndpointNotFound for a missing
        endpoint and another tenant's alike), before any request is sent."""
        return self.router.route(endpoint, key)

    async def chat(
        self,
        key: ApiKey,
        endpoint: str,
        messages: Sequence[Mapping[str, Any]],
        params: SamplingParams,
        *,
        user: str | None = None,
        origin: Origin | None = None,
    ) -> Answer:
        """One chat request, answered whole and recorded, as ``/v1/chat/completions``
        answers it (route ``chat.completions``). Raises its ModelyardError."""
        listed = list(messages)

        def render(version: ModelVersion) -> str:
            return self.engine.render_chat(version, listed, None)

        sub = await self.plane.enter(key, "chat.completions", endpoint, user, params, render,
                                     whole=True, origin=origin)  # fmt: skip
        sub, gen = await wait_whole(self.plane, sub)
        return Answer(sub.record_id, sub.version, gen)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every record handed over so far is written (or dropped), the
        ``running`` rows of the requests still in flight included: a job (``batch run``,
        ``stream run``) discards the records of a row it asks again by their ids, which
        finds only what is written."""
        return self.writer.flush(timeout)

    @property
    def dropped(self) -> int:
        """Records the writer could not write (the store was down, the buffer full)."""
        return self.writer.dropped


__all__ = ["OPERATOR_KEY_ID", "Answer", "InProcessPlane", "operator_key"]
