"""Monitoring: inference records and their features, profiles, drift, alerts and reports.

``tick(store)`` is the one idempotent step of the monitoring loop (profiles,
retention, alert rules, notifications); the rollout controller calls it each
loop and ``modelyard monitor tick`` runs it once.
"""

from modelyard.monitoring._alerts import (
    METRICS,
    AlertRules,
    Rule,
    alert_id,
    evaluate_rules,
)
from modelyard.monitoring._drift import (
    API_PARAMS,
    CLI_FLAGS,
    DriftConfig,
    DriftReport,
    FeatureRule,
    compare,
    compute_drift,
    reference_overlap,
)
from modelyard.monitoring._export import export_records
from modelyard.monitoring._features import (
    FEATURE_NAMES,
    FEATURES,
    TEXT_FEATURES,
    record_features,
    text_features,
)
from modelyard.monitoring._journal import (
    ABANDONED,
    close_abandoned,
    gone_servers,
    new_server_id,
    started_record,
)
from modelyard.monitoring._judging import JudgingResult, OnlineJudging, judge_online, sampled
from modelyard.monitoring._notify import post_webhook
from modelyard.monitoring._policy import apply_storage_policy, redact
from modelyard.monitoring._profiles import (
    ProfileRecompute,
    ProfileUpdate,
    recompute_profiles,
    update_profiles,
)
from modelyard.monitoring._report import write_report
from modelyard.monitoring._rules_file import default_rules_path, rules_from
from modelyard.monitoring._semantic import Embedder, mmd_test
from modelyard.monitoring._stats import (
    METHODS,
    Method,
    default_method,
    drift_condition,
    register_method,
)
from modelyard.monitoring._tick import MonitoringCollector, TickReport, apply_retention, tick
from modelyard.monitoring._writer import RecordWriter

__all__ = [
    "ABANDONED",
    "API_PARAMS",
    "CLI_FLAGS",
    "FEATURES",
    "FEATURE_NAMES",
    "METHODS",
    "METRICS",
    "TEXT_FEATURES",
    "AlertRules",
    "DriftConfig",
    "DriftReport",
    "Embedder",
    "FeatureRule",
    "JudgingResult",
    "Method",
    "MonitoringCollector",
    "OnlineJudging",
    "ProfileRecompute",
    "ProfileUpdate",
    "RecordWriter",
    "Rule",
    "TickReport",
    "alert_id",
    "apply_retention",
    "apply_storage_policy",
    "close_abandoned",
    "compare",
    "compute_drift",
    "default_method",
    "default_rules_path",
    "drift_condition",
    "evaluate_rules",
    "export_records",
    "gone_servers",
    "judge_online",
    "mmd_test",
    "new_server_id",
    "post_webhook",
    "recompute_profiles",
    "record_features",
    "redact",
    "reference_overlap",
    "register_method",
    "rules_from",
    "sampled",
    "started_record",
    "text_features",
    "tick",
    "update_profiles",
    "write_report",
]
