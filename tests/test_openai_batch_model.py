"""An OpenAI batch object names its ``model``, the one model its input's lines name, once its
input is checked; a batch whose lines name several models (OpenAI refuses such a file; here
each line asks its own endpoint) has none: null. On SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from test_openai_batches import World, batch_world, chat_line, upload, wait


@pytest.fixture
def world(tmp_path: Path, store_url: str) -> Iterator[World]:
    """The batch tests' world: two tenants' endpoints and keys, on SQLite and PostgreSQL."""
    yield from batch_world(tmp_path, store_url)


def _raw(client: Any, batch_id: str) -> dict[str, Any]:
    found: dict[str, Any] = client.get(f"/batches/{batch_id}", cast_to=httpx.Response).json()
    return found


def test_a_batch_names_the_model_its_lines_ask(world: World) -> None:
    with ExitStack() as stack:
        server = world.serve(stack)
        client = world.client(stack, server, "acme")
        file_id = upload(client, [chat_line(f"q{i}", f"question {i}") for i in range(3)])
        made = client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        done = wait(client, made.id)
        assert done.status == "completed"
        assert done.model == "acme-support"
        assert _raw(client, made.id)["model"] == "acme-support"
        (listed,) = client.batches.list().data
        assert listed.id == made.id and listed.model == "acme-support"
    assert world.store.get_batch("acme", made.id).model == "acme-support"


def test_a_batch_whose_lines_name_several_models_names_none(world: World) -> None:
    with ExitStack() as stack:
        server = world.serve(stack)
        client = world.client(stack, server, "acme")
        lines = [chat_line("mine", "hello"), chat_line("theirs", "hi", model="globex-support")]
        made = client.batches.create(
            input_file_id=upload(client, lines), endpoint="/v1/chat/completions",
            completion_window="24h",
        )  # fmt: skip
        done = wait(client, made.id)
        assert done.status == "completed"
        assert (done.request_counts.completed, done.request_counts.failed) == (1, 1)
        raw = _raw(client, made.id)
        assert "model" in raw and raw["model"] is None
