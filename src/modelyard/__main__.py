"""``python -m modelyard`` runs the CLI."""

from modelyard.cli import run

run()
