"""Roles and the access policy the store enforces.

Roles are ordered ``viewer < developer < approver < admin``. An actor absent
from the actors table has the default role (``developer``). While no admin is
recorded, the local OS user is admin (bootstrap); ``modelyard init`` records it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from modelyard.audit._verify import ACK_ACTION
from modelyard.errors import ConfigError
from modelyard.settings import Settings, os_user

Role = Literal["viewer", "developer", "approver", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "developer", "approver", "admin")

REQUIRED_ROLES: dict[str, Role] = {
    "actor.added": "admin",
    "actor.role_changed": "admin",
    ACK_ACTION: "admin",  # acknowledging a break of the audit chain
    "budget.set": "approver",  # money: not the developer who spends it
    "budget.removed": "approver",
    "usage.recounted": "approver",  # changes what budgets count as spent
}
"""Actions needing more than ``developer`` (protected aliases are decided per alias)."""

PROTECTED_ALIAS_ROLE: Role = "approver"


def check_role(role: str) -> Role:
    if role not in ROLES:
        raise ConfigError(f"invalid role {role!r}: use one of {', '.join(ROLES)}")
    return role


def role_rank(role: Role) -> int:
    return ROLES.index(role)


def at_least(role: Role, needed: Role) -> bool:
    return role_rank(role) >= role_rank(needed)


def required_role(action: str) -> Role:
    """The least role that may perform ``action`` (every change needs at least developer)."""
    return REQUIRED_ROLES.get(action, "developer")


@dataclass(frozen=True)
class AccessPolicy:
    """What the store enforces; see docs/audit.md."""

    protected_aliases: frozenset[str] = field(default_factory=lambda: frozenset({"champion"}))
    segregation_of_duties: bool = False
    default_role: Role = "developer"
    bootstrap_admin: str | None = field(default_factory=os_user)

    @classmethod
    def from_settings(cls, settings: Settings) -> AccessPolicy:
        return cls(
            protected_aliases=settings.protected_alias_set,
            segregation_of_duties=settings.segregation_of_duties,
            default_role=check_role(settings.default_role),
            bootstrap_admin=os_user(),
        )
