"""Exact and near-duplicate rows, and rows shared between a training and an eval set.

Exact duplicates are equal texts (after collapsing whitespace). Near-duplicates
use MinHash LSH (``datasketch``) over word shingles of the normalized text, so
50k rows take seconds rather than the hours that comparing every pair would:
each row is compared only with the first rows of earlier groups that LSH
proposes; the sketches' estimate screens those candidates and the Jaccard
similarity of the rest is computed exactly, so only recall is approximate.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

NEAR_DUPLICATE_THRESHOLD = 0.8
"""Word-shingle Jaccard similarity at or above which two rows are near-duplicates."""

SHINGLE_WORDS = 3
"""Words per shingle (texts shorter than this are one shingle)."""

_NUM_PERM = 64
_BANDS = (10, 6)
"""LSH bands x rows: pairs at similarity 0.8 become candidates with probability 0.95, at 0.9
with 0.9999, at 0.5 with 0.15 (candidates are then checked, so only recall is approximate)."""
_ESTIMATE_MARGIN = 0.1
_WORD = re.compile(r"\w+")


def normalize(text: str) -> str:
    """Unicode-normalized (NFKC), case-folded text with runs of whitespace as one space."""
    if text.isascii():  # NFKC leaves ASCII as it is; skipping it saves time on large sets
        return " ".join(text.lower().split())
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def collapse(text: str) -> str:
    """``text`` with surrounding whitespace removed and inner runs of it as one space."""
    return " ".join(text.split())


def exact_groups(texts: Sequence[str]) -> list[list[int]]:
    """Groups (of two or more indexes, ascending) of equal non-empty texts, by first index."""
    by_text: dict[str, list[int]] = defaultdict(list)
    for i, text in enumerate(texts):
        if text:
            by_text[text].append(i)
    return [group for group in by_text.values() if len(group) > 1]


def shingles(text: str) -> set[bytes]:
    """Word shingles of the normalized text, without punctuation, as bytes for hashing."""
    words = _WORD.findall(normalize(text))
    if len(words) <= SHINGLE_WORDS:
        return {" ".join(words).encode()} if words else set()
    return {
        " ".join(words[i : i + SHINGLE_WORDS]).encode()
        for i in range(len(words) - SHINGLE_WORDS + 1)
    }


def _jaccard(a: set[bytes], b: set[bytes]) -> float:
    shared = len(a & b)
    return shared / (len(a) + len(b) - shared)


def near_groups(
    texts: Sequence[str], threshold: float = NEAR_DUPLICATE_THRESHOLD
) -> list[list[int]]:
    """Groups of indexes whose texts are near-duplicates of the group's first text.

    Texts are visited in order; one whose shingle Jaccard similarity with an
    earlier group's first text is at least ``threshold`` joins the most similar
    such group, otherwise it starts its own. Only groups of two or more are
    returned, each ascending, ordered by first index. Empty texts are skipped.
    """
    from datasketch import MinHash, MinHashLSH  # type: ignore[import-untyped]

    lsh = MinHashLSH(num_perm=_NUM_PERM, params=_BANDS)
    # One sketch, cleared for each text: the index keeps only band hashes, never the sketch.
    sketch = MinHash(num_perm=_NUM_PERM, hashfunc=zlib.crc32)
    signatures = np.zeros((len(texts), _NUM_PERM), dtype=sketch.hashvalues.dtype)
    heads: dict[int, set[bytes]] = {}
    members: dict[int, list[int]] = {}
    for i, text in enumerate(texts):
        words = shingles(text)
        if not words:
            continue
        sketch.clear()
        sketch.update_batch(words)
        candidates = np.fromiter(lsh.query(sketch), dtype=np.int64)
        if candidates.size:
            # The sketches' estimate rules most candidates out; the rest are compared exactly.
            estimate = (signatures[candidates] == sketch.hashvalues).mean(axis=1)
            candidates = candidates[estimate >= threshold - _ESTIMATE_MARGIN]
        scored = [(_jaccard(words, heads[head]), -head) for head in candidates.tolist()]
        best = max((s for s in scored if s[0] >= threshold), default=None)
        if best is not None:
            members[-best[1]].append(i)
        else:
            heads[i] = words
            members[i] = [i]
            signatures[i] = sketch.hashvalues
            lsh.insert(i, sketch, check_duplication=False)
    return [group for _, group in sorted(members.items()) if len(group) > 1]
