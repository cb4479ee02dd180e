"""Routing: a front for many serving replicas that sends each request where its adapter is.

``create_route_app(store, RouteOptions(...))`` is the app behind ``modelyard
route``: it relays the OpenAI API (``/v1/...``: completions, chat, responses,
models, feedback; streams chunk by chunk) to the replicas found in the store's
heartbeats, each request to the replica that holds the endpoint's adapter, else
the adapter's home by rendezvous hashing, else the least loaded one
(``AdapterAffinity``; ``RoundRobin`` is the baseline without routing). It
authenticates nothing: keys, limits, 404s and records stay the servers'.
``run_router`` serves it, draining on SIGTERM. It imports no engine (no torch).
"""

from modelyard.routing._app import FleetView, create_route_app
from modelyard.routing._options import POLICIES, RouteOptions
from modelyard.routing._policy import REASONS, AdapterAffinity, Plan, RoundRobin, plans_of
from modelyard.routing._replicas import Replica, Replicas
from modelyard.routing._server import run_router

__all__ = [
    "POLICIES",
    "REASONS",
    "AdapterAffinity",
    "FleetView",
    "Plan",
    "Replica",
    "Replicas",
    "RoundRobin",
    "RouteOptions",
    "create_route_app",
    "plans_of",
    "run_router",
]
