"""Operator actions on rollouts: start, promote, abort, pause, resume, wait.

The controller (``_controller``) moves rollouts by itself; these are the
manual levers, each one audited transition of the store.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from modelyard.delivery._controller import promote_alias
from modelyard.delivery._guards import check_guard
from modelyard.delivery._judging import check_judge_guards
from modelyard.errors import (
    AuthError,
    ConfigError,
    Conflict,
    ModelVersionNotFound,
    ModelyardError,
    NotFound,
    PermissionDenied,
    RolloutError,
    RolloutFailed,
)
from modelyard.store import (
    Rollout,
    RolloutPolicy,
    Store,
    Transition,
    check_name,
    parse_model_ref,
)

log = logging.getLogger(__name__)

DEFAULT_POLICY = RolloutPolicy()  # the one set of rollout defaults (typed in the entities)
DEFAULT_STEPS = DEFAULT_POLICY.steps
DEFAULT_GUARDS = DEFAULT_POLICY.guards
MAX_BAKE_S = 7 * 86400.0  # a week per step, as the admin API takes (its RolloutBody.bake_s)
MAX_VERSION = 2**63 - 1  # the largest version number a store can hold
MAX_MIN_REQUESTS = 10**9  # as the admin API takes; the store keeps a 64-bit integer


def parse_steps(text: str | Sequence[int]) -> tuple[int, ...]:
    """``10,50,100`` → (10, 50, 100): increasing percentages that end at 100."""
    if isinstance(text, str):
        items = [x.strip() for x in text.split(",") if x.strip()]
        if not items or not all(x.isdigit() for x in items):
            raise ConfigError(
                f"invalid steps {text!r}: use increasing percentages ending at 100, "
                "e.g. 10,50,100 (or 100 for blue-green)",
                field="steps",
            )
        steps = tuple(int(x) for x in items)
    else:
        steps = tuple(int(x) for x in text)
    if not steps or steps[-1] != 100 or any(not 0 < s <= 100 for s in steps):
        raise ConfigError(
            f"invalid steps {list(steps)}: each from 1 to 100, the last one 100",
            field="steps",
        )
    if any(b <= a for a, b in itertools.pairwise(steps)):
        raise ConfigError(f"invalid steps {list(steps)}: they must increase", field="steps")
    return steps


def check_policy(
    steps: str | Sequence[int],
    bake_s: float,
    min_requests: int,
    guards: Sequence[str],
) -> RolloutPolicy:
    """A validated rollout policy (what ``start`` and an endpoint's policy take)."""
    if not 0 <= bake_s <= MAX_BAKE_S:
        raise ConfigError(
            f"bake time {bake_s:g} s must be from 0 to {MAX_BAKE_S:g} s (7d) per step",
            hint="Give a shorter --bake, e.g. 10m or 1d.",
            field="bake",
        )
    if not 0 <= min_requests <= MAX_MIN_REQUESTS:
        raise ConfigError(
            f"min requests {min_requests} must be from 0 to {MAX_MIN_REQUESTS}",
            hint="Give the requests the new version must answer per step, e.g. 100.",
            field="min_requests",
        )
    for guard in guards:
        check_guard(guard)
    return RolloutPolicy(parse_steps(steps), float(bake_s), int(min_requests), tuple(guards))


def start_rollout(
    store: Store,
    endpoint: str,
    to: str,
    *,
    steps: str | Sequence[int] = DEFAULT_POLICY.steps,
    bake_s: float = DEFAULT_POLICY.bake_s,
    min_requests: int = DEFAULT_POLICY.min_requests,
    guards: Sequence[str] = DEFAULT_POLICY.guards,
    promote_alias: str | None = None,
    override_gates: str | None = None,
) -> Rollout:
    """Start moving ``endpoint`` to the version ``to`` (``NAME:N`` or ``NAME@alias``).

    The version's gates must have passed; ``override_gates`` is the reason to roll out
    one whose gates failed or never ran (role approver; audited, shown on the version).
    A guard on a judge (``judge.NAME``) needs that judge, with a rubric that needs no
    reference or context (``_judging``).
    """
    policy = check_policy(steps, bake_s, min_requests, guards)
    if promote_alias is not None:  # else refused only at the end, once traffic has moved
        try:
            check_name("alias", promote_alias)
        except ConfigError as exc:
            raise ConfigError(
                f"the alias to promote: {exc.message}",
                hint="Name an alias such as champion.",
                field="promote_alias",
            ) from None
    check_judge_guards(store, policy.guards)  # the judges exist and can judge live traffic
    ep = store.get_endpoint(endpoint)
    try:
        name, _, number = parse_model_ref(to)
    except ConfigError as exc:
        raise ConfigError(f"--to: {exc.message}", hint=exc.hint, field="to") from None
    if number is not None and number > MAX_VERSION:  # beyond the database's integers
        raise ModelVersionNotFound(f"model {name!r} has no version {number}")
    if name != ep.model and number is None and name.isdigit():  # a bare number: a version?
        raise ConfigError(
            f"--to {to} names no model: a version is MODEL:N, here {ep.model}:{to}",
            hint=f"Roll out a version of {ep.model}: --to {ep.model}:N or {ep.model}@ALIAS.",
            field="to",
        )
    if name != ep.model:
        raise ConfigError(
            f"{to} is not a version of {ep.model!r}, the model behind endpoint {endpoint!r}",
            hint=f"Roll out a version of {ep.model}: --to {ep.model}:N or {ep.model}@ALIAS "
            f"(its versions and aliases: modelyard registry list {ep.model}).",
            field="to",
        )
    target = store.resolve_model_ref(to)
    return store.create_rollout(
        endpoint,
        target=target.version,
        steps=policy.steps,
        bake_s=policy.bake_s,
        min_requests=policy.min_requests,
        guards=policy.guards,
        promote_alias=promote_alias,
        override_gates=override_gates,
    )


def same_rollout(
    r: Rollout,
    target: int,
    *,
    steps: str | Sequence[int],
    bake_s: float,
    min_requests: int,
    guards: Sequence[str],
    promote_alias: str | None,
) -> bool:
    """Whether ``start_rollout`` with these arguments asks for the rollout ``r`` is: a
    pipeline's step run again (a retried CI job) finds its rollout there, not another."""
    return (
        r.target == target
        and r.steps == parse_steps(steps)
        and r.bake_s == bake_s
        and r.min_requests == min_requests
        and tuple(r.guards) == tuple(g.strip() for g in guards)
        and r.promote_alias == promote_alias
    )


def already_done(r: Rollout, target: int, plan: Mapping[int, int]) -> bool:
    """Whether the rollout ``r`` already brought its endpoint where a new one to ``target``
    would: it succeeded to ``target`` (its alias moved, if it had one to move), and
    ``target`` still has all the endpoint's traffic (``plan``)."""
    if r.status != "succeeded" or r.target != target or ended_badly(r) is not None:
        return False
    return {v: w for v, w in plan.items() if w} == {target: 100}


def resolved_target(to: str, r: Rollout) -> dict[str, Any]:
    """How ``--to`` chose the rollout's version: ``by`` is ``version`` (``NAME:N``),
    ``alias`` (``NAME@alias``) or ``latest`` (a bare ``NAME``: its newest version, as
    the registry reads a bare name), with a sentence saying so (``note``)."""
    _, alias, number = parse_model_ref(to)
    by = "version" if number is not None else "alias" if alias is not None else "latest"
    notes = {
        "version": f"rolling out {r.target_ref}",
        "alias": f"rolling out {r.target_ref} ({to.strip()} points at it)",
        "latest": f"rolling out {r.target_ref} (the latest version of {r.model}: "
        f"--to {to.strip()} names no version; give {r.model}:N to choose one)",
    }
    return {"requested": to.strip(), "by": by, "ref": r.target_ref, "note": notes[by]}


def active_rollout(store: Store, endpoint: str) -> Rollout:
    """The endpoint's rollout in progress: ``EndpointNotFound`` (404) for an unknown
    endpoint, ``Conflict`` (409) for one with no rollout in progress."""
    found = store.list_rollouts(endpoint=endpoint, active=True, limit=1)
    if not found:
        raise Conflict(
            f"no rollout in progress on endpoint {endpoint!r}",
            hint=f"See its last one with `modelyard rollout status {endpoint}`, or start one "
            f"with `modelyard rollout start {endpoint} --to REF`.",
            endpoint=endpoint,
        )
    return found[0]


def _lever(store: Store, endpoint: str, verb: str, action: str) -> Rollout:
    """The rollout an operator's ``verb`` (audited as ``action``) moves, once the actor's
    role allows it: a refusal first, whatever the rollout's state (a viewer gets 403,
    never 409 or 404)."""
    store.require_rollout_change(endpoint, action, f"{verb} the rollout on {endpoint!r}")
    return active_rollout(store, endpoint)


def _manual(store: Store, r: Rollout, change: Transition) -> Rollout:
    after = store.transition_rollout(r.id, (r.status, r.phase, r.step_index), change)
    if after is None:
        raise Conflict(
            f"the rollout on {r.endpoint!r} changed while this ran (the controller moved it)",
            hint="Look at it with `modelyard rollout status` and try again.",
        )
    return after


def promote_rollout(store: Store, endpoint: str) -> Rollout:
    """Skip the remaining steps: all traffic to the target now (and the alias, if asked).

    Refused (``Conflict``) while the rollout is preparing: no server has the target
    loaded and smoke-tested yet, so all traffic to it would fail or fall back.
    """
    r = _lever(store, endpoint, "promote", "rollout.promoted")
    if r.phase == "preparing":  # no server has loaded the target yet: it would fail them all
        paused = r.status == "paused"
        first = f"Resume it (`modelyard rollout resume {endpoint}`) and wait" if paused else "Wait"
        raise Conflict(
            f"cannot promote the rollout on {endpoint!r}: it is still preparing"
            + (" (paused)" if paused else "")
            + f", the servers have not all loaded and smoke-tested {r.target_ref}, so all "
            "traffic to it now could fail",
            hint=f"{first} until `modelyard rollout status {endpoint}` says baking (the "
            "controller moves it there once every live server has loaded it), then promote; "
            f"or end it with `modelyard rollout abort {endpoint}`.",
            endpoint=endpoint,
        )
    detail: dict[str, Any] = {"manual": True, "skipped_steps": list(r.steps[r.step_index + 1 :])}
    if r.promote_alias:
        detail["alias"] = promote_alias(store, r)
    return _manual(
        store,
        r,
        Transition(
            "promoted", detail, status="succeeded", plan={r.target: 100},
            audit="rollout.promoted", outcome=detail,
        ),
    )  # fmt: skip


def abort_rollout(store: Store, endpoint: str, reason: str | None = None) -> Rollout:
    """Restore the plan from before the rollout and end it ``aborted``."""
    r = _lever(store, endpoint, "abort", "rollout.aborted")
    archived = [f"{r.model}:{n}" for n in sorted(r.baseline) if n != r.target
                and store.get_model_version(r.model, n).status == "archived"]  # fmt: skip
    if archived:  # the store would refuse the plan, naming a version the user never asked for
        raise Conflict(
            f"cannot abort the rollout on {endpoint!r}: the plan from before it sends traffic "
            f"to {', '.join(archived)}, archived since the rollout started",
            hint=f"Promote it instead (`modelyard rollout promote {endpoint}`), then set the "
            "traffic you want with `modelyard endpoints set-traffic`.",
            endpoint=endpoint,
        )
    why = reason or "aborted by an operator"
    return _manual(
        store,
        r,
        Transition(
            "aborted", {"reason": why}, status="aborted", plan=dict(r.baseline),
            audit="rollout.aborted", reason=why,
        ),
    )  # fmt: skip


def pause_rollout(store: Store, endpoint: str) -> Rollout:
    """Hold the current step's plan; the controller leaves a paused rollout alone."""
    r = _lever(store, endpoint, "pause", "rollout.paused")
    if r.status == "paused":
        return r
    return _manual(store, r, Transition("paused", {}, status="paused", audit="rollout.paused"))


def resume_rollout(store: Store, endpoint: str) -> Rollout:
    """Go on from the current step, whose bake time starts again."""
    r = _lever(store, endpoint, "resume", "rollout.resumed")
    if r.status != "paused":
        return r
    change = Transition(
        "resumed", {}, status="running", start_step=r.phase == "baking", audit="rollout.resumed"
    )
    return _manual(store, r, change)


class LatestRollout(Protocol):
    """Whatever can say an endpoint's latest rollout: the store, or the admin API's client."""

    def latest_rollout(self, endpoint: str) -> Rollout: ...


def wait_rollout(
    store: LatestRollout,
    endpoint: str,
    *,
    timeout_s: float,
    poll_s: float = 1.0,
    on_change: Callable[[Rollout], None] | None = None,
) -> tuple[Rollout, bool]:
    """Wait for the endpoint's latest rollout to end; (rollout, timed out).

    ``on_change`` sees the rollout first and then each time its status, phase or
    step changes (progress lines). A read that fails for a moment (the store or the
    server restarting, a proxy's 502) is tried again until the timeout, with a warning
    in the log: the rollout goes on meanwhile, so a CI job waiting on it must not fail on
    that. What asking again cannot change (no such endpoint, no rollout, a refused
    token or role) is raised at once; the last error is raised if the timeout passes.
    """
    deadline = time.monotonic() + timeout_s
    seen: tuple[Any, ...] | None = None
    failing: str | None = None
    while True:
        try:
            r = store.latest_rollout(endpoint)
        except (NotFound, Conflict, AuthError, PermissionDenied, ConfigError):
            raise
        except ModelyardError as exc:
            if time.monotonic() >= deadline:
                raise
            if exc.one_line() != failing:  # one line per new problem, not one per poll
                failing = exc.one_line()
                log.warning("cannot read the rollout of %s (%s); trying again until the "
                            "timeout", endpoint, failing)  # fmt: skip
            time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
            continue
        if failing is not None:
            failing = None
            log.warning("the rollout of %s can be read again", endpoint)
        if on_change is not None and (r.status, r.phase, r.step_index) != seen:
            seen = (r.status, r.phase, r.step_index)
            on_change(r)
        if not r.active:
            return r, False
        if time.monotonic() >= deadline:
            return r, True
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))


def ended_badly(r: Rollout) -> RolloutError | None:
    """Why an ended rollout did not end as asked, or ``None`` when it did.

    ``RolloutFailed`` when it was rolled back or aborted; a ``RolloutError`` when it
    succeeded but its ``promote_alias`` was refused (traffic moved, the alias did not,
    so whoever waits on it, a CI job or a pipeline, does not carry on as if it had).
    """
    hint = f"See its timeline with `modelyard rollout status {r.endpoint}`."
    if r.status != "succeeded":
        why = f" ({r.reason})" if r.reason else ""
        return RolloutFailed(
            f"the rollout of {r.endpoint} to {r.target_ref} ended "
            f"{r.status.replace('_', ' ')}{why}: traffic is back to "
            + plan_text(r.model, r.baseline),
            hint=hint,
            endpoint=r.endpoint,
        )
    alias = r.outcome.get("alias") if isinstance(r.outcome, Mapping) else None
    if isinstance(alias, Mapping) and alias.get("moved") is False:
        subject = f"{r.model}@{alias.get('name') or r.promote_alias}"
        return RolloutError(
            f"the rollout of {r.endpoint} to {r.target_ref} succeeded, but {subject} was "
            f"NOT moved: {alias.get('refused') or 'refused'}",
            hint=f"All traffic is on {r.target_ref}. Someone allowed to can move the alias: "
            f"`modelyard registry alias {r.model} {alias.get('name') or r.promote_alias} "
            f"{r.target}`.",
            endpoint=r.endpoint,
        )
    return None


def plan_text(model: str, plan: Mapping[Any, Any] | None) -> str:
    """``{'1': 90, '3': 10}`` → ``90% to bot:1, 10% to bot:3`` (largest share first)."""
    if not plan:
        return "no traffic"
    shares = sorted(((int(w), str(v)) for v, w in plan.items() if int(w) > 0), reverse=True)
    return ", ".join(f"{w}% to {model}:{v}" for w, v in shares)
