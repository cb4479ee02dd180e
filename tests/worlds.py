"""Small worlds in a store for tests: a tenant, a registered model, versions, an endpoint.

``two_tenant_world`` builds one such world per tenant (``acme`` and ``globex`` by
default), each with a ``{tenant}-bot`` model and a ``{tenant}-support`` endpoint.

The versions have no real artifact (digest ``00…``): for tests where the engine is
a fake or no server runs. ``tests/tinymodels.py`` has real tiny models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from modelyard.audit import AuditKeySource
from modelyard.store import ModelVersion, NewInferenceRecord, StoragePolicy, Store


def fake_world(
    store: Store,
    *,
    tenant: str = "acme",
    model: str = "bot",
    endpoint: str | None = "support",
    versions: int = 2,
    template: str | None = "alpaca",
    storage_policy: StoragePolicy = "full",
    base_model: str = "tiny",
    gates: bool | None = True,
) -> list[ModelVersion]:
    """``base_model``, ``tenant``, ``model`` with ``versions`` versions and, unless None,
    ``endpoint`` serving version 1; returns the versions. Each version's gates passed
    (``gates`` True), failed (False) or were never evaluated (None)."""
    store.register_base_model(base_model, f"/models/{base_model}", {})
    store.create_tenant(tenant, storage_policy=storage_policy)
    store.create_registered_model(model, tenant=tenant)
    lineage = {} if template is None else {"prompt_template": template}
    made = [
        store.create_model_version(
            model,
            kind="adapter",
            artifact_digest="00" * 32,
            base_model=base_model,
            run_id=None,
            lineage=lineage,
            metrics=gate_metrics(gates),
        )
        for _ in range(versions)
    ]
    if endpoint is not None:
        store.create_endpoint(endpoint, model_ref=f"{model}:1", tenant=tenant)
    return made


def gate_metrics(passed: bool | None) -> dict[str, Any]:
    """A version's metrics with one recorded gate verdict (none when ``passed`` is None)."""
    if passed is None:
        return {}
    observed = 0.9 if passed else 0.2
    verb = ">=" if passed else "is not >="
    verdict = {
        "gate": "exact_match >= 0.8",
        "metric": "exact_match",
        "observed": observed,
        "threshold": 0.8,
        "passed": passed,
        "reason": f"exact_match {observed} {verb} 0.8",
    }
    return {"exact_match": observed, "gates": {"passed": passed, "verdicts": [verdict]}}


def two_tenant_world(
    store: Store,
    *,
    tenants: Sequence[str] = ("acme", "globex"),
    policies: Mapping[str, StoragePolicy] | None = None,
    versions: int = 2,
    template: str | None = "alpaca",
    base_model: str = "tiny",
) -> dict[str, list[ModelVersion]]:
    """A ``fake_world`` per tenant, in order: model ``{tenant}-bot`` with ``versions``
    versions and endpoint ``{tenant}-support`` serving version 1. A tenant's storage
    policy is ``policies[tenant]``, else ``"full"``. Returns the versions per tenant."""
    policies = policies or {}
    return {
        tenant: fake_world(
            store,
            tenant=tenant,
            model=f"{tenant}-bot",
            endpoint=f"{tenant}-support",
            versions=versions,
            template=template,
            storage_policy=policies.get(tenant, "full"),
            base_model=base_model,
        )
        for tenant in tenants
    }


def answered(store: Store, rid: str, version: int, at: datetime) -> NewInferenceRecord:
    """A record of ``fake_world``'s endpoint ``support`` answered ``ok`` by ``bot:version``
    for tenant ``acme`` at ``at`` (prompt ``Q?``, response ``A.``)."""
    return NewInferenceRecord(
        id=rid, endpoint_name="support", route="chat.completions", latency_ms=5.0,
        status="ok", http_status=200, tenant_id=store.get_tenant("acme").id,
        version_id=store.get_model_version("bot", version).id, prompt="Q?", response="A.",
        created_at=at,
    )  # fmt: skip


def home_store(home: Path) -> Store:
    """The store of the home ``home`` with the home's own audit key file, as every command
    run with ``MODELYARD_HOME=home`` opens it (a job that discards records appends to the
    chain, and needs the key that wrote it)."""
    return Store.open(
        f"sqlite:///{home / 'store.db'}", audit_key=AuditKeySource(key_file=home / "audit.key")
    )


def tiny_helpdesk_version(store: Store, home: Path, tiny: Mapping[str, Path]) -> ModelVersion:
    """The ``tiny`` fixture's adapter registered as a version of ``helpdesk`` (alpaca
    prompts) on the base ``tiny-real``, its artifact in ``home``'s artifact store."""
    from modelyard.artifacts import ArtifactStore

    store.register_base_model("tiny-real", str(tiny["base"]), {})
    store.create_registered_model("helpdesk")
    stored = ArtifactStore(home / "artifacts").put_dir(tiny["adapter"], kind="adapter")
    return store.create_model_version(
        "helpdesk", kind="adapter", artifact_digest=stored.digest, base_model="tiny-real",
        run_id=None, lineage={"prompt_template": "alpaca"}, metrics={},
    )  # fmt: skip
