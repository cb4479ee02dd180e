"""How a request ended, kept: its Prometheus metrics and its inference record.

``Recorder`` is the data plane's one place where a request's outcome is named
(``ok``, ``refused`` for a client's mistake, ``error``, ``cancelled``,
``timeout``), counted and handed to the ``RecordWriter`` (written off the
response path, with its drift features from the raw text and the tenant's
storage policy applied to what is stored). It remembers the last records it
handed over, so feedback on a request answered moments ago can wait for its
record instead of a 404.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

from modelyard.errors import ModelyardError, status_of
from modelyard.monitoring import (
    RecordWriter,
    apply_storage_policy,
    record_features,
    started_record,
)
from modelyard.serving._health import LoadHealth, load_failure_of
from modelyard.serving._metrics import Metrics
from modelyard.serving._tools import answer_checks
from modelyard.serving._types import Generation, Origin, SamplingParams
from modelyard.store import (
    ApiKey,
    ModelVersion,
    NewInferenceRecord,
    Tenant,
    answered_ok,
    user_facing,
)

T = TypeVar("T")
_RECENT_RECORDS = 10_000


class Recorder:
    """Metrics and inference records of the requests of one data plane."""

    def __init__(
        self,
        writer: RecordWriter,
        metrics: Metrics,
        health: LoadHealth,
        tenant: Callable[[str], Tenant],
    ) -> None:
        self.writer, self.metrics, self.health, self._tenant = writer, metrics, health, tenant
        # Records handed to the writer, not necessarily written yet (id -> tenant id).
        self._recent: OrderedDict[str, int] = OrderedDict()
        self._recent_lock = threading.Lock()

    def handed_over(self, record_id: str, tenant_id: int) -> bool:
        """Whether the record ``record_id`` of tenant ``tenant_id`` was handed to the writer
        lately (it may not be written yet)."""
        with self._recent_lock:
            return self._recent.get(record_id) == tenant_id

    def started(
        self,
        record_id: str,
        key: ApiKey,
        route: str,
        endpoint: str,
        version: ModelVersion,
        prompt: str,
        origin: Origin | None = None,
    ) -> None:
        """Hand the writer the ``running`` record of a request admitted (``_journal``)."""
        policy = self._tenant(key.tenant).storage_policy
        origin = origin or Origin()
        self.writer.started(
            started_record(
                record_id,
                endpoint=endpoint,
                route=route,
                tenant_id=key.tenant_id,
                api_key_id=key.id,
                version_id=version.id,
                prompt=apply_storage_policy(prompt, policy),
                source=origin.source,
                job_id=origin.job_id,
            )
        )

    def record(
        self,
        record_id: str,
        key: ApiKey,
        route: str,
        endpoint: str,
        version: ModelVersion | None,
        prompt: str | None,
        gen: Generation | None,
        started: float,
        *,
        exc: ModelyardError | None = None,
        cancelled: bool = False,
        timed_out: bool = False,
        shadow: bool = False,
        fallback_from: ModelVersion | None = None,
        params: SamplingParams | None = None,
        origin: Origin | None = None,
    ) -> None:
        """Count a request's end and hand its record to the writer (``started``: the
        ``time.perf_counter()`` of its start)."""
        origin = origin or Origin()
        latency_ms = (time.perf_counter() - started) * 1000
        tool_calls, format_ok = (
            answer_checks(params, gen.text)
            if params is not None and gen is not None
            else (None, None)
        )
        policy = self._tenant(key.tenant).storage_policy
        status = 200 if exc is None else status_of(exc).http_status
        if timed_out:
            outcome = "timeout"
        elif cancelled or (gen is not None and gen.finish_reason == "cancelled"):
            outcome = "cancelled"
        else:
            # a client's mistake (4xx) is ``refused``: it says nothing of the version
            outcome = "ok" if exc is None else "error" if status >= 500 else "refused"
        version_ref = version.ref if version else ""
        labels = (endpoint if version else "", version_ref, key.tenant)
        if exc is not None and version is not None and load_failure_of(exc, version):
            self.health.failed(version.ref, exc.message)
        # a shadow copy is no user's: its own families, so it moves none of the endpoint's
        # (alert rules and dashboards read those per endpoint), as the store's numbers
        users = user_facing(shadow)
        (self.metrics.requests if users else self.metrics.shadow).labels(*labels, outcome).inc()
        if fallback_from is not None:
            self.metrics.fallbacks.labels(endpoint, fallback_from.ref, version_ref).inc()
        if answered_ok(outcome):  # latency is that of the requests answered ok, as the
            # store's percentiles: a burst of fast refusals would pull the p95 down
            timed = self.metrics.latency if users else self.metrics.shadow_latency
            timed.labels(*labels).observe(latency_ms / 1000)
        if gen is not None and users:
            self.metrics.tokens.labels(*labels, "prompt").inc(gen.prompt_tokens)
            self.metrics.tokens.labels(*labels, "completion").inc(gen.completion_tokens)
            if gen.ttft_ms is not None and answered_ok(outcome):
                self.metrics.ttft.labels(*labels).observe(gen.ttft_ms / 1000)
        self.writer.submit(
            NewInferenceRecord(
                id=record_id,
                endpoint_name=endpoint,
                route=route,
                latency_ms=latency_ms,
                status=outcome,
                http_status=status,
                tenant_id=key.tenant_id,
                api_key_id=key.id,
                version_id=version.id if version else None,
                prompt=apply_storage_policy(prompt, policy),
                response=apply_storage_policy(gen.text if gen else None, policy),
                prompt_tokens=gen.prompt_tokens if gen else 0,
                completion_tokens=gen.completion_tokens if gen else 0,
                ttft_ms=gen.ttft_ms if gen else None,
                error=exc.one_line() if exc else None,
                shadow=shadow,
                fallback_from_id=fallback_from.id if fallback_from else None,
                tool_calls=tool_calls,
                format_ok=format_ok,
                source=origin.source,
                job_id=origin.job_id,
            ),
            # Drift features come from the raw text, before the storage policy above.
            record_features(
                prompt,
                gen.text if gen else None,
                unknown_tokens=_extra(gen, "unknown_tokens", int),
                prompt_tokens=gen.prompt_tokens if gen else 0,
                cache_hit=_extra(gen, "adapter_cache_hit", bool),
            ),
            prompt,  # embedded by a writer that has an embedder (semantic drift); not stored
        )
        if key.tenant_id is not None:
            with self._recent_lock:
                self._recent[record_id] = key.tenant_id
                while len(self._recent) > _RECENT_RECORDS:
                    self._recent.popitem(last=False)


def _extra(gen: Generation | None, name: str, kind: type[T]) -> T | None:
    """What the engine said of a request in ``Generation.extra`` (adapter cache hit, unknown
    prompt tokens), when it says so."""
    value = gen.extra.get(name) if gen is not None else None
    return value if isinstance(value, kind) else None


__all__ = ["Recorder"]
