"""The tamper-evident audit chain and the roles behind access control.

Every mutating action of the store appends one event, in the same transaction
as the change, to a chain where each event's hash is an HMAC-SHA256 over the
previous hash and the event's canonical JSON. Editing, deleting, reordering or
inserting an event breaks the chain at that event; the store records the head with
every append, so an emptied or shortened chain is detected too (``head_problem``),
and keeping a copy of the head (``modelyard audit head``) outside the store
reveals a removal even when that record was deleted or rewritten with it. A break,
once found, stops every audited change until an admin acknowledges it with an
event of its own (``ACK_ACTION``), which later verification sets against the
break without hiding it (``judge_chain``).

This package is pure (no database): the store appends and reads events, this
package hashes, verifies, exports and holds the key and the role rules.
"""

from modelyard.audit._canonical import canonical_json, format_time, normalize_payload
from modelyard.audit._chain import event_hash, event_message, hash_of, head_problem
from modelyard.audit._event import EMPTY_HEAD, GENESIS, AuditEvent, AuditHead
from modelyard.audit._export import (
    EXPORT_FORMATS,
    ExportFormat,
    check_format,
    csv_value,
    write_events,
)
from modelyard.audit._keys import AuditKeySource, create_key_file, parse_key
from modelyard.audit._leaves import NATIVE as NATIVE_SEALS
from modelyard.audit._leaves import blob_root, seal_rows
from modelyard.audit._merkle import (
    inclusion_path,
    leaf_hash,
    merkle_root,
    root_from_path,
    split_leaves,
)
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
from modelyard.audit._seals import (
    ANCHOR_ACTION,
    DISCARD_ACTION,
    FINAL_STATUSES,
    PROOF_FORMAT,
    PURGE_ACTION,
    RECORD_FIELDS,
    RECORD_FORMAT,
    ProofCheck,
    RecordProblem,
    RecordsReport,
    SealEntry,
    anchor_payload,
    anchored_seals,
    build_proof,
    check_proof,
    in_order,
    index_bytes,
    index_digest,
    late_reason,
    record_bytes,
    record_leaf,
    seal_entry,
    seal_leaf,
)
from modelyard.audit._verify import (
    ACK_ACTION,
    HASH_REASON,
    AcknowledgedBreak,
    BreakFound,
    ChainBreak,
    ChainReport,
    ChainScan,
    RecordedBreak,
    fingerprint,
    judge_chain,
    link_reason,
    missing_reason,
    scan_chain,
    verify_chain,
)

__all__ = [
    "ACK_ACTION",
    "ANCHOR_ACTION",
    "DISCARD_ACTION",
    "EMPTY_HEAD",
    "EXPORT_FORMATS",
    "FINAL_STATUSES",
    "GENESIS",
    "HASH_REASON",
    "NATIVE_SEALS",
    "PROOF_FORMAT",
    "PROTECTED_ALIAS_ROLE",
    "PURGE_ACTION",
    "RECORD_FIELDS",
    "RECORD_FORMAT",
    "REQUIRED_ROLES",
    "ROLES",
    "AccessPolicy",
    "AcknowledgedBreak",
    "AuditEvent",
    "AuditHead",
    "AuditKeySource",
    "BreakFound",
    "ChainBreak",
    "ChainReport",
    "ChainScan",
    "ExportFormat",
    "ProofCheck",
    "RecordProblem",
    "RecordedBreak",
    "RecordsReport",
    "Role",
    "SealEntry",
    "anchor_payload",
    "anchored_seals",
    "at_least",
    "blob_root",
    "build_proof",
    "canonical_json",
    "check_format",
    "check_proof",
    "check_role",
    "create_key_file",
    "csv_value",
    "event_hash",
    "event_message",
    "fingerprint",
    "format_time",
    "hash_of",
    "head_problem",
    "in_order",
    "inclusion_path",
    "index_bytes",
    "index_digest",
    "judge_chain",
    "late_reason",
    "leaf_hash",
    "link_reason",
    "merkle_root",
    "missing_reason",
    "normalize_payload",
    "parse_key",
    "record_bytes",
    "record_leaf",
    "required_role",
    "role_rank",
    "root_from_path",
    "scan_chain",
    "seal_entry",
    "seal_leaf",
    "seal_rows",
    "split_leaves",
    "verify_chain",
    "write_events",
]
