"""The registry: everything about a registered model version beyond the store's rows.

The rows (registered models, versions, aliases, archive, tags) live in the
store (``modelyard.store.Store``) so every front end shares their rules; this
package owns what works on a version as a whole:

- its lineage: ``lineage_record`` (the one place a version's lineage is built,
  for trained and imported versions), ``ensure_base_model`` (a base with its
  weight hashes), ``lineage_chain`` (a version and its parents);
- its data: ``store_dataset`` / ``dataset_rows`` (a dataset version as canonical JSONL
  in the artifact store) and ``records_origin`` (the inference records rows came from);
- its prompt template: ``template_name`` / ``version_template`` (the one
  decision of how a version renders prompts; ``DEFAULT_TEMPLATE`` for versions
  that predate the record);
- its files: ``verified_files`` (every byte checked, a refusal audited) and
  ``load_version_model``, used by everyone who loads a version;
- ``model_card`` / ``version_card`` (Markdown), ``export_version`` (a directory
  vanilla ``peft``/``transformers`` load) and ``import_version`` (the safety
  checks of ``modelyard.artifacts`` before anything is stored); tags;
- what crashes leave: ``discard_unreferenced`` / ``drop_if_empty`` for writers
  whose row was refused (``modelyard.doctor`` uses them); ``ensure_model`` and
  ``check_model_owner``: a tenant's version joins only that tenant's model.
"""

from modelyard.registry._card import model_card, version_card
from modelyard.registry._datasets import (
    RECORDS_SOURCE,
    canonical_jsonl,
    dataset_rows,
    records_origin,
    rows_digest,
    store_dataset,
)
from modelyard.registry._history import MAX_DEPTH, LineageNode, lineage_chain
from modelyard.registry._lineage import (
    ensure_base_model,
    environment,
    git_commit,
    lineage_record,
    refuse_a_near_base_name,
)
from modelyard.registry._orphans import (
    check_model_owner,
    discard_unreferenced,
    drop_if_empty,
    ensure_model,
    referenced_digests,
)
from modelyard.registry._tags import check_tags, parse_tags, set_tags, tag_version
from modelyard.registry._transfer import (
    ImportResult,
    export_loader,
    export_version,
    import_version,
    version_kind,
)
from modelyard.registry._upstream import (
    SPEC_FILE,
    UPSTREAM_TEMPLATE,
    UpstreamSpec,
    register_upstream,
    upstream_base_name,
)
from modelyard.registry._versions import (
    DEFAULT_TEMPLATE,
    imported_template,
    load_version_model,
    template_name,
    verified_files,
    version_format,
    version_template,
)

__all__ = [
    "DEFAULT_TEMPLATE",
    "MAX_DEPTH",
    "RECORDS_SOURCE",
    "SPEC_FILE",
    "UPSTREAM_TEMPLATE",
    "ImportResult",
    "LineageNode",
    "UpstreamSpec",
    "canonical_jsonl",
    "check_model_owner",
    "check_tags",
    "dataset_rows",
    "discard_unreferenced",
    "drop_if_empty",
    "ensure_base_model",
    "ensure_model",
    "environment",
    "export_loader",
    "export_version",
    "git_commit",
    "import_version",
    "imported_template",
    "lineage_chain",
    "lineage_record",
    "load_version_model",
    "model_card",
    "parse_tags",
    "records_origin",
    "referenced_digests",
    "refuse_a_near_base_name",
    "register_upstream",
    "rows_digest",
    "set_tags",
    "store_dataset",
    "tag_version",
    "template_name",
    "upstream_base_name",
    "verified_files",
    "version_card",
    "version_format",
    "version_kind",
    "version_template",
]
