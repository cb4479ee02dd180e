"""Merkle trees over inference records, as RFC 9162 (Certificate Transparency v2) defines them.

``leaf_hash(data) = SHA-256(0x00 || data)``, ``node_hash(l, r) = SHA-256(0x01 || l || r)``;
the root of ``n`` leaves splits them at the largest power of two below ``n`` (section
2.1.1), an inclusion path lists the sibling hashes from the leaf up (2.1.3.1), and
``verify_inclusion`` is the verifier's algorithm of 2.1.3.2. The domain separation
bytes keep a leaf from passing for an inner node. Any RFC 9162 implementation checks
the same proofs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return _sha256(b"\x01" + left + right).digest()


def split_leaves(blob: bytes) -> list[bytes]:
    """Concatenated leaves (as a seal's index row and ``audit.seal_rows`` hold them), one
    by one."""
    return [blob[i : i + HASH_SIZE] for i in range(0, len(blob), HASH_SIZE)]


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """The tree head of ``leaves`` (leaf hashes, in order).

    Built level by level, an odd last node carried up unpaired: the same tree as the
    RFC's recursive split at the largest power of two below ``n``.
    """
    if not leaves:
        return EMPTY_ROOT
    level = list(leaves)
    sha = _sha256
    while len(level) > 1:
        pairs = zip(level[::2], level[1::2], strict=False)  # an odd last one: carried up
        paired = [sha(b"\x01" + a + b).digest() for a, b in pairs]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def inclusion_path(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """The audit path of leaf ``index``: sibling hashes from the leaf up to the root."""
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf {index} of a tree of {len(leaves)}")
    if len(leaves) == 1:
        return []
    k = _split(len(leaves))
    if index < k:
        return [*inclusion_path(leaves[:k], index), merkle_root(leaves[k:])]
    return [*inclusion_path(leaves[k:], index - k), merkle_root(leaves[:k])]


def root_from_path(leaf: bytes, index: int, size: int, path: Sequence[bytes]) -> bytes | None:
    """The root that leaf ``index`` of a tree of ``size`` leaves and its ``path`` imply;
    None when the path cannot belong to such a tree (RFC 9162, 2.1.3.2)."""
    if not 0 <= index < size:
        return None
    fn, sn = index, size - 1
    r = leaf
    for p in path:
        if sn == 0:
            return None
        if fn % 2 == 1 or fn == sn:
            r = node_hash(p, r)
            if fn % 2 == 0:
                while fn % 2 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "inclusion_path",
    "leaf_hash",
    "merkle_root",
    "node_hash",
    "root_from_path",
]
