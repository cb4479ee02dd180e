"""The router's Prometheus metrics: requests per replica, picks by reason, failures."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from modelyard.routing._replicas import Replica

FAILURES = ("connect", "no_replica", "timeout", "upstream", "draining")


class RouteMetrics:
    """Every metric of one router, in its own registry (its ``/metrics`` exports it).

    Labels stay bounded: replicas are the fleet's servers, reasons and failure kinds
    fixed lists, codes HTTP statuses; no endpoint, tenant or version is a label."""

    def __init__(self, replicas: Callable[[], list[Replica]]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "modelyard_route_requests",
            "Requests relayed, by the replica that answered and its HTTP status",
            ["replica", "code"],
            registry=self.registry,
        )
        self.picks = Counter(
            "modelyard_route_picks",
            "Replicas chosen: resident (holds the endpoint's adapter), home (its rendezvous "
            "hash), least_loaded, round_robin (no routing), retry (after a failed connection)",
            ["reason"],
            registry=self.registry,
        )
        self.failures = Counter(
            "modelyard_route_failures",
            "Requests a replica failed: connect (refused or reset before an answer, tried "
            "elsewhere), timeout, upstream (broke mid-answer), draining (tried elsewhere), "
            "upload (lost once an upload's bytes were sent: 502), no_replica (503: none live)",
            ["kind"],
            registry=self.registry,
        )
        self.registry.register(_ReplicaGauges(replicas))


class _ReplicaGauges(Collector):
    """Live replicas, and each one's requests in flight through this router (scrape time)."""

    def __init__(self, replicas: Callable[[], list[Replica]]) -> None:
        self._replicas = replicas

    def collect(self) -> Iterator[Metric]:
        replicas = self._replicas()
        live = GaugeMetricFamily(
            "modelyard_route_replicas", "Replicas with a fresh heartbeat that take requests"
        )
        live.add_metric([], sum(1 for r in replicas if r.usable))
        inflight = GaugeMetricFamily(
            "modelyard_route_in_flight",
            "Requests in flight through this router, per replica",
            labels=["replica"],
        )
        resident = GaugeMetricFamily(
            "modelyard_route_resident_adapters",
            "Versions this router predicts each replica holds",
            labels=["replica"],
        )
        for r in replicas:
            inflight.add_metric([r.id], r.inflight)
            resident.add_metric([r.id], len(r.resident))
        yield live
        yield inflight
        yield resident
