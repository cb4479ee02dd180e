"""Tenants' files (OpenAI's Files API): what each one is, whose it is, where its bytes are.

A file's bytes live in the artifact store (a one-file artifact, named by its
digest); its row here says whose it is (the tenant, the key that uploaded it),
its name, purpose, size and when it was made. A tenant reads only its own
files: another tenant's id is not found, exactly as an id that never existed.
Uploading and deleting a file is the data plane (a tenant's request, like an
inference record or feedback), so it is not audited.

The bytes of one tenant's files with the same content are one artifact, deleted with
the last file that has them. No write transaction here waits on the artifact store (an
S3 call under SQLite's one write lock would hold up every writer, the record writer
first): an upload holds its bytes (``begin_upload``, a ``file_uploads`` row) before
storing them and makes its file in a second transaction (``finish_upload``); a discard
(``discard_bytes``) claims the bytes (a ``file_discards`` row) when neither a file nor
an upload has them, deletes them, then removes its claim. The check and the hold, or
the check and the claim, are one short transaction under the digest's lock, so a discard
never deletes bytes an upload or a file holds, and an upload that finds a discard of its
bytes under way stores them only once it has ended (``discarding``). What a crash
between the two leaves is removed by the servers' sweep (``sweep_file_holds``): an
upload's hold once its time (``UPLOAD_HOLD_S``) is up, a discard's claim once it is
taken for dead (``DISCARD_STALE_S``); and their bytes unless a file has them.
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
    exists,
    func,
    or_,
    select,
)
from sqlalchemy import delete as sql_delete
from sqlalchemy.orm import Mapped, Session, mapped_column

from modelyard.errors import Conflict, NotFound, StorageQuotaExceeded
from modelyard.store._core import StoreCore
from modelyard.store._rows import lock_name, tenant_row
from modelyard.store._schema import Base, utcnow

FILE_PURPOSES = ("batch", "batch_output")  # what a file may be for (OpenAI's names)
UPLOAD_HOLD_S = 3600
"""How long an upload may hold its bytes: then the sweep ends its hold (and its file is
refused if it ever comes), taking it for dead; storing 200 MiB takes minutes at most."""
DISCARD_STALE_S = 3600
"""How long a discard's claim stands: then it is taken for dead (an artifact store's
call gives up long before: S3's connect 10 s, read 60 s, 5 tries)."""


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


class FileUploadRow(Base):
    """An upload whose bytes are being stored: it holds them against a discard, and counts
    in its tenant's files, until its file is made (``id`` is the file's) or it ends."""

    __tablename__ = "file_uploads"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(Integer, ForeignKey("tenants.id"), index=True)
    digest: Mapped[str] = mapped_column(String(64), index=True)
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    until: Mapped[datetime] = mapped_column(index=True)  # then the sweep ends it


class FileDiscardRow(Base):
    """A discard of the bytes ``digest`` under way (its delete runs outside any
    transaction): an upload of the same bytes waits for it to end."""

    __tablename__ = "file_discards"
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    token: Mapped[str] = mapped_column(String(32))  # whose claim it is
    started_at: Mapped[datetime] = mapped_column(default=utcnow)


@dataclass(frozen=True)
class Upload:
    """An upload begun (``begin_upload``): its bytes held until it ends."""

    id: str  # the file's id, once it is made
    tenant: str
    digest: str
    size: int
    discarding: bool  # a discard of the same bytes was under way: store them once it ends


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
    file_id: str | None = None,
) -> FileRow:
    """A new file's row in the session ``s`` (a batch's output is made in its transaction),
    expiring ``expires_s`` after it is made (None: kept until deleted)."""
    now = utcnow()
    until = None if expires_s is None else now + timedelta(seconds=expires_s)
    row = FileRow(
        id=file_id or new_file_id(), tenant_id=tenant_id, api_key_id=api_key_id, filename=filename,
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

    def begin_upload(
        self, tenant: str, *, size: int, digest: str, quota: int | None = None
    ) -> Upload:
        """Hold the bytes ``digest`` (``size`` of them) for a new file of ``tenant``, before
        they are stored: no discard deletes them until the upload ends (``finish_upload``,
        ``abandon_upload``), and they count in the tenant's files from now. With ``quota``,
        refused (``StorageQuotaExceeded``) when the tenant's files and uploads would hold
        more than ``quota`` bytes with it (one tenant's are serialized: they cannot pass it
        together). ``discarding`` in the answer: a discard of the same bytes was under way,
        which may delete them still; store them once ``discarding`` says it has ended."""
        now = utcnow()
        with self._write(f"begin an upload for tenant {tenant!r}") as s:
            if quota is not None:
                lock_name(s, "file_quota", tenant)
                check_file_quota(tenant, self._file_bytes(s, tenant), size, quota)
            lock_name(s, "file_bytes", digest)
            row = FileUploadRow(
                id=new_file_id(), tenant_id=tenant_row(s, tenant).id, digest=digest,
                bytes=size, created_at=now, until=now + timedelta(seconds=UPLOAD_HOLD_S),
            )  # fmt: skip
            s.add(row)
            return Upload(row.id, tenant, digest, size, _discard_under_way(s, digest, now))

    def discarding(self, digest: str) -> bool:
        """Whether a discard of the bytes ``digest`` is under way (read only)."""
        with self._session(f"look for a discard of the bytes {digest[:12]}") as s:
            return _discard_under_way(s, digest, utcnow())

    def finish_upload(
        self,
        upload: Upload,
        *,
        filename: str,
        purpose: str,
        api_key_id: str | None = None,
        expires_s: int | None = None,
    ) -> StoredFile:
        """The file of ``upload``, its bytes stored: made, and the upload's hold ended, in
        one transaction (the file holds them from then on). A Conflict when the hold was
        ended meanwhile (the sweep took the upload for dead: its bytes may be gone)."""
        with self._write(f"add a file for tenant {upload.tenant!r}") as s:
            lock_name(s, "file_bytes", upload.digest)
            held = s.get(FileUploadRow, upload.id, with_for_update=True, populate_existing=True)
            if held is None:
                raise Conflict(
                    f"the upload of {filename!r} took more than {UPLOAD_HOLD_S} s to store "
                    "its bytes: its hold on them was ended",
                    hint="Upload the file again.",
                    param="file",
                )
            row = add_file_row(
                s, held.tenant_id, filename=filename, purpose=purpose, size=held.bytes,
                digest=held.digest, api_key_id=api_key_id, expires_s=expires_s,
                file_id=held.id,
            )  # fmt: skip
            s.delete(held)
            s.flush()
            return _to_file(row, upload.tenant)

    def abandon_upload(self, upload_id: str) -> None:
        """End an upload's hold without a file (it failed): ``discard_bytes`` may then
        delete its bytes."""
        with self._write(f"end the upload {upload_id!r}") as s:
            s.execute(sql_delete(FileUploadRow).where(FileUploadRow.id == upload_id))

    def discard_bytes(self, digest: str, delete: Callable[[str], None]) -> bool:
        """``delete(digest)`` unless a file has those bytes, an upload holds them or another
        discard of them is under way; whether it was called. ``delete`` runs outside any
        transaction: the check and this discard's claim are one transaction under the
        digest's lock that ``begin_upload`` takes too, so an upload begun after it waits
        for the claim to go (``discarding``), and the claim goes once ``delete`` ended."""
        now, token = utcnow(), secrets.token_hex(16)
        with self._write(f"claim the bytes {digest[:12]} to discard") as s:
            lock_name(s, "file_bytes", digest)
            if _bytes_held(s, digest):
                return False
            claim = s.get(FileDiscardRow, digest, with_for_update=True)
            if claim is None:
                s.add(FileDiscardRow(digest=digest, token=token, started_at=now))
            elif _stale(claim, now):  # its discard is dead: this one takes it over
                claim.token, claim.started_at = token, now
            else:
                return False  # another discard deletes them
        try:
            delete(digest)
        finally:
            with self._write(f"end the discard of the bytes {digest[:12]}") as s:
                s.execute(
                    sql_delete(FileDiscardRow).where(
                        FileDiscardRow.digest == digest, FileDiscardRow.token == token
                    )
                )
        return True

    def sweep_file_holds(self, limit: int = 100) -> list[str]:
        """End up to ``limit`` holds of uploads whose time is up and claims of discards
        taken for dead (what a crash between their two transactions left); the digests of
        their bytes, which the caller discards (unless a file has them)."""
        now = utcnow()
        with self._write("end the holds of dead uploads and discards") as s:
            uploads = s.scalars(
                select(FileUploadRow)
                .where(FileUploadRow.until <= now)
                .order_by(FileUploadRow.until)
                .limit(limit)
                .with_for_update()
            ).all()
            claims = s.scalars(
                select(FileDiscardRow)
                .where(FileDiscardRow.started_at <= now - timedelta(seconds=DISCARD_STALE_S))
                .limit(limit)
                .with_for_update()
            ).all()
            for row in (*uploads, *claims):
                s.delete(row)
            return sorted({r.digest for r in uploads} | {c.digest for c in claims})

    def file_bytes(self, tenant: str) -> int:
        """How many bytes ``tenant``'s files hold (its uploads, those under way too, and its
        batches' outputs)."""
        with self._session(f"count the files of tenant {tenant!r}") as s:
            return self._file_bytes(s, tenant)

    @staticmethod
    def _file_bytes(s: Session, tenant: str) -> int:
        owner = tenant_row(s, tenant).id
        total = s.scalar(select(func.sum(FileRow.bytes)).where(FileRow.tenant_id == owner))
        held = s.scalar(
            select(func.sum(FileUploadRow.bytes)).where(FileUploadRow.tenant_id == owner)
        )
        return int(total or 0) + int(held or 0)

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
        """The digest of every file's bytes, and of those an upload holds (what ``modelyard
        doctor`` must keep)."""
        with self._session("list file digests") as s:
            made = set(s.scalars(select(FileRow.digest).distinct()))
            return made | set(s.scalars(select(FileUploadRow.digest).distinct()))


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


def _bytes_held(s: Session, digest: str) -> bool:
    """Whether a file has the bytes ``digest``, or an upload holds them."""
    held = exists().where(FileRow.digest == digest)
    uploading = exists().where(FileUploadRow.digest == digest)
    return bool(s.scalar(select(held | uploading)))


def _discard_under_way(s: Session, digest: str, now: datetime) -> bool:
    """Whether a discard of the bytes ``digest`` has claimed them and is not dead."""
    claim = s.get(FileDiscardRow, digest, populate_existing=True)
    return claim is not None and not _stale(claim, now)


def _stale(claim: FileDiscardRow, now: datetime) -> bool:
    return claim.started_at <= now - timedelta(seconds=DISCARD_STALE_S)


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
    "DISCARD_STALE_S",
    "FILE_PURPOSES",
    "UPLOAD_HOLD_S",
    "FileDiscardRow",
    "FileRow",
    "FileStore",
    "FileUploadRow",
    "StoredFile",
    "Upload",
    "add_file_row",
    "new_file_id",
    "owned_file_row",
    "remove_file_row",
]
