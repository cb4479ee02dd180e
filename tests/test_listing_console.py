"""The console's models page reads the registry a page at a time (100 models) and shows
more on request, with each model's latest version's gates (Playwright in Debian's
chromium, as tests/test_console.py; skipped without it, except under CI=true)."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Browser, expect

from modelyard.access import PeopleAuthenticator, create_actor_token
from modelyard.admin import ADMIN_PREFIX, create_admin_app
from modelyard.audit import AccessPolicy
from modelyard.console import CONSOLE_PREFIX, ConsoleSessions, create_console_app
from modelyard.serving import BackgroundServer, EchoEngine, create_app
from modelyard.store import Store
from worlds import gate_metrics

KEY = "listing-console-test-key-listing-x"
MODELS = 205  # three pages of 100


def test_the_models_page_shows_a_page_and_more_on_request(tmp_path: Path, browser: Browser) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with Store.open(url, actor="ops", audit_key=KEY,
                    policy=AccessPolicy(bootstrap_admin="ops")) as ops:  # fmt: skip
        ops.add_actor("ops", "admin")
        ops.register_base_model("tiny", "/models/tiny", {"model.safetensors": "ab" * 32})
        for i in range(MODELS):
            ops.create_registered_model(f"m{i:03d}")
        for name, passed in (("m000", True), ("m150", False), ("m204", True)):
            ops.create_model_version(
                name, kind="adapter", artifact_digest="cd" * 32, base_model="tiny",
                run_id=None, lineage={}, metrics=gate_metrics(passed),
            )  # fmt: skip
        token = create_actor_token(ops, "ops")[1]
        people = PeopleAuthenticator(ops)
        sessions = ConsoleSessions(people, secure=False)
        mounts = {
            ADMIN_PREFIX: create_admin_app(ops, people, sessions),
            CONSOLE_PREFIX: create_console_app(ops, sessions),
        }
        app = create_app(ops, EchoEngine(), heartbeat_s=None, mounts=mounts)
        with BackgroundServer(app) as server:
            context = browser.new_context(viewport={"width": 1280, "height": 860})
            context.set_default_timeout(15_000)
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{server.base_url}{CONSOLE_PREFIX}/")
            expect(page).to_have_url(re.compile(r"/console/login$"))
            page.fill("#token", token)
            page.click("#submit")
            expect(page.get_by_test_id("who")).to_contain_text("ops · admin")
            page.goto(f"{server.base_url}{CONSOLE_PREFIX}/#/models")
            expect(page.locator("main[aria-busy=false]")).to_be_visible()
            rows = page.get_by_test_id("models").locator("tbody tr")
            note, more = page.get_by_test_id("models-note"), page.get_by_test_id("models-more")
            expect(rows).to_have_count(100)
            expect(note).to_have_text("the first 100 models by name")
            first = rows.nth(0)
            expect(first).to_contain_text("m000")
            expect(first).to_contain_text("passed")
            more.click()
            expect(rows).to_have_count(200)
            expect(rows.nth(150)).to_contain_text("failed")
            more.click()
            expect(rows).to_have_count(MODELS)
            expect(note).to_have_text(f"{MODELS} models")
            expect(more).to_be_hidden()
            expect(rows.nth(MODELS - 1)).to_contain_text("m204")
            names = rows.locator("td:first-child").all_inner_texts()
            assert names == [f"m{i:03d}" for i in range(MODELS)]  # no gap, no repeat
            context.close()
            assert errors == []
