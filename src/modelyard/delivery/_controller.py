"""The rollout controller: advances or rolls back every active rollout from live records.

One ``tick`` looks at each active rollout once and makes at most one
transition per rollout, through ``Store.transition_rollout``, which applies it
only if the rollout is still where the tick saw it and the controller still
holds the ``controller`` lease. So a tick is idempotent, two controllers on one
store never both act (the one without the lease does nothing, and a stale one
is fenced out), and a controller killed at any point leaves the store in a
declared state from which the next tick goes on.

A rollout starts ``preparing``: every live server loads the target version and
answers a smoke request (reported in its heartbeat); a server that cannot is
a breach. Then each step bakes: the target gets ``steps[i]`` percent; after
``bake_s`` seconds with at least ``min_requests`` requests on the target and no
guard breached, the next step starts (a guard on a judge holds the step until the judge
has scored ``min_requests`` of the target's records; the judging runs in a thread of its
own, one job at a time, so a slow judge never delays a rollback: ``_judging``). A breach
at any time (a guard, a load
failure on a server, requests that had to fall back) restores the baseline
plan at once and ends the rollout ``rolled_back``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from modelyard.delivery._alerting import load_alerting, resolve_rollback_alert, rollback_alert
from modelyard.delivery._baseline import BaselineReads
from modelyard.delivery._guards import GuardResult, load_statistics
from modelyard.delivery._judging import StepWindow, judge_guards, judge_windows
from modelyard.delivery._sender import AlertSender
from modelyard.delivery._views import (
    StepView,
    Versions,
    read_versions,
    step_view,
    step_views,
    window_of,
)
from modelyard.errors import ModelVersionNotFound, ModelyardError, PermissionDenied
from modelyard.metric_names import judge_name
from modelyard.store import Rollout, Server, Store, Transition, step_plan, utcnow

log = logging.getLogger(__name__)

LEASE = "controller"


def default_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _expect(r: Rollout) -> tuple[str, str, int]:
    return (r.status, r.phase, r.step_index)


@dataclass(frozen=True)
class _Seen:
    """What one tick read for every active rollout at once: the servers (``alive`` says
    whose heartbeat is recent), the rollouts' versions and the step views of those baking."""

    servers: list[Server]
    versions: Versions
    views: dict[str, StepView | Exception]


class Controller:
    """Drives rollouts; run ``tick`` in a loop (``run``), inside ``serve`` or alone.

    ``extra_ticks`` run on the leader every ``extra_every_s`` seconds after the
    rollouts (``serve`` and ``modelyard controller`` pass ``monitoring.tick``, so
    alert rules are evaluated by the controller loop), in a thread of their own, one
    run at a time: a slow drift check, judge or alert webhook never delays a tick.

    A rollback's alert is recorded in the tick and its webhook POSTed by ``alerts``, a
    sender on a thread of its own (``_sender``): a slow or hung receiver never delays a
    tick, so never costs the lease. A custom ``on_breach`` (a notifier of the caller's)
    is called off the tick as well, on a thread of its own, one rollback at a time in the
    order they happened. ``run`` ends with ``close``, which waits ``close_timeout_s`` at
    most for the alerts still queued and the ``on_breach`` calls still due.
    """

    def __init__(
        self,
        store: Store,
        *,
        holder: str | None = None,
        lease_ttl_s: float = 10.0,
        stale_after_s: float = 15.0,
        prepare_timeout_s: float = 300.0,
        alpha: float = 0.05,
        on_breach: Callable[[Store, Rollout, Mapping[str, Any]], object] | None = None,
        extra_ticks: list[Callable[[Store], object]] | None = None,
        extra_every_s: float = 15.0,
        close_timeout_s: float = 5.0,
    ) -> None:
        self.store = store
        self.holder = holder or default_holder()
        self.lease_ttl_s = lease_ttl_s
        self.stale_after_s = stale_after_s
        self.prepare_timeout_s = prepare_timeout_s
        self.alpha = alpha
        self.close_timeout_s = close_timeout_s
        self.alerts = AlertSender(store)
        self.on_breach = (
            on_breach
            if on_breach is not None
            else functools.partial(rollback_alert, sender=self.alerts)
        )
        # The built-in notifier only records the alert in the tick (its webhook is queued on
        # ``alerts``); a caller's may take any time (a chat message, a pager), so it runs on
        # a thread of its own, in order: it never holds the other rollouts nor the lease.
        self._notifier = (
            None
            if on_breach is None
            else ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelyard-breach")
        )
        self._notices: list[Future[None]] = []
        self.extra_ticks = extra_ticks or []
        self.extra_every_s = extra_every_s
        self._extra_at = 0.0
        # Judge calls run in a thread of their own: a slow or hung judge never delays a
        # breach's rollback, nor the lease this loop must renew (one job at a time). A tick
        # starts one job for the rollouts it found to judge (``_to_judge``); each of them
        # waits for that job before it has another.
        self._judging = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelyard-judge")
        self._judge_jobs: dict[str, Future[dict[str, int | Exception]]] = {}
        self._to_judge: dict[str, tuple[Sequence[str], StepWindow]] = {}
        # The extra ticks (the monitoring tick: drift, judges, alert webhooks) run in a thread
        # of their own too, one run at a time: however slow, they never delay the rollouts.
        self._extras = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelyard-extra")
        self._extra_job: Future[None] | None = None
        # Rollbacks' alerts are recorded once every rollout of the tick was looked at, and
        # their webhooks (a timeout, retries) POSTed by ``self.alerts`` off this thread.
        self._alerts: list[tuple[Rollout, Mapping[str, Any]]] = []
        # A step's baseline (an hour or more of records) read afresh only when cheap
        self._baselines = BaselineReads()
        self._seen: _Seen | None = None  # what the running tick read for all its rollouts

    @property
    def lease(self) -> tuple[str, str]:
        return (LEASE, self.holder)

    def tick(self) -> list[Rollout]:
        """One pass over the active rollouts; returns the rollouts it changed."""
        if not self.store.acquire_lease(LEASE, self.holder, self.lease_ttl_s):
            return []
        changed = []
        active = self.store.list_rollouts(active=True)
        for gone in set(self._judge_jobs) - {r.id for r in active}:
            self._judge_jobs.pop(gone)  # its rollout ended: what it judged stays in the store
        self._baselines.keep_only([r.id for r in active])
        try:
            self._seen = self._read(active)
        except ModelyardError as exc:  # e.g. the store is down for a moment: the next tick
            log.warning("the controller could not read the rollouts: %s", exc.one_line())
            active = []
        for rollout in active:
            try:
                after = self._advance(rollout)
            except ModelyardError as exc:  # one bad rollout must not stop the others
                log.warning("rollout %s on %s: %s", rollout.id, rollout.endpoint, exc.one_line())
                continue
            except Exception:  # nor a bug it meets: logged, and the others still move
                log.exception("rollout %s on %s: the tick failed", rollout.id, rollout.endpoint)
                continue
            if after is not None:
                changed.append(after)
        self._seen = None
        self._start_judging()
        self._send_alerts()
        due = time.monotonic() - self._extra_at >= self.extra_every_s
        if self.extra_ticks and due and (self._extra_job is None or self._extra_job.done()):
            self._extra_at = time.monotonic()  # one at a time: a slow one is not started again
            self._extra_job = self._extras.submit(self._run_extras)
        return changed

    def _run_extras(self) -> None:
        for extra in self.extra_ticks:  # e.g. monitoring.tick: profiles, drift, alerts
            try:
                extra(self.store)
            except ModelyardError as exc:
                log.warning("controller task failed: %s", exc.one_line())
            except Exception:  # a bug in a task must not stop the rollouts
                log.exception("controller task %s failed", getattr(extra, "__name__", extra))

    def run(self, stop: threading.Event, interval_s: float = 1.0) -> None:
        """Tick every ``interval_s`` until ``stop`` is set; release the lease at the end.

        What a tick imports lazily (the statistics, the alerting) is loaded first, so the
        first tick, which takes the lease, acts within it however short the lease
        (``--lease-ttl``) is.
        """
        load_statistics()
        load_alerting()  # the monitoring package, which a rollback's alert reads
        try:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    self.tick()
                except ModelyardError as exc:  # e.g. the store is down for a moment
                    log.warning("controller tick failed: %s", exc.one_line())
                except Exception:  # a bug must not end the loop: the next tick tries again
                    log.exception("controller tick failed")
                stop.wait(max(0.0, interval_s - (time.monotonic() - started)))
        finally:  # the lease first: another controller need not wait for the alerts
            with contextlib.suppress(ModelyardError):
                self.store.release_lease(LEASE, self.holder)
            self.close()

    def close(self, timeout_s: float | None = None) -> bool:
        """Stop judging, let a running extra tick end and send the queued alerts, waiting
        ``timeout_s`` at most in all (default ``close_timeout_s``); False if that was not
        enough (an alert not sent is in the log and the store). ``run`` calls it; call it
        after ticks run without ``run``."""
        self._judging.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + (self.close_timeout_s if timeout_s is None else timeout_s)
        job, ended = self._extra_job, True
        if job is not None:
            with contextlib.suppress(FutureTimeout):
                job.result(timeout=max(0.0, deadline - time.monotonic()))
            ended = job.done()
            if not ended:
                names = ", ".join(getattr(x, "__name__", str(x)) for x in self.extra_ticks)
                log.warning("the controller stopped with its task %s still running", names)
        self._extras.shutdown(wait=False, cancel_futures=True)
        notified = self._close_notifier(deadline)
        sent = self.alerts.close(max(0.0, deadline - time.monotonic()))
        return ended and notified and sent

    def _close_notifier(self, deadline: float) -> bool:
        """Wait until ``deadline`` for the ``on_breach`` calls still due; False if some were
        not made (logged) or still run. The controller may tick again afterwards."""
        if self._notifier is None:
            return True
        for notice in self._notices:
            with contextlib.suppress(FutureTimeout):
                notice.result(timeout=max(0.0, deadline - time.monotonic()))
        left = [n for n in self._notices if not n.done()]
        if left:
            log.warning("the controller stopped with %d rollback notice(s) of on_breach not "
                        "made or not finished", len(left))  # fmt: skip
        self._notifier.shutdown(wait=False, cancel_futures=True)
        self._notifier = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelyard-breach")
        self._notices = []
        return not left

    # -- one rollout ------------------------------------------------------------------------

    def _read(self, active: Sequence[Rollout]) -> _Seen:
        """What the tick's decisions read, for every rollout at once (the statements of one
        rollout, however many are active): the servers, the rollouts' target and baseline
        versions, and the step views of those that bake on (``step_views``)."""
        moving = [r for r in active if r.status != "paused"]
        if not moving:
            return _Seen([], {}, {})
        servers = self.store.list_servers(stale_after_s=self.stale_after_s)
        versions = read_versions(self.store, moving)
        alive = [s for s in servers if s.alive]
        baking = [
            r for r in moving
            if r.phase != "preparing"
            and versions.get((r.model, r.target), (0, ""))[1] not in ("", "archived")
            and not any(r.target_ref in s.failures for s in alive)
        ]  # fmt: skip
        views = step_views(
            self.store, baking, alpha=self.alpha, baselines=self._baselines, versions=versions
        )
        return _Seen(servers, versions, views)

    def _advance(self, r: Rollout) -> Rollout | None:
        if r.status == "paused":
            return None
        seen = self._seen or self._read([r])
        target = seen.versions.get((r.model, r.target))
        if target is None:
            raise ModelVersionNotFound(f"model {r.model!r} has no version {r.target}")
        if target[1] == "archived":
            return self._roll_back(  # it can take no traffic: else stuck, failing each tick
                r, {"kind": "target_archived",
                    "message": f"{r.target_ref} was archived while the rollout ran"},
            )  # fmt: skip
        if r.phase == "preparing":
            return self._prepare(r, seen.servers)
        return self._bake(r, seen)

    def _apply(self, r: Rollout, change: Transition) -> Rollout | None:
        after = self.store.transition_rollout(r.id, _expect(r), change, lease=self.lease)
        if after is not None:
            log.info("rollout %s on %s: %s", r.id, r.endpoint, change.event)
        return after

    def _prepare(self, r: Rollout, listed: Sequence[Server]) -> Rollout | None:
        servers = [s for s in listed if s.alive and not s.draining]
        failed = {}
        waiting = []
        for server in servers:
            report = server.prepared.get(r.id)
            if report is None:
                if r.target_ref in server.failures:
                    failed[server.id] = server.failures[r.target_ref]
                else:
                    waiting.append(server.id)
            elif not report.get("ok"):
                failed[server.id] = str(report.get("error", "failed"))
        if failed:
            return self._roll_back(
                r, {"kind": "load_failure", "servers": failed,
                    "message": f"{r.target_ref} failed to load on {len(failed)} server(s)"},
            )  # fmt: skip
        if waiting:  # the time to prepare runs from the start, or from a resume after a pause
            since = max([r.created_at, *(e.time for e in r.events if e.kind == "resumed")])
            age = (utcnow() - since).total_seconds()
            if age > self.prepare_timeout_s:
                return self._roll_back(
                    r, {"kind": "prepare_timeout", "servers": waiting,
                        "message": f"{r.target_ref} was not ready on {len(waiting)} server(s) "
                        f"within {self.prepare_timeout_s:g} s"},
                )  # fmt: skip
            return None
        plan = step_plan(r.baseline, r.target, r.steps[0])
        return self._apply(
            r,
            Transition(
                "step",
                {"percent": r.steps[0], "servers_ready": [s.id for s in servers]},
                phase="baking",
                step_index=0,
                start_step=True,
                plan=plan,
                audit="rollout.step",
            ),
        )

    def _bake(self, r: Rollout, seen: _Seen) -> Rollout | None:
        failed = {s.id: s.failures[r.target_ref]
                  for s in seen.servers if s.alive and r.target_ref in s.failures}  # fmt: skip
        if failed:
            return self._roll_back(
                r, {"kind": "load_failure", "servers": failed,
                    "message": f"{r.target_ref} failed to load on {len(failed)} server(s)"},
            )  # fmt: skip
        got = seen.views.get(r.id)
        if got is None:  # not read with the others (a tick's reads are of them all)
            got = step_view(self.store, r, alpha=self.alpha, baselines=self._baselines)
        if isinstance(got, Exception):
            raise got  # this rollout's own failure: logged by the tick, the others go on
        view = got
        if view.fallbacks:
            return self._roll_back(
                r, {"kind": "load_failure", "fallbacks": view.fallbacks,
                    "message": f"{view.fallbacks} request(s) for {r.target_ref} fell back to "
                    "the baseline"},
            )  # fmt: skip
        breaches = [g for g in view.guards if g.status == "breach"]
        window = {"since": (r.step_started_at or r.created_at).isoformat(),
                  "requests": view.canary.requests,
                  "baseline_requests": view.baseline.requests,
                  "baseline_latency": view.latency_window}  # fmt: skip
        if breaches:
            return self._roll_back(
                r, {"kind": "guard", "guards": [_guard_json(g) for g in view.guards],
                    "window": window,
                    "message": "; ".join(g.describe() for g in breaches)},
            )  # fmt: skip
        self._judge(r, seen.versions)  # in the background: what it scores, the next ticks read
        if view.elapsed_s < r.bake_s or view.canary.requests < r.min_requests:
            return None
        if any(g.status == "pending" and judge_name(g.metric) for g in view.guards):
            return None  # a step never ends before its judges have had their say
        values = {"guards": [_guard_json(g) for g in view.guards], "window": window}
        if r.step_index + 1 < len(r.steps):
            nxt = r.step_index + 1
            return self._apply(
                r,
                Transition(
                    "step",
                    {"percent": r.steps[nxt], "previous": values},
                    step_index=nxt,
                    start_step=True,
                    plan=step_plan(r.baseline, r.target, r.steps[nxt]),
                    audit="rollout.step",
                ),
            )
        return self._finish(r, values)

    def _judge(self, r: Rollout, versions: Versions) -> None:
        """Judge ``r``'s step window for its judge guards in the tick's judging job
        (``_start_judging``), unless the job of an earlier tick still judges it."""
        job = self._judge_jobs.get(r.id)
        if job is not None and not job.done():
            return
        if job is not None:
            exc = job.exception()
            if exc is None:  # the job ran: this rollout's own part may have failed
                got = job.result().get(r.id)
                exc = got if isinstance(got, BaseException) else None
            if exc is not None:
                why = exc.one_line() if isinstance(exc, ModelyardError) else repr(exc)
                log.warning("rollout %s: judging failed: %s", r.id, why)
        if judge_guards(r.guards):
            self._to_judge[r.id] = (r.guards, window_of(r, versions))

    def _start_judging(self) -> None:
        """One job in the judging thread for the rollouts this tick found to judge: their
        records picked together, then judged rollout by rollout (``judge_windows``); each
        rollout's failure there is its own."""
        asks, self._to_judge = self._to_judge, {}
        if not asks:
            return
        try:
            job = self._judging.submit(judge_windows, self.store, asks)
        except RuntimeError as exc:  # closed (``close``): the rollouts still moved
            log.warning("the controller could not start judging: %s", exc)
            return
        for rollout_id in asks:
            self._judge_jobs[rollout_id] = job

    def _finish(self, r: Rollout, values: Mapping[str, Any]) -> Rollout | None:
        detail: dict[str, Any] = {"final": values}
        if r.promote_alias:
            detail["alias"] = promote_alias(self.store, r)
        after = self._apply(
            r,
            Transition(
                "succeeded",
                detail,
                status="succeeded",
                plan={r.target: 100},
                audit="rollout.succeeded",
                outcome=detail,
            ),
        )
        if after is not None:
            try:
                resolve_rollback_alert(self.store, after)
            except ModelyardError as exc:
                log.warning("could not resolve the rollback alert: %s", exc.one_line())
        return after

    def _roll_back(self, r: Rollout, breach: Mapping[str, Any]) -> Rollout | None:
        after = self._apply(
            r,
            Transition(
                "rolled_back",
                {"breach": dict(breach)},
                status="rolled_back",
                plan=dict(r.baseline),
                audit="rollout.rolled_back",
                reason=str(breach.get("message", "guard breached")),
                outcome={"breach": dict(breach)},
            ),
        )
        if after is not None:
            log.warning("rollout %s on %s rolled back: %s", r.id, r.endpoint, breach.get("message"))
            self._alerts.append((after, breach))  # sent at the end of the tick
        return after

    def _send_alerts(self) -> None:
        alerts, self._alerts = self._alerts, []
        self._notices = [n for n in self._notices if not n.done()]
        for after, breach in alerts:
            if self._notifier is None:
                self._notify(after, breach)
            else:
                self._notices.append(self._notifier.submit(self._notify, after, breach))

    def _notify(self, after: Rollout, breach: Mapping[str, Any]) -> None:
        try:
            self.on_breach(self.store, after, breach)
        except Exception:  # a notifier must not stop the controller
            log.exception("the rollback alert failed")


def promote_alias(store: Store, r: Rollout) -> dict[str, Any]:
    """Move ``r.promote_alias`` to the target as the actor who started the rollout.

    Idempotent (an alias already there is left alone); a refusal by the role
    checks is audited by the registry and reported, not raised. A rollout started
    with the target's gates overridden promotes with that override (audited again).
    """
    assert r.promote_alias is not None
    actor = r.created_by or store.actor
    started = next((e.detail for e in r.events if e.kind == "started"), {})
    overridden = started.get("gates_overridden")
    override = f"{overridden} (rollout {r.id})" if overridden else None
    try:
        store.as_actor(actor).set_alias(r.model, r.promote_alias, r.target, override_gates=override)
    except PermissionDenied as denied:
        return {"name": r.promote_alias, "moved": False, "refused": denied.message}
    return {"name": r.promote_alias, "moved": True, "to": r.target, "as": actor}


def _guard_json(g: GuardResult) -> dict[str, Any]:
    return {
        "guard": g.guard, "status": g.status, "value": g.value, "baseline": g.baseline,
        "threshold": g.threshold, "n": g.n, "p_value": g.p_value, "failed": g.failed,
    }  # fmt: skip
