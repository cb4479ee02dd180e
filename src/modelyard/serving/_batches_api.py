"""OpenAI's Batch API: ``/v1/batches`` (create, retrieve, list, cancel).

A batch belongs to the tenant of the key that created it and runs as that key
(``_batch_runner``); every route needs the ``infer`` scope, and another tenant's
batch id is the same 404 as an id that never existed. A batch is created
``validating``; its input file is checked when a server's worker takes it up, as
OpenAI does, and a file with problems ends the batch ``failed`` with each
problem and its line in ``errors``. Its ``model`` is the model its lines name, once they
are checked (``_batch_input``: null while ``validating``, and when they name several).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from modelyard.errors import ConfigError, NotFound
from modelyard.serving._auth import KeyDep
from modelyard.serving._batch_runner import COMPLETION_WINDOWS, BatchWorker
from modelyard.serving._file_expiry import expiry_seconds
from modelyard.serving._files_api import page
from modelyard.store import ApiKey, StoredBatch

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/responses")
MAX_METADATA = 16  # OpenAI's metadata: 16 pairs, keys of 64 characters, values of 512
_TIMES = (
    "in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled",
)  # fmt: skip


class CreateBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None
    output_expires_after: dict[str, Any] | None = None


def _stamp(when: datetime | None) -> int | None:
    return None if when is None else int(when.timestamp())


def usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    """OpenAI's batch ``usage``: the tokens of the batch's requests."""
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def batch_object(b: StoredBatch) -> dict[str, Any]:
    """OpenAI's ``batch`` object."""
    shown: dict[str, Any] = {
        "id": b.id,
        "object": "batch",
        "endpoint": b.endpoint,
        "model": b.model,
        "errors": None if b.errors is None else {"object": "list", "data": list(b.errors)},
        "input_file_id": b.input_file_id,
        "completion_window": b.completion_window,
        "status": b.status,
        "output_file_id": b.output_file_id,
        "error_file_id": b.error_file_id,
        "created_at": _stamp(b.created_at),
        "expires_at": _stamp(b.expires_at),
        "request_counts": {"total": b.total, "completed": b.completed, "failed": b.failed},
        "usage": None if b.usage is None else usage(*b.usage),
        "metadata": None if b.metadata is None else dict(b.metadata),
    }
    for step in _TIMES:
        shown[f"{step}_at"] = _stamp(b.times.get(step))
    return shown


def check_metadata(metadata: dict[str, str] | None) -> None:
    if metadata is None:
        return
    if len(metadata) > MAX_METADATA:
        raise ConfigError(
            f"metadata has {len(metadata)} pairs; at most {MAX_METADATA}", param="metadata"
        )
    for k, v in metadata.items():
        if len(k) > 64 or len(v) > 512:
            raise ConfigError(
                f"metadata {k[:64]!r}: keys are at most 64 characters, values 512",
                param="metadata",
            )


def add_batch_routes(app: FastAPI, worker: BatchWorker) -> None:
    """The Batch API of ``app``, run by ``worker``."""
    store = worker.store

    @app.post("/v1/batches")
    async def create_batch(body: CreateBatch, key: KeyDep) -> dict[str, Any]:
        """A batch of the input file's requests, ``validating`` until a worker checks it;
        making it takes one of the key's requests/min (each line takes its own)."""
        await worker.plane.admit_call(key)
        made = await run_in_threadpool(create, body, key)
        worker.wake()
        return batch_object(made)

    def create(body: CreateBatch, key: ApiKey) -> StoredBatch:
        if body.endpoint not in ENDPOINTS:
            raise ConfigError(
                f"endpoint {body.endpoint[:60]!r} is not one a batch runs: use "
                f"{', '.join(ENDPOINTS)}",
                param="endpoint",
            )
        if body.completion_window not in COMPLETION_WINDOWS:
            raise ConfigError(
                f"completion_window {body.completion_window[:20]!r} is not supported: use 24h",
                param="completion_window",
            )
        check_metadata(body.metadata)
        lifetime = expiry_seconds(body.output_expires_after, "output_expires_after")
        try:
            source = store.get_file(key.tenant, body.input_file_id)
        except NotFound as exc:
            raise NotFound(exc.message, hint=exc.hint, param="input_file_id") from exc
        if source.purpose != "batch":
            raise ConfigError(
                f"file {source.id} has purpose {source.purpose!r}: a batch's input is a file "
                "uploaded with purpose=batch",
                param="input_file_id",
            )
        return store.create_batch(
            key.tenant, api_key_id=key.id, endpoint=body.endpoint,
            input_file_id=source.id, completion_window=body.completion_window,
            window=COMPLETION_WINDOWS[body.completion_window], metadata=body.metadata,
            max_unfinished=worker.settings.max_per_tenant, output_expires_s=lifetime,
        )  # fmt: skip

    @app.get("/v1/batches/{batch_id}")
    def retrieve_batch(batch_id: str, key: KeyDep) -> dict[str, Any]:
        return batch_object(store.get_batch(key.tenant, batch_id))

    @app.get("/v1/batches")
    def list_batches(key: KeyDep, limit: int = 20, after: str | None = None) -> dict[str, Any]:
        """The tenant's batches, newest first, a page at a time."""
        if not 1 <= limit <= 100:
            raise ConfigError(f"limit is {limit}: it must be 1 to 100", param="limit")
        found, more = store.list_batches(key.tenant, limit=limit, after=after)
        return page([batch_object(b) for b in found], more)

    @app.post("/v1/batches/{batch_id}/cancel")
    async def cancel_batch(batch_id: str, key: KeyDep) -> dict[str, Any]:
        """Stop taking the batch's lines; it ends ``cancelled`` with what finished."""
        cancelled = await run_in_threadpool(store.cancel_batch, key.tenant, batch_id)
        worker.wake()
        return batch_object(cancelled)


__all__ = ["ENDPOINTS", "add_batch_routes", "batch_object"]
