"""Waiting for the engine: a whole generation, or server-sent events as it goes.

Both wait without holding a thread, end the request at the request timeout
(504 before the first token, an error event after it), and hand a request
whose version could not be loaded to another version of the plan
(``DataPlane.fall_back``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator
from typing import Any, Protocol, TypeVar, cast

from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from modelyard.errors import EngineError, ModelyardError
from modelyard.serving._http_errors import error_of
from modelyard.serving._plane import DataPlane, Submitted
from modelyard.serving._tools import parse_calls, streamable
from modelyard.serving._types import ClientGone, Generation, StreamEvent, TokenLogprob
from modelyard.serving._wire_answers import chat_logprobs, completion_logprobs, usage


async def wait_whole(plane: DataPlane, sub: Submitted) -> tuple[Submitted, Generation]:
    """The whole generation of a submitted request, recorded; waits without holding a thread.

    A version that could not be loaded hands the request to another version of the
    plan (``DataPlane.fall_back``); the returned ``Submitted`` is the one that answered.
    """
    while True:
        try:
            async with asyncio.timeout(sub.remaining()):
                async for event in sub.stream:
                    if event.generation is not None:
                        plane.finish(sub, event.generation)
                        return sub, event.generation
        except TimeoutError:
            raise plane.timed_out(sub) from None
        except ModelyardError as exc:
            other = await run_in_threadpool(plane.fall_back, sub, exc)
            if other is not None:
                sub = other
                continue
            plane.finish(sub, None, exc=exc)
            raise
        raise EngineError("the engine ended a stream without a result")  # pragma: no cover


async def wait_all(
    plane: DataPlane, subs: list[Submitted], receive: Receive
) -> list[tuple[Submitted, Generation]]:
    """Every choice's whole answer (``wait_whole``). When one fails, the others are stopped
    and its error is raised; when the client leaves first (``receive`` says
    ``http.disconnect``: its SDK timed out, say, and may be retrying), every choice is
    stopped and recorded ``cancelled``, as a stream is, and ``ClientGone`` is raised: no
    answer nobody reads is generated to its end and charged."""
    tasks = [asyncio.ensure_future(wait_whole(plane, sub)) for sub in subs]
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        waiting: set[asyncio.Future[Any]] = set(tasks)
        while waiting and not gone.done():
            done, waiting = await asyncio.wait(
                waiting | {gone}, return_when=asyncio.FIRST_COMPLETED
            )
            waiting.discard(gone)
            if any(t.exception() is not None for t in done if t is not gone):
                break
    finally:
        left = gone.done() and not gone.cancelled()
        gone.cancel()
        for task, sub in zip(tasks, subs, strict=True):
            if not task.done():
                task.cancel()
                abandon(plane, sub)
    # every failure read (asyncio logs one never read); the first one is the answer
    finished = [t for t in tasks if t.done() and not t.cancelled()]
    errors = [e for t in finished if (e := t.exception()) is not None]
    if errors:
        raise errors[0]
    if left and len(finished) < len(tasks):
        raise ClientGone
    return [task.result() for task in tasks]


async def _disconnected(receive: Receive) -> None:
    """Returns when the client has closed its connection (the body was read before)."""
    try:
        while (await receive())["type"] != "http.disconnect":
            pass
    except Exception:  # a server that cannot say: the answer is awaited as before
        await asyncio.Future()


class Formatter(Protocol):
    """How one stream's events are written (``Chunks``; the Responses API's events)."""

    def rebound(self, sub: Submitted) -> Formatter:
        """The same stream's events, now answered by ``sub`` (a fallback version)."""
        ...

    def opening(self) -> list[str]:
        """The events before the first text."""
        ...

    def text(self, text: str, logprobs: tuple[TokenLogprob, ...] = ()) -> str:
        """The event of one new piece of text (with its tokens' log probabilities, when the
        request asked for them)."""
        ...

    def closing(self, gen: Generation) -> list[str]:
        """The events after the last text."""
        ...

    def error(self, exc: ModelyardError) -> str:
        """The event(s) of a failure mid-stream, the last thing sent."""
        ...


class Chunks:
    """OpenAI's streaming chunks for one request: chat or text completion."""

    def __init__(
        self, chat: bool, sub: Submitted, model: str, include_usage: bool, index: int = 0,
        *, echo: bool = False,
    ) -> None:  # fmt: skip
        """``echo`` (completions): the choice's first chunk is the prompt, as vLLM streams it."""
        self.chat, self.include_usage, self.model, self.index = chat, include_usage, model, index
        self.echo = echo and not chat
        self._prompt = sub.prompt  # the text of the version that answers (after a fallback)
        self._offset = 0  # characters of text sent (a completion's ``text_offset``)
        self.created = int(time.time())
        self._head: dict[str, Any] = {
            "id": sub.record_id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": self.created,
            "model": model,
        }
        if chat:
            self._head["system_fingerprint"] = sub.version.ref

    def rebound(self, sub: Submitted) -> Chunks:
        """The same stream's chunks, now answered by ``sub`` (a fallback version)."""
        return Chunks(self.chat, sub, self.model, self.include_usage, self.index, echo=self.echo)

    def share_id(self, first: Chunks) -> None:
        """Carry ``first``'s id: every chunk of one answer has one id, as OpenAI's (clients
        gather a stream by it), the first choice's record id, as in the whole answer."""
        self._head["id"] = first._head["id"]

    def _event(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
        data = {**self._head, "choices": choices}
        if self.include_usage:
            data["usage"] = usage
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    def _choice(
        self, text: str | None, finish: str | None, logprobs: tuple[TokenLogprob, ...] = ()
    ) -> dict[str, Any]:
        i = self.index
        if self.chat:
            delta = {} if text is None else {"content": text}
            scored = chat_logprobs(logprobs) if logprobs else None
            return {"index": i, "delta": delta, "logprobs": scored, "finish_reason": finish}
        scored = completion_logprobs(logprobs, self._offset) if logprobs else None
        self._offset += len(text or "")
        return {"index": i, "text": text or "", "logprobs": scored, "finish_reason": finish}

    def opening(self) -> list[str]:
        if not self.chat:
            return [self.text(self._prompt)] if self.echo and self._prompt else []
        role = {"index": self.index, "delta": {"role": "assistant", "content": ""}}
        return [self._event([{**role, "logprobs": None, "finish_reason": None}])]

    def text(self, text: str, logprobs: tuple[TokenLogprob, ...] = ()) -> str:
        return self._event([self._choice(text, None, logprobs)])

    def finished(self, gen: Generation) -> list[str]:
        """The events that end this choice (its ``finish_reason``)."""
        return [self._event([self._choice(None, gen.finish_reason)])]

    def tail(self, generations: list[Generation]) -> list[str]:
        """The events that end the stream: ``usage`` of every choice, when asked, then
        ``[DONE]``."""
        events = []
        if self.include_usage:
            totals = [usage(g) for g in generations]
            events.append(self._event([], {k: sum(t[k] for t in totals) for k in totals[0]}))
        return [*events, "data: [DONE]\n\n"]

    def closing(self, gen: Generation) -> list[str]:
        return [*self.finished(gen), *self.tail([gen])]

    @staticmethod
    def error(exc: ModelyardError) -> str:
        return f"data: {json.dumps(error_of(exc), ensure_ascii=False)}\n\n"


class ToolChunks(Chunks):
    """A chat stream with tools offered: text streams until a ``<tool_call>`` may begin
    (held back from there), and the calls the answer makes come at the end, as
    ``tool_calls`` deltas (each whole), with ``finish_reason`` ``tool_calls``."""

    def __init__(
        self,
        sub: Submitted,
        model: str,
        include_usage: bool,
        tools: list[dict[str, Any]],
        index: int = 0,
        single: bool = False,
    ) -> None:
        super().__init__(True, sub, model, include_usage, index)
        self.tools, self.single = tools, single  # single: parallel_tool_calls false
        self._text = ""
        self._sent = 0  # characters of _text sent as content

    def rebound(self, sub: Submitted) -> ToolChunks:
        return ToolChunks(sub, self.model, self.include_usage, self.tools, self.index, self.single)

    def text(self, text: str, logprobs: tuple[TokenLogprob, ...] = ()) -> str:
        self._text += text
        safe = streamable(self._text)  # up to where a call may begin
        if safe <= self._sent:
            return ""
        piece, self._sent = self._text[self._sent : safe], safe
        return self._event([self._choice(piece, None)])

    def closing(self, gen: Generation) -> list[str]:
        content, calls = parse_calls(gen.text, self.tools, single=self.single)
        events = []
        sent = self._text[: self._sent]
        rest = (content or "")[len(sent) :] if (content or "").startswith(sent) else ""
        if rest:
            events.append(self._event([self._choice(rest, None)]))
        for i, call in enumerate(calls):
            delta = {"tool_calls": [{"index": i, **call}]}
            events.append(self._event([{"index": self.index, "delta": delta, "logprobs": None,
                                        "finish_reason": None}]))  # fmt: skip
        finish = "tool_calls" if calls else gen.finish_reason
        events.append(self._event([self._choice(None, finish)]))
        return [*events, *self.tail([gen])]


class _EventStreamResponse(StreamingResponse):
    """Server-sent events whose generator is always closed, so its ``finally`` always runs
    (Starlette abandons the body iterator when the client disconnects)."""

    media_type = "text/event-stream"

    def __init__(self, body: AsyncGenerator[str, None], headers: dict[str, str]) -> None:
        super().__init__(body, headers=headers)
        self._body = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._body.aclose()


F = TypeVar("F", bound=Formatter)


async def _first_event(
    plane: DataPlane, sub: Submitted, chunks: F
) -> tuple[Submitted, F, StreamEvent]:
    """``sub``'s first event, through fallbacks; an error before it is raised (recorded)."""
    while True:
        try:
            async with asyncio.timeout(sub.remaining()):
                return sub, chunks, await anext(sub.stream)
        except TimeoutError:
            raise plane.timed_out(sub) from None
        except ModelyardError as exc:
            other = await run_in_threadpool(plane.fall_back, sub, exc)
            if other is None:
                plane.finish(sub, None, exc=exc)
                raise
            sub, chunks = other, cast(F, chunks.rebound(other))


async def event_stream(plane: DataPlane, sub: Submitted, chunks: Formatter) -> StreamingResponse:
    """Wait for the first event (an error before it is a normal error response), then stream.

    The record is written when the stream ends: ``ok``; ``error`` when the engine
    fails mid-stream (sent as an error event); ``cancelled`` when the client goes
    away, which also stops its generation; ``timeout`` when the request timeout
    passes (a 504 before the first token, an error event after it).
    """
    sub, chunks, first = await _first_event(plane, sub, chunks)

    async def events() -> AsyncGenerator[str, None]:
        recorded = False
        try:
            for opening in chunks.opening():
                yield opening
            event = first
            while True:
                if event.text or event.logprobs:
                    yield chunks.text(event.text, event.logprobs)
                if event.generation is not None:
                    break
                async with asyncio.timeout(sub.remaining()):
                    event = await anext(sub.stream)
            gen = event.generation
            for closing in chunks.closing(gen):
                yield closing
            plane.finish(sub, gen)
            recorded = True
        except TimeoutError:
            recorded = True
            yield chunks.error(plane.timed_out(sub))
        except ModelyardError as exc:
            plane.finish(sub, None, exc=exc)
            recorded = True
            yield chunks.error(exc)
        finally:
            if not recorded:  # the client went away: stop generating, record when it stops
                sub.stream.cancel()
                sub.stream.on_finish(
                    lambda gen, exc: plane.finish(sub, gen, exc=exc, cancelled=True)
                )

    headers = {
        "x-modelyard-version": sub.version.ref,
        "x-request-id": sub.record_id,  # the id of every chunk: the SDKs' _request_id
        "cache-control": "no-cache",
    }
    return _EventStreamResponse(events(), headers)


__all__ = ["Chunks", "Formatter", "event_stream", "wait_all", "wait_whole"]


def abandon(plane: DataPlane, sub: Submitted) -> None:
    """Stop a submitted request nobody will read (its client left, or a sibling choice
    failed); it is recorded ``cancelled`` when its generation stops."""
    sub.stream.cancel()
    sub.stream.on_finish(lambda gen, exc: plane.finish(sub, gen, exc=exc, cancelled=True))


async def event_streams(
    plane: DataPlane, subs: list[Submitted], chunks: list[Chunks]
) -> StreamingResponse:
    """Several choices (``n``, a list of prompts) streamed as one: each choice's chunks carry
    its ``index``, interleaved as they come; ``usage`` (their sum) and ``[DONE]`` end it.

    An error before every choice's first token is an ordinary error response (the other
    choices are cancelled); a failure later ends the stream with an error event. Each
    choice is recorded as a request of its own, as ``event_stream`` records one.
    """
    if len(subs) == 1:
        return await event_stream(plane, subs[0], chunks[0])
    started = await asyncio.gather(
        *(_first_event(plane, s, c) for s, c in zip(subs, chunks, strict=True)),
        return_exceptions=True,
    )
    failed = next((r for r in started if isinstance(r, BaseException)), None)
    if failed is not None:
        for r in started:
            if not isinstance(r, BaseException):
                abandon(plane, r[0])
        raise failed
    runs = [r for r in started if not isinstance(r, BaseException)]
    for _, c, _ in runs[1:]:
        c.share_id(runs[0][1])
    queue: asyncio.Queue[tuple[int, StreamEvent | TimeoutError | ModelyardError]]
    queue = asyncio.Queue()

    async def pump(i: int, sub: Submitted, first: StreamEvent) -> None:
        event = first
        try:
            while True:
                await queue.put((i, event))
                if event.generation is not None:
                    return
                async with asyncio.timeout(sub.remaining()):
                    event = await anext(sub.stream)
        except (TimeoutError, ModelyardError) as exc:
            await queue.put((i, exc))

    async def events() -> AsyncGenerator[str, None]:
        done: dict[int, Generation] = {}
        tasks = [asyncio.create_task(pump(i, s, e)) for i, (s, _, e) in enumerate(runs)]
        try:
            for _, c, _ in runs:
                for opening in c.opening():
                    yield opening
            while len(done) < len(runs):
                i, item = await queue.get()
                sub, c, _ = runs[i]
                if isinstance(item, TimeoutError):
                    done[i] = Generation("", 0, 0, "timeout")  # timed_out records it
                    yield c.error(plane.timed_out(sub))
                    return
                if isinstance(item, ModelyardError):
                    plane.finish(sub, None, exc=item)
                    done[i] = Generation("", 0, 0, "error")
                    yield c.error(item)
                    return
                if item.text or item.logprobs:
                    yield c.text(item.text, item.logprobs)
                if item.generation is not None:
                    plane.finish(sub, item.generation)
                    done[i] = item.generation
                    for event in c.finished(item.generation):
                        yield event
            for event in runs[0][1].tail([done[i] for i in range(len(runs))]):
                yield event
        finally:
            for task in tasks:
                task.cancel()
            for i, (sub, _, _) in enumerate(runs):
                if i not in done:  # the client went away, or another choice failed
                    abandon(plane, sub)

    headers = {
        "x-modelyard-version": runs[0][0].version.ref,
        "x-request-id": runs[0][0].record_id,  # the id of every chunk: the SDKs' _request_id
        "cache-control": "no-cache",
    }
    return _EventStreamResponse(events(), headers)
