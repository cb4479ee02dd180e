"""The world of the batch tests (``test_batch``, ``test_batch_ray``): the docs' names.

Tenant ``acme-insurance`` (storage policy ``redacted``) owns ``acme-claims``,
one LoRA adapter on a tiny base, served by ``claims-router`` at
``acme-claims@champion``; tenant ``globex`` has an endpoint of its own. The
world lives in a home directory (``MODELYARD_HOME``) that the CLI opens.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from modelyard.access import create_api_key
from modelyard.artifacts import LocalArtifactStore
from modelyard.base import create_tiny_base
from modelyard.cli import main
from modelyard.data import DOMAINS, domain_corpus
from modelyard.store import Store
from tinymodels import QUICK_BASE, random_adapter, register_adapter
from worlds import gate_metrics, home_store

DOC = (Path(__file__).resolve().parents[1] / "docs" / "batch.md").read_text()


@dataclass
class World:
    home: Path
    key: str  # acme-insurance, scope infer
    feedback_key: str  # acme-insurance, scope feedback only
    globex_key: str

    def store(self) -> Store:
        return home_store(self.home)

    def records(self, job_id: str) -> list[dict[str, Any]]:
        with self.store() as store:
            return store.query_records(job_id=job_id, limit=None)


def build_world(tmp: Path) -> World:
    home = tmp / "home"
    home.mkdir()
    base = create_tiny_base(domain_corpus(DOMAINS, 300, seed=0), tmp / "base", **QUICK_BASE).path
    artifacts = LocalArtifactStore(home / "artifacts")
    with home_store(home) as store:
        store.register_base_model("tiny", str(base), {})
        store.create_tenant("acme-insurance", storage_policy="redacted")
        store.create_registered_model("acme-claims", tenant="acme-insurance")
        adapter = random_adapter(base, tmp / "adapter", seed=1)
        store.create_model_version(
            "acme-claims", kind="adapter", artifact_digest=artifacts.put_dir(adapter,
            kind="adapter").digest, base_model="tiny", run_id=None,
            lineage={"prompt_template": "alpaca"}, metrics=gate_metrics(True),
        )  # fmt: skip
        store.set_alias("acme-claims", "champion", 1)
        store.create_endpoint("claims-router", model_ref="acme-claims@champion",
                              tenant="acme-insurance")  # fmt: skip
        store.create_tenant("globex")
        store.create_registered_model("globex-bot", tenant="globex")
        register_adapter(store, artifacts, adapter, model="globex-bot")
        store.create_endpoint("globex-support", model_ref="globex-bot:1", tenant="globex")
        _, key = create_api_key(store, "acme-insurance", scopes=("infer",))
        _, feedback_key = create_api_key(store, "acme-insurance", scopes=("feedback",))
        _, globex_key = create_api_key(store, "globex", scopes=("infer",))
    return World(home, key, feedback_key, globex_key)


def enter(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Work in ``tmp_path`` with the world's home and acme-insurance's key in the
    environment, as a user of the docs would."""
    monkeypatch.setenv("MODELYARD_HOME", str(world.home))
    monkeypatch.setenv("MODELYARD_API_KEY", world.key)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def batch(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``modelyard batch run ARGS`` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(["batch", "run", *args])
    out, err = capsys.readouterr()
    return code, out, err


def docs_command(block: str) -> list[str]:
    """The arguments of the ``modelyard batch run`` line of a bash block (continuations
    joined)."""
    line = block.replace("\\\n", " ")
    (command,) = [c for c in line.splitlines() if c.startswith("modelyard batch run")]
    return shlex.split(command)[1:]
