"""modelyard.base."""
