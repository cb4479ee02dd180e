"""Progressive delivery: rollouts (canary, blue-green), their guards and controller, A/B analysis.

``start_rollout`` records a rollout in the store; the ``Controller`` (inside
``modelyard serve`` or alone as ``modelyard controller``) prepares the target
on every live server, then moves the traffic plan step by step, judging each
step's guards on the live inference records, and rolls back at once on a
breach. ``compare_versions`` is the A/B view of an endpoint's versions;
``compare_shadow`` compares its shadow version with production on the same requests.
"""

from modelyard.delivery._compare import ABReport, Comparison, VersionStats, compare_versions
from modelyard.delivery._controller import LEASE, Controller, promote_alias
from modelyard.delivery._guards import (
    METRICS,
    Guard,
    GuardResult,
    TrafficSample,
    check_guard,
    evaluate_guard,
    evaluate_guards,
    parse_guard,
)
from modelyard.delivery._judging import check_judge_guards
from modelyard.delivery._pairing import SKIP_REASONS as SHADOW_SKIP_REASONS
from modelyard.delivery._rollouts import (
    DEFAULT_GUARDS,
    DEFAULT_POLICY,
    DEFAULT_STEPS,
    abort_rollout,
    active_rollout,
    already_done,
    check_policy,
    ended_badly,
    parse_steps,
    pause_rollout,
    plan_text,
    promote_rollout,
    resolved_target,
    resume_rollout,
    same_rollout,
    start_rollout,
    wait_rollout,
)
from modelyard.delivery._shadow import VERDICTS as SHADOW_VERDICTS
from modelyard.delivery._shadow import ShadowReport, ShadowRow, ShadowScores, compare_shadow
from modelyard.delivery._views import StepView, step_view

__all__ = [
    "DEFAULT_GUARDS",
    "DEFAULT_POLICY",
    "DEFAULT_STEPS",
    "LEASE",
    "METRICS",
    "SHADOW_SKIP_REASONS",
    "SHADOW_VERDICTS",
    "ABReport",
    "Comparison",
    "Controller",
    "Guard",
    "GuardResult",
    "ShadowReport",
    "ShadowRow",
    "ShadowScores",
    "StepView",
    "TrafficSample",
    "VersionStats",
    "abort_rollout",
    "active_rollout",
    "already_done",
    "check_guard",
    "check_judge_guards",
    "check_policy",
    "compare_shadow",
    "compare_versions",
    "ended_badly",
    "evaluate_guard",
    "evaluate_guards",
    "parse_guard",
    "parse_steps",
    "pause_rollout",
    "plan_text",
    "promote_alias",
    "promote_rollout",
    "resolved_target",
    "resume_rollout",
    "same_rollout",
    "start_rollout",
    "step_view",
    "wait_rollout",
]
