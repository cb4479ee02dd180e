"""Rollout samples at scale: what ``rollout compare`` and the rollout controller read.

Each size builds a fresh SQLite store under a temporary directory (bulk SQL): one endpoint
with ``N`` live records in the last day, 80% answered by bot:1 (the baseline), 15% by bot:2
(the canary: a tenth of them fell back to bot:1), 5% by bot:3; statuses mostly ok, some
errors, timeouts and cancelled; a ttft on most; feedback on one in ten; and a tenth as many
shadow records. Then, old and new side by side in the same run:

1. ``compare``: the samples of every version (what ``rollout compare ENDPOINT`` reads with
   no ``--since``). Old: ``rollout_samples`` before it filtered in SQL, verbatim
   (``_old_samples``): every live record of the endpoint at once (``.all()``), each value
   kept as a Python object in a tuple. New: ``Store.rollout_samples``, a chunk of rows at a
   time, status counts and float64 arrays.
2. ``canary``: what a controller tick reads, the canary's sample, and the baseline's merged
   (``TrafficSample.of``; old: the tuples concatenated into new tuples, as before).

Per size and side: the wall time (median of ``--repeats`` runs, without tracing) and the
peak Python memory (tracemalloc, one more run); the samples must be the same. With
``--postgres ADMIN_URL`` each size also runs on a fresh PostgreSQL database there (dropped
after); tracemalloc does not see what libpq holds, the whole result of the old side's
client-side cursor, so there the old side's peak is understated. Exits 0 whatever the
numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
import tracemalloc
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _timing import median_s
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from modelyard.store import Store

SECTIONS = ("compare", "canary")
CHUNK = 50_000


@dataclass(frozen=True)
class OldSample:
    """A ``VersionSample`` before: every value a Python object in a tuple."""

    statuses: tuple[str, ...]
    latencies_ms: tuple[float, ...]
    ttfts_ms: tuple[float, ...]
    feedback: tuple[float, ...]
    version: int
    version_id: int
    fallbacks: int


def _old_samples(
    store: Store, endpoint: str, since: datetime, version_ids: Sequence[int]
) -> dict[int, OldSample]:
    """``Store.rollout_samples`` before it filtered in SQL, verbatim."""
    from modelyard.store._rows import endpoint_row
    from modelyard.store._schema import FeedbackRow, InferenceRecordRow, ModelVersionRow

    with store._session(f"read the traffic of {endpoint!r}") as s:
        endpoint_row(s, endpoint)
        ids = list(version_ids)
        rows = s.execute(
            select(
                InferenceRecordRow.version_id,
                InferenceRecordRow.status,
                InferenceRecordRow.latency_ms,
                InferenceRecordRow.ttft_ms,
                InferenceRecordRow.fallback_from_id,
                FeedbackRow.score,
            )
            .outerjoin(FeedbackRow, FeedbackRow.record_id == InferenceRecordRow.id)
            .where(
                InferenceRecordRow.endpoint_name == endpoint,
                InferenceRecordRow.created_at >= since,
                InferenceRecordRow.shadow.is_(False),
            )
        ).all()
        query = select(ModelVersionRow.id, ModelVersionRow.version)
        numbers: dict[int, int] = dict(s.execute(query.where(ModelVersionRow.id.in_(ids))).all())  # type: ignore[arg-type]
    acc: dict[int, dict[str, Any]] = {
        vid: {"st": [], "lat": [], "ttft": [], "fb": [], "fallbacks": 0} for vid in ids
    }
    for version_id, status, latency, ttft, fallback_from, score in rows:
        if fallback_from in acc:
            acc[fallback_from]["fallbacks"] += 1
            continue  # answered by a baseline version on the target's behalf
        if version_id not in acc:
            continue
        a = acc[version_id]
        a["st"].append(status)
        if status == "ok":
            a["lat"].append(float(latency))
            if ttft is not None:
                a["ttft"].append(float(ttft))
        if score is not None:
            a["fb"].append(float(score))
    return {
        vid: OldSample(tuple(a["st"]), tuple(a["lat"]), tuple(a["ttft"]), tuple(a["fb"]),
                       numbers.get(vid, 0), vid, int(a["fallbacks"]))
        for vid, a in acc.items()
    }  # fmt: skip


def _old_merge(parts: Sequence[OldSample]) -> tuple[tuple[Any, ...], ...]:
    """``TrafficSample.of`` before: the versions' tuples concatenated into new tuples."""
    return (
        tuple(s for x in parts for s in x.statuses),
        tuple(v for x in parts for v in x.latencies_ms),
        tuple(v for x in parts for v in x.ttfts_ms),
        tuple(v for x in parts for v in x.feedback),
    )


def _seed(url: str, records: int) -> datetime:
    """The endpoint ``support`` of bot (3 versions) and its records; returns their start."""
    with Store.open(url) as store:
        store.register_base_model("tiny", "/models/tiny", {})
        store.create_tenant("acme")
        store.create_registered_model("bot", tenant="acme")
        for _ in range(3):
            store.create_model_version(
                "bot", kind="adapter", artifact_digest="00" * 32, base_model="tiny",
                run_id=None, lineage={}, metrics={},
            )  # fmt: skip
        store.create_endpoint("support", model_ref="bot:1", tenant="acme")
    rng = random.Random(1)
    start = datetime.now(UTC) - timedelta(days=1)
    if url.startswith("sqlite"):
        start = start.replace(tzinfo=None)  # as UTCDateTime stores it there
    step = 86_000 / (records * 1.1)
    statuses = ["ok"] * 90 + ["error"] * 4 + ["timeout"] * 2 + ["cancelled"] * 3 + ["refused"]
    engine = create_engine(url)
    with engine.begin() as c:
        for k in range(0, int(records * 1.1), CHUNK):
            rows, feedback = [], []
            for j in range(k, min(int(records * 1.1), k + CHUNK)):
                u = rng.random()
                version, fallback = (1, None) if u < 0.8 else (2, None) if u < 0.95 else (3, None)
                if version == 2 and rng.random() < 0.1:
                    version, fallback = 1, 2
                rows.append({
                    "id": f"r{j:09d}", "c": start + timedelta(seconds=j * step), "v": version,
                    "f": fallback, "l": rng.lognormvariate(5 + 0.05 * version, 0.6),
                    "t": None if rng.random() < 0.2 else rng.uniform(20, 200),
                    "s": rng.choice(statuses), "sh": j % 11 == 10,
                })  # fmt: skip
                if j % 10 == 3:
                    feedback.append({"i": f"f{j:09d}", "r": f"r{j:09d}", "c": start,
                                     "x": rng.choice((-1.0, 1.0))})  # fmt: skip
            c.execute(
                text("insert into inference_records (id, created_at, tenant_id, endpoint_name, "
                     "version_id, route, prompt_tokens, completion_tokens, latency_ms, ttft_ms, "
                     "status, http_status, shadow, fallback_from_id, source) values (:id, :c, 1,"
                     " 'support', :v, 'chat', 20, 12, :l, :t, :s, 200, :sh, :f, 'api')"),
                rows,
            )  # fmt: skip
            c.execute(
                text("insert into feedback (id, record_id, tenant_id, score, created_at, "
                     "updated_at) values (:i, :r, 1, :x, :c, :c)"),
                feedback,
            )  # fmt: skip
    engine.dispose()
    return start.replace(tzinfo=UTC) - timedelta(seconds=1)


@contextmanager
def _database(root: Path, records: int, postgres: str | None) -> Iterator[str]:
    """A fresh database's URL: a SQLite file under ``root``, or a PostgreSQL database."""
    if postgres is None:
        path = root / f"records-{records}.db"
        yield f"sqlite:///{path}"
        path.unlink()
        return
    name = f"modelyard_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(postgres).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _peak_mib(fn: Callable[[], Any]) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def _same(old: OldSample | tuple[tuple[Any, ...], ...], new: Any) -> None:
    o = old if isinstance(old, tuple) else (old.statuses, old.latencies_ms, old.ttfts_ms,
                                            old.feedback)  # fmt: skip
    assert dict(new.statuses) == Counter(o[0]), "the statuses differ"
    assert new.latencies_ms.tolist() == list(o[1]), "the latencies differ"
    assert new.ttfts_ms.tolist() == list(o[2]), "the times to first token differ"
    assert new.feedback.tolist() == list(o[3]), "the feedback differs"


def _side(old: Callable[[], Any], new: Callable[[], Any], repeats: int) -> dict[str, float]:
    old_s, new_s = median_s(old, repeats), median_s(new, repeats)
    old_mib, new_mib = _peak_mib(old), _peak_mib(new)
    return {
        "old_s": old_s, "new_s": new_s, "time_ratio": old_s / new_s,
        "old_peak_mib": old_mib, "new_peak_mib": new_mib, "peak_ratio": old_mib / new_mib,
    }  # fmt: skip


def bench_size(url: str, records: int, sections: Sequence[str], repeats: int) -> dict[str, Any]:
    from modelyard.delivery import TrafficSample

    started = time.perf_counter()
    since = _seed(url, records)
    out: dict[str, Any] = {
        "records": records, "database": make_url(url).get_backend_name(),
        "seed_s": time.perf_counter() - started,
    }  # fmt: skip
    with Store.open(url) as store:
        ids = [store.get_model_version("bot", n).id for n in (1, 2, 3)]
        if "compare" in sections:
            old, new = (
                _old_samples(store, "support", since, ids),
                store.rollout_samples("support", since, ids),
            )
            for vid in ids:
                _same(old[vid], new[vid])
            out["compare"] = _side(
                lambda: _old_samples(store, "support", since, ids),
                lambda: store.rollout_samples("support", since, ids),
                repeats,
            )
            del old, new
        if "canary" in sections:

            def old_tick() -> Any:
                canary = _old_samples(store, "support", since, [ids[1]])
                base = _old_samples(store, "support", since, [ids[0], ids[2]])
                return _old_merge([canary[ids[1]]]), _old_merge([base[ids[0]], base[ids[2]]])

            def new_tick() -> Any:
                canary = store.rollout_samples("support", since, [ids[1]])
                base = store.rollout_samples("support", since, [ids[0], ids[2]])
                return TrafficSample.of([canary[ids[1]]]), TrafficSample.of(
                    [base[ids[0]], base[ids[2]]]
                )

            (old_c, old_b), (new_c, new_b) = old_tick(), new_tick()
            _same(old_c, new_c)
            _same(old_b, new_b)
            del old_c, old_b, new_c, new_b
            out["canary"] = _side(old_tick, new_tick, repeats)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=SECTIONS, action="append", help="Run these only.")
    parser.add_argument(
        "--records", type=int, nargs="+", default=[200_000, 1_000_000],
        help="Live records of the endpoint, one store per size (default: 200000 1000000).",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=1, help="Timed runs per side (median).")
    parser.add_argument(
        "--postgres", metavar="ADMIN_URL",
        help="Also on PostgreSQL: a server URL to create (and drop) a database per size in.",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="Small sizes: a smoke test.")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args()
    if args.quick:
        args.records, args.repeats = [5000], 1
    os.environ.setdefault("MODELYARD_HOME", tempfile.mkdtemp(prefix="modelyard-bench-home-"))
    results: dict[str, Any] = {"cpu_count": os.cpu_count(), "sizes": []}
    with tempfile.TemporaryDirectory(prefix="modelyard-rollout-samples-") as tmp:
        databases = [None] if args.postgres is None else [None, args.postgres]
        for records in args.records:
            for postgres in databases:
                with _database(Path(tmp), records, postgres) as url:
                    r = bench_size(url, records, args.only or SECTIONS, args.repeats)
                results["sizes"].append(r)
                print(f"{records} records on {r['database']} (seeded in {r['seed_s']:.0f} s):")
                for section in args.only or SECTIONS:
                    x = r[section]
                    what = "every version" if section == "compare" else "a tick, canary + baseline"
                    print(
                        f"  {section} ({what}): time old {x['old_s']:.2f} s, new "
                        f"{x['new_s']:.2f} s, ratio {x['time_ratio']:.1f}x; peak Python memory "
                        f"old {x['old_peak_mib']:.0f} MiB, new {x['new_peak_mib']:.1f} MiB, ratio"
                        f" {x['peak_ratio']:.1f}x"
                    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
