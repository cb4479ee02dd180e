"""The API on the real transformers engine, through the official openai client.

Streaming (chat and completions), client disconnects, templates per version
(the API answers an evaluation example as the evaluation did), adapter failures
and the engine's metrics. A tiny base (hidden 32, 2 layers) with two quickly
trained adapters (alpaca and chat format) and one tampered artifact.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelyard.access import create_api_key
from modelyard.artifacts import ArtifactStore
from modelyard.base import create_tiny_base, load_base
from modelyard.data import DOMAINS, domain_corpus, render_prompt, synthetic_domain, template_for
from modelyard.evaluation import evaluate_model, load_adapter
from modelyard.serving import BackgroundServer, TransformersEngine, create_app
from modelyard.store import InferenceRecord, Store
from modelyard.training import TrainSettings, train_model
from tinymodels import chatty_adapter
from waiting import until

QUICK_BASE = {"steps": 8, "batch_size": 4, "seq_len": 64, "hidden_size": 32, "vocab_size": 512}
QUICK_TRAIN = TrainSettings(max_steps=12, batch_size=4, learning_rate=0.05)
WEIGHTS = "adapter_model.safetensors"


@dataclass
class Served:
    store: Store
    artifacts: ArtifactStore
    url: str
    key: str
    base: Path
    adapters: dict[str, Path]  # data format (alpaca, chat) -> trained adapter directory
    held_out: list[dict[str, str]]  # alpaca rows never trained on
    clients: ExitStack  # the openai clients, closed with the server


def _chat_row(row: dict[str, str]) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": row["instruction"]},
            {"role": "user", "content": row["input"]},
            {"role": "assistant", "content": row["output"]},
        ]
    }


def _version(store: Store, artifacts: ArtifactStore, directory: Path, template: str) -> int:
    digest = artifacts.put_dir(directory, kind="adapter").digest
    version = store.create_model_version(
        "helpdesk",
        kind="adapter",
        artifact_digest=digest,
        base_model="tiny",
        run_id=None,
        lineage={"prompt_template": template},
        metrics={},
    )
    return version.version


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("streaming")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MODELYARD_HOME", str(tmp / "home"))
        env.delenv("MODELYARD_STORE_URL", raising=False)
        env.delenv("MODELYARD_ARTIFACTS", raising=False)
        base = create_tiny_base(domain_corpus(DOMAINS, 300, seed=0), tmp / "base", **QUICK_BASE)
        rows = synthetic_domain("it-support", 56, seed=0)
        train, held_out = rows[:48], rows[48:]
        _, tokenizer = load_base(base.path)
        chat_template = template_for("chat", tokenizer)
        adapters = {
            "alpaca": train_model(base.path, train, tmp / "alpaca", QUICK_TRAIN).adapter_dir,
            "chat": train_model(
                base.path,
                [_chat_row(r) for r in train],
                tmp / "chat",
                QUICK_TRAIN,
                template=chat_template,
            ).adapter_dir,
        }
        artifacts = ArtifactStore(tmp / "artifacts")
        with Store.open(f"sqlite:///{tmp / 'store.db'}") as store:
            store.register_base_model("tiny", str(base.path), {})
            store.create_tenant("acme")
            store.create_registered_model("helpdesk", tenant="acme")
            alpaca = _version(store, artifacts, adapters["alpaca"], "alpaca")
            chat = _version(store, artifacts, adapters["chat"], chat_template.name)
            # a third version whose stored bytes change after registration
            broken_dir = tmp / "broken"
            broken_dir.mkdir()
            for name in ("adapter_config.json", WEIGHTS):
                (broken_dir / name).write_bytes((adapters["alpaca"] / name).read_bytes())
            (broken_dir / "README.md").write_text("another artifact\n")
            broken = _version(store, artifacts, broken_dir, "alpaca")
            digest = store.get_model_version("helpdesk", broken).artifact_digest
            stored = next(artifacts.root.rglob(f"{digest}/files/{WEIGHTS}"))
            stored.chmod(0o644)
            stored.write_bytes(stored.read_bytes()[:-1] + b"\0")
            rambler = _version(store, artifacts, chatty_adapter(base.path, tmp / "rambler"), "text")
            endpoints = {"support": alpaca, "chat": chat, "broken": broken, "rambler": rambler}
            for endpoint, version in endpoints.items():
                store.create_endpoint(endpoint, model_ref=f"helpdesk:{version}", tenant="acme")
            _, key = create_api_key(store, "acme")
            # one adapter loaded at a time: alternating endpoints evict
            engine = TransformersEngine(artifacts, max_adapters=1, store=store)
            try:
                with (
                    BackgroundServer(create_app(store, engine, refresh_seconds=0.1)) as server,
                    ExitStack() as clients,
                ):
                    yield Served(
                        store, artifacts, server.base_url, key, base.path, adapters, held_out,
                        clients,
                    )  # fmt: skip
            finally:
                engine.close()


def _client(served: Served) -> openai.OpenAI:
    client = openai.OpenAI(base_url=served.url + "/v1", api_key=served.key, max_retries=0)
    return served.clients.enter_context(client)


def _record(served: Served, record_id: str, timeout: float = 30) -> InferenceRecord:
    """Records are written asynchronously: wait for this one, finished (a request that
    outlives the journal's start delay is first written as ``running``). 30 s: one CI run
    missed a record after 10 s under its two workers' load (not reproduced here)."""

    def finished() -> InferenceRecord | None:
        for record in served.store.list_inference_records(limit=500):
            if record.id == record_id and record.status != "running":
                return record
        return None

    return until(f"inference record {record_id}, finished", finished, timeout_s=timeout)


def _messages(row: dict[str, str]) -> list[dict[str, str]]:
    return _chat_row(row)["messages"][:-1]


def test_api_answers_evaluation_examples_as_evaluation_did(served: Served) -> None:
    client = _client(served)
    for fmt, endpoint in (("alpaca", "support"), ("chat", "chat")):
        model, tokenizer = load_base(served.base)
        model = load_adapter(model, served.adapters[fmt])
        rows: list[dict[str, Any]] = (
            served.held_out if fmt == "alpaca" else [_chat_row(r) for r in served.held_out]
        )
        report = evaluate_model(model, tokenizer, rows, metrics=["exact_match"], format=fmt)
        for row, prediction in zip(served.held_out, report.predictions, strict=True):
            answer = client.chat.completions.create(
                model=endpoint,
                messages=_messages(row),  # type: ignore[arg-type]
                temperature=0,
                max_tokens=report.max_new_tokens,
            )
            assert answer.choices[0].message.content == prediction.predicted
            # the server rendered the prompt byte for byte as evaluation did
            prompt = _record(served, answer.id).prompt
            if fmt == "alpaca":
                assert prompt == render_prompt(row)
            else:
                assert prompt == template_for("chat", tokenizer).prompt(_chat_row(row))


def test_streamed_chat_equals_the_whole_answer(served: Served) -> None:
    client = _client(served)
    request: dict[str, Any] = {
        "model": "rambler",  # it never ends an answer: 24 tokens, whatever the prompt
        "messages": _messages(served.held_out[0]),
        "temperature": 0,
        "max_tokens": 24,
    }
    whole = client.chat.completions.create(**request)
    assert whole.usage is not None and whole.usage.completion_tokens == 24
    assert whole.choices[0].finish_reason == "length"
    raw = client.chat.completions.with_raw_response.create(
        **request, stream=True, stream_options={"include_usage": True}
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.headers["x-modelyard-version"] == "helpdesk:4"
    chunks = list(raw.parse())
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) > 1
    assert "".join(pieces) == whole.choices[0].message.content
    *_, finishing, usage = chunks
    assert finishing.choices[0].finish_reason == whole.choices[0].finish_reason
    assert usage.choices == [] and usage.usage == whole.usage
    assert {c.id for c in chunks} == {chunks[0].id}
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    record = _record(served, chunks[0].id)
    assert record.status == "ok" and record.response == whole.choices[0].message.content
    assert record.completion_tokens == whole.usage.completion_tokens
    assert record.ttft_ms is not None and 0 < record.ttft_ms <= record.latency_ms


def test_streamed_completion_equals_the_whole_answer(served: Served) -> None:
    client = _client(served)
    request: dict[str, Any] = {
        "model": "rambler",
        "prompt": "the printer on the third floor",
        "temperature": 0,
        "max_tokens": 20,
    }
    whole = client.completions.create(**request)
    assert whole.usage is not None and whole.usage.completion_tokens == 20
    chunks = list(client.completions.create(**request, stream=True))
    pieces = [c.choices[0].text for c in chunks if c.choices[0].text]
    assert len(pieces) > 1
    assert "".join(pieces) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert {c.object for c in chunks} == {"text_completion"}
    assert all(c.usage is None for c in chunks)  # no usage chunk unless asked for


def test_a_client_that_leaves_mid_stream_stops_its_generation(served: Served) -> None:
    client = _client(served)
    request: dict[str, Any] = {
        "model": "rambler",
        "prompt": "hello",
        "temperature": 0,
        "max_tokens": 200,
    }
    whole = client.completions.create(**request)
    assert whole.choices[0].finish_reason == "length"  # it would run all 200 tokens
    stream = client.completions.create(**request, stream=True)
    first = next(iter(stream))
    stream.close()
    record = _record(served, first.id)
    assert record.status == "cancelled"
    assert 0 < record.completion_tokens < 200


def test_errors_come_before_the_stream_starts(served: Served) -> None:
    client = _client(served)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="nowhere", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    with pytest.raises(openai.InternalServerError) as info:
        client.completions.create(model="broken", prompt="hi", stream=True)
    assert info.value.status_code == 503
    assert "do not match their manifest" in info.value.message


def test_a_bad_adapter_fails_only_its_endpoint(served: Served) -> None:
    client = _client(served)

    def ask(endpoint: str) -> str:
        try:
            reply = client.chat.completions.create(
                model=endpoint,
                messages=_messages(served.held_out[2]),  # type: ignore[arg-type]
                temperature=0,
                max_tokens=6,
            )
        except openai.APIStatusError as exc:
            return f"{exc.status_code} {exc.message}"
        return f"200 {reply.id}"

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, ["support", "broken"] * 4))
    assert all(a.startswith("200 cmpl-") for a in answers[0::2]), answers
    for answer in answers[1::2]:
        assert answer.startswith("503 ") and "refusing to serve helpdesk:3" in answer
    events = served.store.list_audit_events(action="artifact.verification_failed")
    assert {e.subject for e in events} == {"helpdesk:3"}


def test_metrics_count_batches_and_the_adapter_cache(served: Served) -> None:
    client = _client(served)
    for endpoint in ("support", "chat", "support"):  # a cache of one adapter: each one evicts
        client.chat.completions.create(
            model=endpoint, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    text = httpx.get(served.url + "/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }

    def total(name: str, **labels: str) -> float:
        return sum(
            v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls)
        )

    assert total("modelyard_adapter_evictions_total", version="helpdesk:1") >= 1
    assert total("modelyard_adapter_loads_total", version="helpdesk:2") >= 1
    assert total("modelyard_adapter_cache_misses_total") >= 3
    assert total("modelyard_batch_size_count") >= 3
    assert total("modelyard_time_to_first_token_seconds_count", endpoint="chat") >= 1
    assert ("modelyard_queue_depth", ()) in samples


def test_a_full_queue_is_a_fast_503_with_retry_after(served: Served) -> None:
    engine = TransformersEngine(served.artifacts, max_queue=1, max_batch_size=1)
    try:
        with (
            BackgroundServer(create_app(served.store, engine)) as server,
            openai.OpenAI(base_url=server.base_url + "/v1", api_key=served.key) as client,
        ):
            request: dict[str, Any] = {"model": "rambler", "prompt": "hello", "temperature": 0}
            busy = client.completions.create(**request, max_tokens=200, stream=True)
            next(iter(busy))  # generating: the queue is empty
            with ThreadPoolExecutor(1) as pool:
                waiting = pool.submit(client.completions.create, **request, max_tokens=2)
                deadline = time.monotonic() + 10
                while engine.stats().queue_depth < 1 and time.monotonic() < deadline:
                    time.sleep(0.01)
                refused = httpx.post(
                    server.base_url + "/v1/completions",
                    json={**request, "max_tokens": 2},
                    headers={"Authorization": f"Bearer {served.key}"},
                )
                busy.close()
                assert waiting.result().usage is not None
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["code"] == "overloaded"
    finally:
        engine.close()
