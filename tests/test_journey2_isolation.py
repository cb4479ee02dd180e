"""Journey 2, the ML engineer onboarding one more tenant: what another tenant's key cannot
reach or touch. A refused request that names another tenant's endpoint is the caller's
record, never filed under that endpoint, where its operator's records, feedback summary,
profiles and alerts would count it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from modelyard.access import create_api_key
from modelyard.serving import BackgroundServer, EchoEngine, create_app
from modelyard.store import InferenceRecord, Store
from worlds import two_tenant_world


@dataclass
class Served:
    store: Store
    url: str
    acme: str
    globex: str


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with Store.open(f"sqlite:///{tmp_path}/s.db") as store:
        two_tenant_world(store, versions=1)
        acme = create_api_key(store, "acme")[1]
        globex = create_api_key(store, "globex")[1]
        app = create_app(store, EchoEngine(), refresh_seconds=0.1)
        with BackgroundServer(app) as server:
            yield Served(store, server.base_url, acme, globex)


def _chat(served: Served, key: str, model: str) -> httpx.Response:
    return httpx.post(
        f"{served.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": model, "messages": [{"role": "user", "content": "hello"}]},
        timeout=30,
    )


def _records(store: Store, tenant: str, expected: int) -> list[InferenceRecord]:
    """``tenant``'s records once the writer has stored ``expected`` of them (5 s at most)."""
    deadline = time.monotonic() + 5
    while True:
        found = store.list_inference_records(tenant=tenant)
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_a_refusal_naming_another_tenants_endpoint_is_not_filed_under_it(
    served: Served,
) -> None:
    assert _chat(served, served.acme, "acme-support").status_code == 200
    foreign = _chat(served, served.globex, "acme-support")
    missing = _chat(served, served.globex, "no-such-endpoint")
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json()["error"]["code"] == missing.json()["error"]["code"] == "model_not_found"

    # the refusals are globex's records, filed under no endpoint; their errors name the model
    globex = _records(served.store, "globex", 2)
    assert sorted((r.endpoint_name, r.status, r.http_status) for r in globex) == [
        ("", "refused", 404),
        ("", "refused", 404),
    ]
    assert sorted(str(r.error).split("'")[1] for r in globex) == [
        "acme-support",
        "no-such-endpoint",
    ]
    # acme's endpoint holds acme's request only: its counts, feedback and alerts are acme's
    acme = _records(served.store, "acme", 1)
    assert [(r.endpoint_name, r.status) for r in acme] == [("acme-support", "ok")]
    assert served.store.count_inference_records(endpoint="acme-support") == 1
