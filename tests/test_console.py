"""The web console (/console): its sessions over HTTP, and its pages in a real browser.

A real server (``create_app`` with the admin API and the console mounted, as
``modelyard serve`` does, the rollout controller inside) over a SQLite store, an
echo engine answering a tenant's requests. HTTP-level checks go through httpx;
the pages are driven by Playwright in Debian's chromium (``/usr/bin/chromium``:
``playwright install`` cannot download here; .ci/run installs it). Without it the
browser tests are skipped, except under CI=true, where they fail.

Screenshots of the main pages go to ``$MODELYARD_CONSOLE_SCREENSHOTS`` (docs/images
was made that way) or the test's tmp_path.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from clihelp import modelyard
from modelyard.access import PeopleAuthenticator, create_actor_token, create_api_key
from modelyard.admin import ADMIN_PREFIX, create_admin_app
from modelyard.audit import AccessPolicy
from modelyard.console import (
    CONSOLE_PREFIX,
    ConsoleSessions,
    LoginLimiter,
    create_console_app,
)
from modelyard.delivery import Controller, start_rollout
from modelyard.serving import BackgroundServer, EchoEngine, create_app
from modelyard.store import Store
from worlds import gate_metrics

KEY = "console-test-key-console-test-key"
ACTORS = {"ops": "admin", "viv": "viewer", "dev": "developer", "dana": "approver"}
STATIC = Path(__file__).parents[1] / "src/modelyard/console/static"
WAIT_MS = 15_000  # every wait in the browser is bounded
# read at import: the autouse fixture of conftest.py clears MODELYARD_* from each test's env
SCREENSHOTS = os.environ.get("MODELYARD_CONSOLE_SCREENSHOTS")


@dataclass
class World:
    store: Store  # acting as ops, the admin
    url: str  # the server's base URL
    db_url: str
    tokens: dict[str, str]
    tenant_key: str

    def login(self, who: str, client: httpx.Client | None = None) -> httpx.Client:
        """An httpx client logged in to the console as ``who`` (cookie jar and all)."""
        client = client or _client(self)
        csrf = client.get(f"{CONSOLE_PREFIX}/api/login").json()["csrf_token"]
        r = client.post(f"{CONSOLE_PREFIX}/api/login", json={"token": self.tokens[who]},
                        headers={"X-CSRF-Token": csrf})  # fmt: skip
        assert r.status_code == 200, r.text
        return client


_CLIENTS: list[httpx.Client] = []


def _client(world: World) -> httpx.Client:
    """A client of the server, closed when the test ends (the ``world`` fixture's exit)."""
    client = httpx.Client(base_url=world.url, timeout=30)
    _CLIENTS.append(client)
    return client


def _seed(ops: Store, url: str, policy: AccessPolicy) -> None:
    for name, role in ACTORS.items():
        ops.add_actor(name, role)
    ops.create_tenant("acme")
    ops.register_base_model("tiny", "/models/tiny", {"model.safetensors": "ab" * 32})
    ops.create_registered_model("support", tenant="acme")
    with Store.open(url, actor="dev", audit_key=KEY, policy=policy) as dev:
        for run, seed in (("run-1", 1), ("run-2", 2)):
            dev.create_run(run, base_model="tiny", dataset_id=None, config={}, seed=seed,
                           environment={})  # fmt: skip
        for digest, run, parent, passed in (("cd", "run-1", None, True),
                                            ("ef", "run-2", "support:1", True),
                                            ("01", None, "support:2", False)):  # fmt: skip
            dev.create_model_version(
                "support", kind="adapter", artifact_digest=digest * 32, base_model="tiny",
                run_id=run, lineage={"parent": parent} if parent else {},
                metrics=gate_metrics(passed),
            )  # fmt: skip
    ops.create_endpoint("acme-support", model_ref="support:1", tenant="acme")
    ops.set_alias("support", "staging", 2)


def _console(ops: Store, *, secure: bool = False, limiter: LoginLimiter | None = None) -> Any:
    people = PeopleAuthenticator(ops)
    sessions = ConsoleSessions(people, secure=secure)
    return {
        ADMIN_PREFIX: create_admin_app(ops, people, sessions),
        CONSOLE_PREFIX: create_console_app(ops, sessions, limiter=limiter),
    }


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    policy = AccessPolicy(bootstrap_admin="ops", segregation_of_duties=True)
    with (
        Store.open(url, actor="ops", audit_key=KEY, policy=policy) as ops,
        Store.open(url, actor="ops", audit_key=KEY, policy=policy) as controller_store,
    ):
        _seed(ops, url, policy)
        tokens = {name: create_actor_token(ops, name)[1] for name in ACTORS}
        _, tenant_key = create_api_key(ops, "acme")
        app = create_app(
            ops, EchoEngine(), refresh_seconds=0.2, heartbeat_s=0.3,
            controller=Controller(controller_store, stale_after_s=10), controller_interval_s=0.2,
            mounts=_console(ops, limiter=LoginLimiter(max_failures=5, window_s=300)),
        )  # fmt: skip
        with BackgroundServer(app) as server:
            try:
                yield World(ops, server.base_url, url, tokens, tenant_key)
            finally:
                while _CLIENTS:
                    _CLIENTS.pop().close()


# -- over HTTP -------------------------------------------------------------------------------


def _set_cookies(r: httpx.Response) -> dict[str, str]:
    return {h.split("=", 1)[0]: h for h in r.headers.get_list("set-cookie")}


def test_a_login_sets_an_http_only_strict_cookie_that_is_not_the_token(world: World) -> None:
    client = _client(world)
    r = client.get(f"{CONSOLE_PREFIX}/api/login")
    login_cookie = _set_cookies(r)["modelyard_login"]
    assert "HttpOnly" in login_cookie and "SameSite=strict" in login_cookie
    r = client.post(f"{CONSOLE_PREFIX}/api/login", json={"token": world.tokens["dev"]},
                    headers={"X-CSRF-Token": r.json()["csrf_token"]})  # fmt: skip
    assert r.status_code == 200 and r.json() == {"actor": "dev", "via": "token"}
    cookie = _set_cookies(r)["modelyard_session"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain HTTP on 127.0.0.1: a Secure cookie would not come back
    assert world.tokens["dev"] not in r.text and world.tokens["dev"] not in cookie
    session_id = client.cookies["modelyard_session"]
    assert len(session_id) >= 43  # 256 random bits
    me = client.get(f"{ADMIN_PREFIX}/whoami").json()  # the cookie opens the admin API
    assert me["actor"] == "dev" and me["role"] == "developer"
    info = client.get(f"{CONSOLE_PREFIX}/api/session").json()
    assert info["actor"] == "dev" and len(info["csrf_token"]) >= 43
    assert world.tokens["dev"] not in str(info)
    login = world.store.list_audit_events(action="console.login", limit=1)[0]
    assert login.actor == "dev" and login.payload["via"] == "token"
    assert session_id not in str(login.payload)


def test_over_tls_the_cookie_is_secure_and_host_prefixed(world: World) -> None:
    app = create_app(world.store, EchoEngine(), heartbeat_s=None,
                     mounts=_console(world.store, secure=True))  # fmt: skip
    with BackgroundServer(app) as server, httpx.Client(base_url=server.base_url) as client:
        r = client.get(f"{CONSOLE_PREFIX}/api/login")
        assert "Secure" in _set_cookies(r)["__Host-modelyard_login"]
        assert "strict-transport-security" in r.headers
        csrf = r.json()["csrf_token"]  # the Secure cookie by hand: httpx sends it over https only
        headers = {"X-CSRF-Token": csrf, "Cookie": f"__Host-modelyard_login={csrf}"}
        r = client.post(f"{CONSOLE_PREFIX}/api/login", json={"token": world.tokens["viv"]},
                        headers=headers)  # fmt: skip
        assert r.status_code == 200, r.text
        cookie = _set_cookies(r)["__Host-modelyard_session"]
        assert "Secure" in cookie and "HttpOnly" in cookie and "Path=/" in cookie


def test_changes_without_the_csrf_token_are_403(world: World) -> None:
    start_rollout(world.store.as_actor("dev"), "acme-support", "support:2", steps="50,100",
                  bake_s=600, min_requests=5)  # fmt: skip
    client = world.login("dev")
    abort = f"{ADMIN_PREFIX}/endpoints/acme-support/rollout/abort"
    for headers in ({}, {"X-CSRF-Token": "forged"}):
        r = client.post(abort, json={"reason": "csrf"}, headers=headers)
        assert r.status_code == 403 and r.json()["error"]["code"] == "csrf_failed", r.text
    assert world.store.latest_rollout("acme-support").active
    assert client.get(f"{ADMIN_PREFIX}/endpoints/acme-support/rollout").status_code == 200
    # the login and the logout need their tokens too
    anonymous = _client(world)
    r = anonymous.post(f"{CONSOLE_PREFIX}/api/login", json={"token": world.tokens["dev"]})
    assert r.status_code == 403 and "modelyard_session" not in _set_cookies(r)
    assert client.post(f"{CONSOLE_PREFIX}/api/logout").status_code == 403
    csrf = client.get(f"{CONSOLE_PREFIX}/api/session").json()["csrf_token"]
    r = client.post(abort, json={"reason": "with its token"}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200 and r.json()["status"] == "aborted"
    assert world.store.list_audit_events(action="rollout.aborted")[0].actor == "dev"


def test_every_answer_carries_a_strict_content_security_policy(world: World) -> None:
    client = world.login("viv")
    for path in ("/", "/login", "/static/js/main.js", "/static/console.css", "/api/session"):
        r = client.get(CONSOLE_PREFIX + path)
        assert r.status_code == 200, path
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp, path
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, path
        assert "frame-ancestors 'none'" in csp and r.headers["x-content-type-options"] == "nosniff"
    assert (
        client.get(f"{CONSOLE_PREFIX}/static/js/main.js")
        .headers["content-type"]
        .startswith("text/javascript")
    )
    for page in STATIC.glob("*.html"):  # nothing the policy would have to allow inline
        text = page.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), page
        assert not re.search(r"<[^>]*\s(style|on[a-z]+)=", text) and "<style" not in text, page
    for script in STATIC.rglob("*.js"):
        code = script.read_text()
        assert not re.search(r"\.(inner|outer)HTML\s*=|insertAdjacentHTML|\beval\(", code), script


def test_failed_logins_from_one_address_are_limited_with_429(world: World) -> None:
    client = _client(world)
    csrf = client.get(f"{CONSOLE_PREFIX}/api/login").json()["csrf_token"]

    def attempt(token: str) -> httpx.Response:
        return client.post(f"{CONSOLE_PREFIX}/api/login", json={"token": token},
                           headers={"X-CSRF-Token": csrf})  # fmt: skip

    for bad in ("nonsense", world.tokens["dev"][:-1] + "x", "myp_a_b", "a.b.c", world.tenant_key):
        assert attempt(bad).status_code == 401
    r = attempt("nonsense")
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    assert "too many failed console logins" in r.json()["error"]["message"]
    assert attempt(world.tokens["dev"]).status_code == 429  # even a good token, for a while
    assert "modelyard_session" not in client.cookies


def test_the_addresses_of_one_ipv6_64_share_their_failed_logins(world: World) -> None:
    """A host that holds a /64 cannot guess on without limit by changing its address; its
    neighbours in another /64 (and the IPv4 client) are not limited by it."""
    client = _client(world)
    csrf = client.get(f"{CONSOLE_PREFIX}/api/login").json()["csrf_token"]

    def attempt(token: str, address: str) -> httpx.Response:
        headers = {"X-CSRF-Token": csrf, "X-Forwarded-For": address}  # via a proxy here
        return client.post(f"{CONSOLE_PREFIX}/api/login", json={"token": token}, headers=headers)

    for i in range(1, 6):
        assert attempt("nonsense", f"2001:db8:7:1::{i:x}").status_code == 401
    r = attempt("nonsense", "2001:db8:7:1:ffff:ffff:ffff:fffe")
    assert r.status_code == 429, r.text
    assert "from 2001:db8:7:1::/64:" in r.json()["error"]["message"]
    assert attempt("nonsense", "2001:db8:7:2::1").status_code == 401  # another /64
    assert attempt("nonsense", "203.0.113.9").status_code == 401


def test_logout_ends_the_session_for_the_console_and_the_admin_api(world: World) -> None:
    client = world.login("dev")
    session_id = client.cookies["modelyard_session"]
    csrf = client.get(f"{CONSOLE_PREFIX}/api/session").json()["csrf_token"]
    r = client.post(f"{CONSOLE_PREFIX}/api/logout", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200
    assert 'modelyard_session=""' in _set_cookies(r)["modelyard_session"]  # cleared
    replay = _client(world)
    replay.cookies.set("modelyard_session", session_id)
    assert replay.get(f"{CONSOLE_PREFIX}/api/session").status_code == 401
    assert replay.get(f"{ADMIN_PREFIX}/whoami").status_code == 401
    r = replay.get(f"{CONSOLE_PREFIX}/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].endswith("/console/login")
    assert world.store.list_audit_events(action="console.logout")[0].actor == "dev"


def test_revoking_the_token_ends_its_console_sessions(world: World) -> None:
    client = world.login("dana")
    assert client.get(f"{ADMIN_PREFIX}/whoami").status_code == 200
    [token] = world.store.list_actor_tokens("dana")
    world.store.revoke_actor_token(token.id)
    r = client.get(f"{ADMIN_PREFIX}/whoami")
    assert r.status_code == 401 and "no longer authenticates" in r.json()["error"]["message"]


# -- in the browser --------------------------------------------------------------------------


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    where = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path / "screenshots"
    where.mkdir(parents=True, exist_ok=True)
    return where


def _is_error(kind: str, text: str) -> bool:
    """A script error or a CSP violation; not the browser's note of a 4xx the page expects
    (a refusal, no rollout yet), which the page shows itself."""
    return kind == "error" and not text.startswith("Failed to load resource")


def _page(browser: Browser, world: World, who: str) -> tuple[Page, list[str]]:
    """A fresh browser context logged in as ``who`` through the login form; the list
    collects the page's errors (CSP violations show up there)."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if _is_error(m.type, m.text) else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{world.url}{CONSOLE_PREFIX}/")
    expect(page).to_have_url(re.compile(r"/console/login$"))
    page.fill("#token", world.tokens[who])
    page.click("#submit")
    expect(page.get_by_test_id("who")).to_contain_text(f"{who} · {ACTORS[who]}")
    return page, errors


def _open(page: Page, world: World, route: str) -> None:
    page.goto(f"{world.url}{CONSOLE_PREFIX}/#/{route}")
    expect(page.locator("main[aria-busy=false]")).to_be_visible()


class Load:
    """A tenant's requests to the endpoint, one after another, until stopped."""

    def __init__(self, world: World) -> None:
        self.world, self.stop, self.sent = world, threading.Event(), 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        chat = {"model": "acme-support", "messages": [{"role": "user", "content": "hello"}]}
        headers = {"Authorization": f"Bearer {self.world.tenant_key}"}
        with httpx.Client(base_url=self.world.url, timeout=30) as client:
            while not self.stop.is_set():
                client.post("/v1/chat/completions", json=chat, headers=headers)
                self.sent += 1
                time.sleep(0.02)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def _requests_shown(page: Page) -> int:
    text = page.get_by_test_id("step-traffic").inner_text()
    return int(text.split(" requests", 1)[0])


def test_in_the_browser_a_developer_watches_a_rollout_and_aborts_it(
    world: World, browser: Browser, shots: Path, tmp_path: Path
) -> None:
    page, errors = _page(browser, world, "dev")
    # a model: its lineage and its versions' gate verdicts
    _open(page, world, "models")
    page.get_by_test_id("models").get_by_role("link", name="support", exact=True).click()
    lineage = page.get_by_test_id("lineage")
    expect(lineage).to_contain_text("support:1")
    expect(lineage).to_contain_text("support:3")
    expect(lineage).to_contain_text("run run-1")
    gates = page.get_by_test_id("gates")
    expect(gates).to_contain_text("exact_match >= 0.8")
    expect(gates).to_contain_text("failed")  # v3, the latest, failed its gate
    expect(page.get_by_test_id("versions")).to_contain_text("passed")
    page.get_by_test_id("lineage").get_by_text("support:2", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("support:2")
    expect(page.get_by_test_id("card")).to_contain_text("Intended use")
    page.mouse.move(0, 0)
    page.screenshot(path=shots / "console-model.png", full_page=True)

    with Load(world):
        # a rollout started from the CLI, as a developer with the database (the local CLI)
        env = {"MODELYARD_STORE_URL": world.db_url, "MODELYARD_AUDIT_KEY": KEY,
               "MODELYARD_ACTOR": "dev"}  # fmt: skip
        started = modelyard("rollout", "start", "acme-support", "--to", "support:2",
                            "--steps", "25,50,100", "--bake", "10m", "--min-requests", "5",
                            home=tmp_path / "cli-home", env=env, timeout=120)  # fmt: skip
        assert started.code == 0, started.err
        _open(page, world, "rollouts")
        expect(page.get_by_test_id("rollouts")).to_contain_text("running")
        page.get_by_test_id("rollouts").get_by_role("link", name="acme-support").click()
        expect(page.get_by_test_id("guards")).to_contain_text("error_rate <= 0.02")
        expect(page.get_by_test_id("timeline")).to_contain_text("step 1: 25% (now)")
        first = _requests_shown(page)
        deadline = time.monotonic() + 20  # the page refreshes itself every 2 s
        while _requests_shown(page) <= first and time.monotonic() < deadline:
            page.wait_for_timeout(250)
        assert _requests_shown(page) > first, "the guard values did not move"
        expect(page.get_by_test_id("guards")).to_contain_text("pass")
        expect(page.get_by_test_id("traffic-now")).to_contain_text("v2 · 25%")
        page.screenshot(path=shots / "console-rollout.png", full_page=True)
        _open(page, world, "endpoints/acme-support")
        expect(page.get_by_test_id("plan")).to_contain_text("25%")

        # abort with the button
        _open(page, world, "rollouts/acme-support")
        page.fill("#abort-reason", "seen enough in the console")
        page.click("#abort")
        expect(page.get_by_test_id("status")).to_contain_text("aborted")
        expect(page.get_by_test_id("reason")).to_contain_text("seen enough in the console")
    assert world.store.latest_rollout("acme-support").status == "aborted"
    assert [r.weight for r in world.store.get_endpoint("acme-support").routes] == [100]

    # the abort in the audit page, by its actor
    _open(page, world, "audit")
    expect(page.get_by_test_id("chain")).to_contain_text("ok")
    page.fill("#filter-action", "rollout.*")
    page.click("form[data-testid=filters] button")
    expect(page).to_have_url(re.compile(r"#/audit\?action=rollout\.\*"))
    events = page.get_by_test_id("audit-events")
    aborted = events.locator("tr", has_text="rollout.aborted")
    expect(aborted).to_contain_text("dev")
    expect(aborted).to_contain_text("seen enough in the console")
    expect(events).to_contain_text("rollout.started")
    expect(events).not_to_contain_text("console.login")
    page.screenshot(path=shots / "console-audit.png", full_page=True)
    assert errors == [], errors


def test_in_the_browser_a_viewer_sees_no_buttons_and_a_forced_post_is_403(
    world: World, browser: Browser, shots: Path
) -> None:
    start_rollout(world.store.as_actor("dev"), "acme-support", "support:2", steps="50,100",
                  bake_s=600, min_requests=5)  # fmt: skip
    page, errors = _page(browser, world, "viv")
    _open(page, world, "rollouts/acme-support")
    expect(page.get_by_test_id("timeline")).to_be_visible()
    expect(page.get_by_test_id("status")).to_contain_text("running")
    assert page.locator("button#abort, button#promote, button#pause").count() == 0
    assert page.get_by_test_id("actions").count() == 0
    # forced: the session's own CSRF token, so only the role stands in the way
    status = page.evaluate(
        """async () => {
            const s = await (await fetch('/console/api/session')).json();
            const r = await fetch('/admin/v1/endpoints/acme-support/rollout/abort', {
                method: 'POST', headers: {'X-CSRF-Token': s.csrf_token,
                'Content-Type': 'application/json'}, body: '{"reason": "forced"}'});
            return [r.status, (await r.json()).error.type];
        }"""
    )
    assert status == [403, "permission_error"]
    assert world.store.latest_rollout("acme-support").active
    refusal = world.store.list_audit_events(action="permission.denied", actor="viv")[0]
    assert refusal.payload["attempted"] == "rollout.aborted" or "abort" in str(refusal.payload)
    _open(page, world, "endpoints")
    expect(page.get_by_test_id("endpoints")).to_contain_text("acme-support")
    page.screenshot(path=shots / "console-endpoints-viewer.png", full_page=True)
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/console/login$"))
    page.screenshot(path=shots / "console-login.png")
    assert errors == [], errors


def _ask(client: httpx.Client, world: World, words: int, thumbs: str | None = None) -> None:
    chat = {"model": "acme-support",
            "messages": [{"role": "user", "content": " ".join(["claim"] * words)}]}  # fmt: skip
    headers = {"Authorization": f"Bearer {world.tenant_key}"}
    r = client.post("/v1/chat/completions", json=chat, headers=headers)
    assert r.status_code == 200, r.text
    if thumbs:
        body = {"request_id": r.json()["id"], "thumbs": thumbs, "comment": f"{thumbs} by a test"}
        assert client.post("/v1/feedback", json=body, headers=headers).status_code == 200


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_in_the_browser_chart_axes_are_round_and_marked_at_whole_times(
    world: World, browser: Browser
) -> None:
    """The series charts' y labels were a quarter of a rounded top (62.5 ms, 188 ms) and
    their time marks five equal parts of the window (08:04, 08:08, 08:12, 08:15)."""
    page, errors = _page(browser, world, "viv")
    got = page.evaluate("""async () => {
        const c = await import(new URL("static/js/charts.js", document.baseURI).href);
        const t0 = Date.UTC(2026, 11, 6, 8, 4, 7), t1 = t0 + 15 * 60000;
        return { ms: c.yTicks(230), tiny: c.yTicks(0.02), count: c.yTicks(19, { whole: true }),
                 few: c.yTicks(3, { whole: true }), none: c.yTicks(0),
                 times: c.timeTicks(t0, t1).map((t) => new Date(t).toISOString().slice(11, 16)),
                 day: c.timeTicks(t1 - 86400000, t1).length };
    }""")
    assert got["ms"] == [0, 100, 200, 300]
    assert got["tiny"] == pytest.approx([0, 0.005, 0.01, 0.015, 0.02])
    assert got["count"] == [0, 5, 10, 15, 20] and got["few"] == [0, 1, 2, 3]
    assert got["none"] == [0, 0.25]
    assert got["times"] == ["08:05", "08:10", "08:15"]
    assert got["day"] == 4  # a day: every six hours
    assert errors == [], errors


def test_in_the_browser_monitoring_shows_drift_feedback_and_traffic_charts(
    world: World, browser: Browser, shots: Path, tmp_path: Path
) -> None:
    client = _client(world)
    t0 = datetime.now(UTC) - timedelta(seconds=1)
    for i in range(40):  # the reference: short prompts
        _ask(client, world, 3, thumbs="up" if i % 4 else "down")
    time.sleep(1.5)
    t1 = datetime.now(UTC)
    time.sleep(1.5)
    t2 = datetime.now(UTC)
    for _ in range(40):  # now: long prompts
        _ask(client, world, 60)
    end = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    window = math.ceil((end - t2).total_seconds())  # from t2: none of the reference's
    env = {"MODELYARD_STORE_URL": world.db_url, "MODELYARD_AUDIT_KEY": KEY,
           "MODELYARD_ACTOR": "ops"}  # fmt: skip
    drift = modelyard("monitor", "drift", "--endpoint", "acme-support", "--reference",
                      f"baseline:{_iso(t0)}/{_iso(t1)}", "--window", f"{window}s",
                      "--end", _iso(end), "--min-samples", "10", home=tmp_path / "cli-home",
                      env=env, timeout=120)  # fmt: skip
    assert drift.code == 0 and "prompt_chars" in drift.out, drift.err

    page, errors = _page(browser, world, "viv")
    _open(page, world, "monitoring")
    found = page.get_by_test_id("drift")
    feature = found.locator(".feature", has_text="prompt_chars")
    expect(feature.locator(".pill")).to_have_text("drift")
    expect(feature).to_contain_text("p-value")
    expect(feature).to_contain_text("(drift below 0.05, n=40 now vs 40 in the reference)")
    expect(found).to_contain_text("acme-support · support:1")
    feedback = page.get_by_test_id("feedback")
    expect(feedback.locator("tr", has_text="support:1")).to_contain_text("30 / 10")
    expect(page.get_by_test_id("feedback-recent")).to_contain_text("down by a test")
    page.screenshot(path=shots / "console-monitoring.png", full_page=True)

    _open(page, world, "endpoints/acme-support")
    series = page.get_by_test_id("series")
    expect(series).to_contain_text("support:1: 80 requests, 0 errors")
    assert series.locator("svg.chart path[stroke]").count() >= 4  # a line per chart
    page.get_by_role("button", name="last 1h").click()
    expect(series).to_contain_text("support:1: 80 requests")
    page.get_by_role("button", name="last 15m").click()
    page.mouse.move(0, 0)
    page.screenshot(path=shots / "console-endpoint.png", full_page=True)
    assert errors == [], errors
