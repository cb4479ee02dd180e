"""The quickstart: the whole flow, for real, on tiny local models and two tenants.

data → tiny base → for each tenant, the fine-tuning pipeline that ``modelyard
finetune CONFIG.yaml`` runs (data validation and versioning, a LoRA adapter
trained with HF Trainer + peft, evaluation against the base on held-out rows,
quality gates, registration with lineage, the ``champion`` alias on a pass) →
endpoints and keys → the OpenAI-compatible server → real chat requests through
the ``openai`` client → inference records in the store.

Running it again reuses the tenants, base and endpoints and registers new
versions, moving each endpoint to its new version.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modelyard.artifacts import ArtifactStore, artifacts_from_settings
from modelyard.audit import PROTECTED_ALIAS_ROLE
from modelyard.errors import PermissionDenied
from modelyard.finetune import FinetuneOutcome, Reporter, parse_config, prepare, run_finetune
from modelyard.settings import Settings
from modelyard.store import ModelVersion, Store

QuickstartUI = Reporter
"""How the quickstart reports: lines of text and progress bars (Rich in the CLI)."""


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
ALIAS = "champion"
"""The alias each tenant's passing version gets, and its endpoint serves."""
GATES = ("exact_match >= 0.8", "not_worse_than: champion")
"""The quality gates each tenant's new version must pass to become its ``champion``."""


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


@dataclass(frozen=True)
class _Trained:
    """One tenant's pipeline run: its registered version, outcome and held-out rows."""

    version: ModelVersion
    outcome: FinetuneOutcome
    held_out: list[dict[str, Any]]


# -- data ----------------------------------------------------------------------------------


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


def _ensure_base(work: Path, ui: QuickstartUI) -> Path:
    """The tiny base's directory (named ``BASE_NAME``, the name it is registered under)."""
    from modelyard.base import create_tiny_base
    from modelyard.data import DOMAINS, domain_corpus

    base_dir = work / BASE_NAME
    if (base_dir / "config.json").is_file():
        ui.info(f"reusing base model {BASE_NAME} at {base_dir}")
        return base_dir
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
    return base_dir


def _check_actor(store: Store) -> None:
    """``PermissionDenied`` before anything is built when the acting actor could not make
    each tenant's new version its ``champion``, by the store's own rule (audited as any
    refusal): every later step (the endpoints serve ``MODEL@champion``) needs that alias,
    and a refusal found after the first tenant's training would leave the second tenant
    unbuilt."""
    for plan in PLANS:
        try:
            store.check_alias_move(plan.model, ALIAS, created_by=store.actor)
        except PermissionDenied as denied:
            raise PermissionDenied(
                f"the quickstart stops before building anything: {denied.message}",
                hint="Run it as the OS user on a fresh install (the bootstrap admin), or as "
                f"an actor with role {PROTECTED_ALIAS_ROLE} or admin (--actor NAME or "
                "MODELYARD_ACTOR); an admin grants one with `modelyard actors add NAME "
                f"--role {PROTECTED_ALIAS_ROLE}`. Under segregation of duties, train with "
                "`modelyard finetune` and have another approver move the alias.",
                **denied.context,
            ) from denied


def _ensure_tenant(store: Store, plan: TenantPlan) -> None:
    if plan.tenant not in {t.name for t in store.list_tenants()}:
        store.create_tenant(plan.tenant, storage_policy=plan.storage_policy)  # type: ignore[arg-type]


def _config(plan: TenantPlan, base_dir: Path, data_dir: Path) -> dict[str, Any]:
    """The finetune config of one tenant, as a ``modelyard finetune`` YAML file would hold it."""
    return {
        "base_model": str(base_dir.resolve()),
        "data": {
            "train": str(data_dir / "train.jsonl"),
            "eval": str(data_dir / "eval.jsonl"),
            "format": "alpaca",
            "name": f"{plan.tenant}-train",
        },
        "method": {"type": "lora"},
        "training": {"seed": 0},
        "evaluation": {"metrics": ["exact_match"], "gates": list(GATES), "max_new_tokens": 8},
        "registry": {
            "model": plan.model,
            "tenant": plan.tenant,
            "alias_on_pass": ALIAS,
            "description": f"Routes {plan.domain.replace('-', ' ')} to the right team.",
        },
    }


def _finetune(
    store: Store,
    artifacts: ArtifactStore,
    plan: TenantPlan,
    base_dir: Path,
    home: Path,
    ui: QuickstartUI,
) -> _Trained:
    """Run the fine-tuning pipeline for one tenant; its version must pass its gates."""
    from modelyard.data import write_jsonl

    train, held_out = _split(plan.domain, n_train=400, n_eval=90)
    data_dir = home / "quickstart" / "data" / plan.tenant
    data_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(train, data_dir / "train.jsonl")
    write_jsonl(held_out, data_dir / "eval.jsonl")
    prepared = prepare(parse_config(_config(plan, base_dir, data_dir)))
    outcome = run_finetune(prepared, store=store, artifacts=artifacts, home=home, ui=ui)
    assert outcome is not None and outcome.ref is not None  # rank 0 always registers
    failure = outcome.gate_failure()
    if failure is not None:  # no champion: nothing for the endpoint to serve
        raise failure
    if outcome.alias_refused:  # the same: stop at the refusal, not at the missing alias
        raise PermissionDenied(
            outcome.alias_refused,
            hint=f"{outcome.ref} is registered; an actor with role {PROTECTED_ALIAS_ROLE} "
            f"can move {ALIAS} to it with `modelyard registry alias`.",
        )
    version = store.resolve_model_ref(outcome.ref)
    ui.info(
        f"{plan.tenant}: registered {version.ref} — exact match "
        f"{outcome.metrics['exact_match']:.2f} vs base {outcome.base_metrics['exact_match']:.2f} "
        f"on {len(prepared.eval_rows)} held-out rows "
        f"({outcome.training['seconds']:.1f} s of training)"
    )
    return _Trained(version, outcome, list(prepared.eval_rows))


def _ensure_endpoint(store: Store, plan: TenantPlan, version: ModelVersion) -> None:
    if plan.endpoint in {e.name for e in store.list_endpoints()}:
        store.set_traffic(plan.endpoint, {version.version: 100})
    else:
        store.create_endpoint(plan.endpoint, model_ref=f"{plan.model}@{ALIAS}", tenant=plan.tenant)


def _ask(
    base_url: str, key: str, endpoint: str, rows: Sequence[Mapping[str, str]]
) -> Iterator[tuple[str, str, str, str]]:
    """Send each row as an OpenAI chat request; yields (input, expected, answer, version)."""
    import openai

    with openai.OpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0) as client:
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

    with openai.OpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0) as client:
        try:
            client.chat.completions.create(
                model=foreign_endpoint, messages=[{"role": "user", "content": "hello"}]
            )
        except openai.NotFoundError:
            return True
    return False


def run_quickstart(
    settings: Settings,
    ui: QuickstartUI,
    *,
    requests_per_tenant: int = 6,
    actor: str | None = None,
) -> QuickstartResult:
    """Run the whole flow as ``actor`` (default: MODELYARD_ACTOR, else the OS user); returns
    what the summary table shows. An actor who may not move ``champion`` is refused first."""
    from modelyard.access import create_api_key
    from modelyard.evaluation import normalize
    from modelyard.serving import BackgroundServer, TransformersEngine, create_app

    started = time.perf_counter()
    home = settings.ensure_home()
    work = home / "quickstart"
    artifacts = artifacts_from_settings(settings)
    with Store.open(settings.resolved_store_url, actor=actor) as store:
        _check_actor(store)
        ui.info(f"store {store.url}, artifacts {artifacts.location}")
        base_dir = _ensure_base(work, ui)
        trained: dict[str, _Trained] = {}
        keys: dict[str, str] = {}
        for plan in PLANS:
            _ensure_tenant(store, plan)
            trained[plan.tenant] = _finetune(store, artifacts, plan, base_dir, home, ui)
            _ensure_endpoint(store, plan, trained[plan.tenant].version)
            keys[plan.tenant] = create_api_key(store, plan.tenant, scopes=("infer", "feedback"))[1]
        engine = TransformersEngine(artifacts)
        answers: dict[str, list[tuple[str, str, str, str]]] = {}
        asked_from = datetime.now(UTC)  # records of an earlier run do not count
        with BackgroundServer(create_app(store, engine, refresh_seconds=1.0)) as server:
            ui.info(f"server listening on {server.base_url}")
            for plan in PLANS:
                rows = trained[plan.tenant].held_out[:requests_per_tenant]
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
            run = trained[plan.tenant]
            got = answers[plan.tenant]
            outcomes.append(
                TenantOutcome(
                    tenant=plan.tenant,
                    endpoint=plan.endpoint,
                    version=run.version.ref,
                    base_exact_match=run.outcome.base_metrics["exact_match"],
                    adapter_exact_match=run.outcome.metrics["exact_match"],
                    eval_examples=len(run.held_out),
                    train_seconds=float(run.outcome.training["seconds"]),
                    api_requests=len(got),
                    api_correct=sum(normalize(a) == normalize(e) for _, e, a, _ in got),
                    records=store.count_inference_records(endpoint=plan.endpoint, since=asked_from),
                    answers=[(i, e, a) for i, e, a, _ in got],
                )
            )
    base_name = trained[PLANS[0].tenant].version.base_model
    return QuickstartResult(outcomes, isolated, time.perf_counter() - started, base_name, url)
