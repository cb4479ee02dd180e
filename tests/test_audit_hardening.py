"""The audit chain's and the tokens' review: payloads and names are shown as typed, never
read as Rich markup; a token name the CLI refuses is refused by the store too; a key file
other users can read is reported; a payload key must be a string (``1`` and ``"1"`` would
hash alike)."""

from __future__ import annotations

import io
import json
import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rich.console import Console

from clihelp import modelyard
from modelyard.audit import AuditEvent, AuditKeySource, create_key_file, normalize_payload
from modelyard.cli._audit_table import render_events
from modelyard.errors import ConfigError
from modelyard.store import Store

MARKUP_PAYLOAD = {"[b]k": "[red]x[/red]", "note": "[bold]loud[/bold] [/]"}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    assert modelyard("init", home=home).code == 0
    return home


@pytest.fixture
def home_store(home: Path) -> Iterator[Store]:
    url = f"sqlite:///{home / 'store.db'}"
    with Store.open(url, audit_key=AuditKeySource(key_file=home / "audit.key")) as store:
        yield store


# -- audit log: user data is text, never markup --------------------------------------------


def _event(actor: str = "[bold]eve", subject: str = "[i]model[/i]") -> AuditEvent:
    return AuditEvent(
        seq=7, time=datetime(2026, 1, 31, 12, tzinfo=UTC), actor=actor, action="test.markup",
        subject=subject, payload=MARKUP_PAYLOAD, prev_hash="0" * 64, hash="a" * 64,
    )  # fmt: skip


@pytest.mark.parametrize("width", [200, 80])
def test_the_rendered_log_shows_markup_in_user_data_as_typed_on_any_console(width: int) -> None:
    """The table is printed by a console with markup on (Rich's default): the cells are
    text, so no caller has to remember to switch markup off."""
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(render_events([_event()], width))
    shown = out.getvalue()
    assert "[bold]eve" in shown and "[i]model[/i]" in shown
    assert '[b]k: "[red]x[/red]"' in shown
    assert '"[bold]loud[/bold] [/]"' in shown


def test_a_payload_key_with_a_control_character_is_shown_escaped() -> None:
    event = AuditEvent(
        seq=1, time=datetime(2026, 1, 31, tzinfo=UTC), actor="ops", action="test.key",
        subject="s", payload={"a\x1b[2Jb": 1}, prev_hash="0" * 64, hash="a" * 64,
    )  # fmt: skip
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(render_events([event], 200))
    assert "\x1b" not in out.getvalue() and "a\\x1b[2Jb: 1" in out.getvalue()


@pytest.mark.parametrize("columns", ["200", "80"])
def test_audit_log_prints_markup_in_payloads_and_actors_as_typed(home: Path, columns: str) -> None:
    url = f"sqlite:///{home / 'store.db'}"
    key = AuditKeySource(key_file=home / "audit.key")
    with Store.open(url, audit_key=key) as store:
        store.add_actor("[bold]eve", "admin")
    with Store.open(url, actor="[bold]eve", audit_key=key) as eve:
        eve.record_audit_event("test.markup", "[i]model[/i]", MARKUP_PAYLOAD)
    log = modelyard("audit", "log", "--action", "test.*", home=home, env={"COLUMNS": columns})
    assert log.code == 0, log.err
    assert "[bold]eve" in log.out and "[i]model[/i]" in log.out
    assert '[b]k: "[red]x[/red]"' in log.out and "[/]" in log.out


# -- token names: one rule, in the store ----------------------------------------------------


@pytest.mark.parametrize("bad", ["x\x1b[31mred", "two\nlines", "tab\there", "n" * 201])
def test_the_store_refuses_a_token_name_the_cli_refuses(home_store: Store, bad: str) -> None:
    """The admin API and the CLI write tokens through the store: it, not only the CLI,
    refuses a name that would write escape sequences to whoever lists the tokens."""
    with pytest.raises(ConfigError) as info:
        home_store.create_actor_token(
            "t" * 16, actor=home_store.actor, token_hash="ab" * 32, scopes=["read"],
            expires_at=None, name=bad,
        )  # fmt: skip
    assert info.value.context["field"] == "name"
    assert "invalid token name" in info.value.message
    assert "\x1b" not in info.value.message and "\n" not in info.value.message
    assert home_store.list_actor_tokens(None) == []


def test_the_store_takes_a_printable_token_name(home_store: Store) -> None:
    token = home_store.create_actor_token(
        "t" * 16, actor=home_store.actor, token_hash="ab" * 32, scopes=["read"],
        expires_at=None, name="console on my laptop: [b]é",
    )  # fmt: skip
    assert token.name == "console on my laptop: [b]é"


def test_the_cli_still_names_its_flag_for_a_bad_token_name(home: Path) -> None:
    refused = modelyard("tokens", "create", "--name", "two\nlines", home=home)
    assert refused.code == 2 and "Traceback" not in refused.err
    assert refused.err.startswith("error: invalid --name two\\nlines: "), refused.err


# -- the key file's mode --------------------------------------------------------------------

posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


@posix_only
def test_a_key_file_others_can_read_is_reported_on_stderr(home: Path) -> None:
    key_file = home / "audit.key"
    key_file.chmod(0o644)
    verified = modelyard("audit", "verify", home=home)
    assert verified.code == 0, verified.err
    assert f"audit key file {key_file} has mode 0644" in verified.err
    assert f"chmod 600 {key_file}" in verified.err
    key_file.chmod(0o600)
    quiet = modelyard("audit", "verify", home=home)
    assert quiet.code == 0 and "mode" not in quiet.err, quiet.err


@posix_only
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_a_key_file_open_to_group_or_others_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int
) -> None:
    key_file = tmp_path / "audit.key"
    assert create_key_file(key_file)
    key_file.chmod(mode)
    source = AuditKeySource(key_file=key_file)
    with caplog.at_level("WARNING", logger="modelyard.audit"):
        source.load(create=False)
        source.load(create=False)
    warned = [r.getMessage() for r in caplog.records if "chmod 600" in r.getMessage()]
    assert len(warned) == 1 and f"mode {mode:04o}" in warned[0] and str(key_file) in warned[0]


@posix_only
def test_a_created_key_file_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        assert create_key_file(tmp_path / "keys" / "audit.key")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "keys" / "audit.key").stat().st_mode) == 0o600


# -- payload keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "where"),
    [
        ({1: "a", "1": "b"}, "payload"),
        ({"gates": {2: "x"}}, "payload.gates"),
        ({"list": [{True: 1}]}, "payload.list[0]"),
        ({None: 1}, "payload"),
    ],
)
def test_a_payload_key_that_is_not_a_string_is_refused(payload: object, where: str) -> None:
    """``{1: "a", "1": "b"}`` became ``{"1": "b"}``: two payloads hashed alike, one value
    silently dropped."""
    with pytest.raises(ConfigError) as info:
        normalize_payload(payload)  # type: ignore[arg-type]
    assert f"audit payload field {where} has a key of type" in info.value.message
    assert "keys must be strings" in info.value.message


def test_the_store_refuses_a_non_string_payload_key_and_the_chain_stays_whole(
    home_store: Store,
) -> None:
    home_store.record_audit_event("test.ok", "s", {"1": "b", "n": {"k": [1, {"x": None}]}})
    before = home_store.list_audit_events(limit=None)
    with pytest.raises(ConfigError, match="keys must be strings"):
        home_store.record_audit_event("test.bad", "s", {1: "a"})  # type: ignore[dict-item]
    assert home_store.list_audit_events(limit=None) == before
    assert home_store.verify_audit_chain().ok
    assert json.loads(json.dumps(before[0].payload)) == {"1": "b", "n": {"k": [1, {"x": None}]}}
