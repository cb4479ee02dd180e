"""Data for modelyard: the alpaca prompt template and the quickstart's synthetic domains.

``render_prompt`` is the single place where a row becomes a prompt, for both
training and evaluation; ``synthetic_domain`` and ``domain_corpus`` produce the
deterministic toy data the quickstart trains on.
"""

from modelyard.data._prompt import PROMPT_TEMPLATE_NAME, render_prompt, response_of
from modelyard.data._synthetic import DOMAINS, domain_corpus, synthetic_domain

__all__ = [
    "DOMAINS",
    "PROMPT_TEMPLATE_NAME",
    "domain_corpus",
    "render_prompt",
    "response_of",
    "synthetic_domain",
]
