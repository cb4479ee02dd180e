"""Seals of inference records: what is hashed, what the chain holds, what verification finds.

A seal is one batch of records in their final state (``ok``, ``error``, ``cancelled``,
``timeout``, ``refused``; never ``running``), written by the record writer in the
transaction that writes them, with its index row (``record_seals``). Its root is the
Merkle root (``_merkle``, RFC 9162) over the records' leaves, in the order of the
index row's ids (a record's position in its seal). A leaf is
``SHA-256(0x00 || record_bytes(record))``.

An *anchor* is one ``records.anchored`` audit event vouching for the seals a writer
wrote since its previous anchor (at most every few seconds, not one event per
transaction): its payload lists, in a fixed order, each seal's id, record count, root
and index hash, and the anchor's root, the Merkle root over the seals' leaves
``SHA-256(0x00 || seal_bytes(...))`` (``seal_bytes``: the JSON array
``["seal", 1, id, count, root, index]``). An inclusion proof goes from the record's
leaf to its seal's root, then from the seal's leaf to the anchor's root.

``record_bytes`` is the canonical encoding, version ``RECORD_FORMAT``: a JSON array
(no spaces, UTF-8) of the version, 1, then the record's columns in the order of
``RECORD_FIELDS`` (prompt and response as stored, that is after the tenant's storage
policy; ``server_id`` included): the time as ISO-8601 UTC with microseconds,
latencies as floats, counts as integers, flags as booleans, absent values as null.
An array in a fixed order rather than an object with sorted keys: it costs the
writer less, and the field names are in the proof. Feedback and drift features are
left out: feedback changes later by design (the latest verdict wins), features are
derived from the text and can be recomputed.
A new column in the record changes nothing sealed before; adding it to the encoding
needs a new version.

This module is pure: the store (``modelyard.store``) seals and verifies, and
``check_proof`` lets an auditor check an exported inclusion proof with no database.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from modelyard.audit._canonical import canonical_json, format_time
from modelyard.audit._merkle import (
    HASH_SIZE,
    inclusion_path,
    leaf_hash,
    merkle_root,
    root_from_path,
)
from modelyard.errors import AuditError, ConfigError

RECORD_FORMAT = 1
PROOF_FORMAT = "modelyard.record-proof/2"
ANCHOR_ACTION = "records.anchored"
PURGE_ACTION = "records.purged"
DISCARD_ACTION = "records.discarded"
FINAL_STATUSES = ("ok", "error", "cancelled", "timeout", "refused")

RECORD_FIELDS = (
    "id",
    "created_at",
    "tenant_id",
    "api_key_id",
    "endpoint_name",
    "version_id",
    "route",
    "prompt",
    "response",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "ttft_ms",
    "status",
    "http_status",
    "error",
    "shadow",
    "fallback_from_id",
    "server_id",
    "tool_calls",
    "format_ok",
    "source",
    "job_id",
)
_FLOATS = ("latency_ms", "ttft_ms")
_INTS = ("tenant_id", "version_id", "prompt_tokens", "completion_tokens", "http_status",
         "fallback_from_id", "tool_calls")  # fmt: skip
_BOOLS = ("shadow", "format_ok")


_TIME = RECORD_FIELDS.index("created_at") + 1  # positions in the array (the version first)
_CASTS = [
    (i + 1, float if f in _FLOATS else int if f in _INTS else bool)
    for i, f in enumerate(RECORD_FIELDS)
    if f in _FLOATS or f in _INTS or f in _BOOLS
]
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_dumps = orjson.dumps
_FLOAT_AT = [i + 1 for i, f in enumerate(RECORD_FIELDS) if f in _FLOATS]


def _plain_checker() -> Any:
    """``plain(out)``: whether the array ``out`` (the version first) holds every typed
    value as its type (or None), every float one that orjson writes as json does, and
    its time in UTC with microseconds: then orjson encodes it as it is. Generated from
    ``_CASTS``: no allocation per record (a tuple of types made the collector run more)."""
    lines = [
        "def plain(o):",
        f"    at = o[{_TIME}]",
        "    if at.tzinfo is not UTC or not at.microsecond:",
        "        return False",
    ]
    for i, cast in _CASTS:
        lines.append(f"    v = o[{i}]")
        if cast is float:
            ok = "v is None or (type(v) is float and (v == 0.0 or 1e-4 <= abs(v) < INF))"
        else:
            ok = f"v is None or type(v) is {cast.__name__}"
        lines += [f"    if not ({ok}):", "        return False"]
    lines.append("    return True")
    scope: dict[str, Any] = {"UTC": UTC, "INF": math.inf}
    exec("\n".join(lines), scope)
    return scope["plain"]


_plain = _plain_checker()
_sha256 = hashlib.sha256
_fields_of = operator.itemgetter(*RECORD_FIELDS)


def record_bytes(record: Mapping[str, Any]) -> bytes:
    """The canonical bytes of a record (its ``RECORD_FIELDS``), the same whether read from
    the values written or from the row read back on SQLite or PostgreSQL."""
    return values_bytes(_fields_of(record))


def values_bytes(values: Sequence[Any]) -> bytes:
    """``record_bytes`` of a record's values in the order of ``RECORD_FIELDS``.

    Encoded by orjson where its output is byte for byte the json module's (the
    specification): everything here but floats below 1e-4 in magnitude (orjson writes
    ``0.00001`` where json writes ``1e-05``), non-finite floats (json refuses them) and
    integers beyond 64 bits (orjson refuses them), and a time without microseconds
    (orjson leaves out ``.000000``): those go through json, after the casts."""
    return array_bytes([RECORD_FORMAT, *values])


def array_bytes(out: list[Any]) -> bytes:
    """``values_bytes`` of the array ``[RECORD_FORMAT, *values]``:
    one check of its types (``_plain``) and one orjson call when they need no cast."""
    if _plain(out):
        try:
            return _dumps(out)
        except TypeError:  # orjson.JSONEncodeError: an int beyond 64 bits, a surrogate
            pass
    return _slow_bytes(out[1:])


def _slow_bytes(values: Sequence[Any]) -> bytes:
    out: list[Any] = [RECORD_FORMAT, *values]
    at = out[_TIME]
    if at.tzinfo is not UTC:
        out[_TIME] = at = at.astimezone(UTC)
    for i, cast in _CASTS:
        v = out[i]
        if v is not None and type(v) is not cast:
            out[i] = cast(v)
    if at.microsecond and all(_orjson_float(out[i]) for i in _FLOAT_AT):
        try:
            return _dumps(out)  # the time as orjson writes an aware UTC datetime, microseconds
        except TypeError:  # orjson.JSONEncodeError: an int beyond 64 bits, a lone surrogate
            pass
    out[_TIME] = at.isoformat(timespec="microseconds")
    return _encode(out).encode("utf-8")


def _orjson_float(v: Any) -> bool:
    return v is None or v == 0.0 or 1e-4 <= abs(v) < math.inf


def record_leaf(record: Mapping[str, Any]) -> bytes:
    return _sha256(b"\x00" + array_bytes([RECORD_FORMAT, *_fields_of(record)])).digest()


def index_digest(ids: Sequence[str], tenants: Sequence[int | None], times: Sequence[str]) -> str:
    """The hash of a seal's index (its records' ids, tenants and creation times, in leaf
    order), held in the chain beside the root: it names what a seal covered after its
    records are gone (a deletion, or retention).

    The hash of ``canonical_json({"ids": ..., "tenants": ..., "times": ...})``; orjson
    writes the same bytes for these strings and integers (the keys in sorted order
    already), faster; what it refuses (an integer beyond 64 bits, a lone surrogate, a
    value of another type) goes through ``canonical_json``."""
    encoded = index_bytes(ids, tenants, times)
    if encoded is not None:
        return encoded.digest
    text = canonical_json({"ids": list(ids), "tenants": list(tenants), "times": list(times)})
    return _sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class IndexBytes:
    """A seal's three index lists as orjson writes them, and the index hash of them."""

    parts: tuple[bytes, bytes, bytes]  # ids, tenants, times
    digest: str


def index_bytes(
    ids: Sequence[Any], tenants: Sequence[Any], times: Sequence[Any]
) -> IndexBytes | None:
    """The lists' orjson bytes and ``index_digest`` taken of the same bytes (the object
    ``{"ids": ..., "tenants": ..., "times": ...}`` is their concatenation); None when
    orjson's bytes might not be the canonical ones (see ``index_digest``)."""
    if not (type(ids) is list and type(tenants) is list and type(times) is list):
        return None
    try:
        parts = (_dumps(ids), _dumps(tenants), _dumps(times))
    except TypeError:  # orjson.JSONEncodeError: an int beyond 64 bits, a lone surrogate
        return None
    if not _plain_index(tenants):
        return None
    data = b"".join((b'{"ids":', parts[0], b',"tenants":', parts[1], b',"times":', parts[2], b"}"))
    return IndexBytes(parts, _sha256(data).hexdigest())


def _plain_index(tenants: Sequence[Any]) -> bool:
    """Whether every tenant is an int or None (json writes a bool or a float otherwise
    than orjson might: leave those to ``canonical_json``)."""
    return all(t is None or type(t) is int for t in tenants)


@dataclass(frozen=True)
class SealEntry:
    """What an anchor says of one seal: its id, record count, root and index hash (hex),
    and its records' first and last time."""

    seal: str
    records: int
    root: str
    index: str
    first: str
    last: str

    def leaf(self) -> bytes:
        """The seal's leaf in its anchor's tree."""
        return seal_leaf(self.seal, self.records, self.root, self.index)


def seal_leaf(seal: str, records: int, root: str, index: str) -> bytes:
    return leaf_hash(_encode(["seal", RECORD_FORMAT, seal, records, root, index]).encode())


def seal_entry(
    seal: str, root: bytes, ids: Sequence[str], tenants: Sequence[int | None],
    times: Sequence[str], *, digest: str | None = None,
) -> SealEntry:  # fmt: skip
    """A seal as its anchor lists it (``times``: its records', formatted; ``digest``:
    their ``index_digest`` when the caller has taken it)."""
    index = digest or index_digest(ids, tenants, times)
    return SealEntry(seal, len(ids), root.hex(), index, min(times), max(times))


def anchor_payload(
    seals: Sequence[SealEntry],
    *,
    closed: str | None = None,
    late: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``records.anchored`` event's payload: the seals in a fixed order and the root
    over their leaves; ``late``: an admin's late anchor (its reason, the servers that
    wrote the seals), vouching for seals their writer never anchored."""
    payload: dict[str, Any] = {
        "v": RECORD_FORMAT,
        "root": merkle_root([e.leaf() for e in seals]).hex(),
        "seals": [e.seal for e in seals],
        "records": [e.records for e in seals],
        "roots": [e.root for e in seals],
        "indexes": [e.index for e in seals],
        "first": min(e.first for e in seals),
        "last": max(e.last for e in seals),
    }
    if closed is not None:
        payload["closed"] = closed  # why these records ended here (a stopped server)
    if late is not None:
        payload["late"] = dict(late)
    return payload


def late_reason(payload: Mapping[str, Any]) -> str | None:
    """The admin's reason when an anchor is a late one (``anchor_payload(late=...)``)."""
    late = payload.get("late")
    if not isinstance(late, Mapping):
        return None
    return str(late.get("reason") or "")


def anchored_seals(payload: Mapping[str, Any]) -> list[SealEntry] | None:
    """The seals an anchor's payload lists, or None when its lists do not give its root."""
    try:
        seals, counts = list(payload["seals"]), list(payload["records"])
        roots, indexes = list(payload["roots"]), list(payload["indexes"])
        if not len(seals) == len(counts) == len(roots) == len(indexes):
            return None
        first, last = str(payload.get("first")), str(payload.get("last"))
        entries = [
            SealEntry(str(a), int(n), str(r), str(i), first, last)
            for a, n, r, i in zip(seals, counts, roots, indexes, strict=True)
        ]
    except (KeyError, TypeError, ValueError):
        return None
    if merkle_root([e.leaf() for e in entries]).hex() != payload.get("root"):
        return None
    return entries


# -- what verification finds ---------------------------------------------------------------

ProblemKind = Literal["edited", "deleted", "inserted", "seal", "unanchored"]


@dataclass(frozen=True)
class RecordProblem:
    """One record (or one seal) that does not match the chain."""

    kind: ProblemKind
    record_id: str | None
    detail: str
    seal: str | None = None
    seq: int | None = None  # the records.anchored event vouching for the seal
    position: int | None = None
    at: datetime | None = None  # the record's time: problems are reported in this order

    def sentence(self) -> str:
        where = []
        if self.seq is not None:
            where.append(f"seal anchored at audit seq {self.seq}")
        if self.position is not None:
            where.append(f"position {self.position}")
        place = f" ({', '.join(where)})" if where else ""
        what = f"record {self.record_id}" if self.record_id else f"seal {self.seal}"
        return f"{what} {self.kind}{place}: {self.detail}"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "record_id": self.record_id,
            "detail": self.detail,
            "seal": self.seal,
            "seq": self.seq,
            "position": self.position,
            "at": None if self.at is None else format_time(self.at),
        }


@dataclass(frozen=True)
class RecordsReport:
    """``audit verify --records``: every seal of the chain against the records table."""

    seals: int
    records: int  # sealed records found and matching
    purged: int  # leaves whose records retention removed (records.purged)
    discarded: int  # leaves whose records a resumed batch job replaced (records.discarded)
    running: int  # not sealed until they end
    before_sealing: int  # final records older than the first seal: not covered
    pending: int = 0  # sealed records whose seal is not anchored yet (written just now)
    pending_seals: int = 0
    late: int = 0  # among ``records``: vouched for by an admin's late anchor
    late_anchors: list[dict[str, Any]] = field(default_factory=list)  # seq, actor, time, reason
    problems: list[RecordProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "seals": self.seals,
            "records": self.records,
            "purged": self.purged,
            "discarded": self.discarded,
            "running": self.running,
            "before_sealing": self.before_sealing,
            "pending": self.pending,
            "pending_seals": self.pending_seals,
            "late": self.late,
            "late_anchors": self.late_anchors,
            "first_problem": self.problems[0].to_json() if self.problems else None,
            "problems": [p.to_json() for p in self.problems],
        }

    def raise_if_broken(self) -> None:
        if self.problems:
            more = len(self.problems) - 1
            after = f" ({more} more problem{'s' if more > 1 else ''})" if more else ""
            raise AuditError(
                f"inference records do not match their seals: {self.problems[0].sentence()}{after}",
                hint="Compare with a backup of the records table; `modelyard audit verify "
                "--records --json` lists every problem.",
                record_id=self.problems[0].record_id,
            )


def in_order(problems: Iterable[RecordProblem]) -> list[RecordProblem]:
    """Problems earliest first: by the record's time, then the seal's seq and position."""
    far = datetime.max.replace(tzinfo=None)
    return sorted(
        problems,
        key=lambda p: (
            p.at.replace(tzinfo=None) if p.at is not None else far,
            p.seq or 0,
            p.position or 0,
            p.record_id or "",
        ),
    )


# -- inclusion proofs ----------------------------------------------------------------------


def build_proof(
    record: Mapping[str, Any],
    leaves: Sequence[bytes],
    position: int,
    seal: str,
    event: Mapping[str, Any],
) -> dict[str, Any]:
    """The inclusion proof of ``record``, leaf ``position`` of its seal's ``leaves``, under
    the root of seal ``seal``, itself a leaf of the anchor that ``event`` holds (an audit
    event as ``AuditEvent.to_json`` writes it)."""
    data = record_bytes(record)
    payload = event["payload"]
    entries = anchored_seals(payload) or []
    at = [e.seal for e in entries].index(seal)
    return {
        "format": PROOF_FORMAT,
        "record_id": record["id"],
        "fields": ["v", *RECORD_FIELDS],  # what each value of the record's array is
        "record": data.decode("utf-8"),
        "leaf": leaf_hash(data).hex(),
        "position": position,
        "size": len(leaves),
        "path": [h.hex() for h in inclusion_path(leaves, position)],
        "root": merkle_root(leaves).hex(),
        "seal": seal,
        "anchor": {
            "position": at,
            "size": len(entries),
            "path": [h.hex() for h in inclusion_path([e.leaf() for e in entries], at)],
            "root": str(payload["root"]),
        },
        "event": dict(event),
    }


@dataclass(frozen=True)
class ProofCheck:
    record_id: str
    position: int
    size: int
    root: str
    anchor_root: str
    seq: int
    event_hash: str
    late: str | None = None  # an admin's late anchor: who, and the reason

    def sentence(self) -> str:
        late = f"; anchored late by {self.late}" if self.late is not None else ""
        return (
            f"record {self.record_id} is leaf {self.position} of {self.size} under seal root "
            f"{self.root[:16]}..., under anchor root {self.anchor_root[:16]}... held by audit "
            f"event seq {self.seq} (hash {self.event_hash}){late}"
        )


def _hexes(value: Any, what: str) -> list[bytes]:
    items = value if isinstance(value, list) else [value]
    try:
        out = [bytes.fromhex(str(v)) for v in items]
    except ValueError:
        raise ConfigError(f"the proof's {what} is not hexadecimal") from None
    if any(len(b) != HASH_SIZE for b in out):
        raise ConfigError(f"the proof's {what} is not a SHA-256 hash")
    return out


def _canonical(values: list[Any]) -> bytes | None:
    """``values`` in the canonical encoding; None for what it cannot hold (NaN, Infinity)."""
    try:
        return _encode(values).encode("utf-8")
    except (ValueError, RecursionError):
        return None


def check_proof(proof: Mapping[str, Any]) -> ProofCheck:
    """Check an inclusion proof with no database: the record's bytes give its leaf, the
    path leads from the leaf to its seal's root, the seal (its id, size, root and the
    index hash the event lists) gives its leaf in the anchor, and the anchor's path
    leads from it to the root that the ``records.anchored`` event holds. ``AuditError``
    when it does not verify, ``ConfigError`` when it is not a proof. That the event is
    in the chain is checked against the chain (its seq and hash in `audit export` or
    `audit verify --head SEQ:HASH` with the key)."""
    if not isinstance(proof, Mapping) or proof.get("format") != PROOF_FORMAT:
        raise ConfigError(f"not a record inclusion proof (format {PROOF_FORMAT!r} expected)")
    try:
        data = str(proof["record"]).encode("utf-8")
        values = json.loads(data)
        position, size = int(proof["position"]), int(proof["size"])
        anchor = proof["anchor"]
        at, width = int(anchor["position"]), int(anchor["size"])
        event = proof["event"]
        payload = event["payload"]
        seq, event_hash = int(event["seq"]), str(event["hash"])
        path = _hexes(proof["path"], "path") if proof["path"] else []
        up = _hexes(anchor["path"], "anchor path") if anchor["path"] else []
        root = _hexes(proof["root"], "root")[0]
        top = _hexes(payload["root"], "anchor root")[0]
        seals, counts = list(payload["seals"]), list(payload["records"])
        roots, indexes = list(payload["roots"]), list(payload["indexes"])
    except (KeyError, TypeError, ValueError, OverflowError) as exc:  # Infinity for a number
        raise ConfigError(f"malformed record inclusion proof: {exc}") from None
    except RecursionError:
        raise ConfigError(
            "malformed record inclusion proof: its record is nested too deeply"
        ) from None
    record_id = str(proof.get("record_id"))

    def bad(why: str) -> AuditError:
        return AuditError(f"the inclusion proof of record {record_id} does not verify: {why}")

    if not isinstance(values, list) or len(values) != len(RECORD_FIELDS) + 1:
        raise bad(f"the record's bytes are not an array of {len(RECORD_FIELDS) + 1} values")
    if values[1] != record_id:
        raise bad("the record's bytes are of another record")
    if values[0] != RECORD_FORMAT or _canonical(values) != data:
        raise bad("the record's bytes are not in the canonical encoding")
    leaf = leaf_hash(data)
    if leaf.hex() != proof.get("leaf"):
        raise bad("the record's bytes do not hash to the proof's leaf (the record was edited)")
    if event.get("action") != ANCHOR_ACTION:
        raise bad(f"event {seq} is a {event.get('action')!r} event, not {ANCHOR_ACTION!r}")
    if root_from_path(leaf, position, size, path) != root:
        raise bad("the path does not lead from the leaf to its seal's root")
    if not (0 <= at < len(seals) == width == len(counts) == len(roots) == len(indexes)):
        raise bad(f"the seal's place in the anchor is not one of the {len(seals)} of event {seq}")
    if seals[at] != proof.get("seal") or counts[at] != size or roots[at] != root.hex():
        raise bad(f"event {seq} lists another seal, size or root at the seal's place")
    if top.hex() != anchor.get("root"):
        raise bad(f"the proof's anchor root is not the root that event {seq} holds")
    seal = seal_leaf(str(seals[at]), size, root.hex(), str(indexes[at]))
    if root_from_path(seal, at, width, up) != top:
        raise bad(f"the anchor path does not lead from the seal to the root of event {seq}")
    reason = late_reason(payload) if isinstance(payload, Mapping) else None
    late = None if reason is None else f"admin {event.get('actor')}: {reason}"
    return ProofCheck(record_id, position, size, root.hex(), top.hex(), seq, event_hash, late)


__all__ = [
    "ANCHOR_ACTION",
    "DISCARD_ACTION",
    "FINAL_STATUSES",
    "PROOF_FORMAT",
    "PURGE_ACTION",
    "RECORD_FIELDS",
    "RECORD_FORMAT",
    "IndexBytes",
    "ProblemKind",
    "ProofCheck",
    "RecordProblem",
    "RecordsReport",
    "SealEntry",
    "anchor_payload",
    "anchored_seals",
    "array_bytes",
    "build_proof",
    "check_proof",
    "in_order",
    "index_bytes",
    "index_digest",
    "late_reason",
    "record_bytes",
    "record_leaf",
    "seal_entry",
    "seal_leaf",
    "values_bytes",
]
