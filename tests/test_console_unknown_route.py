"""A console or admin API path that does not exist answers the error body
(``{"error": {"message", "type", "code", "param"}}``) as every other refusal there, not
FastAPI's ``{"detail": "Not Found"}``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelyard.access import PeopleAuthenticator
from modelyard.admin import ADMIN_PREFIX, create_admin_app
from modelyard.console import CONSOLE_PREFIX, ConsoleSessions, create_console_app
from modelyard.serving import BackgroundServer, EchoEngine, create_app
from modelyard.store import Store


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        sessions = ConsoleSessions(PeopleAuthenticator(store))
        mounts = {
            ADMIN_PREFIX: create_admin_app(store, PeopleAuthenticator(store), sessions),
            CONSOLE_PREFIX: create_console_app(store, sessions),
        }
        with BackgroundServer(create_app(store, EchoEngine(), mounts=mounts)) as server:
            yield server.base_url


def test_an_unknown_console_api_path_is_a_404_in_the_error_shape(url: str) -> None:
    r = httpx.get(f"{url}{CONSOLE_PREFIX}/api/nosuch", timeout=30)
    assert r.status_code == 404
    assert r.json() == {
        "error": {
            "message": f"no console API route GET {CONSOLE_PREFIX}/api/nosuch",
            "type": "invalid_request_error",
            "code": "unknown_route",
            "param": None,
        }
    }


def test_a_method_the_route_does_not_take_is_a_405_in_the_error_shape(url: str) -> None:
    r = httpx.delete(f"{url}{CONSOLE_PREFIX}/api/login", timeout=30)
    assert r.status_code == 405
    error = r.json()["error"]
    assert error["code"] == "method_not_allowed" and "DELETE" in error["message"]
    assert "detail" not in r.json()


def test_an_unknown_admin_api_path_names_the_route_and_where_they_are_listed(url: str) -> None:
    r = httpx.get(f"{url}{ADMIN_PREFIX}/nosuch", timeout=30)
    assert r.status_code == 404
    error = r.json()["error"]
    assert error["code"] == "unknown_route"
    assert error["message"] == (
        f"no admin API route GET {ADMIN_PREFIX}/nosuch ({ADMIN_PREFIX}/openapi.json lists them)"
    )
    r = httpx.delete(f"{url}{ADMIN_PREFIX}/openapi.json", timeout=30)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
