"""``modelyard stream run --nats-url`` against a real ``nats-server`` with JetStream:
answers as JSON, dead letters as sent with their reason in headers, a consumer killed
with ``kill -9`` and another answering each message once, the group's ack wait kept by
progress signals, and bad settings refused before any message is read.

The world is ``test_stream``'s: tenant ``acme-insurance``'s endpoint ``claims-router``
serves ``acme-claims:1``, a version the echo engine answers with the prompt's last words.
Each test has a NATS of its own.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import ServerVersion

from modelyard.cli import main
from modelyard.errors import ModelyardError
from modelyard.serving import SamplingParams
from modelyard.stream import NatsStreamSource, Settlement, StreamJobSpec, StreamSettings, run_stream
from modelyard.stream._nats import redelivery_count_warning, stream_name, subject_matches
from natsserver import NatsServer, nats_server
from redisserver import free_port
from streamworld import (
    FailingOnBoom,
    StreamWorld,
    metrics_when,
    outcomes,
    promtool_accepts,
    stream_world,
)

JOB = "claims.in/answerers"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> StreamWorld:
    return stream_world(tmp_path_factory.mktemp("stream-nats") / "home", JOB)


@pytest.fixture
def server(world: StreamWorld, tmp_path: Path) -> Iterator[NatsServer]:
    """A NATS of this test's own; the world's records of earlier tests removed."""
    world.forget_records()
    with nats_server(tmp_path) as started:
        yield started


def publish(server: NatsServer, *bodies: Any, headers: dict[str, str] | None = None) -> list[str]:
    """Publish requests on ``claims.in`` (its stream made first); their stream sequences."""

    async def work(js: Any) -> list[str]:
        try:
            await js.find_stream_name_by_subject("claims.in")
        except Exception:
            await js.add_stream(name="CLAIMS", subjects=["claims.in"])
        seqs = []
        for body in bodies:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            seqs.append(str((await js.publish("claims.in", data, headers=headers)).seq))
        return seqs

    return server.js(work)


def read(server: NatsServer, subject: str) -> list[Any]:
    """Every message kept on ``subject``, oldest first: (payload, headers)."""

    async def work(js: Any) -> list[Any]:
        name = await js.find_stream_name_by_subject(subject)
        last = (await js.stream_info(name)).state.last_seq
        out = []
        for seq in range(1, last + 1):
            msg = await js.get_msg(name, seq)
            if msg.subject == subject:
                out.append((msg.data, dict(msg.headers or {})))
        return out

    return server.js(work)


def answers(server: NatsServer) -> list[dict[str, Any]]:
    return [json.loads(data) for data, _ in read(server, "claims.answers")]


def command(server: NatsServer, *extra: str) -> list[str]:
    return ["stream", "run", "--stream", "claims.in", "--group", "answerers",
            "--output-stream", "claims.answers", "--dead-letter-stream", "claims.dead",
            "--nats-url", server.url, "-e", "claims-router", "--engine", "echo",
            *extra]  # fmt: skip


def consume(world: StreamWorld, server: NatsServer, capsys: pytest.CaptureFixture[str],
            *extra: str) -> dict[str, Any]:  # fmt: skip
    """``stream run ... --until-empty --json`` in this process: its summary."""
    return world.consume(capsys, command(server, "--claim-idle", "2s", *extra))


def test_answers_are_json_keyed_by_sequence_and_dead_letters_keep_the_request_as_sent(
    world: StreamWorld, server: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    asked = dict(zip(publish(server, {"prompt": "route the roof claim", "id": "q-1"},
                             {"prompt": "one two three four", "max_tokens": 2, "id": 7}),
                     ["route the roof claim", "one two"], strict=True))  # fmt: skip
    (broken,) = publish(server, b"not json", headers={"Trace-Id": "t-9"})
    (misspelt,) = publish(server, {"prompt": "hi", "max_token": 3})

    summary = consume(world, server, capsys)
    assert (summary["answered"], summary["dead_lettered"]) == (2, 2)
    assert summary["job_id"] == JOB and summary["stopped"] == "nothing left to answer"
    got = {a["message_id"]: a for a in answers(server)}
    assert sorted(got) == sorted(asked)
    for seq, text in asked.items():
        assert got[seq]["answer"] == text and got[seq]["error"] is None
        assert got[seq]["version"] == "acme-claims:1"
        assert isinstance(got[seq]["completion_tokens"], int)
    assert [got[s]["id"] for s in asked] == ["q-1", "7"]
    dead = {h["message_id"]: (data, h) for data, h in read(server, "claims.dead")}
    assert sorted(dead) == sorted([broken, misspelt])
    data, headers = dead[broken]
    assert data == b"not json"  # as it was sent, to publish again once fixed
    assert headers["Trace-Id"] == "t-9" and headers["attempts"] == "1"
    assert headers["reason"].startswith("the body is not JSON (")
    assert "unknown key 'max_token'" in dead[misspelt][1]["reason"]
    records = world.records()
    assert sorted(records) == sorted(a["record_id"] for a in got.values())
    assert {r["source"] for r in records.values()} == {"stream"}

    async def state(js: Any) -> Any:
        info = await js.consumer_info("CLAIMS", "answerers")
        made = {n: (await js.stream_info(n)).config.duplicate_window
                for n in ("claims_answers", "claims_dead")}  # fmt: skip
        return info.num_pending, info.num_ack_pending, info.config.ack_wait, made

    # everything acknowledged; the group's ack wait is --claim-idle; the output and
    # dead-letter streams were made, remembering message ids for --dedup-ttl
    assert server.js(state) == (0, 0, 2.0, {"claims_answers": 3600.0, "claims_dead": 3600.0})


def test_a_consumer_killed_with_messages_in_flight_then_another_answers_each_once(
    world: StreamWorld, server: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    good = publish(server, *({"prompt": f"question {i}", "id": i} for i in range(80)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    env |= {"MODELYARD_HOME": str(world.home), "MODELYARD_API_KEY": world.key}
    killed = subprocess.Popen(
        [sys.executable, "-m", "modelyard", *command(server, "--claim-idle", "2s",
         "--echo-delay-ms", "30", "--concurrency", "8")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while len(answers_or_none(server)) < 10:
        assert killed.poll() is None, "the consumer ended before it was killed"
        assert time.monotonic() < deadline, "no answers within 120 s"
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(10) == -signal.SIGKILL
    answered_before = len(answers(server))
    assert answered_before < len(good)

    summary = consume(world, server, capsys)
    assert summary["redelivered"] >= 1  # the killed consumer's, delivered again
    counts = Counter(a["message_id"] for a in answers(server))
    assert sorted(counts) == sorted(good)
    assert set(counts.values()) == {1}  # every message answered exactly once
    records = world.records()
    assert len(records) == len(good)  # one record per message: none twice, none missing
    assert {r["status"] for r in records.values()} == {"ok"}


def answers_or_none(server: NatsServer) -> list[Any]:
    """The answers so far (none before the consumer made their stream)."""
    try:
        return answers(server)
    except Exception:
        return []


def source(server: NatsServer, **kw: Any) -> NatsStreamSource:
    args: dict[str, Any] = {"subject": "claims.in", "group": "g", "output": "claims.answers",
                            "dead_letters": "claims.dead", "claim_idle_s": 1.0} | kw  # fmt: skip
    return NatsStreamSource.connect(server.url, **args)


def test_an_answer_published_before_a_crash_is_not_published_again(
    server: NatsServer,
) -> None:
    (message,) = publish(server, {"prompt": "hi"})
    first = source(server)
    (delivery,) = first.fetch(10, 0.5)
    assert (delivery.id, delivery.attempt) == (message, 1)

    async def crash(timeout: float = 1.0) -> None:
        raise OSError("killed between the answer and the acknowledgment")

    first._in_flight[message].ack_sync = crash  # the process dies right after publishing
    with pytest.raises(ModelyardError, match=r"cannot reach NATS at .* \(settling messages\)"):
        first.settle([Settlement(delivery, {"message_id": message, "answer": "one"})])
    first.close()

    second = source(server)
    again: list[Any] = []
    deadline = time.monotonic() + 10
    while not again:  # delivered again once the group's ack wait (1 s) has passed
        assert time.monotonic() < deadline, "not delivered again within 10 s"
        again = second.fetch(10, 0.5)
    assert [(d.id, d.attempt) for d in again] == [(message, 2)]
    assert second.settle([Settlement(again[0], {"message_id": message, "answer": "two"})]) == [
        False  # settled already: its answer is out
    ]
    assert [a["answer"] for a in answers(server)] == ["one"]
    assert second.backlog() == 0  # acknowledged all the same
    assert second.fetch(10, 0.3) == []
    second.close()


class _Unavailable:
    """A pull subscription whose JetStream answers 503 ``times`` times before it answers
    (as one does while it starts, stops or elects a leader)."""

    def __init__(self, sub: Any, times: int) -> None:
        self.sub, self.times, self.asked = sub, times, 0

    async def fetch(self, **kw: Any) -> Any:
        import nats.js.errors

        self.asked += 1
        if self.asked <= self.times:
            raise nats.js.errors.ServiceUnavailableError(code=503, description="unavailable")
        return await self.sub.fetch(**kw)


def test_a_jetstream_answering_503_a_while_is_asked_again_then_named(
    server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    (message,) = publish(server, {"prompt": "hi"})
    reader = source(server)
    reader._sub = _Unavailable(reader._sub, times=3)
    assert [d.id for d in reader.fetch(10, 0.5)] == [message]
    assert reader._sub.asked == 4
    monkeypatch.setattr("modelyard.stream._nats._UNAVAILABLE_S", 0.5)
    reader._sub = _Unavailable(reader._sub.sub, times=10**6)
    with pytest.raises(ModelyardError, match=r"JetStream at .* was unavailable for 0.5 s"):
        reader.fetch(10, 0.5)
    reader.close()


def test_a_live_consumers_messages_are_kept_and_a_stopped_ones_delivered_again(
    server: NatsServer,
) -> None:
    ids = publish(server, *({"prompt": f"p{i}"} for i in range(2)))
    alive, stopped, taker = source(server), source(server), source(server)
    assert [d.id for d in alive.fetch(1, 0.5)] == ids[:1]
    assert [d.id for d in stopped.fetch(1, 0.5)] == ids[1:]
    stopped.close()  # unacknowledged: delivered again after the ack wait
    for _ in range(6):  # 1.8 s: 'alive' signals progress, the ack wait is 1 s
        time.sleep(0.3)
        alive.keep(ids[:1])
    taken = taker.fetch(10, 0.5)
    assert [(d.id, d.attempt) for d in taken] == [(ids[1], 2)]
    assert taker.backlog() == 2  # both delivered, none settled
    assert taker.settle([Settlement(d, {"answer": "x"}) for d in taken]) == [True]
    assert taker.backlog() == 1
    alive.close()
    taker.close()


def test_a_message_left_for_a_retry_is_let_go_and_delivered_again(server: NatsServer) -> None:
    """A server failure leaves the message for another attempt: it is negatively
    acknowledged (delivered again after the ack wait, to whichever consumer asks) and this
    consumer holds nothing of it, whoever settles it in the end."""
    (message,) = publish(server, {"prompt": "hi"})
    first, other = source(server), source(server)
    (delivery,) = first.fetch(10, 0.5)
    first.release([delivery.id])
    assert message not in first._in_flight
    taken: list[Any] = []
    deadline = time.monotonic() + 10
    while not taken:
        assert time.monotonic() < deadline, "not delivered again within 10 s"
        taken = other.fetch(10, 0.5)
    assert [(d.id, d.attempt) for d in taken] == [(message, 2)]
    assert other.settle([Settlement(taken[0], {"answer": "x"})]) == [True]
    assert other.backlog() == 0 and first._in_flight == {}
    first.close()
    other.close()


def test_a_message_failing_on_the_server_is_retried_then_dead_lettered(
    world: StreamWorld, server: NatsServer
) -> None:
    publish(server, {"prompt": "fine"}, {"prompt": "boom"})
    spec = StreamJobSpec(
        redis_url=None, nats_url=server.url, stream="claims.in", group="answerers",
        output="claims.answers", dead_letters="claims.dead",
        params=SamplingParams(max_tokens=8, temperature=0), consumer=None,
        endpoint="claims-router", api_key=world.key,
        settings=StreamSettings(max_attempts=2, until_empty=True, poll_s=0.2), claim_idle_s=1.0,
    )  # fmt: skip
    with world.store() as store:
        summary = run_stream(store, FailingOnBoom(), spec)
    assert (summary.answered, summary.retried, summary.dead_lettered) == (1, 1, 1)
    assert summary.redelivered == 1
    assert [a["answer"] for a in answers(server)] == ["fine"]
    ((payload, headers),) = read(server, "claims.dead")
    assert json.loads(payload) == {"prompt": "boom"} and headers["attempts"] == "2"
    assert "the engine blew up" in headers["reason"]
    assert sorted(r["status"] for r in world.records().values()) == ["error", "ok"]


def test_a_running_consumers_metrics_count_what_it_answered_and_dead_lettered(
    world: StreamWorld, server: NatsServer
) -> None:
    publish(server, *({"prompt": f"question {i}"} for i in range(4)))
    publish(server, b"not json", {"id": "q-9"})
    port = free_port()
    consumer = world.start(command(server, "--metrics-port", str(port), "--json"))
    try:
        text, metrics = metrics_when(consumer, port, {"answered": 4, "dead_lettered": 2})
    finally:
        consumer.send_signal(signal.SIGTERM)
        out, err = consumer.communicate(timeout=60)
    assert consumer.returncode == 0, err
    assert len(answers(server)) == 4 and len(read(server, "claims.dead")) == 2
    assert outcomes(metrics) == {
        "answered": 4, "refused": 0, "dead_lettered": 2, "retried": 0, "duplicate": 0,
    }  # fmt: skip
    summary = json.loads(out)
    assert (summary["answered"], summary["dead_lettered"], summary["received"]) == (4, 2, 6)
    (up,) = [k for k in metrics if k.startswith("modelyard_stream_up{")]
    assert 'broker="nats",' in up and 'group="answerers",stream="claims.in"' in up
    assert metrics[up] == 1
    assert metrics["modelyard_stream_received_total"] == 6
    assert metrics["modelyard_stream_answer_latency_seconds_count"] == 4
    completion = metrics['modelyard_stream_tokens_total{kind="completion"}']
    assert completion == summary["completion_tokens"] > 0
    assert metrics["modelyard_stream_backlog"] == 0  # JetStream's: nothing pending, none new
    promtool_accepts(text)


def test_subjects_and_stream_names() -> None:
    assert subject_matches("claims.>", "claims.in.dead")
    assert subject_matches("claims.*", "claims.in")
    assert not subject_matches("claims.*", "claims.in.dead")
    assert not subject_matches("claims.in", "claims.in:dead-letters")
    assert not subject_matches("claims.>", "claims")
    assert stream_name("claims.in:dead-letters") == "claims_in_dead-letters"
    assert stream_name("claims.>") == "claims_all"


def test_a_nats_that_may_miscount_deliveries_is_named_when_connecting(
    server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Servers before the 2.10 series' fixes can count a message delivered again as
    delivered once, so --max-attempts may be passed: connecting says so, naming the fix."""
    with caplog.at_level(logging.WARNING, logger="modelyard.stream._nats"):
        source(server).close()  # the pinned nats-server 2.15
    assert caplog.records == []
    for version, warned in [("2.9.10", True), ("2.10.13", True), ("2.10.16", False),
                            ("2.15.1", False), ("0.0.0-unknown", False)]:  # fmt: skip
        warning = redelivery_count_warning("nats://n:4222", ServerVersion(version))
        assert (warning is not None) is warned, version
    assert redelivery_count_warning("nats://n:4222", ServerVersion("2.9.10")) == (
        "the NATS at nats://n:4222 is nats-server 2.9.10, which sometimes hands out a message "
        "delivered again with a delivery count of 1 (nats-io/nats-server#5305 and #5338, fixed "
        "in April 2024): a message may be tried more often than --max-attempts. Upgrade "
        "nats-server to 2.10.16 or later."
    )


def test_bad_settings_exit_2_before_any_message_is_read(
    world: StreamWorld, server: NatsServer, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:  # fmt: skip
    monkeypatch.setenv("MODELYARD_HOME", str(world.home))
    monkeypatch.setenv("MODELYARD_API_KEY", world.key)
    publish(server, {"prompt": "hi"})
    source(server, group="answerers", claim_idle_s=30.0).close()  # the group: 30 s
    server.js(lambda js: js.add_stream(name="SHORT", subjects=["short.answers"],
                                       duplicate_window=60))  # fmt: skip
    cases = {
        "takes messages back after 30 s, not this consumer's --claim-idle 60 s": [],
        "remembers message ids for 60 s, less than --dedup-ttl 3600 s": [
            "--claim-idle", "30s", "--output-stream", "short.answers",
        ],
        "--consumer names a consumer of a Redis group": ["--consumer", "pod-0"],
        "--start-id '17' means nothing to NATS": ["--start-id", "17"],
        "both a Redis (--redis-url or MODELYARD_REDIS_URL) and a NATS": [
            "--redis-url", "redis://127.0.0.1:1/0",
        ],
    }  # fmt: skip
    for expected, extra in cases.items():
        capsys.readouterr()
        code = main([*command(server), *extra])
        err = capsys.readouterr().err
        assert code == 2 and expected in err, err
        assert "Traceback" not in err
    wildcard = ["--stream", "claims.>", "--group", "all", "--output-stream", "claims.answers"]
    code = main([*command(server), *wildcard])
    err = capsys.readouterr().err
    assert code == 2 and "consumer would read its own answers" in err, err
    # a Redis URL from the environment gives way to --nats-url on the command line, and
    # the other way round: here NATS answers (and the group's ack wait is refused)
    monkeypatch.setenv("MODELYARD_REDIS_URL", "redis://127.0.0.1:1/0")
    assert main(command(server)) == 2
    assert "not this consumer's --claim-idle" in capsys.readouterr().err
    with nats_server(tmp_path / "plain", jetstream=False) as plain:
        code = main([*command(plain), "--claim-idle", "30s"])
    err = capsys.readouterr().err
    assert code == 2 and f"the NATS at {plain.url} has no JetStream" in err, err
    code = main([*command(server), "--nats-url", "nats://127.0.0.1:1"])
    err = capsys.readouterr().err
    assert code == 1 and "cannot reach NATS at nats://127.0.0.1:1" in err, err
    assert answers_or_none(server) == []


def test_nats_going_away_stops_the_consumer_and_a_restart_answers_the_rest_once(
    world: StreamWorld, server: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    good = publish(server, *({"prompt": f"question {i}"} for i in range(40)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    env |= {"MODELYARD_HOME": str(world.home), "MODELYARD_API_KEY": world.key}
    consumer = subprocess.Popen(
        [sys.executable, "-m", "modelyard", *command(server, "--claim-idle", "2s",
         "--echo-delay-ms", "30", "--concurrency", "4")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while len(answers_or_none(server)) < 4:
        assert consumer.poll() is None, consumer.communicate()
        assert time.monotonic() < deadline, "no answers within 120 s"
        time.sleep(0.05)
    server.stop()  # JetStream keeps its streams on disk: they come back with it
    stopped = time.monotonic()
    _, err = consumer.communicate(timeout=60)
    assert consumer.returncode == 1, err
    assert time.monotonic() - stopped < 30, "the consumer went on without NATS"
    assert f"cannot reach NATS at {server.url}" in err and "Traceback" not in err, err

    server.start()
    consume(world, server, capsys)
    counts = Counter(a["message_id"] for a in answers(server))
    assert sorted(counts) == sorted(good) and set(counts.values()) == {1}
    assert len(world.records()) == len(good)


DOC = (Path(__file__).resolve().parents[1] / "docs" / "batch.md").read_text()


def test_the_docs_nats_example_runs_and_prints_what_it_shows(
    world: StreamWorld, server: NatsServer, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    import ast
    import re
    import shlex

    section = re.split(r"\n##+ ", DOC.split("#### Example: the claims over NATS")[1])[0]
    produce, run, read, shown = re.findall(r"```(?:bash|python|)\n(.*?)```", section, re.S)
    names: dict[str, Any] = {}
    exec(produce.replace("nats://127.0.0.1:4222", server.url), names)
    (line,) = [c for c in run.replace("\\\n", " ").splitlines() if c.startswith("modelyard ")]
    command = shlex.split(line)[1:]
    command[command.index("--nats-url") + 1] = server.url
    monkeypatch.setenv("MODELYARD_HOME", str(world.home))
    monkeypatch.setenv("MODELYARD_API_KEY", world.key)
    capsys.readouterr()
    code = main([*command, "--engine", "echo", "--until-empty", "--json"])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    exec(read.replace("nats://127.0.0.1:4222", server.url), names)
    printed = capsys.readouterr().out.strip().splitlines()
    documented = shown.strip().splitlines()
    assert len(printed) == len(documented)
    keep = ("id", "version", "error")  # the trained adapter's words differ from echo's

    def answers(lines: list[str]) -> list[dict[str, object]]:
        found = [{k: ast.literal_eval(line)[k] for k in keep} for line in lines
                 if line.startswith("{")]  # fmt: skip
        return sorted(found, key=lambda a: str(a["id"]))

    assert answers(printed) == answers(documented)
    assert [g for g in printed if not g.startswith("{")] == [
        w for w in documented if not w.startswith("{")
    ]
