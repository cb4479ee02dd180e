"""Gate verdicts govern promotion.

A protected alias (``champion`` by default, ``MODELYARD_PROTECTED_ALIASES``) and a
rollout take only a version whose quality gates all passed. A version whose gates
failed, or were never evaluated, is refused (``PermissionDenied``, itself audited as
``permission.denied``) unless an actor with role approver overrides with a reason:
the override is audited (``gate.overridden``) and kept on the version
(``metrics["gate_overrides"]``), where ``registry show`` prints it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from modelyard.audit import PROTECTED_ALIAS_ROLE
from modelyard.errors import ConfigError, PermissionDenied
from modelyard.store import _audit
from modelyard.store._core import StoreCore
from modelyard.store._schema import ModelVersionRow, utcnow
from modelyard.store.entities import GateStatus

NEEDS = f"gates passed, or an override by role {PROTECTED_ALIAS_ROLE}"


def require_gates(
    core: StoreCore,
    s: Session,
    model: str,
    vrow: ModelVersionRow,
    *,
    doing: str,
    action: str,
    subject: str,
    override: str | None,
    how: str,
) -> dict[str, Any] | None:
    """Refuse ``doing`` (e.g. "take the protected alias bot@champion") for a version whose
    gates did not pass, unless ``override`` gives a reason; returns the recorded override.

    ``how`` is the command that overrides, for the error's hint.
    """
    status = GateStatus.of(vrow.metrics)
    if status.state == "passed":
        return None
    ref = f"{model}:{vrow.version}"
    if override is None:
        why = (
            f"its gates failed ({'; '.join(status.failed)})"
            if status.state == "failed"
            else f"its gates were never evaluated ({status.unevaluated})"
        )
        raise PermissionDenied(
            f"{ref} may not {doing}: {why}",
            hint=f"Use a version whose gates passed, or override them with a reason as an "
            f"{PROTECTED_ALIAS_ROLE} (audited, shown on the version): {how} --override-gates "
            f'--reason "why"`.',
            action=action,
            subject=subject,
            role=_audit.effective_role(s, core.policy, core.actor),
            required_role=NEEDS,
            version=ref,
            gates=status.state,
            failed_gates=list(status.failed),
        )
    reason = override.strip()
    if not reason:
        raise ConfigError(
            f"overriding the gates of {ref} needs a reason",
            hint='Say why, e.g. --reason "approved by the risk board, ticket 123".',
            field="reason",
        )
    core._require(s, "gate.overridden", ref, f"override the gates of {ref}", PROTECTED_ALIAS_ROLE)
    record = {
        "actor": core.actor,
        "at": utcnow().isoformat(timespec="seconds"),
        "reason": reason,
        "for": doing,
        "gates": status.state,
        "failed": list(status.failed),
    }
    previous = list(vrow.metrics.get("gate_overrides") or [])
    vrow.metrics = {**vrow.metrics, "gate_overrides": [*previous, record]}
    core._audit(s, "gate.overridden", ref, record)
    return record
