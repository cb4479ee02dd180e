"""The operator's levers on a rollout (promote, abort, pause, resume, start --to NAME) as
the CLI and the admin API answer them: refused while they would hurt, with the right
status; a bare model name says which version it chose."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from clihelp import modelyard
from modelyard.access import create_actor_token
from modelyard.admin import create_admin_app
from modelyard.audit import AccessPolicy
from modelyard.delivery import Controller
from modelyard.store import Store
from worlds import fake_world

KEY = "delivery-levers-key-delivery-levers"


def _plan(store: Store, endpoint: str = "support") -> dict[int, int]:
    return {r.version: r.weight for r in store.get_endpoint(endpoint).routes if r.weight}


# -- the CLI, as a user runs it ----------------------------------------------------------------


@pytest.fixture
def store(home: Path) -> Iterator[Store]:
    home.mkdir(parents=True)
    with Store.open(f"sqlite:///{home / 'store.db'}") as s:
        fake_world(s, versions=3, template=None)
        s.create_endpoint("quiet", model_ref="bot:1", tenant="acme")  # never rolled out
        yield s


def test_promote_is_refused_while_the_rollout_is_preparing(store: Store, home: Path) -> None:
    assert modelyard("rollout", "start", "support", "--to", "bot:2", home=home).code == 0
    ran = modelyard("rollout", "promote", "support", home=home)
    assert ran.code == 1, ran
    assert "still preparing" in ran.err and "bot:2" in ran.err and "Traceback" not in ran.err
    assert "says baking" in ran.err and "modelyard rollout abort support" in ran.err
    r = store.latest_rollout("support")
    assert (r.status, r.phase) == ("running", "preparing") and _plan(store) == {1: 100}
    # paused while preparing: still refused, and told to resume first
    assert modelyard("rollout", "pause", "support", home=home).code == 0
    ran = modelyard("rollout", "promote", "support", home=home)
    assert ran.code == 1 and "(paused)" in ran.err and "rollout resume support" in ran.err
    assert _plan(store) == {1: 100}
    # once the controller has it baking (every live server ready), promote goes through
    assert modelyard("rollout", "resume", "support", home=home).code == 0
    Controller(store).tick()
    assert store.latest_rollout("support").phase == "baking"
    ran = modelyard("rollout", "promote", "support", home=home)
    assert ran.code == 0, ran
    assert store.latest_rollout("support").status == "succeeded" and _plan(store) == {2: 100}


def test_a_pause_or_resume_that_changes_nothing_says_so(store: Store, home: Path) -> None:
    """Pausing a paused rollout (or resuming a running one) changes nothing and exits 0,
    as the admin API answers 200; it printed "paused" / "resumed" as if it had acted."""
    assert modelyard("rollout", "start", "support", "--to", "bot:2", home=home).code == 0
    ran = modelyard("rollout", "resume", "support", home=home)
    assert ran.code == 0 and ran.out.startswith("not paused (running)"), ran.out
    ran = modelyard("rollout", "pause", "support", home=home)
    assert ran.code == 0 and ran.out.startswith("paused"), ran.out
    ran = modelyard("rollout", "pause", "support", home=home)
    assert ran.code == 0 and ran.out.startswith("already paused"), ran.out
    assert [e.kind for e in store.latest_rollout("support").events].count("paused") == 1
    ran = modelyard("rollout", "resume", "support", home=home)
    assert ran.code == 0 and ran.out.startswith("resumed"), ran.out


@pytest.mark.parametrize("verb", ["abort", "pause", "resume", "promote"])
def test_a_lever_on_an_endpoint_without_a_rollout_is_a_conflict(
    store: Store, home: Path, verb: str
) -> None:
    ran = modelyard("rollout", verb, "quiet", home=home)
    assert ran.code == 1, ran
    assert "no rollout in progress on endpoint 'quiet'" in ran.err, ran.err
    assert "Traceback" not in ran.err
    ran = modelyard("rollout", verb, "nope", home=home)
    assert ran.code == 1 and "no endpoint named 'nope'" in ran.err, ran.err


def test_to_a_bare_model_name_says_it_chose_the_latest_version(store: Store, home: Path) -> None:
    ran = modelyard("rollout", "start", "support", "--to", "bot", home=home)
    assert ran.code == 0, ran
    assert "rolling out bot:3 (the latest version of bot" in ran.out, ran.out
    assert "give bot:N to choose one" in ran.out
    assert store.latest_rollout("support").target == 3
    assert modelyard("rollout", "abort", "support", home=home).code == 0
    store.set_alias("bot", "staging", 2)
    ran = modelyard("rollout", "start", "support", "--to", "bot@staging", home=home)
    assert ran.code == 0 and "rolling out bot:2 (bot@staging points at it)" in ran.out, ran.out
    assert modelyard("rollout", "abort", "support", home=home).code == 0
    ran = modelyard("rollout", "start", "support", "--to", "bot:2", home=home)
    assert ran.code == 0 and "rolling out" not in ran.out  # a version named: nothing to add


# -- the admin API -----------------------------------------------------------------------------


@dataclass
class Api:
    client: TestClient
    store: Store
    tokens: dict[str, str]

    def post(self, path: str, json: Any = None, who: str = "ops") -> Any:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        return self.client.post(path, json=json, headers=headers)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    policy = AccessPolicy(bootstrap_admin="ops")
    with Store.open(url, actor="ops", audit_key=KEY, policy=policy) as ops:
        ops.add_actor("ops", "admin")
        ops.add_actor("viv", "viewer")
        fake_world(ops, versions=3, template=None)
        ops.create_endpoint("quiet", model_ref="bot:1", tenant="acme")
        tokens = {name: create_actor_token(ops, name)[1] for name in ("ops", "viv")}
        with TestClient(create_admin_app(ops), raise_server_exceptions=False) as client:
            yield Api(client, ops, tokens)


def test_the_admin_api_refuses_promote_while_preparing_with_409(api: Api) -> None:
    r = api.post("/endpoints/support/rollout", {"to": "bot:2", "steps": [10, 100]})
    assert r.status_code == 201, r.text
    r = api.post("/endpoints/support/rollout/promote")
    assert r.status_code == 409, r.text
    assert "still preparing" in r.json()["error"]["message"]
    assert _plan(api.store) == {1: 100}
    Controller(api.store).tick()  # no live server to wait for: baking
    r = api.post("/endpoints/support/rollout/promote")
    assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text


@pytest.mark.parametrize("verb", ["abort", "pause", "resume", "promote"])
def test_the_admin_api_answers_409_without_a_rollout_and_404_without_the_endpoint(
    api: Api, verb: str
) -> None:
    r = api.post(f"/endpoints/quiet/rollout/{verb}")
    assert r.status_code == 409, r.text
    assert "no rollout in progress on endpoint 'quiet'" in r.json()["error"]["message"]
    r = api.post(f"/endpoints/nope/rollout/{verb}")
    assert r.status_code == 404, r.text
    assert "no endpoint named 'nope'" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("to", "by", "ref"), [("bot", "latest", "bot:3"), ("bot:2", "version", "bot:2")]
)
def test_the_admin_api_says_which_version_to_chose(api: Api, to: str, by: str, ref: str) -> None:
    r = api.post("/endpoints/support/rollout", {"to": to})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["target_ref"] == ref
    assert body["resolved"] == {
        "requested": to, "by": by, "ref": ref, "note": body["resolved"]["note"],
    }  # fmt: skip
    if by == "latest":
        assert "the latest version of bot" in body["resolved"]["note"]


def test_a_viewer_is_refused_with_403_whatever_the_rollouts_state(api: Api) -> None:
    """The role is checked before the state: a viewer's promote of a preparing rollout, or
    pause of a paused one, or abort where none runs, is a 403 (audited), not a 409 (nor a
    200 for the pause that changed nothing)."""
    denied = len(api.store.list_audit_events(action="permission.denied", limit=None))
    for verb in ("abort", "pause", "resume", "promote"):
        r = api.post(f"/endpoints/quiet/rollout/{verb}", who="viv")
        assert r.status_code == 403, (verb, r.text)
    assert api.post("/endpoints/support/rollout", {"to": "bot:2"}).status_code == 201
    assert api.post("/endpoints/support/rollout/pause").status_code == 200
    for verb in ("pause", "promote"):
        r = api.post(f"/endpoints/support/rollout/{verb}", who="viv")
        assert r.status_code == 403, (verb, r.text)
        assert "may not" in r.json()["error"]["message"]
    refusals = api.store.list_audit_events(action="permission.denied", limit=None)
    assert len(refusals) == denied + 6
    assert api.store.latest_rollout("support").status == "paused"
