"""Listing registered models on the store: a few queries for them all (not three a model),
with their latest versions, a page at a time by name; tenants and keys a page at a time."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import selects, statements
from modelyard.access import create_api_key
from modelyard.errors import ConfigError, NotFound
from modelyard.store import Store
from worlds import gate_metrics


def _seed(store: Store, models: int) -> None:
    """``models`` models m00, m01, ...: every third without a version, the others with two
    (the latest's gates passed, failed or never ran), aliases on some; half of them acme's."""
    if not store.list_tenants():
        store.create_tenant("acme")
        store.create_tenant("globex")
        store.register_base_model("tiny", "/models/tiny", {"model.safetensors": "ab" * 32})
        store.register_base_model("small", "/models/small", {"model.safetensors": "cd" * 32})
    have = len(store.list_registered_models())
    for i in range(have, have + models):
        name = f"m{i:02d}"
        store.create_registered_model(name, tenant=("acme", "globex", None)[i % 3])
        if i % 3 == 2:
            continue
        for n in (1, 2):
            store.create_model_version(
                name, kind="adapter", artifact_digest=f"{i:032x}{n:032x}",
                base_model="tiny" if n == 1 else "small", run_id=None, lineage={"n": n},
                metrics=gate_metrics((True, False, None)[i % 3] if n == 2 else None),
            )  # fmt: skip
        store.set_alias(name, "staging", 1)
        if i % 2:
            store.set_alias(name, "canary", 2)


def test_models_and_their_latest_versions_cost_the_same_few_queries_for_3_or_30(
    tmp_path: Path,
) -> None:
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        _seed(store, 3)
        costs = []
        for more in (0, 27):
            _seed(store, more)
            for listing in (
                store.list_registered_models,
                store.list_models_with_latest,
                lambda: store.list_registered_models("acme"),
                lambda: store.list_models_with_latest(limit=10, after="m00"),
            ):
                with statements(store) as seen:
                    listing()
                costs.append(len(selects(seen)))
        assert costs[:4] == costs[4:], costs  # 3 models or 30: the same queries
        assert max(costs) <= 4, costs


def test_the_listing_is_what_reading_each_model_gives(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        _seed(store, 12)
        names = [f"m{i:02d}" for i in range(12)]
        models = store.list_registered_models()
        assert models == [store.get_registered_model(n) for n in names]
        assert models[1].aliases == {"staging": 1, "canary": 2} and models[1].tenant == "globex"
        assert models[2].latest_version is None and models[2].aliases == {}
        assert models[2].tenant is None
        listed = store.list_models_with_latest()
        assert [m for m, _ in listed] == models
        for model, latest in listed:
            if model.latest_version is None:
                assert latest is None
            else:  # the version as reading it alone gives it: aliases, base, metrics
                assert latest == store.get_model_version(model.name, model.latest_version)
        states = [None if v is None else v.gates.state for _, v in listed[:3]]
        assert states == ["passed", "failed", None]
        assert listed[1][1] is not None and listed[1][1].aliases == ("canary",)
        acme = store.list_registered_models("acme")
        assert [m.name for m in acme] == names[::3]
        with pytest.raises(NotFound, match="nobody"):
            store.list_registered_models("nobody")


def test_models_page_by_name(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        _seed(store, 12)
        every = store.list_registered_models()
        assert store.list_registered_models(limit=5) == every[:5]
        assert store.list_registered_models(limit=5, after="m04") == every[5:10]
        assert store.list_registered_models(after="m09") == every[10:]
        assert store.list_registered_models(limit=5, after="m11") == []
        assert store.list_registered_models(after="m035") == every[4:]  # any text, not a name
        page = store.list_models_with_latest(limit=4, after="m03")
        assert [m.name for m, _ in page] == ["m04", "m05", "m06", "m07"]
        assert page == store.list_models_with_latest()[4:8]
        acme = store.list_registered_models("acme", limit=2, after="m00")
        assert [m.name for m in acme] == ["m03", "m06"]
        for bad in (0, -1):
            with pytest.raises(ConfigError, match="limit") as raised:
                store.list_registered_models(limit=bad)
            assert raised.value.context.get("field") == "limit"


def test_tenants_and_keys_page(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        for name in ("t3", "t1", "t2", "t4"):
            store.create_tenant(name)
        assert [t.name for t in store.list_tenants(limit=2)] == ["t1", "t2"]
        assert [t.name for t in store.list_tenants(limit=2, after="t2")] == ["t3", "t4"]
        assert store.list_tenants(after="t4") == []
        made = [create_api_key(store, t)[0].id for t in ("t2", "t1", "t2", "t2", "t3")]
        assert [k.id for k in store.list_api_keys()] == made  # oldest first
        assert [k.id for k in store.list_api_keys(limit=2)] == made[:2]
        assert [k.id for k in store.list_api_keys(limit=2, after=made[1])] == made[2:4]
        assert [k.id for k in store.list_api_keys(after=made[3])] == made[4:]
        assert [k.id for k in store.list_api_keys("t2", limit=2, after=made[0])] == made[2:4]
        with pytest.raises(ConfigError, match="no API key") as raised:
            store.list_api_keys(after="nope")
        assert raised.value.context.get("field") == "after"
        for listing in (store.list_tenants, store.list_api_keys):
            with pytest.raises(ConfigError, match="limit"):
                listing(limit=0)
