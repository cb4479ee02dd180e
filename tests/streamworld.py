"""The world of the stream consumer tests (``test_stream``, ``test_stream_nats``), named as
the quickstart's: tenant ``acme-insurance``'s endpoint ``claims-router`` serves
``acme-claims:1``, a version the echo engine answers (template ``text``: the answer is
the prompt's last words), and a key of the tenant with the ``infer`` scope."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

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
