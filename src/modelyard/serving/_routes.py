"""The routes: the OpenAI-compatible API (chat and text completions, models, feedback) and
the operator's ``/health``, ``/ready`` and ``/metrics``.

Each API route authenticates its key with the scope it needs (``infer`` or
``feedback``), hands the request to the data plane off the event loop, and
answers whole or as server-sent events (``stream``).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

import modelyard
from modelyard.serving._auth import FeedbackKeyDep, KeyDep
from modelyard.serving._plane import DataPlane
from modelyard.serving._sse import Chunks, event_stream, wait_whole
from modelyard.serving._wire import (
    ChatCompletionRequest,
    CompletionRequest,
    FeedbackRequest,
    include_usage,
    usage,
)


def add_routes(app: FastAPI, plane: DataPlane) -> None:
    """The API and operator routes of ``app``, served by ``plane``."""

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(
        body: ChatCompletionRequest, key: KeyDep, response: Response
    ) -> dict[str, Any] | StreamingResponse:
        messages = [m.model_dump() for m in body.messages]
        sub = await plane.enter(
            key,
            "chat.completions",
            body.model,
            body.user,
            body.sampling(plane.limits.max_tokens),
            lambda v: plane.engine.render_chat(v, messages),
        )
        chunks = Chunks(True, sub, body.model, include_usage(body))
        if body.stream:
            return await event_stream(plane, sub, chunks)
        sub, gen = await wait_whole(plane, sub)
        response.headers["x-modelyard-version"] = sub.version.ref
        return {
            "id": sub.record_id,
            "object": "chat.completion",
            "created": chunks.created,
            "model": body.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": gen.text},
                    "finish_reason": gen.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": usage(gen),
            "system_fingerprint": sub.version.ref,
        }

    @app.post("/v1/completions", response_model=None)
    async def completions(
        body: CompletionRequest, key: KeyDep, response: Response
    ) -> dict[str, Any] | StreamingResponse:
        sub = await plane.enter(
            key,
            "completions",
            body.model,
            body.user,
            body.sampling(plane.limits.max_tokens),
            lambda _v: body.prompt,
        )
        chunks = Chunks(False, sub, body.model, include_usage(body))
        if body.stream:
            return await event_stream(plane, sub, chunks)
        sub, gen = await wait_whole(plane, sub)
        response.headers["x-modelyard-version"] = sub.version.ref
        return {
            "id": sub.record_id,
            "object": "text_completion",
            "created": chunks.created,
            "model": body.model,
            "choices": [
                {"index": 0, "text": gen.text, "finish_reason": gen.finish_reason, "logprobs": None}
            ],
            "usage": usage(gen),
        }

    @app.post("/v1/feedback")
    async def feedback(body: FeedbackRequest, key: FeedbackKeyDep) -> dict[str, Any]:
        """A verdict on one request: ``score`` from -1 to 1, or ``thumbs`` up (1) / down (-1).

        Sent again for the same request, the latest verdict replaces the earlier one.
        """
        saved = await run_in_threadpool(
            plane.add_feedback, key, body.request_id, body.value, body.comment
        )
        plane.metrics.feedback.labels(key.tenant).inc()
        return {
            "id": saved.id,
            "object": "feedback",
            "request_id": saved.record_id,
            "score": saved.score,
            "comment": saved.comment,
            "created": int(saved.created_at.timestamp()),
            "updated": int(saved.updated_at.timestamp()),
        }

    @app.get("/v1/models")
    def list_models(key: KeyDep) -> Any:
        data = [
            {
                "id": ep.name,
                "object": "model",
                "created": int(ep.created_at.timestamp()),
                "owned_by": ep.tenant or "shared",
            }
            for ep in plane.router.visible_endpoints(key)
        ]
        return {"object": "list", "data": data}

    @app.get("/health")
    def health() -> Any:
        return {"status": "ok", "version": modelyard.__version__}

    @app.get("/ready")
    def ready() -> Any:
        if not plane.ready.is_set():
            return JSONResponse({"ready": False}, status_code=503)
        # Public: no names and no store details (those are in the server log and /metrics).
        if plane.store_probe.problem() is not None:  # asked at most every 1.5 s
            return JSONResponse({"ready": False, "store": "unreachable"}, status_code=503)
        return {"ready": True}

    @app.get("/metrics")
    def metrics() -> Any:
        return PlainTextResponse(
            generate_latest(plane.metrics.registry), media_type=CONTENT_TYPE_LATEST
        )


__all__ = ["add_routes"]
