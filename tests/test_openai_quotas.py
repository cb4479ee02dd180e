"""What one tenant may keep on a server through the Files and Batch APIs.

A tenant's files hold at most ``serve --max-tenant-file-bytes`` in all: an upload past
it is a 400 ``storage_limit_exceeded`` naming the limit, its bytes not kept; deleting
files makes room; another tenant is not affected. A tenant has at most
``--max-tenant-batches`` batches not finished: one more is a 429
``batch_limit_exceeded`` the SDK does not retry. Before, a tenant could fill the
artifact store with uploads of 200 MiB each, and queue batches, without end."""

from __future__ import annotations

import io
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest

from modelyard.access import create_api_key
from modelyard.artifacts import LocalArtifactStore
from modelyard.serving import (
    BackgroundServer,
    BatchSettings,
    EchoEngine,
    SamplingParams,
    create_app,
)
from modelyard.serving._stream import TokenStream
from modelyard.store import ModelVersion, Store
from waiting import until
from worlds import two_tenant_world

QUOTA = 1000


def test_a_tenant_s_uploads_stop_at_its_quota_and_deleting_makes_room(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path}/s.db") as store:
        two_tenant_world(store, versions=1)
        artifacts = LocalArtifactStore(tmp_path / "artifacts")
        app = create_app(store, EchoEngine(), refresh_seconds=0.1, artifacts=artifacts,
                         max_file_bytes=800, max_tenant_file_bytes=QUOTA)  # fmt: skip
        with BackgroundServer(app) as server:

            def client(tenant: str) -> openai.OpenAI:
                key = create_api_key(store, tenant)[1]
                return openai.OpenAI(base_url=server.base_url + "/v1", api_key=key,
                                     max_retries=0)  # fmt: skip

            acme, globex = client("acme"), client("globex")

            def upload(who: openai.OpenAI, size: int, name: str) -> str:
                data = io.BytesIO(b"x" * size)
                return who.files.create(file=(name, data), purpose="batch").id

            first = upload(acme, 600, "a.jsonl")
            with pytest.raises(openai.BadRequestError) as refused:
                upload(acme, 500, "b.jsonl")
            error = refused.value.body
            assert isinstance(error, dict)
            assert error["code"] == "storage_limit_exceeded" and error["param"] == "file"
            assert "600 bytes of files" in error["message"]
            assert f"limit of {QUOTA} bytes (--max-tenant-file-bytes)" in error["message"]
            assert len(artifacts.digests()) == 1  # the refused bytes were not kept
            assert [f.id for f in acme.files.list()] == [first]

            upload(globex, 600, "g.jsonl")  # another tenant's own room
            acme.files.delete(first)
            upload(acme, 500, "b.jsonl")  # room again
            assert store.file_bytes("acme") == 500


def test_an_upload_that_cannot_fit_is_refused_before_its_body_is_sent(tmp_path: Path) -> None:
    """A body declared larger than the tenant's room (framing aside) is refused from its
    headers: the client need not send, nor the server read, bytes it would throw away."""
    with Store.open(f"sqlite:///{tmp_path}/s.db") as store:
        two_tenant_world(store, versions=1)
        app = create_app(store, EchoEngine(), refresh_seconds=0.1,
                         artifacts=LocalArtifactStore(tmp_path / "artifacts"),
                         max_file_bytes=1_000_000, max_tenant_file_bytes=QUOTA)  # fmt: skip
        key = create_api_key(store, "acme")[1]
        with BackgroundServer(app) as server:
            host, port = server.base_url.removeprefix("http://").split(":")
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                sock.sendall(
                    b"POST /v1/files HTTP/1.1\r\nHost: x\r\n"
                    + f"Authorization: Bearer {key}\r\n".encode()
                    + b"Content-Type: multipart/form-data; boundary=b\r\n"
                    + b"Content-Length: 500000\r\n\r\n--b\r\n"  # and nothing more
                )
                answer = sock.recv(65536).decode()
    assert answer.startswith("HTTP/1.1 400 "), answer
    assert '"code":"storage_limit_exceeded"' in answer.replace(" ", "")
    assert store.file_bytes("acme") == 0


def test_uploads_and_batches_made_take_the_key_s_requests_per_minute(tmp_path: Path) -> None:
    """Uploading a file and making a batch ask no model but cost the server: each takes one
    of the key's requests/min, and past it the 429 says when to come back."""
    with Store.open(f"sqlite:///{tmp_path}/s.db") as store:
        two_tenant_world(store, versions=1)
        app = create_app(store, EchoEngine(), refresh_seconds=0.1,
                         artifacts=LocalArtifactStore(tmp_path / "artifacts"))  # fmt: skip
        key = create_api_key(store, "acme", rpm_limit=2)[1]
        with (
            BackgroundServer(app) as server,
            openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0) as acme,
        ):
            line = b'{"custom_id": "a", "method": "POST", "url": "/v1/completions", '
            line += b'"body": {"model": "acme-support", "prompt": "hi"}}\n'
            made = acme.files.create(file=("in.jsonl", io.BytesIO(line)), purpose="batch")
            acme.batches.create(input_file_id=made.id, endpoint="/v1/completions",
                                completion_window="24h")  # fmt: skip
            with pytest.raises(openai.RateLimitError) as refused:
                acme.files.create(file=("more.jsonl", io.BytesIO(line)), purpose="batch")
            assert isinstance(refused.value.body, dict)
            assert refused.value.body["code"] == "rate_limit_exceeded"
            assert int(refused.value.response.headers["retry-after"]) > 0
            assert [f.filename for f in acme.files.list()] == ["in.jsonl"]


class Held(EchoEngine):
    """The echo engine, holding every request until ``go`` is set: batches stay in
    progress meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.go = threading.Event()

        self.asked = 0

    def stream(self, version: ModelVersion, prompt: str, params: SamplingParams) -> TokenStream:
        self.asked += 1
        self.go.wait(60)
        return super().stream(version, prompt, params)


def test_a_tenant_s_unfinished_batches_stop_at_its_limit(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path}/s.db") as store:
        two_tenant_world(store, versions=1)
        artifacts = LocalArtifactStore(tmp_path / "artifacts")
        engine = Held()
        settings = BatchSettings(poll_s=0.05, commit_s=0.05, max_per_tenant=2)
        app = create_app(store, engine, refresh_seconds=0.1, artifacts=artifacts,
                         batches=settings)  # fmt: skip
        with BackgroundServer(app) as server, _letting_go(engine):

            def client(tenant: str) -> openai.OpenAI:
                key = create_api_key(store, tenant)[1]
                return openai.OpenAI(base_url=server.base_url + "/v1", api_key=key,
                                     max_retries=2)  # fmt: skip

            acme, globex = client("acme"), client("globex")

            def batch(who: openai.OpenAI, tenant: str = "acme") -> str:
                line = b'{"custom_id": "a", "method": "POST", "url": "/v1/completions", '
                line += b'"body": {"model": "%s-support", "prompt": "hi"}}\n' % tenant.encode()
                made = who.files.create(file=("in.jsonl", io.BytesIO(line)), purpose="batch")
                return who.batches.create(input_file_id=made.id, endpoint="/v1/completions",
                                          completion_window="24h").id  # fmt: skip

            first, _ = batch(acme), batch(acme)
            with pytest.raises(openai.RateLimitError) as refused:
                batch(acme)
            error = refused.value.body
            assert isinstance(error, dict) and error["code"] == "batch_limit_exceeded"
            assert "2 batches not finished" in error["message"]
            assert "--max-tenant-batches 2" in error["message"]
            assert refused.value.response.headers["x-should-retry"] == "false"
            assert len(store.list_batches("acme")[0]) == 2  # the SDK did not retry it in
            batch(globex, "globex")  # another tenant's own count
            # both in progress, held by the engine
            until("two batch lines in the engine", lambda: engine.asked >= 2, timeout_s=20)
            assert acme.batches.cancel(first).status == "cancelling"  # still not finished
            with pytest.raises(openai.RateLimitError):
                batch(acme)


@contextmanager
def _letting_go(engine: Held) -> Iterator[None]:
    try:
        yield
    finally:
        engine.go.set()  # before the server stops: its requests end


def test_an_upload_is_not_refused_for_tokens_it_does_not_ask(tmp_path: Path) -> None:
    """A key whose tokens bucket is in debt (answers longer than their admission counted)
    may still upload: an upload takes a request, no tokens."""
    with Store.open(f"sqlite:///{tmp_path}/s.db") as store:
        two_tenant_world(store, versions=1)
        app = create_app(store, EchoEngine(), refresh_seconds=0.1,
                         artifacts=LocalArtifactStore(tmp_path / "artifacts"))  # fmt: skip
        made, key = create_api_key(store, "acme", tpm_limit=100)
        limiter = app.state.plane.limiter
        limiter.settle(limiter.admit(made, 100), used_tokens=400)  # 300 tokens of debt
        with (
            BackgroundServer(app) as server,
            openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0) as acme,
        ):
            line = b'{"custom_id": "a", "method": "POST", "url": "/v1/completions", '
            line += b'"body": {"model": "acme-support", "prompt": "hi"}}\n'
            assert acme.files.create(file=("in.jsonl", io.BytesIO(line)), purpose="batch").id
