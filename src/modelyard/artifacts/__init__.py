"""Content-addressed artifact storage.

An artifact is a directory of files (a LoRA adapter, a dataset file) named by
the sha256 of its manifest, which records the sha256 and size of every file.
Loaders get a path only through ``ArtifactStore.open_verified``, which checks
every byte first. ``ArtifactStore`` is the interface; ``LocalArtifactStore``
(a directory, what ``ArtifactStore(root)`` builds) and ``S3ArtifactStore``
(``s3://bucket/prefix``, read through a local cache) implement it, and
``artifacts_from_settings`` / ``open_artifact_store`` pick one.

Before an imported model is stored, ``stage_import`` copies or extracts it
under the path rules and ``inspect_artifact`` runs the import safety checks
(docs/artifact-safety.md); both are pure and never touch the store.
``ImportLimits`` bounds what an import may expand to. ``ArtifactStore.staging``
gives work dirs that ``sweep_tmp`` removes once their process is gone, with
what a remote store's killed writers left (``UploadEntry``).
"""

import typing

from modelyard.artifacts._adapter_check import (
    MAX_LORA_ALPHA,
    UNSERVABLE_LORA_FIELDS,
    AdapterSummary,
)
from modelyard.artifacts._base import ArtifactStore
from modelyard.artifacts._factory import artifacts_from_settings, open_artifact_store
from modelyard.artifacts._local import LocalArtifactStore
from modelyard.artifacts._manifest import ArtifactRef, FileEntry, one_file_digest
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
from modelyard.artifacts._tmp import TempEntry, UploadEntry, pid_alive, this_host

if typing.TYPE_CHECKING:
    from modelyard.artifacts._s3 import S3ArtifactStore
    from modelyard.artifacts._s3_api import TransferSettings


def __getattr__(name: str) -> typing.Any:
    """The S3 store and its settings import botocore, which only an ``s3://`` store needs:
    they load on first use (and are bound then), so the rest imports without boto3."""
    if name not in ("S3ArtifactStore", "TransferSettings"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from modelyard.artifacts import _s3, _s3_api

    value = getattr(_s3 if name == "S3ArtifactStore" else _s3_api, name)
    globals()[name] = value
    return value


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
    "LocalArtifactStore",
    "S3ArtifactStore",
    "SafetensorsHeader",
    "SafetyReport",
    "SafetyRule",
    "TempEntry",
    "TensorInfo",
    "TransferSettings",
    "UploadEntry",
    "artifacts_from_settings",
    "classify",
    "inspect_artifact",
    "one_file_digest",
    "open_artifact_store",
    "pid_alive",
    "read_safetensors_header",
    "scan_pickle",
    "stage_import",
    "this_host",
]
