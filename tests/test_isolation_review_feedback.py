"""A security review of ``/v1/feedback`` over real HTTP (the official ``openai`` SDK's own
client): a tenant rates the answers it was given, and nothing else.

A shadow copy of a request (mirrored to the endpoint's shadow version, its answer recorded
and never returned) is recorded under the request's id with ``-shadow`` after it. The
tenant never saw that answer, yet feedback on ``<id>-shadow`` was taken (200, counted)
and went into the shadow version's feedback mean, which the report's shadow section and
the shadow's profiles show to the people deciding whether to promote it: a tenant could
sink (or lift) a candidate version blind. Such an id is now the 404 of an id that never
existed, as another tenant's is.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from modelyard.access import create_api_key
from modelyard.serving import BackgroundServer, EchoEngine, create_app
from modelyard.store import Store
from waiting import until
from worlds import two_tenant_world


@dataclass
class Served:
    store: Store
    acme: openai.OpenAI


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with Store.open(f"sqlite:///{tmp_path}/s.db") as store, ExitStack() as stack:
        two_tenant_world(store, versions=2)
        store.set_shadow("acme-support", 2, 1.0)  # every request mirrored to acme-bot:2
        app = create_app(store, EchoEngine(), refresh_seconds=0.1, heartbeat_s=None)
        server = stack.enter_context(BackgroundServer(app))
        key = create_api_key(store, "acme", scopes=("infer", "feedback"))[1]
        made = openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0)
        yield Served(store, stack.enter_context(made))


def _rate(client: openai.OpenAI, request_id: str) -> dict[str, Any]:
    reply = client.post(
        "/feedback",
        body={"request_id": request_id, "thumbs": "down"},
        cast_to=httpx.Response,
    )
    found: dict[str, Any] = reply.json()
    return found


def test_a_shadow_copy_s_answer_which_no_user_saw_cannot_be_rated(served: Served) -> None:
    answer = served.acme.chat.completions.create(
        model="acme-support", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    shadow_id = f"{answer.id}-shadow"
    until(
        "the shadow copy is recorded",
        lambda: any(r.id == shadow_id for r in served.store.list_inference_records()),
    )
    assert _rate(served.acme, answer.id)["counted"] is True  # its own answer: rated
    with pytest.raises(openai.NotFoundError) as shadow:
        _rate(served.acme, shadow_id)
    with pytest.raises(openai.NotFoundError) as missing:
        _rate(served.acme, f"{answer.id}-nothing")
    # the same answer as an id that never existed, but for the id itself
    said = shadow.value.response.json()["error"]
    never = missing.value.response.json()["error"]
    assert said["message"].replace(shadow_id, "ID") == never["message"].replace(
        f"{answer.id}-nothing", "ID"
    )
    assert (
        (said["code"], said["param"])
        == (never["code"], never["param"])
        == (
            "not_found",
            "request_id",
        )
    )
    rated = served.store.list_feedback()
    assert [(f.record_id, f.version) for f in rated] == [(answer.id, "acme-bot:1")]
