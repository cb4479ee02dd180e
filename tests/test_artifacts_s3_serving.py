"""A fleet's view of the S3 artifact store: an adapter imported through the CLI into
``s3://…`` is served by another server from the bucket (its own cache), and an object
altered in the bucket is refused and audited, never served.

moto's S3 server stands in for S3 (conftest ``s3_url``); MinIO is not installable here.
"""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import openai
import pytest
from typer.testing import CliRunner

from clihelp import modelyard
from modelyard.access import create_api_key
from modelyard.artifacts import artifacts_from_settings
from modelyard.base import create_tiny_base
from modelyard.cli import app
from modelyard.data import DOMAINS, domain_corpus
from modelyard.serving import BackgroundServer, TransformersEngine, create_app
from modelyard.settings import load_settings
from modelyard.store import Store
from tinymodels import QUICK_BASE, WEIGHTS, random_adapter


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny base and a LoRA adapter on it."""
    root = tmp_path_factory.mktemp("s3models")
    base = create_tiny_base(domain_corpus(DOMAINS, 120, seed=0), root / "base", **QUICK_BASE).path
    return base, random_adapter(base, root / "adapter", seed=3)


def _answer(store: Store, cache: Path, key: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """One completion from a new server whose artifacts come from the settings (S3, ``cache``);
    returns the version that answered."""
    monkeypatch.setenv("MODELYARD_ARTIFACTS_CACHE", str(cache))
    engine = TransformersEngine(artifacts_from_settings(load_settings()), store=store)
    app = create_app(store, engine, refresh_seconds=0.1, heartbeat_s=None)
    try:
        with (
            BackgroundServer(app) as server,
            openai.OpenAI(
                base_url=server.base_url + "/v1", api_key=key, max_retries=0, timeout=60
            ) as client,
        ):
            raw = client.completions.with_raw_response.create(
                model="support", prompt="route this ticket", max_tokens=2, temperature=0
            )
            return str(raw.headers["x-modelyard-version"])
    finally:
        engine.close()


@pytest.mark.slow
def test_import_into_s3_then_serve_from_another_cache(
    s3_url: str, models: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, adapter = models
    home = tmp_path / "home"
    env = {"MODELYARD_ARTIFACTS": s3_url}
    monkeypatch.setenv("MODELYARD_HOME", str(home))
    monkeypatch.setenv("MODELYARD_ARTIFACTS", s3_url)

    r = CliRunner().invoke(app, ["init", "--json"])  # in process: the import below is not
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["artifacts"] == s3_url
    r = CliRunner().invoke(app, ["info", "--json"])
    info = json.loads(r.stdout)
    assert (info["artifacts"], info["artifacts_kind"]) == (s3_url, "s3")
    assert info["artifacts_cache"] == str((home / "cache" / "artifacts").resolve())

    with Store.open(f"sqlite:///{home / 'store.db'}") as store:
        store.create_tenant("acme")
    r = modelyard(
        "registry", "import", str(adapter), "--name", "bot", "--base-model", str(base),
        "--tenant", "acme", "--json", home=home, env=env,
    )  # fmt: skip
    assert r.code == 0, r.err
    digest = json.loads(r.out)["version"]["artifact_digest"]
    bucket, _, prefix = s3_url.removeprefix("s3://").partition("/")
    weights = f"{prefix}/sha256/{digest[:2]}/{digest}/files/{WEIGHTS}"
    s3 = boto3.client("s3")
    assert s3.head_object(Bucket=bucket, Key=weights)["ContentLength"] > 0
    assert not (home / "artifacts").exists()  # nothing went to a local store

    with Store.open(f"sqlite:///{home / 'store.db'}") as store:
        store.create_endpoint("support", model_ref="bot:1", tenant="acme")
        _, key = create_api_key(store, "acme")

        # another server, with an empty cache of its own, serves it from the bucket
        assert _answer(store, tmp_path / "replica-1", key, monkeypatch) == "bot:1"
        assert (tmp_path / "replica-1" / "sha256" / digest[:2] / digest).is_dir()

        # the object is altered in the bucket: a new server refuses it, and says so in the audit
        data = bytearray(s3.get_object(Bucket=bucket, Key=weights)["Body"].read())
        data[-1] ^= 0xFF
        s3.put_object(Bucket=bucket, Key=weights, Body=bytes(data))
        with pytest.raises(openai.APIStatusError) as refused:
            _answer(store, tmp_path / "replica-2", key, monkeypatch)
        assert refused.value.status_code == 503, refused.value
        events = store.list_audit_events(action="artifact.verification_failed")
        assert [(e.subject, e.payload["digest"], e.payload["by"]) for e in events] == [
            ("bot:1", digest, "serve")
        ]
        assert not (tmp_path / "replica-2" / "sha256").exists()  # none of it was cached
