"""The one exception tree of modelyard.

Every error a user can cause or meet is a ``ModelyardError`` with a stable
``code`` (used by the CLI exit path, the HTTP error body and the audit log), a
message saying *what* went wrong and *why*, and a ``hint`` saying what to do.

    ModelyardError
    ├── ConfigError                     bad settings, flags or config values (also ValueError)
    │   └── HomeNotWritable
    ├── NotFound                        (also LookupError)
    │   ├── BaseModelNotFound
    │   ├── DatasetNotFound
    │   ├── ModelVersionNotFound
    │   ├── TenantNotFound
    │   └── EndpointNotFound
    ├── Conflict                        the thing exists already / a uniqueness rule
    ├── AuthError
    │   └── InvalidApiKey
    ├── StoreError
    │   ├── StoreUnavailable            cannot connect to / open the store
    │   └── StoreMigrationError
    ├── ArtifactError
    │   ├── ArtifactNotFound
    │   └── ArtifactIntegrityError      a file's hash differs from its manifest
    ├── DataError                       a dataset that cannot be used (also ValueError)
    └── TrainingError
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ModelyardError(Exception):
    """Root of every modelyard error.

    ``code`` is stable across releases; ``hint`` is the "what to do" part;
    ``context`` carries structured fields that front ends may show or log.
    """

    code: str = "modelyard_error"
    default_hint: str = ""

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        **context: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint
        self.context: Mapping[str, Any] = context

    def one_line(self) -> str:
        """The message and the hint as one line, as the CLI prints it."""
        if self.hint:
            return f"{self.message.rstrip('.')}. {self.hint}"
        return self.message


class ConfigError(ModelyardError, ValueError):
    code = "invalid_config"


class HomeNotWritable(ConfigError):
    code = "home_not_writable"
    default_hint = "Set MODELYARD_HOME to a directory you can write to."


class NotFound(ModelyardError, LookupError):
    code = "not_found"


class BaseModelNotFound(NotFound):
    code = "base_model_not_found"
    default_hint = (
        "Pass a local directory in Hugging Face format or a model id; "
        "build a small one with `modelyard base create-tiny`."
    )


class DatasetNotFound(NotFound):
    code = "dataset_not_found"


class ModelVersionNotFound(NotFound):
    code = "model_version_not_found"
    default_hint = "List versions with `modelyard registry list`."


class TenantNotFound(NotFound):
    code = "tenant_not_found"
    default_hint = "List tenants with `modelyard tenants list`."


class EndpointNotFound(NotFound):
    code = "endpoint_not_found"
    default_hint = "List endpoints with `modelyard endpoints list`."


class Conflict(ModelyardError):
    code = "conflict"


class AuthError(ModelyardError):
    code = "unauthorized"


class InvalidApiKey(AuthError):
    code = "invalid_api_key"
    default_hint = "Create a key with `modelyard keys create --tenant T`."


class StoreError(ModelyardError):
    code = "store_error"


class StoreUnavailable(StoreError):
    code = "store_unavailable"
    default_hint = "Check MODELYARD_STORE_URL and that the database server is running."


class StoreMigrationError(StoreError):
    code = "store_migration_failed"


class ArtifactError(ModelyardError):
    code = "artifact_error"


class ArtifactNotFound(ArtifactError, NotFound):
    code = "artifact_not_found"


class ArtifactIntegrityError(ArtifactError):
    code = "artifact_integrity"
    default_hint = (
        "The stored file changed after it was written; restore it from a backup "
        "or register the artifact again."
    )


class DataError(ModelyardError, ValueError):
    code = "invalid_data"


class TrainingError(ModelyardError):
    code = "training_failed"


__all__ = [
    "ArtifactError",
    "ArtifactIntegrityError",
    "ArtifactNotFound",
    "AuthError",
    "BaseModelNotFound",
    "ConfigError",
    "Conflict",
    "DataError",
    "DatasetNotFound",
    "EndpointNotFound",
    "HomeNotWritable",
    "InvalidApiKey",
    "ModelVersionNotFound",
    "ModelyardError",
    "NotFound",
    "StoreError",
    "StoreMigrationError",
    "StoreUnavailable",
    "TenantNotFound",
    "TrainingError",
]


# -- audit chain and access control (issue 4) ----------------------------------------------


class PermissionDenied(ModelyardError):
    """The actor's role does not allow the action (the refusal is audited)."""

    code = "permission_denied"


class AuditError(ModelyardError):
    code = "audit_error"


class AuditChainBroken(AuditError):
    """``audit verify`` found an edited, missing, reordered or forged event."""

    code = "audit_chain_broken"
    default_hint = (
        "Do not write to the store until you know why: compare with a backup or an "
        "export, and look at the events around that seq with `modelyard audit log`."
    )


class AuditKeyMismatch(AuditError):
    """The audit key in use does not verify the newest event of the chain."""

    code = "audit_key_mismatch"


class AuditKeyMissing(ConfigError):
    """No audit key is configured and none may be created (the chain has events)."""

    code = "audit_key_missing"


__all__ += [
    "AuditChainBroken",
    "AuditError",
    "AuditKeyMismatch",
    "AuditKeyMissing",
    "PermissionDenied",
]


# -- evaluation and gates (issue 3) --------------------------------------------------------


class GateFailed(ModelyardError):
    """A model missed one or more quality gates; ``context["failed"]`` holds the verdicts."""

    code = "gate_failed"
    default_hint = (
        "Improve the model or its data and train again, or change the gate in the config "
        "if its threshold is wrong."
    )


__all__ += ["GateFailed"]


# -- artifact import safety (issue 4) -----------------------------------------------------


class UnsafeArtifact(ArtifactError):
    """An artifact refused by the import safety checks (docs/artifact-safety.md).

    ``rule`` names the check that refused it (``file_kind``, ``pickle``,
    ``pickle_global``, ``safetensors_header``, ``path``, ``remote_code``,
    ``adapter_config``, ``archive``, ``size``); ``path`` is the offending file or
    archive member, relative to the artifact root. Both are also in ``context``
    so an audit record of the refusal carries them.
    """

    code = "unsafe_artifact"

    def __init__(
        self,
        message: str,
        *,
        rule: str,
        path: str,
        hint: str | None = None,
        **context: Any,
    ) -> None:
        super().__init__(message, hint=hint, rule=rule, path=path, **context)
        self.rule = rule
        self.path = path


__all__ += ["UnsafeArtifact"]


# -- serving (issue 5) ---------------------------------------------------------------------


class EngineOverloaded(ModelyardError):
    """The serving engine's request queue is full (HTTP 503 with ``Retry-After``)."""

    code = "overloaded"
    default_hint = "Retry after a short wait, or add serving replicas."


__all__ += ["EngineOverloaded"]


# -- serving limits and lifecycle (issue 5) ---------------------------------------------------


class RateLimited(ModelyardError):
    """A key went over its requests/min or tokens/min (HTTP 429 with ``Retry-After``).

    ``retry_after`` is whole seconds until the request would fit; ``limit`` is
    ``"requests"`` or ``"tokens"`` (OpenAI's error ``type`` for rate limits).
    """

    code = "rate_limit_exceeded"

    def __init__(
        self, message: str, *, retry_after: int, limit: str, hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint, retry_after=retry_after, limit=limit)
        self.retry_after = retry_after
        self.limit = limit


class RequestTooLarge(ConfigError):
    """A request body over the server's ``--max-body-bytes`` (HTTP 413, before parsing)."""

    code = "request_too_large"


class RequestTimeout(ModelyardError):
    """A request ran past the server's ``--request-timeout-s`` (HTTP 504); it was cancelled."""

    code = "timeout"
    default_hint = "Ask for fewer max_tokens, or retry when the server is less busy."


class ShuttingDown(ModelyardError):
    """The server is draining before it exits (HTTP 503); other replicas take new requests."""

    code = "shutting_down"
    default_hint = "Retry on another replica."


class MissingScope(AuthError):
    """A valid key without the scope a route needs (HTTP 403)."""

    code = "missing_scope"
    default_hint = "Create a key with that scope: `modelyard keys create --tenant T --scopes ...`."


__all__ += ["MissingScope", "RateLimited", "RequestTimeout", "RequestTooLarge", "ShuttingDown"]
