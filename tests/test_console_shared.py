"""The console's sessions in Redis (``serve --redis-url``): two replicas behind one "load
balancer" (one cookie jar, two servers on 127.0.0.1) serve each other's sessions,
single sign-on flows and failed-login counts; Redis holds no token in the clear; an
outage is a 503, not a logout.

Real servers (``create_app`` with the admin API and the console mounted as
``control_plane`` mounts them) over one SQLite store, a real ``redis-server``
(``redisserver``) and the test issuer of ``oidc_idp``."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from consolereplicas import TIMEOUT_S, console_store, login, replicas
from modelyard.access import (
    PeopleAuthenticator,
    create_actor_token,
)
from modelyard.admin import ADMIN_PREFIX
from modelyard.console import (
    CONSOLE_PREFIX,
    ConsoleSessions,
    shared_tables,
)
from modelyard.errors import AuthError
from modelyard.serving import BackgroundServer, EchoEngine, create_app
from modelyard.store import Store
from oidc_idp import running_idp
from redisserver import RedisServer, redis_cluster, redis_server


@pytest.fixture
def ops(tmp_path: Path) -> Iterator[Store]:
    with console_store(tmp_path) as store:
        yield store


@pytest.fixture
def redis_srv(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path) as server:
        yield server


def _redis_bytes(server: RedisServer) -> bytes:
    """Every key and value in Redis, as one blob to search."""
    client = server.client()
    found = b""
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        found += key
        if kind == b"string":
            found += client.get(key) or b""
        elif kind == b"zset":
            found += b"".join(m for m, _ in client.zrange(key, 0, -1, withscores=True))
    return found


def test_a_session_opened_at_one_replica_is_served_and_ended_by_another(
    ops: Store, redis_srv: RedisServer
) -> None:
    token = create_actor_token(ops, "ops")[1]
    with replicas(ops, redis_srv.url) as (a, b), httpx.Client(timeout=TIMEOUT_S) as client:
        assert login(client, a, token).status_code == 200  # the cookie is for 127.0.0.1
        whoami = client.get(f"{b}{ADMIN_PREFIX}/whoami")
        assert whoami.status_code == 200, whoami.text
        assert whoami.json()["actor"] == "ops" and whoami.json()["via"] == "token"
        csrf = client.get(f"{b}{CONSOLE_PREFIX}/api/session").json()["csrf_token"]
        # a change through the session at A with the CSRF token B handed out
        made = client.post(f"{a}{ADMIN_PREFIX}/tenants", json={"name": "acme"},
                           headers={"X-CSRF-Token": csrf})  # fmt: skip
        assert made.status_code == 201, made.text
        refused = client.post(f"{a}{ADMIN_PREFIX}/tenants", json={"name": "other"})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf_failed"
        kept = dict(client.cookies)  # a copy of the cookie, to show the session is gone
        out = client.post(f"{b}{CONSOLE_PREFIX}/api/logout", headers={"X-CSRF-Token": csrf})
        assert out.status_code == 200 and out.json()["ended"] is True
        gone = httpx.get(f"{a}{ADMIN_PREFIX}/whoami", cookies=kept, timeout=TIMEOUT_S)
        assert gone.status_code == 401 and "no console session" in gone.text


def test_a_restarted_replica_keeps_its_sessions_and_redis_holds_no_token(
    ops: Store, redis_srv: RedisServer
) -> None:
    token = create_actor_token(ops, "ops")[1]
    with httpx.Client(timeout=TIMEOUT_S) as client:
        with replicas(ops, redis_srv.url, n=1) as (a,):
            assert login(client, a, token).status_code == 200
            csrf = client.get(f"{a}{CONSOLE_PREFIX}/api/session").json()["csrf_token"]
        cookie = next(iter(client.cookies.jar)).value
        with replicas(ops, redis_srv.url, n=1) as (again,):  # a new process's memory
            whoami = client.get(f"{again}{ADMIN_PREFIX}/whoami")
            assert whoami.status_code == 200 and whoami.json()["actor"] == "ops"
    held = _redis_bytes(redis_srv)
    assert b"modelyard:console:" in held  # the session is there ...
    for secret in (token, csrf, cookie):  # ... but none of its secrets is readable
        assert secret.encode() not in held


def test_while_redis_is_down_a_session_is_a_503_and_it_is_there_after(
    ops: Store, redis_srv: RedisServer
) -> None:
    token = create_actor_token(ops, "ops")[1]
    with replicas(ops, redis_srv.url, n=1) as (a,), httpx.Client(timeout=TIMEOUT_S) as client:
        assert login(client, a, token).status_code == 200
        assert redis_srv.process is not None
        os.kill(redis_srv.process.pid, signal.SIGSTOP)  # it stops answering (a 1 s timeout)
        try:
            down = client.get(f"{a}{ADMIN_PREFIX}/whoami")
        finally:
            os.kill(redis_srv.process.pid, signal.SIGCONT)
        assert down.status_code == 503, down.text
        assert down.json()["error"]["code"] == "sessions_unavailable"
        assert int(down.headers["retry-after"]) >= 1
        assert "Redis" in down.json()["error"]["message"]
        time.sleep(1.1)  # Redis is asked again at most once a second
        back = client.get(f"{a}{ADMIN_PREFIX}/whoami")
        assert back.status_code == 200 and back.json()["actor"] == "ops"


def test_failed_logins_are_counted_across_replicas(ops: Store, redis_srv: RedisServer) -> None:
    with (
        replicas(ops, redis_srv.url, max_failures=4) as (a, b),
        httpx.Client(timeout=TIMEOUT_S) as client,
    ):
        for url in (a, b, a, b):
            assert login(client, url, "nonsense").status_code == 401
        for url in (a, b):  # 4 in all: each replica alone has seen only 2
            limited = login(client, url, create_actor_token(ops, "ops")[1])
            assert limited.status_code == 429, limited.text
            assert int(limited.headers["retry-after"]) > 290


def test_an_actors_oldest_sessions_give_way_in_redis_never_anothers(
    ops: Store, redis_srv: RedisServer
) -> None:
    people = PeopleAuthenticator(ops)
    table, _ = shared_tables(redis_srv.url)
    replicas = [ConsoleSessions(people, table=table, max_sessions=20, max_per_actor=5)
                for _ in range(2)]  # fmt: skip
    ops_token, viv_token = create_actor_token(ops, "ops")[1], create_actor_token(ops, "viv")[1]
    ops_id, _, _ = replicas[0].start(ops_token)
    viv_ids = [replicas[i % 2].start(viv_token)[0] for i in range(12)]
    assert replicas[1].find(ops_id)[1].actor == "ops"
    assert len(replicas[0]) == len(replicas[1]) == 6  # ops, and viv's five newest
    for old in viv_ids[:7]:
        with pytest.raises(AuthError):
            replicas[1].find(old)
    for kept in viv_ids[7:]:
        assert replicas[0].find(kept)[1].actor == "viv"
    # with room for 10, a third actor's login makes the oldest of all (ops's first) give way
    others = [replicas[0].start(create_actor_token(ops, "ops")[1])[0] for _ in range(4)]
    assert len(replicas[0]) == 10
    tight = ConsoleSessions(people, table=table, max_sessions=10, max_per_actor=5)
    tight.start(create_actor_token(ops, "dev")[1])
    with pytest.raises(AuthError):
        tight.find(ops_id)
    assert tight.find(others[-1])[1].actor == "ops" and len(tight) == 10


def test_idle_and_absolute_ends_hold_in_redis(ops: Store, redis_srv: RedisServer) -> None:
    people = PeopleAuthenticator(ops)
    table, _ = shared_tables(redis_srv.url)
    token = create_actor_token(ops, "ops")[1]
    idle = ConsoleSessions(people, table=table, idle_s=0.5)
    quiet, _, _ = idle.start(token)
    busy, _, _ = idle.start(token)
    for _ in range(4):  # a request every 0.25 s keeps it alive past 0.5 s
        time.sleep(0.25)
        idle.find(busy)
    with pytest.raises(AuthError):
        idle.find(quiet)
    now = [time.time()]
    short = ConsoleSessions(people, table=table, ttl_s=60, clock=lambda: now[0])
    session_id, _, _ = short.start(token)
    now[0] += 59
    assert short.find(session_id)[1].actor == "ops"
    now[0] += 2  # past ttl_s whatever the requests
    with pytest.raises(AuthError):
        short.find(session_id)


def test_single_sign_on_begun_at_one_replica_finishes_at_another_and_renews_once(
    ops: Store, redis_srv: RedisServer
) -> None:
    with (
        running_idp("localhost") as idp,
        replicas(ops, redis_srv.url, idp=idp) as (a, b),
        httpx.Client(timeout=TIMEOUT_S) as client,
    ):
        idp.access_ttl_s = 3  # exp is whole seconds: at least 2 s ahead when issued
        start = client.get(f"{a}{CONSOLE_PREFIX}/oidc/login")
        assert start.status_code == 303
        back = httpx.get(start.headers["location"], timeout=TIMEOUT_S)  # the issuer
        callback = back.headers["location"].replace(a, b)  # the load balancer chose B
        page = client.get(callback)
        assert page.status_code == 200 and "Continue to the console" in page.text
        assert client.get(f"{a}{ADMIN_PREFIX}/whoami").json()["actor"] == "alice"
        time.sleep(3.2)  # the token expired: both replicas are asked at once
        idp.token_delay_s = 0.5  # the issuer is slow, so the renewals overlap
        answers: list[int] = []

        def ask(url: str) -> None:
            answers.append(client.get(f"{url}{ADMIN_PREFIX}/whoami").status_code)

        threads = [threading.Thread(target=ask, args=(u,)) for u in (a, b, a, b)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert answers == [200] * 4  # a refresh token spent twice would have ended it
        grants = [r["grant_type"] for r in idp.token_requests]
        assert grants == ["authorization_code", "refresh_token"]


def test_sessions_work_on_a_redis_cluster(ops: Store, tmp_path: Path) -> None:
    token = create_actor_token(ops, "ops")[1]
    with (
        redis_cluster(tmp_path) as url,
        replicas(ops, url) as (a, b),
        httpx.Client(timeout=TIMEOUT_S) as client,
    ):
        assert login(client, a, token).status_code == 200
        assert client.get(f"{b}{ADMIN_PREFIX}/whoami").json()["actor"] == "ops"
        csrf = client.get(f"{b}{CONSOLE_PREFIX}/api/session").json()["csrf_token"]
        kept = dict(client.cookies)
        assert client.post(f"{a}{CONSOLE_PREFIX}/api/logout",
                           headers={"X-CSRF-Token": csrf}).status_code == 200  # fmt: skip
        gone = httpx.get(f"{b}{ADMIN_PREFIX}/whoami", cookies=kept, timeout=TIMEOUT_S)
        assert gone.status_code == 401 and "no console session" in gone.text


def test_serve_with_a_redis_url_shares_the_console_between_its_replicas(
    ops: Store, redis_srv: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``serve --redis-url`` mounts (``control_plane``), twice over one Redis."""
    from modelyard.cli._serve import control_plane

    monkeypatch.setenv("MODELYARD_HOME", str(tmp_path / "home"))
    token = create_actor_token(ops, "ops")[1]
    with ExitStack() as stack:
        a, b = (
            stack.enter_context(BackgroundServer(create_app(
                ops, EchoEngine(), mounts=control_plane(ops, secure=False, redis_url=url)
            ))).base_url
            for url in (redis_srv.url, redis_srv.url)
        )  # fmt: skip
        with httpx.Client(timeout=TIMEOUT_S) as client:
            assert login(client, a, token).status_code == 200
            assert client.get(f"{b}{ADMIN_PREFIX}/whoami").json()["actor"] == "ops"
