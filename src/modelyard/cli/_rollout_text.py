"""Rollouts in sentences: the summary line, the timeline, `rollout wait`'s progress and end.

Plans read ``90% to bot:1, 10% to bot:3``, never as a dict; missing values are
left out rather than printed as ``None``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.table import Table

from modelyard.delivery import plan_text
from modelyard.metric_names import judge_name
from modelyard.store import Rollout


def num(x: Any) -> str:
    return "-" if x is None else f"{x:.4g}"


def seconds_text(s: float) -> str:
    """300 → ``5m``; 90 → ``90s``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size and s % size == 0:
            return f"{int(s // size)}{unit}"
    return f"{s:g}s"


def _steps(steps: Sequence[Any]) -> str:
    return " → ".join(f"{p}%" for p in steps)


def summary(r: Rollout) -> str:
    """One line: where the rollout is, or how it ended."""
    head = f"{r.endpoint} → {r.target_ref}"
    if r.active:
        step = f"step {r.step_index + 1}/{len(r.steps)} ({r.steps[r.step_index]}%)"
        return f"{head}: {r.status} ({r.phase}, {step})"
    why = f": {r.reason}" if r.reason else ""
    if r.status == "succeeded":
        alias = r.outcome.get("alias") if isinstance(r.outcome, Mapping) else None
        return f"{head}: succeeded, all traffic on {r.target_ref}{_alias_clause(r, alias, *_SHORT)}"
    if r.status == "rolled_back":
        return f"{head}: rolled back{why}; traffic back to {plan_text(r.model, r.baseline)}"
    return f"{head}: {r.status.replace('_', ' ')}{why}; traffic back to " + plan_text(
        r.model, r.baseline
    )


_SHORT = ("; {alias} → {to}", "; {alias} NOT moved: {why}")


def _alias_clause(r: Rollout, alias: Any, moved: str, refused: str) -> str:
    """What became of ``--promote-alias`` (the outcome's ``alias``), or ``""``: ``moved`` or
    ``refused`` with ``{alias}`` (``MODEL@ALIAS``), ``{to}`` and ``{why}`` filled in.

    ``alias`` is ``{"name", "moved", "to"|"refused"}``: a refusal by the role checks at the
    end is said, never shown as a move.
    """
    if not isinstance(alias, Mapping):
        return ""
    subject = f"{r.model}@{alias.get('name') or r.promote_alias}"
    if alias.get("moved", True):
        return moved.format(alias=subject, to=r.target_ref)
    return refused.format(alias=subject, why=alias.get("refused") or "refused")


def describe(r: Rollout, kind: str, d: Mapping[str, Any]) -> str:
    """One timeline event as a sentence."""
    model = r.model
    if kind == "started":
        guards = "; ".join(d.get("guards") or []) or "none"
        text = (
            f"to {d.get('target_ref') or r.target_ref} in steps {_steps(d.get('steps') or [])}, "
            f"each baking {seconds_text(float(d.get('bake_s') or 0))} and at least "
            f"{d.get('min_requests', 0)} requests; guards: {guards}"
        )
        if d.get("promote_alias"):
            text += f"; then {model}@{d['promote_alias']} moves"
        if d.get("gates_overridden"):
            text += f"; gates overridden: {d['gates_overridden']}"
        return text
    if kind == "step":
        text = f"{d.get('percent')}% to the new version: {plan_text(model, d.get('plan'))}"
        previous = d.get("previous")
        if previous:
            text += "; the step before: " + ", ".join(
                f"{g['guard']} = {num(g['value'])} ({g['status']})" for g in previous["guards"]
            )
        return text
    if kind == "rolled_back":
        breach = d.get("breach") or {}
        why = breach.get("message", "a guard breached")
        return f"{why}; back to {plan_text(model, d.get('plan'))}"
    if kind in ("succeeded", "promoted"):
        text = plan_text(model, d.get("plan"))
        if d.get("skipped_steps"):
            text += f" (skipped {_steps(d['skipped_steps'])})"
        return text + _alias_clause(r, d.get("alias"), *_SHORT)
    if kind == "aborted":
        return f"{d.get('reason') or 'aborted'}; back to {plan_text(model, d.get('plan'))}"
    parts = [f"{k.replace('_', ' ')}: {v}" for k, v in d.items() if v not in (None, "", [], {})]
    return "; ".join(parts)


def guard_rows(guards: Sequence[Any]) -> tuple[list[str], list[list[str]], list[str]]:
    """`rollout status`'s guard table (header, rows) and the notes under it.

    A guard on a judge (``judge.NAME``) shows the mean score of the target's answers the
    judge scored against its threshold like any guard, ``n`` being the answers scored, and
    a column of the answers (target and baseline) it gave no score: those never roll back
    on their own, and a note says so.
    """
    judged = any(judge_name(g.metric) is not None for g in guards)
    header = ["guard", "value", "baseline", "threshold", "n", "status"]
    if judged:
        header.insert(5, "no score")
    rows, notes = [], []
    for g in guards:
        row = [g.guard, num(g.value), num(g.baseline), num(g.threshold), str(g.n), g.status]
        if judged:
            is_judge = judge_name(g.metric) is not None
            failed = int(getattr(g, "failed", 0) or 0)
            row.insert(5, str(failed) if is_judge else "")
            if is_judge and failed:
                notes.append(
                    f"{g.metric}: {failed} answer(s) got no score from the judge (errors or "
                    "answers without a score; not a breach, not asked again); see "
                    f"`modelyard judges show {judge_name(g.metric)}`"
                )
            if is_judge and g.status == "pending":
                notes.append(
                    f"{g.metric}: waiting for the judge to score the new version's answers"
                )
        rows.append(row)
    return header, rows, notes


def timeline(r: Rollout) -> Table:
    table = Table("time", "event", "step", "what happened", title=f"rollout {r.id}")
    for e in r.events:
        step = "" if e.step_index is None else f"{e.step_index + 1}/{len(r.steps)}"
        kind = e.kind.replace("_", " ")
        table.add_row(e.time.strftime("%H:%M:%S"), kind, step, describe(r, e.kind, e.detail))
    return table


def progress(r: Rollout) -> str:
    """What `rollout wait` prints each time the rollout moves."""
    if not r.active:
        return summary(r)
    if r.status == "paused":
        return (
            f"paused at step {r.step_index + 1}/{len(r.steps)} "
            f"(`modelyard rollout resume {r.endpoint}` goes on)"
        )
    if r.phase == "preparing":
        return f"preparing: loading {r.target_ref} on the servers before any traffic moves"
    percent = r.steps[r.step_index]
    return (
        f"step {r.step_index + 1}/{len(r.steps)}: {percent}% to {r.target_ref}, baking "
        f"{seconds_text(r.bake_s)} and at least {r.min_requests} requests"
    )


def final(r: Rollout) -> str:
    """`rollout wait`'s last line when the rollout ended as asked (a failure's sentence is
    its error line, ``delivery.ended_badly``)."""
    alias = r.outcome.get("alias") if isinstance(r.outcome, Mapping) else None
    moved = _alias_clause(r, alias, ", and {alias} points at it", "")
    return (
        f"The rollout of {r.endpoint} to {r.target_ref} succeeded: all traffic goes to it{moved}."
    )
