"""The S3 artifact store against moto's S3 server, over HTTP on 127.0.0.1 (conftest ``s3_url``).

What a user relies on: the same content addressing and verification as the
local store, a read-through cache that is checked on every open and reused,
writers of one digest that never replace each other's objects, and nothing
left behind by a writer killed mid-upload.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from modelyard.artifacts import (
    ArtifactStore,
    S3ArtifactStore,
    TransferSettings,
    open_artifact_store,
    this_host,
)
from modelyard.doctor import diagnose
from modelyard.errors import ArtifactError, ArtifactIntegrityError, ArtifactNotFound
from modelyard.store import Store

MIB = 1 << 20
SMALL_PARTS = TransferSettings(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)


def _bucket(url: str) -> tuple[str, str]:
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    return bucket, prefix + "/"


def _keys(url: str) -> list[str]:
    """Every object under the store's prefix, relative to it."""
    bucket, prefix = _bucket(url)
    found = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return sorted(item["Key"].removeprefix(prefix) for item in found)


def _uploads(url: str) -> list[str]:
    bucket, prefix = _bucket(url)
    answer = boto3.client("s3").list_multipart_uploads(Bucket=bucket, Prefix=prefix)
    return [u["Key"].removeprefix(prefix) for u in answer.get("Uploads", [])]


def _overwrite(url: str, rel: str, data: bytes) -> None:
    """Replace an object as an accident or an attacker would (a plain client, no condition)."""
    bucket, prefix = _bucket(url)
    boto3.client("s3").put_object(Bucket=bucket, Key=prefix + rel, Body=data)


@pytest.fixture
def adapter(tmp_path: Path) -> Path:
    src = tmp_path / "adapter"
    (src / "extra").mkdir(parents=True)
    (src / "adapter_config.json").write_bytes(b'{"r": 8, "lora_alpha": 16}')
    (src / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 64)
    (src / "extra" / "README.md").write_bytes(b"notes\n")
    return src


@pytest.fixture
def big(tmp_path: Path) -> Path:
    """An adapter whose weights (6 MiB) go in two parts with ``SMALL_PARTS``."""
    src = tmp_path / "big"
    src.mkdir()
    (src / "adapter_config.json").write_bytes(b'{"r": 4}')
    (src / "adapter_model.safetensors").write_bytes(os.urandom(6 * MIB))
    return src


def test_the_settings_pick_the_store(s3_url: str, tmp_path: Path) -> None:
    store = open_artifact_store(s3_url, cache_dir=tmp_path / "cache")
    assert isinstance(store, S3ArtifactStore) and store.location == s3_url
    assert store.root == tmp_path / "cache"
    local = open_artifact_store(tmp_path / "dir")
    assert type(local) is type(ArtifactStore(tmp_path / "dir"))  # what callers built before
    assert local.location == str(tmp_path / "dir")
    with pytest.raises(ArtifactError, match="cache"):
        open_artifact_store(s3_url)
    with pytest.raises(ArtifactError, match="unsupported"):
        open_artifact_store("gs://bucket/x")
    missing = open_artifact_store("s3://no-such-bucket-here/x", cache_dir=tmp_path / "c2")
    with pytest.raises(ArtifactError, match=r"NoSuchBucket|no-such-bucket"):
        missing.ensure()


def test_round_trip_through_the_bucket(s3_url: str, adapter: Path, tmp_path: Path) -> None:
    writer = open_artifact_store(s3_url, cache_dir=tmp_path / "writer")
    ref = writer.put_dir(adapter, kind="adapter")
    # the local store's digest: same content, same name, wherever it is kept
    assert ref == ArtifactStore(tmp_path / "local").put_dir(adapter, kind="adapter")
    base = f"sha256/{ref.digest[:2]}/{ref.digest}/"
    assert _keys(s3_url) == sorted(
        [base + "manifest.json"] + [base + f"files/{rel}" for rel in ref.files]
    )  # and no writer's mark left
    assert writer.put_dir(adapter, kind="adapter") == ref  # again: a no-op

    reader = open_artifact_store(s3_url, cache_dir=tmp_path / "reader")  # another server
    assert reader.exists(ref.digest) and reader.get(ref.uri) == ref
    assert [r.digest for r in reader.list()] == [ref.digest]
    assert 0 <= reader.age_s(ref.digest) < 60
    files = reader.open_verified(ref.digest)
    assert files.is_relative_to(tmp_path / "reader")
    for rel in ref.files:
        assert (files / rel).read_bytes() == (adapter / rel).read_bytes()
    assert not list((tmp_path / "reader" / "tmp").iterdir())  # the download's work dir is gone

    reader.delete(ref.digest)
    assert _keys(s3_url) == [] and not reader.exists(ref.digest)
    with pytest.raises(ArtifactNotFound):
        reader.open_verified(ref.digest)
    with pytest.raises(ArtifactNotFound):
        reader.delete(ref.digest)


def test_big_files_go_in_parts(s3_url: str, big: Path, tmp_path: Path) -> None:
    client = boto3.client("s3")
    parts: list[int] = []
    client.meta.events.register("after-call.s3.UploadPart", lambda **kw: parts.append(1))
    store = S3ArtifactStore(s3_url, cache_dir=tmp_path / "w", client=client, transfer=SMALL_PARTS)
    ref = store.put_dir(big, kind="adapter")
    assert len(parts) == 2 and _uploads(s3_url) == []
    fresh = open_artifact_store(s3_url, cache_dir=tmp_path / "r")
    weights = fresh.open_verified(ref.digest) / "adapter_model.safetensors"
    assert weights.read_bytes() == (big / "adapter_model.safetensors").read_bytes()


def test_the_cache_is_reused_and_checked_on_every_open(
    s3_url: str, adapter: Path, tmp_path: Path
) -> None:
    digest = open_artifact_store(s3_url, cache_dir=tmp_path / "w").put_dir(adapter, kind="a").digest
    client = boto3.client("s3")
    calls: list[str] = []
    client.meta.events.register("before-call.s3.*", lambda model, **kw: calls.append(model.name))
    server = S3ArtifactStore(s3_url, cache_dir=tmp_path / "cache", client=client)
    first = server.open_verified(digest)
    assert "GetObject" in calls or "HeadObject" in calls  # fetched once
    calls.clear()
    assert server.open_verified(digest) == first
    again = S3ArtifactStore(s3_url, cache_dir=tmp_path / "cache", client=client)  # a restart
    assert again.open_verified(digest) == first
    assert calls == []  # both opens were served by the cache, with no request

    weights = first / "adapter_model.safetensors"
    weights.chmod(0o644)
    data = weights.read_bytes()
    weights.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])  # the cached copy is altered
    with pytest.raises(ArtifactIntegrityError, match=r"adapter_model\.safetensors"):
        again.open_verified(digest)  # refused, as the local store refuses it
    assert not first.exists()  # and dropped, so the next open fetches the bucket's bytes
    assert again.open_verified(digest) == first
    assert (first / "adapter_model.safetensors").read_bytes() == bytes(range(256)) * 64


def test_a_tampered_object_is_refused(s3_url: str, adapter: Path, tmp_path: Path) -> None:
    ref = open_artifact_store(s3_url, cache_dir=tmp_path / "w").put_dir(adapter, kind="adapter")
    base = f"sha256/{ref.digest[:2]}/{ref.digest}/"
    _overwrite(s3_url, base + "files/adapter_model.safetensors", b"\xff" * (256 * 64))
    server = open_artifact_store(s3_url, cache_dir=tmp_path / "server")
    with pytest.raises(ArtifactIntegrityError, match=r"adapter_model\.safetensors.*sha256"):
        server.open_verified(ref.digest)
    assert not (tmp_path / "server" / "sha256").exists()  # nothing of it is cached
    assert not list((tmp_path / "server" / "tmp").iterdir())

    _overwrite(s3_url, base + "manifest.json", b'{"format":1,"kind":"adapter","files":{}}')
    with pytest.raises(ArtifactIntegrityError, match="bad manifest"):
        server.open_verified(ref.digest)


def test_storing_again_restores_a_lost_or_damaged_object(
    s3_url: str, adapter: Path, tmp_path: Path
) -> None:
    store = open_artifact_store(s3_url, cache_dir=tmp_path / "w")
    ref = store.put_dir(adapter, kind="adapter")
    base = f"sha256/{ref.digest[:2]}/{ref.digest}/"
    bucket, prefix = _bucket(s3_url)
    boto3.client("s3").delete_object(Bucket=bucket, Key=prefix + base + "files/extra/README.md")
    _overwrite(s3_url, base + "files/adapter_config.json", b"{}")  # truncated
    fresh = open_artifact_store(s3_url, cache_dir=tmp_path / "r1")
    with pytest.raises(ArtifactIntegrityError):
        fresh.open_verified(ref.digest)
    assert store.put_dir(adapter, kind="adapter") == ref
    assert open_artifact_store(s3_url, cache_dir=tmp_path / "r2").open_verified(ref.digest)


def test_two_writers_of_one_digest_never_replace_each_others_objects(
    s3_url: str, big: Path, tmp_path: Path
) -> None:
    """Writer A's upload is held after its first part while B stores the same artifact
    whole; A's completion is then refused (412), A keeps B's objects and succeeds."""
    client_a, client_b = boto3.client("s3"), boto3.client("s3")
    a = S3ArtifactStore(s3_url, cache_dir=tmp_path / "a", client=client_a, transfer=SMALL_PARTS)
    b = S3ArtifactStore(s3_url, cache_dir=tmp_path / "b", client=client_b, transfer=SMALL_PARTS)
    a_uploading, b_done = threading.Event(), threading.Event()

    def hold(**_kw: Any) -> None:
        a_uploading.set()
        assert b_done.wait(30)

    completions: list[int] = []
    client_a.meta.events.register("after-call.s3.UploadPart", hold)
    client_a.meta.events.register(
        "after-call.s3.CompleteMultipartUpload",
        lambda http_response, **_kw: completions.append(http_response.status_code),
    )
    results: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: results.update(a=a.put_dir(big, kind="adapter")))
    thread.start()
    assert a_uploading.wait(30)
    results["b"] = b.put_dir(big, kind="adapter")
    digest = results["b"].digest
    weights = f"artifacts/sha256/{digest[:2]}/{digest}/files/adapter_model.safetensors"
    bucket = _bucket(s3_url)[0]
    before = boto3.client("s3").head_object(Bucket=bucket, Key=weights)
    b_done.set()
    thread.join(60)

    assert results["a"] == results["b"]
    assert completions == [412]  # A's write was refused, not applied
    after = boto3.client("s3").head_object(Bucket=bucket, Key=weights)
    assert (after["ETag"], after["LastModified"]) == (before["ETag"], before["LastModified"])
    assert _uploads(s3_url) == []  # A's refused upload was aborted, its parts dropped
    assert not [k for k in _keys(s3_url) if k.startswith("tmp/")]  # both marks removed
    for store in (a, b):
        assert store.open_verified(digest).is_dir()


_KILLED_WRITER = textwrap.dedent(
    """
    import sys, threading
    from pathlib import Path
    import boto3
    from modelyard.artifacts import S3ArtifactStore, TransferSettings

    url, cache, src = sys.argv[1:]
    client = boto3.client("s3")

    def killed_here(**_kw):
        print("one part uploaded", flush=True)
        threading.Event().wait()

    client.meta.events.register("after-call.s3.UploadPart", killed_here)
    parts = TransferSettings(5 << 20, 5 << 20, 1)
    store = S3ArtifactStore(url, cache_dir=Path(cache), client=client, transfer=parts)
    store.put_dir(Path(src), kind="adapter")
    """
)


def test_a_writer_killed_mid_upload_leaves_nothing_after_the_doctor(
    s3_url: str, big: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    with subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, s3_url, str(cache), str(big)],
        stdout=subprocess.PIPE,
        text=True,
    ) as writer:
        try:
            assert writer.stdout is not None and writer.stdout.readline().startswith("one part")
        finally:
            writer.kill()  # SIGKILL: no cleanup runs
    digest = ArtifactStore(tmp_path / "local").put_dir(big, kind="adapter").digest
    base = f"sha256/{digest[:2]}/{digest}/"
    assert _uploads(s3_url) == [base + "files/adapter_model.safetensors"]  # half sent
    left = _keys(s3_url)  # its mark, and the small file it sent whole; no manifest
    assert left[0] == base + "files/adapter_config.json" and len(left) == 2
    assert left[1].startswith(f"tmp/put-{this_host()}-{writer.pid}-")

    artifacts = open_artifact_store(s3_url, cache_dir=cache)
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        report = diagnose(store, artifacts)  # reports, changes nothing
        found = sorted((f.kind, f.problem) for f in report.findings)
        # its local work dir, its multipart upload, its mark
        assert [kind for kind, _ in found] == ["tmp", "upload", "upload"], found
        assert all(f"process {writer.pid} is gone" in problem for _, problem in found), found
        fixed = diagnose(store, artifacts, fix=True)
        assert fixed.unresolved == 0, fixed.to_dict()
    assert _uploads(s3_url) == [] and _keys(s3_url) == []
    assert not list((cache / "tmp").iterdir())


def test_the_sweep_spares_live_writers_and_recent_uploads(s3_url: str, tmp_path: Path) -> None:
    store = open_artifact_store(s3_url, cache_dir=tmp_path / "cache")
    bucket, prefix = _bucket(s3_url)
    client = boto3.client("s3")
    mine, orphan = "a" * 64, "b" * 64
    client.put_object(
        Bucket=bucket, Key=f"{prefix}tmp/put-{this_host()}-{os.getpid()}-x1/{mine}", Body=b""
    )
    for digest in (mine, orphan):
        client.create_multipart_upload(
            Bucket=bucket, Key=f"{prefix}sha256/{digest[:2]}/{digest}/files/w.safetensors"
        )
    # moto lists every upload as begun on 2010-11-10 (a fixed date in its answer), so a
    # "recent" one is one younger than a limit past that date
    recent = 1e10
    entries = {(e.digest, e.what): e for e in store.upload_entries(max_age_s=recent)}
    assert not entries[(mine, "unfinished write")].stale  # this process is writing it
    assert not entries[(mine, "multipart upload")].stale
    assert not entries[(orphan, "multipart upload")].stale  # no mark, but recent
    assert store.sweep_tmp(max_age_s=recent) == []
    assert len(_uploads(s3_url)) == 2
    assert {e.stale for e in store.upload_entries(max_age_s=0) if e.digest == mine} == {False}

    swept = store.sweep_tmp(max_age_s=0)  # an upload with no mark, older than the limit
    assert [(e.digest, e.what) for e in swept] == [(orphan, "multipart upload")]
    assert len(_uploads(s3_url)) == 1


def test_an_unreadable_bucket_is_one_clear_error(s3_url: str, tmp_path: Path) -> None:
    store = open_artifact_store(s3_url.replace("s3://", "s3://missing-"), cache_dir=tmp_path)
    with pytest.raises(ArtifactError, match="NoSuchBucket") as caught:
        store.get("c" * 64)
    assert "bucket" in caught.value.hint


def test_an_endpoint_that_is_not_s3_is_not_taken_for_a_missing_artifact(
    s3_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong AWS_ENDPOINT_URL (a web server answering 404 to everything) read as "no
    such artifact": a HEAD's 404 has no body, as S3's own answer for a missing key has
    none. The bucket is asked once to tell them apart."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class NotFound(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self.send_response(404)
            self.end_headers()

        do_GET = do_HEAD  # noqa: N815  (http.server's name)

        def log_message(self, *_: object) -> None:
            pass

    moto = os.environ["AWS_ENDPOINT_URL"]
    web = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{web.server_address[1]}")
        store = open_artifact_store(s3_url, cache_dir=tmp_path / "c")
        with pytest.raises(ArtifactError, match="is not an S3 service") as caught:
            store.get("c" * 64)
        assert not isinstance(caught.value, ArtifactNotFound)
        assert "AWS_ENDPOINT_URL" in caught.value.hint
    finally:
        web.shutdown()
        web.server_close()
        monkeypatch.setenv("AWS_ENDPOINT_URL", moto)
    real = open_artifact_store(s3_url, cache_dir=tmp_path / "real")  # S3 itself: not found
    with pytest.raises(ArtifactNotFound):
        real.get("c" * 64)


def test_doctor_reports_unreferenced_blobs_in_the_bucket(
    s3_url: str, adapter: Path, tmp_path: Path
) -> None:
    artifacts = open_artifact_store(s3_url, cache_dir=tmp_path / "cache")
    digest = artifacts.put_dir(adapter, kind="adapter").digest
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        report = diagnose(store, artifacts, stale=timedelta(0), fix=True)
    assert [(f.kind, f.subject, f.fixed) for f in report.findings] == [
        ("blob", f"sha256:{digest}", True)
    ]
    assert _keys(s3_url) == []
