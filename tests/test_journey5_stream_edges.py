"""Journey 5's stream consumer at its edges: what its log says when the broker is wrong.

A consumer runs under a supervisor (systemd, a Deployment) whose logs many people
read, with the broker's URL, password included, in MODELYARD_REDIS_URL. Before:

- a Redis or NATS it could not reach was named with its password
  (``cannot reach Redis at redis://:hunter2@...``);
- a ``--redis-url`` that is not a Redis URL (``http://...``) was a traceback (exit 1).

Now the URL is named without its password, and a URL of the wrong kind exits 2 with
one line naming ``--redis-url``.

A consumer whose endpoint's version answers from an upstream (a provider's API) whose
key is not in its environment exits 2 before reading a message; before, it read every
message, failed each on the server's side and dead-lettered them all.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from batchworld import World, build_world, enter
from modelyard.cli import main
from redisserver import redis_server

CONSUMER = ["stream", "run", "--stream", "claims", "--output-stream", "claims:routed",
            "--endpoint", "claims-router", "--engine", "echo", "--until-empty"]  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("journey5-stream"))


@pytest.fixture
def here(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("MODELYARD_REDIS_URL", raising=False)
    monkeypatch.delenv("MODELYARD_NATS_URL", raising=False)
    return enter(world, tmp_path, monkeypatch)


def _consume(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main([*CONSUMER, *args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "url", "named"),
    [
        (
            "--redis-url",
            "redis://:hunter2@127.0.0.1:1/0",
            "cannot reach Redis at redis://127.0.0.1:1/0",
        ),
        ("--nats-url", "nats://bob:hunter2@127.0.0.1:1", "cannot reach NATS at nats://127.0.0.1:1"),
    ],
)
def test_a_broker_it_cannot_reach_is_named_without_its_password(
    here: Path, capsys: pytest.CaptureFixture[str], flag: str, url: str, named: str
) -> None:
    code, err = _consume(capsys, flag, url)
    assert code == 1, err
    assert err.startswith(f"error: {named}"), err
    assert "hunter2" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_redis_url_of_another_kind_exits_2_with_one_line(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _consume(capsys, "--redis-url", "http://redis.internal:6379")
    assert code == 2, err
    assert err.startswith("error: --redis-url 'http://redis.internal:6379' is not a Redis URL")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_an_upstream_version_without_its_key_here_stops_the_consumer_before_it_reads(
    world: World,
    here: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("J5_STREAM_PROVIDER_KEY", raising=False)
    with world.store() as store:
        store.create_registered_model("acme-provider", tenant="acme-insurance")
    assert (
        main(
            [
                "registry",
                "upstream",
                "acme-provider",
                "--base-url",
                "http://127.0.0.1:9/v1",
                "--upstream-model",
                "gpt-x",
                "--api-key-env",
                "J5_STREAM_PROVIDER_KEY",
            ]
        )
        == 0
    )
    assert main(["endpoints", "create", "claims-provider", "--tenant", "acme-insurance",
                 "--model", "acme-provider:1"]) == 0  # fmt: skip
    with redis_server(tmp_path) as server:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        client.xadd("claims", {"body": '{"prompt": "a hailstorm dented my car"}'})
        capsys.readouterr()
        code = main(["stream", "run", "--stream", "claims", "--output-stream", "claims:routed",
                     "--endpoint", "claims-provider", "--until-empty", "--engine", "echo",
                     "--redis-url", server.url])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2, err
        assert "acme-provider:1 answers from the upstream at 127.0.0.1:9, and its key" in err
        assert "J5_STREAM_PROVIDER_KEY" in err and "Traceback" not in err
        assert client.xlen("claims:dead-letters") == 0 and client.xlen("claims:routed") == 0
        assert client.xpending("claims", "modelyard")["pending"] == 0  # not even read


def test_a_stream_name_that_is_another_kind_of_key_exits_2_naming_it(
    here: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --stream naming a list (a queue of the old kind, say) was Redis's WRONGTYPE
    error as a failure, exit 1; it is the user's mistake, named."""
    with redis_server(tmp_path) as server:
        redis.Redis.from_url(server.url).rpush("claims", "a hailstorm dented my car")
        code, err = _consume(capsys, "--redis-url", server.url)
    assert code == 2, err
    assert "the Redis key 'claims' is not a stream" in err and "--stream" in err
    assert "Traceback" not in err
