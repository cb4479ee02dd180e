"""A security review's findings, each pinned by what a caller sees: bodies that cannot be
parsed get a 400 that says why (not "it must be UTF-8 JSON" for valid UTF-8 JSON); a key
or token asked to live less than a second is refused, never made to live forever."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from clihelp import modelyard
from modelyard.access import create_api_key
from modelyard.serving import BackgroundServer, EchoEngine, create_app
from modelyard.store import Store
from worlds import two_tenant_world


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(the server's URL, an acme key)."""
    with Store.open(f"sqlite:///{tmp_path}/s.db") as store:
        two_tenant_world(store, versions=1, template="text")
        _, key = create_api_key(store, "acme")
        app = create_app(store, EchoEngine(), refresh_seconds=60, heartbeat_s=None)
        with BackgroundServer(app) as server:
            yield server.base_url, key


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"model": "acme-support", "prompt": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
         "its JSON is nested too deeply"),
        (b'{"model": "acme-support", "prompt": "a", "max_tokens": ' + b"9" * 5000 + b"}",
         "it holds an integer too long to read (more than 4300 digits)"),
    ],
    ids=["nested", "long-integer"],
)  # fmt: skip
def test_a_body_that_cannot_be_parsed_is_a_400_saying_why(
    world: tuple[str, str], body: bytes, why: str
) -> None:
    url, key = world
    r = httpx.post(
        url + "/v1/completions",
        content=body,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["message"].startswith(f"the request body could not be read: {why};")
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_request"


def test_a_key_or_token_with_a_lifetime_under_a_second_is_refused_not_eternal(
    tmp_path: Path,
) -> None:
    """``--expires 0.0000001s`` parses to a zero timedelta, which was read as "no expiry":
    the key or token was created and never expired."""
    home = tmp_path / "home"
    assert modelyard("tenants", "create", "acme", home=home).code == 0
    key = modelyard("keys", "create", "--tenant", "acme", "--expires", "0.0000001s", home=home)
    assert key.code == 2, key.out
    assert "a lifetime of 0 s is too short" in key.err and "myk_" not in key.out
    token = modelyard("tokens", "create", "--expires", "0.0000001s", home=home)
    assert token.code == 2, token.out
    assert "a lifetime of 0 s is too short" in token.err and "myp_" not in token.out
    assert modelyard("keys", "list", "--json", home=home).out.strip() == "[]"
    assert modelyard("tokens", "list", "--json", home=home).out.strip() == "[]"
    made = modelyard("keys", "create", "--tenant", "acme", "--expires", "1s", home=home)
    assert made.code == 0, made.err


def test_tokens_options_that_contradict_each_other_are_refused(tmp_path: Path) -> None:
    """``--expires 1h --no-expiry`` made a token that never expires (the lifetime asked for
    was silently dropped); ``--for X --all`` listed everyone's tokens."""
    home = tmp_path / "home"
    both = modelyard("tokens", "create", "--expires", "1h", "--no-expiry", home=home)
    assert both.code == 2 and "--expires and --no-expiry contradict" in both.err
    assert "myp_" not in both.out
    listed = modelyard("tokens", "list", "--for", "bob", "--all", home=home)
    assert listed.code == 2 and "--for and --all contradict" in listed.err
    made = modelyard("tokens", "create", "--json", home=home)
    assert made.code == 0, made.err
    assert json.loads(made.out)["expires_at"] is not None  # 90 days by default
