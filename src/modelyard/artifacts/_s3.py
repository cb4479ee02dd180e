"""A content-addressed artifact store on S3 (or an S3-compatible service), read through a cache.

Under ``s3://bucket/prefix/`` the layout is the local store's, as objects::

    sha256/<first 2 hex>/<digest>/manifest.json
    sha256/<first 2 hex>/<digest>/files/...
    tmp/put-<host>-<pid>-<random>/<digest>     a writer's mark while it uploads

Writing: the files are copied and hashed into the cache's work area first, so
the manifest describes exactly the bytes sent (as the local store's does);
then each file is uploaded if absent, and the manifest last, also if absent.
An artifact exists once its manifest does, so a reader never sees one with
files missing. Two writers of one digest send the same bytes to the same keys:
the second one's writes are refused (412, ``_s3_api.py``) and it checks what
the first wrote (present, the right size) instead of replacing it. Storing
again what is stored whole costs one HEAD per file. The writer's cache then
holds the artifact.

Reading: ``open_verified`` returns the cached copy after checking every byte
against the manifest, on each open, as the local store does. An artifact not
cached yet is downloaded into the work area, checked, and renamed into the
cache whole. A copy that fails the check is refused
(``ArtifactIntegrityError``) and none of it is used; a damaged cached copy is
also removed, so the next open fetches the object again.

Leftovers: a writer marks its write before the first byte and removes the mark
after the manifest. ``upload_entries`` judges marks and multipart uploads as
the local work area's dirs are judged (``_tmp.py``: the writer's process is
gone, or it is older than the given age), and ``remove_upload`` aborts a gone
writer's uploads and deletes the objects of its write unless the artifact is
whole.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import re
import secrets
import shutil
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modelyard.artifacts._base import ArtifactStore
from modelyard.artifacts._local import (
    LocalArtifactStore,
    _check_files,
    _check_kind,
    _integrity,
    _seal,
    _stage,
    _write_durably,
    dir_source,
    file_source,
)
from modelyard.artifacts._manifest import ArtifactRef, normalize_digest, parse_manifest, short
from modelyard.artifacts._s3_api import KeyExists, S3Api, S3Url, TransferSettings, new_client
from modelyard.artifacts._tmp import UploadEntry, judge_name, this_host
from modelyard.errors import ArtifactError, ArtifactIntegrityError, ArtifactNotFound

_ARTIFACT_KEY = re.compile(r"^sha256/([0-9a-f]{2})/([0-9a-f]{64})/")
_MARK_KEY = re.compile(r"^tmp/([^/]+)/([0-9a-f]{64})$")


def _base_key(hex_digest: str) -> str:
    return f"sha256/{hex_digest[:2]}/{hex_digest}/"


class S3ArtifactStore(ArtifactStore):
    """Artifacts in ``url`` (``s3://bucket/prefix``), read through the cache ``cache_dir``.

    ``client`` is a boto3 S3 client (default: one from boto3's usual settings);
    the store makes each of its writes put-if-absent. ``transfer`` sets when
    files go in parts.
    """

    def __init__(
        self,
        url: str,
        *,
        cache_dir: Path,
        client: Any = None,
        transfer: TransferSettings | None = None,
    ) -> None:
        super().__init__(cache_dir)
        self.url = S3Url.parse(url)
        self._cache = LocalArtifactStore(self.root)
        self._api = S3Api(
            self.url, new_client() if client is None else client, transfer or TransferSettings()
        )

    @property
    def location(self) -> str:
        return str(self.url)

    def ensure(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ArtifactError(
                f"cannot create the artifact cache {self.root}: {exc.strerror or exc}",
                hint="Set MODELYARD_ARTIFACTS_CACHE to a writable directory.",
            ) from exc
        self._api.check_bucket()

    # -- content ----------------------------------------------------------------------

    def put_dir(self, src: Path, *, kind: str) -> ArtifactRef:
        return self._put(dir_source(Path(src)), kind=kind, origin=Path(src))

    def put_file(self, path: Path, *, kind: str) -> ArtifactRef:
        return self._put(file_source(Path(path)), kind=kind, origin=Path(path))

    def get(self, digest: str) -> ArtifactRef:
        hex_digest = normalize_digest(digest)
        if self._cache.exists(hex_digest):
            return self._cache.get(hex_digest)
        return self._remote_ref(hex_digest)

    def exists(self, digest: str) -> bool:
        return self._api.head(_base_key(normalize_digest(digest)) + "manifest.json") is not None

    def open_verified(self, digest: str) -> Path:
        hex_digest = normalize_digest(digest)
        if not self._cache.exists(hex_digest):
            return self._fetch(hex_digest)
        try:
            return self._cache.open_verified(hex_digest)
        except ArtifactIntegrityError:
            self._evict(hex_digest)  # the bucket holds the truth: the next open fetches it again
            raise

    def delete(self, digest: str) -> None:
        hex_digest = normalize_digest(digest)
        base = _base_key(hex_digest)
        if self._api.head(base + "manifest.json") is None:
            self._evict(hex_digest)
            raise self._not_found(hex_digest)
        self._api.delete([base + "manifest.json"])  # first: readers see it gone at once
        self._api.delete([obj.key for obj in self._api.objects(base)])
        self._evict(hex_digest)

    def age_s(self, digest: str) -> float:
        hex_digest = normalize_digest(digest)
        info = self._api.head(_base_key(hex_digest) + "manifest.json")
        if info is None:
            raise self._not_found(hex_digest)
        return max(0.0, (datetime.now(UTC) - info.modified).total_seconds())

    def digests(self) -> builtins.list[str]:
        # The manifest is written last: an artifact without one was never finished.
        return sorted(
            match[2]
            for obj in self._api.objects("sha256/")
            if (match := _ARTIFACT_KEY.match(obj.key))
            and obj.key == _base_key(match[2]) + "manifest.json"
        )

    # -- unfinished writes --------------------------------------------------------------

    def upload_entries(self, *, max_age_s: float) -> builtins.list[UploadEntry]:
        marks = self._marks(max_age_s)
        live = {m.digest for m in marks if not m.stale}
        gone = {m.digest: m for m in marks if m.stale}
        now = datetime.now(UTC)
        uploads = []
        for up in self._api.uploads("sha256/"):
            match = _ARTIFACT_KEY.match(up.key)
            digest = match[2] if match else None
            age = max(0.0, (now - up.initiated).total_seconds())
            if digest in live:
                stale, why = False, "its writer is still at work"
            elif digest in gone:
                stale, why = True, f"its writer is gone ({gone[digest].reason})"
            else:
                stale = age >= max_age_s
                why = "no writer marks it" + (", and old" if stale else ", recent")
            uploads.append(
                UploadEntry(
                    location=self.url.url_of(self._api.key(up.key)),
                    key=up.key,
                    upload_id=up.upload_id,
                    digest=digest,
                    age_s=age,
                    pid=None,
                    host=None,
                    stale=stale,
                    reason=why,
                )
            )
        return [*marks, *uploads]

    def remove_upload(self, entry: UploadEntry) -> None:
        if entry.upload_id is not None and _ARTIFACT_KEY.match(entry.key):
            self._api.abort_upload(entry.key, entry.upload_id)
            return
        mark = _MARK_KEY.match(entry.key)
        if mark is None:
            super().remove_upload(entry)
            return
        digest = mark[2]
        others = [m for m in self._marks(float("inf")) if m.digest == digest and m.key != entry.key]
        if not any(not m.stale for m in others):  # no live writer of the same digest
            self._undo_write(digest)
        self._api.delete([entry.key])

    # -- internals ----------------------------------------------------------------------

    def _not_found(self, hex_digest: str) -> ArtifactNotFound:
        return ArtifactNotFound(
            f"no artifact sha256:{hex_digest} in {self.location}",
            hint="Check the digest and that MODELYARD_ARTIFACTS names the right store.",
            digest=hex_digest,
        )

    def _remote_ref(self, hex_digest: str) -> ArtifactRef:
        raw = self._api.read(_base_key(hex_digest) + "manifest.json")
        if raw is None:
            raise self._not_found(hex_digest)
        return parse_manifest(raw, hex_digest)

    def _put(self, files: Mapping[str, Path], *, kind: str, origin: Path) -> ArtifactRef:
        _check_kind(kind)
        try:
            tmp = self._new_tmp("put")
        except OSError as exc:
            raise ArtifactError(f"cannot write to the artifact cache {self.root}: {exc}") from exc
        try:
            try:
                ref = _stage(files, kind, tmp)
            except OSError as exc:
                raise ArtifactError(f"cannot store {origin}: {exc}", path=str(origin)) from exc
            self._upload(tmp, ref)
            # this writer's cache keeps the copy it prepared (if it cannot, the first open fetches)
            with contextlib.suppress(OSError, ArtifactError):
                self._cache._install(tmp, ref.digest)
            return ref
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _upload(self, staged: Path, ref: ArtifactRef) -> None:
        """Upload what the bucket lacks of ``staged``: the files, then the manifest."""
        base = _base_key(ref.digest)
        wanted = {
            base + f"files/{rel}": (staged / "files" / rel, e.size) for rel, e in ref.files.items()
        }
        manifest = staged / "manifest.json"
        wanted[base + "manifest.json"] = (manifest, manifest.stat().st_size)  # last
        missing = {key: src for key, src in wanted.items() if not self._holds(key, src[1])}
        if not missing:
            return  # stored whole already
        mark = f"tmp/put-{this_host()}-{os.getpid()}-{secrets.token_hex(6)}/{ref.digest}"
        self._api.put_new(mark, b"")
        for key, (path, size) in missing.items():
            try:
                self._api.upload_new(path, key)
            except KeyExists:  # another writer of the same digest got there first
                if not self._holds(key, size):
                    raise ArtifactError(
                        f"cannot store artifact {short(ref.digest)}…: another writer left "
                        f"{self.url.url_of(self._api.key(key))} with the wrong size",
                        hint="Store it again.",
                        digest=ref.digest,
                    ) from None
        self._api.delete([mark])  # kept when a write failed: the sweep removes what it wrote

    def _holds(self, key: str, size: int) -> bool:
        """Whether ``key`` holds ``size`` bytes; an object of another size is damaged: removed."""
        info = self._api.head(key)
        if info is None:
            return False
        if info.size == size:
            return True
        self._api.delete([key])  # content-addressed: no write of this key has another size
        return False

    def _fetch(self, hex_digest: str) -> Path:
        """Download an artifact into the work area, check every byte, rename it into the cache."""
        raw = self._api.read(_base_key(hex_digest) + "manifest.json")
        if raw is None:
            raise self._not_found(hex_digest)
        ref = parse_manifest(raw, hex_digest)
        try:
            tmp = self._new_tmp("get")
        except OSError as exc:
            raise ArtifactError(f"cannot write to the artifact cache {self.root}: {exc}") from exc
        try:
            _write_durably(tmp / "manifest.json", raw)
            for rel in ref.files:
                dest = tmp / "files" / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                if not self._api.download(_base_key(hex_digest) + f"files/{rel}", dest):
                    raise _integrity(hex_digest, rel, f"file {rel!r} is missing from the bucket")
            _check_files(ref, tmp / "files")
            _seal(tmp)
            self._cache._install(tmp, hex_digest)
        except OSError as exc:
            raise ArtifactError(
                f"cannot cache artifact {short(hex_digest)}… in {self.root}: {exc}",
                digest=hex_digest,
            ) from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return self._cache._dir(hex_digest) / "files"

    def _evict(self, hex_digest: str) -> None:
        with contextlib.suppress(ArtifactError):  # not cached, or removed meanwhile
            self._cache.delete(hex_digest)

    def _marks(self, max_age_s: float) -> builtins.list[UploadEntry]:
        now = datetime.now(UTC)
        marks = []
        for obj in self._api.objects("tmp/"):
            match = _MARK_KEY.match(obj.key)
            if match is None:
                continue  # not a mark this store writes
            age = max(0.0, (now - obj.modified).total_seconds())
            pid, host, stale, reason = judge_name(match[1], age, max_age_s)
            marks.append(
                UploadEntry(
                    location=self.url.url_of(self._api.key(obj.key)),
                    key=obj.key,
                    upload_id=None,
                    digest=match[2],
                    age_s=age,
                    pid=pid,
                    host=host,
                    stale=stale,
                    reason=reason,
                )
            )
        return marks

    def _undo_write(self, hex_digest: str) -> None:
        """Abort a gone writer's uploads of ``hex_digest``; delete its objects unless whole."""
        base = _base_key(hex_digest)
        for up in self._api.uploads(base):
            self._api.abort_upload(up.key, up.upload_id)
        if self._api.head(base + "manifest.json") is None:
            self._api.delete([obj.key for obj in self._api.objects(base)])
