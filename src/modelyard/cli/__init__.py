"""The ``modelyard`` command line: one Typer app, one module per command group.

Commands hold no business logic: they parse, call the stage's public API and
print. Every ``ModelyardError`` becomes one line on stderr and the exit code of
its class in ``modelyard.errors.STATUSES`` (2 for bad input, 3 for a rollout
wait that timed out, 1 otherwise); ``--debug`` shows the traceback instead.
"""

from modelyard.cli._app import app, main, run

__all__ = ["app", "main", "run"]
