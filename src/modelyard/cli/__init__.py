"""modelyard.cli."""
