"""Bring an import source into a staging directory, refusing unsafe paths.

The source is a directory or an archive (``.zip``, ``.tar``, ``.tar.gz``/``.tgz``,
``.tar.bz2``/``.tbz2``, ``.tar.xz``/``.txz``). Only regular files and
directories are taken; a symlink, a hard link, a device, a FIFO or a socket is
refused, as is an entry whose name is absolute, holds ``..``, a backslash, a
drive letter or a control character. Archive entries are never extracted by the
archive library: each file is copied by hand into a new file created with
``O_EXCL | O_NOFOLLOW`` under the staging directory, so nothing can be written
outside it and no entry can replace another.

``ImportLimits`` bounds what an import may expand to: total bytes written,
number of files, and (for an archive) bytes written per byte of archive, so a
small archive cannot fill the disk (rules ``size``, ``file_count``,
``compression_ratio``). The limits are enforced while writing, so a bomb stops
after at most one chunk past the limit.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from modelyard.errors import ConfigError, UnsafeArtifact

_CHUNK = 1 << 20
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_ZIP_SUFFIXES = (".zip",)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"^[A-Za-z]:")
_RATIO_FLOOR = 16 << 20  # archives that expand to less than this are never ratio-refused
_PATH_HINT = (
    "Import only regular files and directories with relative names: replace links "
    "with copies of the files (cp -L) and rebuild the archive from inside its folder."
)


@dataclass(frozen=True)
class ImportLimits:
    """What one import may expand to (docs/artifact-safety.md, "Limits").

    ``max_ratio`` applies to archives only: expanded bytes per byte of archive,
    once more than 16 MiB have been written. ``max_json_depth`` bounds the
    nesting of every JSON file (checked by ``inspect_artifact``).
    """

    max_bytes: int = 200 << 30  # 200 GiB: the largest open models fit, a full disk does not
    max_files: int = 10_000
    max_ratio: float = 100.0
    max_json_depth: int = 64

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_files", "max_ratio", "max_json_depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 1:
                raise ConfigError(
                    f"import limit {name} must be a number of at least 1, not {value!r}",
                    hint="Raise the limit for a larger import; limits cannot be switched off.",
                    field=name,
                )


def _refuse_limit(name: str, rule: str, why: str, flag: str) -> UnsafeArtifact:
    return UnsafeArtifact(
        f"{name}: {why}",
        rule=rule,
        path=name,
        hint=f"If the artifact really is this large, raise the limit with {flag} "
        "(docs/artifact-safety.md, Limits).",
    )


@dataclass(frozen=True)
class TreeFile:
    """A regular file found under an artifact root."""

    rel: str  # POSIX path relative to the root
    path: Path
    size: int


def _refuse_path(name: str, why: str) -> UnsafeArtifact:
    return UnsafeArtifact(f"{name}: {why}", rule="path", path=name, hint=_PATH_HINT)


def safe_parts(name: str) -> tuple[str, ...]:
    """The components of a relative entry name, or a ``path`` refusal saying why not."""
    if _CONTROL.search(name):
        raise _refuse_path(repr(name), "the name holds a control character")
    if "\\" in name:
        raise _refuse_path(name, "the name holds a backslash")
    if name.startswith("/") or _DRIVE.match(name):
        raise _refuse_path(name, "the name is an absolute path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise _refuse_path(name, "the name climbs out of the artifact with '..'")
    return parts


def walk_tree(root: Path) -> list[TreeFile]:
    """Every regular file under ``root`` (sorted), refusing links and special files.

    Symlinks are not followed; a hard-linked file (link count above one) is
    refused, since its bytes are shared with a file outside the artifact.
    """
    found: list[TreeFile] = []

    def visit(directory: Path, prefix: str) -> None:
        with os.scandir(directory) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                rel = f"{prefix}{entry.name}"
                safe_parts(rel)
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISLNK(info.st_mode):
                    raise _refuse_path(rel, "is a symbolic link")
                if stat.S_ISDIR(info.st_mode):
                    visit(Path(entry.path), f"{rel}/")
                elif not stat.S_ISREG(info.st_mode):
                    raise _refuse_path(rel, "is not a regular file (device, FIFO or socket)")
                elif info.st_nlink > 1:
                    raise _refuse_path(
                        rel, "is a hard link (its bytes are shared with another file)"
                    )
                else:
                    found.append(TreeFile(rel=rel, path=Path(entry.path), size=info.st_size))

    visit(Path(root), "")
    return found


class _Writer:
    """Creates files and directories under the staging root only, enforcing the limits."""

    def __init__(self, root: Path, limits: ImportLimits, packed: int | None = None) -> None:
        self.root = root
        self.limits = limits
        self.packed = packed  # the archive's size in bytes (None: a directory copy)
        self.written = 0
        self.files = 0

    def mkdirs(self, parts: tuple[str, ...], name: str) -> Path:
        here = self.root
        for part in parts:
            here = here / part
            try:
                here.mkdir(mode=0o755)
            except FileExistsError:
                if here.is_symlink() or not here.is_dir():
                    raise _refuse_path(name, f"{part} is both a file and a directory") from None
        return here

    def expect(self, entries: list[tuple[str, int]]) -> None:
        """Refuse up front what an archive's own listing (name, size) shows is too large."""
        if len(entries) > self.limits.max_files:
            raise _refuse_limit(
                entries[self.limits.max_files][0],
                "file_count",
                f"the archive lists {len(entries)} files, more than the limit of "
                f"{self.limits.max_files}",
                "--max-files",
            )
        total = 0
        for name, size in entries:
            total += size
            if total > self.limits.max_bytes:
                raise _refuse_limit(
                    name,
                    "size",
                    f"the archive expands to more than the limit of {self.limits.max_bytes} bytes",
                    "--max-bytes",
                )

    def _count(self, name: str, more: int) -> None:
        self.written += more
        if self.written > self.limits.max_bytes:
            raise _refuse_limit(
                name,
                "size",
                f"the import is larger than the limit of {self.limits.max_bytes} bytes",
                "--max-bytes",
            )
        if self.packed is not None and self.written > _RATIO_FLOOR:
            ratio = self.written / max(self.packed, 1)
            if ratio > self.limits.max_ratio:
                raise _refuse_limit(
                    name,
                    "compression_ratio",
                    f"the archive expands more than {self.limits.max_ratio:g} times its size "
                    f"({self.written} bytes written from {self.packed}): an archive bomb?",
                    "--max-ratio",
                )

    def write(self, parts: tuple[str, ...], name: str, source: IO[bytes]) -> None:
        if not parts:
            raise _refuse_path(name, "the entry has no file name")
        self.files += 1
        if self.files > self.limits.max_files:
            raise _refuse_limit(
                name,
                "file_count",
                f"the import holds more than the limit of {self.limits.max_files} files",
                "--max-files",
            )
        parent = self.mkdirs(parts[:-1], name)
        target = parent / parts[-1]
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        try:
            fd = os.open(target, flags, 0o644)
        except FileExistsError:
            raise _refuse_path(name, "the archive holds this entry twice") from None
        except IsADirectoryError:
            raise _refuse_path(name, "the archive holds this entry as a directory too") from None
        with os.fdopen(fd, "wb") as out:
            while chunk := source.read(_CHUNK):
                self._count(name, len(chunk))
                out.write(chunk)


def _copy_tree(source: Path, writer: _Writer) -> None:
    for entry in walk_tree(source):
        parts = safe_parts(entry.rel)
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            fd = os.open(entry.path, flags)
        except OSError as exc:
            raise _refuse_path(entry.rel, f"cannot be opened as a regular file ({exc})") from exc
        with os.fdopen(fd, "rb") as stream:
            info = os.fstat(stream.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
                raise _refuse_path(entry.rel, "changed into a link or special file while copying")
            writer.write(parts, entry.rel, stream)


def _archive_error(source: Path, exc: BaseException) -> UnsafeArtifact:
    return UnsafeArtifact(
        f"{source.name}: cannot read the archive ({exc})",
        rule="archive",
        path=source.name,
        hint="Check the archive is complete and not encrypted, or import the directory instead.",
    )


def _tar_members(archive: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    for member in archive:
        kind = None
        if member.issym():
            kind = "is a symbolic link"
        elif member.islnk():
            kind = "is a hard link"
        elif member.isdev():
            kind = "is a device or FIFO"
        elif not (member.isreg() or member.isdir()):
            kind = "is not a regular file or directory"
        if kind is not None:
            raise _refuse_path(member.name, kind)
        yield member


def _extract_tar(source: Path, writer: _Writer) -> None:
    try:
        with tarfile.open(source, mode="r:*") as archive:
            for member in _tar_members(archive):
                parts = safe_parts(member.name)
                if member.isdir():
                    writer.mkdirs(parts, member.name)
                    continue
                stream = archive.extractfile(member)
                if stream is None:
                    raise _refuse_path(member.name, "has no readable content")
                with stream:
                    writer.write(parts, member.name, stream)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise _archive_error(source, exc) from exc


def _extract_zip(source: Path, writer: _Writer) -> None:
    try:
        with zipfile.ZipFile(source) as archive:
            listed = [i for i in archive.infolist() if not i.is_dir()]
            writer.expect([(i.filename, i.file_size) for i in listed])
            for info in archive.infolist():
                parts = safe_parts(info.filename)
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise _refuse_path(info.filename, "is a symbolic link")
                if info.is_dir():
                    writer.mkdirs(parts, info.filename)
                    continue
                if stat.S_IFMT(mode) and not stat.S_ISREG(mode):  # no type bits: a plain file
                    raise _refuse_path(info.filename, "is not a regular file")
                with archive.open(info) as stream:
                    writer.write(parts, info.filename, stream)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, RuntimeError, EOFError, OSError) as exc:
        raise _archive_error(source, exc) from exc


def _archive_kind(source: Path) -> str | None:
    name = source.name.lower()
    if name.endswith(_ZIP_SUFFIXES):
        return "zip"
    if name.endswith(_TAR_SUFFIXES):
        return "tar"
    return None


def _prepare_staging(source: Path, staging: Path) -> bool:
    """Check ``staging`` is usable and create it; return whether it was created here."""
    if staging.is_symlink() or (staging.exists() and not staging.is_dir()):
        raise ConfigError(
            f"staging path {staging} is not a directory",
            hint="Pass a new or empty directory to stage the import in.",
        )
    if staging.exists() and any(staging.iterdir()):
        raise ConfigError(
            f"staging directory {staging} is not empty",
            hint="Pass a new or empty directory to stage the import in.",
        )
    if source.is_dir() and staging.resolve().is_relative_to(source.resolve()):
        raise ConfigError(
            f"staging directory {staging} is inside the import source {source}",
            hint="Stage the import outside the directory being imported.",
        )
    created = not staging.exists()
    staging.mkdir(parents=True, exist_ok=True)
    return created


def _clear(staging: Path, *, remove: bool) -> None:
    """Undo a failed staging: delete what was written (and the directory if made here)."""
    if remove:
        shutil.rmtree(staging, ignore_errors=True)
        return
    for entry in staging.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def stage_import(
    source: Path,
    staging: Path,
    *,
    max_bytes: int | None = None,
    limits: ImportLimits | None = None,
) -> Path:
    """Copy a directory, or extract an archive, into ``staging`` under the path rules.

    ``staging`` must be new or empty. Returns the artifact root: ``staging``
    itself, or its only entry when that is a directory (an archive of one
    folder). ``limits`` bound what is written (default ``ImportLimits()``);
    ``max_bytes``, when given, replaces its ``max_bytes``. On a refusal
    (``UnsafeArtifact``, rules ``path``, ``archive``, ``size``, ``file_count``,
    ``compression_ratio``) everything staged so far is removed.
    """
    source, staging = Path(source), Path(staging)
    kind = _archive_kind(source)
    if kind is None and not source.is_dir():
        raise ConfigError(
            f"import source {source} is neither a directory nor a .zip/.tar archive",
            hint="Pass a model directory, or a .zip, .tar, .tar.gz, .tar.bz2 or .tar.xz of one.",
        )
    if kind is not None and not source.is_file():
        raise ConfigError(f"import source {source} does not exist or is not a file")
    limits = limits or ImportLimits()
    if max_bytes is not None:
        limits = dataclasses.replace(limits, max_bytes=max_bytes)
    created = _prepare_staging(source, staging)
    writer = _Writer(staging, limits, source.stat().st_size if kind is not None else None)
    try:
        if kind == "zip":
            _extract_zip(source, writer)
        elif kind == "tar":
            _extract_tar(source, writer)
        else:
            _copy_tree(source, writer)
    except BaseException:
        _clear(staging, remove=created)
        raise
    entries = list(staging.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        return entries[0]
    return staging
