"""``/metrics`` passes ``promtool check metrics`` (Prometheus' own linter), after real traffic.

promtool comes from the Debian package ``prometheus`` (``.ci/run`` installs it).
Without it the test is skipped locally and fails under CI.
"""

from __future__ import annotations

import io
import json
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import openai
import pytest

from modelyard.access import create_api_key
from modelyard.artifacts import LocalArtifactStore
from modelyard.serving import (
    BackgroundServer,
    BatchSettings,
    EchoEngine,
    EngineError,
    SamplingParams,
    TokenStream,
    create_app,
)
from modelyard.store import DriftResult, ModelVersion, Store


class ObservedEcho(EchoEngine):
    """EchoEngine that also reports adapter cache events and a batch, as TransformersEngine does,
    so that every metric family has samples; versions tagged ``broken`` fail to load."""

    def stream(self, version: ModelVersion, prompt: str, params: SamplingParams) -> TokenStream:
        broken = bool(version.tags.get("broken"))
        events = ("miss", "load_failure") if broken else ("miss", "load", "hit", "eviction")
        for observer in self._observer_list():
            for event in events:
                observer.adapter_event(event, version.ref)
            observer.batch_ran(1)
        if broken:
            raise EngineError(f"cannot load the adapter of {version.ref}", version=version.ref)
        return super().stream(version, prompt, params)


@pytest.fixture
def metrics_text(tmp_path: Path) -> Iterator[str]:
    """``/metrics`` after answered requests, a refused one, feedback and a stream."""
    with Store.open(f"sqlite:///{tmp_path / 's.db'}") as store:
        store.register_base_model("tiny", "/models/tiny", {})
        store.create_tenant("acme")
        store.create_registered_model("bot", tenant="acme")
        for _ in range(3):  # 2: a shadow; 3: cannot load, so its requests fall back to 1
            store.create_model_version(
                "bot",
                kind="adapter",
                artifact_digest="00" * 32,
                base_model="tiny",
                run_id=None,
                lineage={"prompt_template": "alpaca"},
                metrics={},
            )
        store.set_version_tags("bot:3", {"broken": "yes"})
        store.set_token_price("tiny", input_per_1k=1.0, output_per_1k=2.0)  # spend is counted
        store.create_endpoint("support", model_ref="bot:1", tenant="acme")
        store.set_traffic("support", {1: 1, 3: 99})
        store.set_shadow("support", 2, 1.0)
        now = datetime.now(UTC)
        store.add_drift_results(  # the latest drift run is exported with the server's metrics
            [DriftResult("run-1", now, "support", "bot:1", "acme", "eval", now - timedelta(hours=1),
                         now, "prompt_chars", "psi", 0.31, 0.1, True, "drift", 500, 400)],
            store.get_model_version("bot", 1).id,
        )  # fmt: skip
        _, key = create_api_key(store, "acme", scopes=("infer", "feedback"))
        _, limited = create_api_key(store, "acme", rpm_limit=1)
        artifacts = LocalArtifactStore(tmp_path / "artifacts")  # the Files and Batch APIs
        quick = BatchSettings(poll_s=0.05, commit_s=0.05)
        app = create_app(store, ObservedEcho(), refresh_seconds=0.1, artifacts=artifacts,
                         batches=quick)  # fmt: skip
        with (
            BackgroundServer(app) as server,
            openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0) as client,
        ):
            answer = client.completions.create(model="support", prompt="the vpn is down")
            client.chat.completions.create(
                model="support", messages=[{"role": "user", "content": "reset my password"}]
            )
            for _ in client.chat.completions.create(
                model="support", messages=[{"role": "user", "content": "a b c"}], stream=True
            ):
                pass
            with pytest.raises(openai.NotFoundError):
                client.completions.create(model="no-such-endpoint", prompt="x")
            with openai.OpenAI(
                base_url=server.base_url + "/v1", api_key=limited, max_retries=0
            ) as slow:
                slow.completions.create(model="support", prompt="one")
                with pytest.raises(openai.RateLimitError):
                    slow.completions.create(model="support", prompt="two")
            feedback = httpx.post(
                server.base_url + "/v1/feedback",
                headers={"Authorization": f"Bearer {key}"},
                json={"request_id": answer.id, "thumbs": "up"},
            )
            assert feedback.status_code == 200, feedback.text
            line = {"custom_id": "c1", "method": "POST", "url": "/v1/completions",
                    "body": {"model": "support", "prompt": "batched"}}  # fmt: skip
            uploaded = client.files.create(
                file=("in.jsonl", io.BytesIO(json.dumps(line).encode() + b"\n")), purpose="batch"
            )
            batch = client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/completions", completion_window="24h"
            )
            deadline = time.monotonic() + 30
            while client.batches.retrieve(batch.id).status != "completed":
                assert time.monotonic() < deadline, client.batches.retrieve(batch.id)
                time.sleep(0.05)
            app.state.plane.budgets.flush()  # the charges, counted on the guard's own thread
            yield httpx.get(server.base_url + "/metrics").text


def test_metrics_pass_promtool_check(promtool: str, metrics_text: str) -> None:
    # the scrape holds real series, so the check is not of an empty page
    assert 'modelyard_requests_total{endpoint="support"' in metrics_text
    assert "modelyard_request_latency_seconds_bucket" in metrics_text
    assert 'modelyard_drift_detected{endpoint="support",feature="prompt_chars"' in metrics_text
    families = {line.split()[2] for line in metrics_text.splitlines() if line.startswith("# TYPE ")}
    for family in families:  # every family has samples, so every one is checked
        assert f"\n{family}" in metrics_text, family
    assert "modelyard_adapter_evictions_total" in metrics_text
    assert "modelyard_rate_limited_total" in metrics_text
    assert 'modelyard_spend_total{endpoint="support",key=' in metrics_text
    check = subprocess.run(
        [promtool, "check", "metrics"],
        input=metrics_text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.strip() == "" and check.stderr.strip() == "", check.stdout + check.stderr
