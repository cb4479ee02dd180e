"""The CLI against a server: with MODELYARD_URL and a person's token, the registry, endpoint,
rollout, audit, tenant, key, budget and monitoring commands call the admin API and print
what they print on the database.

A real server (``create_app`` with the admin API mounted, as ``modelyard serve`` does) on
127.0.0.1 over a SQLite store; each command runs twice through the CLI's entry point: on
the database (MODELYARD_HOME at the store) and through the server (MODELYARD_URL, a token,
and MODELYARD_HOME at an empty directory where no store may appear).
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

import modelyard.cli._common as cli_common
from modelyard.access import authenticate, create_actor_token, create_api_key
from modelyard.admin import ADMIN_PREFIX, create_admin_app
from modelyard.audit import AccessPolicy
from modelyard.cli import main
from modelyard.cli._remote import ADMIN_PATH, AdminClient, Remote, error_of
from modelyard.errors import (
    AuthError,
    ConfigError,
    Conflict,
    EndpointNotFound,
    MissingScope,
    ModelVersionNotFound,
    ModelyardError,
    PermissionDenied,
    status_of,
)
from modelyard.serving import BackgroundServer, EchoEngine, create_app
from modelyard.store import AlertState, NewInferenceRecord, Store
from worlds import fake_world, gate_metrics

KEY = "cli-remote-test-key-cli-remote-test"
ROLES = {"ops": "admin", "viv": "viewer", "dev": "developer", "dana": "approver"}


@dataclass
class World:
    store: Store  # the server's, acting as ops
    home: Path  # where the store is: the local runs' MODELYARD_HOME
    empty: Path  # the remote runs' MODELYARD_HOME: must stay empty
    url: str  # the server's base URL
    tokens: dict[str, str]


@dataclass
class Ran:
    code: int
    out: str
    err: str


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    home, empty = tmp_path / "home", tmp_path / "empty"
    home.mkdir()
    empty.mkdir()
    monkeypatch.setenv("COLUMNS", "200")
    # the CLI's consoles took their width when first imported (80 under xdist without a
    # terminal): wide enough here that no table cell or message line is cut or wrapped
    for shown in (cli_common.console, cli_common.err_console):
        monkeypatch.setattr(shown, "width", 200)
    url = f"sqlite:///{home / 'store.db'}"
    policy = AccessPolicy(bootstrap_admin="ops")
    with Store.open(url, actor="ops", audit_key=KEY, policy=policy) as ops:
        for name, role in ROLES.items():
            ops.add_actor(name, role)
        fake_world(ops, versions=3, template=None)
        with Store.open(url, actor="dev", audit_key=KEY, policy=policy) as dev:
            dev.create_run("run-1", base_model="tiny", dataset_id=None, config={"lr": 0.1},
                           seed=7, environment={})  # fmt: skip
        ops.create_model_version(
            "bot", kind="adapter", artifact_digest="ab" * 32, base_model="tiny", run_id="run-1",
            lineage={"parent": "bot:2", "seed": 7}, metrics=gate_metrics(None),
        )  # fmt: skip
        ops.set_alias("bot", "champion", 2)
        ops.set_version_tags("bot:2", {"team": "claims"})
        tokens = {name: create_actor_token(ops, name)[1] for name in ROLES}
        app = create_app(
            ops, EchoEngine(), heartbeat_s=None, mounts={ADMIN_PREFIX: create_admin_app(ops)}
        )
        with BackgroundServer(app) as server:
            yield World(ops, home, empty, server.base_url, tokens)


def _run(capsys: pytest.CaptureFixture[str], line: str) -> Ran:
    capsys.readouterr()
    code = main(shlex.split(line))
    out, err = capsys.readouterr()
    return Ran(code, out, err)


def local(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], line: str
) -> Ran:
    """``line`` on the database (as the OS user, or ``--actor``)."""
    with monkeypatch.context() as env:
        env.setenv("MODELYARD_HOME", str(world.home))
        env.setenv("MODELYARD_AUDIT_KEY", KEY)
        env.delenv("MODELYARD_URL", raising=False)
        return _run(capsys, line)


def remote(
    world: World,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    line: str,
    who: str = "ops",
    **extra: str,
) -> Ran:
    """``line`` through the server with ``who``'s token, no database reachable."""
    with monkeypatch.context() as env:
        env.setenv("MODELYARD_HOME", str(world.empty))
        env.setenv("MODELYARD_URL", world.url)
        env.setenv("MODELYARD_TOKEN", world.tokens.get(who, who))
        for name, value in extra.items():
            env.setenv(name, value)
        ran = _run(capsys, line)
    assert list(world.empty.iterdir()) == [], f"{line} created files in the empty home"
    return ran


READS = [
    "registry list",
    "registry list --json",
    "registry list bot",
    "registry list bot --json",
    "registry list --tenant acme",
    "registry show bot",
    "registry show bot@champion --json",
    "registry show bot:3",
    "registry lineage bot:4",
    "registry lineage bot:4 --json",
    "registry card bot:4",
    "endpoints list",
    "endpoints list --json",
    "audit log --limit 20",
    "audit log --json --action alias.*",
    "audit log --by ops --subject bot* --limit 3",
    "audit log --json --exclude-action alias.* --exclude-action actor.add",
    "audit verify",
    "audit verify --json",
]


@pytest.mark.parametrize("line", READS)
def test_reads_print_what_the_database_prints(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], line: str
) -> None:
    here = local(world, monkeypatch, capsys, line)
    there = remote(world, monkeypatch, capsys, line, who="viv")
    assert here.code == 0, here
    assert (there.code, there.out, there.err) == (here.code, here.out, here.err)


def test_audit_log_leaves_out_the_actions_it_is_told_to(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--exclude-action`` (e.g. a server's records.anchored every few seconds) leaves
    those events out, here and through a server alike."""
    line = "audit log --json --limit 1000"
    every = {e["action"] for e in json.loads(local(world, monkeypatch, capsys, line).out)}
    assert "alias.set" in every and len(every) > 2
    line += " --exclude-action alias.* --exclude-action model.version.create"
    for ran in (local(world, monkeypatch, capsys, line),
                remote(world, monkeypatch, capsys, line, who="viv")):  # fmt: skip
        assert ran.code == 0, ran
        left = {e["action"] for e in json.loads(ran.out)}
        assert left == {a for a in every if not a.startswith("alias.")} - {"model.version.create"}


def test_changes_go_through_the_server_as_the_token_s_person(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def both(line: str, who: str = "dev") -> tuple[Ran, Ran]:
        there = remote(world, monkeypatch, capsys, line, who=who)
        here = local(world, monkeypatch, capsys, f"--actor {who} {line}")
        return there, here

    # each change printed as on the database (run again there: the same answer)
    for line in (
        "registry tag bot:1 team=support --json",
        "registry tag bot:1 --remove team",
        "registry alias bot staging 3",
        "endpoints set-traffic support 1=90 2=10",
    ):
        if "--remove" in line:  # removing a tag the version lacks is refused: put it back
            there = remote(world, monkeypatch, capsys, line, who="dev")
            local(world, monkeypatch, capsys, "--actor dev registry tag bot:1 team=support")
            here = local(world, monkeypatch, capsys, f"--actor dev {line}")
        else:
            there, here = both(line)
        assert there.code == 0 and (there.out, there.err) == (here.out, here.err), line
    there = remote(world, monkeypatch, capsys, "registry unalias bot staging", who="dev")
    assert (there.code, there.out.strip()) == (0, "removed bot@staging (it pointed to bot:3)")
    # refusals: the same line and exit code as on the database
    for line in ("registry unalias bot staging", "registry archive bot 1",
                 "registry show bot@nope", "registry show nobody", "registry lineage bot:9",
                 "registry tag bot:1 notatag", "endpoints set-traffic support 1=50 2=40",
                 "registry alias bot champion 4"):  # fmt: skip
        there, here = both(line)
        assert here.code != 0 and "Traceback" not in here.err, (line, here)
        assert (there.code, there.out, there.err) == (here.code, here.out, here.err), line
    archived = remote(world, monkeypatch, capsys, "registry archive bot 3", who="dev")
    assert (archived.code, archived.out.strip()) == (0, "archived bot:3")
    # the audit chain names the person the token was made for
    events = world.store.list_audit_events(actor="dev", limit=None)
    actions = {e.action for e in events}
    assert {"alias.set", "alias.deleted", "endpoint.traffic_set"} <= actions, actions
    assert "model_version.archived" in actions
    log = remote(world, monkeypatch, capsys, "audit log --by dev --action alias.* --json")
    assert log.code == 0 and {e["actor"] for e in json.loads(log.out)} == {"dev"}


def test_a_viewer_gets_the_usual_permission_error(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for line in ("registry alias bot staging 3", "registry tag bot:1 a=b",
                 "endpoints set-traffic support 1=50 2=50",
                 "rollout start support --to bot:2", "tenants create globex",
                 "keys create --tenant acme"):  # fmt: skip
        there = remote(world, monkeypatch, capsys, line, who="viv")
        here = local(world, monkeypatch, capsys, f"--actor viv {line}")
        assert here.code == 1 and "viewer" in here.err, here
        assert (there.code, there.out, there.err) == (here.code, here.out, here.err), line
    denied = world.store.list_audit_events(action="permission.denied", actor="viv", limit=None)
    assert len(denied) == 12  # each refused twice: through the server and on the database
    refused = _error(world, "viv", "PUT", "/endpoints/support/traffic", {"weights": {"1": 100}})
    assert isinstance(refused, PermissionDenied)


def _error(world: World, who: str, method: str, path: str, body: object) -> Exception:
    remote_ = Remote(world.url, world.url + ADMIN_PATH, world.tokens[who], "test", True)
    client = AdminClient(remote_)
    try:
        client.send(method, path, body=body)
    except Exception as exc:
        return exc
    finally:
        client.close()
    raise AssertionError("no error")


def test_a_bad_or_missing_token_is_one_clear_line(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:  # fmt: skip
    bad = remote(world, monkeypatch, capsys, "registry list", who="myp_nope_nope")
    assert bad.code == 1 and bad.out == ""
    assert bad.err.count("\n") == 1 and bad.err.startswith("error: ")
    assert "access token" in bad.err and "MODELYARD_TOKEN" in bad.err, bad.err
    key = remote(world, monkeypatch, capsys, "registry list", who=world.tokens["viv"][:-1] + "x")
    assert key.code == 1 and "refused the token from MODELYARD_TOKEN" in key.err
    assert "mistyped" in key.err and key.err.count("\n") == 1
    nothing = remote(world, monkeypatch, capsys, "registry list", who=" ",
                     XDG_CONFIG_HOME=str(tmp_path / "no-config"))  # fmt: skip
    assert nothing.code == 2 and "no token says who you are" in nothing.err
    # the token from a file (a mounted secret), when MODELYARD_TOKEN is not set
    secret = tmp_path / "token"
    secret.write_text(world.tokens["viv"] + "\n")
    filed = remote(world, monkeypatch, capsys, "registry list --json", who=" ",
                   MODELYARD_TOKEN_FILE=str(secret))  # fmt: skip
    assert filed.code == 0 and json.loads(filed.out)[0]["name"] == "bot"
    read_only = create_actor_token(world.store, "dev", scopes=["read"])[1]
    scoped = remote(world, monkeypatch, capsys, "registry tag bot:1 a=b", who=read_only)
    assert scoped.code == 1 and "needs scope write" in scoped.err
    assert isinstance(_error(world, "viv", "GET", "/models/bot/versions/9", None),
                      ModelVersionNotFound)  # fmt: skip
    no_route = _error(world, "viv", "GET", "/whoami/nothing", None)
    assert isinstance(no_route, ConfigError) and "no admin API route" in str(no_route)


@pytest.mark.parametrize(
    "line",
    ["endpoints show support", "endpoints create x --model bot:1 --shared", "budgets set acme "
     "--amount 5", "rollout compare support", "audit head", "tokens list", "servers list",
     "endpoints set-traffic support 1=100 --shadow 2", "endpoints set-traffic support --no-shadow",
     "registry export bot:1 --out x", "monitor records", "monitor tick", "monitor alerts "
     "--evaluate", "monitor drift --endpoint support --semantic", "monitor retention list"],
)  # fmt: skip
def test_commands_without_a_route_say_they_need_the_database(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], line: str
) -> None:
    ran = remote(world, monkeypatch, capsys, line)
    assert ran.code == 2 and ran.err.count("\n") == 1, ran
    assert "database only" in ran.err and "MODELYARD_URL" in ran.err, ran.err
    assert world.store.get_endpoint("support").shadow_version is None


def test_finetune_says_it_needs_the_database_and_help_still_works(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:  # fmt: skip
    config = tmp_path / "config.yaml"
    (tmp_path / "train.jsonl").write_text('{"instruction": "hi", "output": "hello"}\n')
    config.write_text("base_model: tiny\ndata:\n  train: train.jsonl\n  format: alpaca\n"
                      "registry:\n  model: bot\n")  # fmt: skip
    ran = remote(world, monkeypatch, capsys, f"finetune --config {config}")
    assert ran.code == 2 and ran.err.count("\n") == 1, ran
    assert "`modelyard finetune` works on the database only" in ran.err, ran.err
    assert "no modelyard store" not in ran.err and "keys list" in ran.err
    for line in ("finetune --help", "keys --help", "monitor drift --help"):
        helped = remote(world, monkeypatch, capsys, line)
        assert helped.code == 0 and "Usage" in helped.out, (line, helped)


def test_actor_does_not_apply_through_a_server(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ran = remote(world, monkeypatch, capsys, "--actor dana registry alias bot champion 3")
    assert ran.code == 2 and "--actor does not apply" in ran.err
    assert world.store.get_registered_model("bot").aliases["champion"] == 2


def _no_elapsed(text: str) -> str:
    return re.sub(r"\d+s of ", "Ns of ", text)


def test_a_rollout_through_the_server(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def status_both(*flags: str) -> tuple[Ran, Ran]:
        line = " ".join(["rollout status support", *flags])
        return (remote(world, monkeypatch, capsys, line, who="viv"),
                local(world, monkeypatch, capsys, line))  # fmt: skip

    line = "rollout start support --to bot:2 --steps 50,100 --bake 1h --min-requests 5 --json"
    start = remote(world, monkeypatch, capsys, f'{line} --guard "error_rate <= 0.05"', who="dev")
    assert start.code == 0, start
    there, here = status_both("--json")
    assert json.loads(start.out) == json.loads(here.out) == json.loads(there.out)
    assert local(world, monkeypatch, capsys, "controller --once").code == 0  # preparing → baking
    v2 = world.store.get_model_version("bot", 2).id
    world.store.add_inference_records(
        NewInferenceRecord(id=f"cmpl-{i}", endpoint_name="support", route="completions",
                           latency_ms=9.0, status="ok", http_status=200, version_id=v2)
        for i in range(3)
    )  # fmt: skip
    there, here = status_both()
    assert there.code == 0 and "pending" in there.out and "3 requests" in there.out
    assert _no_elapsed(there.out) == _no_elapsed(here.out)
    there, here = status_both("--json")
    theirs, ours = json.loads(there.out), json.loads(here.out)
    assert theirs["current"].pop("elapsed_s") >= 0 and ours["current"].pop("elapsed_s") >= 0
    assert theirs == ours and theirs["current"]["requests"] == 3
    line = "rollout wait support --timeout 1s --poll 0.2"
    timed_out = remote(world, monkeypatch, capsys, line, who="viv")
    assert timed_out.code == 3 and "timed out after 1s" in timed_out.err, timed_out
    for verb in ("pause", "resume", "promote"):
        ran = remote(world, monkeypatch, capsys, f"rollout {verb} support", who="dev")
        assert ran.code == 0 and ran.out.startswith(f"{verb}d support → bot:2"), ran
    assert "succeeded, all traffic on bot:2" in ran.out
    waited = remote(world, monkeypatch, capsys, "rollout wait support --json", who="viv")
    assert waited.code == 0 and json.loads(waited.out)["status"] == "succeeded"
    again = remote(world, monkeypatch, capsys, "rollout promote support", who="dev")
    ours_again = local(world, monkeypatch, capsys, "--actor dev rollout promote support")
    assert again.code == ours_again.code == 1 and again.err == ours_again.err  # none active
    # a second one, aborted with a reason; the gates of bot:4 never ran: refused alike
    started = remote(world, monkeypatch, capsys, "rollout start support --to bot:3", who="dev")
    assert started.code == 0 and started.out.startswith("started rollout ")
    aborted = remote(world, monkeypatch, capsys, 'rollout abort support --reason "wrong data"',
                     who="dev")  # fmt: skip
    assert aborted.code == 0 and "aborted: wrong data" in aborted.out, aborted
    there, here = status_both()
    assert there.code == 0 and there.out == here.out and "wrong data" in there.out
    waited = remote(world, monkeypatch, capsys, "rollout wait support --timeout 5s", who="viv")
    ours = local(world, monkeypatch, capsys, "rollout wait support --timeout 5s")
    assert waited.code == ours.code == 1 and (waited.out, waited.err) == (ours.out, ours.err)
    assert "ended aborted (wrong data)" in waited.err
    line = "rollout start support --to bot:4"
    gated = remote(world, monkeypatch, capsys, line, who="dev")
    ours = local(world, monkeypatch, capsys, f"--actor dev {line}")
    assert (gated.code, gated.err) == (ours.code, ours.err) and gated.code != 0
    bad = remote(world, monkeypatch, capsys, 'rollout start support --to bot:3 --guard "p95 < 3"')
    assert bad.code == 2 and "unknown metric 'p95'" in bad.err
    assert {r.created_by for r in world.store.list_rollouts(endpoint="support")} == {"dev"}


# -- where the server is, and how the token travels ------------------------------------------


def test_the_token_never_crosses_a_network_in_clear_text(tmp_path: Path) -> None:
    token = {"MODELYARD_TOKEN": "myp_x"}
    for url in ("http://10.0.0.5:8000", "http://modelyard.example.com"):
        with pytest.raises(ConfigError, match="plain http to another machine"):
            Remote.from_env({"MODELYARD_URL": url, **token})
    allowed = Remote.from_env(
        {"MODELYARD_URL": "http://10.0.0.5:8000/", "MODELYARD_ALLOW_PLAIN_HTTP": "1", **token}
    )
    assert allowed.api == "http://10.0.0.5:8000" + ADMIN_PATH == "http://10.0.0.5:8000/admin/v1"
    for url in ("http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000"):
        assert Remote.from_env({"MODELYARD_URL": url, **token}).verify is True
    for url in ("ftp://x", "modelyard.example.com", "https://"):
        with pytest.raises(ConfigError, match="invalid MODELYARD_URL"):
            Remote.from_env({"MODELYARD_URL": url, **token})
    with pytest.raises(ConfigError, match="cannot load the CA bundle"):
        Remote.from_env({"MODELYARD_URL": "https://x", "SSL_CERT_FILE": str(tmp_path), **token})
    # MODELYARD_TOKEN first, then MODELYARD_TOKEN_FILE, then the default file
    (tmp_path / "modelyard").mkdir()
    (tmp_path / "modelyard" / "token").write_text("myp_default\n")
    base = {"MODELYARD_URL": "https://x", "XDG_CONFIG_HOME": str(tmp_path)}
    assert Remote.from_env(base).token == "myp_default"
    (tmp_path / "named").write_text("myp_named")
    named = Remote.from_env({**base, "MODELYARD_TOKEN_FILE": str(tmp_path / "named")})
    assert (named.token, named.token_source) == ("myp_named", str(tmp_path / "named"))
    assert Remote.from_env({**base, **token}).token_source == "MODELYARD_TOKEN"
    with pytest.raises(ConfigError, match="cannot read the token file"):
        Remote.from_env({**base, "MODELYARD_TOKEN_FILE": str(tmp_path / "missing")})


def test_error_answers_map_to_the_store_s_errors() -> None:
    remote_ = Remote("http://127.0.0.1:1", "http://127.0.0.1:1/admin/v1", "t", "test", True)

    def of(status: int, code: str | None, message: str = "m") -> Exception:
        body = {"error": {"message": message, "type": "x", "code": code, "param": None}}
        return error_of(httpx.Response(status, json=body), remote_, "GET /x")

    assert type(of(404, "endpoint_not_found")) is EndpointNotFound
    assert type(of(403, "missing_scope")) is MissingScope
    assert type(of(409, None)) is Conflict and type(of(422, None)) is ConfigError
    assert type(of(400, "invalid_request")) is ConfigError
    assert type(of(429, "rate_limit_exceeded")) is ModelyardError  # needs more than a line
    assert type(of(401, "unauthorized", "no")) is AuthError
    refused = "http://127.0.0.1:1 refused the token from test: no"
    assert str(of(401, "unauthorized", "no")) == refused
    assert status_of(of(404, "base_model_not_found")).exit_code == 2  # as on the database
    proxy = error_of(httpx.Response(502, text="<html>bad gateway</html>"), remote_, "GET /x")
    assert "answered 502 to GET /x, not an admin API answer" in str(proxy)


def _certificates(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signed for 127.0.0.1: (ca.pem, cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.now(UTC)

    def cert(subject: str, key: Any, issuer: str, signer: Any, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
            builder = builder.add_extension(san, critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    paths = tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem"
    pem = serialization.Encoding.PEM
    paths[0].write_bytes(cert("test CA", ca_key, "test CA", ca_key, True).public_bytes(pem))
    paths[1].write_bytes(cert("127.0.0.1", key, "test CA", ca_key, False).public_bytes(pem))
    paths[2].write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def test_https_with_a_private_ca(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:  # fmt: skip
    ca, cert, key = _certificates(tmp_path)
    app = create_app(
        world.store, EchoEngine(), heartbeat_s=None,
        mounts={ADMIN_PREFIX: create_admin_app(world.store)},
    )  # fmt: skip
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", ssl_certfile=str(cert), ssl_keyfile=str(key))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive()
            time.sleep(0.02)
        url = f"https://127.0.0.1:{sock.getsockname()[1]}"
        monkeypatch.setattr(world, "url", url)
        untrusted = remote(world, monkeypatch, capsys, "registry list", who="viv",
                           MODELYARD_CA_BUNDLE="")  # fmt: skip
        assert untrusted.code == 2 and "is not trusted" in untrusted.err, untrusted
        assert "MODELYARD_CA_BUNDLE" in untrusted.err and untrusted.err.count("\n") == 1
        trusted = remote(world, monkeypatch, capsys, "registry list", who="viv",
                         MODELYARD_CA_BUNDLE=str(ca))  # fmt: skip
        assert trusted.code == 0, trusted
        assert trusted.out == local(world, monkeypatch, capsys, "registry list").out
        via_ssl_env = remote(world, monkeypatch, capsys, "endpoints list", who="viv",
                             SSL_CERT_FILE=str(ca), REQUESTS_CA_BUNDLE="")  # fmt: skip
        assert via_ssl_env.code == 0 and "support" in via_ssl_env.out
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


# -- tenants, keys, budgets and monitoring -------------------------------------------------

END = "2026-01-01T12:00:00+00:00"  # a fixed drift window: both runs test the same records


def _monitored(world: World) -> str:
    """A key, a budget, records profiled into hours and two alerts; the key's id."""
    ops = world.store
    key, _ = create_api_key(ops, "acme", scopes=["infer"], rpm_limit=60)
    ops.set_budget("acme", "day", 5.0)
    ops.set_budget("acme", "month", 50.0, key_id=key.id)
    v1 = ops.get_model_version("bot", 1).id
    tid = ops.get_tenant("acme").id
    start = datetime.fromisoformat(END) - timedelta(hours=3)
    ops.add_inference_records(
        NewInferenceRecord(id=f"cmpl-m{i}", endpoint_name="support", route="completions",
                           latency_ms=10.0 + i, status="ok" if i % 5 else "error",
                           http_status=200 if i % 5 else 500, version_id=v1, tenant_id=tid,
                           prompt="hello " * (i % 7), response="hi", prompt_tokens=3 + i % 4,
                           completion_tokens=2, created_at=start + timedelta(minutes=4 * i))
        for i in range(40)
    )  # fmt: skip
    v2 = ops.get_model_version("bot", 2).id  # a shadow's copies: profiles of their own
    ops.add_inference_records(
        NewInferenceRecord(id=f"cmpl-m{i}-shadow", endpoint_name="support", route="completions",
                           latency_ms=30.0 + i, status="ok", http_status=200, version_id=v2,
                           tenant_id=tid, shadow=True, prompt_tokens=3, completion_tokens=4,
                           created_at=start + timedelta(minutes=4 * i))
        for i in range(0, 40, 4)
    )  # fmt: skip
    from modelyard.monitoring import update_profiles

    update_profiles(ops, now=datetime.fromisoformat(END) + timedelta(hours=2))
    at = datetime(2026, 1, 1, 11, 0, tzinfo=UTC)
    for n, state in enumerate(("firing", "resolved")):
        ops.save_alert_state(AlertState(
            id=f"a{n}", rule=f"rule-{n}", labels={"endpoint": "support"}, severity="warning",
            state=state, value=0.25 * (n + 1), summary=f"error rate {state}", active_since=at,
            fired_at=at, resolved_at=at if state == "resolved" else None, last_evaluated=at,
        ))  # fmt: skip
    return key.id


ACCESS_READS = [
    "tenants list",
    "tenants list --json",
    "keys list",
    "keys list --json",
    "keys list --tenant acme",
    "budgets list",
    "budgets list --json",
    "budgets usage --since 2025-12-01 --by tenant,version",
    "budgets usage --since 2025-12-01 --by day,key --json",
    "monitor profiles --no-update",
    "monitor profiles --no-update --json",
    "monitor profiles --no-update --window day --endpoint support",
    "monitor profiles --no-update --tenant acme --since 2025-12-31",
    "monitor profiles --no-update --traffic live --json",
    "monitor profiles --no-update --traffic shadow",
    "monitor alerts",
    "monitor alerts --json",
    "monitor alerts --state firing",
]


@pytest.mark.parametrize("line", ACCESS_READS)
def test_tenant_key_budget_and_monitoring_reads_print_what_the_database_prints(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], line: str
) -> None:
    _monitored(world)
    here = local(world, monkeypatch, capsys, line)
    there = remote(world, monkeypatch, capsys, line, who="viv")
    assert here.code == 0, here
    assert (there.code, there.out, there.err) == (here.code, here.out, here.err)
    assert "support" in here.out or "profiles" not in line  # the profiles table is not empty


def test_an_unknown_alert_state_is_refused_alike_here_and_through_the_server(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    line = "monitor alerts --state bogus"
    here = local(world, monkeypatch, capsys, line)
    there = remote(world, monkeypatch, capsys, line, who="viv")
    assert here.code == 2 and "unknown --state 'bogus'" in here.err
    assert (there.code, there.out, there.err) == (here.code, here.out, here.err)


def test_profiles_through_the_server_are_the_loop_s_and_say_so(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _monitored(world)
    there = remote(world, monkeypatch, capsys, "monitor profiles --json", who="viv")
    here = local(world, monkeypatch, capsys, "monitor profiles --json")
    assert there.code == here.code == 0 and there.out == here.out and json.loads(there.out)
    assert here.err == "" and there.err.count("\n") == 1
    assert "the server's monitoring loop last computed" in there.err


def test_drift_through_the_server_is_computed_there_and_not_stored(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _monitored(world)
    for flags in ("", " --json", " --method prompt_chars=ks --threshold latency_ms=0.5"):
        line = f"monitor drift --endpoint support --reference previous:1h --window 1h " \
               f"--end {END} --min-samples 5{flags}"  # fmt: skip
        runs = len(world.store.list_drift_results(endpoint="support", limit=5000))
        there = remote(world, monkeypatch, capsys, line, who="viv")
        assert len(world.store.list_drift_results(endpoint="support", limit=5000)) == runs
        here = local(world, monkeypatch, capsys, line)
        assert len(world.store.list_drift_results(endpoint="support", limit=5000)) > runs
        assert there.code == here.code == 0, (there, here)
        if "--json" in flags:  # the run's id: the stored run's here, none there
            there_run, here_run = json.loads(there.out), json.loads(here.out)
            assert there_run.pop("run_id") is None and isinstance(here_run.pop("run_id"), str)
            assert there_run == here_run
        else:
            assert there.out == here.out, (there, here)
        assert here.err == "" and "computed by the server and not stored" in there.err
    assert "prompt_chars" in here.out and "ks" in here.out
    # bad input: the same line and exit code; --fail-on-drift: the same exit code
    for line in ("monitor drift --endpoint nowhere", "monitor drift --endpoint support "
                 "--version x", "monitor drift --endpoint support --window 1w",
                 "monitor drift --endpoint support --method a=b",
                 "monitor profiles --window week --no-update"):  # fmt: skip
        there = remote(world, monkeypatch, capsys, line, who="viv")
        here = local(world, monkeypatch, capsys, line)
        assert here.code != 0 and "Traceback" not in here.err, (line, here)
        assert (there.code, there.out, there.err) == (here.code, here.out, here.err), line


def test_tenants_and_keys_change_through_the_server_as_the_token_s_person(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def both(line: str, who: str = "dev") -> tuple[Ran, Ran]:
        there = remote(world, monkeypatch, capsys, line, who=who)
        here = local(world, monkeypatch, capsys, f"--actor {who} {line}")
        return there, here

    made = remote(world, monkeypatch, capsys, "tenants create globex --storage-policy hash")
    ours = local(world, monkeypatch, capsys, "--actor dev tenants create initech "
                 "--storage-policy hash")  # fmt: skip
    assert made.code == ours.code == 0
    assert made.out.replace("globex", "initech") == ours.out, (made, ours)
    assert world.store.get_tenant("globex").storage_policy == "hash"
    # a key made through the server: its secret printed once, and it works
    line = "keys create --tenant globex --scopes infer --expires 90d --rpm 60"
    created = remote(world, monkeypatch, capsys, line, who="dev")
    assert created.code == 0, created
    head, secret = created.out.strip().splitlines()
    key_id = head.split()[2]
    assert head == f"created key {key_id} for tenant globex; store it now:"
    key = authenticate(world.store, secret)
    assert (key.id, key.tenant, key.scopes, key.rpm_limit) == (key_id, "globex", ("infer",), 60)
    as_json = remote(world, monkeypatch, capsys, "keys create --tenant globex --json", who="dev")
    shown = json.loads(as_json.out)
    assert set(shown) == {"id", "key", "tenant", "scopes"} and shown["tenant"] == "globex"
    assert authenticate(world.store, shown["key"]).id == shown["id"]
    # changes printed as on the database (run again there: the same answer)
    for line in (f"keys limits {key_id} --tpm 1000", f"keys limits {key_id} --rpm default "
                 "--json"):  # fmt: skip
        there, here = both(line)
        assert there.code == 0 and (there.out, there.err) == (here.out, here.err), line
    # a revocation, then the same again: it says the key was revoked before, here and there
    there, here = both(f"keys revoke {shown['id']}")
    assert there.code == here.code == 0, (there, here)
    assert there.out == f"revoked key {shown['id']} of tenant globex\n"
    assert here.out.startswith(f"key {shown['id']} of tenant globex was already revoked on ")
    again = remote(world, monkeypatch, capsys, f"keys revoke {shown['id']}", who="dev")
    assert (again.code, again.out, again.err) == (here.code, here.out, here.err)
    assert world.store.get_api_key(key_id).tpm_limit == 1000
    rotated = remote(world, monkeypatch, capsys, f"keys rotate {key_id} --grace 1h --json",
                     who="dev")  # fmt: skip
    assert rotated.code == 0, rotated
    answer = json.loads(rotated.out)
    assert set(answer) == {"id", "key", "tenant", "scopes", "rotated_from", "old_expires_at"}
    assert answer["rotated_from"] == key_id and answer["tenant"] == "globex"
    assert authenticate(world.store, answer["key"]).id == answer["id"] != key_id
    old_expiry = datetime.fromisoformat(answer["old_expires_at"])
    assert timedelta(minutes=59) < old_expiry - datetime.now(UTC) <= timedelta(hours=1)
    table = remote(world, monkeypatch, capsys, f"keys rotate {answer['id']} --grace 0", who="dev")
    assert table.code == 0 and table.out.startswith(f"rotated key {answer['id']} → ")
    assert "the old key works until" in table.out
    newest = authenticate(world.store, table.out.strip().splitlines()[-1])  # the secret, once
    assert newest.tenant == "globex" and table.out.count("myk_") == 1
    # refusals: the same line and exit code as on the database
    for line in ("tenants create globex", "tenants create Bad_Name", "tenants create x "
                 "--storage-policy all", "keys create --tenant nobody", "keys create --tenant "
                 "acme --scopes admin", "keys create --tenant acme --expires soon",
                 "keys revoke nope", "keys rotate nope", "keys list --tenant nobody",
                 "budgets list --tenant nobody", f"keys rotate {key_id} --grace x",
                 "keys limits nope --rpm 5", f"keys limits {key_id} --rpm 0",
                 f"keys limits {key_id}"):  # fmt: skip
        there, here = both(line)
        assert here.code != 0 and "Traceback" not in here.err, (line, here)
        assert (there.code, there.out, there.err) == (here.code, here.out, here.err), line
    # the audit chain names the person the token was made for
    actions = {e.action for e in world.store.list_audit_events(actor="dev", limit=None)}
    assert {"tenant.created", "api_key.created", "api_key.rotated", "api_key.revoked",
            "api_key.limits_set"} <= actions, actions  # fmt: skip
    listed = remote(world, monkeypatch, capsys, "keys list --tenant globex --json", who="viv")
    assert listed.code == 0 and all("key_hash" not in k for k in json.loads(listed.out))
    assert len(json.loads(listed.out)) == 4
