"""The quickstart: the whole flow, for real, on tiny local models and two tenants.

data → tiny base → one LoRA adapter per tenant (HF Trainer + peft) → evaluation
against the base on held-out rows → registry (with lineage) → endpoints and
keys → the OpenAI-compatible server → real chat requests through the ``openai``
client → inference records in the store.

Running it again reuses the tenants, base and endpoints and registers new
versions, moving each endpoint to its new version.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from modelyard.artifacts import ArtifactStore
from modelyard.errors import Conflict, NotFound
from modelyard.settings import Settings
from modelyard.store import BaseModel, ModelVersion, Store

UpdateFn = Callable[[int, int, str], None]


class QuickstartUI(Protocol):
    """How the quickstart reports: lines of text and progress bars (Rich in the CLI)."""

    def info(self, message: str) -> None: ...

    def bar(self, description: str, total: int, unit: str) -> AbstractContextManager[UpdateFn]: ...


@dataclass(frozen=True)
class TenantPlan:
    tenant: str
    domain: str
    model: str
    endpoint: str
    storage_policy: str


PLANS = (
    TenantPlan("acme-insurance", "insurance-claims", "acme-claims", "claims-router", "full"),
    TenantPlan("globex-it", "it-support", "globex-helpdesk", "helpdesk-router", "redacted"),
)
BASE_NAME = "quickstart-tiny"


@dataclass(frozen=True)
class TenantOutcome:
    tenant: str
    endpoint: str
    version: str
    base_exact_match: float
    adapter_exact_match: float
    eval_examples: int
    train_seconds: float
    api_requests: int
    api_correct: int
    records: int
    answers: list[tuple[str, str, str]] = field(default_factory=list)  # (input, expected, got)


@dataclass(frozen=True)
class QuickstartResult:
    tenants: list[TenantOutcome]
    isolation_enforced: bool
    seconds: float
    base_model: str
    server_url: str


# -- data ----------------------------------------------------------------------------------


def _write_jsonl(path: Path, rows: Sequence[Mapping[str, str]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(dict(r), sort_keys=True) + "\n" for r in rows)
    path.write_text(data, encoding="utf-8")
    return hashlib.sha256(data.encode()).hexdigest()


def _split(
    domain: str, n_train: int, n_eval: int
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Train and held-out rows; held-out inputs never appear in training."""
    from modelyard.data import synthetic_domain

    rows = synthetic_domain(domain, n_train + n_eval, seed=0)
    train, held_out = rows[:n_train], rows[n_train:]
    seen = {r["input"] for r in train}
    return train, [r for r in held_out if r["input"] not in seen]


# -- steps ---------------------------------------------------------------------------------


def _ensure_base(store: Store, work: Path, ui: QuickstartUI) -> BaseModel:
    from modelyard.base import create_tiny_base, weight_hashes
    from modelyard.data import DOMAINS, domain_corpus

    base_dir = work / "base"
    try:
        known = store.get_base_model(BASE_NAME)
        if Path(known.source).is_dir() and weight_hashes(Path(known.source)) == known.weight_hashes:
            ui.info(f"reusing base model {BASE_NAME} at {known.source}")
            return known
    except NotFound:
        pass
    corpus = domain_corpus(DOMAINS, n_docs=2000, seed=0)
    steps = 300
    with ui.bar("pretraining tiny base", steps, "steps") as update:
        info = create_tiny_base(
            corpus,
            base_dir,
            steps=steps,
            seed=0,
            overwrite=True,
            progress=lambda s, t, loss: update(s, t, f"loss {loss:.2f}"),
        )
    ui.info(
        f"built base {BASE_NAME}: {info.parameters:,} parameters, vocab {info.vocab_size}, "
        f"loss {info.final_loss:.2f} in {info.seconds:.1f} s"
    )
    hashes = weight_hashes(base_dir)
    source = str(base_dir.resolve())
    try:
        return store.register_base_model(BASE_NAME, source, hashes)
    except Conflict:  # rebuilt with other weights (other library versions): a new name
        digest = hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()
        return store.register_base_model(f"{BASE_NAME}-{digest[:8]}", source, hashes)


def _ensure_tenant(store: Store, plan: TenantPlan) -> None:
    if plan.tenant not in {t.name for t in store.list_tenants()}:
        store.create_tenant(plan.tenant, storage_policy=plan.storage_policy)  # type: ignore[arg-type]
    if plan.model not in {m.name for m in store.list_registered_models()}:
        store.create_registered_model(
            plan.model,
            tenant=plan.tenant,
            description=f"Routes {plan.domain.replace('-', ' ')} to the right team.",
        )


def _train_and_register(
    store: Store,
    artifacts: ArtifactStore,
    plan: TenantPlan,
    base: BaseModel,
    work: Path,
    ui: QuickstartUI,
) -> tuple[ModelVersion, dict[str, Any], list[dict[str, str]]]:
    from modelyard.base import load_base
    from modelyard.data import PROMPT_TEMPLATE_NAME
    from modelyard.evaluation import evaluate_exact_match, load_adapter
    from modelyard.registry import environment, git_commit
    from modelyard.training import TrainSettings, train_model

    train, held_out = _split(plan.domain, n_train=400, n_eval=90)
    data_dir = work / "data" / plan.tenant
    digest = _write_jsonl(data_dir / "train.jsonl", train)
    _write_jsonl(data_dir / "eval.jsonl", held_out)
    blob = artifacts.put_file(data_dir / "train.jsonl", kind="dataset")
    dataset = store.register_dataset(
        f"{plan.tenant}-train",
        digest=digest,
        artifact_digest=blob.digest,
        format="alpaca",
        n_rows=len(train),
        report={"rows": len(train), "eval_rows": len(held_out)},
    )
    settings = TrainSettings(seed=0)
    run_id = str(uuid.uuid4())
    base_dir = Path(base.source)
    env = environment()
    store.create_run(
        run_id,
        base_model=base.name,
        dataset_id=dataset.id,
        config={"method": {"type": "lora"}, "training": settings.model_dump(mode="json")},
        seed=settings.seed,
        environment=env,
    )
    model, tokenizer = load_base(base_dir)
    base_eval = evaluate_exact_match(model, tokenizer, held_out)
    with (
        tempfile.TemporaryDirectory() as tmp,
        ui.bar(f"fine-tuning {plan.tenant}", 1, "steps") as update,
    ):
        result = train_model(
            base_dir,
            train,
            Path(tmp) / "adapter",
            settings,
            progress=lambda s, t, loss: update(s, t, f"loss {loss:.3f}"),
        )
        adapter_blob = artifacts.put_dir(result.adapter_dir, kind="adapter")
        tuned = load_adapter(model, result.adapter_dir)
        tuned_eval = evaluate_exact_match(tuned, tokenizer, held_out)
    metrics = {
        "exact_match": tuned_eval.exact_match,
        "base_exact_match": base_eval.exact_match,
        "eval_examples": tuned_eval.n,
        "train_loss": result.train_loss,
        "train_seconds": round(result.seconds, 2),
        "train_tokens_per_second": round(result.tokens_per_second, 1),
        "trainable_parameters": result.trainable_parameters,
    }
    store.finish_run(run_id, status="finished", metrics=metrics)
    lineage = {
        "run_id": run_id,
        "dataset": {"name": dataset.name, "version": dataset.version, "digest": dataset.digest},
        "base_model": {
            "name": base.name,
            "source": base.source,
            "weights": dict(base.weight_hashes),
        },
        "config": settings.model_dump(mode="json"),
        "seed": settings.seed,
        "prompt_template": PROMPT_TEMPLATE_NAME,
        "environment": env,
        "git_commit": git_commit(Path.cwd()),
    }
    version = store.create_model_version(
        plan.model,
        kind="adapter",
        artifact_digest=adapter_blob.digest,
        base_model=base.name,
        run_id=run_id,
        lineage=lineage,
        metrics=metrics,
    )
    store.set_alias(plan.model, "champion", version.version)
    ui.info(
        f"{plan.tenant}: registered {version.ref} — exact match {tuned_eval.exact_match:.2f} "
        f"vs base {base_eval.exact_match:.2f} on {tuned_eval.n} held-out rows "
        f"({result.seconds:.1f} s of training)"
    )
    return version, metrics, held_out


def _ensure_endpoint(store: Store, plan: TenantPlan, version: ModelVersion) -> None:
    if plan.endpoint in {e.name for e in store.list_endpoints()}:
        store.set_traffic(plan.endpoint, {version.version: 100})
    else:
        store.create_endpoint(plan.endpoint, model_ref=f"{plan.model}@champion", tenant=plan.tenant)


def _ask(
    base_url: str, key: str, endpoint: str, rows: Sequence[Mapping[str, str]]
) -> Iterator[tuple[str, str, str, str]]:
    """Send each row as an OpenAI chat request; yields (input, expected, answer, version)."""
    import openai

    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0)
    for row in rows:
        raw = client.chat.completions.with_raw_response.create(
            model=endpoint,
            messages=[
                {"role": "system", "content": row["instruction"]},
                {"role": "user", "content": row["input"]},
            ],
            temperature=0,
            max_tokens=8,
        )
        answer = raw.parse().choices[0].message.content or ""
        yield row["input"], row["output"], answer, raw.headers.get("x-modelyard-version", "")


def _isolation_enforced(base_url: str, key: str, foreign_endpoint: str) -> bool:
    import openai

    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0)
    try:
        client.chat.completions.create(
            model=foreign_endpoint, messages=[{"role": "user", "content": "hello"}]
        )
    except openai.NotFoundError:
        return True
    return False


def run_quickstart(
    settings: Settings, ui: QuickstartUI, *, requests_per_tenant: int = 6
) -> QuickstartResult:
    """Run the whole flow; returns what the summary table shows."""
    from modelyard.access import create_api_key
    from modelyard.evaluation import normalize
    from modelyard.serving import BackgroundServer, TransformersEngine, create_app

    started = time.perf_counter()
    home = settings.ensure_home()
    work = home / "quickstart"
    artifacts = ArtifactStore(settings.artifacts_dir)
    with Store.open(settings.resolved_store_url) as store:
        ui.info(f"store {store.url}, artifacts {artifacts.root}")
        base = _ensure_base(store, work, ui)
        trained: dict[str, tuple[ModelVersion, dict[str, Any], list[dict[str, str]]]] = {}
        keys: dict[str, str] = {}
        for plan in PLANS:
            _ensure_tenant(store, plan)
            trained[plan.tenant] = _train_and_register(store, artifacts, plan, base, work, ui)
            _ensure_endpoint(store, plan, trained[plan.tenant][0])
            keys[plan.tenant] = create_api_key(store, plan.tenant, scopes=("infer", "feedback"))[1]
        engine = TransformersEngine(artifacts)
        answers: dict[str, list[tuple[str, str, str, str]]] = {}
        with BackgroundServer(create_app(store, engine, refresh_seconds=1.0)) as server:
            ui.info(f"server listening on {server.base_url}")
            for plan in PLANS:
                rows = trained[plan.tenant][2][:requests_per_tenant]
                answers[plan.tenant] = list(
                    _ask(server.base_url, keys[plan.tenant], plan.endpoint, rows)
                )
            isolated = _isolation_enforced(
                server.base_url, keys[PLANS[0].tenant], PLANS[1].endpoint
            )
            url = server.base_url
        engine.close()
        outcomes = []
        for plan in PLANS:
            version, metrics, _ = trained[plan.tenant]
            got = answers[plan.tenant]
            outcomes.append(
                TenantOutcome(
                    tenant=plan.tenant,
                    endpoint=plan.endpoint,
                    version=version.ref,
                    base_exact_match=float(metrics["base_exact_match"]),
                    adapter_exact_match=float(metrics["exact_match"]),
                    eval_examples=int(metrics["eval_examples"]),
                    train_seconds=float(metrics["train_seconds"]),
                    api_requests=len(got),
                    api_correct=sum(normalize(a) == normalize(e) for _, e, a, _ in got),
                    records=store.count_inference_records(endpoint=plan.endpoint),
                    answers=[(i, e, a) for i, e, a, _ in got],
                )
            )
    return QuickstartResult(outcomes, isolated, time.perf_counter() - started, base.name, url)
