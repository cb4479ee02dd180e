"""modelyard.deploy."""
