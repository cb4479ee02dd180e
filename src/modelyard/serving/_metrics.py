"""The app's Prometheus metrics; also the engine's observer for adapter and batch events."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from modelyard.gpu import GpuReading, gpu_readings
from modelyard.serving._types import AdapterEvent
from modelyard.store import ACTIVE_BATCH_STATES, ApiKey, ModelVersion


class Metrics:
    """Every metric of one app, in its own registry (``/metrics`` exports it)."""

    def __init__(self, gpus: Callable[[], list[GpuReading]] = gpu_readings) -> None:
        self.registry = CollectorRegistry()
        if gpus():  # GPU series only on a server that has GPUs (read at each scrape)
            self.registry.register(_Gpus(gpus))
        labels = ["endpoint", "version", "tenant"]
        # requests, latency, time to first token and tokens: the users' requests (shadow
        # copies, never returned to anyone, have their own modelyard_shadow_* families)
        self.requests = Counter(
            "modelyard_requests",
            "Inference requests of users (shadow copies: modelyard_shadow_requests_total)",
            [*labels, "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "modelyard_request_latency_seconds",
            "Latency of the users' requests answered ok (refused, cancelled and failed ones: "
            "in modelyard_requests_total by status)",
            labels,
            registry=self.registry,
        )
        self.tokens = Counter(
            "modelyard_tokens",
            "Tokens processed for users' requests (not for shadow copies)",
            [*labels, "kind"],
            registry=self.registry,
        )
        self.dropped = Counter(
            "modelyard_records_dropped", "Inference records dropped", registry=self.registry
        )
        self.ttft = Histogram(
            "modelyard_time_to_first_token_seconds",
            "Time from submission to the first generated token, of the users' requests answered ok",
            labels,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "modelyard_batch_size",
            "Requests run together in one generate call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "modelyard_queue_depth", "Requests waiting for the engine", registry=self.registry
        )
        self.spend = Counter(
            "modelyard_spend",
            "What requests cost (tokens at their base model's price), by tenant, key, "
            "endpoint and version",
            ["tenant", "key", "endpoint", "version"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "modelyard_rate_limited",
            "Requests refused by a key's rate limit",
            ["tenant", "limit"],
            registry=self.registry,
        )
        self.refused = Counter(
            "modelyard_refused",
            "Requests refused before the engine (400, 401, 403, 404, 413, 429), by error code",
            ["tenant", "reason"],
            registry=self.registry,
        )
        self.feedback = Counter(
            "modelyard_feedback", "Feedback received", ["tenant"], registry=self.registry
        )
        self.shadow = Counter(
            "modelyard_shadow_requests",
            "Requests mirrored to a shadow version (answers recorded, never returned)",
            [*labels, "status"],
            registry=self.registry,
        )
        self.shadow_latency = Histogram(
            "modelyard_shadow_request_latency_seconds",
            "Latency of the requests mirrored to a shadow version that it answered ok (users' "
            "requests: modelyard_request_latency_seconds)",
            labels,
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "modelyard_fallbacks",
            "Requests whose version could not be loaded, answered by another version of the plan",
            ["endpoint", "version", "answered_by"],
            registry=self.registry,
        )
        # OpenAI batches (/v1/batches): what this server's batch worker does
        self.batch_lines = Counter(
            "modelyard_openai_batch_lines",
            "Lines of OpenAI batches answered and committed by this server, by tenant and "
            "outcome (completed: a 2xx answer; failed: any other)",
            ["tenant", "outcome"],
            registry=self.registry,
        )
        self.batches_ended = Counter(
            "modelyard_openai_batches_ended",
            "OpenAI batches this server ended, by tenant and status (completed, failed, "
            "expired, cancelled)",
            ["tenant", "status"],
            registry=self.registry,
        )
        self.batches_running = Gauge(
            "modelyard_openai_batches_running",
            "OpenAI batches this server runs now (at most --max-running-batches)",
            registry=self.registry,
        )
        self.batches_unfinished = Gauge(
            "modelyard_openai_batches_unfinished",
            "OpenAI batches of every tenant not finished yet in the store, by status "
            "(validating, in_progress, cancelling, finalizing), as this server last looked",
            ["status"],
            registry=self.registry,
        )
        for status in ACTIVE_BATCH_STATES:  # 0 until a look says otherwise: always a series
            self.batches_unfinished.labels(status).set(0)
        self.adapter = {
            event: Counter(f"modelyard_adapter_{name}", help_, ["version"], registry=self.registry)
            for event, name, help_ in (
                ("hit", "cache_hits", "Requests whose adapter was already loaded"),
                ("miss", "cache_misses", "Requests whose adapter was not loaded"),
                ("load", "loads", "Adapters loaded"),
                ("eviction", "evictions", "Adapters evicted (least recently used)"),
                ("load_failure", "load_failures", "Adapters that failed to load"),
            )
        }

    # EngineObserver: the engine reports adapter cache events and batches here.
    def watch_shared_limits(self, up: Callable[[], bool]) -> None:
        """``modelyard_limits_shared_up``: whether the limits replicas share reach Redis
        (only on a server with ``--redis-url``)."""
        gauge = Gauge(
            "modelyard_limits_shared_up",
            "1 while the rate limits shared by replicas (--redis-url) reach Redis, 0 while "
            "it is down",
            registry=self.registry,
        )
        gauge.set_function(lambda: float(up()))

    def watch_residency(self, loaded: Callable[[], list[str]]) -> None:
        """``modelyard_adapter_resident{version}``: 1 for each version whose adapter the
        engine holds now, read at scrape time (as many series as the cache has slots)."""
        self.registry.register(_Residency(loaded))

    def spent(self, key: ApiKey, endpoint: str, version: ModelVersion, cost: float) -> None:
        """A request's cost (``BudgetGuard``'s observer)."""
        self.spend.labels(key.tenant, key.id, endpoint, version.ref).inc(cost)

    def adapter_event(self, event: AdapterEvent, version: str) -> None:
        self.adapter[event].labels(version).inc()

    def batch_ran(self, size: int) -> None:
        self.batch_size.observe(size)


class _Residency(Collector):
    def __init__(self, loaded: Callable[[], list[str]]) -> None:
        self._loaded = loaded

    def collect(self) -> Iterator[Metric]:
        resident = GaugeMetricFamily(
            "modelyard_adapter_resident",
            "1 for each version whose adapter is loaded on this server now",
            labels=["version"],
        )
        for ref in self._loaded():
            resident.add_metric([ref], 1.0)
        if resident.samples:  # no family without a sample (an engine with no adapter cache)
            yield resident


class _Gpus(Collector):
    """Per GPU (its NVML index and name): memory used and total, and utilization."""

    def __init__(self, gpus: Callable[[], list[GpuReading]]) -> None:
        self._gpus = gpus

    def collect(self) -> Iterator[Metric]:
        labels = ["gpu", "name"]
        used = GaugeMetricFamily(
            "modelyard_gpu_memory_used_bytes", "GPU memory in use (NVML)", labels=labels
        )
        total = GaugeMetricFamily(
            "modelyard_gpu_memory_total_bytes", "GPU memory on the device (NVML)", labels=labels
        )
        busy = GaugeMetricFamily(
            "modelyard_gpu_utilization_ratio",
            "Share of the last sample period a kernel ran on the GPU, 0 to 1 (NVML)",
            labels=labels,
        )
        for gpu in self._gpus():
            key = [str(gpu.index), gpu.name]
            used.add_metric(key, float(gpu.memory_used_bytes))
            total.add_metric(key, float(gpu.memory_total_bytes))
            if gpu.utilization is not None:  # NVML reports none on a MIG instance
                busy.add_metric(key, gpu.utilization)
        if used.samples:
            yield from (used, total, busy) if busy.samples else (used, total)


__all__ = ["Metrics"]
