"""Settings from the environment (``MODELYARD_*``), read with pydantic-settings.

``MODELYARD_HOME``       home directory (default ``./.modelyard``)
``MODELYARD_STORE_URL``  SQLAlchemy URL of the store (default SQLite file in home)
``MODELYARD_ARTIFACTS``  artifact store directory (default ``<home>/artifacts``)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from modelyard.errors import ConfigError, HomeNotWritable


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELYARD_", extra="ignore", frozen=True)

    home: Path = Field(default=Path(".modelyard"), description="modelyard home directory")
    store_url: str | None = Field(default=None, description="SQLAlchemy URL of the store")
    artifacts: Path | None = Field(default=None, description="artifact store directory")

    @property
    def resolved_store_url(self) -> str:
        if self.store_url:
            return self.store_url
        return f"sqlite:///{(self.home / 'store.db').resolve()}"

    @property
    def artifacts_dir(self) -> Path:
        return (self.artifacts or self.home / "artifacts").resolve()

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


def load_settings() -> Settings:
    """Read settings from the environment, turning validation errors into ConfigError."""
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ConfigError(
            f"invalid setting MODELYARD_{field.upper()}: {first['msg']}",
            hint="Fix or unset that environment variable.",
        ) from exc


def default_actor() -> str:
    """The actor recorded on changes: MODELYARD_ACTOR, else the OS user."""
    return os.environ.get("MODELYARD_ACTOR") or os.environ.get("USER") or "unknown"


__all__ = ["Settings", "default_actor", "load_settings"]
