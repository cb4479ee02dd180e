"""``modelyard stream run`` against a real ``redis-server``: answers keyed by message id,
dead letters with their reasons, a consumer killed with ``kill -9`` and another taking
over, SIGTERM draining, one record per message.

One home for the module, named as the quickstart's: tenant ``acme-insurance``'s endpoint
``claims-router`` serves ``acme-claims:1``, a version the echo engine answers (template
``text``: the answer is the prompt's last words). Each test has a Redis of its own.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from modelyard.cli import main
from modelyard.serving import SamplingParams
from modelyard.stream import (
    RedisStreamSource,
    Settlement,
    StreamJobSpec,
    StreamSettings,
    run_stream,
)
from redisserver import RedisServer, free_port, redis_cluster, redis_server
from streamworld import (
    FailingOnBoom,
    StreamWorld,
    metrics_when,
    outcomes,
    promtool_accepts,
    stream_world,
)

JOB = "requests/answerers"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> StreamWorld:
    return stream_world(tmp_path_factory.mktemp("stream") / "home", JOB)


@pytest.fixture
def server(world: StreamWorld, tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own; the world's records of earlier tests removed."""
    world.forget_records()
    with redis_server(tmp_path) as started:
        yield started


def add(client: redis.Redis, body: Any) -> str:
    """XADD one request; ``body`` JSON-encoded unless it is text already."""
    text = body if isinstance(body, str) else json.dumps(body)
    return _id(client.xadd("requests", {"body": text}))


def _id(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def entries(client: redis.Redis, stream: str) -> list[dict[str, str]]:
    found: Any = client.xrange(stream)
    return [{_id(k): _id(v) for k, v in fields.items()} for _, fields in found]


def command(server: RedisServer, *extra: str) -> list[str]:
    return ["stream", "run", "--stream", "requests", "--group", "answerers", "--output-stream",
            "answers", "--dead-letter-stream", "dead", "--redis-url", server.url,
            "-e", "claims-router", "--engine", "echo", *extra]  # fmt: skip


def consume(world: StreamWorld, server: RedisServer, capsys: pytest.CaptureFixture[str],
            *extra: str) -> dict[str, Any]:  # fmt: skip
    """``stream run ... --until-empty --json`` in this process: its summary."""
    return world.consume(capsys, command(server, "--claim-idle", "2s", *extra))


def test_answers_are_keyed_by_message_id_and_bad_messages_are_dead_lettered(
    world: StreamWorld, server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    client = server.client()
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a chat"}]
    asked = {
        add(client, {"prompt": "route the roof claim", "id": "q-1"}): "route the roof claim",
        add(client, {"messages": chat}): "a chat",
        add(client, {"prompt": "one two three four", "max_tokens": 2, "id": 7}): "one two",
    }
    bad = {
        add(client, "not json"): "the body is not JSON",
        _id(client.xadd("requests", {"text": "hi"})): "the message has no 'body' field",
        add(client, {"prompt": "hi", "max_token": 3}): "unknown key 'max_token' (did you mean "
        "'max_tokens'?)",
        add(client, {"id": "q-9"}): "needs either 'prompt' or 'messages'",
        add(client, {"prompt": "hi", "temperature": 7}): "temperature is 7",
        add(client, {"prompt": "hi", "max_tokens": 5000}): "max_tokens is 5000, above",
    }
    too_long = add(client, {"prompt": "x" * 270_000})  # refused by the data plane: a 400

    summary = consume(world, server, capsys)
    assert (summary["answered"], summary["refused"], summary["dead_lettered"]) == (3, 1, 6)
    assert summary["job_id"] == JOB and summary["stopped"] == "nothing left to answer"
    answers = {a["message_id"]: a for a in entries(client, "answers")}
    assert sorted(answers) == sorted([*asked, too_long])
    for message_id, text in asked.items():
        assert answers[message_id]["answer"] == text and answers[message_id]["error"] == ""
        assert answers[message_id]["version"] == "acme-claims:1"
    assert [answers[m]["id"] for m in asked] == ["q-1", "", "7"]
    assert answers[too_long]["error"].startswith("the prompt has 270")
    assert answers[too_long]["answer"] == ""
    dead = {d["message_id"]: d for d in entries(client, "dead")}
    assert sorted(dead) == sorted(bad)
    for message_id, reason in bad.items():
        assert reason in dead[message_id]["reason"], dead[message_id]
        assert dead[message_id]["attempts"] == "1"
    assert dead[next(iter(bad))]["body"] == "not json"  # the message as sent, for a replay
    # one record per message asked, under the id its answer names
    records = world.records()
    assert sorted(records) == sorted(a["record_id"] for a in answers.values())
    assert {r["source"] for r in records.values()} == {"stream"}
    assert records[answers[too_long]["record_id"]]["status"] == "refused"
    # everything settled: nothing pending, and this consumer left the group
    (group,) = client.xinfo_groups("requests")
    assert (group["pending"], group["consumers"]) == (0, 0)


def test_a_consumer_killed_with_messages_in_flight_then_another_answers_each_once(
    world: StreamWorld, server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    client = server.client()
    good = [add(client, {"prompt": f"question {i}", "id": i}) for i in range(120)]
    bad = [add(client, "{broken") for _ in range(3)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    env |= {"MODELYARD_HOME": str(world.home), "MODELYARD_API_KEY": world.key}
    killed = subprocess.Popen(
        [sys.executable, "-m", "modelyard",
         *command(server, "--consumer", "first", "--echo-delay-ms", "30", "--concurrency", "8")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while client.xlen("answers") < 10:
        assert killed.poll() is None, "the consumer ended before it was killed"
        assert time.monotonic() < deadline, "no answers within 120 s"
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(10) == -signal.SIGKILL
    (group,) = client.xinfo_groups("requests")
    assert group["pending"] > 0  # in flight when it was killed (and answered, some of them)
    answered_before = client.xlen("answers")
    assert answered_before < len(good)

    summary = consume(world, server, capsys, "--consumer", "second")
    assert summary["redelivered"] >= 1  # the killed consumer's, claimed once idle
    answers = Counter(a["message_id"] for a in entries(client, "answers"))
    assert sorted(answers) == sorted(good)
    assert set(answers.values()) == {1}  # every message answered exactly once
    assert summary["answered"] + summary["duplicates"] + answered_before >= len(good)
    dead = Counter(d["message_id"] for d in entries(client, "dead"))
    assert sorted(dead) == sorted(bad) and set(dead.values()) == {1}
    records = world.records()
    assert len(records) == len(good)  # one record per message: none twice, none missing
    assert {r["status"] for r in records.values()} == {"ok"}
    (group,) = client.xinfo_groups("requests")
    assert group["pending"] == 0


def test_sigterm_drains_the_messages_in_flight_and_exits_0(
    world: StreamWorld, server: RedisServer
) -> None:
    client = server.client()
    for i in range(200):
        add(client, {"prompt": f"question {i}"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    env |= {"MODELYARD_HOME": str(world.home), "MODELYARD_API_KEY": world.key}
    consumer = subprocess.Popen(
        [sys.executable, "-m", "modelyard",
         *command(server, "--echo-delay-ms", "50", "--concurrency", "6", "--json")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while client.xlen("answers") < 6:
        assert consumer.poll() is None, consumer.communicate()
        assert time.monotonic() < deadline, "no answers within 120 s"
        time.sleep(0.02)
    consumer.send_signal(signal.SIGTERM)
    out, err = consumer.communicate(timeout=30)
    assert consumer.returncode == 0, err
    summary = json.loads(out)
    assert summary["stopped"] == "SIGTERM" and summary["in_flight"] == 0
    (group,) = client.xinfo_groups("requests")
    assert group["pending"] == 0  # everything it read was answered and acknowledged
    assert group["lag"] > 0  # and it read no more after the signal
    answers = Counter(a["message_id"] for a in entries(client, "answers"))
    assert len(answers) == summary["answered"] == summary["received"]
    assert set(answers.values()) == {1}
    assert len(world.records()) == summary["answered"]


def test_a_running_consumers_metrics_count_what_it_answered_and_dead_lettered(
    world: StreamWorld, server: RedisServer
) -> None:
    client = server.client()
    client.xgroup_create("requests", "answerers", id="0", mkstream=True)
    add(client, {"prompt": "taken by a consumer that is gone"})
    client.xreadgroup("answerers", "gone", {"requests": ">"}, count=1)  # pending: --claim-idle
    for i in range(5):
        add(client, {"prompt": f"question {i}"})
    add(client, "not json")
    add(client, {"id": "q-9"})
    add(client, {"prompt": "x" * 270_000})  # refused by the data plane: a 400
    port = free_port()
    consumer = world.start(command(server, "--metrics-port", str(port), "--consumer", "pod-0",
                                   "--claim-idle", "10m", "--json"))  # fmt: skip
    try:
        text, metrics = metrics_when(consumer, port, {"answered": 5, "dead_lettered": 2})
    finally:
        consumer.send_signal(signal.SIGTERM)
        out, err = consumer.communicate(timeout=60)
    assert consumer.returncode == 0, err
    # what it published, what its summary says and what Prometheus read agree
    assert len(entries(client, "answers")) == 6 and len(entries(client, "dead")) == 2
    assert outcomes(metrics) == {
        "answered": 5, "refused": 1, "dead_lettered": 2, "retried": 0, "duplicate": 0,
    }  # fmt: skip
    summary = json.loads(out)
    assert (summary["answered"], summary["refused"], summary["dead_lettered"]) == (5, 1, 2)
    labels = 'broker="redis",consumer="pod-0",group="answerers",stream="requests"'
    assert metrics[f"modelyard_stream_up{{{labels}}}"] == 1
    assert metrics["modelyard_stream_received_total"] == summary["received"] == 8
    assert metrics["modelyard_stream_answer_latency_seconds_count"] == 5
    assert metrics['modelyard_stream_tokens_total{kind="prompt"}'] == summary["prompt_tokens"]
    completion = metrics['modelyard_stream_tokens_total{kind="completion"}']
    assert completion == summary["completion_tokens"] > 0
    # the backlog is the broker's: the message the gone consumer holds, until it is claimed
    assert metrics["modelyard_stream_backlog"] == 1
    assert metrics["modelyard_stream_in_flight"] == 0
    assert metrics["process_resident_memory_bytes"] > 0  # the process's own, for a supervisor
    promtool_accepts(text)


def test_a_metrics_port_in_use_or_out_of_range_exits_2_before_any_message_is_read(
    world: StreamWorld, server: RedisServer, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("MODELYARD_HOME", str(world.home))
    monkeypatch.setenv("MODELYARD_API_KEY", world.key)
    client = server.client()
    add(client, {"prompt": "hi"})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases = {
            f"--metrics-port {port} on 127.0.0.1 cannot be listened on: in use": str(port),
            "--metrics-port 70000 is not a port: give one from 1 to 65535": "70000",
            "--metrics-port 0 is not a port": "0",
        }
        for expected, given in cases.items():
            capsys.readouterr()
            code = main([*command(server), "--metrics-port", given])
            err = capsys.readouterr().err
            assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
    assert client.xinfo_groups("requests") == []  # no group made, nothing read
    # a consumer that ends lets its port go
    free = free_port()
    code = main([*command(server), "--metrics-port", str(free), "--until-empty", "--json"])
    assert code == 0, capsys.readouterr().err
    assert client.xlen("answers") == 1
    with socket.socket() as again:
        again.bind(("127.0.0.1", free))


def test_a_message_failing_on_the_server_is_retried_then_dead_lettered(
    world: StreamWorld, server: RedisServer
) -> None:
    client = server.client()
    fine = add(client, {"prompt": "fine"})
    boom = add(client, {"prompt": "boom"})
    spec = StreamJobSpec(
        redis_url=server.url, stream="requests", group="answerers", output="answers",
        dead_letters="dead", params=SamplingParams(max_tokens=8, temperature=0),
        consumer="only", endpoint="claims-router", api_key=world.key,
        settings=StreamSettings(max_attempts=2, until_empty=True, poll_s=0.2),
        claim_idle_s=1.0,
    )  # fmt: skip
    engine = FailingOnBoom()
    with world.store() as store:
        summary = run_stream(store, engine, spec)
    assert (summary.answered, summary.retried, summary.dead_lettered) == (1, 1, 1)
    assert summary.redelivered == 1
    assert [a["message_id"] for a in entries(client, "answers")] == [fine]
    (dead,) = entries(client, "dead")
    assert dead["message_id"] == boom and dead["attempts"] == "2"
    assert dead["reason"].startswith("failed 2 times (--max-attempts 2); the last: ")
    assert "the engine blew up" in dead["reason"]
    records = world.records()
    assert len(records) == 2  # the failed message keeps one record: its last attempt's
    assert sorted(r["status"] for r in records.values()) == ["error", "ok"]


def test_a_message_settled_once_is_never_published_twice(server: RedisServer) -> None:
    client = server.client()
    message = add(client, {"prompt": "hi"})
    source = RedisStreamSource(client, stream="requests", group="g", consumer="a",
                               output="answers", dead_letters="dead")  # fmt: skip
    source.open()
    (first,) = source.fetch(10, 0.1)
    assert (first.id, first.attempt) == (message, 1)
    answer = Settlement(first, {"message_id": first.id, "answer": "one"})
    assert source.settle([answer, answer]) == [True, False]  # the second: settled already
    # the group read again from the start: delivered again, the marker stops a 2nd answer
    client.xgroup_setid("requests", "g", "0")
    (again,) = source.fetch(10, 0.1)
    assert again.id == message
    assert source.settle([Settlement(again, {"answer": "two"}, dead=True)]) == [False]
    assert [a["answer"] for a in entries(client, "answers")] == ["one"]
    assert client.xlen("dead") == 0
    assert client.xinfo_groups("requests")[0]["pending"] == 0  # acknowledged all the same


def test_a_stopped_consumers_messages_are_claimed_and_its_live_ones_kept(
    server: RedisServer,
) -> None:
    client = server.client()
    ids = [add(client, {"prompt": f"p{i}"}) for i in range(4)]
    kw: dict[str, Any] = {"stream": "requests", "group": "g", "output": "answers",
                          "dead_letters": "dead", "claim_idle_s": 0.3}  # fmt: skip
    stopped = RedisStreamSource(client, consumer="stopped", **kw)
    alive = RedisStreamSource(client, consumer="alive", **kw)
    taker = RedisStreamSource(client, consumer="taker", **kw)
    stopped.open()
    assert [d.id for d in stopped.fetch(2, 0.1)] == ids[:2]
    assert [d.id for d in alive.fetch(2, 0.1)] == ids[2:]
    for _ in range(4):  # 0.6 s: 'alive' renews its messages, 'stopped' does not
        time.sleep(0.15)
        alive.keep(ids[2:])
    taken = taker.fetch(10, 0.1)
    assert [(d.id, d.attempt) for d in taken] == [(ids[0], 2), (ids[1], 2)]
    assert source_backlog(taker) == 4  # delivered, none settled yet
    assert taker.settle([Settlement(d, {"answer": "x"}) for d in taken]) == [True, True]
    assert source_backlog(taker) == 2


def source_backlog(source: RedisStreamSource) -> int:
    return source.backlog()


def test_a_message_delivered_to_its_own_consumer_again_after_a_restart(
    server: RedisServer,
) -> None:
    client = server.client()
    message = add(client, {"prompt": "hi"})
    kw: dict[str, Any] = {"stream": "requests", "group": "g", "consumer": "same",
                          "output": "answers", "dead_letters": "dead"}  # fmt: skip
    before = RedisStreamSource(client, **kw)
    before.open()
    assert [d.id for d in before.fetch(5, 0.1)] == [message]
    restarted = RedisStreamSource(client, **kw)  # the same name: its pending, at once
    assert [(d.id, d.attempt) for d in restarted.fetch(5, 0.1)] == [(message, 2)]
    assert restarted.fetch(5, 0.1) == []


def test_stop_from_another_thread_drains(world: StreamWorld, server: RedisServer) -> None:
    client = server.client()
    for i in range(30):
        add(client, {"prompt": f"question {i}"})
    spec = StreamJobSpec(
        redis_url=server.url, stream="requests", group="answerers", output="answers",
        dead_letters="dead", params=SamplingParams(max_tokens=8, temperature=0),
        consumer="only", endpoint="claims-router", api_key=world.key,
        settings=StreamSettings(concurrency=4, poll_s=0.2),
    )  # fmt: skip
    from modelyard.serving import PacedEchoEngine

    started = threading.Event()
    consumers: list[Any] = []

    def on_start(consumer: Any) -> None:
        consumers.append(consumer)
        started.set()

    def stopper() -> None:
        started.wait(30)
        while client.xlen("answers") < 4:
            time.sleep(0.01)
        consumers[0].stop("asked to")

    thread = threading.Thread(target=stopper)
    thread.start()
    with world.store() as store:
        summary = run_stream(store, PacedEchoEngine(0.02), spec, on_start=on_start)
    thread.join()
    assert summary.stopped == "asked to" and summary.in_flight == 0
    assert client.xinfo_groups("requests")[0]["pending"] == 0
    assert client.xlen("answers") == summary.answered < 30


def test_bad_settings_exit_2_before_any_message_is_read(
    world: StreamWorld, server: RedisServer, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("MODELYARD_HOME", str(world.home))
    monkeypatch.setenv("MODELYARD_API_KEY", world.key)
    client = server.client()
    add(client, {"prompt": "hi"})
    cases = {
        "the model 'nope' does not exist": ["-e", "nope"],
        "is also where answers or dead letters go": ["--output-stream", "requests"],
        "invalid duration '5 minutes' for --claim-idle": ["--claim-idle", "5 minutes"],
        "--dead-letter-stream 'answers' is also the --output-stream": [
            "--dead-letter-stream", "answers",
        ],
    }  # fmt: skip
    for expected, extra in cases.items():
        capsys.readouterr()
        code = main([*command(server), *extra])
        err = capsys.readouterr().err
        assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
    monkeypatch.delenv("MODELYARD_API_KEY")
    code = main(command(server))
    assert code == 2 and "needs a tenant's API key" in capsys.readouterr().err
    assert client.xlen("answers") == 0 and not client.exists("requests:dead-letters")
    unreachable = ["--redis-url", "redis://127.0.0.1:1/0"]
    code = main([*command(server), *unreachable, "--api-key", world.key])
    assert code == 1 and "cannot reach Redis at redis://127.0.0.1:1/0" in capsys.readouterr().err


def test_a_redis_cluster_is_consumed_as_one_server_is_when_the_streams_share_a_hash_tag(
    world: StreamWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("MODELYARD_HOME", str(world.home))
    monkeypatch.setenv("MODELYARD_API_KEY", world.key)
    with redis_cluster(tmp_path) as url:
        client = redis.RedisCluster.from_url(url)
        asked = {_id(client.xadd("{claims}:requests", {"body": json.dumps({"prompt": p})})): p
                 for p in ("route the roof claim", "a flooded basement", "hail")}  # fmt: skip
        _id(client.xadd("{claims}:requests", {"body": "not json"}))
        base = ["stream", "run", "--group", "answerers", "--redis-url", url,
                "-e", "claims-router", "--engine", "echo", "--until-empty", "--json"]  # fmt: skip
        # names in other slots: refused before any message is read, saying what to do
        capsys.readouterr()
        code = main([*base, "--stream", "{claims}:requests", "--output-stream", "answers"])
        err = capsys.readouterr().err
        assert code == 2 and "--output-stream 'answers' would live in another slot" in err, err
        assert "one hash tag" in err and client.xlen("{claims}:requests") == 4
        code = main([*base, "--stream", "{claims}:requests", "--output-stream",
                     "{claims}:answers", "--dead-letter-stream", "{claims}:dead"])  # fmt: skip
        out, err = capsys.readouterr()
        assert code == 0, err
        summary = json.loads(out)
        assert (summary["answered"], summary["dead_lettered"]) == (3, 1)
        answers = {a["message_id"]: a for a in entries(client, "{claims}:answers")}
        assert {m: a["answer"] for m, a in answers.items()} == asked
        assert client.xlen("{claims}:dead") == 1
        (group,) = client.xinfo_groups("{claims}:requests")
        assert group["pending"] == 0
        client.close()
    with world.store() as store:
        records = store.query_records(job_id=summary["job_id"], limit=None)
    assert sorted(r["id"] for r in records) == sorted(a["record_id"] for a in answers.values())
    assert {r["status"] for r in records} == {"ok"}


DOC = (Path(__file__).resolve().parents[1] / "docs" / "batch.md").read_text()


def test_the_docs_stream_example_runs_and_prints_what_it_shows(
    world: StreamWorld, server: RedisServer, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    import ast
    import re
    import shlex

    section = re.split(r"\n##+ ", DOC.split("### Example: claims from a stream")[1])[0]
    produce, run, _, read, shown = re.findall(r"```(?:bash|python|)\n(.*?)```", section, re.S)
    client = server.client()
    for line in produce.strip().splitlines():
        args = shlex.split(line)
        assert args[:2] == ["redis-cli", "XADD"] and args[3] == "*"
        client.xadd(args[2], dict(zip(args[4::2], args[5::2], strict=True)))
    (line,) = [c for c in run.replace("\\\n", " ").splitlines() if c.startswith("modelyard ")]
    command = shlex.split(line)[1:]
    command[command.index("--redis-url") + 1] = server.url
    monkeypatch.setenv("MODELYARD_HOME", str(world.home))
    monkeypatch.setenv("MODELYARD_API_KEY", world.key)
    capsys.readouterr()
    code = main([*command, "--engine", "echo", "--until-empty", "--json"])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    exec(read.replace("redis://127.0.0.1:6379/0", server.url), {})
    printed = capsys.readouterr().out.strip().splitlines()
    documented = shown.strip().splitlines()
    assert len(printed) == len(documented)
    keep = ("id", "version", "error")  # the trained adapter's words differ from echo's

    def answers(lines: list[str]) -> list[dict[str, object]]:
        """The answers, by id: the output stream has them in the order they were answered,
        which several in flight at once may change."""
        found = [{k: ast.literal_eval(line)[k] for k in keep} for line in lines
                 if line.startswith("{")]  # fmt: skip
        return sorted(found, key=lambda a: str(a["id"]))

    assert answers(printed) == answers(documented)
    # the dead letters' reasons, in order
    assert [g for g in printed if not g.startswith("{")] == [
        w for w in documented if not w.startswith("{")
    ]
