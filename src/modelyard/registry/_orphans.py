"""What a failed or killed writer leaves behind, and removing it safely.

A blob is referenced when a model version or a dataset version names its
digest; a registered model is empty when it has no version. Writers call
``discard_unreferenced`` / ``drop_if_empty`` when their row was refused, so a
failure leaves nothing behind; ``modelyard doctor`` finds what a killed
process could not clean up.
"""

from __future__ import annotations

from modelyard.artifacts import ArtifactStore
from modelyard.errors import Conflict, ModelyardError, NotFound
from modelyard.store import Store


def _hex(digest: str) -> str:
    return digest.removeprefix("sha256:").lower()


def referenced_digests(store: Store) -> set[str]:
    """Every artifact digest a model version or a dataset version points to (bare hex)."""
    digests = {_hex(d.artifact_digest) for d in store.list_datasets()}
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

    A concurrent writer creating the same model first is not an error.
    """
    try:
        store.get_registered_model(name)
        return False
    except NotFound:
        pass
    try:
        store.create_registered_model(name, tenant=tenant, description=description)
    except Conflict:
        return False  # created meanwhile by a parallel import or fine-tune
    return True
