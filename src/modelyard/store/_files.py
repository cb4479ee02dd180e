"""Tenants' files (OpenAI's Files API): what each one is, whose it is, where its bytes are.

A file's bytes live in the artifact store (a one-file artifact, named by its
digest); its row here says whose it is (the tenant, the key that uploaded it),
its name, purpose, size and when it was made. A tenant reads only its own
files: another tenant's id is not found, exactly as an id that never existed.
Uploading and deleting a file is the data plane (a tenant's request, like an
inference record or feedback), so it is not audited.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    ForeignKey,
    Index,
    Integer,
    String,
    func,
    or_,
    select,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from modelyard.errors import NotFound, StorageQuotaExceeded
from modelyard.store._core import StoreCore
from modelyard.store._rows import lock_name, tenant_row
from modelyard.store._schema import Base, utcnow

FILE_PURPOSES = ("batch", "batch_output")  # what a file may be for (OpenAI's names)


class FileRow(Base):
    __tablename__ = "files"
    __table_args__ = (Index("ix_files_tenant_created", "tenant_id", "created_at", "id"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(Integer, ForeignKey("tenants.id"))
    api_key_id: Mapped[str | None] = mapped_column(String(64))
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    digest: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(index=True)  # None: until deleted


@dataclass(frozen=True)
class StoredFile:
    """A tenant's file: its bytes are the artifact ``digest``."""

    id: str
    tenant: str
    api_key_id: str | None
    filename: str
    purpose: str
    bytes: int
    digest: str
    created_at: datetime
    expires_at: datetime | None = None  # then it is gone as if deleted; None: kept until deleted


def new_file_id() -> str:
    return f"file-{secrets.token_hex(12)}"


def add_file_row(
    s: Session,
    tenant_id: int,
    *,
    filename: str,
    purpose: str,
    size: int,
    digest: str,
    api_key_id: str | None,
    expires_s: int | None = None,
) -> FileRow:
    """A new file's row in the session ``s`` (a batch's output is made in its transaction),
    expiring ``expires_s`` after it is made (None: kept until deleted)."""
    now = utcnow()
    until = None if expires_s is None else now + timedelta(seconds=expires_s)
    row = FileRow(
        id=new_file_id(), tenant_id=tenant_id, api_key_id=api_key_id, filename=filename,
        purpose=purpose, bytes=size, digest=digest, created_at=now, expires_at=until,
    )  # fmt: skip
    s.add(row)
    return row


def check_file_quota(tenant: str, held: int, size: int, quota: int) -> None:
    """Refuse a file of ``size`` bytes to a tenant whose files hold ``held`` of ``quota``."""
    if held + size > quota:
        raise StorageQuotaExceeded(
            f"tenant {tenant!r} has {held} bytes of files; this file of {size} bytes would "
            f"take it over its limit of {quota} bytes (--max-tenant-file-bytes)",
            hint="Delete files it no longer needs (DELETE /v1/files/{id}: batches' inputs and "
            "outputs are kept until they expire), or ask an operator to raise the limit.",
            param="file",
        )


class FileStore(StoreCore):
    """Tenants' files (data plane: not audited)."""

    def add_file(
        self,
        tenant: str,
        *,
        filename: str,
        purpose: str,
        size: int,
        digest: str,
        api_key_id: str | None = None,
        quota: int | None = None,
        ensure_bytes: Callable[[], None] | None = None,
        expires_s: int | None = None,
    ) -> StoredFile:
        """A new file of ``tenant``; with ``quota``, refused (``StorageQuotaExceeded``) when
        the tenant's files would hold more than ``quota`` bytes with it (uploads of one
        tenant at once are serialized, so they cannot pass it together).

        ``ensure_bytes`` runs once the row is added, under the digest's lock that
        ``discard_bytes`` takes too: a discard of the same bytes (another file's, deleted
        meanwhile) has then either seen this row, or finished deleting them, and
        ``ensure_bytes`` puts them back."""
        with self._write(f"add a file for tenant {tenant!r}") as s:
            if quota is not None:
                lock_name(s, "file_quota", tenant)
                check_file_quota(tenant, self._file_bytes(s, tenant), size, quota)
            lock_name(s, "file_bytes", digest)
            row = add_file_row(
                s, tenant_row(s, tenant).id, filename=filename, purpose=purpose, size=size,
                digest=digest, api_key_id=api_key_id, expires_s=expires_s,
            )  # fmt: skip
            s.flush()
            if ensure_bytes is not None:
                ensure_bytes()
            return _to_file(row, tenant)

    def discard_bytes(self, digest: str, delete: Callable[[str], None]) -> bool:
        """``delete(digest)`` unless a file has those bytes, under the digest's lock (see
        ``add_file``); whether it was called."""
        with self._write(f"discard the bytes {digest[:12]}") as s:
            lock_name(s, "file_bytes", digest)
            if s.scalar(select(FileRow.id).where(FileRow.digest == digest).limit(1)):
                return False
            delete(digest)
            return True

    def file_bytes(self, tenant: str) -> int:
        """How many bytes ``tenant``'s files hold (its uploads and its batches' outputs)."""
        with self._session(f"count the files of tenant {tenant!r}") as s:
            return self._file_bytes(s, tenant)

    @staticmethod
    def _file_bytes(s: Session, tenant: str) -> int:
        owner = tenant_row(s, tenant).id
        total = s.scalar(select(func.sum(FileRow.bytes)).where(FileRow.tenant_id == owner))
        return int(total or 0)

    def get_file(self, tenant: str, file_id: str) -> StoredFile:
        """``tenant``'s file ``file_id``; NotFound for another tenant's, as for none."""
        with self._session(f"read file {file_id!r}") as s:
            row = s.get(FileRow, file_id)
            owner = tenant_row(s, tenant)
            if row is None or row.tenant_id != owner.id or _expired(row):
                raise _missing(file_id)
            return _to_file(row, tenant)

    def list_files(
        self,
        tenant: str,
        *,
        purpose: str | None = None,
        limit: int = 10000,
        after: str | None = None,
        ascending: bool = False,
    ) -> tuple[list[StoredFile], bool]:
        """A page of ``tenant``'s files by creation time (newest first unless
        ``ascending``), those after the file ``after``; and whether more follow."""
        with self._session(f"list the files of tenant {tenant!r}") as s:
            owner = tenant_row(s, tenant)
            query = select(FileRow).where(FileRow.tenant_id == owner.id, _kept(utcnow()))
            if purpose is not None:
                query = query.where(FileRow.purpose == purpose)
            if after is not None:
                mark = s.get(FileRow, after)
                if mark is None or mark.tenant_id != owner.id or _expired(mark):
                    raise NotFound(f"no file with id {after!r} to list after", param="after")
                key = (mark.created_at, mark.id)
                if ascending:
                    query = query.where(
                        (FileRow.created_at > key[0])
                        | ((FileRow.created_at == key[0]) & (FileRow.id > key[1]))
                    )
                else:
                    query = query.where(
                        (FileRow.created_at < key[0])
                        | ((FileRow.created_at == key[0]) & (FileRow.id < key[1]))
                    )
            order = (
                (FileRow.created_at.asc(), FileRow.id.asc())
                if ascending
                else (FileRow.created_at.desc(), FileRow.id.desc())
            )
            rows = list(s.scalars(query.order_by(*order).limit(limit + 1)))
            return [_to_file(r, tenant) for r in rows[:limit]], len(rows) > limit

    def delete_file(self, tenant: str, file_id: str) -> tuple[StoredFile, bool]:
        """Remove ``tenant``'s file ``file_id`` (NotFound as ``get_file``); returns it and
        whether its bytes are now unused (no other file has the same content). The Files API
        deletes through ``BatchStore.delete_unread_file`` (not a running batch's input)."""
        with self._write(f"delete file {file_id!r}") as s:
            return remove_file_row(s, owned_file_row(s, tenant, file_id, lock="update"), tenant)

    def file_digests(self) -> set[str]:
        """The digest of every file's bytes (what ``modelyard doctor`` must keep)."""
        with self._session("list file digests") as s:
            return set(s.scalars(select(FileRow.digest).distinct()))


def owned_file_row(s: Session, tenant: str, file_id: str, *, lock: str | None = None) -> FileRow:
    """``tenant``'s file row (NotFound as ``get_file``, for an expired file too), locked
    (``share``: against its deletion; ``update``: to delete it) until the transaction ends
    when ``lock``."""
    row = s.get(FileRow, file_id)
    owner = tenant_row(s, tenant)
    if row is None or row.tenant_id != owner.id or _expired(row):
        raise _missing(file_id)
    if lock is not None:
        row = s.scalar(
            select(FileRow)
            .where(FileRow.id == file_id)
            .with_for_update(read=lock == "share")
            .execution_options(populate_existing=True)
        )
        if row is None:  # deleted meanwhile
            raise _missing(file_id)
    return row


def remove_file_row(s: Session, row: FileRow, tenant: str) -> tuple[StoredFile, bool]:
    """Delete ``row``; the file it was and whether its bytes are now unused."""
    gone = _to_file(row, tenant)
    s.delete(row)
    s.flush()
    others = s.scalar(
        select(func.count()).select_from(FileRow).where(FileRow.digest == gone.digest)
    )
    return gone, not others


def _expired(row: FileRow) -> bool:
    """Whether the file's time is up (it is purged soon, and meanwhile not found)."""
    return row.expires_at is not None and row.expires_at <= utcnow()


def _kept(now: datetime) -> ColumnElement[bool]:
    """Files whose time is not up at ``now``."""
    return or_(FileRow.expires_at.is_(None), FileRow.expires_at > now)


def _missing(file_id: str) -> NotFound:
    return NotFound(
        f"no file with id {file_id!r}", hint="List your files with GET /v1/files.", param="file_id"
    )


def _to_file(row: FileRow, tenant: str) -> StoredFile:
    return StoredFile(
        row.id, tenant, row.api_key_id, row.filename, row.purpose, row.bytes, row.digest,
        row.created_at, row.expires_at,
    )  # fmt: skip


__all__ = [
    "FILE_PURPOSES",
    "FileRow",
    "FileStore",
    "StoredFile",
    "add_file_row",
    "new_file_id",
    "owned_file_row",
    "remove_file_row",
]
