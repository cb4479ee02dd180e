"""Registry operations beyond the store's rows: model cards, plain export, safe import.

Registered models, versions, aliases, archive and lineage live in the store
(``modelyard.store.Store``) so every front end shares their rules; this package
adds what works on files: ``model_card`` (Markdown), ``export_version`` (a
directory vanilla ``peft``/``transformers`` load) and ``import_version`` (the
safety checks of ``modelyard.artifacts`` before anything is stored).
"""

from modelyard.registry._card import model_card
from modelyard.registry._transfer import ImportResult, export_version, import_version

__all__ = ["ImportResult", "export_version", "import_version", "model_card"]
