"""A shadow version compared with production on the same live requests.

``compare_shadow`` pairs each shadow answer of an endpoint with the production answer
to the same request (``_pairing``), tells which are the same answer (after
normalisation: NFKC, case folded, whitespace collapsed) and, given a judge, has it
score both answers of every pair on its rubric (the question is the user's words;
rubrics that need a reference or a context cannot judge live traffic). The shadow
wins a pair when its score is higher; identical answers are a tie (the judge scores
the production one; the shadow's is the same answer). Its win rate is
``(wins + ties / 2) / judged pairs`` with a 95% Wilson interval, and the verdict is
``shadow better`` when the interval's lower bound is above 0.5, ``shadow worse`` when
its upper bound is below 0.5, ``no clear difference`` otherwise, and ``not enough
pairs`` below ``min_pairs`` judged pairs. A pair the judge gave no score (either
side) is counted as failed, never as a win, and left out of the rate.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from modelyard.delivery._pairing import SKIP_REASONS, Pair, normalise, pair_records
from modelyard.errors import ConfigError, NotFound
from modelyard.judges import JudgeInput, api_key, check_live, run_judge
from modelyard.registry import template_name
from modelyard.store import JudgeDef, ShadowWindow, Store

Z95 = 1.959964
VERDICTS = (
    "shadow better",
    "shadow worse",
    "no clear difference",
    "not enough pairs",
    "no judge given",
)


@dataclass(frozen=True)
class ShadowRow:
    """One request: both answers, whether they are the same, and the judge's scores."""

    production_id: str
    shadow_id: str
    created_at: datetime
    production_version: str | None
    shadow_version: str | None
    question: str
    production_answer: str
    shadow_answer: str
    identical: bool
    production_score: float | None = None
    shadow_score: float | None = None
    winner: str | None = None  # shadow, production, tie; None: not judged, or no score
    judge_error: str | None = None
    paired_by: str = "request"  # or "id": the shadow's id names its production record


@dataclass(frozen=True)
class ShadowScores:
    judge: str
    revision: int
    rubric: str
    judged: int  # pairs with a score on both sides
    wins: int
    ties: int
    losses: int
    failed: int  # pairs without a score on one side or both
    win_rate: float | None
    interval: tuple[float, float] | None
    production_mean: float | None
    shadow_mean: float | None
    calls: int  # answers sent to the judge (not from the cache)
    cached: int
    cost: float
    errors: list[str]


@dataclass(frozen=True)
class ShadowReport:
    endpoint: str
    since: datetime
    shadow_version: str
    production_versions: dict[str, int]
    shadow_records: int
    skipped: dict[str, int]
    rows: list[ShadowRow]
    judge: ShadowScores | None
    min_pairs: int
    verdict: str
    reason: str

    @property
    def pairs(self) -> int:
        return len(self.rows)

    @property
    def identical(self) -> int:
        return sum(row.identical for row in self.rows)

    @property
    def identical_share(self) -> float | None:
        return self.identical / self.pairs if self.pairs else None

    def as_json(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "since": self.since.isoformat(),
            "shadow_version": self.shadow_version,
            "production_versions": self.production_versions,
            "shadow_records": self.shadow_records,
            "pairs": self.pairs,
            "identical": self.identical,
            "identical_share": self.identical_share,
            "skipped": {k: n for k, n in self.skipped.items() if n},
            "judge": None if self.judge is None else asdict(self.judge),
            "min_pairs": self.min_pairs,
            "verdict": self.verdict,
            "reason": self.reason,
            "rows": [
                {**asdict(row), "created_at": row.created_at.isoformat()} for row in self.rows
            ],
        }


def share_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson's interval of a share of ``n`` (``successes`` may count ties as halves)."""
    if n == 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(0.0, p * (1 - p) / n + z * z / (4 * n * n))) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def decide(judged: int, interval: tuple[float, float] | None, min_pairs: int) -> tuple[str, str]:
    """The verdict on the shadow's win rate, and why."""
    if judged < min_pairs or interval is None:
        return "not enough pairs", f"{judged} judged pairs; --min-pairs asks for {min_pairs}"
    low, high = interval
    shown = f"95% interval [{low:.3f}, {high:.3f}]"
    if low > 0.5:
        return "shadow better", f"{shown} is above 0.5"
    if high < 0.5:
        return "shadow worse", f"{shown} is below 0.5"
    return "no clear difference", f"{shown} holds 0.5"


def usable_judge(store: Store, name: str) -> JudgeDef:
    """Judge ``name``, when its rubric can judge a live answer (a ConfigError otherwise)."""
    try:
        judge = store.get_judge(name)
    except NotFound:
        raise ConfigError(
            f"no judge named {name!r}", hint="See `modelyard judges list`.", field="judge"
        ) from None
    check_live(judge, "rollout compare --shadow")
    api_key(judge)  # an unset key variable fails now, before any work
    return judge


def _templates(store: Store, window: ShadowWindow) -> dict[str | None, str]:
    refs = {r.version for r in [*window.shadows, *window.productions] if r.version}
    return {ref: template_name(store.resolve_model_ref(ref).lineage) for ref in sorted(refs)}


def _shadow_version(store: Store, endpoint: str, window: ShadowWindow) -> str:
    ep = store.get_endpoint(endpoint)
    if ep.shadow_version is not None:
        ref = f"{ep.model}:{ep.shadow_version}"
    elif window.shadows and window.shadows[-1].version:
        ref = window.shadows[-1].version  # the newest shadow in the window
    else:
        raise ConfigError(
            f"endpoint {endpoint!r} has no shadow version and no shadow records in the window",
            hint=f"Mirror requests with `modelyard endpoints set-traffic {endpoint} --shadow N "
            "--shadow-fraction 0.1`, or widen --since.",
            field="endpoint",
        )
    if not any(r.version == ref for r in window.shadows):
        raise ConfigError(
            f"no shadow answers of {ref} on {endpoint!r} in the window",
            hint="The shadow answers --shadow-fraction of the requests: wait for traffic, "
            "or widen --since.",
            field="since",
        )
    return ref


def _no_pairs(endpoint: str, ref: str, read: int, skipped: dict[str, int]) -> ConfigError:
    why = "; ".join(f"{n} {SKIP_REASONS[k]}" for k, n in skipped.items() if n)
    return ConfigError(
        f"no pairs to compare in {read} shadow records of {endpoint!r} ({ref}): {why}",
        hint="Only answers both kept as text (storage policy full or redacted) and both "
        "ended ok can be compared.",
        field="since",
    )


def _row(pair: Pair) -> ShadowRow:
    prod, shadow = pair.production.response or "", pair.shadow.response or ""
    return ShadowRow(
        pair.production.id, pair.shadow.id, pair.shadow.created_at, pair.production.version,
        pair.shadow.version, pair.question, prod, shadow, normalise(prod) == normalise(shadow),
        paired_by="id" if pair.by_id else "request",
    )  # fmt: skip


def _judged(
    store: Store,
    judge: JudgeDef,
    rows: list[ShadowRow],
    concurrency: int,
    progress: Callable[[int], None] | None,
) -> tuple[list[ShadowRow], ShadowScores]:
    items = [  # stripped as guards and online judging give them: the same input, one call
        JudgeInput(r.production_answer.strip(), r.question, record_id=r.production_id) for r in rows
    ]
    shadow_at = {}
    for i, row in enumerate(rows):
        if not row.identical:
            shadow_at[i] = len(items)
            items.append(
                JudgeInput(row.shadow_answer.strip(), row.question, record_id=row.shadow_id)
            )
    run = run_judge(judge, items, cache=store, concurrency=concurrency, progress=progress)
    scored: list[ShadowRow] = []
    counts: Counter[str] = Counter()
    for i, row in enumerate(rows):
        prod = run.judgements[i]
        other = run.judgements[shadow_at[i]] if i in shadow_at else prod
        winner = None
        if prod.score is not None and other.score is not None:
            diff = other.score - prod.score
            winner = "shadow" if diff > 0 else "production" if diff < 0 else "tie"
            counts[winner] += 1
        else:
            counts["failed"] += 1
        error = prod.error or (other.error if other is not prod else None)
        scored.append(
            ShadowRow(**{**asdict(row), "production_score": prod.score,
                       "shadow_score": other.score, "winner": winner, "judge_error": error})
        )  # fmt: skip
    judged = counts["shadow"] + counts["tie"] + counts["production"]
    wins = counts["shadow"] + counts["tie"] / 2
    both = [r for r in scored if r.winner is not None]
    return scored, ShadowScores(
        judge=judge.name, revision=judge.revision, rubric=judge.rubric, judged=judged,
        wins=counts["shadow"], ties=counts["tie"], losses=counts["production"],
        failed=counts["failed"], win_rate=wins / judged if judged else None,
        interval=share_interval(wins, judged),
        production_mean=_mean([r.production_score for r in both]),
        shadow_mean=_mean([r.shadow_score for r in both]),
        calls=len(items) - run.cached, cached=run.cached, cost=run.cost,
        errors=sorted({j.error for j in run.judgements if j.error})[:3],
    )  # fmt: skip


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def compare_shadow(
    store: Store,
    endpoint: str,
    since: datetime,
    *,
    judge: str | None = None,
    min_pairs: int = 20,
    concurrency: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> ShadowReport:
    """The shadow of ``endpoint`` against production on the requests since ``since``
    (see the module's text); ``progress(done, total)`` follows the judge's calls."""
    if min_pairs < 1:
        raise ConfigError(f"--min-pairs is {min_pairs}: use 1 or more", field="min_pairs")
    judge_def = usable_judge(store, judge) if judge is not None else None
    window = store.shadow_window(endpoint, since)
    ref = _shadow_version(store, endpoint, window)
    pairing = pair_records(window, ref, _templates(store, window))
    if not pairing.pairs:
        raise _no_pairs(endpoint, ref, pairing.shadow_records, pairing.skipped)
    rows = [_row(pair) for pair in pairing.pairs]
    summary = None
    if judge_def is not None:
        total = len(rows) + sum(not r.identical for r in rows)
        done = 0

        def step(n: int) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress(done, total)

        rows, summary = _judged(store, judge_def, rows, concurrency, step)
        verdict, reason = decide(summary.judged, summary.interval, min_pairs)
    else:
        same = sum(r.identical for r in rows)
        verdict = "no judge given"
        reason = f"{same} of {len(rows)} answers identical; give --judge NAME for a win rate"
    versions = Counter(r.production_version or "-" for r in rows)
    return ShadowReport(
        endpoint=endpoint, since=since, shadow_version=ref,
        production_versions=dict(sorted(versions.items())),
        shadow_records=pairing.shadow_records, skipped=pairing.skipped, rows=rows,
        judge=summary, min_pairs=min_pairs, verdict=verdict, reason=reason,
    )  # fmt: skip
