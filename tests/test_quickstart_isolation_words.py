"""The quickstart's line about its cross-tenant probe says what the server does with the
refusal: the caller's record, under no endpoint, not in the other tenant's records."""

from __future__ import annotations

import time
from pathlib import Path

from modelyard.access import create_api_key
from modelyard.cli._quickstart import isolation_line
from modelyard.quickstart import PLANS, _isolation_enforced
from modelyard.serving import BackgroundServer, EchoEngine, create_app
from modelyard.store import Store
from worlds import two_tenant_world


def test_the_line_names_the_caller_and_no_endpoint() -> None:
    line = isolation_line(True)
    assert "recorded there" not in line
    assert (
        f"{PLANS[0].tenant}'s key on {PLANS[1].endpoint}: 404; the refusal is recorded as "
        f"{PLANS[0].tenant}'s, under no endpoint, not in {PLANS[1].endpoint}'s records"
    ) in line
    assert "BROKEN" in isolation_line(False)


def test_the_probe_is_recorded_as_the_line_says(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path}/s.db") as store:
        two_tenant_world(store, versions=1)
        acme = create_api_key(store, "acme")[1]
        with BackgroundServer(create_app(store, EchoEngine(), refresh_seconds=0.1)) as server:
            assert _isolation_enforced(server.base_url, acme, "globex-support")
        deadline = time.monotonic() + 5
        while not (mine := store.list_inference_records(tenant="acme")):
            assert time.monotonic() < deadline, "the refusal was never recorded"
            time.sleep(0.05)
        assert [(r.endpoint_name, r.status, r.http_status) for r in mine] == [("", "refused", 404)]
        assert store.count_inference_records(endpoint="globex-support") == 0
