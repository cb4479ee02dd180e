"""A security review of tenants' files and batches over real HTTP (the official ``openai``
SDK): what one tenant's requests may learn of the server, and what they may cost it.

- An error of the artifact store (a file's bytes gone, a store that cannot be written)
  reaches the tenant without the server's paths or the store's location: those are for
  the operator's log (as a store error says nothing of the store).
- Reading a file's bytes (each read hashes up to ``--max-file-bytes`` on the worker
  threads every tenant's requests share) runs in the tenant's slots, as its prompts are
  tokenized: 40 reads at once of a 100 MiB file by one tenant, each dropped once its
  headers came, took another tenant's chat p50 from 19 ms to 1.6 s (max 8.4 s).
"""

from __future__ import annotations

import io
import json
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from modelyard.access import create_api_key
from modelyard.artifacts import LocalArtifactStore
from modelyard.serving import (
    BackgroundServer,
    BatchSettings,
    EchoEngine,
    ServerLimits,
    create_app,
)
from modelyard.store import Store
from waiting import until
from worlds import two_tenant_world

FAST = BatchSettings(poll_s=0.05, commit_s=0.05, lease_s=3.0, concurrency=2)
LINE = {
    "custom_id": "a",
    "method": "POST",
    "url": "/v1/chat/completions",
    "body": {"model": "acme-support", "messages": [{"role": "user", "content": "hi"}]},
}
DATA = (json.dumps(LINE) + "\n").encode()


@dataclass
class Served:
    tmp: Path
    store: Store
    artifacts: LocalArtifactStore
    acme: openai.OpenAI
    limited: openai.OpenAI  # acme's key of 2 requests/min


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with Store.open(f"sqlite:///{tmp_path}/s.db") as store, ExitStack() as stack:
        two_tenant_world(store, versions=1)
        artifacts = LocalArtifactStore(tmp_path / "artifacts")
        app = create_app(
            store, EchoEngine(), refresh_seconds=0.1, heartbeat_s=None, artifacts=artifacts,
            batches=FAST,
        )  # fmt: skip
        server = stack.enter_context(BackgroundServer(app))

        def client(rpm: int | None = None) -> openai.OpenAI:
            key = create_api_key(store, "acme", scopes=("infer",), rpm_limit=rpm)[1]
            made = openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0)
            return stack.enter_context(made)

        yield Served(tmp_path, store, artifacts, client(), client(rpm=2))


def _said(exc: openai.APIStatusError) -> str:
    """Everything the error's answer told the client."""
    return exc.response.text


def test_a_file_whose_bytes_are_gone_names_no_server_path(served: Served) -> None:
    made = served.acme.files.create(file=("in.jsonl", io.BytesIO(DATA)), purpose="batch")
    shutil.rmtree(served.artifacts.root / "sha256")  # the bytes gone (a replica's own disk)
    with pytest.raises(openai.APIStatusError) as info:
        served.acme.files.content(made.id)
    body = _said(info.value)
    assert info.value.status_code == 404
    assert str(served.tmp) not in body and "MODELYARD_ARTIFACTS" not in body
    assert made.id in body  # it says which file cannot be read


def test_a_batch_whose_input_bytes_are_gone_names_no_server_path(served: Served) -> None:
    made = served.acme.files.create(file=("in.jsonl", io.BytesIO(DATA)), purpose="batch")
    shutil.rmtree(served.artifacts.root / "sha256")
    batch = served.acme.batches.create(
        input_file_id=made.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    deadline = time.monotonic() + 10
    while (batch := served.acme.batches.retrieve(batch.id)).status == "validating":
        assert time.monotonic() < deadline, "the batch was never taken up"
        time.sleep(0.05)
    assert batch.status == "failed" and batch.errors is not None and batch.errors.data
    said = batch.errors.data[0].message or ""
    assert batch.errors.data[0].code == "invalid_file" and made.id in said
    assert str(served.tmp) not in said and "MODELYARD_ARTIFACTS" not in said


def test_an_upload_the_artifact_store_cannot_keep_names_no_server_path(served: Served) -> None:
    root = served.artifacts.root
    root.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(root / "sha256", ignore_errors=True)
    (root / "sha256").write_text("not a directory")  # every store of bytes fails
    with pytest.raises(openai.APIStatusError) as info:
        served.acme.files.create(file=("in.jsonl", io.BytesIO(DATA)), purpose="batch")
    body = _said(info.value)
    assert info.value.status_code == 500
    assert str(served.tmp) not in body and "MODELYARD_ARTIFACTS" not in body
    assert served.acme.files.list().data == []  # and no file was made


class SlowReads(LocalArtifactStore):
    """Reads (``open_verified``: every byte hashed) of ``held`` digests wait for ``go``;
    counts how many run at once."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.held: set[str] = set()
        self.go = threading.Event()
        self.lock = threading.Lock()
        self.now = self.most = 0

    def open_verified(self, digest: str) -> Path:
        if digest not in self.held:
            return super().open_verified(digest)
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            self.go.wait(30)
            return super().open_verified(digest)
        finally:
            with self.lock:
                self.now -= 1


def test_a_tenant_s_file_reads_take_its_slots_not_every_worker_thread(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path}/s.db") as store, ExitStack() as stack:
        two_tenant_world(store, versions=1)
        artifacts = SlowReads(tmp_path / "artifacts")
        limits = ServerLimits(tokenize_concurrency=2)
        app = create_app(store, EchoEngine(), refresh_seconds=0.1, heartbeat_s=None,
                         artifacts=artifacts, limits=limits)  # fmt: skip
        server = stack.enter_context(BackgroundServer(app))

        def client(tenant: str) -> openai.OpenAI:
            key = create_api_key(store, tenant, scopes=("infer",))[1]
            made = openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0)
            return stack.enter_context(made)

        acme, globex = client("acme"), client("globex")
        theirs = acme.files.create(file=("a.jsonl", io.BytesIO(DATA)), purpose="batch")
        mine = globex.files.create(file=("g.jsonl", io.BytesIO(DATA)), purpose="batch")
        artifacts.held.add(store.get_file("acme", theirs.id).digest)
        with ThreadPoolExecutor(8) as pool:
            reads = [pool.submit(acme.files.content, theirs.id) for _ in range(8)]
            until("acme's reads hash its file", lambda: artifacts.now >= 2, timeout_s=10)
            time.sleep(0.5)  # time for more to start, were they let
            assert artifacts.most == 2  # the rest wait on the event loop, holding no thread
            assert globex.files.content(mine.id).content == DATA  # another tenant's own slots
            artifacts.go.set()
            assert [r.result(timeout=30).content for r in reads] == [DATA] * 8
        assert artifacts.most == 2
