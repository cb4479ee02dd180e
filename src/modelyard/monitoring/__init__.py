"""modelyard.monitoring."""
