"""The CLI against a server: where it is (``MODELYARD_URL``), who is calling (a person's
token), and the admin API's answers and errors over HTTP(S).

``MODELYARD_URL``                 the server's base URL, e.g. ``https://modelyard.example.com``
                                  (the admin API is under ``/admin/v1`` there)
``MODELYARD_TOKEN``               a personal access token (``myp_…``) or an OIDC token
``MODELYARD_TOKEN_FILE``          else a file holding it (default
                                  ``$XDG_CONFIG_HOME/modelyard/token``, i.e.
                                  ``~/.config/modelyard/token``, when it exists)
``MODELYARD_CA_BUNDLE``           a private CA's certificates (else ``REQUESTS_CA_BUNDLE``,
                                  else ``SSL_CERT_FILE``, else the system's and certifi's)
``MODELYARD_ALLOW_PLAIN_HTTP``    ``1``: send the token over plain ``http://`` to a host
                                  other than this machine (refused otherwise)

An error answer (OpenAI's ``{"error": {...}}`` body) becomes the ``ModelyardError`` subclass
its ``code`` names, with the server's one-line message, so the CLI prints the line and
exits with the code a local run gives.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

import modelyard
from modelyard.errors import (
    AuthError,
    ConfigError,
    Conflict,
    ModelyardError,
    NotFound,
    PermissionDenied,
)

URL_ENV = "MODELYARD_URL"
TOKEN_ENV = "MODELYARD_TOKEN"
TOKEN_FILE_ENV = "MODELYARD_TOKEN_FILE"
CA_ENV = "MODELYARD_CA_BUNDLE"
PLAIN_HTTP_ENV = "MODELYARD_ALLOW_PLAIN_HTTP"
ADMIN_PATH = "/admin/v1"  # modelyard.admin.ADMIN_PREFIX (importing it would load FastAPI)
TIMEOUT = httpx.Timeout(60.0, connect=10.0)


def remote_url(env: Mapping[str, str] | None = None) -> str | None:
    """``MODELYARD_URL`` when set (and not blank): the CLI then works through the server."""
    value = (os.environ if env is None else env).get(URL_ENV, "").strip()
    return value or None


@dataclass(frozen=True)
class Remote:
    """Where the admin API is, the token to show it, and how to check its certificate."""

    url: str  # MODELYARD_URL, without a trailing slash
    api: str  # the admin API's base URL
    token: str
    token_source: str  # where the token came from, for error messages
    verify: ssl.SSLContext | bool

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Remote:
        env = os.environ if env is None else env
        url = (remote_url(env) or "").rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"invalid {URL_ENV} {url!r}: use the server's base URL, "
                "e.g. https://modelyard.example.com or http://127.0.0.1:8000",
                field=URL_ENV,
            )
        plain = parts.scheme == "http" and not _loopback(parts.hostname)
        if plain and not _on(env, PLAIN_HTTP_ENV):
            raise ConfigError(
                f"{URL_ENV} {url} is plain http to another machine: the token would cross "
                "the network in clear text",
                hint=f"Use https://, or set {PLAIN_HTTP_ENV}=1 if the network is yours "
                "(a tunnel, a private link).",
                field=URL_ENV,
            )
        token, source = _token(env)
        api = url if url.endswith(ADMIN_PATH) else url + ADMIN_PATH
        return cls(url.removesuffix(ADMIN_PATH), api, token, source, _verify(env))


def _on(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def default_token_file(env: Mapping[str, str]) -> Path:
    config = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "modelyard" / "token"


def _token(env: Mapping[str, str]) -> tuple[str, str]:
    """The token and where it came from: MODELYARD_TOKEN, MODELYARD_TOKEN_FILE, the default
    file."""
    direct = env.get(TOKEN_ENV, "").strip()
    if direct:
        return direct, TOKEN_ENV
    named = env.get(TOKEN_FILE_ENV, "").strip()
    path = Path(named).expanduser() if named else default_token_file(env)
    if named or path.is_file():
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the token file {path} ({TOKEN_FILE_ENV if named else 'default'}):"
                f" {exc.strerror or exc}",
                field=TOKEN_FILE_ENV,
            ) from None
        if not text:
            raise ConfigError(f"the token file {path} is empty", field=TOKEN_FILE_ENV)
        return text, str(path)
    raise ConfigError(
        f"{URL_ENV} is set but no token says who you are",
        hint=f"Set {TOKEN_ENV}, or put the token in a file named by {TOKEN_FILE_ENV} "
        f"(default {path}); an admin makes one with `modelyard tokens create`.",
        field=TOKEN_ENV,
    )


def _verify(env: Mapping[str, str]) -> ssl.SSLContext | bool:
    """Certificates are always checked; a private CA comes from the usual variables."""
    for name in (CA_ENV, "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        bundle = env.get(name, "").strip()
        if bundle:
            try:
                return ssl.create_default_context(cafile=bundle)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"cannot load the CA bundle {bundle} ({name}): {exc}", field=name
                ) from None
    return True


def segment(value: str | int) -> str:
    """One path segment, escaped (names cannot hold '/', but a typo might)."""
    return quote(str(value), safe="")


class AdminClient:
    """Requests to the admin API as the token's person; JSON in, JSON out, errors raised."""

    def __init__(self, remote: Remote, transport: httpx.BaseTransport | None = None) -> None:
        self.remote = remote
        self._http = httpx.Client(
            base_url=remote.api,
            headers={
                "Authorization": f"Bearer {remote.token}",
                "Accept": "application/json",
                "User-Agent": f"modelyard-cli/{modelyard.__version__}",
            },
            verify=remote.verify,
            timeout=TIMEOUT,
            follow_redirects=False,  # a redirect must not carry the token elsewhere
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def get(self, path: str, **params: Any) -> Any:
        return self.send("GET", path, params=params)

    def send(
        self, method: str, path: str, *, body: Any = None, params: Mapping[str, Any] | None = None
    ) -> Any:
        query = {k: _param(v) for k, v in (params or {}).items() if v is not None}
        try:
            response = self._http.request(method, path, json=body, params=query)
        except httpx.ConnectError as exc:
            raise _unreachable(self.remote, exc) from None
        except httpx.TimeoutException:
            raise ModelyardError(
                f"the server at {self.remote.url} did not answer {method} {path} in time",
                hint="Retry; if it keeps happening, check the server's load and its log.",
            ) from None
        except httpx.HTTPError as exc:
            raise ModelyardError(
                f"cannot talk to the server at {self.remote.url}: {exc}",
                hint=f"Check {URL_ENV}.",
            ) from None
        if response.is_success:
            return response.json() if response.content else None
        raise error_of(response, self.remote, f"{method} {path}")


def _param(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def _unreachable(remote: Remote, exc: httpx.ConnectError) -> ModelyardError:
    reason = str(exc) or type(exc).__name__
    if "CERTIFICATE_VERIFY_FAILED" in reason or "certificate" in reason.lower():
        return ConfigError(
            f"the TLS certificate of {remote.url} is not trusted: {reason}",
            hint=f"If the server uses a private CA, set {CA_ENV} to its certificates (PEM).",
        )
    return ModelyardError(
        f"cannot reach the modelyard server at {remote.url}: {reason}",
        hint=f"Check {URL_ENV} and that `modelyard serve` runs there.",
    )


# -- errors --------------------------------------------------------------------------------

_BY_STATUS: Mapping[int, type[ModelyardError]] = {
    400: ConfigError,
    401: AuthError,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    422: ConfigError,
}


def _classes(root: type[ModelyardError]) -> dict[str, type[ModelyardError]]:
    found: dict[str, type[ModelyardError]] = {}
    for cls in root.__subclasses__():
        found.update(_classes(cls))
        found.setdefault(cls.code, cls)
    return found


_BY_CODE: Mapping[str, type[ModelyardError]] = {
    **_classes(ModelyardError),
    ModelyardError.code: ModelyardError,
    "invalid_request": ConfigError,  # the API's refusal of a body or parameter
}


def error_of(response: httpx.Response, remote: Remote, request: str) -> ModelyardError:
    """The error an answer means, as the same class the store would have raised here."""
    try:
        detail = response.json()["error"]
        message, code = str(detail["message"]), detail.get("code")
    except (ValueError, KeyError, TypeError):
        return ModelyardError(
            f"the server at {remote.url} answered {response.status_code} to {request}, "
            "not an admin API answer",
            hint=f"Check that {URL_ENV} is a modelyard server's base URL.",
        )
    status = response.status_code
    if status == 404 and code in (None, "unknown_route"):  # no route: not ours, no admin API
        return ConfigError(
            f"the server at {remote.url} has no admin API route for {request} ({message})",
            hint="Is it `modelyard serve` of this version, with the admin API on "
            "(on 127.0.0.1, or with TLS, or --admin)?",
        )
    cls = _BY_CODE.get(code) if isinstance(code, str) else None
    if cls is None:
        cls = _BY_STATUS.get(status, ModelyardError)
    if status == 401:
        message = f"{remote.url} refused the token from {remote.token_source}: {message}"
    return _make(cls, message)


def _make(cls: type[ModelyardError], message: str) -> ModelyardError:
    """``cls`` with the server's line as its message (the hint is already in it)."""
    for candidate in cls.__mro__:
        if isinstance(candidate, type) and issubclass(candidate, ModelyardError):
            try:
                return candidate(message, hint="")
            except TypeError:  # a class that needs more (RateLimited, UnsafeArtifact)
                continue
    return ModelyardError(message, hint="")


__all__ = [
    "ADMIN_PATH",
    "AdminClient",
    "Remote",
    "error_of",
    "remote_url",
    "segment",
]
