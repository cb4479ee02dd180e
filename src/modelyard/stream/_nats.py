"""A NATS JetStream consumer: the ``MessageSource`` of ``modelyard stream run --nats-url``.

Subjects and streams. ``--stream`` names the subject requests are published on
(a wildcard such as ``claims.>`` takes several); the JetStream stream that keeps
that subject is looked up by it, or created when none does (named after the
subject). The output and dead-letter subjects are looked up or created the same
way. ``--group`` is a durable pull consumer of the requests' stream, filtered to
the subject: every ``stream run`` of the group pulls from it, and JetStream hands
each message to one of them.

Delivery is JetStream's own: a pulled message stays its puller's until it is
acknowledged, or until the consumer's ack wait (``--claim-idle``) passes without
an acknowledgment or a sign of progress; then it is delivered again, to any
puller, with its delivery count one higher. ``keep`` sends that sign (``+WPI``)
for the messages in flight, so only a stopped or stalled consumer loses them.
The ack wait belongs to the group (the durable consumer), not to one process:
a consumer started with another ``--claim-idle`` is refused rather than changing
it under the others.

One answer per message: ``settle`` publishes the answer with the header
``Nats-Msg-Id`` set to the group and the message's stream sequence, then
acknowledges the request and waits for the server to confirm it. A consumer
killed between the two leaves the request unacknowledged: it is delivered again
after the ack wait and answered again, and the output stream drops that second
answer as a duplicate of the first (it remembers message ids for its duplicate
window, which must be at least ``--dedup-ttl``); the publish acknowledgment says
so, and the settlement counts as settled already.

Servers older than the 2.10 series' fixes of April 2024 (nats-io/nats-server#5305, #5338;
2.10.16 has both) sometimes hand out a message delivered again after a delivery that failed
(a pull that had gone) with a delivery count of 1: ``--max-attempts`` can then be passed.
Connecting to one logs a warning saying so.

Messages. A request's payload is the JSON body the Redis source reads from its
``body`` field; its headers are further fields. An answer's payload is a JSON
object of ``ANSWER_FIELDS`` (token counts as numbers, null for no value). A dead
letter's payload is the request's as it was sent, so it can be published again
once fixed, with the reason, the attempts, the message id and the request's own
headers as headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
import time
from collections.abc import Collection, Coroutine, Iterator, Sequence
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.js import api

from modelyard.errors import ConfigError, ModelyardError
from modelyard.redis_client import redacted
from modelyard.stream._messages import BODY
from modelyard.stream._redis import stream_job_id
from modelyard.stream._source import Delivery, Settlement

_T = TypeVar("_T")
log = logging.getLogger(__name__)
_CALL_S = 30.0  # the longest a call to NATS may take
_UNAVAILABLE_S = 15.0  # how long a JetStream answering 503 is asked again
_NUMBERS = ("prompt_tokens", "completion_tokens")
_STREAM_NAME = re.compile(r"[^A-Za-z0-9_-]")


@contextlib.contextmanager
def _nats_errors(url: str, doing: str) -> Iterator[None]:
    """NATS's failures while ``doing`` as one ModelyardError naming the server (translated
    once, here), its password left out: the line goes to a consumer's log."""
    url = redacted(url)
    try:
        yield
    except (ConfigError, ModelyardError):
        raise
    except TimeoutError as exc:  # before OSError, which it is; nats-py's and asyncio's too
        raise ModelyardError(
            f"NATS at {url} did not answer in time ({doing})",
            hint="Check the server's load and health; messages not answered yet stay "
            "unacknowledged and are answered after a restart.",
        ) from exc
    except (nats.errors.NoServersError, nats.errors.ConnectionClosedError, OSError) as exc:
        raise ModelyardError(
            f"cannot reach NATS at {url} ({doing}): {exc or type(exc).__name__}",
            hint="Check that it runs and --nats-url (MODELYARD_NATS_URL); messages not "
            "answered yet stay unacknowledged and are answered after a restart.",
        ) from exc
    except nats.errors.Error as exc:
        raise ModelyardError(
            f"NATS at {url} refused a JetStream request ({doing}): {str(exc) or type(exc).__name__}"
        ) from exc


def stream_name(subject: str) -> str:
    """The name of the JetStream stream made for ``subject`` when none keeps it."""
    return _STREAM_NAME.sub("_", subject.replace(".", "_").replace(">", "all").replace("*", "any"))


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether NATS delivers ``subject`` to a subscription on ``pattern`` (``*``: one
    token, ``>``: the rest)."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or token not in ("*", have[i]):
            return False
    return len(want) == len(have)


class _Loop:
    """An event loop on a thread of its own: nats-py is asyncio's, the consumer calls from
    worker threads."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="nats", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, _T], timeout_s: float = _CALL_S) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


class NatsStreamSource:
    """Durable consumer ``group`` of the JetStream stream keeping ``subject``; answers go
    to ``output`` and dead letters to ``dead_letters``. See the module's docstring."""

    def __init__(
        self,
        url: str,
        *,
        subject: str,
        group: str,
        output: str,
        dead_letters: str,
        claim_idle_s: float = 60.0,
        dedup_ttl_s: float = 3600.0,
        start_id: str = "0",
    ) -> None:
        for flag, name in (("--output-stream", output), ("--dead-letter-stream", dead_letters)):
            if not name or any(c in name for c in "*> \t"):
                raise ConfigError(
                    f"{flag} {name!r} is not a subject to publish to (no wildcards, no spaces)",
                    field=flag,
                )
            if subject_matches(subject, name):
                raise ConfigError(
                    f"{flag} {name!r} is one of the subjects --stream {subject!r} reads: the "
                    "consumer would read its own answers",
                    hint="Publish answers and dead letters outside the requests' subjects.",
                    field=flag,
                )
        if start_id not in ("0", "$"):
            raise ConfigError(
                f"--start-id {start_id!r} means nothing to NATS: give 0 (the stream's first "
                "message) or $ (only new ones)",
                field="--start-id",
            )
        if claim_idle_s <= 0:
            raise ConfigError(f"--claim-idle is {claim_idle_s:g} s; it must be above 0")
        self.url, self.subject, self.group = url, subject, group
        self.output, self.dead_letters = output, dead_letters
        self.claim_idle_s, self.dedup_ttl_s = claim_idle_s, dedup_ttl_s
        self.deliver_policy = api.DeliverPolicy.ALL if start_id == "0" else api.DeliverPolicy.NEW
        self.lost = 0  # JetStream redelivers what it keeps: nothing is counted here
        self.requests = ""  # the requests' stream, once open
        self._loop = _Loop()
        self._nc: Any = None
        self._js: Any = None
        self._sub: Any = None
        self._in_flight: dict[str, Any] = {}  # message id -> its nats Msg, until settled

    @classmethod
    def connect(cls, url: str, **kwargs: Any) -> NatsStreamSource:
        """A source on the NATS at ``url``: its streams and the group's consumer made when
        missing, checked when they exist."""
        source = cls(url, **kwargs)
        try:
            source.open()
        except BaseException:
            source.close()
            raise
        return source

    @property
    def job_id(self) -> str:
        return stream_job_id(self.subject, self.group)

    def _call(self, coro: Coroutine[Any, Any, _T], doing: str) -> _T:
        with _nats_errors(self.url, doing):
            return self._loop.run(coro)

    def open(self) -> None:
        self._call(self._open(), "connecting")

    async def _open(self) -> None:
        self._nc = await nats.connect(
            self.url, connect_timeout=5, max_reconnect_attempts=3, reconnect_time_wait=1,
            allow_reconnect=True, error_cb=_quiet, name=f"modelyard {self.job_id}",
        )  # fmt: skip
        self._js = self._nc.jetstream(timeout=10)
        warning = redelivery_count_warning(self.url, self._nc.connected_server_version)
        if warning:
            log.warning("%s", warning)
        try:
            await self._js.account_info()
        except (nats.js.errors.Error, nats.errors.NoRespondersError, TimeoutError) as exc:
            raise ConfigError(
                f"the NATS at {redacted(self.url)} has no JetStream ({exc or type(exc).__name__})",
                hint="Start nats-server with JetStream (-js, or jetstream {} in its "
                "configuration).",
            ) from exc
        self.requests = await self._stream_for(self.subject, window_s=0)
        for name in (self.output, self.dead_letters):
            await self._stream_for(name, window_s=self.dedup_ttl_s)
        await self._consumer()
        self._sub = await self._js.pull_subscribe_bind(durable=self.group, stream=self.requests)

    async def _stream_for(self, subject: str, window_s: float) -> str:
        """The stream keeping ``subject``, made when none does; one that keeps message ids
        for less than ``window_s`` is refused (a second answer would get through)."""
        try:
            name: str = await self._js.find_stream_name_by_subject(subject)
        except nats.js.errors.NotFoundError:
            name = stream_name(subject)
            await self._js.add_stream(
                name=name, subjects=[subject], duplicate_window=max(window_s, 120.0)
            )
            return name
        if window_s:
            kept = (await self._js.stream_info(name)).config.duplicate_window or 0.0
            if kept < window_s:
                raise ConfigError(
                    f"the stream {name!r} keeping {subject!r} remembers message ids for "
                    f"{kept:g} s, less than --dedup-ttl {window_s:g} s: a message answered "
                    "again after a consumer stopped could get a second answer",
                    hint=f"Raise its duplicate window (nats stream edit {name} "
                    f"--dupe-window {window_s:g}s), or lower --dedup-ttl to {kept:g}s.",
                    field="--dedup-ttl",
                )
        return name

    async def _consumer(self) -> None:
        """The group's durable consumer, made when missing; one made for another subject,
        another ack wait or another acknowledgment policy is refused."""
        try:
            info = await self._js.consumer_info(self.requests, self.group)
        except nats.js.errors.NotFoundError:
            config = api.ConsumerConfig(
                name=self.group, durable_name=self.group, filter_subject=self.subject,
                ack_policy=api.AckPolicy.EXPLICIT, ack_wait=self.claim_idle_s,
                max_deliver=-1, deliver_policy=self.deliver_policy,
            )  # fmt: skip
            await self._js.add_consumer(self.requests, config=config)
            return
        config = info.config
        if config.filter_subject not in (None, "", self.subject):
            raise ConfigError(
                f"the group {self.group!r} of stream {self.requests!r} reads "
                f"{config.filter_subject!r}, not {self.subject!r}",
                hint="Give another --group, or the group's own subject with --stream.",
                field="--group",
            )
        if config.ack_policy != api.AckPolicy.EXPLICIT:
            raise ConfigError(
                f"the group {self.group!r} acknowledges {config.ack_policy}, not each "
                "message explicitly",
                hint="Give a --group of stream run's own.",
                field="--group",
            )
        if abs((config.ack_wait or 0.0) - self.claim_idle_s) > 0.001:
            raise ConfigError(
                f"the group {self.group!r} takes messages back after {config.ack_wait:g} s, "
                f"not this consumer's --claim-idle {self.claim_idle_s:g} s",
                hint=f"Give --claim-idle {config.ack_wait:g}s: the group's consumers share it.",
                field="--claim-idle",
            )

    def fetch(self, limit: int, wait_s: float) -> list[Delivery]:
        msgs = self._call(self._fetch(limit, wait_s), "fetching messages")
        out = []
        for msg in msgs:
            meta = msg.metadata
            message_id = str(meta.sequence.stream)
            fields = {k: v.encode() for k, v in (msg.headers or {}).items()}
            fields[BODY] = bytes(msg.data)
            self._in_flight[message_id] = msg
            out.append(Delivery(message_id, fields, int(meta.num_delivered)))
        return out

    async def _fetch(self, limit: int, wait_s: float) -> list[Any]:
        """Up to ``limit`` messages. JetStream answers 503 while it starts, stops or
        elects a leader: asked again for up to ``_UNAVAILABLE_S`` (a server going away
        then shows as the lost connection it is), then the 503 is the error."""
        deadline = time.monotonic() + _UNAVAILABLE_S
        pause = 0.1
        while True:
            try:
                found: list[Any] = await self._sub.fetch(batch=limit, timeout=max(wait_s, 0.05))
                return found
            except TimeoutError:  # nats-py's, or asyncio's where it does not wrap it
                return []
            except nats.js.errors.ServiceUnavailableError as exc:
                if time.monotonic() + pause > deadline:
                    raise ModelyardError(
                        f"JetStream at {redacted(self.url)} was unavailable for "
                        f"{_UNAVAILABLE_S:g} s (fetching messages): {exc}",
                        hint="Check the server's health (nats-server's log, its JetStream "
                        "storage); messages not answered yet stay unacknowledged and are "
                        "answered after a restart.",
                    ) from exc
                log.info("JetStream at %s unavailable (503); asking again", redacted(self.url))
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)

    def keep(self, ids: Collection[str]) -> None:
        msgs = [self._in_flight[i] for i in ids if i in self._in_flight]
        if msgs:
            self._call(_all(m.in_progress() for m in msgs), "keeping messages in flight")

    def release(self, ids: Collection[str]) -> None:
        # a negative acknowledgment delayed by the ack wait: delivered again when an
        # unacknowledged message would have been, and no longer held here (another consumer
        # may be the one that settles it)
        msgs = [m for m in (self._in_flight.pop(i, None) for i in ids) if m is not None]
        if msgs:
            self._call(
                _all(m.nak(delay=self.claim_idle_s) for m in msgs), "leaving messages for a retry"
            )

    def settle(self, settlements: Sequence[Settlement]) -> list[bool]:
        if not settlements:
            return []
        published = self._call(_all(self._settle(s) for s in settlements), "settling messages")
        for s in settlements:
            self._in_flight.pop(s.delivery.id, None)
        return published

    async def _settle(self, s: Settlement) -> bool:
        """Publish ``s`` (deduplicated by its message id), then acknowledge its message."""
        payload, headers = _dead_letter(s) if s.dead else _answer(s)
        if self.dedup_ttl_s > 0:
            headers["Nats-Msg-Id"] = f"{self.requests}/{self.group}/{s.delivery.id}"
        target = self.dead_letters if s.dead else self.output
        ack = await self._js.publish(target, payload, headers=headers or None)
        msg = self._in_flight.get(s.delivery.id)
        if msg is not None:
            await msg.ack_sync(timeout=10)
        return not ack.duplicate

    def backlog(self) -> int:
        info = self._call(
            self._js.consumer_info(self.requests, self.group), "reading the group's backlog"
        )
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

    def close(self) -> None:
        """Let go of the connection (messages not settled are delivered again after the
        group's ack wait)."""
        if self._nc is not None:
            with contextlib.suppress(Exception):
                self._loop.run(self._nc.close(), timeout_s=10)
        self._loop.close()


def redelivery_count_warning(url: str, version: Any) -> str | None:
    """What to tell an operator whose NATS (a nats-py ``ServerVersion``) may count a message
    delivered again as delivered once; None when it counts right (2.10.16 and later) or
    says no version."""
    try:
        seen = (version.major, version.minor, version.patch)
    except ValueError:  # not a semantic version: nothing to say
        return None
    if seen >= (2, 10, 16) or seen == (0, 0, 0):
        return None
    return (
        f"the NATS at {redacted(url)} is nats-server {'.'.join(map(str, seen))}, which "
        "sometimes hands out a message delivered again with a delivery count of 1 "
        "(nats-io/nats-server#5305 and #5338, fixed in April 2024): a message may be tried "
        "more often than --max-attempts. Upgrade nats-server to 2.10.16 or later."
    )


async def _all(coros: Iterator[Coroutine[Any, Any, _T]]) -> list[_T]:
    return list(await asyncio.gather(*coros))


async def _quiet(exc: Exception) -> None:
    """nats-py's error callback: the failures that matter reach a call and are raised."""


def _answer(s: Settlement) -> tuple[bytes, dict[str, str]]:
    body: dict[str, Any] = {}
    for name, value in s.fields.items():
        text = value.decode() if isinstance(value, bytes) else value
        body[name] = int(text) if name in _NUMBERS and text else (text or None)
    return json.dumps(body).encode(), {}


def _dead_letter(s: Settlement) -> tuple[bytes, dict[str, str]]:
    """The request's payload as sent, and why it ended here as headers (with the request's
    own headers, but JetStream's ``Nats-`` ones, which would steer this publish)."""
    headers: dict[str, str] = {}
    payload = b""
    for name, value in s.fields.items():
        if name == BODY:
            payload = value if isinstance(value, bytes) else value.encode()
        elif not name.startswith("Nats-"):
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            headers[name] = " ".join(text.split())  # a header is one line
    return payload, headers


__all__ = ["NatsStreamSource", "stream_name", "subject_matches"]
