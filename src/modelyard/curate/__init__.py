"""Closing the loop: production traffic and its feedback become the next training set.

``harvest`` reads an endpoint's inference records in a window, keeps those the
``RecordFilters`` pass (version, status, feedback score, feedback label) and that can
give their text back under their tenant's storage policy, turns each into a row
(the prompt parsed back with the version's template; the answer a person's label
when feedback gave one, else the model's), leaves out duplicates and what the
endpoint's versions were trained on, and validates the rest like ``data validate``;
``save`` writes them and registers a dataset version whose lineage lists the records.
What was left out is counted by reason (``SKIP_REASONS``) and filter (``FILTERS``).
"""

from modelyard.curate._build import Harvest, check_out, default_format, harvest, save
from modelyard.curate._known import KnownRows, known_rows
from modelyard.curate._select import (
    FILTERS,
    SKIP_REASONS,
    RecordFilters,
    Selection,
    row_key,
    select_rows,
)

__all__ = [
    "FILTERS",
    "SKIP_REASONS",
    "Harvest",
    "KnownRows",
    "RecordFilters",
    "Selection",
    "check_out",
    "default_format",
    "harvest",
    "known_rows",
    "row_key",
    "save",
    "select_rows",
]
