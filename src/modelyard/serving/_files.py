"""Tenants' files: their bytes in the artifact store, their rows in the store.

``FileKeeper`` is the one place that writes, reads and deletes a file's bytes:
each file is a one-file artifact (``content``) of its tenant's kind (``file:<tenant>``),
so the same bytes uploaded twice by one tenant are stored once, and never shared with
another tenant's (whose upload would otherwise be quicker, or free on S3, when the bytes
were there: a tenant could tell that another holds a given file). A file's bytes are
deleted with the last file that has them, and files whose time is up
(``_file_expiry``) are deleted by ``purge_expired``. The Files API (``_files_api``) and
the batch runner (its output and error files) both go through it.

No store transaction is open while the artifact store works (``store._files``): an
upload holds its bytes first (``begin_upload``), waits for a discard of the same bytes
under way to end, stores them, then makes its file (``finish_upload``); a discard
claims the bytes, deletes them, then ends its claim.

An error of the artifact store reaches a tenant without its details (``_unnamed``): they
name the server's paths or the store's location, which are for the operator's log.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from modelyard.artifacts import ArtifactStore, FileEntry, one_file_digest
from modelyard.errors import (
    ArtifactError,
    ArtifactIntegrityError,
    ArtifactNotFound,
    Conflict,
    ModelyardError,
)
from modelyard.store import Store, StoredFile, Upload, check_file_quota

DEFAULT_MAX_FILE_BYTES = 200 * 1024 * 1024  # OpenAI's limit on a batch input file
DEFAULT_MAX_TENANT_FILE_BYTES = 10 * 1024**3  # what one tenant's files may hold in all
PURGE_PAGE = 100  # expired files deleted in one transaction
CONTENT = "content"  # the name of a file's bytes in its artifact
KIND = "file"  # the artifacts' kind, and its tenant's name after a colon (``kind``)
DISCARD_WAIT_S = 30.0  # the longest an upload waits for a discard of the same bytes to end
CHUNK = 1024 * 1024
IN_THE_LOG = "The operator finds the details in the server's log."

log = logging.getLogger(__name__)


def kind(tenant: str) -> str:
    """The artifact kind of ``tenant``'s files: the same bytes of two tenants are two
    artifacts (files kept before are of the kind ``file``, and still read)."""
    return f"{KIND}:{tenant}"


class FileKeeper:
    """Files of tenants over ``store`` (rows) and ``artifacts`` (bytes); files larger than
    ``max_file_bytes``, or that would take a tenant's files over ``max_tenant_bytes`` in
    all, are refused at upload (a batch's output is kept whatever its tenant holds)."""

    def __init__(
        self,
        store: Store,
        artifacts: ArtifactStore,
        *,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        max_tenant_bytes: int = DEFAULT_MAX_TENANT_FILE_BYTES,
    ) -> None:
        self.store, self.artifacts, self.max_file_bytes = store, artifacts, max_file_bytes
        self.max_tenant_bytes = max_tenant_bytes

    def check_room(self, tenant: str, size: int) -> None:
        """Refuse (``StorageQuotaExceeded``) an upload of ``size`` bytes that would take
        ``tenant`` over its limit, before its bytes are stored (``save`` checks again)."""
        check_file_quota(tenant, self.store.file_bytes(tenant), size, self.max_tenant_bytes)

    @contextlib.contextmanager
    def staged(self) -> Iterator[Path]:
        """A path to write a new file's bytes to, before ``keep`` stores them."""
        with contextlib.ExitStack() as stack:
            with _unnamed("make room for a file's bytes"):
                work = stack.enter_context(self.artifacts.staging("file"))
            yield work / CONTENT

    def keep(self, path: Path, tenant: str) -> tuple[str, int]:
        """Store the bytes at ``path`` as ``tenant``'s; their digest and size."""
        with _unnamed(f"store a file's bytes for tenant {tenant!r}"):
            ref = self.artifacts.put_file(path, kind=kind(tenant))
        return ref.digest, ref.size

    def save(
        self,
        tenant: str,
        source: IO[bytes],
        *,
        filename: str,
        purpose: str,
        api_key_id: str | None,
        expires_s: int | None = None,
    ) -> StoredFile:
        """A new file of ``tenant`` holding what ``source`` reads, gone ``expires_s`` after
        (None: kept until deleted); blocks: call it on a worker thread. Its bytes are held
        (``begin_upload``: the quota is checked there) before they are stored, and no store
        transaction is open while they are."""
        with self.staged() as path:
            digest, size = _copy_hashed(source, path, kind(tenant))
            self.check_room(tenant, size)  # before anything is held
            upload = self.store.begin_upload(
                tenant, size=size, digest=digest, quota=self.max_tenant_bytes
            )
            try:
                if upload.discarding:
                    self._wait_for_discard(upload)
                kept, _ = self.keep(path, tenant)
                if kept != digest:  # pragma: no cover - one manifest rule on both sides
                    raise ArtifactError(f"stored as {kept}, not as {digest} as computed")
                return self.store.finish_upload(
                    upload, filename=filename, purpose=purpose, api_key_id=api_key_id,
                    expires_s=expires_s,
                )  # fmt: skip
            except BaseException:
                self._abandon(upload)
                raise

    def _wait_for_discard(self, upload: Upload) -> None:
        """Until the discard of ``upload``'s bytes under way when it began has ended (its
        delete would otherwise take the bytes stored now); a Conflict (409, which the
        OpenAI SDKs retry) past ``DISCARD_WAIT_S``."""
        deadline, pause = time.monotonic() + DISCARD_WAIT_S, 0.01
        while self.store.discarding(upload.digest):
            if time.monotonic() >= deadline:
                raise Conflict(
                    f"the same bytes, a deleted file's of tenant {upload.tenant!r}, have been "
                    f"being deleted for more than {DISCARD_WAIT_S:g} s",
                    hint="Upload the file again shortly.",
                    param="file",
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.25)

    def _abandon(self, upload: Upload) -> None:
        """End a failed upload's hold, then delete its bytes unless a file has them (best
        effort: what is left, the sweep or ``modelyard doctor`` removes)."""
        try:
            self.store.abandon_upload(upload.id)
        except ModelyardError:
            return  # its hold stays until the sweep ends it, and discards its bytes
        self.discard_unused(upload.digest)

    def path(self, file: StoredFile) -> Path:
        """A local path to ``file``'s bytes, every byte checked against its digest."""
        with _unnamed(f"read the bytes of file {file.id}"):
            return self.artifacts.open_verified(file.digest) / CONTENT

    def delete(self, tenant: str, file_id: str) -> StoredFile:
        """Delete ``tenant``'s file, and its bytes when no other file has them; not the input
        of a batch not finished (Conflict)."""
        gone, unused = self.store.delete_unread_file(tenant, file_id)
        if unused:
            self.discard_unused(gone.digest)
        return gone

    def purge_expired(self) -> int:
        """Delete the files whose time is up (not a running batch's input), a page at a
        time, and their bytes when no other file has them; how many went. First, the holds
        of uploads and discards that died half way (``Store.sweep_file_holds``) end."""
        while True:
            dead = self.store.sweep_file_holds(PURGE_PAGE)
            for digest in dead:
                self.discard_unused(digest)
            if len(dead) < PURGE_PAGE:
                break
        gone = 0
        while True:
            page = self.store.purge_expired_files(PURGE_PAGE)
            for file, unused in page:
                if unused:
                    self.discard_unused(file.digest)
            gone += len(page)
            if len(page) < PURGE_PAGE:
                if gone:
                    log.info("deleted %d expired file(s)", gone)
                return gone

    def discard_unused(self, digest: str) -> None:
        """Delete the bytes ``digest`` unless a file has them or an upload holds them (best
        effort: ``modelyard doctor`` finds what is left); no store transaction is open
        while they are deleted (``Store.discard_bytes``)."""
        try:
            self.store.discard_bytes(digest, self.artifacts.delete)
        except (ArtifactNotFound, ModelyardError, OSError):
            return


@contextlib.contextmanager
def _unnamed(what: str) -> Iterator[None]:
    """An artifact store's error, logged whole, raised again without its message (the
    server's paths, the store's location) for a tenant to see: bytes not found stay an
    ``ArtifactNotFound`` (a 404; a batch from them fails naming its file), any other
    failure an ``ArtifactError``; a failed verification, which names neither, as it is."""
    try:
        yield
    except ArtifactIntegrityError:
        raise
    except ArtifactNotFound as exc:
        log.error("cannot %s: %s", what, exc.one_line())
        raise ArtifactNotFound(
            f"cannot {what}: they are not in this server's artifact store", hint=IN_THE_LOG
        ) from exc
    except ArtifactError as exc:
        log.error("cannot %s: %s", what, exc.one_line())
        raise ArtifactError(f"cannot {what} right now", hint=IN_THE_LOG) from exc


def _copy_hashed(source: IO[bytes], path: Path, kind: str) -> tuple[str, int]:
    """Copy ``source`` to ``path``, hashing it on the way; the digest ``put_file`` gives it
    as ``kind``, and its size."""
    sha, size = hashlib.sha256(), 0
    with path.open("wb") as out:
        while chunk := source.read(CHUNK):
            sha.update(chunk)
            out.write(chunk)
            size += len(chunk)
    return one_file_digest(path.name, FileEntry(sha.hexdigest(), size), kind=kind), size


__all__ = ["CONTENT", "DEFAULT_MAX_FILE_BYTES", "DEFAULT_MAX_TENANT_FILE_BYTES", "FileKeeper"]
