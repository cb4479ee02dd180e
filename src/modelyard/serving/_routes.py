"""The routes: the OpenAI-compatible API (chat and text completions, models, feedback) and
the operator's ``/health``, ``/ready`` and ``/metrics``.

Each API route authenticates its key with the scope it needs (``infer`` or
``feedback``), hands the request to the data plane off the event loop, and
answers whole or as server-sent events (``stream``).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

import modelyard
from modelyard.errors import ConfigError, EndpointNotFound
from modelyard.serving._auth import FeedbackKeyDep, KeyDep
from modelyard.serving._plane import DataPlane, Submitted
from modelyard.serving._request_id import name_request
from modelyard.serving._sse import Chunks, ToolChunks, abandon, event_streams, wait_all
from modelyard.serving._tools import parse_calls
from modelyard.serving._types import Generation, SamplingParams, naming_cap, naming_prompt
from modelyard.serving._wire import (
    ChatCompletionRequest,
    CommonRequest,
    CompletionRequest,
    FeedbackRequest,
    include_usage,
)
from modelyard.serving._wire_answers import chat_logprobs, completion_logprobs, usage
from modelyard.store import ApiKey, Endpoint, ModelVersion

Render = Callable[[ModelVersion], str]  # a request's prompt for the version that answers


def add_routes(app: FastAPI, plane: DataPlane) -> None:
    """The API and operator routes of ``app``, served by ``plane``."""

    async def answer(
        key: ApiKey,
        route: str,
        body: CommonRequest,
        jobs: list[tuple[Render, SamplingParams]],
        request: Request,
    ) -> list[Submitted] | list[tuple[Submitted, Generation]]:
        """Every job's submission to stream (``stream``), or every job's answer: one request
        each (limits, records), run together. A prompt refusal names the route's prompt
        (``messages`` on the chat route)."""
        try:
            return await run(key, route, body, jobs, request)
        except ConfigError as exc:
            renamed = naming_prompt(exc, "messages" if route == "chat.completions" else "prompt")
            if getattr(body, "max_completion_tokens", None):  # the cap by the name it was sent
                renamed = naming_cap(renamed, "max_completion_tokens")
            if renamed is exc:
                raise
            raise renamed from exc

    async def run(
        key: ApiKey,
        route: str,
        body: CommonRequest,
        jobs: list[tuple[Render, SamplingParams]],
        request: Request,
    ) -> list[Submitted] | list[tuple[Submitted, Generation]]:
        whole = not body.stream
        subs: list[Submitted] = []
        try:
            for render, params in jobs:
                subs.append(
                    await plane.enter(
                        key,
                        route,
                        body.model,
                        body.user,
                        params,
                        render,
                        whole=whole,
                        named=functools.partial(name_request, request),
                    )
                )
        except BaseException:
            for sub in subs:  # a later choice refused (a limit, say): none is answered
                abandon(plane, sub)
            raise
        name_request(request, subs[0].record_id)  # a failure from here names its record
        if body.stream:  # an error before the first token is an ordinary response too
            return subs
        return await wait_all(plane, subs, request.receive)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(
        body: ChatCompletionRequest, key: KeyDep, response: Response, request: Request
    ) -> dict[str, Any] | StreamingResponse:
        messages = body.rendered_messages()
        tools = body.offered_tools()
        single = body.parallel_tool_calls is False  # at most one call, as OpenAI makes

        def render(v: ModelVersion) -> str:
            return plane.engine.render_chat(v, messages, tools)

        params = body.choice_params(plane.limits.max_tokens)
        jobs: list[tuple[Render, SamplingParams]] = [(render, p) for p in params]
        answered = await answer(key, "chat.completions", body, jobs, request)
        if body.stream:
            subs = [a for a in answered if isinstance(a, Submitted)]
            chunks: list[Chunks] = [
                ToolChunks(sub, body.model, include_usage(body), tools, i, single)
                if tools
                else Chunks(True, sub, body.model, include_usage(body), i)
                for i, sub in enumerate(subs)
            ]
            return await event_streams(plane, subs, chunks)
        answered = [a for a in answered if not isinstance(a, Submitted)]
        first = answered[0][0]
        response.headers["x-modelyard-version"] = first.version.ref
        response.headers["x-request-id"] = first.record_id  # the SDKs' _request_id
        return {
            "id": first.record_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.model,
            "choices": [_chat_choice(i, gen, tools, single) for i, (_, gen) in enumerate(answered)],
            "usage": summed_usage([gen for _, gen in answered]),
            "system_fingerprint": first.version.ref,
        }

    def fixed(prompt: str | tuple[int, ...]) -> Render:
        """A completion's render: its prompt, whatever the version (token ids: of the
        version's tokenizer, with their text)."""
        if isinstance(prompt, str):
            return lambda _version: prompt
        return lambda version: plane.engine.token_prompt(version, prompt)

    @app.post("/v1/completions", response_model=None)
    async def completions(
        body: CompletionRequest, key: KeyDep, response: Response, request: Request
    ) -> dict[str, Any] | StreamingResponse:
        params = body.choice_params(plane.limits.max_tokens)
        jobs = [(fixed(prompt), p) for prompt in body.prompts for p in params]
        answered = await answer(key, "completions", body, jobs, request)
        if body.stream:
            subs = [a for a in answered if isinstance(a, Submitted)]
            chunks = [
                Chunks(False, sub, body.model, include_usage(body), i, echo=body.echo is True)
                for i, sub in enumerate(subs)
            ]
            return await event_streams(plane, subs, chunks)
        answered = [a for a in answered if not isinstance(a, Submitted)]
        first = answered[0][0]
        response.headers["x-modelyard-version"] = first.version.ref
        response.headers["x-request-id"] = first.record_id  # the SDKs' _request_id
        return {
            "id": first.record_id,
            "object": "text_completion",
            "created": int(time.time()),
            "model": body.model,
            "choices": [
                {
                    "index": i,
                    # echo: the prompt (the text of token ids) before the answer
                    "text": sub.prompt + gen.text if body.echo else gen.text,
                    "finish_reason": gen.finish_reason,
                    "logprobs": completion_logprobs(
                        None if gen.logprobs is None else (gen.prompt_logprobs or ()) + gen.logprobs
                    ),
                }
                for i, (sub, gen) in enumerate(answered)
            ],
            "usage": summed_usage([gen for _, gen in answered]),
        }

    @app.post("/v1/feedback")
    async def feedback(body: FeedbackRequest, key: FeedbackKeyDep) -> dict[str, Any]:
        """A verdict on one request: ``score`` from -1 to 1, or ``thumbs`` up (1) / down (-1),
        and optionally the ``label``: the answer (or class) the request should have had.

        Sent again for the same request, the latest verdict replaces the earlier one. The
        reply's ``counted`` says whether the score counts in the endpoint's feedback means:
        false for a correction of a request that got no answer (a 409 without its label),
        whose label is kept for training and whose score rates no answer.
        """
        saved = await run_in_threadpool(
            plane.add_feedback, key, body.request_id, body.value, body.comment, body.label
        )
        plane.metrics.feedback.labels(key.tenant).inc()
        return {
            "id": saved.id,
            "object": "feedback",
            "request_id": saved.record_id,
            "score": saved.score,
            "comment": saved.comment,
            "label": saved.label,
            "counted": saved.counted,
            "created": int(saved.created_at.timestamp()),
            "updated": int(saved.updated_at.timestamp()),
        }

    @app.get("/v1/models")
    def list_models(key: KeyDep) -> Any:
        return {
            "object": "list",
            "data": [_model(ep) for ep in plane.router.visible_endpoints(key)],
        }

    @app.get("/v1/models/{model_id:path}")
    def retrieve_model(model_id: str, key: KeyDep) -> Any:
        """One endpoint the key may call; any other name (another tenant's included) is the
        same 404."""
        for ep in plane.router.visible_endpoints(key):
            if ep.name == model_id:
                return _model(ep)
        raise EndpointNotFound(
            f"the model {model_id!r} does not exist or you do not have access to it",
            hint="List the models your key can use with GET /v1/models.",
        )

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
        if plane.engine.problem() is not None:  # a vLLM server starting again after it died
            return JSONResponse({"ready": False, "engine": "not ready"}, status_code=503)
        return {"ready": True}

    @app.get("/metrics")
    def metrics() -> Any:
        return PlainTextResponse(
            generate_latest(plane.metrics.registry), media_type=CONTENT_TYPE_LATEST
        )


def _chat_choice(
    i: int, gen: Generation, tools: list[dict[str, Any]], single: bool = False
) -> dict[str, Any]:
    """One choice of a chat answer; with tools offered, the calls it makes are parsed out
    (``single``: only the first, ``parallel_tool_calls: false``)."""
    content: str | None = gen.text
    message: dict[str, Any] = {"role": "assistant", "content": content}
    finish = gen.finish_reason
    if tools:
        content, calls = parse_calls(gen.text, tools, single=single)
        message = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = calls
            finish = "tool_calls"
    return {
        "index": i,
        "message": message,
        "finish_reason": finish,
        "logprobs": chat_logprobs(gen.logprobs),
    }


def _model(ep: Endpoint) -> dict[str, Any]:
    return {
        "id": ep.name,
        "object": "model",
        "created": int(ep.created_at.timestamp()),
        "owned_by": ep.tenant or "shared",
    }


def summed_usage(generations: list[Generation]) -> dict[str, int]:
    """The ``usage`` of several answers of one request."""
    totals = [usage(g) for g in generations]
    return {k: sum(t[k] for t in totals) for k in totals[0]}


__all__ = ["add_routes"]
