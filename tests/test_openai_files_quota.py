"""A tenant's files hold at most ``serve --max-tenant-file-bytes`` in all: an upload past
it is a 400 ``storage_limit_exceeded`` naming the limit, its bytes not kept; deleting
files makes room; another tenant is not affected. Before, a tenant could fill the
artifact store with uploads of 200 MiB each, without end."""

from __future__ import annotations

import io
from pathlib import Path

import openai
import pytest

from modelyard.access import create_api_key
from modelyard.artifacts import LocalArtifactStore
from modelyard.serving import BackgroundServer, EchoEngine, create_app
from modelyard.store import Store
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
