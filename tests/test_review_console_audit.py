"""Review of the console, the audit chain's commands and ``modelyard tokens``/``actors``:
bad input is a one-line error naming what was wrong, never a traceback or a 500, and a
user's mistake never changes what the store accepts."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect, sync_playwright
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from clihelp import modelyard
from modelyard.access import PeopleAuthenticator, create_actor_token
from modelyard.access._oidc import parse_group_roles
from modelyard.admin import ADMIN_PREFIX, create_admin_app
from modelyard.audit import (
    PROOF_FORMAT,
    RECORD_FIELDS,
    RECORD_FORMAT,
    AccessPolicy,
    AuditKeySource,
    check_proof,
)
from modelyard.console import CONSOLE_PREFIX, ConsoleSessions, create_console_app
from modelyard.errors import AuditError, ConfigError
from modelyard.serving import BackgroundServer, EchoEngine, create_app
from modelyard.store import Store


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    assert modelyard("init", home=home).code == 0
    assert modelyard("tenants", "create", "acme", home=home).code == 0
    return home


# -- audit verify --head --------------------------------------------------------------------


def test_a_made_up_head_from_a_non_admin_is_reported_and_not_recorded(home: Path) -> None:
    """As the admin API does: a break only the caller's --head shows does not stop every
    audited change unless an admin passed it (a typo, or any developer, froze the store)."""
    for head in ("1:" + "a" * 64, "99:" + "b" * 64):
        made_up = modelyard("--actor", "dev", "audit", "verify", "--head", head, home=home)
        assert made_up.code == 1
        assert "audit chain broken" in _one_error_line(made_up.err)
    still = modelyard("--actor", "dev", "tenants", "create", "globex", home=home)
    assert still.code == 0, still.err
    assert modelyard("audit", "verify", home=home).code == 0


def test_a_head_that_matches_still_passes_for_a_non_admin(home: Path) -> None:
    head = modelyard("audit", "head", home=home).out.strip()
    ok = modelyard("--actor", "dev", "audit", "verify", "--head", head, home=home)
    assert ok.code == 0 and f"matches head {head}" in ok.out, ok.err


# -- names shown by tokens and actors -------------------------------------------------------


def test_a_token_for_an_actor_named_like_markup_is_shown_once_and_listed(home: Path) -> None:
    """Rich read '[/y]' in a name as a closing tag: the token was created, then the command
    failed before printing it (its secret lost), and every later `tokens list` failed."""
    created = modelyard("tokens", "create", "--for", "[/y]", "--name", "[/]", home=home)
    assert created.code == 0, created.err
    assert "for actor [/y]" in created.out and "myp_" in created.out
    listed = modelyard("tokens", "list", "--all", home=home)
    assert listed.code == 0, listed.err
    assert "[/y]" in listed.out and "[/]" in listed.out
    token_id = created.out.split("created token ")[1].split()[0]
    revoked = modelyard("tokens", "revoke", token_id, home=home)
    assert revoked.code == 0 and "of actor [/y]" in revoked.out, revoked.err


def test_an_actor_named_like_markup_is_added_and_listed_as_typed(home: Path) -> None:
    added = modelyard("actors", "add", "[/x]", "--role", "viewer", home=home)
    assert added.code == 0 and "[/x] has role viewer" in added.out, added.err
    shown = modelyard("actors", "add", "[red]eve", "--role", "viewer", home=home)
    assert shown.code == 0 and "[red]eve has role viewer" in shown.out, shown.err
    listed = modelyard("actors", "list", home=home)
    assert listed.code == 0, listed.err
    assert "[/x]" in listed.out and "[red]eve" in listed.out


# -- audit export ---------------------------------------------------------------------------


def test_export_to_a_place_that_cannot_be_written_is_a_usage_error(home: Path) -> None:
    """/proc exists but takes no new file: the temporary file's OSError was a traceback."""
    refused = modelyard("audit", "export", "--out", "/proc/audit.csv", home=home)
    assert refused.code == 2
    line = _one_error_line(refused.err)
    assert "--out /proc/audit.csv" in line and "nothing was written" in line


# -- audit log ------------------------------------------------------------------------------


def test_a_limit_beyond_a_database_integer_is_a_usage_error(home: Path) -> None:
    """SQLite's OverflowError came back as a traceback."""
    huge = modelyard("audit", "log", "--limit", "9" * 23, home=home)
    assert huge.code == 2 and "Traceback" not in huge.err, huge.err
    assert "--limit" in huge.err
    assert modelyard("audit", "log", "--limit", str(2**63 - 1), home=home).code == 0


# -- the console over HTTP ------------------------------------------------------------------

KEY = "review-console-key-review-console-key"


@dataclass
class Console:
    client: TestClient
    app: Any
    store: Store
    sessions: ConsoleSessions
    tokens: dict[str, str]

    def fresh(self) -> TestClient:
        return TestClient(self.app, raise_server_exceptions=False)

    def login(self, who: str, client: TestClient | None = None) -> TestClient:
        client = client or self.client
        csrf = client.get(f"{CONSOLE_PREFIX}/api/login").json()["csrf_token"]
        r = client.post(f"{CONSOLE_PREFIX}/api/login", json={"token": self.tokens[who]},
                        headers={"X-CSRF-Token": csrf})  # fmt: skip
        assert r.status_code == 200, r.text
        return client


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    policy = AccessPolicy(bootstrap_admin="ops")
    with Store.open(url, actor="ops", audit_key=KEY, policy=policy) as ops:
        ops.add_actor("ops", "admin")
        ops.add_actor("viv", "viewer")
        tokens = {name: create_actor_token(ops, name)[1] for name in ("ops", "viv")}
        people = PeopleAuthenticator(ops)
        sessions = ConsoleSessions(people)
        app = Starlette(routes=[
            Mount(ADMIN_PREFIX, app=create_admin_app(ops, people, sessions)),
            Mount(CONSOLE_PREFIX, app=create_console_app(ops, sessions)),
        ])  # fmt: skip
        with TestClient(app, raise_server_exceptions=False) as client:
            yield Console(client, app, ops, sessions, tokens)


def _login_csrf(client: TestClient) -> str:
    return str(client.get(f"{CONSOLE_PREFIX}/api/login").json()["csrf_token"])


def test_a_login_body_nested_past_the_parser_is_a_400_not_a_500(console: Console) -> None:
    csrf = _login_csrf(console.client)
    r = console.client.post(
        f"{CONSOLE_PREFIX}/api/login",
        content=b"[" * 100_000,
        headers={"content-type": "application/json", "X-CSRF-Token": csrf},
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "body"


def test_a_login_ends_the_session_the_browser_had(console: Console) -> None:
    """Logging in again (as someone else, or the same person) left the earlier session
    alive on the server: its id, still valid, kept acting as the first person."""
    client = console.login("viv")
    before = client.cookies.get("modelyard_session")
    console.login("ops", client)
    assert client.get(f"{CONSOLE_PREFIX}/api/session").json()["actor"] == "ops"
    assert len(console.sessions) == 1
    stale = console.fresh()
    stale.cookies.set("modelyard_session", str(before))
    assert stale.get(f"{CONSOLE_PREFIX}/api/session").status_code == 401
    login = console.store.list_audit_events(action="console.login", limit=1)[0]
    assert login.actor == "ops" and "replaced_session" in login.payload


def test_one_actor_logging_in_over_and_over_logs_nobody_else_out(console: Console) -> None:
    """The table held 10,000 sessions and dropped the oldest of anyone's: a viewer's token
    logging in 10,000 times ended every other person's session."""
    sessions = ConsoleSessions(console.sessions.authenticator, max_sessions=20, max_per_actor=5)
    ops_id, _, _ = sessions.start(console.tokens["ops"])
    for _ in range(50):
        sessions.start(console.tokens["viv"])
    assert sessions.find(ops_id)[1].actor == "ops"
    assert len(sessions) == 6  # ops, and viv's five newest


# -- audit check-proof ----------------------------------------------------------------------


def _proof(**fields: Any) -> dict[str, Any]:
    values: list[Any] = [RECORD_FORMAT, "cmpl-1", *([float("nan")] * (len(RECORD_FIELDS) - 1))]
    return {
        "format": PROOF_FORMAT, "record_id": "cmpl-1", "record": json.dumps(values),
        "leaf": "00" * 32, "position": 0, "size": 1, "path": [], "root": "00" * 32, "seal": "s",
        "anchor": {"position": 0, "size": 1, "path": [], "root": "00" * 32},
        "event": {"seq": 1, "hash": "00" * 32, "action": "records.anchored", "payload": {
            "root": "00" * 32, "seals": ["s"], "records": [1], "roots": ["00" * 32],
            "indexes": ["00" * 32]}},
    } | fields  # fmt: skip


@pytest.mark.parametrize(
    "proof",
    [
        _proof(position=float("inf")),  # JSON's Infinity: OverflowError
        _proof(record="[" * 100_000),  # RecursionError
        _proof(),  # NaN in the record's values: the canonical encoder's ValueError
    ],
    ids=["infinite position", "deep record", "nan value"],
)
def test_a_malformed_proof_is_refused_with_one_line(proof: dict[str, Any]) -> None:
    with pytest.raises((ConfigError, AuditError)) as info:
        check_proof(proof)
    assert "proof" in info.value.one_line()


def test_check_proof_of_a_file_nested_too_deeply_is_a_usage_error(tmp_path: Path) -> None:
    deep = tmp_path / "proof.json"
    deep.write_text("[" * 100_000, encoding="utf-8")
    refused = modelyard("audit", "check-proof", str(deep), home=tmp_path)
    assert refused.code == 2 and "nested too deeply" in _one_error_line(refused.err)
    infinite = tmp_path / "infinite.json"
    infinite.write_text(json.dumps(_proof(position=float("inf"))), encoding="utf-8")
    refused = modelyard("audit", "check-proof", str(infinite), home=tmp_path)
    assert refused.code == 2 and "malformed" in _one_error_line(refused.err)


def test_a_token_name_is_one_printable_line(home: Path) -> None:
    """A name with a terminal escape sequence was stored and written raw to the terminal of
    whoever ran `tokens list`; one of 5,000 characters was taken too."""
    for bad in ("x\x1b[31mred", "two\nlines", "n" * 201):
        refused = modelyard("tokens", "create", "--name", bad, home=home)
        assert refused.code == 2 and "--name" in _one_error_line(refused.err)
    listed = modelyard("tokens", "list", "--json", home=home)
    assert listed.code == 0 and json.loads(listed.out) == [], listed.out


def test_a_token_name_with_control_characters_is_listed_escaped(home: Path) -> None:
    """A name stored before the store refused such names (or written by hand) is listed
    with its control characters escaped."""
    url = f"sqlite:///{home / 'store.db'}"
    key = AuditKeySource(key_file=home / "audit.key")
    with Store.open(url, audit_key=key) as store:
        token, _ = create_actor_token(store, store.actor, name="placeholder")
    with sqlite3.connect(home / "store.db") as db:
        db.execute("UPDATE actor_tokens SET name = ? WHERE id = ?", ("x\x1b[2Jy", token.id))
    listed = modelyard("tokens", "list", home=home)
    assert listed.code == 0, listed.err
    assert "\x1b" not in listed.out and "x\\x1b[2Jy" in listed.out


def test_an_acknowledgment_reason_cannot_write_escape_sequences_to_the_terminal(
    home: Path,
) -> None:
    """The admin's reason stays in the chain and `audit verify` printed it raw: an escape
    sequence in it could erase the lines around it on every later verify."""
    db = sqlite3.connect(home / "store.db")
    with db:
        db.execute("UPDATE audit_events SET subject = 'evil' WHERE seq = 2")
    db.close()
    assert modelyard("audit", "verify", home=home).code == 1
    reason = "fine\x1b[1A\x1b[2Khidden"
    acked = modelyard("audit", "acknowledge", "--reason", reason, home=home)
    assert acked.code == 0, acked.err
    verify = modelyard("audit", "verify", home=home)
    assert verify.code == 0, verify.err
    assert "\x1b" not in verify.out and "fine\\x1b[1A\\x1b[2Khidden" in verify.out


def test_an_empty_head_is_an_error_not_a_verify_without_it(home: Path) -> None:
    """`verify --head "$(tail -1 heads.txt)"` with an empty file passed --head '': the check
    against the kept head was skipped without a word, and verify said OK."""
    for empty in ("", "  "):
        refused = modelyard("audit", "verify", "--head", empty, home=home)
        assert refused.code == 2, refused.out
        line = _one_error_line(refused.err)
        assert "invalid --head" in line and "SEQ:HASH" in line
    bad = modelyard("audit", "verify", "--head", "12:nothex", home=home)
    assert bad.code == 2 and "invalid --head '12:nothex'" in _one_error_line(bad.err)


@pytest.mark.parametrize(
    "args",
    [
        ("audit", "log", "--since", ""),
        ("audit", "export", "--since", ""),
        ("audit", "log", "--action", ""),
        ("audit", "log", "--subject", " "),
        ("audit", "log", "--by", ""),
    ],
    ids=["log since", "export since", "action", "subject", "by"],
)
def test_an_empty_filter_is_a_usage_error(home: Path, args: tuple[str, ...]) -> None:
    """--since '' was skipped (every event, as if not given); an empty --action, --subject
    or --by matched nothing and showed an empty log."""
    refused = modelyard(*args, home=home)
    assert refused.code == 2, (refused.out, refused.err)
    assert args[2] in _one_error_line(refused.err)


def test_a_login_names_a_wrong_content_type_and_takes_any_case(console: Console) -> None:
    csrf = _login_csrf(console.client)
    body = json.dumps({"token": console.tokens["viv"]})
    wrong = console.client.post(
        f"{CONSOLE_PREFIX}/api/login",
        content=body,
        headers={"content-type": "text/plain", "X-CSRF-Token": csrf},
    )
    assert wrong.status_code == 400
    error = wrong.json()["error"]
    assert error["param"] == "content-type" and "text/plain" in error["message"]
    upper = console.client.post(
        f"{CONSOLE_PREFIX}/api/login",
        content=body,
        headers={"content-type": "Application/JSON; charset=UTF-8", "X-CSRF-Token": csrf},
    )
    assert upper.status_code == 200, upper.text


# -- OIDC groups to roles -------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["ml-admins=Admin", "ml-admins="])
def test_a_bad_role_in_the_group_mapping_names_the_setting_and_the_item(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_group_roles(f"ml-leads=approver,{raw}")
    line = info.value.one_line()
    assert "MODELYARD_OIDC_GROUP_ROLES" in line and repr(raw) in line


def test_a_group_mapped_to_two_roles_is_refused_not_the_last_taken() -> None:
    """'ml=admin,ml=viewer' gave the group the last role without a word."""
    with pytest.raises(ConfigError, match=r"'ml' is mapped twice.*admin and to viewer"):
        parse_group_roles("ml=admin, ml=viewer")
    assert parse_group_roles("ml=admin,ml=admin") == {"ml": "admin"}


def test_audit_log_shows_names_and_details_like_markup_as_typed(home: Path) -> None:
    """An actor named '[/x]' (a valid name) made `audit log` fail for everyone with Rich's
    MarkupError, and '[red]' in a detail coloured the rest of the line."""
    made = modelyard("--actor", "[/x]", "tenants", "create", "globex", home=home)
    assert made.code == 0, made.err
    assert modelyard("--actor", "[red]eve", "tenants", "create", "initech", home=home).code == 0
    for columns in ("200", "80"):
        log = modelyard("audit", "log", home=home, env={"COLUMNS": columns})
        assert log.code == 0, log.err
        assert "[/x]" in log.out and "[red]eve" in log.out


def test_a_token_lifetime_past_the_year_9999_is_a_usage_error(home: Path) -> None:
    refused = modelyard("tokens", "create", "--name", "long", "--expires", "9999999d", home=home)
    line = _one_error_line(refused.err)
    assert refused.code == 2 and "'9999999d' for --expires is longer than a date" in line
    listed = modelyard("tokens", "list", "--json", home=home)
    assert json.loads(listed.out) == []


def test_revoking_a_revoked_token_says_it_was_already_revoked(home: Path) -> None:
    created = json.loads(modelyard("tokens", "create", "--name", "t", "--json", home=home).out)
    first = modelyard("tokens", "revoke", created["id"], home=home)
    assert first.code == 0 and "revoked token" in first.out
    again = modelyard("tokens", "revoke", created["id"], home=home)
    assert again.code == 0, again.err
    assert "was already revoked on" in again.out and "nothing changed" in again.out


# -- the console in a browser ---------------------------------------------------------------


def test_in_the_browser_a_malformed_page_address_says_it_cannot_be_shown(
    console: Console,
) -> None:
    """A hash such as #/models/%E0%A4%A threw decodeURIComponent's URIError before the page's
    error handling: the view stayed on the previous page, busy, saying nothing."""
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("no chromium (apt-get install chromium)")
    mounts = {ADMIN_PREFIX: console.app.routes[0].app, CONSOLE_PREFIX: console.app.routes[1].app}
    app = create_app(console.store, EchoEngine(), mounts=mounts)
    with BackgroundServer(app) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, timeout=60_000)
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            page.goto(f"{server.base_url}{CONSOLE_PREFIX}/login")
            page.fill("#token", console.tokens["ops"])
            page.click("#submit")
            expect(page.get_by_test_id("who")).to_contain_text("ops")
            expect(page.locator("main[aria-busy=false]")).to_be_visible()
            page.goto(f"{server.base_url}{CONSOLE_PREFIX}/#/models/%E0%A4%A")
            expect(page.locator("main h1")).to_have_text("Cannot show this page")
            expect(page.locator("main[aria-busy=false]")).to_be_visible()
        finally:
            browser.close()


def test_in_the_browser_a_logout_the_server_refused_is_not_shown_as_done(
    console: Console,
) -> None:
    """The page went to the login page whatever the logout's answer: after a refused or
    failed logout the person believed they were logged out while the session lived on."""
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("no chromium (apt-get install chromium)")
    mounts = {ADMIN_PREFIX: console.app.routes[0].app, CONSOLE_PREFIX: console.app.routes[1].app}
    app = create_app(console.store, EchoEngine(), mounts=mounts)
    with BackgroundServer(app) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, timeout=60_000)
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            page.goto(f"{server.base_url}{CONSOLE_PREFIX}/login")
            page.fill("#token", console.tokens["ops"])
            page.click("#submit")
            expect(page.get_by_test_id("who")).to_contain_text("ops")
            failing = json.dumps({"error": {"message": "server busy"}})
            page.route("**/api/logout", lambda r: r.fulfill(status=503, body=failing))
            page.click("#logout")
            expect(page.locator("#flash")).to_contain_text("Not logged out: server busy")
            assert page.url.endswith("/console/")
            page.unroute("**/api/logout")
            page.click("#logout")
            expect(page).to_have_url(re.compile(r"/console/login$"))
            assert len(console.sessions) == 0
        finally:
            browser.close()


def test_in_the_browser_a_login_after_the_login_token_expired_goes_through(
    console: Console,
) -> None:
    """The login page's CSRF cookie lives 10 minutes: a person who typed the token after
    that got "a login needs the login page's token" and had to submit again."""
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("no chromium (apt-get install chromium)")
    mounts = {ADMIN_PREFIX: console.app.routes[0].app, CONSOLE_PREFIX: console.app.routes[1].app}
    app = create_app(console.store, EchoEngine(), mounts=mounts)
    with BackgroundServer(app) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, timeout=60_000)
        try:
            context = browser.new_context()
            page = context.new_page()
            page.set_default_timeout(15_000)
            with page.expect_response(re.compile(r"/api/login$")):  # its login token
                page.goto(f"{server.base_url}{CONSOLE_PREFIX}/login")
            context.clear_cookies()  # as the browser does when the cookie's 10 minutes pass
            page.fill("#token", console.tokens["ops"])
            page.click("#submit")
            expect(page.get_by_test_id("who")).to_contain_text("ops")
        finally:
            browser.close()


def test_a_bad_export_format_names_the_option(home: Path) -> None:
    refused = modelyard("audit", "export", "--format", "CSV", home=home)
    assert refused.code == 2
    assert "invalid --format 'CSV': use jsonl or csv" in _one_error_line(refused.err)
