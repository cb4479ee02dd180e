"""Tenants' files: their bytes in the artifact store, their rows in the store.

``FileKeeper`` is the one place that writes, reads and deletes a file's bytes:
each file is a one-file artifact (``content``) of its tenant's kind (``file:<tenant>``),
so the same bytes uploaded twice by one tenant are stored once, and never shared with
another tenant's (whose upload would otherwise be quicker, or free on S3, when the bytes
were there: a tenant could tell that another holds a given file). A file's bytes are
deleted with the last file that has them, and files whose time is up
(``_file_expiry``) are deleted by ``purge_expired``. The Files API (``_files_api``) and
the batch runner (its output and error files) both go through it.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from modelyard.artifacts import ArtifactStore
from modelyard.errors import ArtifactNotFound, ModelyardError
from modelyard.store import Store, StoredFile, check_file_quota

DEFAULT_MAX_FILE_BYTES = 200 * 1024 * 1024  # OpenAI's limit on a batch input file
DEFAULT_MAX_TENANT_FILE_BYTES = 10 * 1024**3  # what one tenant's files may hold in all
PURGE_PAGE = 100  # expired files deleted in one transaction
CONTENT = "content"  # the name of a file's bytes in its artifact
KIND = "file"  # the artifacts' kind, and its tenant's name after a colon (``kind``)

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
        with self.artifacts.staging("file") as work:
            yield work / CONTENT

    def keep(self, path: Path, tenant: str) -> tuple[str, int]:
        """Store the bytes at ``path`` as ``tenant``'s; their digest and size."""
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
        (None: kept until deleted); blocks: call it on a worker thread."""
        with self.staged() as path:
            with path.open("wb") as out:
                shutil.copyfileobj(source, out, 1024 * 1024)
            self.check_room(tenant, path.stat().st_size)  # before the bytes are kept
            digest, size = self.keep(path, tenant)

            def ensure_bytes() -> None:
                # the same bytes, another file's, deleted between ``keep`` and this row
                if not self.artifacts.exists(digest):
                    self.keep(path, tenant)

            try:
                return self.store.add_file(
                    tenant, filename=filename, purpose=purpose, size=size, digest=digest,
                    api_key_id=api_key_id, quota=self.max_tenant_bytes,
                    ensure_bytes=ensure_bytes, expires_s=expires_s,
                )  # fmt: skip
            except BaseException:
                self.discard_unused(digest)
                raise

    def path(self, file: StoredFile) -> Path:
        """A local path to ``file``'s bytes, every byte checked against its digest."""
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
        time, and their bytes when no other file has them; how many went."""
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
        """Delete the bytes ``digest`` unless a file has them (best effort: ``modelyard
        doctor`` finds what is left)."""
        try:
            self.store.discard_bytes(digest, self.artifacts.delete)
        except (ArtifactNotFound, ModelyardError, OSError):
            return


__all__ = ["CONTENT", "DEFAULT_MAX_FILE_BYTES", "DEFAULT_MAX_TENANT_FILE_BYTES", "FileKeeper"]
