"""The artifact store's work area ``<root>/tmp``: owned temp dirs, and finding stale ones.

Every temp dir is named ``<purpose>-<host>-<pid>-<random>``, so whoever looks
later can tell whose it is without reading inside it: a dir whose process is
gone on this host is stale at once; one from another host, or with a name that
does not say (written by an older version), is stale once it is older than the
given age. A dir whose process still runs is never stale.

A remote store's unfinished writes (``UploadEntry``: a multipart upload, or the
marker a writer leaves while it uploads, named the same way) are judged by the
same rule (``judge_name``).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

_NAME = re.compile(r"^(?P<purpose>[a-z]+)-(?P<host>[A-Za-z0-9.]+)-(?P<pid>\d+)-")


def this_host() -> str:
    """This machine's name as temp dir names hold it (letters, digits and dots only)."""
    return re.sub(r"[^A-Za-z0-9.]", ".", socket.gethostname()) or "localhost"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, it is someone else's
    return True


def new_owned_dir(tmp_root: Path, purpose: str) -> Path:
    """A new, empty dir under ``tmp_root`` (created when needed) named after this process."""
    tmp_root.mkdir(parents=True, exist_ok=True)
    prefix = f"{purpose}-{this_host()}-{os.getpid()}-"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=tmp_root))


@dataclass(frozen=True)
class TempEntry:
    """One entry of the work area and whether it is left over from a dead writer."""

    path: Path
    size: int  # bytes of the files under it
    age_s: float  # seconds since it last changed
    pid: int | None
    host: str | None
    stale: bool
    reason: str

    def to_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "bytes": self.size,
            "age_s": round(self.age_s, 1),
            "pid": self.pid,
            "host": self.host,
            "stale": self.stale,
            "reason": self.reason,
        }


def _size_and_mtime(path: Path) -> tuple[int, float]:
    size, newest = 0, path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for dirpath, dirnames, filenames in os.walk(path):
            for name in [*filenames, *dirnames]:
                try:
                    info = Path(dirpath, name).lstat()
                except OSError:
                    continue  # removed meanwhile
                newest = max(newest, info.st_mtime)
                if name in filenames:
                    size += info.st_size
    else:
        size = path.lstat().st_size
    return size, newest


@dataclass(frozen=True)
class UploadEntry:
    """One unfinished write in a remote store: a multipart upload, or a writer's marker.

    ``upload_id`` is set for a multipart upload (aborting it drops its parts);
    a marker (``upload_id`` None) names the ``digest`` its writer was storing,
    and removing it removes that write's objects unless the artifact is whole.
    """

    location: str  # s3://bucket/key
    key: str
    upload_id: str | None
    digest: str | None
    age_s: float
    pid: int | None
    host: str | None
    stale: bool
    reason: str

    @property
    def what(self) -> str:
        return "multipart upload" if self.upload_id else "unfinished write"

    def to_dict(self) -> dict[str, object]:
        return {
            "location": self.location,
            "what": self.what,
            "upload_id": self.upload_id,
            "digest": self.digest,
            "age_s": round(self.age_s, 1),
            "pid": self.pid,
            "host": self.host,
            "stale": self.stale,
            "reason": self.reason,
        }


def judge_name(
    name: str, age_s: float, max_age_s: float
) -> tuple[int | None, str | None, bool, str]:
    """``(pid, host, stale, reason)`` of a leftover named ``<purpose>-<host>-<pid>-…``."""
    match = _NAME.match(name)
    if match is None:
        stale = age_s >= max_age_s
        why = "no owner in its name" + (", and old" if stale else ", recent")
        return None, None, stale, why
    pid, host = int(match["pid"]), match["host"]
    if host == this_host():
        if pid_alive(pid):
            return pid, host, False, f"process {pid} is still running"
        return pid, host, True, f"process {pid} is gone"
    stale = age_s >= max_age_s
    why = f"written on {host}" + (", and old" if stale else ", recent")
    return pid, host, stale, why


def scan_tmp(tmp_root: Path, *, max_age_s: float, now: float | None = None) -> list[TempEntry]:
    """Every entry of the work area, each judged stale or not (none when it does not exist)."""
    if not tmp_root.is_dir():
        return []
    now = time.time() if now is None else now
    found: list[TempEntry] = []
    for path in sorted(tmp_root.iterdir()):
        try:
            size, mtime = _size_and_mtime(path)
        except OSError:
            continue  # removed meanwhile
        age = max(0.0, now - mtime)
        pid, host, stale, reason = judge_name(path.name, age, max_age_s)
        found.append(TempEntry(path, size, age, pid, host, stale, reason))
    return found


def remove_entry(entry: TempEntry) -> None:
    """Delete a temp entry (files are read-only once sealed: make them writable first)."""
    path = entry.path
    if path.is_dir() and not path.is_symlink():
        for dirpath, _dirnames, _filenames in os.walk(path):
            Path(dirpath).chmod(0o755)
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
