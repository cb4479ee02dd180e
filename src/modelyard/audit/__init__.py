"""modelyard.audit."""
