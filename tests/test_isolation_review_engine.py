"""A security review of what a model request's error tells a tenant (the official ``openai``
SDK against the transformers engine on a tiny base): a version whose files the artifact
store cannot give (gone from a replica's own disk, a store unreachable) answered the
tenant with the store's error whole, the server's artifacts root and the setting that
names it included; a base model that cannot load, the place it was registered at. The
answer now names the version only; the server's log has the rest.
"""

from __future__ import annotations

import shutil
from contextlib import ExitStack
from pathlib import Path

import openai
import pytest

from modelyard.access import create_api_key
from modelyard.artifacts import ArtifactStore
from modelyard.serving import BackgroundServer, TransformersEngine, create_app
from modelyard.store import Store
from tinymodels import rambler_server
from worlds import fake_world


def test_a_version_whose_files_are_gone_names_no_server_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with rambler_server(tmp_path) as (url, _store, key):
        shutil.rmtree(tmp_path / "artifacts" / "sha256")  # before its first request loads it
        client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
        with client, pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(
                model="rambler", messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
    said = info.value.response.text
    assert info.value.status_code == 503
    assert "cannot read the files of bot:1" in said
    assert str(tmp_path) not in said and "MODELYARD_ARTIFACTS" not in said
    assert str(tmp_path / "artifacts") in caplog.text  # the operator's log has it


def test_a_base_model_that_cannot_load_names_no_server_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Store.open(f"sqlite:///{tmp_path}/s.db") as store, ExitStack() as stack:
        fake_world(store, tenant="acme", model="bot", endpoint="support", versions=1)
        where = store.get_base_model("tiny").source  # registered there; not on this server
        assert not Path(where).exists()
        engine = TransformersEngine(ArtifactStore(tmp_path / "artifacts"), store=store)
        stack.callback(engine.close)
        app = create_app(store, engine, refresh_seconds=0.2, heartbeat_s=None)
        server = stack.enter_context(BackgroundServer(app))
        key = create_api_key(store, "acme")[1]
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0)
        with client, pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(
                model="support", messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
    said = info.value.response.text
    assert info.value.status_code == 503 and "cannot load the base model" in said
    assert where not in said
    assert where in caplog.text  # the operator's log has it
