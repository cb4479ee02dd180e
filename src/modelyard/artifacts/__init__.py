"""modelyard.artifacts."""
