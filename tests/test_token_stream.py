"""TokenStream's hand-off from an engine's thread to an asyncio consumer: text batched per
wakeup, whole streams woken once, cancel callbacks."""

from __future__ import annotations

import asyncio
import threading

import pytest

from modelyard.errors import EngineError
from modelyard.serving import Generation, StreamEvent, TokenStream

DONE = Generation("a b c", 3, 3, "stop")


async def _read(stream: TokenStream) -> list[StreamEvent]:
    return [event async for event in stream]


def test_a_consumer_behind_gets_what_arrived_as_one_event() -> None:
    stream = TokenStream()
    for piece in ("a", " b", " c"):
        stream.push(piece)
    stream.finish(DONE)
    events = asyncio.run(_read(stream))
    assert [(e.text, e.generation) for e in events] == [("a b c", DONE)]


def test_a_consumer_that_keeps_up_gets_each_piece_as_it_comes() -> None:
    async def main() -> list[str]:
        stream = TokenStream()
        loop = asyncio.get_running_loop()
        seen: list[str] = []
        for piece in ("a", " b", " c"):
            # produced on another thread while the consumer waits: woken for each, at once
            loop.call_later(0.02, threading.Thread(target=stream.push, args=(piece,)).start)
            seen.append((await asyncio.wait_for(anext(stream), 5)).text)
        stream.finish(DONE)
        last = await anext(stream)
        assert last.generation == DONE and last.text == ""
        return seen

    assert asyncio.run(main()) == ["a", " b", " c"]


def test_text_before_an_error_goes_out_first() -> None:
    stream = TokenStream()
    stream.push("a")
    stream.push(" b")
    stream.fail(EngineError("broke"))

    async def main() -> None:
        assert (await anext(stream)).text == "a b"
        with pytest.raises(EngineError, match="broke"):
            await anext(stream)

    asyncio.run(main())


def test_a_whole_stream_wakes_its_consumer_once_at_the_end() -> None:
    async def main() -> None:
        stream = TokenStream(whole=True)
        reader = asyncio.create_task(_read(stream))
        await asyncio.sleep(0.01)
        pushing = threading.Thread(target=lambda: [stream.push(p) for p in ("a", " b", " c")])
        pushing.start()
        pushing.join()
        await asyncio.sleep(0.05)
        assert not reader.done()  # text alone does not wake it
        stream.finish(DONE)
        events = await asyncio.wait_for(reader, 5)
        assert [(e.text, e.generation) for e in events] == [("a b c", DONE)]

    asyncio.run(main())


def test_on_cancel_runs_once_when_the_consumer_cancels() -> None:
    stream = TokenStream()
    calls: list[str] = []
    stream.on_cancel(lambda: calls.append("early"))
    assert calls == []
    stream.cancel()
    stream.cancel()
    assert calls == ["early"] and stream.cancelled
    stream.on_cancel(lambda: calls.append("late"))  # registered after: runs at once
    assert calls == ["early", "late"]
