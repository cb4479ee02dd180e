"""The OpenAI Batch API (``/v1/batches``) through the official ``openai`` SDK against a real
server: upload, create, poll, download; the same data plane as a live request of the key
(limits, records marked ``batch`` with the batch's id, tenants kept apart); a bad input
file fails the batch naming its lines; cancel; a server stopped mid-batch and another that
finishes it without answering a line twice."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types import Batch
from sqlalchemy import event, text

from modelyard.access import create_api_key, rotate_api_key
from modelyard.artifacts import LocalArtifactStore
from modelyard.errors import ConfigError, Conflict, NotFound
from modelyard.serving import (
    BackgroundServer,
    BatchSettings,
    EchoEngine,
    PacedEchoEngine,
    SamplingParams,
    create_app,
)
from modelyard.serving._batch_runner import BatchRun
from modelyard.serving._files import FileKeeper
from modelyard.serving._live import LiveTraffic
from modelyard.serving._stream import TokenStream
from modelyard.store import ModelVersion, Store
from waiting import until
from worlds import two_tenant_world

FAST = BatchSettings(poll_s=0.05, commit_s=0.05, lease_s=3.0, concurrency=4)
ENDED = ("completed", "failed", "cancelled", "expired")


class Counting(PacedEchoEngine):
    """The echo engine, ``delay_s`` a word, counting the prompts it was asked."""

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__(delay_s)
        self.asked: list[str] = []
        self._lock = threading.Lock()

    def stream(self, version: ModelVersion, prompt: str, params: SamplingParams) -> TokenStream:
        with self._lock:
            self.asked.append(prompt)
        if self.delay_s == 0:
            return EchoEngine.stream(self, version, prompt, params)
        return super().stream(version, prompt, params)


@dataclass
class World:
    tmp: Path
    store: Store
    artifacts: LocalArtifactStore
    keys: dict[str, str] = field(default_factory=dict)

    def serve(
        self, stack: ExitStack, engine: Any = None, settings: BatchSettings = FAST
    ) -> BackgroundServer:
        app = create_app(
            self.store, engine or EchoEngine(), refresh_seconds=0.1, heartbeat_s=None,
            artifacts=self.artifacts, batches=settings,
        )  # fmt: skip
        return stack.enter_context(BackgroundServer(app))

    def client(self, stack: ExitStack, server: BackgroundServer, who: str) -> openai.OpenAI:
        made = openai.OpenAI(
            base_url=server.base_url + "/v1", api_key=self.keys[who], max_retries=0
        )
        return stack.enter_context(made)


@pytest.fixture
def world(tmp_path: Path, store_url: str) -> Iterator[World]:
    """Two tenants' endpoints and keys, on SQLite and on PostgreSQL."""
    yield from batch_world(tmp_path, store_url)


def batch_world(tmp_path: Path, store_url: str) -> Iterator[World]:
    """``world``'s making, for other modules' fixtures."""
    with Store.open(store_url) as store:
        two_tenant_world(store, versions=1)
        w = World(tmp_path, store, LocalArtifactStore(tmp_path / "artifacts"))
        w.keys["acme"] = create_api_key(store, "acme", scopes=("infer",))[1]
        w.keys["globex"] = create_api_key(store, "globex", scopes=("infer",))[1]
        w.keys["acme-limited"] = create_api_key(store, "acme", scopes=("infer",), rpm_limit=2)[1]
        w.keys["acme-feedback"] = create_api_key(store, "acme", scopes=("feedback",))[1]
        yield w


def chat_line(custom_id: str, text: str, model: str = "acme-support", **extra: Any) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 8}
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
         "body": body | extra}
    )  # fmt: skip


def completion_line(custom_id: str, prompt: str, model: str = "acme-support") -> str:
    body = {"model": model, "prompt": prompt, "max_tokens": 8}
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": "/v1/completions", "body": body}
    )


def upload(client: openai.OpenAI, lines: list[str]) -> str:
    data = ("\n".join(lines) + "\n").encode()
    return client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch").id


def wait(
    client: openai.OpenAI, batch_id: str, until: tuple[str, ...] = ENDED, timeout_s: float = 30
) -> Batch:
    deadline = time.monotonic() + timeout_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in until:
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}"
        time.sleep(0.05)


def lines_of(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(x) for x in client.files.content(file_id).text.splitlines()]


def test_a_chat_batch_through_the_sdk_and_its_records(world: World) -> None:
    with ExitStack() as stack:
        server = world.serve(stack)
        client = world.client(stack, server, "acme")
        file_id = upload(client, [chat_line(f"q{i}", f"question number {i}") for i in range(5)])
        made = client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h",
            metadata={"nightly": "yes"},
        )  # fmt: skip
        assert made.status == "validating" and made.metadata == {"nightly": "yes"}
        batch = wait(client, made.id)
        assert batch.status == "completed", batch
        assert batch.request_counts is not None
        assert batch.request_counts.model_dump() == {"total": 5, "completed": 5, "failed": 0}
        assert batch.error_file_id is None and batch.output_file_id is not None
        for step in ("in_progress_at", "finalizing_at", "completed_at"):
            assert getattr(batch, step) >= batch.created_at
        output = lines_of(client, batch.output_file_id)
        assert sorted(x["custom_id"] for x in output) == [f"q{i}" for i in range(5)]
        for x in output:
            assert x["error"] is None and x["id"].startswith("batch_req_")
            assert x["response"]["status_code"] == 200
            body = x["response"]["body"]
            assert body["object"] == "chat.completion" and body["model"] == "acme-support"
            assert body["id"] == x["response"]["request_id"]
        made_file = client.files.retrieve(batch.output_file_id)
        assert made_file.purpose == "batch_output"
        records = world.store.query_records(job_id=made.id, limit=None)
        assert len(records) == 5
        assert {r["id"] for r in records} == {x["response"]["request_id"] for x in output}
        assert {r["source"] for r in records} == {"batch"}
        assert [b.id for b in client.batches.list()] == [made.id]
        assert made.usage is None and batch.usage is not None  # its requests' tokens, once ended
        assert batch.usage.input_tokens == sum(r["prompt_tokens"] for r in records) > 0
        assert batch.usage.output_tokens == sum(r["completion_tokens"] for r in records) > 0
        assert batch.usage.total_tokens == batch.usage.input_tokens + batch.usage.output_tokens


def test_a_completions_batch_and_a_line_that_names_another_tenants_endpoint(
    world: World,
) -> None:
    with ExitStack() as stack:
        server = world.serve(stack)
        client = world.client(stack, server, "acme")
        lines = [
            completion_line("mine", "hello batch world"),
            completion_line("theirs", "hello", model="globex-support"),
        ]
        made = client.batches.create(
            input_file_id=upload(client, lines), endpoint="/v1/completions",
            completion_window="24h",
        )  # fmt: skip
        batch = wait(client, made.id)
        assert batch.status == "completed"
        assert batch.request_counts is not None
        assert (batch.request_counts.completed, batch.request_counts.failed) == (1, 1)
        [ok] = lines_of(client, batch.output_file_id)
        assert ok["custom_id"] == "mine"
        assert ok["response"]["body"]["choices"][0]["text"] == "hello batch world"
        [failed] = lines_of(client, batch.error_file_id)
        assert failed["custom_id"] == "theirs" and failed["response"]["status_code"] == 404
        with pytest.raises(openai.NotFoundError) as live:  # what a live request gets
            client.completions.create(model="globex-support", prompt="hello", max_tokens=8)
        assert failed["response"]["body"]["error"]["code"] == "model_not_found"
        assert isinstance(live.value.body, dict)
        assert failed["response"]["body"]["error"]["message"] == live.value.body["message"]
        scraped = httpx.get(server.base_url + "/metrics").text  # what an operator sees
    for sample in (
        'modelyard_openai_batch_lines_total{outcome="completed",tenant="acme"} 1.0',
        'modelyard_openai_batch_lines_total{outcome="failed",tenant="acme"} 1.0',
        'modelyard_openai_batches_ended_total{status="completed",tenant="acme"} 1.0',
        "modelyard_openai_batches_running 0.0",
        "# TYPE modelyard_openai_batches_unfinished gauge",
    ):
        assert sample in scraped.splitlines(), sample


def test_another_tenants_file_and_batch_are_404s(world: World) -> None:
    with ExitStack() as stack:
        server = world.serve(stack)
        acme = world.client(stack, server, "acme")
        globex = world.client(stack, server, "globex")
        theirs_file = upload(globex, [chat_line("a", "hi", model="globex-support")])
        theirs = globex.batches.create(
            input_file_id=theirs_file, endpoint="/v1/chat/completions", completion_window="24h"
        )
        with pytest.raises(openai.NotFoundError) as info:
            acme.batches.create(
                input_file_id=theirs_file, endpoint="/v1/chat/completions",
                completion_window="24h",
            )  # fmt: skip
        assert isinstance(info.value.body, dict) and info.value.body["param"] == "input_file_id"
        for call in (acme.batches.retrieve, acme.batches.cancel):
            with pytest.raises(openai.NotFoundError):
                call(theirs.id)
        assert acme.batches.list().data == []
        assert wait(globex, theirs.id).status == "completed"


def test_another_tenants_batch_is_the_same_404_as_a_missing_one_and_the_same_work(
    world: World,
) -> None:
    """The same body (but for the id) and the same statements on the store, so neither the
    answer nor its time tells a batch id of another tenant from one that never existed
    (another tenant's cost one more query)."""
    source = FileKeeper(world.store, world.artifacts).save(
        "globex", io.BytesIO(b"{}"), filename="in.jsonl", purpose="batch", api_key_id=None
    )
    theirs = world.store.create_batch(
        "globex", api_key_id="k", endpoint="/v1/chat/completions", input_file_id=source.id,
        completion_window="24h", window=timedelta(hours=24), metadata=None,
    )  # fmt: skip
    missing = "batch_" + "0" * 32
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(str(args[2]))

    def asked(call: Any, batch_id: str) -> tuple[str, int]:
        statements.clear()
        event.listen(world.store._engine, "before_cursor_execute", count)
        try:
            with pytest.raises(NotFound) as info:
                call("acme", batch_id)
        finally:
            event.remove(world.store._engine, "before_cursor_execute", count)
        return info.value.message.replace(batch_id, "ID"), len(statements)

    for call in (world.store.get_batch, world.store.cancel_batch):
        assert asked(call, theirs.id) == asked(call, missing)
    with ExitStack() as stack:
        server = world.serve(stack)
        acme = world.client(stack, server, "acme")
        bodies = []
        for batch_id in (theirs.id, missing):
            with pytest.raises(openai.NotFoundError) as info:
                acme.batches.retrieve(batch_id)
            bodies.append(json.dumps(info.value.body).replace(batch_id, "ID"))
        assert bodies[0] == bodies[1]


def test_a_file_with_bad_lines_fails_the_batch_naming_each_line(world: World) -> None:
    with ExitStack() as stack:
        server = world.serve(stack)
        client = world.client(stack, server, "acme")
        wrong_url = json.loads(chat_line("c", "hi")) | {"url": "/v1/completions"}
        wrong_method = json.loads(chat_line("d", "hi")) | {"method": "GET"}
        lines = [
            chat_line("a", "fine"),
            "{not json",
            chat_line("a", "again"),
            json.dumps(wrong_url),
            json.dumps(wrong_method),
        ]
        made = client.batches.create(
            input_file_id=upload(client, lines), endpoint="/v1/chat/completions",
            completion_window="24h",
        )  # fmt: skip
        batch = wait(client, made.id)
        assert batch.status == "failed" and batch.failed_at is not None
        assert batch.errors is not None and batch.errors.data is not None
        found = [(e.line, e.code, e.param) for e in batch.errors.data]
        assert found == [
            (2, "invalid_json_line", None),
            (3, "duplicate_custom_id", "custom_id"),
            (4, "invalid_url", "url"),
            (5, "invalid_method", "method"),
        ]
        assert world.store.query_records(job_id=made.id, limit=None) == []


def test_a_file_over_the_line_limit_is_not_read_past_it(world: World) -> None:
    """A file of more requests than the server takes (50,000) is failed at the first line
    past the limit: what follows is not read (a 200 MB file of tiny lines took two minutes
    of CPU and 190 MB to be told it is too long) nor listed in errors."""
    with ExitStack() as stack:
        server = world.serve(stack, settings=replace(FAST, max_lines=3))
        client = world.client(stack, server, "acme")
        lines = [chat_line(f"q{i}", "hi") for i in range(4)] + ["{not json"] * 50
        made = client.batches.create(
            input_file_id=upload(client, lines), endpoint="/v1/chat/completions",
            completion_window="24h",
        )  # fmt: skip
        batch = wait(client, made.id)
    assert batch.status == "failed" and batch.errors is not None
    assert batch.errors.data is not None
    assert [(e.code, e.line) for e in batch.errors.data] == [("too_many_requests", 4)]
    assert "more than this server's 3 per batch" in str(batch.errors.data[0].message)


def test_create_refuses_what_it_cannot_run_naming_the_parameter(world: World) -> None:
    with ExitStack() as stack:
        server = world.serve(stack)
        client = world.client(stack, server, "acme")
        file_id = upload(client, [chat_line("a", "hi")])
        cases: list[tuple[dict[str, Any], str]] = [
            ({"endpoint": "/v1/embeddings"}, "endpoint"),
            ({"completion_window": "1h"}, "completion_window"),
            ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
            ({"input_file_id": "file-000000000000000000000000"}, "input_file_id"),
        ]
        for change, param in cases:
            sent: dict[str, Any] = {
                "input_file_id": file_id, "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            } | change  # fmt: skip
            with pytest.raises(openai.APIStatusError) as info:
                client.batches.create(**sent)
            assert info.value.status_code in (400, 404)
            assert isinstance(info.value.body, dict) and info.value.body["param"] == param
        feedback_only = openai.OpenAI(
            base_url=server.base_url + "/v1", api_key=world.keys["acme-feedback"], max_retries=0
        )
        with pytest.raises(openai.PermissionDeniedError, match="'infer' scope"):
            feedback_only.batches.list()


def test_a_rate_limited_batch_waits_out_the_limit_instead_of_failing_lines(
    world: World,
) -> None:
    """A key's requests/min is not a line's answer: the batch waits its Retry-After and
    asks again, as ``modelyard batch run`` does (120 a minute: 120 at once, then 2 a
    second), so every line is answered."""
    _, paced = create_api_key(world.store, "acme", scopes=("infer",), rpm_limit=120)
    world.keys["acme-paced"] = paced
    with ExitStack() as stack:
        server = world.serve(stack, settings=replace(FAST, concurrency=8))
        client = world.client(stack, server, "acme-paced")
        made = client.batches.create(
            input_file_id=upload(client, [chat_line(f"q{i}", "hi there") for i in range(124)]),
            endpoint="/v1/chat/completions", completion_window="24h",
        )  # fmt: skip
        batch = wait(client, made.id)
        assert batch.status == "completed" and batch.request_counts is not None
        assert (batch.request_counts.completed, batch.request_counts.failed) == (124, 0)
        assert batch.error_file_id is None
        assert len(lines_of(client, batch.output_file_id)) == 124
    records = world.store.query_records(job_id=made.id, limit=None)  # and refusals, sampled
    answered = sorted(r["id"] for r in records if r["status"] == "ok")
    assert answered == sorted(f"{made.id}-{n}" for n in range(1, 125))


def test_a_line_larger_than_the_key_s_tokens_a_minute_is_its_429_at_once(
    world: World,
) -> None:
    """A request that can never fit the key's tokens/min is not waited for (the 429 says
    ``x-should-retry: false``): its 429 is in the error file, the others answered."""
    _, small = create_api_key(world.store, "acme", scopes=("infer",), tpm_limit=100)
    world.keys["acme-small"] = small
    with ExitStack() as stack:
        server = world.serve(stack)
        client = world.client(stack, server, "acme-small")
        refused = httpx.post(
            server.base_url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {small}"},
            json=json.loads(chat_line("x", "hi", max_tokens=200))["body"],
        )
        assert refused.status_code == 429 and refused.headers["x-should-retry"] == "false"
        lines = [chat_line("ok", "hi"), chat_line("huge", "hi", max_tokens=200)]
        made = client.batches.create(
            input_file_id=upload(client, lines), endpoint="/v1/chat/completions",
            completion_window="24h",
        )  # fmt: skip
        started = time.monotonic()
        batch = wait(client, made.id)
        assert time.monotonic() - started < 10
        assert batch.status == "completed" and batch.request_counts is not None
        assert (batch.request_counts.completed, batch.request_counts.failed) == (1, 1)
        [line] = lines_of(client, batch.error_file_id)
    assert line["custom_id"] == "huge" and line["response"]["status_code"] == 429
    assert line["response"]["body"]["error"]["code"] == "rate_limit_exceeded"


def test_cancel_stops_taking_lines_and_keeps_what_finished(world: World) -> None:
    engine = Counting(delay_s=0.05)
    settings = BatchSettings(poll_s=0.05, commit_s=0.05, lease_s=3.0, concurrency=2)
    with ExitStack() as stack:
        server = world.serve(stack, engine, settings)
        client = world.client(stack, server, "acme")
        lines = [chat_line(f"q{i}", "one two three four five six") for i in range(40)]
        file_id = upload(client, lines)
        made = client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        running = wait(client, made.id, ("in_progress", *ENDED))
        while running.request_counts is not None and running.request_counts.completed < 2:
            running = client.batches.retrieve(made.id)
        assert running.status == "in_progress"
        with pytest.raises(openai.ConflictError):  # the input of a batch still running
            client.files.delete(file_id)
        cancelling = client.batches.cancel(made.id)
        assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
        batch = wait(client, made.id)
        assert batch.status == "cancelled" and batch.cancelled_at is not None
        assert batch.request_counts is not None
        done = batch.request_counts.completed
        assert 2 <= done < 40 and batch.request_counts.total == 40
        assert len(lines_of(client, batch.output_file_id)) == done
        assert len(engine.asked) == done  # nothing in flight was dropped unanswered
        never = lines_of(client, batch.error_file_id)  # as OpenAI writes the lines not run
        assert len(never) == 40 - done and batch.request_counts.failed == 0
        assert [x["custom_id"] for x in never] == [f"q{i}" for i in range(done, 40)]
        assert {x["error"]["code"] for x in never} == {"batch_cancelled"}
        assert all(x["response"] is None and x["id"].startswith("batch_req_") for x in never)
        with pytest.raises(openai.ConflictError):
            client.batches.cancel(made.id)


def test_a_stopped_server_leaves_the_batch_to_another_that_answers_each_line_once(
    world: World,
) -> None:
    settings = BatchSettings(poll_s=0.05, commit_s=0.05, lease_s=3.0, concurrency=2)
    lines = [chat_line(f"q{i}", f"w{i} a b c d e") for i in range(30)]
    first = Counting(delay_s=0.03)
    with ExitStack() as stack:
        server = world.serve(stack, first, settings)
        client = world.client(stack, server, "acme")
        made = client.batches.create(
            input_file_id=upload(client, lines), endpoint="/v1/chat/completions",
            completion_window="24h",
        )  # fmt: skip
        running = wait(client, made.id, ("in_progress", *ENDED))
        while running.request_counts is not None and running.request_counts.completed < 4:
            running = client.batches.retrieve(made.id)
        assert running.status == "in_progress"
    kept = world.store.done_lines(made.id)  # committed by the first server
    assert 4 <= len(kept) < 30
    second = Counting()
    with ExitStack() as stack:
        server = world.serve(stack, second, settings)
        client = world.client(stack, server, "acme")
        batch = wait(client, made.id)
        assert batch.status == "completed" and batch.request_counts is not None
        assert batch.request_counts.model_dump() == {"total": 30, "completed": 30, "failed": 0}
        output = lines_of(client, batch.output_file_id)
    assert sorted(x["custom_id"] for x in output) == sorted(f"q{i}" for i in range(30))
    assert len(second.asked) == 30 - len(kept)  # no committed line asked again
    records = world.store.query_records(job_id=made.id, limit=None)
    assert len(records) == 30 and len({r["id"] for r in records}) == 30


def test_a_batch_a_dead_server_held_is_taken_over_once_its_lease_expires(
    world: World,
) -> None:
    keeper = FileKeeper(world.store, world.artifacts)
    source = keeper.save(
        "acme", io.BytesIO((chat_line("a", "hi") + "\n").encode()), filename="in.jsonl",
        purpose="batch", api_key_id=None,
    )  # fmt: skip
    key_id = world.keys["acme"].split("_")[1]
    made = world.store.create_batch(
        "acme", api_key_id=key_id, endpoint="/v1/chat/completions", input_file_id=source.id,
        completion_window="24h", window=timedelta(hours=24), metadata=None,
    )  # fmt: skip
    assert world.store.acquire_lease(made.lease, "a-replica-that-died", 1.5)
    held_until = time.monotonic() + 1.5
    with ExitStack() as stack:
        server = world.serve(stack)
        client = world.client(stack, server, "acme")
        batch = wait(client, made.id)
        assert batch.status == "completed"
        assert time.monotonic() >= held_until  # not before the lease expired
    assert world.store.lease_holder(made.lease) is None  # given back at the end


def test_tenants_take_turns_a_tenant_s_many_batches_do_not_hold_up_another_s(
    world: World,
) -> None:
    """A free slot goes to the tenant with the fewest batches running: globex's one batch,
    created after acme's three, runs before acme's third (it used to wait for all of
    acme's)."""
    settings = BatchSettings(poll_s=0.05, commit_s=0.05, lease_s=3.0, concurrency=2,
                             max_running=2)  # fmt: skip
    with ExitStack() as stack:
        server = world.serve(stack, Counting(delay_s=0.05), settings)
        acme, globex = world.client(stack, server, "acme"), world.client(stack, server, "globex")
        words = "one two three four five six"
        short, long = (upload(acme, [chat_line(f"q{i}", words) for i in range(n)]) for n in (2, 24))
        theirs = upload(globex, [chat_line("q", "one two", model="globex-support")])
        order = ((acme, short), (acme, long), (acme, short), (globex, theirs))
        made = [
            client.batches.create(
                input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
            ).id
            for client, file_id in order
        ]
        for batch_id, (client, _) in zip(made, order, strict=True):
            assert wait(client, batch_id).status == "completed"
    started = {b: world.store.batch(b).times["in_progress"] for b in made}
    assert started[made[3]] < started[made[2]], "globex waited for all of acme's batches"


def test_a_batch_past_its_window_ends_expired_with_what_finished(world: World) -> None:
    settings = BatchSettings(poll_s=0.05, commit_s=0.05, lease_s=3.0, concurrency=2)
    with ExitStack() as stack:
        server = world.serve(stack, Counting(delay_s=0.05), settings)
        client = world.client(stack, server, "acme")
        lines = [chat_line(f"q{i}", "one two three four five six") for i in range(40)]
        made = client.batches.create(
            input_file_id=upload(client, lines), endpoint="/v1/chat/completions",
            completion_window="24h",
        )  # fmt: skip
        running = wait(client, made.id, ("in_progress", *ENDED))
        while running.request_counts is not None and running.request_counts.completed < 2:
            running = client.batches.retrieve(made.id)
        with world.store._engine.begin() as conn:  # its 24 hours are over
            conn.execute(
                text("UPDATE batches SET expires_at = :t WHERE id = :id"),
                {"t": datetime.now(UTC) - timedelta(seconds=1), "id": made.id},
            )
        batch = wait(client, made.id)
        assert batch.status == "expired" and batch.expired_at is not None
        assert batch.request_counts is not None
        done = batch.request_counts.completed
        assert 2 <= done < 40
        assert len(lines_of(client, batch.output_file_id)) == done
        never = lines_of(client, batch.error_file_id)
        assert [x["custom_id"] for x in never] == [f"q{i}" for i in range(done, 40)]
        assert {x["error"]["code"] for x in never} == {"batch_expired"}
        assert "completion window expired" in never[0]["error"]["message"]
        assert {x["response"] is None for x in never} == {True}


def test_a_responses_batch(world: World) -> None:
    with ExitStack() as stack:
        server = world.serve(stack)
        client = world.client(stack, server, "acme")
        line = {
            "custom_id": "r1", "method": "POST", "url": "/v1/responses",
            "body": {"model": "acme-support", "input": "hello responses", "max_output_tokens": 8},
        }  # fmt: skip
        made = client.batches.create(
            input_file_id=upload(client, [json.dumps(line)]), endpoint="/v1/responses",
            completion_window="24h",
        )  # fmt: skip
        batch = wait(client, made.id)
        assert batch.status == "completed"
        [answer] = lines_of(client, batch.output_file_id)
        assert answer["response"]["body"]["object"] == "response"


DOC = (Path(__file__).resolve().parents[1] / "docs" / "batch.md").read_text()


def test_the_docs_sdk_example_runs(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    section = DOC.split("### Example: a batch with the `openai` SDK")[1]
    code = section.split("```python\n")[1].split("```")[0]
    with ExitStack() as stack:
        server = world.serve(stack)
        monkeypatch.setenv("MODELYARD_URL", server.base_url)
        monkeypatch.setenv("MODELYARD_API_KEY", world.keys["acme"])
        exec(compile(code, "docs/batch.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("completed")
    assert "total=2" in printed[0] and "completed=2" in printed[0] and "failed=0" in printed[0]
    assert [p.split()[0] for p in printed[1:]] == ["ticket-1", "ticket-2"]


def _stored_batch(world: World, lines: list[str]) -> Any:
    """A batch of acme's key made in the store, as a server's create would."""
    source = FileKeeper(world.store, world.artifacts).save(
        "acme", io.BytesIO(("\n".join(lines) + "\n").encode()), filename="in.jsonl",
        purpose="batch", api_key_id=None,
    )  # fmt: skip
    return world.store.create_batch(
        "acme", api_key_id=world.keys["acme"].split("_")[1], endpoint="/v1/chat/completions",
        input_file_id=source.id, completion_window="24h", window=timedelta(hours=24),
        metadata=None,
    )  # fmt: skip


def test_a_revoked_key_s_batch_answers_each_line_401(world: World) -> None:
    made = _stored_batch(world, [chat_line("a", "hi"), chat_line("b", "ho")])
    world.store.revoke_api_key(made.api_key_id)
    with ExitStack() as stack:
        server = world.serve(stack)
        world.keys["acme"] = world.keys["acme-limited"]  # the revoked key reads nothing
        client = world.client(stack, server, "acme")
        batch = wait(client, made.id)
        assert batch.status == "completed" and batch.output_file_id is None
        refused = lines_of(client, batch.error_file_id)
    assert [x["response"]["status_code"] for x in refused] == [401, 401]
    assert "revoked" in refused[0]["response"]["body"]["error"]["message"]
    assert world.store.query_records(job_id=made.id, limit=None) == []


def test_a_rotated_key_s_batch_goes_on_as_its_successor_unless_that_is_revoked(
    world: World,
) -> None:
    """A rotation replaces a key by one of the same tenant, scopes and limits: the batch the
    old key made is answered as the newest key of the chain once the old one's grace is
    over (the records say which), and stops when the successor is revoked. One the old key
    made after it was rotated (in its grace: a leaked key being rotated out) ends with it."""
    first = world.keys["acme"]
    made = _stored_batch(world, [chat_line("a", "hi"), chat_line("b", "ho")])
    second, _ = rotate_api_key(world.store, made.api_key_id, grace=timedelta(0))
    third, full = rotate_api_key(world.store, second.id, grace=timedelta(0))
    world.keys["acme"] = full  # the old keys read nothing: they have expired
    with ExitStack() as stack:
        client = world.client(stack, world.serve(stack), "acme")
        batch = wait(client, made.id)
        assert batch.status == "completed" and batch.error_file_id is None, batch
        answered = lines_of(client, batch.output_file_id)
    assert [x["response"]["status_code"] for x in answered] == [200, 200]
    records = world.store.query_records(job_id=made.id, limit=None)
    assert [r["api_key_id"] for r in records] == [third.id, third.id]

    # made by the first key after it was rotated (in its grace, say): it ends with that key
    world.keys["acme"] = first
    late = _stored_batch(world, [chat_line("l", "late")])
    world.keys["acme"] = full
    with ExitStack() as stack:
        client = world.client(stack, world.serve(stack), "acme")
        batch = wait(client, late.id)
        refused = lines_of(client, batch.error_file_id)
    assert [x["response"]["status_code"] for x in refused] == [401]
    assert "the API key that created this batch has expired" in str(refused[0])

    other = create_api_key(world.store, "acme", scopes=("infer",))[1]  # a chain of its own
    world.keys["acme"] = other
    again = _stored_batch(world, [chat_line("c", "hey")])
    successor, _ = rotate_api_key(world.store, again.api_key_id, grace=timedelta(0))
    world.store.revoke_api_key(successor.id)
    world.keys["acme"] = world.keys["acme-limited"]
    with ExitStack() as stack:
        client = world.client(stack, world.serve(stack), "acme")
        batch = wait(client, again.id)
        refused = lines_of(client, batch.error_file_id)
    assert [x["response"]["status_code"] for x in refused] == [401]
    assert refused[0]["response"]["body"]["error"]["message"].startswith(
        f"the API key {successor.id} that replaced the one that created this batch was revoked."
    )


def test_a_batch_whose_input_is_gone_fails_naming_it_instead_of_retrying_forever(
    world: World,
) -> None:
    """A batch whose input file is gone (deleted by a tool that skips the Files API) ends
    ``failed`` with the reason; it used to stay ``validating``, taken up and dropped
    again every second, a warning each time."""
    made = _stored_batch(world, [chat_line("a", "hi")])
    world.store.delete_file("acme", made.input_file_id)
    with ExitStack() as stack:
        server = world.serve(stack)
        client = world.client(stack, server, "acme")
        batch = wait(client, made.id, ENDED, timeout_s=5)
    assert batch.status == "failed" and batch.errors is not None and batch.errors.data
    [error] = batch.errors.data
    assert error.code == "invalid_file" and error.param == "input_file_id"
    assert made.input_file_id in str(error.message)


def test_a_file_cannot_be_deleted_from_under_a_batch_being_created(world: World) -> None:
    """The check that a file is no running batch's input and its delete are one
    transaction on the file's row, which creating a batch holds: a batch is never made
    from a deleted file, nor its input deleted by whoever skips the API's check."""
    keeper = FileKeeper(world.store, world.artifacts)
    made = _stored_batch(world, [chat_line("a", "hi")])
    with pytest.raises(Conflict, match=f"input of batch {made.id}"):
        keeper.delete("acme", made.input_file_id)
    assert world.store.get_file("acme", made.input_file_id).id == made.input_file_id
    gone = keeper.save(
        "acme", io.BytesIO(b"{}"), filename="b.jsonl", purpose="batch", api_key_id=None
    )
    keeper.delete("acme", gone.id)
    with pytest.raises(NotFound, match=gone.id):
        world.store.create_batch(
            "acme", api_key_id="k", endpoint="/v1/chat/completions", input_file_id=gone.id,
            completion_window="24h", window=timedelta(hours=24), metadata=None,
        )  # fmt: skip
    with pytest.raises(NotFound):  # nor from another tenant's file
        world.store.create_batch(
            "globex", api_key_id="k", endpoint="/v1/chat/completions",
            input_file_id=made.input_file_id, completion_window="24h",
            window=timedelta(hours=24), metadata=None,
        )  # fmt: skip


def test_a_batch_whose_input_bytes_are_missing_fails_and_tells_the_operator_why(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """Bytes missing from the artifact store (a replica's own disk, not one they share):
    the batch fails naming the file, and the log says what to fix."""
    made = _stored_batch(world, [chat_line("a", "hi")])
    world.artifacts.delete(world.store.get_file("acme", made.input_file_id).digest)
    with ExitStack() as stack:
        server = world.serve(stack)
        client = world.client(stack, server, "acme")
        batch = wait(client, made.id, ENDED, timeout_s=5)
    assert batch.status == "failed" and batch.errors is not None and batch.errors.data
    assert batch.errors.data[0].code == "invalid_file"
    assert "the artifact store must be one they share" in caplog.text


def test_a_batch_another_server_finished_is_left_as_it_is(world: World) -> None:
    made = _stored_batch(world, [chat_line("a", "hi")])
    assert world.store.acquire_lease(made.lease, "other", 5.0)
    world.store.start_batch(made.id, "other", total=1, errors=[])
    done = world.store.finish_batch(made.id, "other", "completed", [])
    world.store.release_lease(made.lease, "other")
    with ExitStack() as stack:  # this server listed it still running, then took the lease
        app = create_app(
            world.store, EchoEngine(), heartbeat_s=None, artifacts=world.artifacts,
            batches=FAST,
        )  # fmt: skip
        stack.callback(app.state.plane.writer.close)  # the app is never served: no lifespan
        worker = app.state.batch_worker
        assert world.store.acquire_lease(made.lease, worker.holder, 5.0)
        stack.callback(world.store.release_lease, made.lease, worker.holder)
        asyncio.run(BatchRun(worker, made.id).run())
    assert world.store.batch(made.id) == done


class Held(EchoEngine):
    """The echo engine, holding each request until the test lets it go: a live one (its
    prompt says ``LIVEREQ``) until ``live_go`` is set, a batch's line until ``batch_go``
    gives it a turn. Counts the batch's lines held at once while a live one is."""

    def __init__(self) -> None:
        super().__init__()
        self.live_go, self.batch_go = threading.Event(), threading.Semaphore(0)
        self.live_now = self.batch_now = self.batch_started = self.batch_peak_beside_live = 0
        self._lock = threading.Lock()

    def stream(self, version: ModelVersion, prompt: str, params: SamplingParams) -> TokenStream:
        live = "LIVEREQ" in prompt
        with self._lock:
            if live:
                self.live_now += 1
            else:
                self.batch_now += 1
                self.batch_started += 1
            if self.live_now:
                self.batch_peak_beside_live = max(self.batch_peak_beside_live, self.batch_now)
        try:
            assert self.live_go.wait(20) if live else self.batch_go.acquire(timeout=20)
        finally:
            with self._lock:
                if live:
                    self.live_now -= 1
                else:
                    self.batch_now -= 1
        return super().stream(version, prompt, params)


def test_a_batch_yields_to_live_requests_and_takes_its_concurrency_back_after(
    world: World,
) -> None:
    """While a client's request is in flight, a batch starts at most --batch-concurrency-busy
    lines at once; once live traffic stops, --batch-concurrency again."""
    engine = Held()
    settings = replace(FAST, concurrency=4, concurrency_busy=1)
    with ExitStack() as stack:
        server = world.serve(stack, engine, settings)
        client = world.client(stack, server, "acme")
        answers: list[str | None] = []

        def live() -> None:
            reply = client.chat.completions.create(
                model="acme-support", messages=[{"role": "user", "content": "LIVEREQ now"}]
            )
            answers.append(reply.choices[0].message.content)

        asking = threading.Thread(target=live)
        asking.start()
        stack.callback(asking.join, 30)
        stack.callback(engine.live_go.set)  # never left hanging, whatever fails
        until("the live request in the engine", lambda: engine.live_now == 1, timeout_s=20)
        lines = [chat_line(f"c{i}", f"line {i}") for i in range(12)]
        batch = client.batches.create(
            input_file_id=upload(client, lines), endpoint="/v1/chat/completions",
            completion_window="24h",
        )  # fmt: skip
        until("a batch line started", lambda: engine.batch_started >= 1, timeout_s=20)
        time.sleep(0.3)  # what would start beside it has had the time to
        for turn in range(1, 5):  # one line at a time beside the live request
            # (B023: until calls the lambda before the loop goes on, with this turn)
            until(f"{turn} lines started", lambda: engine.batch_started >= turn, timeout_s=20)  # noqa: B023
            engine.batch_go.release()
        until("one batch line held", lambda: engine.batch_now == 1, timeout_s=20)
        engine.live_go.set()
        asking.join(20)
        assert len(answers) == 1  # answered
        # the replica idle of live traffic: all of it
        until("four batch lines held", lambda: engine.batch_now == 4, timeout_s=20)
        assert engine.batch_peak_beside_live == 1
        for _ in range(12):
            engine.batch_go.release()
        done = wait(client, batch.id)
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (12, 0)


def test_requests_refused_without_a_key_do_not_hold_a_batch_back(world: World) -> None:
    """A request answered 401 asked no model: a flood of them, three clients at once,
    leaves the batch its whole --batch-concurrency (each used to count as live traffic
    while in flight and for the quiet time after it, holding the batch at
    --batch-concurrency-busy). Nor does one without a key whose body is still coming (a
    slow client, or one that never sends it). A request counts as live from its admission
    on."""
    engine = Held()
    settings = replace(FAST, concurrency=4, concurrency_busy=1)
    with ExitStack() as stack:
        server = world.serve(stack, engine, settings)
        client = world.client(stack, server, "acme")
        stack.callback(lambda: [engine.batch_go.release() for _ in range(8)])
        stop = threading.Event()
        refused: list[int] = []

        def flood() -> None:
            with httpx.Client(base_url=server.base_url) as anyone:
                while not stop.is_set():
                    answer = anyone.post("/v1/chat/completions", json={"model": "x"},
                                         headers={"Authorization": "Bearer nope"})  # fmt: skip
                    refused.append(answer.status_code)

        flooding = [threading.Thread(target=flood) for _ in range(3)]
        for thread in flooding:
            thread.start()
            stack.callback(thread.join, 30)
        stack.callback(stop.set)
        until("the flood going", lambda: len(refused) >= 5, timeout_s=20)
        host, port = server.base_url.removeprefix("http://").split(":")
        slow = stack.enter_context(socket.create_connection((host, int(port)), timeout=10))
        slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100"
                     b"\r\nContent-Type: application/json\r\n\r\n{")  # and no more  # fmt: skip
        lines = [chat_line(f"c{i}", f"line {i}") for i in range(8)]
        batch = client.batches.create(
            input_file_id=upload(client, lines), endpoint="/v1/chat/completions",
            completion_window="24h",
        )  # fmt: skip
        until("four batch lines held beside the flood", lambda: engine.batch_now == 4,
              timeout_s=20)  # fmt: skip
        stop.set()
        assert set(refused) == {401}
        for _ in range(8):
            engine.batch_go.release()
        done = wait(client, batch.id)
    assert done.status == "completed"


def test_the_busy_concurrency_is_1_to_the_concurrency() -> None:
    for busy in (0, 5):
        with pytest.raises(ConfigError, match="--batch-concurrency-busy"):
            BatchSettings(concurrency=4, concurrency_busy=busy)
    assert BatchSettings(concurrency=4, concurrency_busy=4).concurrency_busy == 4


def test_the_quiet_time_runs_from_the_last_answer_whichever_request_ends_last() -> None:
    """A live answer's quiet time is kept when a request refused after its admission ends
    after it (it used to be set only by whichever request ended last)."""
    live = LiveTraffic()
    live.begin()
    live.begin()
    live.end(quiet=True)  # a client's answer
    live.end(quiet=False)  # a bad body, refused after its admission
    assert 0 < live.busy_for(2.0) <= 2.0
