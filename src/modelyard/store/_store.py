"""The ``Store`` facade: one object for every stage's desired state, and its lifecycle.

Callers get frozen entities (``modelyard.store.entities``); no ``Session`` and
no SQLAlchemy exception leaves the store. Each stage keeps its methods in a
module of its own, all sharing one core (``_core.StoreCore``: sessions, the
audited write, role checks) and the row lookups and converters (``_rows``,
``_convert``):

==================  ===========================================================
``_tracking``       base models, datasets, training runs
``_registry``       registered models, versions, aliases, tags, gate verdicts
``_access``         tenants, API keys, actors
``_tokens``         personal access tokens of actors
``_chain``          reading and verifying the audit chain, acknowledging its breaks
``_endpoints``      endpoints, traffic plans, shadows, rollout policies
``_rollouts``       rollouts, their transitions and samples, alias moves
``_fleet``          server heartbeats, leases
``_records``        inference records and their features
``_feedback``       feedback on inference records
``_retention``      retention policies and the purge of raw records
``_seals``          sealing inference records: Merkle roots in the audit chain
``_seal_check``     verifying records against their seals, inclusion proofs
``_late_anchor``   an admin's late anchor of seals their writer never anchored
``_monitoring``     profiles, drift results, the monitor's state, token prices
``_alerts``         alert states and the notifications of their changes
``_budgets``        money budgets per tenant and key, and what was spent
``_series``         grouped reads of the records for charts: traffic series, feedback
``_judges``         judges (models scoring answers) and their judgements
``_judge_windows``  what judges made of rollout step windows, many read together
``_pairs``          shadow records and the production records of the same requests
``_files``          tenants' files (OpenAI's Files API): their rows; the bytes are artifacts
``_batches``        tenants' OpenAI batches and their answered lines, fenced by a lease
==================  ===========================================================
"""

from __future__ import annotations

from modelyard.audit import AccessPolicy, AuditKeySource
from modelyard.store import _audit, _engine
from modelyard.store._access import AccessStore
from modelyard.store._alerts import AlertStore
from modelyard.store._batches import BatchStore
from modelyard.store._budgets import BudgetStore
from modelyard.store._chain import AuditStore
from modelyard.store._endpoints import EndpointStore
from modelyard.store._feedback import FeedbackStore
from modelyard.store._files import FileStore
from modelyard.store._fleet import FleetStore
from modelyard.store._judge_windows import JudgeWindowStore
from modelyard.store._judges import JudgeStore
from modelyard.store._late_anchor import LateAnchorStore
from modelyard.store._monitoring import MonitoringStore
from modelyard.store._pairs import PairStore
from modelyard.store._records import RecordStore
from modelyard.store._retention import RetentionStore
from modelyard.store._rollouts import RolloutStore
from modelyard.store._seal_check import SealStore
from modelyard.store._series import SeriesStore
from modelyard.store._tokens import TokenStore
from modelyard.store._tracking import TrackingStore
from modelyard.store._usage import UsageStore


class Store(
    TrackingStore,
    AccessStore,
    TokenStore,
    AuditStore,
    EndpointStore,  # and, through it, RegistryStore
    RolloutStore,
    FleetStore,
    RecordStore,
    FeedbackStore,
    RetentionStore,
    SealStore,
    LateAnchorStore,
    MonitoringStore,
    AlertStore,
    BudgetStore,
    UsageStore,
    SeriesStore,
    JudgeStore,
    JudgeWindowStore,
    PairStore,
    FileStore,
    BatchStore,
):
    """Desired state of one modelyard installation, on SQLite or PostgreSQL."""

    @classmethod
    def open(
        cls,
        url: str,
        *,
        migrate: bool = True,
        actor: str | None = None,
        audit_key: str | bytes | AuditKeySource | None = None,
        policy: AccessPolicy | None = None,
    ) -> Store:
        """Connect to the store at ``url``; apply pending migrations unless ``migrate=False``.

        ``actor`` (who makes the changes), ``audit_key`` (hex or any string) and
        ``policy`` default to the settings: ``MODELYARD_ACTOR`` or the OS user,
        ``MODELYARD_AUDIT_KEY`` or the key file (created on the first audited
        change), ``MODELYARD_PROTECTED_ALIASES`` and friends.
        """
        engine = _engine.make_engine(url)
        _audit.install_sqlite_hooks(engine)
        try:
            if migrate:
                _engine.upgrade(engine)
            return cls(engine, actor=actor, audit_key=audit_key, policy=policy)
        except BaseException:  # nobody else will close its connections
            engine.dispose()
            raise

    @property
    def url(self) -> str:
        """The store URL with any password hidden."""
        return _engine.redact_url(str(self._engine.url))

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    def migrate(self) -> tuple[str | None, str]:
        return _engine.upgrade(self._engine)

    def schema_revision(self) -> str | None:
        return _engine.current_revision(self._engine)

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
