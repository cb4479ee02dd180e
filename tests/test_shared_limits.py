"""Limits shared by replicas: two servers on one store and one real Redis admit a key's
requests/min once in total, not once each; tokens a request did not use come back to the
shared bucket; while Redis is down the limits fail open (each replica on its own) or
closed (503 with Retry-After), as the operator chose, and are shared again once it is back."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from clihelp import modelyard
from modelyard.access import create_api_key
from modelyard.errors import ConfigError, LimitsUnavailable, RateLimited
from modelyard.serving import (
    BackgroundServer,
    EchoEngine,
    PacedEchoEngine,
    ServerLimits,
    create_app,
)
from modelyard.serving._shared_limits import SharedRateLimiter
from modelyard.store import Store
from redisserver import RedisServer, redis_cluster, redis_server
from worlds import two_tenant_world


@pytest.fixture
def redis_srv(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path) as server:
        yield server


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(f"sqlite:///{tmp_path}/s.db") as s:
        two_tenant_world(s, versions=1, template="text")
        yield s


def _statuses(urls: list[str], key: str, count: int) -> list[int]:
    """``count`` completions, sent to the replicas in turn."""
    out = []
    for i in range(count):
        r = httpx.post(
            urls[i % len(urls)] + "/v1/completions",
            json={"model": "acme-support", "prompt": "a b", "max_tokens": 4},
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        out.append(r.status_code)
    return out


def _replicas(store: Store, limits: ServerLimits) -> list[BackgroundServer]:
    return [
        BackgroundServer(
            create_app(store, EchoEngine(), limits=limits, refresh_seconds=60, heartbeat_s=None)
        )
        for _ in range(2)
    ]


@pytest.mark.parametrize("shared", [False, True])
def test_two_replicas_admit_a_keys_requests_per_minute_once_in_total(
    store: Store, redis_srv: RedisServer, shared: bool
) -> None:
    _, key = create_api_key(store, "acme", rpm_limit=6)
    limits = ServerLimits(redis_url=redis_srv.url if shared else None)
    servers = _replicas(store, limits)
    with servers[0] as one, servers[1] as two:
        statuses = _statuses([one.base_url, two.base_url], key, 16)
    accepted = statuses.count(200)
    if shared:
        # 6 a minute in total (a seventh may refill while the test runs: 0.1 a second)
        assert 6 <= accepted <= 7, statuses
        assert statuses[:6] == [200] * 6 and set(statuses[6:]) <= {200, 429}
    else:  # each replica its own 6: twice the key's limit
        assert accepted >= 12, statuses


def test_a_refusal_says_when_to_retry_and_the_other_replica_agrees(
    store: Store, redis_srv: RedisServer
) -> None:
    _, key = create_api_key(store, "acme", rpm_limit=2)
    servers = _replicas(store, ServerLimits(redis_url=redis_srv.url))
    with servers[0] as one, servers[1] as two:
        assert _statuses([one.base_url], key, 2) == [200, 200]
        refused = httpx.post(
            two.base_url + "/v1/completions",
            json={"model": "acme-support", "prompt": "a b", "max_tokens": 4},
            headers={"Authorization": f"Bearer {key}"},
        )
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 30  # 2 a minute: one every 30 s
    error = refused.json()["error"]
    assert (
        error["type"] == "requests"
        and "over its limit of 2 requests per minute" in (error["message"])
    )


def test_tokens_a_request_did_not_use_come_back_to_the_shared_bucket(
    store: Store, redis_srv: RedisServer
) -> None:
    key, _ = create_api_key(store, "acme", tpm_limit=100)
    one = SharedRateLimiter(redis_srv.url)
    two = SharedRateLimiter(redis_srv.url)  # another replica
    try:
        first = one.admit(key, 80)
        with pytest.raises(RateLimited) as refused:
            two.admit(key, 80)  # 20 left of the minute, shared
        assert refused.value.limit == "tokens" and refused.value.retry_after >= 30
        one.settle(first, 10)  # it used 10 of its 80: 70 come back
        second = two.admit(key, 80)
        assert second.shared and second.reserved_tokens == 80
        # a request that used more than it reserved leaves the bucket in debt
        two.settle(second, 90)
        with pytest.raises(RateLimited):
            one.admit(key, 5)
    finally:
        one.close()
        two.close()


def test_a_redis_cluster_shares_the_limits_as_one_server_does(store: Store, tmp_path: Path) -> None:
    """Before: a plain client was told MOVED for most keys, and a key's two buckets were on
    two nodes (a script that touches both is refused by Cluster): every such error read as
    Redis being down, so the limits silently stopped being shared."""
    from redis.cluster import key_slot

    keys = [create_api_key(store, "acme", rpm_limit=3)[0] for _ in range(12)]
    with redis_cluster(tmp_path) as url:
        one, two = SharedRateLimiter(url, on_down="closed"), SharedRateLimiter(url)
        try:
            for key in keys:  # twelve keys: their buckets fall on all three nodes
                admitted = 0
                for replica in (one, two, one, two, one):
                    try:
                        replica.settle(replica.admit(key, 1), 1)
                        admitted += 1
                    except RateLimited:
                        pass
                assert admitted == 3, key.id
            assert one.clustered and two.clustered and one.shared_up and two.shared_up
        finally:
            one.close()
            two.close()
    slots = {key_slot(f"modelyard:limits:{{{k.id}}}:{kind}".encode())
             for k in keys[:1] for kind in ("requests", "tokens")}  # fmt: skip
    assert len(slots) == 1  # one key's buckets: one slot, one node


def test_a_redis_cluster_that_stops_answering_fails_open_or_closed_not_500(
    store: Store, tmp_path: Path
) -> None:
    """A cluster client raises RedisClusterException (not a RedisError) when no node
    answers: it went past the outage rules to the request, a 500."""
    from contextlib import ExitStack

    key, _ = create_api_key(store, "acme", rpm_limit=1000)
    with ExitStack() as cluster:
        url = cluster.enter_context(redis_cluster(tmp_path))
        opened = SharedRateLimiter(url, on_down="open")
        closed = SharedRateLimiter(url, on_down="closed")
        try:
            opened.admit_request(key)
            closed.admit_request(key)
            cluster.close()  # every node stops
            opened.admit_request(key)  # this replica's own buckets meanwhile
            assert not opened.shared_up
            with pytest.raises(LimitsUnavailable):
                closed.admit_request(key)
        finally:
            opened.close()
            closed.close()


def test_while_redis_is_down_limits_fail_open_or_closed_as_told(
    store: Store, redis_srv: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    key, _ = create_api_key(store, "acme", rpm_limit=1000)
    opened = SharedRateLimiter(redis_srv.url, on_down="open")
    closed = SharedRateLimiter(redis_srv.url, on_down="closed")
    try:
        opened.admit_request(key)
        closed.admit_request(key)
        assert opened.shared_up and closed.shared_up
        redis_srv.stop()
        with caplog.at_level(logging.WARNING, logger="modelyard.serving._shared_limits"):
            opened.admit_request(key)  # this replica's own buckets meanwhile
            opened.admit_request(key)
        assert not opened.shared_up
        said = [r.getMessage() for r in caplog.records]
        assert len(said) == 1 and "limits are this replica's own until it answers" in said[0]
        assert "redis://127.0.0.1" in said[0]

        with pytest.raises(LimitsUnavailable) as down:
            closed.admit_request(key)
        assert down.value.context["retry_after"] == 1
        redis_srv.start()  # back, on the same port: asked again after at most a second

        deadline = time.monotonic() + 10
        while not opened.shared_up and time.monotonic() < deadline:
            opened.admit_request(key)
            time.sleep(0.1)
        assert opened.shared_up
    finally:
        opened.close()
        closed.close()


def test_a_server_failing_closed_answers_503_with_retry_after(
    store: Store, redis_srv: RedisServer
) -> None:
    _, limited = create_api_key(store, "acme", rpm_limit=100)
    _, unlimited = create_api_key(store, "acme")
    limits = ServerLimits(redis_url=redis_srv.url, on_redis_down="closed")
    app = create_app(store, EchoEngine(), limits=limits, refresh_seconds=60, heartbeat_s=None)
    with BackgroundServer(app) as server:
        assert _statuses([server.base_url], limited, 1) == [200]
        redis_srv.stop()
        r = httpx.post(
            server.base_url + "/v1/completions",
            json={"model": "acme-support", "prompt": "a b", "max_tokens": 4},
            headers={"Authorization": f"Bearer {limited}"},
        )
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "limits_unavailable"
        assert "Redis" in r.json()["error"]["message"]
        # a key without limits never needs Redis
        assert _statuses([server.base_url], unlimited, 1) == [200]
        metrics = httpx.get(server.base_url + "/metrics").text
    assert "modelyard_limits_shared_up 0.0" in metrics


def test_serve_refuses_a_redis_setting_it_cannot_use(tmp_path: Path) -> None:
    r = modelyard("serve", "--engine", "echo", "--on-redis-down", "maybe", home=tmp_path)
    assert r.code == 2 and "on_redis_down is 'maybe'" in r.err and "Traceback" not in r.err
    with pytest.raises(ConfigError, match="is not a Redis URL"):
        ServerLimits(redis_url="http://x:6379")
    # a port that is not a number: at start, not a 500 at each request of a limited key
    with pytest.raises(ConfigError, match=r"redis_url 'redis://h:63790x/0' cannot be used"):
        ServerLimits(redis_url="redis://:secret@h:63790x/0")
    r = modelyard("serve", "--engine", "echo", "--redis-url", "redis://h:6x/0", home=tmp_path)
    assert r.code == 2 and "cannot be used" in r.err and "Traceback" not in r.err


def test_a_request_admitted_before_redis_goes_down_is_answered_recorded_and_charged(
    store: Store, redis_srv: RedisServer
) -> None:
    """Failing closed refuses new requests, never one already admitted: giving back its
    unused tokens at its end must not turn its answer into a 503, leave its record
    ``running`` and its cost uncharged (it did all three)."""
    store.set_token_price("tiny", input_per_1k=100.0, output_per_1k=100.0)
    store.set_budget("acme", "day", 1000.0)
    _, limited = create_api_key(store, "acme", rpm_limit=100, tpm_limit=100_000)
    limits = ServerLimits(redis_url=redis_srv.url, on_redis_down="closed")
    app = create_app(store, PacedEchoEngine(0.3), limits=limits, refresh_seconds=60,
                     heartbeat_s=None)  # fmt: skip
    answers: list[httpx.Response] = []
    with BackgroundServer(app) as server:

        def complete() -> None:
            answers.append(
                httpx.post(
                    server.base_url + "/v1/completions",
                    json={"model": "acme-support", "prompt": "a b c d e f", "max_tokens": 6},
                    headers={"Authorization": f"Bearer {limited}"},
                    timeout=30,
                )
            )

        running = threading.Thread(target=complete)
        running.start()
        deadline = time.monotonic() + 10
        while store.count_inference_records() == 0:  # admitted: journaled as running
            assert time.monotonic() < deadline, "the request was never admitted"
            time.sleep(0.02)
        redis_srv.stop()
        running.join(30)
        assert answers[0].status_code == 200, answers[0].text
        assert answers[0].json()["choices"][0]["text"] == "a b c d e f"
        deadline = time.monotonic() + 10
        while (records := store.list_inference_records())[0].status == "running":
            assert time.monotonic() < deadline, "the record stayed running"
            time.sleep(0.05)
        assert [(r.status, r.prompt_tokens, r.completion_tokens) for r in records] == [("ok", 6, 6)]
        spend = [
            line
            for line in httpx.get(server.base_url + "/metrics").text.splitlines()
            if line.startswith("modelyard_spend_total{") and 'tenant="acme"' in line
        ]
        assert spend and spend[0].endswith(" 1.2")


def test_tokens_given_back_reach_a_shared_bucket_in_debt(
    store: Store, redis_srv: RedisServer
) -> None:
    """A request that used more tokens than it reserved (a prompt counted short) leaves the
    bucket in debt; another request's unused tokens must still come back, as they do in one
    server's own buckets (in Redis they were dropped while the bucket was below 0, so the key
    waited 24 s where 3 s was right)."""
    key, _ = create_api_key(store, "acme", tpm_limit=100)
    shared = SharedRateLimiter(redis_srv.url)
    try:
        first, second = shared.admit(key, 40), shared.admit(key, 40)
        shared.settle(second, 100)  # 60 more than it reserved: the bucket is at -40
        shared.settle(first, 0)  # its 40 come back: the bucket is at 0
        with pytest.raises(RateLimited) as refused:
            shared.admit(key, 5)
        assert refused.value.limit == "tokens"
        assert refused.value.retry_after <= 4  # 5 tokens at 100 a minute: 3 s
    finally:
        shared.close()


def test_a_stream_consumer_names_a_cluster_with_no_node_answering() -> None:
    """``stream run``'s Redis errors are one ModelyardError naming the server; a cluster
    client's RedisClusterException (no node answers) went past it as a traceback."""
    from redis.exceptions import RedisClusterException

    from modelyard.errors import ModelyardError
    from modelyard.stream._redis import _redis_errors

    with (
        pytest.raises(ModelyardError, match="cannot reach Redis at redis://n1:7000"),
        _redis_errors("redis://n1:7000"),
    ):
        raise RedisClusterException("Redis Cluster cannot be connected")
