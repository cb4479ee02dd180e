"""Drift of an endpoint's traffic: features of a current window against a reference.

The reference is the version's evaluation dataset by default (``eval``: only
the text features exist there; token and latency features say
``no_reference``), or a window of the endpoint's own traffic:
``previous:24h`` (the 24 h before the current window) or
``baseline:START/END`` (ISO times). The current sample is the sliding window
ending now (default the last hour). Only answered (``ok``) records count, and
only those of users' requests (``user_facing``): drift compares what an endpoint's
users send and get from a version, and the copies mirrored to a version as the
endpoint's shadow (other versions' requests, answered beside the live traffic,
never returned) are in neither window. Too few samples on either side
(``min_samples``, default 30) give ``not_enough_data``, never a verdict.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from modelyard.artifacts import ArtifactStore
from modelyard.data import template_named
from modelyard.durations import parse_duration
from modelyard.errors import ConfigError
from modelyard.monitoring._features import FEATURE_NAMES, TEXT_FEATURES, text_features
from modelyard.monitoring._semantic import DIMENSIONS, Embedder, from_bytes, minilm_dir, mmd_test
from modelyard.monitoring._stats import METHODS, Pair, SortedValues, default_method
from modelyard.registry import template_name
from modelyard.store import DriftResult, ModelVersion, Store, user_facing

MIN_SAMPLES = 30


@dataclass(frozen=True)
class Naming:
    """How an error names a parameter: as the CLI's flag (``--threshold``, ``CLI_FLAGS``) or as
    the admin API's query parameter (``threshold``, ``API_PARAMS``)."""

    prefix: str
    joiner: str

    def __call__(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def given(self, name: str, value: str) -> str:
        """The parameter given a value: ``--reference previous:24h``, ``reference=...``."""
        return f"{self.prefix}{name}{self.joiner}{value}"


CLI_FLAGS = Naming("--", " ")
API_PARAMS = Naming("", "=")
_HIST_BINS = 20


@dataclass(frozen=True)
class FeatureRule:
    """A feature's method (None: chosen by sample size) and threshold (None: the method's)."""

    method: str | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class DriftConfig:
    features: Mapping[str, FeatureRule] = field(default_factory=dict)
    min_samples: int = MIN_SAMPLES

    @classmethod
    def parse(
        cls,
        methods: Sequence[str] = (),
        thresholds: Sequence[str] = (),
        min_samples: int = MIN_SAMPLES,
        *,
        flag: Naming = CLI_FLAGS,
    ) -> DriftConfig:
        """From ``FEATURE=METHOD`` and ``FEATURE=NUMBER`` strings (the CLI's options, the
        admin API's parameters: ``flag`` names them in errors)."""
        rules: dict[str, dict[str, Any]] = {}
        for opt, items in (("method", methods), ("threshold", thresholds)):
            for item in items:
                name, sep, value = item.partition("=")
                if not sep or name not in FEATURE_NAMES:
                    raise ConfigError(
                        f"invalid {flag(opt)} {item!r}: use FEATURE={opt.upper()} with a feature "
                        f"of {', '.join(FEATURE_NAMES)}",
                        field=opt,
                    )
                if opt in rules.get(name, {}):  # the first would be dropped without a word
                    raise ConfigError(
                        f"{flag(opt)} is given twice for {name}: give each feature one {opt}",
                        field=opt,
                    )
                if opt == "method":
                    check_method(value)
                    rules.setdefault(name, {})["method"] = value
                else:
                    try:
                        number = float(value)
                    except ValueError:
                        number = math.nan
                    if not (math.isfinite(number) and number >= 0):
                        raise ConfigError(
                            f"invalid {flag('threshold')} {item!r}: {value!r} is not a finite "
                            "number of at least 0 (a p-value for ks and chisquare, e.g. 0.05; a "
                            "distance for psi, jensenshannon and wasserstein, e.g. 0.1)",
                            field="threshold",
                        )
                    rules.setdefault(name, {})["threshold"] = number
        for name, rule in rules.items():
            method = METHODS.get(rule.get("method", ""))
            if method is not None and method.direction == "below" and rule.get("threshold", 0) > 1:
                raise ConfigError(
                    f"invalid {flag('threshold')} {name}={rule['threshold']:g}: {method.name} "
                    "gives a p-value (0 to 1), so every run would say drift; use one below 1, "
                    "e.g. 0.05",
                    field="threshold",
                )
        if min_samples < 2:
            raise ConfigError("min_samples must be at least 2", field="min_samples")
        return cls({k: FeatureRule(**v) for k, v in rules.items()}, min_samples)


def check_method(name: str) -> str:
    if name not in METHODS:
        raise ConfigError(
            f"unknown drift method {name!r}: use one of {', '.join(METHODS)}", field="method"
        )
    return name


def compare(
    feature: str,
    ref: np.ndarray | Sequence[float] | None,
    cur: np.ndarray | Sequence[float],
    rule: FeatureRule | None = None,
    *,
    min_samples: int = MIN_SAMPLES,
) -> dict[str, Any]:
    """One feature's test: method, value, threshold, drifted, status, sizes and histograms."""
    rule = rule or FeatureRule()
    cur_s = SortedValues.of(np.asarray(cur, dtype=float))
    if ref is None:  # a threshold only where a method was given: none applied otherwise
        threshold = None
        if rule.method is not None:
            threshold = (
                rule.threshold if rule.threshold is not None else METHODS[rule.method].threshold
            )
        return _result(rule.method or "-", None, threshold, None, "no_reference", 0, cur_s.n, {})
    ref_s = SortedValues.of(np.asarray(ref, dtype=float))
    n_unique = ref_s.n_unique()  # Evidently decides on the reference's distinct values
    name = rule.method or (default_method(ref_s.n, n_unique) if ref_s.n and cur_s.n else "-")
    if name == "-":  # nothing to compare on a side: no method applies
        return _result(name, None, None, None, "not_enough_data", ref_s.n, cur_s.n, {})
    method = METHODS[name]
    threshold = rule.threshold if rule.threshold is not None else method.threshold
    if ref_s.n < min_samples or cur_s.n < min_samples:
        return _result(name, None, threshold, None, "not_enough_data", ref_s.n, cur_s.n, {})
    pair = Pair(ref_s, cur_s)
    value = method.compute(pair, n_unique <= 5)
    drifted = method.drifted(value, threshold)
    return _result(
        name,
        value,
        threshold,
        drifted,
        "drift" if drifted else "ok",
        ref_s.n,
        cur_s.n,
        _histograms(pair),
    )


def _result(
    method: str,
    value: float | None,
    threshold: float | None,
    drifted: bool | None,
    status: str,
    n_ref: int,
    n_cur: int,
    details: Mapping[str, Any],
) -> dict[str, Any]:
    return {
        "method": method,
        "value": value,
        "threshold": threshold,
        "drifted": drifted,
        "status": status,
        "n_reference": n_ref,
        "n_current": n_cur,
        "details": dict(details),
    }


def _histograms(pair: Pair) -> dict[str, Any]:
    """Shares of both samples over common bins, for the report's charts."""
    lo = float(min(pair.ref.values[0], pair.cur.values[0]))
    hi = float(max(pair.ref.values[-1], pair.cur.values[-1]))
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, _HIST_BINS + 1)
    return {
        "edges": [round(float(e), 6) for e in edges],
        "reference": [round(float(x), 6) for x in pair.ref.counts(edges) / pair.ref.n],
        "current": [round(float(x), 6) for x in pair.cur.counts(edges) / pair.cur.n],
        "reference_mean": float(np.mean(pair.ref.values)),
        "current_mean": float(np.mean(pair.cur.values)),
    }


@dataclass(frozen=True)
class DriftReport:
    endpoint: str
    version: str
    reference: str
    window_start: datetime
    window_end: datetime
    results: tuple[DriftResult, ...]

    @property
    def drifted_features(self) -> list[str]:
        return [r.feature for r in self.results if r.drifted]


def _pick_version(
    store: Store, endpoint: str, version: str | None, flag: Naming = CLI_FLAGS
) -> ModelVersion:
    ep = store.get_endpoint(endpoint)
    if version is not None:
        model, sep, number = version.rpartition(":")
        if not number.isdigit():
            raise ConfigError(
                f"invalid {flag('version')} {version!r}: use the version number, e.g. 2",
                field="version",
            )
        if sep and model != ep.model:  # NAME:N names the model too: never another's, silently
            raise ConfigError(
                f"invalid {flag('version')} {version!r}: endpoint {endpoint!r} serves model "
                f"{ep.model!r}; give the number alone, e.g. {number}, or {ep.model}:{number}",
                field="version",
            )
        for route in ep.routes:
            if route.version == int(number):
                return store.get_model_version_by_id(route.version_id)
        return store.get_model_version(ep.model, int(number))
    if not ep.routes:
        raise ConfigError(f"endpoint {endpoint!r} has no traffic plan", field="endpoint")
    top = max(ep.routes, key=lambda r: (r.weight, r.version))
    return store.get_model_version_by_id(top.version_id)


def eval_pairs(
    store: Store, artifacts: ArtifactStore | None, version: ModelVersion, flag: Naming = CLI_FLAGS
) -> list[tuple[str, str]]:
    """(prompt, response) of every row of ``version``'s evaluation dataset, via its template."""
    dataset = version.lineage.get("dataset") if isinstance(version.lineage, Mapping) else None
    digest = dataset.get("eval_digest") if isinstance(dataset, Mapping) else None
    hint = (
        f"Use {flag.given('reference', 'previous:24h')} (or baseline:START/END) to compare "
        "with past traffic."
    )
    if not digest:
        raise ConfigError(
            f"version {version.ref} records no evaluation dataset in its lineage",
            hint=hint,
            field="reference",
        )
    if artifacts is None:
        raise ConfigError("the eval reference needs the artifact store", field="reference")
    found = [d for d in store.list_datasets() if d.digest == digest]
    if not found:
        raise ConfigError(
            f"the evaluation dataset of {version.ref} ({digest[:12]}…) is not in the store",
            hint=hint,
            field="reference",
        )
    files = artifacts.open_verified(found[0].artifact_digest)
    name = template_name(version.lineage)  # the registry's one decision
    if name == "chat":  # the tokenizer's chat template is not at hand here: same text, plainer
        name = "chat-fallback"
    template = template_named(name)
    pairs = []
    for path in sorted(files.rglob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                pairs.append(template.render(json.loads(line)))
    return pairs


def eval_reference(
    store: Store, artifacts: ArtifactStore | None, version: ModelVersion, flag: Naming = CLI_FLAGS
) -> dict[str, np.ndarray]:
    """The text features of ``version``'s evaluation dataset, rendered with its template."""
    columns: dict[str, list[float]] = {f: [] for f in TEXT_FEATURES}
    for prompt, response in eval_pairs(store, artifacts, version, flag):
        feats = text_features(prompt, response)
        for f in TEXT_FEATURES:
            columns[f].append(float(getattr(feats, f)))
    return {f: np.array(v, dtype=float) for f, v in columns.items()}


EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
"""No record is older: a window reaching back further is a mistake (and may not fit a date)."""
CLOCK_SKEW = timedelta(minutes=5)
"""How far past this machine's clock a window's end may be (another machine's clock)."""


def _days(length: timedelta) -> str:
    return f"{length.total_seconds() / 86400:.6g} days"


def back_from(
    at: datetime, length: timedelta, what: str, field: str, flag: Naming = CLI_FLAGS
) -> datetime:
    """``at - length``; a ConfigError naming ``field`` when that is before 1970 (no record
    is that old, and far enough back it is no date at all)."""
    if at <= EARLIEST:  # no window helps: the end itself is before any record
        raise ConfigError(
            f"the window's end {at:%Y-%m-%d %H:%M} UTC is before 1970: no records are that "
            f"old; give a later {flag('end')}, or none for a window ending now",
            field="end",
        )
    try:
        start = at - length
    except OverflowError:  # before year 1
        start = None
    if start is None or start < EARLIEST:
        raise ConfigError(
            f"{what} of {_days(length)} reaches back before 1970 from "
            f"{at:%Y-%m-%d %H:%M} UTC: no records are that old; use a shorter one, e.g. 1h or 7d",
            field=field,
        )
    return start


def parse_reference(
    text: str, window_start: datetime, flag: Naming = CLI_FLAGS
) -> tuple[datetime, datetime] | None:
    """None for ``eval``; the (start, end) of a traffic reference otherwise."""
    if text == "eval":
        return None
    kind, _, arg = text.partition(":")
    if kind == "previous" and arg:
        length = parse_duration(arg, field=flag("reference"))
        start = back_from(window_start, length, f"reference {text}", "reference", flag)
        return start, window_start
    if kind == "baseline" and "/" in arg:
        a, _, b = arg.partition("/")
        try:
            start, end = (datetime.fromisoformat(x) for x in (a, b))
        except ValueError:
            start = end = None  # type: ignore[assignment]
        if start is not None and end is not None:
            start = start if start.tzinfo else start.replace(tzinfo=UTC)
            end = end if end.tzinfo else end.replace(tzinfo=UTC)
            clock = datetime.now(UTC)
            why = (
                "the baseline's start must be before its end"
                if start >= end
                else f"the baseline starts in the future (it is {clock:%Y-%m-%d %H:%M} UTC): "
                "no records are there yet; give a past window"
                if start > clock + CLOCK_SKEW
                else "the baseline ends before 1970: no records are that old"
                if end <= datetime(1970, 1, 1, tzinfo=UTC)
                else None
            )
            if why is None:
                return start, end
            raise ConfigError(f"invalid {flag('reference')} {text!r}: {why}", field="reference")
    raise ConfigError(
        f"invalid {flag('reference')} {text!r}: use eval, previous:DURATION (e.g. previous:24h) "
        "or baseline:START/END with ISO times (e.g. baseline:2026-12-01T00:00/2026-12-01T06:00)",
        field="reference",
    )


def reference_overlap(text: str, window_start: datetime) -> str | None:
    """What is wrong with a ``baseline:START/END`` reference that ends after the current
    window starts: it then holds the very requests it is compared with, which hides their
    drift. None when it does not (or for another reference)."""
    found = parse_reference(text, window_start) if text.startswith("baseline:") else None
    if found is None or found[1] <= window_start:
        return None
    return (
        f"the baseline {text!r} ends at {found[1].astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC, "
        f"after the current window starts ({window_start:%Y-%m-%d %H:%M:%S} UTC): it holds "
        "requests of the window itself, which hides their drift. End the baseline by the "
        "window's start, or use previous:DURATION."
    )


def _records(
    store: Store, endpoint: str, version_id: int, since: datetime, until: datetime, semantic: bool
) -> list[dict[str, Any]]:
    """The answered records of users' requests in [since, until), as ``_columns`` reads them."""
    found = store.query_records(
        endpoint=endpoint,
        version_id=version_id,
        since=since,
        until=until,
        limit=None,
        text=semantic,
        status="ok",
        embeddings=semantic,
    )
    return [r for r in found if user_facing(r["shadow"])]


def _columns(
    store: Store, endpoint: str, version_id: int, since: datetime, until: datetime
) -> dict[str, np.ndarray]:
    """Feature arrays of the answered records of users' requests in [since, until) (NaN
    where missing; ``Store.feature_columns``)."""
    cols = store.feature_columns(endpoint=endpoint, version_id=version_id, since=since, until=until)
    return {name: np.array(cols[name], dtype=float) for name in FEATURE_NAMES}


SEMANTIC_MAX = 500
"""Prompts embedded a side at most (a seeded sample, as the MMD test uses at most as many):
embedding is what costs, so a day of traffic is not run through MiniLM to use 500."""


def _sample(items: Sequence[Any], seed: int = 0) -> list[Any]:
    if len(items) <= SEMANTIC_MAX:
        return list(items)
    chosen = np.random.default_rng(seed).choice(len(items), SEMANTIC_MAX, replace=False)
    return [items[i] for i in sorted(chosen)]


def _embeddings(records: Sequence[Mapping[str, Any]], embedder: Embedder) -> tuple[np.ndarray, int]:
    """Embeddings of a sample of the records (stored ones, else of the kept prompt text:
    policy full or redacted), and how many records had one or the other; records with
    neither (hashed or dropped text, no embedding) are left out."""
    usable = [
        r
        for r in records
        if r.get("embedding") or (r.get("prompt") and not r["prompt"].startswith("sha256:"))
    ]
    chosen = _sample(usable)
    stored = [r["embedding"] for r in chosen if r.get("embedding")]
    texts = [r["prompt"] for r in chosen if not r.get("embedding")]
    parts = [from_bytes(stored)] if stored else []
    if texts:
        parts.append(embedder.embed(texts))
    vectors = np.concatenate(parts) if parts else np.zeros((0, DIMENSIONS), dtype=np.float32)
    return vectors, len(usable)


def semantic_result(
    ref: np.ndarray,
    cur: np.ndarray,
    min_samples: int,
    n_ref: int | None = None,
    n_cur: int | None = None,
) -> dict[str, Any]:
    """The ``prompt_embedding`` row: an MMD permutation test, drifted when p < 0.05.
    ``n_ref`` and ``n_cur``: the prompts each side had, where the vectors are a sample."""
    n_ref = len(ref) if n_ref is None else n_ref
    n_cur = len(cur) if n_cur is None else n_cur
    if n_ref < min_samples or n_cur < min_samples:
        return _result("mmd", None, 0.05, None, "not_enough_data", n_ref, n_cur, {})
    mmd2, p = mmd_test(ref, cur)
    drifted = p < 0.05
    return _result(
        "mmd",
        p,
        0.05,
        drifted,
        "drift" if drifted else "ok",
        n_ref,
        n_cur,
        {"mmd2": mmd2, "dimensions": DIMENSIONS, "model": "all-MiniLM-L6-v2"},
    )


def compute_drift(
    store: Store,
    endpoint: str,
    *,
    version: str | None = None,
    reference: str = "eval",
    window: timedelta = timedelta(hours=1),
    now: datetime | None = None,
    config: DriftConfig | None = None,
    artifacts: ArtifactStore | None = None,
    save: bool = True,
    scheduled: bool = False,
    semantic: bool = False,
    embedder: Embedder | None = None,
    flag: Naming = CLI_FLAGS,
) -> DriftReport:
    """Test every feature of ``endpoint``'s last ``window`` against the reference; store it.

    ``scheduled``: the monitoring tick's run (what alerts read), not one made by hand.
    ``semantic`` adds ``prompt_embedding``: MiniLM embeddings of the prompts (stored
    ones, else the kept text) compared with an MMD test. ``flag`` names the parameters in
    errors (the CLI's flags, or the admin API's, ``API_PARAMS``).
    """
    config = config or DriftConfig()
    clock = datetime.now(UTC)
    if now is not None and now.astimezone(UTC) > clock + CLOCK_SKEW:
        raise ConfigError(
            f"the window's end {now.astimezone(UTC):%Y-%m-%d %H:%M} UTC is in the future "
            f"(it is {clock:%Y-%m-%d %H:%M} UTC): no records are there yet; give a past "
            "time, or none for a window ending now",
            field="end",
        )
    now = (now or clock).astimezone(UTC)
    start = back_from(now, window, "the window", "window", flag)
    chosen = _pick_version(store, endpoint, version, flag)
    span = parse_reference(reference, start, flag)
    if semantic and embedder is None:
        minilm_dir()  # one clear error before any work when the model is missing
        embedder = Embedder()
    cur_records = _records(store, endpoint, chosen.id, start, now, True) if semantic else []
    current = _columns(store, endpoint, chosen.id, start, now)
    ref_vectors = cur_vectors = None
    n_ref = n_cur = 0
    if span is None:
        ref_columns: dict[str, np.ndarray] = eval_reference(store, artifacts, chosen, flag)
        if semantic and embedder is not None:
            prompts = [p for p, _ in eval_pairs(store, artifacts, chosen, flag)]
            ref_vectors, n_ref = embedder.embed(_sample(prompts)), len(prompts)
    else:
        ref_columns = _columns(store, endpoint, chosen.id, span[0], span[1])
        if semantic and embedder is not None:
            ref_records = _records(store, endpoint, chosen.id, span[0], span[1], True)
            ref_vectors, n_ref = _embeddings(ref_records, embedder)
    if semantic and embedder is not None:
        cur_vectors, n_cur = _embeddings(cur_records, embedder)
    run_id = str(uuid.uuid4())
    endpoint_row = store.get_endpoint(endpoint)
    outcomes = [
        (
            name,
            compare(
                name,
                ref_columns.get(name),
                current[name],
                config.features.get(name),
                min_samples=config.min_samples,
            ),
        )
        for name in FEATURE_NAMES
    ]
    if ref_vectors is not None and cur_vectors is not None:
        outcomes.append(
            (
                "prompt_embedding",
                semantic_result(ref_vectors, cur_vectors, config.min_samples, n_ref, n_cur),
            )
        )
    results = [
        DriftResult(
            run_id=run_id,
            computed_at=now,
            endpoint_name=endpoint,
            version=chosen.ref,
            tenant=endpoint_row.tenant,
            reference=reference,
            window_start=start,
            window_end=now,
            feature=name,
            **out,
            scheduled=scheduled,
        )
        for name, out in outcomes
    ]
    if save:
        store.add_drift_results(results, chosen.id)
    return DriftReport(endpoint, chosen.ref, reference, start, now, tuple(results))
