"""Asking a judge: one call per input not in the cache, several at once, scores parsed.

The judge is called through the OpenAI chat completions API (``openai`` SDK) at
its ``base_url``: a modelyard server (``model`` is then an endpoint's name, and
the call is an inference record there like any other) or an upstream provider.
Calls are greedy (temperature 0) and short (``max_tokens``). A score is the
number after ``Score:`` or, failing that, the first whole number from 1 to 5 in
the answer; an answer with none is kept with the reason and no score. What the
judge's revision already scored (same rendered messages) is taken from the
store, not asked again.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from modelyard.errors import ConfigError, JudgeError
from modelyard.judges._rubrics import SCALE, JudgeInput, input_hash, render
from modelyard.store import JudgeDef, Judgement

_LABELLED = re.compile(r"score\s*[:=]?\s*\**\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)(?![\d.])")
_SCALE_TEXT = re.compile(
    r"\d+(?:\.\d+)?\s*(?:-|\u2013|to)\s*\d+(?:\.\d+)?|(?:out\s+of|/)\s*\d+(?:\.\d+)?",
    re.IGNORECASE,
)
_OUTPUT_CHARS = 2000
SAVE_EVERY = 16
"""Judgements are saved in batches of this many as the calls end."""


class JudgementCache(Protocol):
    """Where judgements are kept (the ``Store``)."""

    def cached_judgements(self, judge: JudgeDef, input_hashes: Any) -> dict[str, Judgement]: ...

    def save_judgements(self, judgements: Sequence[Judgement]) -> None: ...


def parse_score(text: str) -> float | None:
    """The score in a judge's answer, or None when it holds no number from 1 to 5.

    The number after ``Score:``; failing that, the first number from 1 to 5 that is not
    part of the scale itself (``1-5``, ``1 to 5``, ``out of 5``, ``/5``)."""
    low, high = SCALE
    for pattern in (_LABELLED, _NUMBER):
        if pattern is _NUMBER:
            text = _SCALE_TEXT.sub(" ", text)
        for match in pattern.finditer(text):
            value = float(match.group(1))
            if low <= value <= high:
                return value
            if pattern is _LABELLED:
                return None  # "Score: 7" is out of range, not a cue to look further
    return None


def api_key(judge: JudgeDef) -> str:
    """The judge's key from its environment variable; a ConfigError when that is unset."""
    if judge.api_key_env is None:
        return "none"
    value = os.environ.get(judge.api_key_env)
    if not value:
        raise ConfigError(
            f"judge {judge.name!r} reads its API key from ${judge.api_key_env}, which is not set",
            hint=f"Export {judge.api_key_env}=KEY where this command runs.",
            judge=judge.name,
        )
    return value


def make_client(judge: JudgeDef, timeout_s: float = 60.0) -> Any:
    import openai

    return openai.OpenAI(
        base_url=judge.base_url, api_key=api_key(judge), timeout=timeout_s, max_retries=2
    )


def _ask(judge: JudgeDef, client: Any, item: JudgeInput, system: str, user: str) -> Judgement:
    started = time.perf_counter()
    digest = input_hash(system, user)
    try:
        reply = client.chat.completions.create(
            model=judge.model,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
            temperature=0,
            max_tokens=judge.max_tokens,
        )
    except Exception as exc:  # any failure of the call is that input's error, kept
        return Judgement(
            judge.name, judge.revision, digest, item.record_id, None, None,
            f"{type(exc).__name__}: {exc}"[:500], 0, 0, 0.0,
            (time.perf_counter() - started) * 1000,
        )  # fmt: skip
    text = (reply.choices[0].message.content or "") if reply.choices else ""
    usage = reply.usage
    prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
    completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
    cost = (prompt_tokens * judge.input_per_1k + completion_tokens * judge.output_per_1k) / 1000
    score = parse_score(text)
    error = None if score is not None else f"no score from 1 to 5 in the answer {text[:80]!r}"
    return Judgement(
        judge.name, judge.revision, digest, item.record_id, score, text[:_OUTPUT_CHARS], error,
        prompt_tokens, completion_tokens, cost, (time.perf_counter() - started) * 1000,
    )  # fmt: skip


@dataclass(frozen=True)
class JudgeRun:
    """The judgements of one run, in the order of its inputs."""

    judge: JudgeDef
    judgements: list[Judgement]
    cached: int
    scores: list[float | None] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scores", [j.score for j in self.judgements])

    @property
    def scored(self) -> int:
        return sum(score is not None for score in self.scores)

    @property
    def failed(self) -> int:
        return len(self.scores) - self.scored

    @property
    def mean(self) -> float | None:
        values = [s for s in self.scores if s is not None]
        return sum(values) / len(values) if values else None

    @property
    def cost(self) -> float:
        return sum(j.cost for j in self.judgements)

    def summary(self) -> dict[str, Any]:
        return {
            "judge": self.judge.name, "revision": self.judge.revision, "metric": self.judge.metric,
            "mean": self.mean, "n": len(self.scores), "scored": self.scored,
            "failed": self.failed, "cached": self.cached, "cost": self.cost,
            "errors": sorted({j.error for j in self.judgements if j.error})[:3],
        }  # fmt: skip


def failed_hint(name: str) -> str:
    """What to do when judge ``name`` gave too few scores, naming it."""
    return (
        f"Check its URL, model and key with `modelyard judges show {name}`, then try it on a "
        f"few answers with `modelyard judges score {name} --data FILE`."
    )


def run_judge(
    judge: JudgeDef,
    items: Sequence[JudgeInput],
    *,
    cache: JudgementCache | None = None,
    client: Any = None,
    concurrency: int = 4,
    progress: Callable[[int], None] | None = None,
    require_scores: bool = True,
) -> JudgeRun:
    """Score every item (cached ones from ``cache``), keep the new judgements in ``cache``.

    A missing field is a ConfigError before any call. With ``require_scores``, a run
    in which no item got a score is a JudgeError carrying the first reason.
    """
    rendered = [render(judge.rubric, judge.prompt, item) for item in items]
    hashes = [input_hash(system, user) for system, user in rendered]
    known = cache.cached_judgements(judge, hashes) if cache is not None else {}
    todo = [i for i, h in enumerate(hashes) if h not in known]
    owned = None  # a client made here is closed here, when the calls end
    if todo and client is None:
        client = owned = make_client(judge)
    done: dict[int, Judgement] = {}

    def one(i: int) -> tuple[int, Judgement]:
        system, user = rendered[i]
        return i, _ask(judge, client, items[i], system, user)

    unsaved: list[Judgement] = []  # kept as the calls end: a run cut short keeps what it paid
    try:
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            for i, judgement in pool.map(one, todo):
                done[i] = judgement
                unsaved.append(judgement)
                if cache is not None and len(unsaved) >= SAVE_EVERY:
                    cache.save_judgements(unsaved)
                    unsaved = []
                if progress is not None:
                    progress(1)
    finally:
        if owned is not None:
            owned.close()
    judgements = []
    for i, digest in enumerate(hashes):
        if i in done:
            judgements.append(done[i])
        else:  # a cached score, for this input's record (the same text may recur)
            hit = known[digest]
            judgements.append(
                Judgement(
                    hit.judge, hit.revision, hit.input_hash, items[i].record_id, hit.score,
                    hit.output, hit.error, 0, 0, 0.0, 0.0, hit.created_at,
                )
            )  # fmt: skip
    # The last calls are kept, and so is a cached score given to another record: a record's
    # score is then found by its id (guards, online judging), at no cost.
    fresh = unsaved + [
        j for i, j in enumerate(judgements)
        if i not in done and j.record_id is not None
        and j.record_id != known[hashes[i]].record_id
    ]  # fmt: skip
    if cache is not None and fresh:
        cache.save_judgements(fresh)
    run = JudgeRun(judge, judgements, cached=len(items) - len(todo))
    if require_scores and items and run.scored == 0:
        first = next((j.error for j in judgements if j.error), "no answer")
        raise JudgeError(
            f"judge {judge.name!r} scored none of {len(items)} answers: {first}",
            hint=failed_hint(judge.name),
            judge=judge.name,
        )
    return run
