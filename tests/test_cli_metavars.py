"""Every option of every command reads, in its ``--help``, as what it takes (``RULE``,
``FEATURE=METHOD``, ``"METRIC OP VALUE"``), never as Python's type (``<list[str]>``)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from typer.main import get_command
from typer.testing import CliRunner

from modelyard.cli._app import app

PYTHON_TYPE = re.compile(r"(--[\w-]+)\s+<(?:list|tuple|dict)\[[^>]*>")


def _commands(command: Any, path: list[str]) -> Iterator[list[str]]:
    subcommands = getattr(command, "commands", None)
    if subcommands is None:
        yield path
        return
    for name, sub in subcommands.items():
        yield from _commands(sub, [*path, name])


def test_no_option_shows_a_python_type_as_what_it_takes() -> None:
    runner = CliRunner()
    shown = []
    paths = list(_commands(get_command(app), []))
    assert len(paths) > 50  # every command was walked
    for path in paths:
        result = runner.invoke(app, [*path, "--help"], terminal_width=200)
        assert result.exit_code == 0, (path, result.output)
        shown += [f"{' '.join(path)} {m.group(0)}" for m in PYTHON_TYPE.finditer(result.output)]
    assert shown == []
