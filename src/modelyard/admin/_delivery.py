"""Endpoint and rollout routes: traffic plans, and a rollout's start, status, promote,
abort, pause and resume. Changes call the store and ``modelyard.delivery`` functions
the CLI calls."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from modelyard.admin._auth import Acting
from modelyard.admin._encode import jsonable
from modelyard.delivery import (
    DEFAULT_POLICY,
    abort_rollout,
    pause_rollout,
    promote_rollout,
    resolved_target,
    resume_rollout,
    start_rollout,
    step_view,
)
from modelyard.errors import ConfigError
from modelyard.store import Rollout, Store

router = APIRouter(tags=["endpoints and rollouts"])

EndpointName = Path(description="The endpoint's name.", max_length=200)


class TrafficBody(BaseModel):
    """The new traffic plan: version number → weight; the weights sum to 100."""

    model_config = ConfigDict(extra="forbid", strict=True)
    weights: dict[str, int] = Field(
        description='Version number (as a string key) → weight, e.g. {"1": 90, "2": 10}.'
    )


class RolloutBody(BaseModel):
    """A rollout to start; the controller moves it step by step and rolls it back on a
    breached guard."""

    model_config = ConfigDict(extra="forbid", strict=True)
    to: str = Field(
        min_length=1,
        max_length=300,
        description="NAME:VERSION, NAME@alias or NAME (its latest version).",
    )
    steps: list[int] = Field(
        default_factory=lambda: list(DEFAULT_POLICY.steps), max_length=20,
        description="Percent of traffic at each step; the last is 100.",
    )  # fmt: skip
    bake_s: float = Field(default=DEFAULT_POLICY.bake_s, ge=0, le=7 * 86400)
    min_requests: int = Field(default=DEFAULT_POLICY.min_requests, ge=0, le=10**9)
    guards: list[str] = Field(
        default_factory=lambda: list(DEFAULT_POLICY.guards), max_length=20,
        description='Guards such as "error_rate <= 0.02".',
    )  # fmt: skip
    promote_alias: str | None = Field(default=None, max_length=200)
    override_gates_reason: str | None = Field(default=None, min_length=1, max_length=2000)


class AbortBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    reason: str | None = Field(default=None, max_length=2000)


def _weights(raw: dict[str, int]) -> dict[int, int]:
    try:
        return {int(k): v for k, v in raw.items()}
    except ValueError:
        raise ConfigError("traffic weights are keyed by version number", field="weights") from None


def rollout_json(store: Store, r: Rollout) -> dict[str, Any]:
    """A rollout; while it bakes, the current step's traffic and guard values too."""
    out: dict[str, Any] = jsonable(r)
    out.update(target_ref=r.target_ref, active=r.active)
    if r.active and r.phase == "baking":
        view = step_view(store, r)
        out["current"] = {
            "requests": view.canary.requests,
            "baseline_requests": view.baseline.requests,
            "elapsed_s": view.elapsed_s,
            "guards": jsonable(view.guards),
        }
    return out


@router.get("/endpoints", summary="List endpoints and their traffic plans")
def list_endpoints(
    caller: Acting, tenant: str | None = Query(None, max_length=200)
) -> list[dict[str, Any]]:
    return [jsonable(e) for e in caller.store.list_endpoints(tenant)]


@router.get("/endpoints/{endpoint}", summary="Show an endpoint and its traffic plan")
def show_endpoint(caller: Acting, endpoint: str = EndpointName) -> dict[str, Any]:
    return jsonable(caller.store.get_endpoint(endpoint))  # type: ignore[no-any-return]


@router.put("/endpoints/{endpoint}/traffic", summary="Set the traffic plan (audited)")
def set_traffic(body: TrafficBody, caller: Acting, endpoint: str = EndpointName) -> dict[str, Any]:
    return jsonable(caller.store.set_traffic(endpoint, _weights(body.weights)))  # type: ignore[no-any-return]


@router.get("/rollouts", summary="List rollouts, newest first")
def list_rollouts(
    caller: Acting,
    endpoint: str | None = Query(None, max_length=200),
    active: bool | None = None,
    limit: int = Query(100, ge=1, le=1000),
) -> list[dict[str, Any]]:
    found = caller.store.list_rollouts(endpoint=endpoint, active=active, limit=limit)
    return [jsonable(r) for r in found]


@router.get("/endpoints/{endpoint}/rollout", summary="The endpoint's latest rollout")
def rollout_status(caller: Acting, endpoint: str = EndpointName) -> dict[str, Any]:
    return rollout_json(caller.store, caller.store.latest_rollout(endpoint))


@router.post("/endpoints/{endpoint}/rollout", summary="Start a rollout (audited)", status_code=201)
def rollout_start(
    body: RolloutBody, caller: Acting, endpoint: str = EndpointName
) -> dict[str, Any]:
    r = start_rollout(
        caller.store, endpoint, body.to, steps=body.steps, bake_s=body.bake_s,
        min_requests=body.min_requests, guards=body.guards, promote_alias=body.promote_alias,
        override_gates=body.override_gates_reason,
    )  # fmt: skip
    # which version `to` chose, said: a bare NAME takes the latest (as the registry reads it)
    return {**rollout_json(caller.store, r), "resolved": resolved_target(body.to, r)}


@router.post("/endpoints/{endpoint}/rollout/promote", summary="Skip to 100% now (audited)")
def rollout_promote(caller: Acting, endpoint: str = EndpointName) -> dict[str, Any]:
    return rollout_json(caller.store, promote_rollout(caller.store, endpoint))


@router.post("/endpoints/{endpoint}/rollout/abort", summary="Restore the old plan (audited)")
def rollout_abort(
    caller: Acting, endpoint: str = EndpointName, body: AbortBody | None = None
) -> dict[str, Any]:
    reason = body.reason if body is not None else None
    return rollout_json(caller.store, abort_rollout(caller.store, endpoint, reason))


@router.post("/endpoints/{endpoint}/rollout/pause", summary="Hold the current step (audited)")
def rollout_pause(caller: Acting, endpoint: str = EndpointName) -> dict[str, Any]:
    return rollout_json(caller.store, pause_rollout(caller.store, endpoint))


@router.post("/endpoints/{endpoint}/rollout/resume", summary="Go on (audited)")
def rollout_resume(caller: Acting, endpoint: str = EndpointName) -> dict[str, Any]:
    return rollout_json(caller.store, resume_rollout(caller.store, endpoint))


__all__ = ["rollout_json", "router"]
