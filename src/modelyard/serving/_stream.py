"""``TokenStream``: one request's events, from the engine's thread to a sync or asyncio consumer.

The engine's scheduler thread produces (``push``, ``finish``, ``fail``); one
consumer reads, either blocking (``for event in stream``, ``result()``) or from
an event loop (``async for event in stream``) without holding a thread while it
waits. The event loop is woken once per wait, not once per token: an asyncio
consumer gets, in one event, all the text that arrived since it last looked (so
a consumer that falls behind sends fewer, larger chunks; one that keeps up gets
each piece as it comes, with no delay). A stream made with ``whole=True`` is for
a consumer that wants only the answer (a client that did not ask to stream): the
loop is woken once, at the end. ``cancel()`` tells the engine the consumer has
gone away: the request's row stops at the next decoding step and finishes with
``finish_reason`` ``"cancelled"``; ``on_cancel`` lets an engine that waits in a
blocking call (an HTTP request) cut it short.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator

from modelyard.errors import ModelyardError
from modelyard.serving._types import Generation, StreamEvent, TokenLogprob

log = logging.getLogger(__name__)

FinishCallback = Callable[[Generation | None, ModelyardError | None], None]
CancelCallback = Callable[[], None]


class TokenStream:
    """The events of one request, in order; the last one carries the ``Generation``."""

    def __init__(self, *, whole: bool = False) -> None:
        self.whole = whole  # the consumer wants only the final event: wake it for that alone
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._items: deque[StreamEvent | ModelyardError] = deque()
        self._producer_done = False
        self._consumer_done = False
        self._cancelled = threading.Event()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._final: tuple[Generation | None, ModelyardError | None] | None = None
        self._callbacks: list[FinishCallback] = []
        self._on_cancel: list[CancelCallback] = []

    # -- producer side (the engine) ---------------------------------------------------------

    def push(self, text: str, logprobs: tuple[TokenLogprob, ...] = ()) -> None:
        """New text for the consumer, with the log probabilities of the tokens that made it
        when they were asked for (ignored once the stream is finished)."""
        if text or logprobs:
            self._put(StreamEvent(text, None, logprobs))

    def finish(
        self, generation: Generation, text: str = "", logprobs: tuple[TokenLogprob, ...] = ()
    ) -> None:
        """The last event: any remaining ``text`` (and its tokens' ``logprobs``) and the
        whole result."""
        self._put(StreamEvent(text, generation, logprobs))

    def fail(self, error: ModelyardError) -> None:
        """End the stream with ``error``, raised to the consumer when it gets there."""
        self._put(error)

    @property
    def done(self) -> bool:
        """True once the producer has finished or failed the stream."""
        with self._lock:
            return self._producer_done

    def on_finish(self, callback: FinishCallback) -> None:
        """Call ``callback(generation, error)`` once the stream ends (now, if it has).

        It runs on the producer's thread and must not block (a record writer's
        ``submit``, a metric).
        """
        with self._lock:
            final = self._final
            if final is None:
                self._callbacks.append(callback)
                return
        _call(callback, final)

    def _put(self, item: StreamEvent | ModelyardError) -> None:
        callbacks: list[FinishCallback] = []
        with self._lock:
            if self._producer_done:
                return
            self._items.append(item)
            if isinstance(item, ModelyardError):
                self._final = (None, item)
            elif item.generation is not None:
                self._final = (item.generation, None)
            if self._final is not None:
                self._producer_done = True
                callbacks, self._callbacks = self._callbacks, []
            self._arrived.notify_all()
            waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
            if self._final is not None or not self.whole:
                waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # the consumer's loop has closed
                loop.call_soon_threadsafe(_wake, future)
        final = self._final
        if final is not None:
            for callback in callbacks:
                _call(callback, final)

    # -- consumer side ------------------------------------------------------------------------

    def cancel(self) -> None:
        """The consumer has gone away: stop generating for it (idempotent)."""
        with self._lock:
            if self._cancelled.is_set():
                return
            self._cancelled.set()
            callbacks, self._on_cancel = self._on_cancel, []
        for callback in callbacks:
            _call_cancel(callback)

    def on_cancel(self, callback: CancelCallback) -> None:
        """Call ``callback()`` once when the consumer cancels (now, if it has), on the
        cancelling thread: it must not block (it may shut a socket to end a blocked read)."""
        with self._lock:
            if not self._cancelled.is_set():
                self._on_cancel.append(callback)
                return
        _call_cancel(callback)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def __iter__(self) -> Iterator[StreamEvent]:
        return self

    def __next__(self) -> StreamEvent:
        with self._arrived:
            while not self._items:
                if self._consumer_done:
                    raise StopIteration
                self._arrived.wait()
            return self._take()

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self

    async def __anext__(self) -> StreamEvent:
        while True:
            with self._lock:
                if self._items and (self._producer_done or not self.whole):
                    return self._take_arrived()
                if self._consumer_done:
                    raise StopAsyncIteration
                loop = asyncio.get_running_loop()
                future: asyncio.Future[None] = loop.create_future()
                self._waiters.append((loop, future))
            try:
                await future
            finally:
                with self._lock, contextlib.suppress(ValueError):
                    self._waiters.remove((loop, future))

    def _take(self) -> StreamEvent:
        """The next item, under the lock; an error is raised, the final event ends the stream."""
        item = self._items.popleft()
        if isinstance(item, ModelyardError):
            self._consumer_done = True
            raise item
        if item.generation is not None:
            self._consumer_done = True
        return item

    def _take_arrived(self) -> StreamEvent:
        """Every text event that arrived, as one (with the final one's result, if it came);
        an error after text waits for the next call, so the text goes out first."""
        item = self._take()
        if item.generation is not None:
            return item
        texts, logprobs = [item.text], list(item.logprobs)
        while self._items and not isinstance(self._items[0], ModelyardError):
            item = self._take()
            texts.append(item.text)
            logprobs.extend(item.logprobs)
            if item.generation is not None:
                return StreamEvent("".join(texts), item.generation, tuple(logprobs))
        return StreamEvent("".join(texts), None, tuple(logprobs)) if len(texts) > 1 else item

    def result(self) -> Generation:
        """Wait for the end and return the whole ``Generation`` (raises the stream's error).

        Reads the events not yet read; on a stream read to its end, the same answer again.
        """
        for event in self:
            if event.generation is not None:
                return event.generation
        generation, error = self._final or (None, None)
        if error is not None:
            raise error
        assert generation is not None  # the consumer saw the end, so the producer has finished
        return generation


def _call(callback: FinishCallback, final: tuple[Generation | None, ModelyardError | None]) -> None:
    try:
        callback(*final)
    except Exception:  # a callback's failure must not break the engine's thread
        log.exception("a stream's finish callback failed")


def _call_cancel(callback: CancelCallback) -> None:
    try:
        callback()
    except Exception:  # cancelling must not fail the consumer
        log.exception("a stream's cancel callback failed")


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def finished_stream(generation: Generation) -> TokenStream:
    """A stream holding one finished generation (engines that cannot stream token by token)."""
    stream = TokenStream()
    stream.push(generation.text)
    stream.finish(generation)
    return stream
