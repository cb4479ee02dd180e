"""Content-addressed artifact storage.

An artifact is a directory of files (a LoRA adapter, a dataset file) named by
the sha256 of its manifest, which records the sha256 and size of every file.
Loaders get a path only through ``ArtifactStore.open_verified``, which checks
every byte first.

Before an imported model is stored, ``stage_import`` copies or extracts it
under the path rules and ``inspect_artifact`` runs the import safety checks
(docs/artifact-safety.md); both are pure and never touch the store.
``ImportLimits`` bounds what an import may expand to. ``ArtifactStore.staging``
gives work dirs that ``sweep_tmp`` removes once their process is gone.
"""

from modelyard.artifacts._adapter_check import (
    MAX_LORA_ALPHA,
    UNSERVABLE_LORA_FIELDS,
    AdapterSummary,
)
from modelyard.artifacts._local import ArtifactStore
from modelyard.artifacts._manifest import ArtifactRef, FileEntry
from modelyard.artifacts._pickle_scan import ALLOWED_PICKLE_GLOBALS, scan_pickle
from modelyard.artifacts._safetensors_check import (
    SafetensorsHeader,
    TensorInfo,
    read_safetensors_header,
)
from modelyard.artifacts._safety import (
    ArtifactKind,
    CheckedFile,
    FileKind,
    SafetyReport,
    SafetyRule,
    classify,
    inspect_artifact,
)
from modelyard.artifacts._staging import ImportLimits, stage_import
from modelyard.artifacts._tmp import TempEntry, pid_alive, this_host

__all__ = [
    "ALLOWED_PICKLE_GLOBALS",
    "MAX_LORA_ALPHA",
    "UNSERVABLE_LORA_FIELDS",
    "AdapterSummary",
    "ArtifactKind",
    "ArtifactRef",
    "ArtifactStore",
    "CheckedFile",
    "FileEntry",
    "FileKind",
    "ImportLimits",
    "SafetensorsHeader",
    "SafetyReport",
    "SafetyRule",
    "TempEntry",
    "TensorInfo",
    "classify",
    "inspect_artifact",
    "pid_alive",
    "read_safetensors_header",
    "scan_pickle",
    "stage_import",
    "this_host",
]
