"""The one exception tree of modelyard, and what each error means at the edges.

Every error a user can cause or meet is a ``ModelyardError`` with a stable
``code`` (used by the CLI exit path, the HTTP error body and the audit log), a
message saying *what* went wrong and *why*, and a ``hint`` saying what to do.

    ModelyardError                      exit 1, HTTP 500 unless a class below says otherwise
    ├── ConfigError                     bad settings, flags or values (also ValueError)
    │   ├── HomeNotWritable
    │   ├── HomeNotFound                no store where the home was looked for
    │   ├── AuditKeyMissing             no audit key, and the chain has events
    │   ├── RequestTooLarge             a body over --max-body-bytes
    │   ├── StorageQuotaExceeded        a tenant's files over --max-tenant-file-bytes
    │   └── ContextLengthExceeded       a prompt and max_tokens over the model's context
    ├── NotFound                        (also LookupError)
    │   ├── BaseModelNotFound           exit 2: a base model the user named is missing
    │   ├── DatasetNotFound             exit 2: a file the user named is missing
    │   ├── ModelVersionNotFound
    │   ├── TenantNotFound
    │   └── EndpointNotFound
    ├── Conflict                        the thing exists already / a uniqueness rule
    ├── AuthError                       no key, or a key that is not valid
    │   ├── InvalidApiKey
    │   ├── MissingScope                a valid key without the route's scope
    │   └── IdentityProviderUnavailable the OIDC issuer's keys cannot be fetched (503)
    ├── PermissionDenied                the actor's role does not allow the action
    ├── StoreError
    │   ├── StoreUnavailable            cannot connect to / open the store
    │   └── StoreMigrationError
    ├── ArtifactError
    │   ├── ArtifactNotFound            (also NotFound)
    │   ├── ArtifactIntegrityError      a file's hash differs from its manifest
    │   └── UnsafeArtifact              refused by the import safety checks
    ├── DataError                       a dataset that cannot be used: exit 2 (also ValueError)
    │   └── DataChecksFailed            a fail_on rule tripped on usable rows: exit 1
    ├── TrainingError
    ├── GateFailed                      a model missed a quality gate
    ├── AuditError
    │   ├── AuditChainBroken            an edited, missing, reordered or forged event (409)
    │   └── AuditKeyMismatch
    ├── JudgeError                      a judge scored none of its answers
    ├── RolloutError                    a rollout that did not succeed (rollout wait)
    │   ├── RolloutFailed               rolled back or aborted
    │   └── RolloutTimedOut             still going when the wait gave up
    ├── EngineError                     the engine could not load or run a version
    │   └── UpstreamError               an upstream server failed or refused modelyard
    │       ├── UpstreamBusy            it kept answering 429
    │       └── UpstreamTimeout         it did not answer in time
    ├── EngineOverloaded                the engine's queue is full
    ├── RateLimited                     a key over its requests/min or tokens/min
    ├── LimitsUnavailable               shared limits cannot be checked (Redis down)
    ├── SessionsUnavailable             shared console sessions cannot be read (Redis down)
    ├── BudgetExceeded                  a tenant or key spent its day's or month's budget
    ├── TooManyBatches                  a tenant's unfinished batches at --max-tenant-batches
    ├── RequestTimeout                  a request past --request-timeout-s
    └── ShuttingDown                    the server is draining

What an error means to a caller lives in one table, ``STATUSES``: the CLI exit
code, the HTTP status and the OpenAI error ``type`` of a class. ``status_of``
looks a class up along its MRO, as Starlette resolves exception handlers, so a
class without an entry answers like its nearest ancestor that has one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
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


class HomeNotFound(ConfigError):
    """No store in the home (MODELYARD_HOME, or the nearest ``.modelyard`` walking up);
    commands that read never create one."""

    code = "home_not_found"
    default_hint = (
        "Create one here with `modelyard init`, or set MODELYARD_HOME to an existing home."
    )


class AuditKeyMissing(ConfigError):
    """No audit key is configured and none may be created (the chain has events)."""

    code = "audit_key_missing"


class RequestTooLarge(ConfigError):
    """A request body over the server's ``--max-body-bytes`` (HTTP 413, before parsing)."""

    code = "request_too_large"


class StorageQuotaExceeded(ConfigError):
    """A tenant's files would hold more bytes than the server allows a tenant
    (``--max-tenant-file-bytes``): a 400, which clients do not retry."""

    code = "storage_limit_exceeded"


class ContextLengthExceeded(ConfigError):
    """A prompt (with its ``max_tokens``) longer than the model's context: a 400 whose
    ``code`` is OpenAI's ``context_length_exceeded``, which clients act on (LiteLLM's
    ``ContextWindowExceededError``, LangChain's context fallbacks). ``param`` is the
    prompt's when the prompt alone fills the context, else ``max_tokens``."""

    code = "context_length_exceeded"


class NotFound(ModelyardError, LookupError):
    code = "not_found"


class BaseModelNotFound(NotFound):
    """A base the user named that is not there: bad input (exit 2), HTTP 404."""

    code = "base_model_not_found"
    default_hint = (
        "Pass a local directory in Hugging Face format, a base registered by name "
        "(`modelyard base create-tiny --name`), or a hub model id."
    )


class DatasetNotFound(NotFound):
    code = "dataset_not_found"


class ModelVersionNotFound(NotFound):
    code = "model_version_not_found"
    default_hint = "List the registered models with `modelyard registry list`."


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
    default_hint = (
        "Ask the platform's operator for an API key (they make one with `modelyard keys "
        "create --tenant T`)."
    )


class MissingScope(AuthError):
    """A valid key without the scope a route needs (HTTP 403)."""

    code = "missing_scope"
    default_hint = (
        "Ask the platform's operator for a key with that scope (`modelyard keys create "
        "--tenant T --scopes ...`)."
    )


class IdentityProviderUnavailable(AuthError):
    """The OpenID Connect issuer's keys cannot be fetched, and none are cached (HTTP 503)."""

    code = "identity_provider_unavailable"
    default_hint = "Retry shortly; the operator finds the details in the server's log."


class PermissionDenied(ModelyardError):
    """The actor's role does not allow the action (the refusal is audited)."""

    code = "permission_denied"


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


class DataError(ModelyardError, ValueError):
    code = "invalid_data"


class DataChecksFailed(DataError):
    """Rows that read fine, but a ``fail_on`` rule tripped on them (exit 1, like a gate)."""

    code = "data_checks_failed"


class TrainingError(ModelyardError):
    code = "training_failed"


class GateFailed(ModelyardError):
    """A model missed one or more quality gates; ``context["failed"]`` holds the verdicts."""

    code = "gate_failed"
    default_hint = (
        "Improve the model or its data and train again, or change the gate in the config "
        "if its threshold is wrong."
    )


class AuditError(ModelyardError):
    code = "audit_error"


class AuditChainBroken(AuditError):
    """``audit verify`` found an edited, missing, reordered or forged event; the store
    refuses audited changes until an admin acknowledges the break."""

    code = "audit_chain_broken"
    default_hint = (
        "The store refuses audited changes until this is dealt with: find out why (compare "
        "with a backup or an export; `modelyard audit log` shows the events around that seq), "
        "then restore the audit tables from a backup, or have an admin acknowledge the break: "
        '`modelyard audit acknowledge --reason "why"` (audited; the break stays on record).'
    )


class AuditKeyMismatch(AuditError):
    """The audit key in use does not verify the newest event of the chain."""

    code = "audit_key_mismatch"


class JudgeError(ModelyardError):
    """A judge could not score what it was given: no call reached it, or none of its answers
    held a score (``modelyard.judges``)."""

    code = "judge_failed"
    default_hint = (
        "Check the judge with `modelyard judges score NAME`: its URL, model and key "
        "(`modelyard judges show NAME`)."
    )


class RolloutError(ModelyardError):
    """A rollout that did not end as ``succeeded`` (``modelyard rollout wait``)."""

    code = "rollout_error"


class RolloutFailed(RolloutError):
    """The rollout was rolled back (a guard breached) or aborted by an operator (exit 1)."""

    code = "rollout_failed"
    default_hint = "See why with `modelyard rollout status ENDPOINT`."


class RolloutTimedOut(RolloutError):
    """``rollout wait`` gave up before the rollout ended (exit 3); the rollout goes on."""

    code = "rollout_timed_out"
    default_hint = (
        "The rollout goes on: wait again with a longer --timeout, or follow it with "
        "`modelyard rollout status ENDPOINT`."
    )


class EngineError(ModelyardError):
    """The engine could not load or run a version (HTTP 503)."""

    code = "engine_error"


class UpstreamError(EngineError):
    """An upstream OpenAI-compatible server failed or refused modelyard (HTTP 502): it could
    not be reached, answered 5xx after the retries, or refused the credential. The message
    is the operator's (the host, the key's source); ``context["public"]`` is the tenant's."""

    code = "upstream_error"


class UpstreamBusy(UpstreamError):
    """The upstream kept answering 429 after the retries (HTTP 503 with ``Retry-After``)."""

    code = "upstream_busy"
    default_hint = "Retry after the time in Retry-After."


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer within its timeout (HTTP 504)."""

    code = "upstream_timeout"


class EngineOverloaded(ModelyardError):
    """The serving engine's request queue is full (HTTP 503 with ``Retry-After``)."""

    code = "overloaded"
    default_hint = "Retry after a short wait, or add serving replicas."


class RateLimited(ModelyardError):
    """A key went over its requests/min or tokens/min (HTTP 429 with ``Retry-After``).

    ``retry_after`` is whole seconds until the request would fit; ``limit`` is
    ``"requests"`` or ``"tokens"`` (OpenAI's error ``type`` for rate limits);
    ``never_fits``: the request is larger than the limit itself, so no wait helps (HTTP
    ``x-should-retry: false``).
    """

    code = "rate_limit_exceeded"

    def __init__(
        self,
        message: str,
        *,
        retry_after: int,
        limit: str,
        hint: str | None = None,
        never_fits: bool = False,
    ) -> None:
        super().__init__(message, hint=hint, retry_after=retry_after, limit=limit)
        self.retry_after = retry_after
        self.limit = limit
        self.never_fits = never_fits


class LimitsUnavailable(ModelyardError):
    """The limits shared by replicas cannot be checked (Redis cannot be reached) and the
    server is told to fail closed (HTTP 503 with ``Retry-After``)."""

    code = "limits_unavailable"
    default_hint = "Retry shortly."


class SessionsUnavailable(ModelyardError):
    """The console's sessions, shared by replicas, cannot be read or written (Redis cannot
    be reached): HTTP 503 with ``Retry-After``; nobody is logged out by it."""

    code = "sessions_unavailable"
    default_hint = "Retry shortly; an operator should check Redis (--redis-url)."


class BudgetExceeded(ModelyardError):
    """A tenant or key spent its budget for the day or month (HTTP 429 with OpenAI's
    ``insufficient_quota``, ``Retry-After`` until the budget is renewed, and
    ``x-should-retry: false``: retrying sooner changes nothing)."""

    code = "insufficient_quota"
    default_hint = "Ask an operator to raise the budget."


class TooManyBatches(ModelyardError):
    """A tenant has as many unfinished OpenAI batches as the server allows a tenant
    (``--max-tenant-batches``): HTTP 429 with ``x-should-retry: false`` (a retry within
    seconds changes nothing; a batch ending or cancelled makes room)."""

    code = "batch_limit_exceeded"
    default_hint = "Wait for a batch to end, or cancel one (POST /v1/batches/{id}/cancel)."


class RequestTimeout(ModelyardError):
    """A request ran past the server's ``--request-timeout-s`` (HTTP 504); it was cancelled."""

    code = "timeout"
    default_hint = "Ask for fewer max_tokens, or retry when the server is less busy."


class ShuttingDown(ModelyardError):
    """The server is draining before it exits (HTTP 503); other replicas take new requests."""

    code = "shutting_down"
    default_hint = "Retry on another replica."


# -- what each error means at the edges: exit codes, HTTP statuses ---------------------------


@dataclass(frozen=True)
class ErrorStatus:
    """What an error means to a caller: ``exit_code`` for the CLI, ``http_status`` and
    ``type`` (OpenAI's error ``type``) for the HTTP API."""

    exit_code: int
    http_status: int
    type: str


_CLIENT = "invalid_request_error"
_SERVER = "server_error"

STATUSES: Mapping[type[ModelyardError], ErrorStatus] = MappingProxyType(
    {
        ModelyardError: ErrorStatus(1, 500, _SERVER),
        ConfigError: ErrorStatus(2, 400, _CLIENT),
        RequestTooLarge: ErrorStatus(2, 413, _CLIENT),
        NotFound: ErrorStatus(1, 404, _CLIENT),
        BaseModelNotFound: ErrorStatus(2, 404, _CLIENT),
        Conflict: ErrorStatus(1, 409, _CLIENT),
        # a change refused while the chain is broken: the state, not the server, refuses it
        AuditChainBroken: ErrorStatus(1, 409, _CLIENT),
        AuthError: ErrorStatus(1, 401, "authentication_error"),
        MissingScope: ErrorStatus(1, 403, "permission_error"),
        IdentityProviderUnavailable: ErrorStatus(1, 503, _SERVER),
        PermissionDenied: ErrorStatus(1, 403, "permission_error"),
        StoreUnavailable: ErrorStatus(1, 503, _SERVER),
        DatasetNotFound: ErrorStatus(2, 404, _CLIENT),
        DataError: ErrorStatus(2, 400, _CLIENT),
        DataChecksFailed: ErrorStatus(1, 400, _CLIENT),
        RolloutTimedOut: ErrorStatus(3, 500, _SERVER),
        EngineError: ErrorStatus(1, 503, _SERVER),
        EngineOverloaded: ErrorStatus(1, 503, _SERVER),
        UpstreamError: ErrorStatus(1, 502, _SERVER),
        UpstreamBusy: ErrorStatus(1, 503, _SERVER),
        UpstreamTimeout: ErrorStatus(1, 504, "timeout"),
        RateLimited: ErrorStatus(1, 429, "requests"),
        LimitsUnavailable: ErrorStatus(1, 503, _SERVER),
        SessionsUnavailable: ErrorStatus(1, 503, _SERVER),
        BudgetExceeded: ErrorStatus(1, 429, "insufficient_quota"),
        TooManyBatches: ErrorStatus(1, 429, _CLIENT),
        RequestTimeout: ErrorStatus(1, 504, "timeout"),
        ShuttingDown: ErrorStatus(1, 503, _SERVER),
        JudgeError: ErrorStatus(1, 502, _SERVER),
    }
)


def status_of(error: ModelyardError | type[ModelyardError]) -> ErrorStatus:
    """The exit code, HTTP status and OpenAI error type of an error (or an error class).

    The entry of the nearest class along the MRO that has one; ``ModelyardError``'s
    at the latest. A ``RateLimited`` error's type names its limit (``requests`` or
    ``tokens``), as OpenAI's does.
    """
    cls = error if isinstance(error, type) else type(error)
    found = next((STATUSES[c] for c in cls.__mro__ if c in STATUSES), STATUSES[ModelyardError])
    if isinstance(error, RateLimited):
        return dataclasses.replace(found, type=error.limit)
    return found


__all__ = [
    "STATUSES",
    "ArtifactError",
    "ArtifactIntegrityError",
    "ArtifactNotFound",
    "AuditChainBroken",
    "AuditError",
    "AuditKeyMismatch",
    "AuditKeyMissing",
    "AuthError",
    "BaseModelNotFound",
    "BudgetExceeded",
    "ConfigError",
    "Conflict",
    "ContextLengthExceeded",
    "DataChecksFailed",
    "DataError",
    "DatasetNotFound",
    "EndpointNotFound",
    "EngineError",
    "EngineOverloaded",
    "ErrorStatus",
    "GateFailed",
    "HomeNotFound",
    "HomeNotWritable",
    "IdentityProviderUnavailable",
    "InvalidApiKey",
    "JudgeError",
    "LimitsUnavailable",
    "MissingScope",
    "ModelVersionNotFound",
    "ModelyardError",
    "NotFound",
    "PermissionDenied",
    "RateLimited",
    "RequestTimeout",
    "RequestTooLarge",
    "RolloutError",
    "RolloutFailed",
    "RolloutTimedOut",
    "SessionsUnavailable",
    "ShuttingDown",
    "StorageQuotaExceeded",
    "StoreError",
    "StoreMigrationError",
    "StoreUnavailable",
    "TenantNotFound",
    "TooManyBatches",
    "TrainingError",
    "UnsafeArtifact",
    "UpstreamBusy",
    "UpstreamError",
    "UpstreamTimeout",
    "status_of",
]
