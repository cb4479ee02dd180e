"""Near-duplicate groups: exactly the greedy pairwise definition, and templated sets at scale.

The reference below compares every pair (what docs/data.md describes); ``near_groups``
must give the same groups on sets made to be hard for candidate filters: templates
with slots (many pairs just under the threshold), lengths that differ, short texts,
and similarities of exactly the threshold.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from modelyard.data import validate_rows
from modelyard.data._dedup import near_groups, shingles

TEMPLATE = (
    "please review the {a} account for the customer and confirm that the monthly "
    "invoice sent on {b} matches the agreed amount before the end of this week"
)


def pairwise_groups(texts: list[str], threshold: float) -> list[list[int]]:
    """The definition, comparing each text with every earlier group's first text."""
    sets = [shingles(text) for text in texts]
    heads: list[int] = []
    members: dict[int, list[int]] = {}
    for i, words in enumerate(sets):
        if not words:
            continue
        best: tuple[float, int] | None = None
        for head in heads:
            shared = len(words & sets[head])
            similarity = shared / (len(words) + len(sets[head]) - shared)
            if similarity >= threshold and (best is None or similarity > best[0]):
                best = (similarity, head)
        if best is None:
            heads.append(i)
            members[i] = [i]
        else:
            members[best[1]].append(i)
    return [group for _, group in sorted(members.items()) if len(group) > 1]


def mixed_texts(seed: int, n: int = 400) -> list[str]:
    rng = random.Random(seed)
    slots = [f"item{i}" for i in range(12)]
    vocabulary = [f"w{i}" for i in range(25)]
    texts = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.4:  # templated: exact repeats, one slot shared (0.77), or neither
            text = TEMPLATE.format(a=rng.choice(slots), b=rng.choice(slots))
            if rng.random() < 0.3:  # a word more or less: sizes differ
                words = text.split()
                del words[rng.randrange(len(words))]
                if rng.random() < 0.5:
                    words.insert(rng.randrange(len(words)), rng.choice(slots))
                text = " ".join(words)
            texts.append(text)
        elif kind < 0.8:  # few words from a small vocabulary: many pairs near any threshold
            texts.append(" ".join(rng.choices(vocabulary[:8], k=rng.randint(4, 14))))
        elif kind < 0.95:  # three words or fewer: one shingle
            texts.append(" ".join(rng.choices(vocabulary[:4], k=rng.randint(1, 3))))
        else:
            texts.append(rng.choice(["", "  ", "!!", "W1 w2, W3"]))
    return texts


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.5, 0.8, 0.9, 1.0])
def test_groups_are_the_pairwise_definition(seed: int, threshold: float) -> None:
    texts = mixed_texts(seed)
    assert near_groups(texts, threshold) == pairwise_groups(texts, threshold)


def test_a_pair_at_exactly_the_threshold_is_a_near_duplicate() -> None:
    # 10 shingles, and 8 of them: 8 / 10 = 0.8 exactly.
    words = [f"v{i}" for i in range(12)]
    long, short = " ".join(words), " ".join(words[:10])
    assert len(shingles(long)) == 10 and len(shingles(short)) == 8
    assert near_groups([long, "something else entirely here", short]) == [[0, 2]]
    assert near_groups([long, short], threshold=0.81) == []


def test_a_threshold_outside_0_to_1_is_refused() -> None:
    with pytest.raises(ValueError, match="threshold"):
        near_groups(["a b c d"], threshold=0)


def templated_rows(template: str, n: int, seed: int = 7) -> list[str]:
    """``n`` rows of ``template`` with two slots from 300 words each, no two alike."""
    rng = random.Random(seed)
    slots = [f"item{i}" for i in range(300)]
    return [
        template.format(a=slots[combo // 300], b=slots[combo % 300])
        for combo in rng.sample(range(300 * 300), n)
    ]


@pytest.mark.parametrize(
    "template",
    [
        TEMPLATE,  # 25 shingles: a prefix of 6, the 6 shingles around the two slots
        # 23 shingles: a prefix of 5, one slot shingle after it (benchmarks/dedup.py's)
        TEMPLATE.replace("please ", "").replace("this ", ""),
    ],
    ids=["prefix-holds-slots", "slot-after-prefix"],
)
def test_templated_rows_flag_only_the_planted_near_duplicates(
    template: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """12,000 rows where each shares a slot's value with about 80 others (similarity
    0.77, under 0.8): none of those is flagged, every planted near-duplicate is, and only
    a handful of pairs are compared exactly (a bound from the first shingles rules the
    rest out). Counted, not timed: a busy machine changes the time only."""
    from modelyard.data import _dedup

    compared = {"heads": 0}
    overlaps = _dedup._Shingled._overlaps

    def counting(self: Any, heads: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        compared["heads"] += len(heads)
        return overlaps(self, heads, sizes)

    monkeypatch.setattr(_dedup._Shingled, "_overlaps", counting)
    texts = templated_rows(template, 12_000)
    planted = {  # row copied -> the copy, changed so that it stays at 0.9 or more
        10: texts[10] + " thanks",  # one shingle more: 25/26 (23/24)
        2_000: texts[2_000].replace(" week", " month"),  # one changed: 24/26 (22/24)
        5_555: texts[5_555].upper() + "!",  # same shingles, not an exact duplicate
        11_000: "Note: " + texts[11_000],  # two shingles more: 25/27 (23/25)
    }
    rows = [{"text": text} for text in texts] + [{"text": copy} for copy in planted.values()]
    report = validate_rows(rows, "text")
    assert report.duplicates == []
    expected = [[row + 1, len(texts) + k + 1] for k, row in enumerate(planted)]
    assert report.near_duplicates == expected
    assert compared["heads"] <= 4 * len(planted), compared
