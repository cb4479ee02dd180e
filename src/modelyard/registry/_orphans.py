"""What a failed or killed writer leaves behind, and removing it safely.

A blob is referenced when a model version, a dataset version or a tenant's file
(the Files API) names its digest; a registered model is empty when it has no version. Writers call
``discard_unreferenced`` / ``drop_if_empty`` when their row was refused, so a
failure leaves nothing behind; ``modelyard doctor`` finds what a killed
process could not clean up.
"""

from __future__ import annotations

from modelyard.artifacts import ArtifactStore
from modelyard.errors import ConfigError, Conflict, ModelyardError, NotFound
from modelyard.store import RegisteredModel, Store


def _hex(digest: str) -> str:
    return digest.removeprefix("sha256:").lower()


def referenced_digests(store: Store) -> set[str]:
    """Every artifact digest a model version, a dataset version or a file points to (bare
    hex)."""
    digests = {_hex(d.artifact_digest) for d in store.list_datasets()}
    digests.update(_hex(d) for d in store.file_digests())
    for model in store.list_registered_models():
        digests.update(_hex(v.artifact_digest) for v in store.list_model_versions(model.name))
    return digests


def discard_unreferenced(store: Store, artifacts: ArtifactStore, digest: str) -> bool:
    """Delete the blob ``digest`` when no row references it; whether it was deleted.

    Best effort: called while another error is on its way out, so a store or
    disk failure here is swallowed (``modelyard doctor`` finds the blob later).
    """
    try:
        if _hex(digest) in referenced_digests(store):
            return False
        artifacts.delete(digest)
    except (ModelyardError, OSError):
        return False
    return True


def drop_if_empty(store: Store, name: str, *, reason: str) -> bool:
    """Delete the registered model ``name`` when it has no version and no endpoint."""
    try:
        store.delete_registered_model(name, reason=reason)
    except ModelyardError:  # has versions now, gone, or the store refused: leave it
        return False
    return True


def ensure_model(store: Store, name: str, *, tenant: str | None, description: str) -> bool:
    """Create the registered model ``name`` unless it exists; whether it was created here.

    A concurrent writer creating the same model first is not an error. A model that
    exists already must belong to ``tenant`` when one is given (``check_model_owner``).
    """
    try:
        model = store.get_registered_model(name)
    except NotFound:
        try:
            store.create_registered_model(name, tenant=tenant, description=description)
        except Conflict:
            model = store.get_registered_model(name)  # created meanwhile by a parallel writer
        else:
            return True
    _check_owner(model, tenant)
    return False


def check_model_owner(
    store: Store, name: str, tenant: str | None, *, description: str = ""
) -> None:
    """Before any work: a version for ``tenant`` may only join a model of that tenant.

    A Conflict when ``name`` exists and belongs to another tenant (or to none), so a
    tenant's version never lands in someone else's model; nothing when it does not exist
    yet or no tenant is given (a version then joins the model as it is). A
    ``description`` is the new model's: for a model that exists with another one it is
    a ConfigError, never silently dropped.
    """
    if tenant is None and not description:
        return
    try:
        model = store.get_registered_model(name)
    except NotFound:
        return
    _check_owner(model, tenant)
    if description and description != model.description:
        raise ConfigError(
            f"registered model {name!r} exists already, described as "
            f"{model.description or '(nothing)'!r}: a description is given to a new model",
            hint="Leave the description out to add a version to it, or name a new model.",
            field="--description",
        )


def _check_owner(model: RegisteredModel, tenant: str | None) -> None:
    if tenant is None or model.tenant == tenant:
        return
    owner = f"tenant {model.tenant!r}" if model.tenant else "no tenant"
    raise Conflict(
        f"registered model {model.name!r} belongs to {owner}, not to tenant {tenant!r}",
        hint=f"Name another model for {tenant}'s versions, or leave the tenant out to add a "
        f"version to {model.name!r} as it is.",
        model=model.name,
        tenant=tenant,
        owner=model.tenant,
    )
