"""What every artifact store offers: the interface callers name, and the work area they share.

``ArtifactStore`` is the one type callers use. Two stores implement it:
``LocalArtifactStore`` (a directory, ``_local.py``) and ``S3ArtifactStore`` (a
bucket and prefix on an S3-compatible service, read through a local cache,
``_s3.py``); ``open_artifact_store`` (``_factory.py``) picks one from
``MODELYARD_ARTIFACTS``. Both are content-addressed the same way and hand out
paths only through ``open_verified``.

Both keep a local directory ``root``: the store itself, or the S3 store's cache.
Its ``tmp/`` is the work area (imports stage there, writes are prepared there),
and what manages it is shared here. What a remote store's killed writers leave
(multipart uploads, their owners' markers) is listed by ``upload_entries``;
``sweep_tmp`` removes both kinds of leftover.

``ArtifactStore(root)`` still builds the local store, as it did before there
were two (``pathlib.Path(...)`` gives a ``PosixPath`` the same way): the
subclass that does so declares itself with ``direct=True``.
"""

from __future__ import annotations

import abc
import builtins
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Self, cast

from modelyard.artifacts._manifest import ArtifactRef
from modelyard.artifacts._tmp import TempEntry, UploadEntry, new_owned_dir, remove_entry, scan_tmp
from modelyard.errors import ArtifactError


class ArtifactStore(abc.ABC):
    """Content-addressed artifacts (directories of files), each named by its manifest's sha256."""

    _direct: ClassVar[type[ArtifactStore] | None] = None  # what ``ArtifactStore(root)`` builds

    def __init_subclass__(cls, *, direct: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if direct:
            ArtifactStore._direct = cls

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        if cls is not ArtifactStore:
            return super().__new__(cls)
        if ArtifactStore._direct is None:  # pragma: no cover - _local is always imported
            raise TypeError("no artifact store implementation is registered")
        return cast(Self, super().__new__(ArtifactStore._direct))

    def __init__(self, root: Path) -> None:
        self.root = Path(root)  # the local directory: the store, or a remote store's cache

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r})"

    @property
    @abc.abstractmethod
    def location(self) -> str:
        """Where the artifacts live, as a user names it (a directory, ``s3://bucket/prefix``)."""

    # -- content ----------------------------------------------------------------------

    @abc.abstractmethod
    def put_dir(self, src: Path, *, kind: str) -> ArtifactRef:
        """Store a copy of the directory ``src``; storing the same content again is a no-op."""

    @abc.abstractmethod
    def put_file(self, path: Path, *, kind: str) -> ArtifactRef:
        """Store one file as a one-file artifact that keeps the file's name."""

    @abc.abstractmethod
    def get(self, digest: str) -> ArtifactRef:
        """The ref of a stored artifact, from its manifest (file bytes are not checked)."""

    @abc.abstractmethod
    def exists(self, digest: str) -> bool:
        """Whether the artifact is stored."""

    @abc.abstractmethod
    def open_verified(self, digest: str) -> Path:
        """Check every byte against the manifest, then return a local directory of the files.

        This is the only way to get a path to an artifact's files, so nothing
        loads bytes that differ from what was registered.
        """

    @abc.abstractmethod
    def delete(self, digest: str) -> None:
        """Remove a stored artifact (``ArtifactNotFound`` when there is none)."""

    @abc.abstractmethod
    def age_s(self, digest: str) -> float:
        """Seconds since the artifact was stored."""

    @abc.abstractmethod
    def digests(self) -> builtins.list[str]:
        """The digest (bare hex) of every stored artifact, sorted, without reading any.

        A damaged artifact is listed too: ``get`` or ``verify`` then says what is wrong.
        """

    def list(self) -> builtins.list[ArtifactRef]:
        """Every stored artifact, ordered by digest (``ArtifactError`` if one is damaged)."""
        return [self.get(d) for d in self.digests()]

    def verify(self, digest: str) -> None:
        """Raise ``ArtifactIntegrityError`` unless every stored byte matches the manifest."""
        self.open_verified(digest)

    def ensure(self) -> None:
        """Create what the store needs to be written to (``modelyard init``), or say why not."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ArtifactError(
                f"cannot create the artifact store {self.root}: {exc.strerror or exc}",
                hint="Set MODELYARD_ARTIFACTS to a writable directory.",
            ) from exc

    # -- the work area ----------------------------------------------------------------

    @contextlib.contextmanager
    def staging(self, purpose: str = "import") -> Iterator[Path]:
        """A new empty work dir under ``<root>/tmp`` (created when needed), removed after use.

        Its name records this process, so a dir left by a killed process is
        found and removed by ``sweep_tmp``.
        """
        try:
            path = self._new_tmp(purpose)
        except OSError as exc:
            raise ArtifactError(
                f"cannot create a work directory in {self.root / 'tmp'}: {exc.strerror or exc}",
                hint="Check the artifact store (MODELYARD_ARTIFACTS) is a writable directory.",
            ) from exc
        try:
            yield path
        finally:
            remove_entry(TempEntry(path, 0, 0.0, os.getpid(), None, True, "done"))

    def tmp_entries(self, *, max_age_s: float) -> builtins.list[TempEntry]:
        """What the work area holds, each entry judged stale (its writer is gone) or not."""
        return scan_tmp(self.root / "tmp", max_age_s=max_age_s)

    def remove_tmp(self, entry: TempEntry) -> None:
        """Delete one entry of the work area (as found by ``tmp_entries``)."""
        if entry.path.parent != self.root / "tmp":
            raise ArtifactError(f"{entry.path} is not in the work area {self.root / 'tmp'}")
        remove_entry(entry)

    def upload_entries(self, *, max_age_s: float) -> builtins.list[UploadEntry]:
        """What unfinished remote writes left (none for a local store), each judged stale or not."""
        return []

    def remove_upload(self, entry: UploadEntry) -> None:
        """Abort or delete one unfinished remote write (as found by ``upload_entries``)."""
        raise ArtifactError(f"{entry.location} is not an unfinished write of {self.location}")

    def sweep_tmp(self, *, max_age_s: float = 3600.0) -> builtins.list[TempEntry | UploadEntry]:
        """Remove what killed writers left, in the work area and the store; return what was."""
        removed: builtins.list[TempEntry | UploadEntry] = []
        for entry in self.tmp_entries(max_age_s=max_age_s):
            if entry.stale:
                try:
                    remove_entry(entry)
                except OSError:
                    continue  # another sweeper got there first, or it is not ours to delete
                removed.append(entry)
        for upload in self.upload_entries(max_age_s=max_age_s):
            if upload.stale:
                try:
                    self.remove_upload(upload)
                except ArtifactError:
                    continue  # gone meanwhile, or the service refused: the next sweep retries
                removed.append(upload)
        return removed

    def _new_tmp(self, purpose: str) -> Path:
        return new_owned_dir(self.root / "tmp", purpose)
