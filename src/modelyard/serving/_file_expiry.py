"""When a tenant's file expires: OpenAI's ``expires_after`` and ``output_expires_after``.

A file says when it goes: ``{"anchor": "created_at", "seconds": N}``, an hour to 30
days after it was made. Files for batches expire after 30 days unless the upload says
otherwise, as OpenAI's do; a batch's output and error files after 30 days unless the
batch's ``output_expires_after`` says otherwise. A file whose time is up is not found,
and servers delete it (and its bytes, when no other file has them) within a minute or
so (``FileKeeper.purge_expired``), unless a batch not finished reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modelyard.errors import ConfigError

MIN_EXPIRY_S = 3600  # OpenAI's bounds on expires_after.seconds
MAX_EXPIRY_S = 30 * 24 * 3600
DEFAULT_EXPIRY_S = MAX_EXPIRY_S  # files for batches, and batches' outputs, unless told
FORM_FIELDS = ("expires_after[anchor]", "expires_after[seconds]")  # as the SDKs send it


def expiry_seconds(policy: Any, param: str) -> int:
    """The seconds after its creation a file of ``policy`` (``param``'s value: an object
    with ``anchor`` created_at and ``seconds``) expires; a clear 400 for anything else."""
    if policy is None:
        return DEFAULT_EXPIRY_S
    if not isinstance(policy, Mapping):
        raise ConfigError(
            f'{param} must be an object {{"anchor": "created_at", "seconds": N}}',
            param=param,
        )
    extra = sorted(set(policy) - {"anchor", "seconds"})
    if extra:
        raise ConfigError(
            f"{param}.{str(extra[0])[:40]} is not a field of {param}: give anchor and seconds",
            param=f"{param}.{str(extra[0])[:40]}",
        )
    anchor = policy.get("anchor")
    if anchor != "created_at":
        raise ConfigError(
            f"{param}.anchor is {str(anchor)[:40]!r}: the only anchor is 'created_at'",
            param=f"{param}.anchor",
        )
    seconds = policy.get("seconds")
    if isinstance(seconds, str) and seconds.strip().isdigit():
        seconds = int(seconds)  # a multipart form's fields are text
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        raise ConfigError(
            f"{param}.seconds must be a whole number of seconds, not {str(seconds)[:40]!r}",
            param=f"{param}.seconds",
        )
    if not MIN_EXPIRY_S <= seconds <= MAX_EXPIRY_S:
        raise ConfigError(
            f"{param}.seconds is {seconds}: it must be {MIN_EXPIRY_S} (an hour) to "
            f"{MAX_EXPIRY_S} (30 days)",
            param=f"{param}.seconds",
        )
    return seconds


def form_expiry(form: Mapping[str, Any]) -> int:
    """An upload's ``expires_after``, sent as the form fields ``expires_after[anchor]`` and
    ``expires_after[seconds]`` (the default when it sends neither)."""
    given = {f[len("expires_after[") : -1]: form[f] for f in FORM_FIELDS if f in form}
    return expiry_seconds(given or None, "expires_after")


__all__ = [
    "DEFAULT_EXPIRY_S",
    "FORM_FIELDS",
    "MAX_EXPIRY_S",
    "MIN_EXPIRY_S",
    "expiry_seconds",
    "form_expiry",
]
