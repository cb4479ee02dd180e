"""The audit key: from ``MODELYARD_AUDIT_KEY``, or a key file outside the store.

A key is hex (an even number of at least 32 hex digits, as in a key file) or any
other non-empty string (its UTF-8 bytes). The key file holds 32 random bytes in
hex and is created with mode 0600 by ``modelyard init``, or on the first audited
change when nothing is configured. A key file that the group or other users may read
or write (on POSIX) is used, with a warning: whoever reads it can forge events.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import tempfile
from pathlib import Path

from modelyard.errors import AuditKeyMissing, ConfigError
from modelyard.settings import Settings

_HEX_RE = re.compile(r"^(?:[0-9a-fA-F]{2}){16,}$")

log = logging.getLogger(__name__)


def _warn_if_shared(path: Path) -> None:
    """Log a warning when ``path``'s mode lets the group or other users at it (POSIX)."""
    if os.name != "posix":
        return
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        return  # reading it says what is wrong
    if mode & 0o077:
        log.warning(
            "warning: the audit key file %s has mode %04o: other users may read it (and forge "
            "audit events) or replace it; run `chmod 600 %s`",
            path,
            mode,
            path,
        )


def parse_key(text: str | bytes) -> bytes:
    """Key text as bytes: hex is decoded, anything else is taken as UTF-8."""
    if isinstance(text, bytes):
        if not text:
            raise ConfigError("the audit key is empty", hint="Use at least 32 random bytes.")
        return text
    stripped = text.strip()
    if not stripped:
        raise ConfigError(
            "the audit key is empty",
            hint="Set MODELYARD_AUDIT_KEY to a long random string, or unset it to use a key file.",
        )
    if _HEX_RE.match(stripped):
        return bytes.fromhex(stripped)
    return stripped.encode("utf-8")


def create_key_file(path: Path) -> bool:
    """Write 32 random bytes (hex) to ``path`` with mode 0600, unless it exists.

    Atomic and safe against concurrent creators: the key is written to a private
    temporary file that is then hard-linked into place, which fails if another
    process got there first. Returns whether this call created the file.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=".audit-key-")  # mode 0600
    except OSError as exc:
        raise ConfigError(
            f"cannot create the audit key file {path}: {exc.strerror or exc}",
            hint="Set MODELYARD_AUDIT_KEY_FILE to a writable place, or MODELYARD_AUDIT_KEY.",
        ) from exc
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(secrets.token_hex(32) + "\n")
        tmp.chmod(0o600)
        try:
            os.link(tmp, path)  # fails if the file exists: no half-written key is read
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


class AuditKeySource:
    """Where a store's audit key comes from; loads it once, creating the file if allowed."""

    def __init__(self, *, key: str | bytes | None = None, key_file: Path | None = None) -> None:
        if key is None and key_file is None:
            raise ValueError("an audit key source needs a key or a key file")
        self._key = parse_key(key) if key is not None else None
        self.key_file = key_file if key is None else None
        self.from_env = False

    @classmethod
    def from_settings(cls, settings: Settings) -> AuditKeySource:
        if settings.audit_key is not None:
            source = cls(key=settings.audit_key.get_secret_value())
            source.from_env = True
            return source
        return cls(key_file=settings.audit_key_path)

    @property
    def description(self) -> str:
        if self.key_file is not None:
            return str(self.key_file)
        return "MODELYARD_AUDIT_KEY" if self.from_env else "the key given to Store.open"

    def available(self) -> bool:
        """Whether a key exists now (without creating one)."""
        return self._key is not None or (self.key_file is not None and self.key_file.is_file())

    def load(self, *, create: bool) -> bytes:
        """The key; with ``create`` a missing key file is created first (0600)."""
        if self._key is not None:
            return self._key
        assert self.key_file is not None
        if not self.key_file.exists():
            if not create:
                raise AuditKeyMissing(
                    f"no audit key: {self.key_file} does not exist and MODELYARD_AUDIT_KEY is "
                    "not set, but the store's audit chain already has events",
                    hint="Use the key that wrote the chain: copy its key file there, or set "
                    "MODELYARD_AUDIT_KEY / MODELYARD_AUDIT_KEY_FILE.",
                )
            create_key_file(self.key_file)
        try:
            text = self.key_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"cannot read the audit key file {self.key_file}: {exc}",
                hint="Check its permissions, or set MODELYARD_AUDIT_KEY.",
            ) from exc
        _warn_if_shared(self.key_file)
        try:
            self._key = parse_key(text)
        except ConfigError as exc:
            raise ConfigError(
                f"the audit key file {self.key_file} is empty",
                hint="Restore it from a backup; a new key cannot verify the existing chain.",
            ) from exc
        return self._key
