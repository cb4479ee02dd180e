"""The tamper-evident audit chain and the roles behind access control.

Every mutating action of the store appends one event, in the same transaction
as the change, to a chain where each event's hash is an HMAC-SHA256 over the
previous hash and the event's canonical JSON. Editing, deleting, reordering or
inserting an event breaks the chain at that event; the store records the head with
every append, so an emptied or shortened chain is detected too (``head_problem``),
and keeping a copy of the head (``modelyard audit head``) outside the store
reveals a removal even when that record was deleted or rewritten with it.

This package is pure (no database): the store appends and reads events, this
package hashes, verifies, exports and holds the key and the role rules.
"""

from modelyard.audit._canonical import canonical_json, format_time, normalize_payload
from modelyard.audit._chain import (
    ChainReport,
    event_hash,
    event_message,
    hash_of,
    head_problem,
    verify_chain,
)
from modelyard.audit._event import EMPTY_HEAD, GENESIS, AuditEvent, AuditHead
from modelyard.audit._export import EXPORT_FORMATS, ExportFormat, check_format, write_events
from modelyard.audit._keys import AuditKeySource, create_key_file, parse_key
from modelyard.audit._roles import (
    PROTECTED_ALIAS_ROLE,
    REQUIRED_ROLES,
    ROLES,
    AccessPolicy,
    Role,
    at_least,
    check_role,
    required_role,
    role_rank,
)

__all__ = [
    "EMPTY_HEAD",
    "EXPORT_FORMATS",
    "GENESIS",
    "PROTECTED_ALIAS_ROLE",
    "REQUIRED_ROLES",
    "ROLES",
    "AccessPolicy",
    "AuditEvent",
    "AuditHead",
    "AuditKeySource",
    "ChainReport",
    "ExportFormat",
    "Role",
    "at_least",
    "canonical_json",
    "check_format",
    "check_role",
    "create_key_file",
    "event_hash",
    "event_message",
    "format_time",
    "hash_of",
    "head_problem",
    "normalize_payload",
    "parse_key",
    "required_role",
    "role_rank",
    "verify_chain",
    "write_events",
]
