"""The world of the stream consumer tests (``test_stream``, ``test_stream_nats``), named as
the quickstart's: tenant ``acme-insurance``'s endpoint ``claims-router`` serves
``acme-claims:1``, a version the echo engine answers (template ``text``: the answer is
the prompt's last words), and a key of the tenant with the ``infer`` scope."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelyard.access import create_api_key
from modelyard.cli import main
from modelyard.errors import EngineError
from modelyard.serving import EchoEngine, SamplingParams
from modelyard.store import ModelVersion, Store
from worlds import fake_world, home_store


@dataclass
class StreamWorld:
    home: Path
    key: str
    job: str  # the job id of the consumers' records

    def store(self) -> Store:
        return home_store(self.home)

    def records(self) -> dict[str, dict[str, Any]]:
        with self.store() as store:
            return {r["id"]: r for r in store.query_records(job_id=self.job, limit=None)}

    def consume(self, capsys: pytest.CaptureFixture[str], command: list[str]) -> dict[str, Any]:
        """``command`` (a ``stream run``) with ``--until-empty --json`` in this process, as
        the tenant's key: its summary."""
        os.environ["MODELYARD_HOME"] = str(self.home)
        os.environ["MODELYARD_API_KEY"] = self.key
        try:
            capsys.readouterr()
            code = main([*command, "--until-empty", "--json"])
            out, err = capsys.readouterr()
        finally:
            del os.environ["MODELYARD_HOME"], os.environ["MODELYARD_API_KEY"]
        assert code == 0, err
        summary: dict[str, Any] = json.loads(out)
        return summary

    def start(self, command: list[str]) -> subprocess.Popen[str]:
        """``command`` (a ``stream run``) in a process of its own, as the tenant's key."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
        env |= {"MODELYARD_HOME": str(self.home), "MODELYARD_API_KEY": self.key}
        return subprocess.Popen(
            [sys.executable, "-m", "modelyard", *command],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def forget_records(self) -> None:
        """Remove the job's records of earlier tests."""
        with self.store() as store:
            store.discard_job_records(self.job, list(self.records()))


def stream_world(home: Path, job: str) -> StreamWorld:
    home.mkdir()
    with home_store(home) as store:
        fake_world(store, tenant="acme-insurance", model="acme-claims",
                   endpoint="claims-router", template="text")  # fmt: skip
        _, key = create_api_key(store, "acme-insurance", scopes=("infer",))
    return StreamWorld(home, key, job)


class FailingOnBoom(EchoEngine):
    """The echo engine, failing (a 503 engine error) every prompt that says 'boom'."""

    def stream(self, version: ModelVersion, prompt: str, params: SamplingParams) -> Any:
        if "boom" in prompt:
            raise EngineError("the engine blew up")
        return super().stream(version, prompt, params)


def scrape(port: int) -> str:
    """The text of ``http://127.0.0.1:PORT/metrics``; empty while nothing answers there."""
    try:
        answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    except httpx.TransportError:
        return ""
    assert answer.status_code == 200, answer.text
    return answer.text


def samples(text: str) -> dict[str, float]:
    """The samples of a scrape: ``name{label="value",...}`` (labels sorted) -> value."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


def outcomes(metrics: dict[str, float]) -> dict[str, float]:
    """``modelyard_stream_messages_total`` by outcome."""
    prefix = 'modelyard_stream_messages_total{outcome="'
    return {k[len(prefix) : -2]: v for k, v in metrics.items() if k.startswith(prefix)}


def metrics_when(
    consumer: subprocess.Popen[str], port: int, settled: dict[str, float]
) -> tuple[str, dict[str, float]]:
    """The first scrape of ``consumer``'s metrics whose outcomes include ``settled`` (and
    nothing in flight): its text and samples."""
    deadline = time.monotonic() + 120
    while True:
        text = scrape(port)
        found = samples(text)
        counts = outcomes(found)
        if found.get("modelyard_stream_in_flight") == 0 and all(
            counts.get(k) == v for k, v in settled.items()
        ):
            return text, found
        assert consumer.poll() is None, consumer.communicate()
        assert time.monotonic() < deadline, f"not {settled} within 120 s: {counts}"
        time.sleep(0.1)


def promtool_accepts(text: str) -> None:
    """``promtool check metrics`` finds nothing wrong in ``text`` (when it is installed)."""
    promtool = shutil.which("promtool")
    if promtool:
        check = subprocess.run([promtool, "check", "metrics"], input=text, text=True,
                               capture_output=True, check=False)  # fmt: skip
        assert check.returncode == 0, check.stdout + check.stderr
