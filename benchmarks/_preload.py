"""Records already in the store before a benchmark measures (``serving.py --preload N``).

Issue 19 asks that writing records cost the same with a large records table as with an
empty one: what a server does per request must not grow with the table. ``preload``
writes N records as the record writer would (sealed, anchored, with their features),
in bulk through the store, spread over the past week on the benchmark's endpoints, so
that the loads then run against a table of that size.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from modelyard.monitoring import text_features
from modelyard.store import ModelVersion, NewInferenceRecord, Store

CHUNK = 5_000  # records per transaction (one seal, one records.anchored event each)


def preload(
    store: Store,
    tenant: str,
    versions: Sequence[ModelVersion],
    endpoints: Sequence[str],
    n: int,
) -> dict[str, Any]:
    """Write ``n`` sealed records of ``tenant`` with their features, round-robin over
    ``versions`` served by ``endpoints`` (chunks of ``CHUNK``, each sealed and anchored in
    its transaction); how many, and how long it took."""
    started = time.perf_counter()
    tenant_id = store.get_tenant(tenant).id
    feats = text_features("### Instruction:\nroute this ticket\n\n### Response:\n", "network")
    now = datetime.now(UTC)
    step = timedelta(days=7) / max(n, 1)
    written = 0
    while written < n:
        size = min(CHUNK, n - written)
        items = []
        for i in range(written, written + size):
            k = i % len(versions)
            record = NewInferenceRecord(
                id=f"cmpl-{uuid.uuid4().hex}",  # random ids, as the server's: random inserts
                endpoint_name=endpoints[k],
                route="completions",
                latency_ms=500.0 + i % 500,
                status="ok",
                http_status=200,
                tenant_id=tenant_id,
                version_id=versions[k].id,
                prompt="### Instruction:\nroute this ticket\n\n### Response:\n",
                response="network",
                prompt_tokens=12,
                completion_tokens=12,
                ttft_ms=20.0,
                created_at=now - (n - i) * step,
            )
            items.append((record, feats))
        written += store.add_monitored_records(items, seal=True)
    return {"records": written, "seconds": time.perf_counter() - started}
