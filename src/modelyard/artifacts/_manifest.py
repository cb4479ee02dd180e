"""Manifests: the canonical description of an artifact and the source of its digest.

The digest of an artifact is the sha256 of its canonical manifest bytes, and the
manifest lists the sha256 and size of every file.  So one digest pins every byte
of every file, and the same content always gets the same digest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from modelyard.errors import ArtifactError, ArtifactIntegrityError

FORMAT = 1
URI_PREFIX = "sha256:"
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class FileEntry:
    """The recorded hash and size of one file of an artifact."""

    sha256: str
    size: int


@dataclass(frozen=True)
class ArtifactRef:
    """What the store knows about one artifact: its digest, kind and files.

    A ref carries no filesystem path on purpose: callers get a path only from
    ``ArtifactStore.open_verified``, after the bytes were checked.
    """

    digest: str
    kind: str
    files: Mapping[str, FileEntry] = field(hash=False)

    def __post_init__(self) -> None:
        # Read-only, in path order, so a ref cannot be edited behind the store's back.
        object.__setattr__(self, "files", MappingProxyType(dict(sorted(self.files.items()))))

    @property
    def size(self) -> int:
        """Total bytes of all files."""
        return sum(entry.size for entry in self.files.values())

    @property
    def uri(self) -> str:
        return f"{URI_PREFIX}{self.digest}"


def short(hex_digest: str) -> str:
    """A digest prefix long enough for messages."""
    return hex_digest[:12]


def normalize_digest(digest: str) -> str:
    """Accept ``<hex>`` or ``sha256:<hex>``; return the bare lowercase hex.

    Validating here also keeps a crafted digest from ever naming a path outside
    the store.
    """
    hex_digest = digest.removeprefix(URI_PREFIX).strip().lower()
    if len(hex_digest) != 64 or not _HEX.issuperset(hex_digest):
        raise ArtifactError(
            f"not an artifact digest: {digest!r}",
            hint="Pass 64 hex characters, optionally prefixed with 'sha256:'.",
            digest=digest,
        )
    return hex_digest


def hash_file(path: Path) -> FileEntry:
    """Hash a file in chunks (never a whole-file read: adapters can be gigabytes)."""
    with path.open("rb") as fh:
        sha = hashlib.file_digest(fh, "sha256")
        size = fh.tell()
    return FileEntry(sha256=sha.hexdigest(), size=size)


def canonical_bytes(kind: str, files: Mapping[str, FileEntry]) -> bytes:
    """The one byte form of a manifest: sorted keys, no whitespace, ASCII only."""
    doc = {
        "format": FORMAT,
        "kind": kind,
        "files": {p: {"sha256": e.sha256, "size": e.size} for p, e in files.items()},
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("ascii")


def digest_of(manifest: bytes) -> str:
    return hashlib.sha256(manifest).hexdigest()


def one_file_digest(name: str, entry: FileEntry, *, kind: str) -> str:
    """The digest ``put_file`` gives a file ``name`` of ``entry``'s hash and size stored as
    ``kind``, known before it is stored."""
    return digest_of(canonical_bytes(kind, {name: entry}))


def parse_manifest(raw: bytes, digest: str) -> ArtifactRef:
    """Check ``raw`` hashes to ``digest`` and has the expected shape; build the ref."""
    actual = digest_of(raw)
    if actual != digest:
        raise _bad_manifest(
            digest, f"its hash is {short(actual)}…, not the digest {short(digest)}…"
        )
    try:
        doc = json.loads(raw)
        return _ref_from_doc(doc, digest)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise _bad_manifest(digest, f"it is malformed ({exc})") from exc


def _ref_from_doc(doc: Any, digest: str) -> ArtifactRef:
    if doc["format"] != FORMAT:
        raise ValueError(f"unknown format {doc['format']!r}")
    kind = doc["kind"]
    if not isinstance(kind, str):
        raise TypeError("kind is not a string")
    files = {_safe_relpath(p): _entry(v) for p, v in doc["files"].items()}
    return ArtifactRef(digest=digest, kind=kind, files=files)


def _entry(value: Any) -> FileEntry:
    sha, size = value["sha256"], value["size"]
    if not isinstance(sha, str) or not isinstance(size, int) or isinstance(size, bool):
        raise TypeError(f"bad file entry {value!r}")
    return FileEntry(sha256=sha, size=size)


def _safe_relpath(path: str) -> str:
    """Refuse manifest paths that could point outside the artifact's files."""
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise ValueError(f"unsafe file path {path!r}")
    return path


def _bad_manifest(digest: str, why: str) -> ArtifactIntegrityError:
    return ArtifactIntegrityError(
        f"artifact {short(digest)}… has a bad manifest.json: {why}",
        digest=digest,
        path="manifest.json",
    )
