"""`modelyard quickstart` end to end, as `make quickstart` runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clihelp import modelyard
from modelyard.store import Store


@pytest.mark.slow
def test_quickstart_trains_serves_and_records(tmp_path: Path) -> None:
    home = tmp_path / "home"
    r = modelyard("quickstart", "--requests", "4", "--json", home=home, timeout=900)
    assert r.code == 0, r.err[-3000:]
    result = json.loads(r.out)
    assert result["isolation_enforced"] is True
    assert {t["tenant"] for t in result["tenants"]} == {"acme-insurance", "globex-it"}
    for tenant in result["tenants"]:
        # The adapter must measurably beat its base on held-out rows.
        assert tenant["adapter_exact_match"] >= 0.9, tenant
        assert tenant["adapter_exact_match"] >= tenant["base_exact_match"] + 0.3, tenant
        assert tenant["api_requests"] == 4
    with Store.open(f"sqlite:///{home / 'store.db'}") as store:
        for tenant in result["tenants"]:
            records = store.list_inference_records(endpoint=tenant["endpoint"])
            ok = [rec for rec in records if rec.status == "ok"]
            assert len(ok) == 4
            assert {rec.tenant for rec in ok} == {tenant["tenant"]}
            assert {rec.version for rec in ok} == {tenant["version"]}
            version = store.resolve_model_ref(tenant["version"])
            assert version.lineage["dataset"]["digest"]
            assert version.lineage["base_model"]["weights"]
            assert "champion" in version.aliases
        assert (home / "artifacts").is_dir()
