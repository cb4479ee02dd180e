"""No store write transaction is open while the artifact store stores or deletes a file's
bytes: an S3 call inside one held SQLite's one write lock, so every upload stalled every
other writer (the record writer that journals each request first). An upload holds its
bytes before storing them, a discard claims them before deleting them, each in a short
transaction; whatever the interleaving of an upload, a delete and the expiry sweep, a
tenant's file keeps its bytes; and what a crash between two transactions leaves, the
servers' sweep removes. On SQLite and PostgreSQL, through the ``openai`` SDK where a
user goes."""

from __future__ import annotations

import hashlib
import io
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import openai
import pytest
from sqlalchemy import func, insert, select, text, update

from modelyard import doctor
from modelyard.access import create_api_key
from modelyard.artifacts import ArtifactStore, LocalArtifactStore, open_artifact_store
from modelyard.artifacts._manifest import FileEntry, canonical_bytes, digest_of
from modelyard.errors import Conflict
from modelyard.serving import BackgroundServer, EchoEngine, create_app
from modelyard.serving import _files as files_module
from modelyard.serving._files import FileKeeper
from modelyard.store import Store, Upload
from modelyard.store._files import DISCARD_STALE_S, FileDiscardRow, FileRow, FileUploadRow
from worlds import two_tenant_world

LINES = b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'
OTHER = b'{"custom_id": "b", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    with Store.open(store_url) as opened:
        two_tenant_world(opened, versions=1)
        yield opened


def _writes_free(store: Store, digest: str) -> bool:
    """Whether another connection could write now: SQLite's write lock is free, or (on
    PostgreSQL) no transaction holds the lock on the bytes ``digest``."""
    url = store._engine.url
    if url.get_backend_name() == "sqlite":
        conn = sqlite3.connect(str(url.database), timeout=0.2)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.rollback()
            return True
        except sqlite3.OperationalError:  # database is locked
            return False
        finally:
            conn.close()
    with store._engine.connect() as conn:
        free = conn.scalar(
            text("SELECT pg_try_advisory_xact_lock(hashtext('file_bytes'), hashtext(:d))"),
            {"d": digest},
        )
        conn.rollback()
        return bool(free)


def _digest_of_file(path: Path, of: str) -> str:
    data = path.read_bytes()
    entry = FileEntry(hashlib.sha256(data).hexdigest(), len(data))
    return digest_of(canonical_bytes(of, {path.name: entry}))


def _probe_calls(store: Store, artifacts: ArtifactStore) -> list[tuple[str, bool]]:
    """Wrap the artifact store's calls that store, look for and delete bytes: each call
    records whether writes were free while it ran."""
    probes: list[tuple[str, bool]] = []

    def wrap(name: str, digest: Callable[..., str]) -> None:
        real = getattr(artifacts, name)

        def probed(*args: Any, **kwargs: Any) -> Any:
            probes.append((name, _writes_free(store, digest(*args, **kwargs))))
            return real(*args, **kwargs)

        setattr(artifacts, name, probed)

    wrap("put_file", lambda path, *, kind: _digest_of_file(Path(path), kind))
    wrap("exists", lambda digest: digest)
    wrap("delete", lambda digest: digest)
    return probes


def _client(stack: ExitStack, store: Store, server: BackgroundServer, tenant: str) -> Any:
    key = create_api_key(store, tenant, scopes=("infer",))[1]
    made = openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0, timeout=5)
    return stack.enter_context(made)


def test_no_store_write_is_open_while_s3_stores_or_deletes_a_file(
    store: Store, s3_url: str, tmp_path: Path
) -> None:
    """Uploads (new bytes, then the same bytes again) and deletes (the last one deleting
    the bytes) through the SDK, on an S3 artifact store: at every S3 call another writer
    could write."""
    artifacts = open_artifact_store(s3_url, cache_dir=tmp_path / "cache")
    probes = _probe_calls(store, artifacts)
    with ExitStack() as stack:
        app = create_app(store, EchoEngine(), refresh_seconds=0.1, artifacts=artifacts)
        acme = _client(stack, store, stack.enter_context(BackgroundServer(app)), "acme")
        first = acme.files.create(file=("a.jsonl", io.BytesIO(LINES)), purpose="batch")
        second = acme.files.create(file=("b.jsonl", io.BytesIO(LINES)), purpose="batch")
        assert acme.files.content(second.id).content == LINES
        assert acme.files.delete(first.id).deleted and acme.files.delete(second.id).deleted
        assert acme.files.list().data == []
    assert artifacts.digests() == []  # the bytes went with the last file
    assert {name for name, _ in probes} >= {"put_file", "delete"}
    assert all(free for _, free in probes), probes


def test_an_upload_of_bytes_being_deleted_waits_for_the_delete_then_keeps_them(
    store: Store, tmp_path: Path
) -> None:
    """Deleting a tenant's last file with some bytes deletes them; the same bytes uploaded
    again while that delete is under way are stored again once it has ended, and the new
    file reads them. Meanwhile another tenant's upload goes through: nothing waits on the
    delete but the upload of the same bytes."""
    artifacts = LocalArtifactStore(tmp_path / "artifacts")
    deleting, go = threading.Event(), threading.Event()
    real_delete = artifacts.delete

    def slow_delete(digest: str) -> None:
        deleting.set()
        assert go.wait(20)
        real_delete(digest)

    artifacts.delete = slow_delete  # type: ignore[method-assign]
    with ExitStack() as stack:
        app = create_app(store, EchoEngine(), refresh_seconds=0.1, artifacts=artifacts)
        server = stack.enter_context(BackgroundServer(app))
        acme, globex = (_client(stack, store, server, t) for t in ("acme", "globex"))
        first = acme.files.create(file=("a.jsonl", io.BytesIO(LINES)), purpose="batch")
        digest = store.get_file("acme", first.id).digest

        with ThreadPoolExecutor(2) as pool:
            try:
                gone = pool.submit(acme.files.delete, first.id)
                assert deleting.wait(10)
                again = pool.submit(
                    acme.files.create, file=("again.jsonl", io.BytesIO(LINES)), purpose="batch"
                )
                theirs = globex.files.create(file=("g.jsonl", io.BytesIO(OTHER)), purpose="batch")
                assert globex.files.content(theirs.id).content == OTHER
                time.sleep(0.3)
                assert not again.done()  # it waits for the delete of its bytes to end
                assert store.discarding(digest)
            finally:
                go.set()
            assert gone.result(10).deleted
            second = again.result(10)

        assert acme.files.content(second.id).content == LINES
        assert [f.id for f in acme.files.list().data] == [second.id]
        assert not store.discarding(digest) and artifacts.exists(digest)


@pytest.mark.parametrize("how", ["delete", "expire"])
def test_bytes_an_upload_is_storing_are_not_deleted_with_the_last_other_file(
    store: Store, tmp_path: Path, how: str
) -> None:
    """While an upload stores bytes a tenant's other file has, that file is deleted (or
    expires and the sweep deletes it): the bytes stay (never deleted, never stored
    twice), the upload counts in the tenant's files meanwhile, and its file reads them."""
    artifacts = LocalArtifactStore(tmp_path / "artifacts")
    files = FileKeeper(store, artifacts)
    first = files.save("acme", io.BytesIO(LINES), filename="1.jsonl", purpose="batch",
                       api_key_id=None)  # fmt: skip
    storing, go = threading.Event(), threading.Event()
    real_put, deleted = artifacts.put_file, []

    def slow_put(path: Path, *, kind: str) -> Any:
        storing.set()
        assert go.wait(20)
        return real_put(path, kind=kind)

    artifacts.put_file = slow_put  # type: ignore[method-assign]
    artifacts.delete = deleted.append  # type: ignore[method-assign]
    with ThreadPoolExecutor(1) as pool:
        try:
            upload = pool.submit(files.save, "acme", io.BytesIO(LINES), filename="2.jsonl",
                                 purpose="batch", api_key_id=None)  # fmt: skip
            assert storing.wait(10)
            if how == "delete":
                files.delete("acme", first.id)
            else:
                _expire(store, first.id)
                assert files.purge_expired() == 1
            assert store.list_files("acme")[0] == []
            assert store.file_bytes("acme") == len(LINES)  # the upload under way
            assert first.digest in store.file_digests()  # doctor keeps them
        finally:
            go.set()
        second = upload.result(10)
    assert deleted == []
    assert files.path(second).read_bytes() == LINES


def test_an_upload_that_died_holding_its_bytes_is_swept_with_them(
    store: Store, tmp_path: Path
) -> None:
    """An upload whose process died between holding its bytes and making its file leaves
    no file; its bytes count in the tenant's files until its time is up, then the sweep
    ends its hold and deletes them. An upload that comes back after that is refused
    (409) and leaves nothing."""
    artifacts = LocalArtifactStore(tmp_path / "artifacts")
    files = FileKeeper(store, artifacts)
    storing, go = threading.Event(), threading.Event()
    real_put = artifacts.put_file

    def slow_put(path: Path, *, kind: str) -> Any:
        storing.set()
        assert go.wait(20)
        return real_put(path, kind=kind)

    artifacts.put_file = slow_put  # type: ignore[method-assign]
    with ThreadPoolExecutor(1) as pool:
        try:
            upload = pool.submit(files.save, "acme", io.BytesIO(LINES), filename="1.jsonl",
                                 purpose="batch", api_key_id=None)  # fmt: skip
            assert storing.wait(10)
            assert files.purge_expired() == 0  # not its time yet: nothing is swept
            assert store.file_bytes("acme") == len(LINES) and store.list_files("acme")[0] == []
            _age_uploads(store)
            assert files.purge_expired() == 0  # no file expired; the hold ended
            assert store.file_bytes("acme") == 0
        finally:
            go.set()
        with pytest.raises(Conflict, match="its hold on them was ended"):
            upload.result(10)
    assert store.list_files("acme")[0] == [] and artifacts.digests() == []
    assert store.file_digests() == set()


def test_a_discard_that_died_holds_up_uploads_of_its_bytes_until_it_is_stale(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A discard whose process died after claiming some bytes: an upload of the same bytes
    waits for it, then is a 409 (which the SDKs retry); once the claim is stale the upload
    stores them, and the sweep removes the claim, leaving the new file its bytes."""
    monkeypatch.setattr(files_module, "DISCARD_WAIT_S", 0.3)
    artifacts = LocalArtifactStore(tmp_path / "artifacts")
    files = FileKeeper(store, artifacts)
    first = files.save("acme", io.BytesIO(LINES), filename="1.jsonl", purpose="batch",
                       api_key_id=None)  # fmt: skip
    digest = first.digest

    # what a discard killed after its claim and its delete leaves
    store.delete_unread_file("acme", first.id)
    artifacts.delete(digest)
    with store._engine.begin() as conn:
        conn.execute(
            insert(FileDiscardRow).values(digest=digest, token="dead", started_at=datetime.now(UTC))
        )
    assert store.discarding(digest)

    started = time.monotonic()
    with pytest.raises(Conflict, match="being deleted"):
        files.save("acme", io.BytesIO(LINES), filename="2.jsonl", purpose="batch",
                   api_key_id=None)  # fmt: skip
    assert time.monotonic() - started >= 0.3
    assert store.file_bytes("acme") == 0 and store.list_files("acme")[0] == []

    _age_discards(store)
    assert not store.discarding(digest)
    second = files.save("acme", io.BytesIO(LINES), filename="2.jsonl", purpose="batch",
                        api_key_id=None)  # fmt: skip
    assert files.purge_expired() == 0
    assert files.path(second).read_bytes() == LINES
    with store._engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(FileDiscardRow)) == 0


def _expire(store: Store, file_id: str) -> None:
    with store._engine.begin() as conn:
        conn.execute(
            update(FileRow)
            .where(FileRow.id == file_id)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )


def _age_uploads(store: Store) -> None:
    """Every upload's time up, as if ``UPLOAD_HOLD_S`` had passed."""
    with store._engine.begin() as conn:
        conn.execute(update(FileUploadRow).values(until=datetime.now(UTC) - timedelta(seconds=1)))


def _age_discards(store: Store) -> None:
    """Every discard's claim stale, as if ``DISCARD_STALE_S`` had passed."""
    old = datetime.now(UTC) - timedelta(seconds=DISCARD_STALE_S + 1)
    with store._engine.begin() as conn:
        conn.execute(update(FileDiscardRow).values(started_at=old))


def test_doctor_leaves_unreferenced_bytes_an_upload_holds_meanwhile(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``modelyard doctor --fix`` deletes bytes no file has (a delete that died before
    deleting them); an upload of the same bytes that holds them between the doctor's
    check and its delete keeps them, and its file reads them."""
    artifacts = LocalArtifactStore(tmp_path / "artifacts")
    files = FileKeeper(store, artifacts)
    first = files.save("acme", io.BytesIO(LINES), filename="1.jsonl", purpose="batch",
                       api_key_id=None)  # fmt: skip
    store.delete_unread_file("acme", first.id)  # its bytes left behind, as after a kill
    checked = doctor.referenced_digests
    uploads: list[Upload] = []

    def then_an_upload_holds_them(at: Store) -> set[str]:
        found = checked(at)
        if not uploads:  # the doctor's first look: an upload begins right after it
            uploads.append(at.begin_upload("acme", size=len(LINES), digest=first.digest))
        return found

    monkeypatch.setattr(doctor, "referenced_digests", then_an_upload_holds_them)
    report = doctor.diagnose(store, artifacts, stale=timedelta(0), fix=True)
    blobs = [f for f in report.findings if f.kind == "blob"]
    assert [(f.fixed, f.error) for f in blobs] == [(False, "changed meanwhile; left in place")]
    assert artifacts.exists(first.digest)
    second = store.finish_upload(uploads[0], filename="2.jsonl", purpose="batch")
    assert files.path(second).read_bytes() == LINES
