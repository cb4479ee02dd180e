"""Settings from the environment (``MODELYARD_*``), read with pydantic-settings.

``MODELYARD_HOME``                    home directory (default: the nearest ``.modelyard``
                                      directory, walking up from the current one, as git
                                      finds ``.git``; else ``./.modelyard``)
``MODELYARD_STORE_URL``               SQLAlchemy URL of the store (default SQLite file in home)
``MODELYARD_ARTIFACTS``               artifact store: a directory (default ``<home>/artifacts``),
                                      or ``s3://bucket/prefix`` (endpoint and credentials
                                      from boto3's usual AWS_* settings)
``MODELYARD_ARTIFACTS_CACHE``         an S3 store's local read-through cache and work area
                                      (default ``<home>/cache/artifacts``)
``MODELYARD_ACTOR``                   who is acting (default: the OS user)
``MODELYARD_AUDIT_KEY``               the audit chain's HMAC key (hex or any string)
``MODELYARD_AUDIT_KEY_FILE``          file holding the key (default ``<home>/audit.key``)
``MODELYARD_PROTECTED_ALIASES``       aliases that need role approver (default ``champion``)
``MODELYARD_SEGREGATION_OF_DUTIES``   the trainer of a version may not approve it (default off)
``MODELYARD_DEFAULT_ROLE``            role of actors not in the actors table (default developer)
``MODELYARD_OIDC_ISSUER``             OpenID Connect issuer whose bearer tokens open the admin
                                      API (``iss``); unset: only personal access tokens do
``MODELYARD_OIDC_AUDIENCE``           the ``aud`` those tokens must carry (needed with an issuer)
``MODELYARD_OIDC_JWKS_URL``           the issuer's keys (default: from its discovery document)
``MODELYARD_OIDC_ACTOR_CLAIM``        the claim naming the actor (default ``sub``)
``MODELYARD_OIDC_GROUPS_CLAIM``       the claim listing the person's groups (default ``groups``)
``MODELYARD_OIDC_GROUP_ROLES``        groups mapped to roles: ``ml-admins=admin,ml-leads=approver``
``MODELYARD_OIDC_JWKS_REFRESH_S``     fetch the keys again for an unknown ``kid`` at most this
                                      often (default 30 s); they are kept an hour otherwise
"""

from __future__ import annotations

import getpass
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from modelyard.errors import ConfigError, HomeNotWritable


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELYARD_", extra="ignore", frozen=True)

    home: Path = Field(default=Path(".modelyard"), description="modelyard home directory")
    store_url: str | None = Field(default=None, description="SQLAlchemy URL of the store")
    artifacts: str | None = Field(
        default=None, description="artifact store: a directory, or s3://bucket/prefix"
    )
    artifacts_cache: Path | None = Field(
        default=None, description="an S3 artifact store's cache (<home>/cache/artifacts)"
    )
    actor: str | None = Field(default=None, description="who is acting (default: the OS user)")
    audit_key: SecretStr | None = Field(default=None, description="audit HMAC key")
    audit_key_file: Path | None = Field(default=None, description="file holding the audit key")
    protected_aliases: str = Field(
        default="champion", description="comma-separated aliases that need role approver"
    )
    segregation_of_duties: bool = Field(
        default=False, description="the actor who trained a version may not approve it"
    )
    default_role: Literal["viewer", "developer", "approver", "admin"] = Field(
        default="developer", description="role of actors absent from the actors table"
    )

    oidc_issuer: str | None = Field(default=None, description="OpenID Connect issuer (iss)")
    oidc_audience: str | None = Field(default=None, description="audience (aud) of its tokens")
    oidc_jwks_url: str | None = Field(default=None, description="the issuer's JWKS URL")
    oidc_actor_claim: str = Field(default="sub", description="claim naming the actor")
    oidc_groups_claim: str = Field(default="groups", description="claim listing groups")
    oidc_group_roles: str = Field(default="", description="GROUP=ROLE,... for the admin API")
    oidc_jwks_refresh_s: float = Field(
        default=30.0, ge=0.0, description="least seconds between key fetches for an unknown kid"
    )
    oidc_client_id: str | None = Field(
        default=None, description="the console's client id at the issuer (single sign-on)"
    )
    oidc_client_secret: SecretStr | None = Field(
        default=None, description="its client secret (none: a public client, PKCE alone)"
    )
    oidc_scopes: str = Field(
        default="openid profile email", description="scopes the console's sign-in asks for"
    )
    oidc_redirect_url: str | None = Field(
        default=None, description="the callback URL registered at the issuer"
    )
    gpu_hour_price: float | None = Field(
        default=None,
        ge=0.0,
        description="price of one GPU-hour: a version's card shows what its training cost",
    )

    @property
    def resolved_store_url(self) -> str:
        if self.store_url:
            return self.store_url
        return f"sqlite:///{(self.home / 'store.db').resolve()}"

    @property
    def artifacts_on_s3(self) -> bool:
        return (self.artifacts or "").startswith("s3://")

    @property
    def artifacts_location(self) -> str:
        """Where artifacts live: ``s3://bucket/prefix``, or the directory's absolute path."""
        if self.artifacts_on_s3:
            return str(self.artifacts)
        return str(self.artifacts_dir)

    @property
    def artifacts_dir(self) -> Path:
        """The local directory of artifacts: the store, or an S3 store's cache and work area."""
        if self.artifacts_on_s3:
            return self.artifacts_cache_dir
        return (Path(self.artifacts) if self.artifacts else self.home / "artifacts").resolve()

    @property
    def artifacts_cache_dir(self) -> Path:
        """Where an S3 store keeps verified copies and its work area (``tmp/``)."""
        return (self.artifacts_cache or self.home / "cache" / "artifacts").resolve()

    @property
    def artifacts_in_home(self) -> bool:
        """Whether the artifacts' local directory is the home's default (the home must exist)."""
        return self.artifacts_cache is None if self.artifacts_on_s3 else self.artifacts is None

    @property
    def audit_key_path(self) -> Path:
        """Where the audit key file is read from (or created): outside the store."""
        return (self.audit_key_file or self.home / "audit.key").resolve()

    @property
    def resolved_actor(self) -> str:
        return self.actor or os_user()

    @property
    def protected_alias_set(self) -> frozenset[str]:
        return frozenset(a.strip() for a in self.protected_aliases.split(",") if a.strip())

    def ensure_home(self) -> Path:
        """Create the home directory and prove it is writable, or raise one clear error."""
        home = self.home.resolve()
        try:
            home.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=home, prefix=".probe-"):
                pass
        except OSError as exc:
            raise HomeNotWritable(
                f"cannot write to the modelyard home {home}: {exc.strerror or exc}",
                path=str(home),
            ) from exc
        return home


HOME_DIR_NAME = ".modelyard"


@dataclass(frozen=True)
class HomeLocation:
    """Where the home is and how it was found.

    ``origin`` is ``env`` (MODELYARD_HOME names it), ``found`` (a ``.modelyard``
    directory in the current directory or one of its parents) or ``default``
    (none found: ``./.modelyard``, which only ``modelyard init`` creates).
    ``searched`` lists the directories looked in for ``.modelyard``.
    """

    path: Path
    origin: Literal["env", "found", "default"]
    searched: tuple[Path, ...] = ()

    def describe(self) -> str:
        """How the home was found, as a sentence part: ``set by MODELYARD_HOME``, …"""
        if self.origin == "env":
            return "set by MODELYARD_HOME"
        if self.origin == "found":
            return f"found walking up from {self.searched[0]}"
        return f"no {HOME_DIR_NAME} found in {self.searched_range()}"

    def searched_range(self) -> str:
        """The directories looked in, e.g. ``/a/b/c and its parents up to /``."""
        if not self.searched:
            return "nowhere"
        if len(self.searched) == 1:
            return str(self.searched[0])
        return f"{self.searched[0]} and its parents up to {self.searched[-1]}"


def locate_home(cwd: Path | None = None, env: Mapping[str, str] | None = None) -> HomeLocation:
    """The home: MODELYARD_HOME, else the nearest ``.modelyard`` walking up from ``cwd``."""
    env = os.environ if env is None else env
    explicit = env.get("MODELYARD_HOME")
    if explicit:
        return HomeLocation(Path(explicit).expanduser().absolute(), "env")
    start = (cwd or Path.cwd()).absolute()
    searched: list[Path] = []
    for directory in (start, *start.parents):
        searched.append(directory)
        candidate = directory / HOME_DIR_NAME
        if candidate.is_dir():
            return HomeLocation(candidate, "found", tuple(searched))
    return HomeLocation(start / HOME_DIR_NAME, "default", tuple(searched))


def load_settings() -> Settings:
    """Read settings from the environment, turning validation errors into ConfigError.

    Without MODELYARD_HOME the home is the nearest ``.modelyard`` walking up from
    the current directory (``locate_home``).
    """
    location = locate_home()
    try:
        return Settings() if location.origin == "env" else Settings(home=location.path)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ConfigError(
            f"invalid setting MODELYARD_{field.upper()}: {first['msg']}",
            hint="Fix or unset that environment variable.",
        ) from exc


def os_user() -> str:
    """The operating-system user running this process (``getpass.getuser()``)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER (some containers)
        return "unknown"


def default_actor() -> str:
    """The actor recorded on changes: MODELYARD_ACTOR, else the OS user."""
    return os.environ.get("MODELYARD_ACTOR") or os_user()


__all__ = [
    "HOME_DIR_NAME",
    "HomeLocation",
    "Settings",
    "default_actor",
    "load_settings",
    "locate_home",
    "os_user",
]
