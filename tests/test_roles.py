"""Access control: roles, protected aliases, segregation of duties, bootstrap; refusals audited."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from clihelp import modelyard
from modelyard.audit import AccessPolicy, AuditKeySource
from modelyard.errors import Conflict, ModelVersionNotFound, PermissionDenied
from modelyard.settings import Settings
from modelyard.store import Store
from worlds import gate_metrics

KEY = "roles-test-key-roles-test-key"


def _opener(url: str, **policy: Any) -> Callable[[str], Store]:
    """Stores on ``url`` acting as a given actor; 'ops' is the bootstrap admin."""
    chosen = dataclasses.replace(AccessPolicy(bootstrap_admin="ops"), **policy)

    def open_as(actor: str) -> Store:
        return Store.open(url, actor=actor, audit_key=KEY, policy=chosen)

    return open_as


def _seed(ops: Store, *, trainer: str = "dana", url: str) -> None:
    """acme/support with version 1 trained (run started) by ``trainer``."""
    ops.create_tenant("acme")
    ops.register_base_model("tiny", "/models/tiny", {"model.safetensors": "ab" * 32})
    ops.create_registered_model("support", tenant="acme")
    with _opener(url)(trainer) as t:
        t.create_run("run-1", base_model="tiny", dataset_id=None, config={}, seed=1,
                     environment={})  # fmt: skip
    ops.create_model_version(  # registered by ops, trained by the run's actor
        "support", kind="adapter", artifact_digest="cd" * 32, base_model="tiny",
        run_id="run-1", lineage={}, metrics=gate_metrics(True),
    )  # fmt: skip
    ops.create_model_version(
        "support", kind="adapter", artifact_digest="ef" * 32, base_model="tiny",
        run_id=None, lineage={}, metrics=gate_metrics(True),
    )  # fmt: skip


def test_viewer_is_refused_every_change_and_the_refusal_is_audited(store_url: str) -> None:
    open_as = _opener(store_url)
    with open_as("ops") as ops:
        ops.add_actor("vic", "viewer")
        _seed(ops, url=store_url)
    with open_as("vic") as vic:
        before = vic.audit_head()
        with pytest.raises(PermissionDenied) as info:
            vic.create_tenant("globex")
        line = info.value.one_line()
        assert "'vic' (role viewer)" in line and "needs role developer" in line
        assert "modelyard actors add vic --role developer" in line
        with pytest.raises(PermissionDenied):
            vic.set_alias("support", "challenger", 2)
        assert [t.name for t in vic.list_tenants()] == ["acme"]  # nothing changed
        assert vic.get_model_version("support", 2).aliases == ()
        refusals = vic.list_audit_events(action="permission.denied", newest_first=False)
        assert vic.audit_head().seq == before.seq + 2  # the two refusals, and nothing else
        assert [r.actor for r in refusals] == ["vic", "vic"]
        assert refusals[0].subject == "globex"
        assert refusals[0].payload["attempted"] == "tenant.created"
        assert refusals[0].payload["required_role"] == "developer"
        assert vic.verify_audit_chain().ok


def test_protected_alias_needs_an_approver(store_url: str) -> None:
    open_as = _opener(store_url)
    with open_as("ops") as ops:
        _seed(ops, url=store_url)
        ops.add_actor("alice", "approver")
    with open_as("bob") as bob:  # not recorded: the default role, developer
        assert bob.role_of() == "developer"
        assert bob.set_alias("support", "challenger", 2).aliases == ("challenger",)
        with pytest.raises(PermissionDenied) as info:
            bob.set_alias("support", "champion", 1)
        assert "protected alias support@champion: it needs role approver" in str(info.value)
        with pytest.raises(ModelVersionNotFound):
            bob.resolve_model_ref("support@champion")
        last = bob.list_audit_events(limit=1)[0]
        assert (last.action, last.actor, last.subject) == ("permission.denied", "bob",
                                                           "support@champion")  # fmt: skip
    with open_as("alice") as alice:
        alice.set_alias("support", "champion", 1)
    with open_as("bob") as bob:
        with pytest.raises(PermissionDenied):
            bob.delete_alias("support", "champion")
        assert bob.resolve_model_ref("support@champion").version == 1


def test_protected_aliases_are_configurable(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELYARD_PROTECTED_ALIASES", "champion, production")
    assert Settings().protected_alias_set == {"champion", "production"}
    open_as = _opener(store_url, protected_aliases=frozenset({"production"}))
    with open_as("ops") as ops:
        _seed(ops, url=store_url)
    with open_as("bob") as bob:
        bob.set_alias("support", "champion", 1)  # not protected under this policy
        with pytest.raises(PermissionDenied, match="production"):
            bob.set_alias("support", "production", 1)


def test_segregation_of_duties_stops_the_trainer_approving(store_url: str) -> None:
    open_as = _opener(store_url, segregation_of_duties=True)
    with open_as("ops") as ops:
        _seed(ops, trainer="dana", url=store_url)
        ops.add_actor("dana", "approver")
        ops.add_actor("erin", "approver")
        assert ops.get_model_version("support", 1).created_by == "dana"  # the run's actor
        assert ops.get_model_version("support", 2).created_by == "ops"  # no run: registrant
        assert ops.get_run("run-1").created_by == "dana"
    with open_as("dana") as dana:
        with pytest.raises(PermissionDenied) as info:
            dana.set_alias("support", "champion", 1)
        line = info.value.one_line()
        assert "'dana' trained support:1" in line and "segregation of duties" in line
        assert "different approver" in line
        dana.set_alias("support", "champion", 2)  # someone else's version: fine
        assert dana.list_audit_events(limit=2)[1].action == "permission.denied"
    with open_as("erin") as erin:
        erin.set_alias("support", "champion", 1)
    with _opener(store_url, segregation_of_duties=False)("dana") as dana:
        dana.set_alias("support", "champion", 1)  # the policy is off: an approver is enough


def test_bootstrap_admin_until_an_admin_is_recorded(store_url: str) -> None:
    open_as = _opener(store_url)
    with open_as("mallory") as mallory, pytest.raises(PermissionDenied, match="needs role admin"):
        mallory.add_actor("mallory", "admin")
    with open_as("ops") as ops:
        assert ops.role_of() == "admin" and ops.role_of("mallory") == "developer"
        assert not ops.has_admin()
        assert ops.bootstrap_admin() == "ops"
        assert ops.bootstrap_admin() is None  # idempotent
        assert [(a.name, a.role) for a in ops.list_actors()] == [("ops", "admin")]
        ops.add_actor("alice", "admin")
        ops.add_actor("ops", "viewer")  # alice remains admin
        assert ops.role_of() == "viewer"
        with pytest.raises(PermissionDenied):
            ops.add_actor("ops", "admin")
    with open_as("alice") as alice:
        with pytest.raises(Conflict, match="last admin"):
            alice.add_actor("alice", "developer")
        events = alice.list_audit_events(action="actor.*", newest_first=False)
        assert [(e.action, e.subject, e.payload["role"]) for e in events] == [
            ("actor.added", "ops", "admin"),
            ("actor.added", "alice", "admin"),
            ("actor.role_changed", "ops", "viewer"),
        ]


def test_default_role_is_a_setting(store_url: str) -> None:
    open_as = _opener(store_url, default_role="viewer")
    with open_as("ops") as ops:
        ops.add_actor("dev", "developer")
    with open_as("stranger") as stranger, pytest.raises(PermissionDenied, match="role viewer"):
        stranger.create_tenant("acme")
    with open_as("dev") as dev:
        dev.create_tenant("acme")


def test_archived_versions_take_no_alias_or_traffic(store_url: str) -> None:
    with _opener(store_url)("ops") as ops:
        _seed(ops, url=store_url)
        ops.set_alias("support", "champion", 1)
        ops.create_endpoint("ep", model_ref="support:2", tenant="acme")
        with pytest.raises(Conflict, match="alias"):
            ops.archive_model_version("support", 1)
        with pytest.raises(Conflict, match=r"endpoint\(s\) ep"):
            ops.archive_model_version("support", 2)
        assert ops.delete_alias("support", "champion").version == 1
        archived = ops.archive_model_version("support", 1)
        assert archived.status == "archived"
        with pytest.raises(Conflict, match="archived and cannot take an alias"):
            ops.set_alias("support", "champion", 1)
        with pytest.raises(Conflict, match="archived and cannot take traffic"):
            ops.set_traffic("ep", {1: 10, 2: 90})
        with pytest.raises(Conflict, match="archived"):
            ops.create_endpoint("ep2", model_ref="support:1", tenant="acme")
        with pytest.raises(ModelVersionNotFound, match="no alias"):
            ops.delete_alias("support", "champion")


def test_gate_verdicts_are_stored_on_the_version(store_url: str) -> None:
    with _opener(store_url)("ops") as ops:
        _seed(ops, url=store_url)
        verdicts = [{"gate": "exact_match", "threshold": 0.8, "value": 0.9, "passed": True}]
        version = ops.record_gate_verdicts("support", 1, verdicts, passed=True)
        assert version.metrics["gates"] == {"passed": True, "verdicts": verdicts}
        event = ops.list_audit_events(limit=1)[0]
        assert (event.action, event.subject) == ("gate.verdict", "support:1")
        assert event.payload == {"passed": True, "verdicts": verdicts}


def test_cli_refusal_is_one_line_and_actors_commands(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert modelyard("init", home=home).code == 0  # the OS user becomes the first admin
    with Store.open(
        f"sqlite:///{home / 'store.db'}",
        actor="dana",
        audit_key=AuditKeySource(key_file=home / "audit.key"),
        policy=AccessPolicy(bootstrap_admin=None),
    ) as dana:
        dana.create_tenant("acme")
        dana.register_base_model("tiny", "/models/tiny", {"model.safetensors": "ab" * 32})
        dana.create_registered_model("support", tenant="acme")
        dana.create_model_version(
            "support", kind="adapter", artifact_digest="cd" * 32, base_model="tiny",
            run_id=None, lineage={}, metrics=gate_metrics(True),
        )  # fmt: skip

    refused = modelyard(
        "registry", "alias", "support", "champion", "1", home=home,
        env={"MODELYARD_ACTOR": "bob"},
    )  # fmt: skip
    assert refused.code == 1
    lines = [line for line in refused.err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), refused.err
    assert "'bob' (role developer)" in lines[0] and "needs role approver" in lines[0]
    assert "modelyard actors add bob --role approver" in lines[0]

    added = modelyard("actors", "add", "bob", "--role", "approver", "--json", home=home)
    assert added.code == 0, added.err
    assert json.loads(added.out)["role"] == "approver"
    sod = {"MODELYARD_ACTOR": "dana", "MODELYARD_SEGREGATION_OF_DUTIES": "true"}
    assert modelyard("actors", "add", "dana", "--role", "approver", home=home).code == 0
    trainer = modelyard("registry", "alias", "support", "champion", "1", home=home, env=sod)
    assert trainer.code == 1 and "segregation of duties" in trainer.err
    moved = modelyard(
        "registry", "alias", "support", "champion", "1", home=home,
        env={"MODELYARD_ACTOR": "bob", "MODELYARD_SEGREGATION_OF_DUTIES": "true"},
    )  # fmt: skip
    assert moved.code == 0, moved.err

    listed = json.loads(modelyard("actors", "list", "--json", home=home).out)
    roles = {a["name"]: a["role"] for a in listed["actors"]}
    assert roles["bob"] == "approver" and roles["dana"] == "approver"
    assert "admin" in roles.values() and listed["default_role"] == "developer"
    bad = modelyard("actors", "add", "bob", "--role", "king", home=home)
    assert bad.code == 2 and "--role" in bad.err
