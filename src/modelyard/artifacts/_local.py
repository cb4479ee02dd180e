"""A content-addressed artifact store in a local directory.

Layout::

    <root>/sha256/<first 2 hex>/<digest>/manifest.json
    <root>/sha256/<first 2 hex>/<digest>/files/...
    <root>/tmp/                               work area for writes and deletes

Every write is staged in a temp dir under ``<root>/tmp`` (the same filesystem)
and renamed into place in one step, so a final path holds a whole artifact or
nothing.  Deletes rename out of place first for the same reason.  Temp dirs
are created when needed and named after the process that owns them, so
``sweep_tmp`` can remove what a killed writer left (``_base.py``, ``_tmp.py``).

The S3 store's read-through cache is one of these, so the helpers that stage,
seal and check a tree are shared with it (``_s3.py``).
"""

from __future__ import annotations

import builtins
import hashlib
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

from modelyard.artifacts._base import ArtifactStore
from modelyard.artifacts._manifest import (
    ArtifactRef,
    FileEntry,
    canonical_bytes,
    digest_of,
    hash_file,
    normalize_digest,
    parse_manifest,
    short,
)
from modelyard.errors import ArtifactError, ArtifactIntegrityError, ArtifactNotFound

_CHUNK = 1 << 20
_FILE_MODE = 0o444  # stored bytes are never edited in place; this guards against accidents
_DIR_MODE = 0o755


class LocalArtifactStore(ArtifactStore, direct=True):
    """Content-addressed artifacts (directories of files) under the directory ``root``."""

    @property
    def location(self) -> str:
        return str(self.root)

    def put_dir(self, src: Path, *, kind: str) -> ArtifactRef:
        """Store a copy of the directory ``src``; storing the same content again is a no-op."""
        return self._put(dir_source(Path(src)), kind=kind, origin=Path(src))

    def put_file(self, path: Path, *, kind: str) -> ArtifactRef:
        """Store one file as a one-file artifact that keeps the file's name."""
        return self._put(file_source(Path(path)), kind=kind, origin=Path(path))

    def get(self, digest: str) -> ArtifactRef:
        """The ref of a stored artifact, from its manifest (file bytes are not checked)."""
        hex_digest = normalize_digest(digest)
        manifest = self._dir(hex_digest) / "manifest.json"
        try:
            raw = manifest.read_bytes()
        except FileNotFoundError:
            if self._dir(hex_digest).is_dir():
                raise _integrity(hex_digest, "manifest.json", "manifest.json is missing") from None
            raise self._not_found(hex_digest) from None
        except OSError as exc:
            raise ArtifactError(f"cannot read {manifest}: {exc}", digest=hex_digest) from exc
        return parse_manifest(raw, hex_digest)

    def exists(self, digest: str) -> bool:
        return self._dir(normalize_digest(digest)).is_dir()

    def open_verified(self, digest: str) -> Path:
        """Check every stored byte against the manifest, then return the ``files/`` dir.

        This is the only way to get a path to an artifact's files, so nothing
        loads bytes that differ from what was registered.
        """
        ref = self.get(digest)
        files_dir = self._dir(ref.digest) / "files"
        try:
            _check_files(ref, files_dir)
        except OSError as exc:
            raise ArtifactError(
                f"cannot read artifact {short(ref.digest)}…: {exc}", digest=ref.digest
            ) from exc
        return files_dir

    def delete(self, digest: str) -> None:
        hex_digest = normalize_digest(digest)
        final = self._dir(hex_digest)
        if not final.is_dir():
            raise self._not_found(hex_digest)
        try:
            self._discard(final)
        except OSError as exc:
            raise ArtifactError(
                f"cannot delete artifact {short(hex_digest)}…: {exc}", digest=hex_digest
            ) from exc

    def age_s(self, digest: str) -> float:
        """Seconds since the artifact was stored (its directory's last change)."""
        hex_digest = normalize_digest(digest)
        try:
            return max(0.0, time.time() - self._dir(hex_digest).stat().st_mtime)
        except FileNotFoundError:
            raise self._not_found(hex_digest) from None

    def digests(self) -> builtins.list[str]:
        return sorted(
            p.name
            for p in (self.root / "sha256").glob("??/*")
            if p.is_dir() and p.name[:2] == p.parent.name and _is_digest(p.name)
        )

    # -- internals -----------------------------------------------------------

    def _dir(self, hex_digest: str) -> Path:
        return self.root / "sha256" / hex_digest[:2] / hex_digest

    def _not_found(self, hex_digest: str) -> ArtifactNotFound:
        return ArtifactNotFound(
            f"no artifact sha256:{hex_digest} in {self.root}",
            hint="Check the digest and that MODELYARD_ARTIFACTS names the right store.",
            digest=hex_digest,
        )

    def _put(self, files: Mapping[str, Path], *, kind: str, origin: Path) -> ArtifactRef:
        _check_kind(kind)
        try:
            tmp = self._new_tmp("put")
        except OSError as exc:
            raise ArtifactError(f"cannot write to the artifact store {self.root}: {exc}") from exc
        try:
            ref = _stage(files, kind, tmp)
            self._install(tmp, ref.digest)
            return ref
        except OSError as exc:
            raise ArtifactError(
                f"cannot store {origin} in {self.root}: {exc}", path=str(origin)
            ) from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _install(self, staged: Path, hex_digest: str) -> None:
        """Rename the staged dir into place, keeping an intact copy already there."""
        final = self._dir(hex_digest)
        if final.is_dir():
            if self._intact(hex_digest):
                return
            self._discard(final)  # damaged: replace it with the good bytes just staged
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            staged.rename(final)  # os.rename: atomic on one filesystem
        except OSError:
            if not final.is_dir():
                raise
            return  # a concurrent writer installed the same content first
        _fsync_dir(final.parent)

    def _intact(self, hex_digest: str) -> bool:
        try:
            self.verify(hex_digest)
        except (ArtifactIntegrityError, ArtifactNotFound):
            return False
        return True

    def _discard(self, path: Path) -> None:
        """Move ``path`` out of the store's namespace in one step, then remove it."""
        grave = self._new_tmp("del")
        path.rename(grave / path.name)
        shutil.rmtree(grave)


def dir_source(src: Path) -> dict[str, Path]:
    """The files to store for the directory ``src``, by relative POSIX path (checked)."""
    if not src.is_dir():
        raise ArtifactError(f"cannot store {src}: not a directory", path=str(src))
    files = _collect_source(src)
    if not files:
        raise ArtifactError(
            f"cannot store {src}: it holds no files",
            hint="An artifact needs at least one file.",
            path=str(src),
        )
    return files


def file_source(path: Path) -> dict[str, Path]:
    """The one file to store for ``path``, under its own name (checked)."""
    if path.is_symlink() or not path.is_file():
        raise ArtifactError(f"cannot store {path}: not a regular file", path=str(path))
    return {path.name: path}


def _check_kind(kind: str) -> None:
    if not isinstance(kind, str) or not kind.strip():
        raise ArtifactError(f"artifact kind must be a non-empty string, not {kind!r}")


def _is_digest(name: str) -> bool:
    try:
        return normalize_digest(name) == name
    except ArtifactError:
        return False


def _scan(root: Path) -> tuple[dict[str, Path], list[tuple[str, str]]]:
    """Regular files under ``root`` by relative POSIX path, plus anything else found.

    Symlinks are never followed: a link could pull in (or later redirect to)
    bytes outside the artifact.
    """
    files: dict[str, Path] = {}
    odd: list[tuple[str, str]] = []
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                path = Path(entry.path)
                rel = path.relative_to(root).as_posix()
                if entry.is_symlink():
                    odd.append((rel, "a symlink"))
                elif entry.is_dir(follow_symlinks=False):
                    stack.append(path)
                elif entry.is_file(follow_symlinks=False):
                    files[rel] = path
                else:
                    odd.append((rel, "not a regular file or directory"))
    return dict(sorted(files.items())), sorted(odd)


def _collect_source(src: Path) -> dict[str, Path]:
    try:
        files, odd = _scan(src)
    except OSError as exc:
        raise ArtifactError(f"cannot read {src}: {exc}", path=str(src)) from exc
    if odd:
        rel, what = odd[0]
        raise ArtifactError(
            f"cannot store {src}: {rel} is {what}",
            hint="Only regular files and directories can be stored; copy the target in instead.",
            path=str(src / rel),
        )
    return files


def _stage(files: Mapping[str, Path], kind: str, tmp: Path) -> ArtifactRef:
    """Copy and hash every file into ``tmp``, write the manifest, seal the tree.

    Hashing while copying means the manifest describes exactly the bytes that
    were written, even if the source changes meanwhile.
    """
    entries: dict[str, FileEntry] = {}
    for rel, src in files.items():
        dst = tmp / "files" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        entries[rel] = _copy_file(src, dst)
    manifest = canonical_bytes(kind, entries)
    _write_durably(tmp / "manifest.json", manifest)
    _seal(tmp)
    return ArtifactRef(digest=digest_of(manifest), kind=kind, files=entries)


def _copy_file(src: Path, dst: Path) -> FileEntry:
    """Copy ``src`` to a new file ``dst`` in chunks, returning the hash of what was written."""
    sha = hashlib.sha256()
    size = 0
    with src.open("rb") as fin, dst.open("xb") as fout:
        while chunk := fin.read(_CHUNK):
            sha.update(chunk)
            fout.write(chunk)
            size += len(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return FileEntry(sha256=sha.hexdigest(), size=size)


def _write_durably(path: Path, data: bytes) -> None:
    with path.open("xb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _seal(tree: Path) -> None:
    """Make files read-only and flush directory entries, so the rename publishes a whole tree."""
    for dirpath, _dirnames, filenames in os.walk(tree, topdown=False):
        for name in filenames:
            Path(dirpath, name).chmod(_FILE_MODE)
        Path(dirpath).chmod(_DIR_MODE)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_files(ref: ArtifactRef, files_dir: Path) -> None:
    if not files_dir.is_dir():
        raise _integrity(ref.digest, "files/", "the files/ directory is missing")
    present, odd = _scan(files_dir)
    if odd:
        rel, what = odd[0]
        raise _integrity(ref.digest, rel, f"{rel!r} is {what}")
    if missing := sorted(ref.files.keys() - present.keys()):
        raise _integrity(ref.digest, missing[0], f"file {missing[0]!r} is missing")
    if extra := sorted(present.keys() - ref.files.keys()):
        raise _integrity(ref.digest, extra[0], f"file {extra[0]!r} is not in the manifest")
    for rel, expected in ref.files.items():
        _check_file(ref.digest, rel, present[rel], expected)


def _check_file(hex_digest: str, rel: str, path: Path, expected: FileEntry) -> None:
    size = path.stat().st_size
    if size != expected.size:  # cheap check first: no need to hash a truncated file
        why = f"file {rel!r} has {size} bytes, the manifest says {expected.size}"
        raise _integrity(hex_digest, rel, why)
    actual = hash_file(path)
    if actual.sha256 != expected.sha256:
        why = (
            f"file {rel!r} has sha256 {short(actual.sha256)}…, "
            f"the manifest says {short(expected.sha256)}…"
        )
        raise _integrity(hex_digest, rel, why, expected=expected.sha256, actual=actual.sha256)


def _integrity(hex_digest: str, rel: str, why: str, **extra: str) -> ArtifactIntegrityError:
    return ArtifactIntegrityError(
        f"artifact {short(hex_digest)}… failed verification: {why}",
        digest=hex_digest,
        path=rel,
        **extra,
    )
