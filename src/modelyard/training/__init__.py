"""modelyard.training."""
