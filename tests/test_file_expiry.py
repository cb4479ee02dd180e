"""Files expire as OpenAI's do: ``expires_after`` on an upload (30 days for batch files
unless told), ``output_expires_after`` on a batch for its output and error files; a file
whose time is up is not found, and servers delete it and its bytes, but not the input of
a batch not finished."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import openai
import pytest
from sqlalchemy import update

from modelyard.serving import _batch_runner
from modelyard.serving._files import FileKeeper
from modelyard.store import Store
from modelyard.store._batches import BatchRow
from modelyard.store._files import FileRow
from test_openai_batches import World, batch_world, chat_line, upload, wait

DAY = 24 * 3600


@pytest.fixture
def world(tmp_path: Path, store_url: str) -> Iterator[World]:
    """The batch tests' world: two tenants' endpoints and keys, on SQLite and PostgreSQL."""
    yield from batch_world(tmp_path, store_url)


def _expire(store: Store, file_id: str) -> None:
    """Make the file's time up, as if its lifetime had passed."""
    with store._engine.begin() as conn:
        conn.execute(
            update(FileRow)
            .where(FileRow.id == file_id)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )


def test_an_upload_expires_after_30_days_or_as_it_says(world: World) -> None:
    with ExitStack() as stack:
        client = world.client(stack, world.serve(stack), "acme")
        plain = client.files.create(file=("a.jsonl", io.BytesIO(b"{}\n")), purpose="batch")
        assert plain.expires_at == plain.created_at + 30 * DAY
        soon = client.files.create(
            file=("b.jsonl", io.BytesIO(b"{}\n")), purpose="batch",
            expires_after={"anchor": "created_at", "seconds": 3600},
        )  # fmt: skip
        assert soon.expires_at == soon.created_at + 3600
        assert client.files.retrieve(soon.id).expires_at == soon.expires_at


@pytest.mark.parametrize(
    ("policy", "param", "words"),
    [
        ({"anchor": "created_at", "seconds": 60}, "expires_after.seconds", "3600 (an hour)"),
        ({"anchor": "created_at", "seconds": 31 * DAY}, "expires_after.seconds", "30 days"),
        ({"anchor": "last_active_at", "seconds": 3600}, "expires_after.anchor", "created_at"),
    ],
)
def test_an_expiry_outside_openai_s_bounds_is_a_400_naming_it(
    world: World, policy: dict[str, Any], param: str, words: str
) -> None:
    with ExitStack() as stack:
        client = world.client(stack, world.serve(stack), "acme")
        with pytest.raises(openai.BadRequestError) as info:
            client.files.create(
                file=("a.jsonl", io.BytesIO(b"{}\n")), purpose="batch", expires_after=policy
            )  # type: ignore[arg-type]
        assert isinstance(info.value.body, dict) and info.value.body["param"] == param
        assert words in info.value.body["message"]
        assert world.store.list_files("acme")[0] == []


def test_an_expired_file_is_not_found_and_servers_delete_it_with_its_bytes(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_batch_runner, "PURGE_EVERY_S", 0.1)
    with ExitStack() as stack:
        client = world.client(stack, world.serve(stack), "acme")
        gone = client.files.create(file=("a.jsonl", io.BytesIO(b"1\n")), purpose="batch")
        kept = client.files.create(file=("b.jsonl", io.BytesIO(b"2\n")), purpose="batch")
        _expire(world.store, gone.id)
        for ask in (client.files.retrieve, client.files.content):
            with pytest.raises(openai.NotFoundError):
                ask(gone.id)
        assert [f.id for f in client.files.list()] == [kept.id]
        with pytest.raises(openai.NotFoundError):  # nor can a batch read it
            client.batches.create(
                input_file_id=gone.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        deadline = time.monotonic() + 20
        while len(world.artifacts.digests()) > 1:  # the server deletes it, bytes and all
            assert time.monotonic() < deadline, "the expired file's bytes are still there"
            time.sleep(0.05)
        assert world.store.file_digests() == {world.store.get_file("acme", kept.id).digest}
        assert client.files.content(kept.id).content == b"2\n"


def test_a_batch_s_input_is_deleted_only_once_the_batch_ends(world: World) -> None:
    files = FileKeeper(world.store, world.artifacts)
    source = files.save("acme", io.BytesIO(chat_line("a", "hi").encode()), filename="in.jsonl",
                        purpose="batch", api_key_id=None, expires_s=3600)  # fmt: skip
    other = files.save("acme", io.BytesIO(b"x\n"), filename="x.jsonl", purpose="batch",
                       api_key_id=None, expires_s=3600)  # fmt: skip
    batch = world.store.create_batch(
        "acme", api_key_id="k", endpoint="/v1/chat/completions", input_file_id=source.id,
        completion_window="24h", window=timedelta(hours=24), metadata=None,
    )  # fmt: skip
    _expire(world.store, source.id)
    _expire(world.store, other.id)
    assert files.purge_expired() == 1  # the other one: the batch still reads its input
    assert world.store.file_digests() == {source.digest}
    with world.store._engine.begin() as conn:  # the batch ends (as its runner ends it)
        conn.execute(update(BatchRow).where(BatchRow.id == batch.id).values(status="completed"))
    assert files.purge_expired() == 1
    assert world.store.file_digests() == set() and world.artifacts.digests() == []


def test_a_batch_s_output_expires_as_the_batch_says(world: World) -> None:
    with ExitStack() as stack:
        client = world.client(stack, world.serve(stack), "acme")
        file_id = upload(client, [chat_line("a", "hi")])
        made = client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h",
            output_expires_after={"anchor": "created_at", "seconds": 7200},
        )  # fmt: skip
        batch = wait(client, made.id)
        assert batch.status == "completed" and batch.output_file_id is not None
        output = client.files.retrieve(batch.output_file_id)
        assert output.expires_at is not None
        assert abs(output.expires_at - (output.created_at + 7200)) <= 1
        plain = client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        done = wait(client, plain.id)
        assert done.output_file_id is not None
        default = client.files.retrieve(done.output_file_id)
        assert default.expires_at is not None
        assert abs(default.expires_at - (default.created_at + 30 * DAY)) <= 1
        with pytest.raises(openai.BadRequestError) as info:
            client.batches.create(
                input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h",
                output_expires_after={"anchor": "created_at", "seconds": 10},
            )  # fmt: skip
        assert isinstance(info.value.body, dict)
        assert info.value.body["param"] == "output_expires_after.seconds"
