"""A model with many versions: listed a page at a time through the admin API, and whole by
the store and the remote CLI, with every version's aliases (read for all at once)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelyard.access import create_actor_token
from modelyard.admin import ADMIN_PREFIX, create_admin_app
from modelyard.audit import AccessPolicy
from modelyard.cli import _remote_plane
from modelyard.cli._remote import AdminClient, Remote
from modelyard.cli._remote_plane import RemotePlane
from modelyard.errors import ConfigError
from modelyard.serving import BackgroundServer, EchoEngine, create_app
from modelyard.store import Store

N = 12  # versions of "support"
KEY = "scale-registry-test-key-scale-registry"


def _seed(store: Store, versions: int = N) -> None:
    store.create_tenant("acme")
    store.register_base_model("tiny", "/models/tiny", {"model.safetensors": "ab" * 32})
    store.register_base_model("small", "/models/small", {"model.safetensors": "cd" * 32})
    store.create_registered_model("support", tenant="acme")
    store.create_registered_model("other", tenant="acme")
    for i in range(1, versions + 1):
        store.create_model_version(
            "support", kind="adapter", artifact_digest=f"{i:064x}",
            base_model="tiny" if i % 2 else "small", run_id=None, lineage={"seed": i},
            metrics={},
        )  # fmt: skip
    store.create_model_version(
        "other", kind="adapter", artifact_digest="ee" * 32, base_model="tiny", run_id=None,
        lineage={}, metrics={},
    )  # fmt: skip
    store.set_alias("support", "staging", 2)
    store.set_alias("support", "canary", 11)
    store.set_alias("support", "beta", 11)
    store.set_alias("other", "staging", 1)


def _shape(version: Any) -> tuple[int, tuple[str, ...], str]:
    return version.version, tuple(version.aliases), version.base_model


def test_the_store_lists_every_version_or_the_newest_page_below_a_number(
    tmp_path: Path,
) -> None:
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        _seed(store)
        every = store.list_model_versions("support")
        assert [v.version for v in every] == list(range(1, N + 1))
        # each version as reading it alone gives it: aliases, base, lineage
        assert every == [store.get_model_version("support", i) for i in range(1, N + 1)]
        assert _shape(every[1]) == (2, ("staging",), "small")
        assert _shape(every[10]) == (11, ("beta", "canary"), "tiny")
        newest = store.list_model_versions("support", limit=5)
        assert [v.version for v in newest] == [8, 9, 10, 11, 12]
        older = store.list_model_versions("support", limit=5, before=8)
        assert [v.version for v in older] == [3, 4, 5, 6, 7]
        assert [v.version for v in store.list_model_versions("support", before=3)] == [1, 2]
        assert store.list_model_versions("support", limit=5, before=1) == []
        by_id = store.get_model_versions_by_ids([every[1].id, every[10].id])
        assert sorted(map(_shape, by_id.values())) == [_shape(every[1]), _shape(every[10])]
        with pytest.raises(ConfigError, match="limit"):
            store.list_model_versions("support", limit=0)


@dataclass
class World:
    store: Store
    url: str  # the server's, without the admin prefix
    token: str

    def get(self, path: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.get(self.url + ADMIN_PREFIX + path, headers=headers, timeout=30)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    policy = AccessPolicy(bootstrap_admin="ops")
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with Store.open(url, actor="ops", audit_key=KEY, policy=policy) as ops:
        ops.add_actor("ops", "admin")
        _seed(ops)
        token = create_actor_token(ops, "ops")[1]
        app = create_app(
            ops, EchoEngine(), heartbeat_s=None, mounts={ADMIN_PREFIX: create_admin_app(ops)}
        )
        with BackgroundServer(app) as server:
            yield World(ops, server.base_url, token)


def test_the_admin_api_answers_a_page_of_versions_and_pages_back_to_the_first(
    world: World,
) -> None:
    r = world.get("/models/support/versions?limit=5")
    assert r.status_code == 200, r.text
    page = r.json()
    assert [v["version"] for v in page] == [8, 9, 10, 11, 12]  # the newest, ascending
    assert page[3]["aliases"] == ["beta", "canary"] and "state" in page[3]["gates"]
    seen: list[int] = []
    path = "/models/support/versions?limit=5"
    while True:  # the next page back: before= the first version of this one
        page = world.get(path).json()
        seen[:0] = [v["version"] for v in page]
        if len(page) < 5:
            break
        path = f"/models/support/versions?limit=5&before={page[0]['version']}"
    assert seen == list(range(1, N + 1))
    # without a limit: at most the default page (100), here every version
    assert [v["version"] for v in world.get("/models/support/versions").json()] == seen
    for bad in ("limit=0", "limit=1001", "before=0", "limit=x"):
        r = world.get(f"/models/support/versions?{bad}")
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["error"]["param"] == bad.split("=")[0]


def test_the_remote_cli_pages_through_every_version(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_remote_plane, "VERSIONS_PAGE", 5)
    remote = Remote.from_env({"MODELYARD_URL": world.url, "MODELYARD_TOKEN": world.token})
    with RemotePlane(AdminClient(remote)) as plane:
        found = plane.list_model_versions("support")
    local = world.store.list_model_versions("support")
    assert [_shape(v) for v in found] == [_shape(v) for v in local]
    assert [v.version for v in found] == list(range(1, N + 1))
