"""modelyard.evaluation."""
