"""An upload sent to a server that began draining gets its ``503 shutting_down``.

The draining server answered on the request's headers alone and closed the connection:
an upload's bytes still coming then met a closed socket, whose reset threw away the 503
before the router relaying it had read it, so the client got the router's ``502 ... broke
off while the upload was sent`` (2 uploads of 4.6 MB in 2, through a router on this
machine), which says nothing of a drain or when to come back. The server now reads (and
drops) the body, up to ``DRAIN_DISCARD_BYTES``, before it answers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai

from modelyard.access import create_api_key
from modelyard.artifacts import LocalArtifactStore
from modelyard.routing import RouteOptions, create_route_app
from modelyard.serving import BackgroundServer, EchoEngine, create_app
from modelyard.serving._guard import DRAIN_DISCARD_BYTES
from modelyard.store import Store
from waiting import until
from worlds import fake_world


def test_an_upload_to_a_replica_that_began_draining_gets_its_503_through_the_router(
    tmp_path: Path,
) -> None:
    """Both replicas began draining since their last heartbeat (every 30 s): the one the
    router tries reads the whole upload, then refuses it; the router relays that 503
    (the bytes went out: no other replica can take them) with its Retry-After."""
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        fake_world(store, versions=1)
        _, key = create_api_key(store, "acme")
        artifacts = LocalArtifactStore(tmp_path / "artifacts")
        apps, replicas = [], []
        for _ in range(2):
            app = create_app(store, EchoEngine(), refresh_seconds=0.2, heartbeat_s=30,
                             artifacts=artifacts, max_file_bytes=8 << 20)  # fmt: skip
            server = BackgroundServer(app)
            app.state.agent.address = f"127.0.0.1:{server.port}"
            apps.append(app)
            replicas.append(server.start())
        router = BackgroundServer(create_route_app(store, RouteOptions(
            refresh_s=0.1, stale_after_s=60, max_body_bytes=1 << 20,
            max_file_bytes=8 << 20))).start()  # fmt: skip
        try:
            until("both replicas in the router", lambda: _live(router) == 2, timeout_s=15)
            for app in apps:
                app.state.drain.begin(30)
            body = b"".join(b'{"custom_id": "r%07d"}\n' % i for i in range(200_000))
            assert len(body) < DRAIN_DISCARD_BYTES  # 4.6 MB: more than the sockets buffer
            with openai.OpenAI(base_url=router.base_url + "/v1", api_key=key,
                               max_retries=0) as client:  # fmt: skip
                try:
                    client.files.create(file=("rows.jsonl", body), purpose="batch")
                    raise AssertionError("a draining server took the upload")
                except openai.APIStatusError as refused:
                    assert refused.status_code == 503, refused.message
                    assert refused.code == "shutting_down"
                    assert refused.response.headers.get("retry-after") == "1"
            assert store.list_files("acme") == ([], False)  # nothing kept of it
        finally:
            router.stop()
            for r in replicas:
                r.stop()


def _live(router: BackgroundServer) -> int:
    return int(httpx.get(f"{router.base_url}/ready", timeout=10).json()["replicas"])


def test_a_slow_upload_to_a_draining_server_reads_its_503(tmp_path: Path) -> None:
    """A client on a slow link: the server waits for its body (up to ``DRAIN_DISCARD_S``)
    before it refuses, and the client reads the refusal."""
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        fake_world(store, versions=1)
        _, key = create_api_key(store, "acme")
        app = create_app(store, EchoEngine(), artifacts=LocalArtifactStore(tmp_path / "a"))
        server = BackgroundServer(app).start()

        def slowly() -> Iterator[bytes]:
            yield b"--x\r\n"
            time.sleep(0.5)
            yield b"y" * (256 << 10) + b"\r\n--x--\r\n"

        try:
            app.state.drain.begin(30)
            answer = httpx.post(
                server.base_url + "/v1/files", content=slowly(), timeout=30,
                headers={"authorization": f"Bearer {key}",
                         "content-type": "multipart/form-data; boundary=x"},
            )  # fmt: skip
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["code"] == "shutting_down"
            assert answer.headers["retry-after"] == "1"
        finally:
            server.stop()
