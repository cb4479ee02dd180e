"""Exact and near-duplicate rows, and rows shared between a training and an eval set.

Exact duplicates are equal texts (after collapsing whitespace). Near-duplicates
are word-shingle Jaccard similarity at a threshold, found exactly with prefix
filtering (the AllPairs set-similarity join): shingles are ranked rarest first
over the whole set, and two texts at similarity t or more must share one of
their ``size - ceil(t * size) + 1`` rarest shingles. Only the first rows of
groups are indexed, by those prefix shingles alone, so the shingles a template
repeats in every row (the common ones) never make rows candidates. A bound on
each candidate's overlap (from its 8 rarest shingles) rules most out, and
the rest are compared exactly, each text's candidates all at once with numpy.
The old MinHash LSH (``datasketch``) offered about 14 % of all groups to every
row of a templated set, so it grew with the square of the rows.
"""

from __future__ import annotations

import re
import unicodedata
from array import array
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

NEAR_DUPLICATE_THRESHOLD = 0.8
"""Word-shingle Jaccard similarity at or above which two rows are near-duplicates."""

SHINGLE_WORDS = 3
"""Words per shingle (texts shorter than this are one shingle)."""

_SLACK = 1e-6
"""Rounding room in the bounds that rule texts out, so that none at the threshold is lost."""
_SCREENED = 8
"""Shingles per text (the rarest) kept side by side for the screen before the exact overlap."""
_BYTES = np.uint64(0x0101010101010101)
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


def near_groups(
    texts: Sequence[str], threshold: float = NEAR_DUPLICATE_THRESHOLD
) -> list[list[int]]:
    """Groups of indexes whose texts are near-duplicates of the group's first text.

    Texts are visited in order; one whose shingle Jaccard similarity with an
    earlier group's first text is at least ``threshold`` joins the most similar
    such group (the earliest of equally similar ones), otherwise it starts its
    own. Only groups of two or more are returned, each ascending, ordered by
    first index. Empty texts are skipped. Exact: every pair at ``threshold`` or
    above is found, and only such pairs.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    return _Shingled(texts, threshold).groups()


class _Shingled:
    """Every text's shingles as ranks, rarest over all texts first, each text's sorted, and an
    index of the groups' first texts by their prefixes.

    A text's prefix is its ``size - ceil(threshold * size) + 1`` rarest shingles:
    Jaccard >= t needs an overlap of at least ``ceil(t * size)`` of either text's
    shingles, so two such texts share a shingle of their prefixes (the prefix
    filter of the AllPairs set-similarity join). The index is keyed by a prefix
    shingle's key: shingles found in the same texts (the template's words around
    one slot's value) share one, so a text sharing that value is found once, not
    once per shingle. Sharing keys only adds candidates, so none is lost.
    """

    def __init__(self, texts: Sequence[str], threshold: float) -> None:
        self.threshold = threshold
        tokens, sizes, width = _shingle_ids(texts)
        row = np.repeat(np.arange(len(texts), dtype=np.int64), sizes)
        rank, keys = _rank(tokens, row, len(texts), width)
        # Each text's ranks sorted at once, keyed by (text, rank): ascending over all texts.
        self.ranks = np.sort(row * width + rank[tokens]) - row * width
        self.sizes = sizes
        self.starts = np.cumsum(sizes) - sizes
        prefix_sizes = sizes - np.ceil(threshold * sizes - _SLACK).astype(np.int64) + 1
        self.prefix_sizes = np.where(sizes > 0, prefix_sizes, 0)
        # Each prefix's keys, once each (a key's shingles are next to each other in rank order).
        in_prefix = np.arange(len(tokens)) - self.starts[row] < self.prefix_sizes[row]
        prefix_keys, prefix_rows = keys[self.ranks[in_prefix]], row[in_prefix]
        first = np.ones(len(prefix_keys), dtype=bool)
        first[1:] = (prefix_keys[1:] != prefix_keys[:-1]) | (prefix_rows[1:] != prefix_rows[:-1])
        self.keys = prefix_keys[first]
        self.key_counts = np.bincount(prefix_rows[first], minlength=len(texts))
        self.key_starts = np.cumsum(self.key_counts) - self.key_counts
        # The index: for each key, a slice of ``heads`` for the groups' first texts whose
        # prefix holds it (room for every text whose prefix does), ``filled`` so far.
        holding = np.bincount(self.keys, minlength=int(keys.max(initial=-1)) + 1)
        self.slice_starts = np.cumsum(holding) - holding
        self.filled = np.zeros(len(holding), dtype=np.int64)
        self.heads = np.zeros(int(holding.sum()), dtype=np.int64)
        # Each text's first (rarest) _SCREENED shingles, padded with a rank no text has: its
        # prefix and the next few, where the shingles that tell templated rows apart are.
        self.firsts = np.full((len(texts), _SCREENED), width, dtype=np.int64)
        for column in range(_SCREENED):
            holds = sizes > column
            self.firsts[holds, column] = self.ranks[self.starts[holds] + column]
        # A text's shingles after those can all be shared with another: the overlap with a head
        # is at most ``hits + unscreened`` (hits among its first ones), and Jaccard >= t means
        # overlap * (1 + t) >= t * (size + head's size). The screen keeps a head when
        # hits * (1 + t) + screen[head] >= t * size (less a rounding slack).
        unscreened = sizes - np.minimum(sizes, _SCREENED)
        self.screen = (1 + threshold) * unscreened - threshold * sizes
        self.inside = np.zeros(width + 1, dtype=bool)  # marks the shingles of the text compared

    def groups(self) -> list[list[int]]:
        members: dict[int, list[int]] = {}
        starts, sizes = self.starts.tolist(), self.sizes.tolist()
        key_starts, key_counts = self.key_starts.tolist(), self.key_counts.tolist()
        for i, count in enumerate(key_counts):
            if not count:
                continue
            keys = self.keys[key_starts[i] : key_starts[i] + count]
            filled = self.filled[keys]
            best = None
            if filled.any():
                slices = zip(self.slice_starts[keys].tolist(), filled.tolist(), strict=True)
                heads = np.concatenate([self.heads[at : at + n] for at, n in slices if n])
                best = self._most_similar(starts[i], sizes[i], heads)
            if best is not None:
                members[best].append(i)
            else:
                members[i] = [i]
                self.heads[self.slice_starts[keys] + filled] = i
                self.filled[keys] += 1
        return [group for _, group in sorted(members.items()) if len(group) > 1]

    def _most_similar(self, start: int, size: int, heads: np.ndarray) -> int | None:
        """Of ``heads`` (repeats allowed), the one most similar to the text of ``size``
        shingles at ``start`` (the earliest of equals) if any reaches the threshold."""
        mine = self.ranks[start : start + size]
        self.inside[mine] = True
        try:
            # How many of each head's first 8 shingles are marked: 8 bytes of 0 or 1 read as one
            # integer and multiplied by 0x0101...01 add up in its top byte (numpy's sum over
            # rows of 8 takes several times as long).
            marked = self.inside[np.take(self.firsts, heads, axis=0)]
            hits = (marked.view(np.uint64).ravel() * _BYTES) >> np.uint64(56)
            possible = (1 + self.threshold) * hits + self.screen[heads] >= (
                self.threshold * size - _SLACK
            )
            if not possible.any():
                return None
            heads = heads[possible]
            sizes = self.sizes[heads]
            similarity = _similarity(self._overlaps(heads, sizes), size, sizes)
        finally:
            self.inside[mine] = False
        close = similarity >= self.threshold
        if not close.any():
            return None
        heads, similarity = heads[close], similarity[close]
        return int(heads[similarity == similarity.max()].min())

    def _overlaps(self, heads: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """How many of the marked shingles each of ``heads`` has (exactly, all at once)."""
        offsets = np.cumsum(sizes) - sizes
        at = np.arange(int(sizes.sum())) + np.repeat(self.starts[heads] - offsets, sizes)
        shared: np.ndarray = np.add.reduceat(self.inside[self.ranks[at]], offsets, dtype=np.int64)
        return shared


def _similarity(shared: np.ndarray, size: int, sizes: np.ndarray) -> np.ndarray:
    """Jaccard similarity from the overlap and the two sizes (as the pairs' sets would give)."""
    similarity: np.ndarray = shared / (size + sizes - shared)
    return similarity


def _shingle_ids(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, int]:
    """Every text's shingles as ids (text after text), each text's count, and how many ids."""
    ids: dict[bytes, int] = {}
    flat = array("q")
    sizes = np.zeros(len(texts), dtype=np.int64)
    for i, text in enumerate(texts):
        words = shingles(text)
        sizes[i] = len(words)
        flat.extend(ids.setdefault(word, len(ids)) for word in words)
    tokens = np.frombuffer(flat, dtype=np.int64) if flat else np.zeros(0, dtype=np.int64)
    return tokens, sizes, len(ids)


def _rank(
    tokens: np.ndarray, row: np.ndarray, texts: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each shingle id's rank (rarest first) and each rank's key (shingles found in the same
    texts share one and take neighbouring ranks), from the ids and the text each is in."""
    counts = np.bincount(tokens, minlength=width)
    # Equal sets of texts give equal sums of one random weight per text, bit for bit (summed in
    # the same order); unequal ones almost never do, and when they do only candidates are added.
    weights = np.random.default_rng(0).random(texts)
    sums = np.bincount(tokens, weights=weights[row], minlength=width)
    order = np.lexsort((np.arange(width), sums, counts))
    rank = np.empty(width, dtype=np.int64)
    rank[order] = np.arange(width)
    new = np.ones(width, dtype=bool)
    new[1:] = (counts[order][1:] != counts[order][:-1]) | (sums[order][1:] != sums[order][:-1])
    return rank, np.cumsum(new) - 1
