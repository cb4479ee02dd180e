"""A batch's input file: OpenAI's JSONL of requests, checked and read a line at a time.

Each line is ``{"custom_id", "method": "POST", "url", "body"}``: ``custom_id`` a
text unique in the file, ``url`` the batch's endpoint, ``body`` the request as
that route takes it (its ``model`` an endpoint's name; ``stream`` is not
answered in a batch). Blank lines are skipped; lines are numbered from 1 as in
the file. ``check_input`` reads the whole file once when the batch starts (as
OpenAI validates it) and gives every problem with its line (the first
``MAX_ERRORS``); a file with any is not run. A file of more than ``max_lines``
requests is not read past the first one over (its problems beyond are not
listed). Whether the key may call a line's ``model`` is the line's own answer
when it runs (the 404 a live request gets), as endpoints may change meanwhile.
``input_lines`` reads the checked file again.

The batch's ``model`` (OpenAI's Batch object names the model that processes it) is the
one model its lines name. On OpenAI a file holds requests to a single model; here each
line asks the endpoint it names, as a live request would (a batch may ask several), and
such a batch's ``model`` is null: no one model processed it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

MAX_ERRORS = 100  # problems listed in a failed batch's errors
MODEL_MAX = 256  # the longest model name a batch shows (a longer one names no endpoint)


@dataclass(frozen=True)
class InputLine:
    """One request of a batch: its line in the file, ``custom_id``, ``url`` and ``body``."""

    number: int
    custom_id: str
    url: str
    body: dict[str, Any]


def _problem(code: str, message: str, line: int, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def _raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if raw.strip():
                yield number, raw


def check_line(
    number: int, raw: bytes, endpoint: str
) -> tuple[InputLine | None, dict[str, Any] | None]:
    """The line parsed, or the problem that makes it unusable (OpenAI's codes)."""
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None, _problem(
            "invalid_json_line", f"line {number} is not valid JSON: send one JSON object a "
            "line", number,
        )  # fmt: skip
    if not isinstance(value, dict):
        return None, _problem("invalid_json_line", f"line {number} is not a JSON object", number)
    for name in ("custom_id", "method", "url", "body"):
        if name not in value:
            return None, _problem(
                "missing_required_parameter", f"line {number} has no {name!r}", number, name
            )
    unknown = sorted(set(value) - {"custom_id", "method", "url", "body"})
    if unknown:
        return None, _problem(
            "invalid_request", f"line {number} has {unknown[0]!r}, which is not a field of a "
            "batch request (custom_id, method, url, body)", number, unknown[0],
        )  # fmt: skip
    custom_id, method, url, body = value["custom_id"], value["method"], value["url"], value["body"]
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > 512:
        return None, _problem(
            "invalid_request", f"line {number}: custom_id must be a text of 1 to 512 "
            "characters", number, "custom_id",
        )  # fmt: skip
    if method != "POST":
        return None, _problem(
            "invalid_method", f"line {number}: method is {str(method)[:20]!r}; a batch's "
            "requests are POST", number, "method",
        )  # fmt: skip
    if url != endpoint:
        return None, _problem(
            "invalid_url", f"line {number}: url is {str(url)[:60]!r}, not the batch's "
            f"endpoint {endpoint!r}", number, "url",
        )  # fmt: skip
    if not isinstance(body, dict):
        return None, _problem(
            "invalid_request", f"line {number}: body must be a JSON object (the request)",
            number, "body",
        )  # fmt: skip
    if not isinstance(body.get("model"), str) or not body["model"]:
        return None, _problem(
            "missing_required_parameter", f"line {number}: body.model must name the endpoint "
            "to ask", number, "body.model",
        )  # fmt: skip
    if body.get("stream"):
        return None, _problem(
            "invalid_request", f"line {number}: body.stream is true; a batch's answers are "
            "whole: leave stream out", number, "body.stream",
        )  # fmt: skip
    return InputLine(number, custom_id, url, body), None


class Checked(NamedTuple):
    """What ``check_input`` found: how many requests the file holds, its problems (none: it
    can run), and the one model its lines name (None: several, or none usable)."""

    total: int
    problems: list[dict[str, Any]]
    model: str | None


def check_input(path: Path, endpoint: str, max_lines: int) -> Checked:
    """How many requests the file holds, its problems, and the model its lines name."""
    problems: list[dict[str, Any]] = []
    seen: set[str] = set()
    models: set[str] = set()
    total = 0
    for number, raw in _raw_lines(path):
        total += 1
        if total > max_lines:  # what follows is not read: the file cannot run anyway
            problems.append(
                _problem(
                    "too_many_requests",
                    f"the input file holds more than this server's {max_lines} per batch "
                    f"(line {number} is request {total}): split it",
                    number,
                )
            )
            return Checked(total, problems, None)
        line, problem = check_line(number, raw, endpoint)
        if problem is None and line is not None:
            if line.custom_id in seen:
                problem = _problem(
                    "duplicate_custom_id", f"line {number}: custom_id {line.custom_id[:60]!r} "
                    "is on an earlier line too; each request needs its own", number, "custom_id",
                )  # fmt: skip
            seen.add(line.custom_id)
            if len(models) < 2:  # one model, or several: the rest need not be kept
                models.add(line.body["model"])
        if problem is not None and len(problems) < MAX_ERRORS:
            problems.append(problem)
    if total == 0:
        problems.append(_problem("empty_file", "the input file holds no request", 0))
    model = next(iter(models)) if len(models) == 1 else None
    return Checked(total, problems, model if model and len(model) <= MODEL_MAX else None)


def input_lines(path: Path, endpoint: str) -> Iterator[InputLine]:
    """The requests of a file ``check_input`` accepted, in order."""
    for number, raw in _raw_lines(path):
        line, _ = check_line(number, raw, endpoint)
        if line is not None:
            yield line


__all__ = ["MAX_ERRORS", "MODEL_MAX", "Checked", "InputLine", "check_input", "input_lines"]
