"""The Files API (``/v1/files``) through the official ``openai`` SDK against a real server:
upload, list, retrieve, content and delete, tenants kept apart, the size cap and the
purposes accepted."""

from __future__ import annotations

import io
import tracemalloc
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from modelyard.access import create_api_key
from modelyard.artifacts import LocalArtifactStore
from modelyard.registry import discard_unreferenced, referenced_digests
from modelyard.serving import BackgroundServer, EchoEngine, create_app
from modelyard.serving._files import FileKeeper
from modelyard.store import Store
from worlds import two_tenant_world

MAX_FILE = 4096


@dataclass
class Served:
    store: Store
    artifacts: LocalArtifactStore
    url: str
    acme: openai.OpenAI
    globex: openai.OpenAI
    feedback_only: openai.OpenAI


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with Store.open(f"sqlite:///{tmp_path}/s.db") as store, ExitStack() as stack:
        two_tenant_world(store, versions=1)
        artifacts = LocalArtifactStore(tmp_path / "artifacts")
        app = create_app(
            store, EchoEngine(), refresh_seconds=0.1, artifacts=artifacts, max_file_bytes=MAX_FILE
        )
        server = stack.enter_context(BackgroundServer(app))

        def client(tenant: str, scopes: tuple[str, ...] = ("infer",)) -> openai.OpenAI:
            key = create_api_key(store, tenant, scopes=scopes)[1]
            made = openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0)
            return stack.enter_context(made)

        yield Served(
            store, artifacts, server.base_url, client("acme"), client("globex"),
            client("acme", ("feedback",)),
        )  # fmt: skip


LINES = b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'


def test_upload_list_retrieve_read_and_delete_a_file(served: Served) -> None:
    made = served.acme.files.create(file=("requests.jsonl", io.BytesIO(LINES)), purpose="batch")
    assert made.id.startswith("file-") and made.object == "file"
    assert (made.bytes, made.filename, made.purpose) == (len(LINES), "requests.jsonl", "batch")
    assert made.status == "processed" and made.created_at > 0

    assert served.acme.files.retrieve(made.id) == made
    assert served.acme.files.content(made.id).content == LINES
    assert [f.id for f in served.acme.files.list()] == [made.id]
    assert [f.id for f in served.acme.files.list(purpose="batch_output")] == []

    deleted = served.acme.files.delete(made.id)
    assert (deleted.id, deleted.deleted) == (made.id, True)
    with pytest.raises(openai.NotFoundError):
        served.acme.files.retrieve(made.id)
    assert served.store.file_digests() == set()
    assert served.artifacts.digests() == []  # the bytes went with the last file that had them


def test_the_same_bytes_twice_are_stored_once_and_kept_while_a_file_has_them(
    served: Served,
) -> None:
    first = served.acme.files.create(file=("a.jsonl", io.BytesIO(LINES)), purpose="batch")
    second = served.acme.files.create(file=("b.jsonl", io.BytesIO(LINES)), purpose="batch")
    assert first.id != second.id and len(served.artifacts.digests()) == 1
    served.acme.files.delete(first.id)
    assert served.acme.files.content(second.id).content == LINES
    served.acme.files.delete(second.id)
    assert served.artifacts.digests() == []


def test_pages_of_files_newest_first_or_oldest_first(served: Served) -> None:
    ids = [
        served.acme.files.create(file=(f"{i}.jsonl", io.BytesIO(LINES)), purpose="batch").id
        for i in range(5)
    ]
    first = served.acme.files.list(limit=2)
    assert [f.id for f in first.data] == ids[::-1][:2] and first.has_more
    assert [f.id for f in served.acme.files.list(limit=2)] == ids[::-1]  # the SDK pages on
    oldest = served.acme.files.list(limit=3, order="asc")
    assert [f.id for f in oldest.data] == ids[:3] and oldest.has_more
    rest = served.acme.files.list(limit=3, order="asc", after=ids[2])
    assert [f.id for f in rest.data] == ids[3:] and not rest.has_more
    with pytest.raises(openai.BadRequestError) as info:
        served.acme.files.list(limit=0)
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "limit"


def test_another_tenants_file_is_a_404_exactly_like_a_missing_one(served: Served) -> None:
    theirs = served.globex.files.create(file=("g.jsonl", io.BytesIO(LINES)), purpose="batch")
    assert served.acme.files.list().data == []
    bodies = []
    for file_id in (theirs.id, "file-000000000000000000000000"):
        for call in (
            served.acme.files.retrieve,
            served.acme.files.content,
            served.acme.files.delete,
        ):
            with pytest.raises(openai.NotFoundError) as info:
                call(file_id)
            assert isinstance(info.value.body, dict)
            body = dict(info.value.body)
            bodies.append({**body, "message": body["message"].replace(file_id, "X")})
    assert all(b == bodies[0] for b in bodies[:3])
    assert bodies[0] == bodies[3]
    assert bodies[0]["param"] == "file_id"
    assert served.globex.files.content(theirs.id).content == LINES  # still theirs, intact


def test_only_batch_files_are_uploaded_and_the_purpose_is_named(served: Served) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        served.acme.files.create(file=("x.jsonl", io.BytesIO(LINES)), purpose="fine-tune")
    assert isinstance(info.value.body, dict)
    assert info.value.body["param"] == "purpose" and "only 'batch'" in info.value.body["message"]
    with pytest.raises(openai.BadRequestError) as info:
        served.acme.files.create(
            file=("x.jsonl", io.BytesIO(LINES)),
            purpose="batch",
            extra_body={"chunking_strategy": "auto"},
        )
    assert isinstance(info.value.body, dict)
    assert info.value.body["param"] == "chunking_strategy"
    assert served.store.file_digests() == set()


def test_a_file_over_the_limit_is_a_413_naming_the_limit(served: Served) -> None:
    big = b"x" * (MAX_FILE + 1)
    with pytest.raises(openai.APIStatusError) as info:
        served.acme.files.create(file=("big.jsonl", io.BytesIO(big)), purpose="batch")
    assert info.value.status_code == 413
    assert f"limit of {MAX_FILE} bytes" in info.value.message
    assert "--max-file-bytes" in info.value.message
    # far over: refused from its Content-Length, before the body is read
    huge = httpx.post(
        served.url + "/v1/files",
        headers={"Authorization": f"Bearer {served.acme.api_key}"},
        files={"file": ("huge.jsonl", b"x" * (MAX_FILE + 100_000))},
        data={"purpose": "batch"},
    )
    assert huge.status_code == 413 and "--max-file-bytes" in huge.json()["error"]["message"]
    assert served.store.file_digests() == set() and served.artifacts.digests() == []


def test_files_need_the_infer_scope(served: Served) -> None:
    with pytest.raises(openai.PermissionDeniedError, match="'infer' scope"):
        served.feedback_only.files.list()


def test_doctor_keeps_the_bytes_of_files(served: Served) -> None:
    made = served.acme.files.create(file=("a.jsonl", io.BytesIO(LINES)), purpose="batch")
    digest = served.store.get_file("acme", made.id).digest
    assert digest in referenced_digests(served.store)
    assert not discard_unreferenced(served.store, served.artifacts, digest)
    assert served.acme.files.content(made.id).content == LINES


def test_a_chunked_upload_is_streamed_to_disk_not_held_in_memory(tmp_path: Path) -> None:
    """A body without Content-Length (chunked) is counted as it streams through to the
    upload, never buffered whole; past the cap it is the same 413 naming the limit."""
    cap = 24 * 1024 * 1024
    with Store.open(f"sqlite:///{tmp_path}/s.db") as store, ExitStack() as stack:
        two_tenant_world(store, versions=1)
        artifacts = LocalArtifactStore(tmp_path / "artifacts")
        app = create_app(store, EchoEngine(), artifacts=artifacts, max_file_bytes=cap)
        server = stack.enter_context(BackgroundServer(app))
        key = create_api_key(store, "acme", scopes=("infer",))[1]
        chunk = b'{"custom_id": "x", "method": "POST", "url": "/v1/chat/completions"}\n' * 1024

        def body(size: int) -> Iterator[bytes]:
            boundary = b"--b0undary\r\n"
            yield boundary + b'Content-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            yield (
                boundary + b'Content-Disposition: form-data; name="file"; filename="big.jsonl"'
                b"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            sent = 0
            while sent < size:
                yield chunk
                sent += len(chunk)
            yield b"\r\n--b0undary--\r\n"

        def post(size: int) -> httpx.Response:
            return httpx.post(
                server.base_url + "/v1/files",
                headers={
                    "Authorization": f"Bearer {key}",
                    "Content-Type": "multipart/form-data; boundary=b0undary",
                },
                content=body(size),
                timeout=60,
            )

        tracemalloc.start()
        try:
            ok = post(16 * 1024 * 1024)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert ok.status_code == 200, ok.text
        assert ok.json()["bytes"] >= 16 * 1024 * 1024
        assert peak < 8 * 1024 * 1024, f"{peak} bytes held for a 16 MiB upload"
        over = post(cap + 1024 * 1024)
        assert over.status_code == 413
        assert f"limit of {cap + 64 * 1024} bytes" in over.json()["error"]["message"]
        assert "--max-file-bytes" in over.json()["error"]["message"]
        assert len(store.list_files("acme")[0]) == 1


def test_bytes_deleted_while_they_are_uploaded_again_are_kept(tmp_path: Path) -> None:
    """A tenant's two files with the same bytes share them. Deleting the first, the last
    with those bytes, between the second upload storing the same bytes (found there
    already) and its file row, used to delete them from under the new file."""
    with Store.open(f"sqlite:///{tmp_path}/s.db") as store:
        two_tenant_world(store, versions=1)
        files = FileKeeper(store, LocalArtifactStore(tmp_path / "artifacts"))
        body = b'{"custom_id": "a"}\n'
        first = files.save("acme", io.BytesIO(body), filename="1.jsonl", purpose="batch",
                           api_key_id=None)  # fmt: skip
        keep = files.keep

        def keep_then_the_first_is_deleted(path: Path, tenant: str) -> tuple[str, int]:
            kept = keep(path, tenant)
            if any(f.id == first.id for f in store.list_files("acme")[0]):  # once, here
                files.delete("acme", first.id)
            return kept

        files.keep = keep_then_the_first_is_deleted  # type: ignore[method-assign]
        second = files.save("acme", io.BytesIO(body), filename="2.jsonl", purpose="batch",
                            api_key_id=None)  # fmt: skip
        assert second.digest == first.digest
        assert files.path(second).read_bytes() == body


def test_two_tenants_never_share_bytes(tmp_path: Path) -> None:
    """The same bytes uploaded by two tenants are two artifacts: an upload of bytes another
    tenant holds is not quicker (nor skipped on S3), so it tells nothing of theirs, and
    deleting one tenant's file deletes its bytes."""
    with Store.open(f"sqlite:///{tmp_path}/s.db") as store:
        two_tenant_world(store, versions=1)
        artifacts = LocalArtifactStore(tmp_path / "artifacts")
        files = FileKeeper(store, artifacts)
        body = b'{"custom_id": "a"}\n'
        theirs = files.save("globex", io.BytesIO(body), filename="g.jsonl", purpose="batch",
                            api_key_id=None)  # fmt: skip
        ours = files.save("acme", io.BytesIO(body), filename="a.jsonl", purpose="batch",
                          api_key_id=None)  # fmt: skip
        assert ours.digest != theirs.digest and len(artifacts.digests()) == 2
        files.delete("globex", theirs.id)
        assert artifacts.digests() == [ours.digest.removeprefix("sha256:")]
        assert files.path(ours).read_bytes() == body
