"""Servers embedded in a process (tests, quickstart, serve's metrics listener) leave that
process's logging alone: uvicorn's logging config, applied at each start, closed every
handler of the process, and one of them (rouge-score's absl handler) closed the stream it
had kept, which in CI was pytest's capture: every later test of that worker failed."""

from __future__ import annotations

import logging
import sys

from modelyard.evaluation import rouge_l
from modelyard.serving import BackgroundServer, EchoEngine, create_app
from modelyard.store import Store


class _Recording(logging.Handler):
    closed = False

    def emit(self, record: logging.LogRecord) -> None:
        pass

    def close(self) -> None:
        self.closed = True
        super().close()


def test_an_embedded_server_closes_no_handler_of_the_process(store: Store) -> None:
    handler = _Recording()
    logger = logging.getLogger("modelyard.tests.embedded")
    logger.addHandler(handler)
    try:
        app = create_app(store, EchoEngine(), refresh_seconds=60, heartbeat_s=None)
        with BackgroundServer(app):
            pass
        assert not handler.closed and handler in logger.handlers
    finally:
        logger.removeHandler(handler)


def test_rouge_scores_leave_absl_writing_to_the_process_stderr() -> None:
    from absl import logging as absl_logging

    assert rouge_l(["the cat sat"], ["the cat sat"]) == 1.0
    assert absl_logging.get_absl_handler().python_handler.stream is sys.__stderr__
