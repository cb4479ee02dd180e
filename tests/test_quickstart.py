"""`modelyard quickstart` end to end, as `make quickstart` runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clihelp import modelyard
from modelyard.store import Store


@pytest.mark.slow
def test_quickstart_trains_serves_and_records(tmp_path: Path) -> None:
    home = tmp_path / "home"
    r = modelyard("quickstart", "--requests", "4", "--json", home=home, timeout=900)
    assert r.code == 0, r.err[-3000:]
    result = json.loads(r.out)
    assert result["isolation_enforced"] is True
    assert {t["tenant"] for t in result["tenants"]} == {"acme-insurance", "globex-it"}
    for tenant in result["tenants"]:
        # The adapter must measurably beat its base on held-out rows.
        assert tenant["adapter_exact_match"] >= 0.9, tenant
        assert tenant["adapter_exact_match"] >= tenant["base_exact_match"] + 0.3, tenant
        assert tenant["api_requests"] == 4
    with Store.open(f"sqlite:///{home / 'store.db'}") as store:
        for tenant in result["tenants"]:
            records = store.list_inference_records(endpoint=tenant["endpoint"])
            ok = [rec for rec in records if rec.status == "ok"]
            assert len(ok) == 4
            assert {rec.tenant for rec in ok} == {tenant["tenant"]}
            assert {rec.version for rec in ok} == {tenant["version"]}
            version = store.resolve_model_ref(tenant["version"])
            assert version.lineage["dataset"]["digest"]
            assert version.lineage["base_model"]["weights"]
            assert "champion" in version.aliases
        assert (home / "artifacts").is_dir()
    _the_docs_examples_answer_as_shown(home)


def _the_docs_examples_answer_as_shown(home: Path) -> None:
    """getting-started.md's and serving.md's requests, sent to the quickstart's champion."""
    import os
    import re
    import socket
    import subprocess
    import sys
    import time

    import httpx
    import openai

    docs = Path(__file__).resolve().parents[1] / "docs"
    started = (docs / "getting-started.md").read_text(encoding="utf-8")
    block = re.search(r'"system", "content": "([^"]+)"\},\n\s+\{"role": "user", "content": '
                      r'"([^"]+)"\}\]\}\'.*?\n(\w+)\n```', started, re.S)  # fmt: skip
    assert block is not None, "the getting-started example and its answer"
    serving = (docs / "serving.md").read_text(encoding="utf-8")
    chat = re.search(r'"system", "content": "([^"]+)"\},\n\s+\{"role": "user", "content": '
                     r'"([^"]+)"\},.*?\n# \S+ (\w+)\n```', serving, re.S)  # fmt: skip
    assert chat is not None, "serving.md's chat example and its answer"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelyard", "serve", "--port", str(port), "--no-controller"],
        env={**env, "MODELYARD_HOME": str(home)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        created = modelyard("keys", "create", "--tenant", "acme-insurance", "--json", home=home)
        assert created.code == 0, created.err
        key = json.loads(created.out)["key"]
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "serve did not start"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key) as client:
            for system, user, answer in (block.groups(), chat.groups()):
                reply = client.chat.completions.create(
                    model="claims-router", temperature=0, max_tokens=8,
                    messages=[{"role": "system", "content": system},
                              {"role": "user", "content": user}],
                )  # fmt: skip
                assert reply.choices[0].message.content == answer, (user, reply)
    finally:
        proc.terminate()
        proc.wait(60)
