"""Monitoring: the inference-record writer and storage policies (drift and alerts come later)."""

from modelyard.monitoring._policy import apply_storage_policy, redact
from modelyard.monitoring._writer import RecordWriter

__all__ = ["RecordWriter", "apply_storage_policy", "redact"]
