"""The admin API's listings of models, tenants and keys a page at a time (``limit``, at most
1000, and ``after=`` the last of a page), and the CLI against a server following the pages:
``registry list`` in one request a page (the latest versions' gates come with the models),
``tenants list`` and ``keys list`` whole."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import modelyard.cli._common as cli_common
from modelyard.access import create_actor_token, create_api_key
from modelyard.admin import ADMIN_PREFIX, create_admin_app
from modelyard.audit import AccessPolicy
from modelyard.cli import _remote_plane, main
from modelyard.cli._remote import AdminClient
from modelyard.serving import BackgroundServer, EchoEngine, create_app
from modelyard.store import Store
from worlds import gate_metrics

KEY = "listing-test-key-listing-test-key-x"
MODELS = 7  # m0 .. m6; m2 and m5 without a version


@dataclass
class World:
    store: Store
    home: Path  # the store's: the local CLI's MODELYARD_HOME
    url: str  # the server's, without the admin prefix
    token: str
    keys: list[str]  # ids, oldest first

    def get(self, path: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.get(self.url + ADMIN_PREFIX + path, headers=headers, timeout=30)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setenv("COLUMNS", "200")
    for shown in (cli_common.console, cli_common.err_console):
        monkeypatch.setattr(shown, "width", 200)
    url, policy = f"sqlite:///{tmp_path / 'store.db'}", AccessPolicy(bootstrap_admin="ops")
    with Store.open(url, actor="ops", audit_key=KEY, policy=policy) as ops:
        ops.add_actor("ops", "admin")
        for name in ("t4", "t1", "t3", "t2", "t5"):
            ops.create_tenant(name)
        ops.set_retention("t3", 30)
        ops.register_base_model("tiny", "/models/tiny", {"model.safetensors": "ab" * 32})
        for i in range(MODELS):
            ops.create_registered_model(f"m{i}", tenant=f"t{i % 5 + 1}")
            for n in range(1, 3 if i % 3 != 2 else 1):
                ops.create_model_version(
                    f"m{i}", kind="adapter", artifact_digest=f"{i:032x}{n:032x}",
                    base_model="tiny", run_id=None, lineage={},
                    metrics=gate_metrics((True, False)[i % 2] if n == 2 else None),
                )  # fmt: skip
            if i % 3 != 2:
                ops.set_alias(f"m{i}", "staging", 1)
        keys = [create_api_key(ops, t)[0].id for t in ("t2", "t1", "t2", "t3", "t2")]
        ops.revoke_api_key(keys[2])
        token = create_actor_token(ops, "ops")[1]
        app = create_app(
            ops, EchoEngine(), heartbeat_s=None, mounts={ADMIN_PREFIX: create_admin_app(ops)}
        )
        with BackgroundServer(app) as server:
            yield World(ops, tmp_path, server.base_url, token, keys)


def _walk(world: World, path: str, limit: int, cursor: str) -> tuple[list[Any], int]:
    """Every item of a listing, ``limit`` a page, and how many pages that took."""
    found: list[Any] = []
    query, pages = f"limit={limit}", 0
    sep = "&" if "?" in path else "?"
    while True:
        r = world.get(f"{path}{sep}{query}")
        assert r.status_code == 200, r.text
        page, pages = r.json(), pages + 1
        assert len(page) <= limit
        found.extend(page)
        if len(page) < limit:
            return found, pages
        query = f"limit={limit}&after={page[-1][cursor]}"


def _bad_params(world: World, path: str) -> None:
    sep = "&" if "?" in path else "?"
    for bad in ("limit=0", "limit=1001", "limit=x", "after="):
        r = world.get(f"{path}{sep}{bad}")
        assert r.status_code == 400, (path, bad, r.text)
        assert r.json()["error"]["param"] == bad.split("=")[0], (path, bad)


def test_models_page_by_name_with_their_latest_gates(world: World) -> None:
    whole = world.get("/models")  # no paging parameter: up to 1000, here every model
    assert whole.status_code == 200, whole.text
    models = whole.json()
    assert [m["name"] for m in models] == [f"m{i}" for i in range(MODELS)]
    assert models[0]["latest_version"] == 2 and models[0]["aliases"] == {"staging": 1}
    assert models[0]["latest_gates"]["state"] == "passed"
    assert models[1]["latest_gates"]["state"] == "failed"
    assert models[1]["latest_gates"]["failed"] == ["exact_match 0.2 is not >= 0.8"]
    assert models[2]["latest_version"] is None and models[2]["latest_gates"] is None
    assert models[0]["tenant"] == "t1"
    paged, pages = _walk(world, "/models", 3, "name")
    assert paged == models and pages == 3
    assert [m["name"] for m in world.get("/models?after=m4").json()] == ["m5", "m6"]
    assert [m["name"] for m in world.get("/models?tenant=t2&limit=1").json()] == ["m1"]
    assert [m["name"] for m in world.get("/models?tenant=t2&after=m1").json()] == ["m6"]
    _bad_params(world, "/models")
    r = world.get("/models?tenant=nobody")
    assert r.status_code == 404 and "nobody" in r.json()["error"]["message"]


def test_tenants_and_keys_page(world: World) -> None:
    tenants = world.get("/tenants").json()
    assert [t["name"] for t in tenants] == ["t1", "t2", "t3", "t4", "t5"]
    by_name = {t["name"]: t for t in tenants}
    assert by_name["t2"]["keys"] == {"active": 2, "total": 3}
    assert by_name["t3"]["keys"] == {"active": 1, "total": 1}
    assert by_name["t4"]["keys"] == {"active": 0, "total": 0}
    assert by_name["t3"]["retention_days"] == 30 and by_name["t1"]["retention_days"] is None
    paged, pages = _walk(world, "/tenants", 2, "name")
    assert paged == tenants and pages == 3
    assert world.get("/tenants/t2").json()["keys"] == {"active": 2, "total": 3}
    _bad_params(world, "/tenants")

    keys = world.get("/keys").json()
    assert [k["id"] for k in keys] == world.keys  # oldest first
    assert [k["state"] for k in keys] == ["active", "active", "revoked", "active", "active"]
    paged, pages = _walk(world, "/keys", 2, "id")
    assert paged == keys and pages == 3
    mine, _ = _walk(world, "/keys?tenant=t2", 1, "id")
    assert [k["id"] for k in mine] == [world.keys[0], world.keys[2], world.keys[4]]
    _bad_params(world, "/keys")
    r = world.get("/keys?after=nope")
    assert r.status_code == 400 and r.json()["error"]["param"] == "after", r.text
    assert "no API key with id 'nope'" in r.json()["error"]["message"]


@dataclass
class Ran:
    code: int
    out: str
    err: str


@pytest.fixture
def requests(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The admin API requests the CLI sends (method and path)."""
    sent: list[str] = []
    send = AdminClient.send

    def counted(self: AdminClient, method: str, path: str, **kw: Any) -> Any:
        sent.append(f"{method} {path}")
        return send(self, method, path, **kw)

    monkeypatch.setattr(AdminClient, "send", counted)
    return sent


def _cli(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    line: str, *, remote: bool,
) -> Ran:  # fmt: skip
    with monkeypatch.context() as env:
        if remote:
            env.setenv("MODELYARD_HOME", str(world.home / "empty"))
            env.setenv("MODELYARD_URL", world.url)
            env.setenv("MODELYARD_TOKEN", world.token)
        else:
            env.setenv("MODELYARD_HOME", str(world.home))
            env.setenv("MODELYARD_STORE_URL", f"sqlite:///{world.home / 'store.db'}")
            env.setenv("MODELYARD_AUDIT_KEY", KEY)
            env.setenv("MODELYARD_ACTOR", "ops")
        capsys.readouterr()
        code = main(shlex.split(line))
        out, err = capsys.readouterr()
    return Ran(code, out, err)


def test_registry_list_through_a_server_is_one_request_a_page(
    world: World,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    requests: list[str],
) -> None:
    (world.home / "empty").mkdir()
    for line in ("registry list", "registry list --tenant t2", "registry list --json --tenant t2"):
        here = _cli(world, monkeypatch, capsys, line, remote=False)
        requests.clear()
        there = _cli(world, monkeypatch, capsys, line, remote=True)
        assert here.code == 0, here
        assert (there.code, there.out, there.err) == (here.code, here.out, here.err), line
        assert requests == ["GET /models"], line  # not one more a model
    listed = json.loads(here.out)
    assert [(m["name"], m["latest_gates"]) for m in listed] == [("m1", "failed"), ("m6", "passed")]
    whole = _cli(world, monkeypatch, capsys, "registry list", remote=False).out
    assert "m2 " in whole and "failed" in whole
    monkeypatch.setattr(_remote_plane, "PAGE", 3)  # 7 models: three pages
    requests.clear()
    assert _cli(world, monkeypatch, capsys, "registry list", remote=True).out == whole
    assert requests == ["GET /models"] * 3


def test_tenants_and_keys_list_through_a_server_follow_the_pages(
    world: World,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    requests: list[str],
) -> None:
    (world.home / "empty").mkdir()
    monkeypatch.setattr(_remote_plane, "PAGE", 2)
    for line, pages in (
        ("tenants list", 3),
        ("tenants list --json", 3),
        ("keys list --json", 3),
        ("keys list", 3),
        ("keys list --tenant t2 --json", 2),
    ):
        here = _cli(world, monkeypatch, capsys, line, remote=False)
        requests.clear()
        there = _cli(world, monkeypatch, capsys, line, remote=True)
        assert here.code == 0, here
        assert (there.code, there.out, there.err) == (here.code, here.out, here.err), line
        assert len(requests) == pages, (line, requests)
    assert [k["id"] for k in json.loads(here.out)] == world.keys[0::2]
