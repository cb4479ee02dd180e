"""Data for modelyard: dataset files, their validation and splitting, the prompt template.

``load_rows`` reads a dataset file (JSONL, JSON, CSV, Parquet) of one of the
``FORMATS`` (``read_rows``: any rows, no format); ``validate_rows`` checks it
and returns a ``ValidationReport``; ``split_rows`` makes a reproducible
train/eval split. ``render_prompt`` is the single place where a row becomes a
prompt, for both training and evaluation, and ``row_from_prompt`` turns a rendered
prompt and an answer back into a row (inference records into training data);
``synthetic_domain`` and ``domain_corpus`` produce the deterministic toy data
the quickstart trains on.
"""

from modelyard.data._formats import FORMATS, REQUIRED_FIELDS, DataFormat, as_text, get_format
from modelyard.data._io import FILE_TYPES, iter_rows, load_rows, read_rows, write_jsonl
from modelyard.data._parse import TEMPLATE_FORMATS, parse_prompt, row_from_prompt
from modelyard.data._pii import (
    PHONE_REGIONS,
    PII_KINDS,
    PII_LABELS,
    PiiMatch,
    find_pii,
    has_redactions,
    redact_pii,
)
from modelyard.data._prompt import PROMPT_TEMPLATE_NAME, render_prompt, response_of
from modelyard.data._split import split_rows
from modelyard.data._synthetic import DOMAINS, domain_corpus, synthetic_domain
from modelyard.data._templates import TEMPLATES, PromptTemplate, template_for, template_named
from modelyard.data._validate import (
    DEFAULT_IMBALANCE_RATIO,
    DEFAULT_MAX_SEQ_LEN,
    RULES,
    FieldProblem,
    Labels,
    Leak,
    Lengths,
    PiiFinding,
    Stats,
    ValidationReport,
    check_rules,
    validate_rows,
)

__all__ = [
    "DEFAULT_IMBALANCE_RATIO",
    "DEFAULT_MAX_SEQ_LEN",
    "DOMAINS",
    "FILE_TYPES",
    "FORMATS",
    "PHONE_REGIONS",
    "PII_KINDS",
    "PII_LABELS",
    "PROMPT_TEMPLATE_NAME",
    "REQUIRED_FIELDS",
    "RULES",
    "TEMPLATES",
    "TEMPLATE_FORMATS",
    "DataFormat",
    "FieldProblem",
    "Labels",
    "Leak",
    "Lengths",
    "PiiFinding",
    "PiiMatch",
    "PromptTemplate",
    "Stats",
    "ValidationReport",
    "as_text",
    "check_rules",
    "domain_corpus",
    "find_pii",
    "get_format",
    "has_redactions",
    "iter_rows",
    "load_rows",
    "parse_prompt",
    "read_rows",
    "redact_pii",
    "render_prompt",
    "response_of",
    "row_from_prompt",
    "split_rows",
    "synthetic_domain",
    "template_for",
    "template_named",
    "validate_rows",
    "write_jsonl",
]
