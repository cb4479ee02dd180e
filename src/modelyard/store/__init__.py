"""modelyard.store."""
