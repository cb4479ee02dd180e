"""modelyard.tenants."""
