"""Who a job asks, and as whom: the in-process data plane, the endpoint and the checked key.

Every job (a file, a stream, a Ray actor's share) asks either through an
endpoint with a tenant's API key, or, as an operator, one version alone
(``pinned``: records under a tenant, default the model's owner). Both are
checked before any row or message is read: an unknown endpoint, a key that
cannot reach it or lacks ``infer``, a version that does not exist, is bad
input (a ``ConfigError``, exit 2), not a failed row. So is a version of the job
(``job_versions``) answered by an upstream whose key this process lacks
(``check_upstream_keys``): the job's process asks the upstream, as ``serve`` would.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from modelyard.artifacts import ArtifactStore
from modelyard.errors import AuthError, ConfigError, EndpointNotFound, ModelyardError
from modelyard.registry import UpstreamSpec, verified_files
from modelyard.serving import Engine, InProcessPlane, ServerLimits
from modelyard.store import ApiKey, ModelVersion, Store, Tenant


@dataclass(frozen=True)
class JobPlane:
    """The plane a job asks through, the endpoint it names, its key and the token prices."""

    plane: InProcessPlane
    endpoint: str
    key: ApiKey
    prices: Mapping[str, tuple[float, float]]


@contextmanager
def job_plane(
    store: Store,
    engine: Engine,
    *,
    endpoint: str | None,
    api_key: str | None,
    model: str | None,
    tenant: str | None,
    limits: ServerLimits | None = None,
) -> Iterator[JobPlane]:
    """The checked plane of a job that asks ``endpoint`` with ``api_key``, or (an operator)
    the version ``model`` alone; the plane is closed (its records written) on leaving."""
    pinned = operator_version(store, model, tenant) if model is not None else None
    with InProcessPlane(store, engine, limits=limits, pinned=pinned) as plane:
        named = endpoint or str(plane.endpoint)
        key = checked_key(plane, api_key, named)
        yield JobPlane(plane, named, key, store.token_price_table())


def operator_version(store: Store, model: str, tenant: str | None) -> tuple[ModelVersion, Tenant]:
    """An operator's job: the version ``model`` names and the tenant its records go to
    (``tenant``, else the model's owner), for ``InProcessPlane(pinned=...)``."""
    version = store.resolve_model_ref(model)
    tenant = tenant or store.get_registered_model(version.model).tenant
    if tenant is None:
        raise ConfigError(
            f"{version.model} belongs to no tenant: say whose records the job writes",
            hint="Pass --tenant NAME (its storage policy applies to the records).",
        )
    return version, store.get_tenant(tenant)


def checked_key(plane: InProcessPlane, api_key: str | None, endpoint: str) -> ApiKey:
    """The key (None: the operator's, on a pinned plane), holding ``infer``, that reaches
    ``endpoint``: a refusal is bad input here (exit 2), before any row is sent."""
    try:
        key = plane.key(api_key)
        plane.check(key, endpoint)
    except EndpointNotFound as exc:
        raise ConfigError(
            exc.message,
            hint="A key reaches its tenant's endpoints and shared ones: "
            "`modelyard endpoints list` shows them.",
        ) from exc
    except AuthError as exc:
        raise ConfigError(exc.message, hint=exc.hint) from exc
    return key


def job_versions(store: Store, *, endpoint: str | None, model: str | None) -> list[ModelVersion]:
    """The versions a job's rows may go to: its endpoint's routes and shadow, or the
    operator's one version (``model``)."""
    if model is not None:
        return [store.resolve_model_ref(model)]
    found = store.get_endpoint(str(endpoint))
    ids = {route.version_id for route in found.routes}
    ids |= {found.shadow_version_id} if found.shadow_version_id else set()
    return [store.get_model_version_by_id(i) for i in sorted(ids)]


def check_upstream_keys(
    store: Store, artifacts: ArtifactStore, versions: list[ModelVersion]
) -> None:
    """A ConfigError, before any row is sent, when a version answered by an upstream has
    no key here: every row sent to it would fail, and the job's output would be final."""
    for version in versions:
        if version.kind != "upstream":
            continue
        spec = UpstreamSpec.read(verified_files(store, artifacts, version, by="batch"))
        try:
            spec.api_key()
        except ModelyardError as exc:
            raise ConfigError(
                f"{version.ref} answers from the upstream at {spec.host}, and its key is not "
                f"here: {exc.message}; no row was sent",
                hint=f"This job's own process asks the upstream, as `serve` does: give it "
                f"{spec.credential} here, then run the same command again.",
                version=version.ref,
            ) from None


__all__ = [
    "JobPlane",
    "check_upstream_keys",
    "checked_key",
    "job_plane",
    "job_versions",
    "operator_version",
]
