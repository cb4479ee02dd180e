"""A review of the console's sessions in Redis (``serve --redis-url``): what an outage
of a Redis Cluster answers, every console route while Redis is down, how many requests
wait for a Redis that is down, a logout whose bookkeeping fails half-way, a renewal
racing a logout, the renewal lock under failures, logins of one actor at once, the
keys failed logins and sessions leave, a --redis-url that cannot be parsed, and the
memory table's clock.

Real servers (``create_app`` with the admin API and the console mounted as
``control_plane`` mounts them) over one SQLite store and a real ``redis-server`` or
Redis Cluster (``redisserver``)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest

from consolereplicas import TIMEOUT_S, console_store, login, replica
from modelyard.access import (
    PeopleAuthenticator,
    create_actor_token,
)
from modelyard.admin import ADMIN_PREFIX
from modelyard.console import (
    CONSOLE_PREFIX,
    ConsoleSessions,
    LoginLimiter,
    shared_tables,
)
from modelyard.console._shared import PREFIX, RedisTable, SharedConsole
from modelyard.console._tables import SessionRules, session_key
from modelyard.errors import AuthError, ConfigError, RateLimited, SessionsUnavailable
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


def _unavailable(answer: httpx.Response) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "sessions_unavailable"
    assert int(answer.headers["retry-after"]) >= 1


@contextmanager
def _stopped(server: RedisServer) -> Iterator[None]:
    """Redis stops answering (its process paused: a 1 s timeout), then answers again."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


def test_a_redis_cluster_that_stops_answering_is_a_503_and_logins_are_still_limited(
    ops: Store, tmp_path: Path
) -> None:
    """A Redis Cluster client raises RedisClusterException (not a RedisError) when no
    node answers: it must be the outage's 503, and the limiter's fallback, not a 500."""
    token = create_actor_token(ops, "ops")[1]
    with ExitStack() as stack:
        cluster = ExitStack()
        stack.callback(cluster.close)
        url = cluster.enter_context(redis_cluster(tmp_path))
        a = stack.enter_context(replica(ops, url, max_failures=2)).base_url
        client = stack.enter_context(httpx.Client(timeout=TIMEOUT_S))
        assert login(client, a, token).status_code == 200
        assert client.get(f"{a}{ADMIN_PREFIX}/whoami").json()["actor"] == "ops"
        cluster.close()  # every node of the cluster stops
        _unavailable(client.get(f"{a}{ADMIN_PREFIX}/whoami"))
        _unavailable(client.get(f"{a}{CONSOLE_PREFIX}/api/session"))
        with httpx.Client(timeout=TIMEOUT_S) as guesser:  # counted by the replica alone
            for _ in range(2):
                assert login(guesser, a, "nonsense").status_code == 401
            limited = login(guesser, a, "nonsense")
            assert limited.status_code == 429, limited.text


def test_logins_in_one_millisecond_give_way_in_the_order_they_came(
    ops: Store, redis_srv: RedisServer
) -> None:
    """Logins at the same instant (a fast client, a clock that did not move): the ones
    that give way are the earliest, not whichever session id sorts first."""
    people = PeopleAuthenticator(ops)
    token = create_actor_token(ops, "ops")[1]
    table, shared = shared_tables(redis_srv.url)
    assert shared is not None
    frozen = time.time()
    sessions = ConsoleSessions(people, table=table, max_sessions=50, max_per_actor=2,
                               clock=lambda: frozen)  # fmt: skip
    started = [sessions.start(token)[0] for _ in range(12)]
    for gone in started[:-2]:
        with pytest.raises(AuthError):
            sessions.find(gone)
    assert [sessions.find(i)[1].actor for i in started[-2:]] == ["ops", "ops"]
    shared.close()


def test_on_a_redis_cluster_an_actors_oldest_give_way_then_the_oldest_of_all(
    ops: Store, tmp_path: Path
) -> None:
    """The login script's eviction paths and the count touch session keys it does not
    declare (one hash tag): they work on a real cluster."""
    people = PeopleAuthenticator(ops)
    ops_token, viv_token = create_actor_token(ops, "ops")[1], create_actor_token(ops, "viv")[1]
    with redis_cluster(tmp_path) as url:
        table, shared = shared_tables(url)
        assert shared is not None
        sessions = ConsoleSessions(people, table=table, max_sessions=3, max_per_actor=2)
        mine = [sessions.start(ops_token)[0] for _ in range(3)]
        assert len(sessions) == 2
        with pytest.raises(AuthError):
            sessions.find(mine[0])  # the actor's oldest gave way
        theirs = [sessions.start(viv_token)[0] for _ in range(2)]
        assert len(sessions) == 3
        with pytest.raises(AuthError):
            sessions.find(mine[1])  # the oldest of all gave way when the table was full
        assert sessions.find(mine[2])[1].actor == "ops"
        assert [sessions.find(i)[1].actor for i in theirs] == ["viv", "viv"]
        assert sessions.end(theirs[0]) is not None
        assert len(sessions) == 2
        # the rest of what the console keeps there: the flow key, the renewal lock, and
        # the failed logins
        other = SharedConsole(url)
        assert RedisTable(shared, SessionRules()).flow_key() == (
            RedisTable(other, SessionRules()).flow_key()
        )
        with RedisTable(shared, SessionRules()).renewing(mine[2]):
            pass
        with RedisTable(other, SessionRules()).renewing(mine[2]):  # let go: taken at once
            pass
        limiter = LoginLimiter(max_failures=2, shared=shared)
        LoginLimiter(max_failures=2, shared=other).failed("192.0.2.1")
        limiter.failed("192.0.2.1")
        with pytest.raises(RateLimited):
            limiter.check("192.0.2.1")
        assert limiter._failures == {}  # counted in the cluster, not here
        shared.close()
        other.close()


def test_while_redis_is_down_every_console_route_is_a_503_and_nobody_is_logged_out(
    ops: Store, redis_srv: RedisServer
) -> None:
    token = create_actor_token(ops, "ops")[1]
    with ExitStack() as stack:
        idp = stack.enter_context(running_idp("localhost"))
        a = stack.enter_context(replica(ops, redis_srv.url, idp=idp)).base_url
        client = stack.enter_context(httpx.Client(timeout=TIMEOUT_S))
        assert login(client, a, token).status_code == 200
        csrf = client.get(f"{a}{CONSOLE_PREFIX}/api/session").json()["csrf_token"]
        other = stack.enter_context(httpx.Client(timeout=TIMEOUT_S))  # another browser
        login_csrf = other.get(f"{a}{CONSOLE_PREFIX}/api/login").json()["csrf_token"]
        begun = client.get(f"{a}{CONSOLE_PREFIX}/oidc/login")  # a sign-in under way
        assert begun.status_code == 303
        back = httpx.get(begun.headers["location"], timeout=TIMEOUT_S).headers["location"]
        with _stopped(redis_srv):
            page = client.get(f"{a}{CONSOLE_PREFIX}/")  # a page for a person: no redirect
            assert page.status_code == 503 and int(page.headers["retry-after"]) >= 1
            assert "text/html" in page.headers["content-type"]
            assert "Your session is kept" in page.text
            _unavailable(client.get(f"{a}{CONSOLE_PREFIX}/api/session"))
            _unavailable(client.get(f"{a}{ADMIN_PREFIX}/whoami"))
            out = client.post(f"{a}{CONSOLE_PREFIX}/api/logout", headers={"X-CSRF-Token": csrf})
            _unavailable(out)
            assert "set-cookie" not in out.headers  # the browser keeps its session
            # a navigation of single sign-on: back to the login page, which says why
            for started in (client.get(back), client.get(f"{a}{CONSOLE_PREFIX}/oidc/login")):
                assert started.status_code == 303, started.text
                where = started.headers["location"]
                assert where == f"{CONSOLE_PREFIX}/login?error=sso_sessions_unavailable"
            # a login: a bad token is still a 401 (and counted), a good one a 503
            refused = other.post(f"{a}{CONSOLE_PREFIX}/api/login", json={"token": "nonsense"},
                                 headers={"X-CSRF-Token": login_csrf})  # fmt: skip
            assert refused.status_code == 401, refused.text
            good = other.post(f"{a}{CONSOLE_PREFIX}/api/login", json={"token": token},
                              headers={"X-CSRF-Token": login_csrf})  # fmt: skip
            _unavailable(good)
        time.sleep(1.1)  # Redis is asked again at most once a second
        back = client.get(f"{a}{ADMIN_PREFIX}/whoami")
        assert back.status_code == 200 and back.json()["actor"] == "ops"


def _flaky(shared: SharedConsole, fail_at: int) -> Callable[[Callable[[Any], Any]], Any]:
    """``shared.call``, except that its ``fail_at``-th call finds Redis down."""
    real, calls = shared.call, [0]

    def call(action: Callable[[Any], Any]) -> Any:
        calls[0] += 1
        if calls[0] == fail_at:
            raise SharedConsole._unavailable()
        return real(action)

    return call


def test_a_logout_ends_the_session_even_if_redis_fails_right_after(
    ops: Store, redis_srv: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A logout takes the session (GETDEL), then removes it from the login bookkeeping;
    if Redis fails between the two, the session is ended: the logout must say so (and be
    audited), not answer 503 as if the person were still logged in."""
    token = create_actor_token(ops, "ops")[1]
    people = PeopleAuthenticator(ops)
    shared = SharedConsole(redis_srv.url)
    sessions = ConsoleSessions(people, table=lambda rules: RedisTable(shared, rules))
    session_id, session, _ = sessions.start(token)
    monkeypatch.setattr(shared, "call", _flaky(shared, fail_at=2))
    ended = sessions.end(session_id)
    assert ended is not None and ended.key == session.key
    monkeypatch.undo()
    with pytest.raises(AuthError):
        sessions.find(session_id)
    assert len(sessions) == 0  # the bookkeeping left behind is swept
    shared.close()


def test_a_renewal_racing_a_logout_does_not_bring_the_session_back(
    ops: Store, redis_srv: RedisServer
) -> None:
    token = create_actor_token(ops, "ops")[1]
    people = PeopleAuthenticator(ops)
    table, _ = shared_tables(redis_srv.url)
    sessions = ConsoleSessions(people, table=table)
    session_id, _, _ = sessions.start(token)
    found = sessions.table.get(session_id, time.time())  # a request about to renew
    assert found is not None
    assert sessions.end(session_id) is not None  # the logout, meanwhile
    found.token = "renewed"
    sessions.table.save(session_id, found)  # the renewal saves what it got
    assert sessions.table.get(session_id, time.time()) is None
    with pytest.raises(AuthError):
        sessions.find(session_id)
    assert redis_srv.client().exists(PREFIX + "session:" + session_key(session_id)) == 0


def test_the_renewal_lock_is_let_go_when_the_renewal_fails_or_redis_is_down(
    redis_srv: RedisServer,
) -> None:
    shared = SharedConsole(redis_srv.url)
    table = RedisTable(shared, SessionRules())
    lock = PREFIX + "renew:" + session_key("some-session")
    probe = redis_srv.client()
    with pytest.raises(AuthError), table.renewing("some-session"):
        assert probe.exists(lock) == 1
        raise AuthError("the identity provider refused the refresh token")
    assert probe.exists(lock) == 0 and table._renewals._locks == {}
    renewing = table.renewing("some-session")  # taken again at once
    renewing.__enter__()
    with _stopped(redis_srv):  # Redis stops answering while it renews, which fails
        refused = AuthError("refused while Redis is down")
        assert renewing.__exit__(AuthError, refused, None) is False  # that error, no other
    assert table._renewals._locks == {}  # this process's lock is let go ...
    assert probe.pttl(lock) <= 30_000  # ... and Redis's ends by itself, if still there
    time.sleep(1.1)  # Redis is asked again at most once a second
    probe.delete(lock)  # (as after its 30 s)
    with table.renewing("some-session"):
        assert probe.exists(lock) == 1
    shared.close()


def test_failed_logins_leave_keys_that_expire_with_their_window(
    redis_srv: RedisServer,
) -> None:
    """Many addresses failing cannot fill Redis for longer than the window."""
    shared = SharedConsole(redis_srv.url)
    limiter = LoginLimiter(max_failures=2, window_s=60, shared=shared)
    for i in range(50):
        limiter.failed(f"198.51.100.{i}")
    probe = redis_srv.client()
    keys = list(probe.scan_iter(match=PREFIX + "failures:*"))
    assert len(keys) == 50
    assert all(0 < probe.pttl(k) <= 60_000 for k in keys)
    limiter.failed("198.51.100.7")
    with pytest.raises(RateLimited, match="too many failed console logins") as refused:
        limiter.check("198.51.100.7")
    assert 55 <= refused.value.context["retry_after"] <= 60
    assert limiter._failures == {}  # nothing counted in this process's memory
    shared.close()


def test_sessions_in_memory_are_timed_by_the_monotonic_clock(
    ops: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without Redis the sessions of one process are timed as before the shared table:
    by the monotonic clock, so a step of the wall clock (NTP, an operator) neither
    ends them nor keeps them past their 8 hours."""
    token = create_actor_token(ops, "ops")[1]
    monotonic = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: monotonic[0])
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.0)  # the wall clock stands still
    sessions = ConsoleSessions(PeopleAuthenticator(ops), ttl_s=60, idle_s=3600)
    session_id, _, _ = sessions.start(token)
    monotonic[0] += 59
    assert sessions.find(session_id)[1].actor == "ops"
    monotonic[0] += 2
    with pytest.raises(AuthError):
        sessions.find(session_id)


def test_sessions_in_redis_are_timed_by_the_wall_clock(ops: Store, redis_srv: RedisServer) -> None:
    """Shared by replicas, their times are the wall clock's (the same on every host)."""
    table, _ = shared_tables(redis_srv.url)
    sessions = ConsoleSessions(PeopleAuthenticator(ops), table=table)
    _, session, _ = sessions.start(create_actor_token(ops, "ops")[1])
    assert abs(session.started - time.time()) < 5


def test_a_redis_url_redis_cannot_parse_is_refused_at_start_not_a_500_at_each_login(
    ops: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``serve`` checks only the URL's scheme; a port that is not a number made every
    login (the limiter) and every request through a session a 500."""
    from modelyard.cli._serve import control_plane

    monkeypatch.setenv("MODELYARD_HOME", str(tmp_path / "home"))
    url = "redis://:s3cret@127.0.0.1:63790x/0"
    with pytest.raises(ConfigError, match=r"redis://127.0.0.1:63790x/0.*[Pp]ort") as refused:
        control_plane(ops, secure=False, redis_url=url)
    assert refused.value.context["field"] == "redis_url"
    assert "s3cret" not in refused.value.one_line()


def test_logins_of_one_actor_at_once_on_two_replicas_keep_it_under_its_cap(
    ops: Store, redis_srv: RedisServer
) -> None:
    people = PeopleAuthenticator(ops)
    replicas = []
    for _ in range(2):
        table, _ = shared_tables(redis_srv.url)
        replicas.append(ConsoleSessions(people, table=table, max_per_actor=3))
    tokens = [create_actor_token(ops, "ops")[1] for _ in range(12)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        ids = list(pool.map(lambda i: replicas[i % 2].start(tokens[i])[0], range(12)))
    alive = []
    for session_id in ids:
        with suppress(AuthError):
            alive.append(replicas[0].find(session_id)[1].actor)
    assert alive == ["ops"] * 3 and len(replicas[1]) == 3


def test_the_login_bookkeeping_of_an_actor_who_never_comes_back_expires(
    ops: Store, redis_srv: RedisServer
) -> None:
    """Nothing of a session outlives it in Redis for long: its record goes after the idle
    time, the login counts' sets after ttl_s from the last login."""
    table, _ = shared_tables(redis_srv.url)
    sessions = ConsoleSessions(PeopleAuthenticator(ops), table=table, ttl_s=600, idle_s=60)
    session_id, _, _ = sessions.start(create_actor_token(ops, "viv")[1])
    sessions.find(session_id)
    probe = redis_srv.client()
    record = PREFIX + "session:" + session_key(session_id)
    assert 0 < probe.pttl(record) <= 60_000
    for name in ("all", "actor:" + session_key("viv")):
        assert 0 < probe.pttl(PREFIX + name) <= 600_000, name


def test_while_redis_is_down_one_request_at_a_time_waits_for_it_the_others_are_answered_at_once(
    ops: Store, redis_srv: RedisServer
) -> None:
    """Once Redis is known to be down, it is asked again by one request (after a second),
    not by every request arriving then: each would hold a server thread for the client's
    timeout (1 s; several seconds for a Redis Cluster client, which retries)."""
    table, _ = shared_tables(redis_srv.url)
    sessions = ConsoleSessions(PeopleAuthenticator(ops), table=table)
    session_id, _, _ = sessions.start(create_actor_token(ops, "ops")[1])

    def timed(_: int) -> float:
        began = time.monotonic()
        with pytest.raises(SessionsUnavailable):
            sessions.find(session_id)
        return time.monotonic() - began

    with _stopped(redis_srv):
        assert timed(0) >= 0.9  # the outage is found: the client's 1 s timeout
        time.sleep(1.1)  # Redis may be asked again
        with ThreadPoolExecutor(max_workers=8) as pool:
            waits = sorted(pool.map(timed, range(8)))
    assert waits[-1] >= 0.9  # one request asked Redis ...
    assert waits[-2] < 0.5, waits  # ... the others were answered without waiting for it
    time.sleep(1.1)
    assert sessions.find(session_id)[1].actor == "ops"
