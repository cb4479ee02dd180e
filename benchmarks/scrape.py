"""What one Prometheus scrape of the store's gauges costs at an enterprise's scale.

Every serving replica's ``/metrics`` (and ``modelyard monitor metrics``) carries
``MonitoringCollector``, which reads the store at every scrape: the latest drift run
of each endpoint, the alert states, the traffic plans, the active rollouts, the
budgets and today's day profiles. Prometheus scrapes each of N replicas every 15 s,
so the store answers N / 15 such scrapes a second.

The script fills one store through the store's own write methods (``--endpoints``
endpoints, each on its own model of ``--versions`` versions with a traffic plan over
them, every fifth with a shadow; ``--runs`` drift runs per endpoint of ``--features``
features x ``--methods`` methods; ``--alerts`` alert states; ``--budgets`` budgets;
``--rollouts`` rollouts in progress; ``--records`` records per version today, some
with feedback and a judge's score, and the day profiles of them), then times one
``collect()`` of the collector and one ``generate_latest`` of a registry holding it
(what ``/metrics`` sends), counting the SQL statements a scrape sends.

Old and new side by side: ``--old-src DIR`` measures the same store a second time
with the code under ``DIR`` (a checkout's ``src``) in a child process, e.g.

    git worktree add /tmp/scrape_old HEAD   # before the change
    .venv/bin/python benchmarks/scrape.py --old-src /tmp/scrape_old/src
    git worktree remove /tmp/scrape_old

Both sides run in child processes of their own, in turn, ``--repeats`` scrapes each
(median), and a scrape answered from what a collector with ``max_age_s`` kept
(code that has it). The series each side exports are compared: the same, except drift series
the old side left out (it read only the newest 10,000 drift rows, fewer than the
latest runs of ``--endpoints`` endpoints hold). ``--url`` measures a PostgreSQL
database instead of a temporary SQLite file (a throwaway one: dropped and created again).
Exits 0 whatever the numbers.

    .venv/bin/python benchmarks/scrape.py --quick   # 50 endpoints, a few seconds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
METHODS = ("psi", "ks", "wasserstein", "chi2", "jensenshannon")


def fill(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """The store at ``url`` filled as the module's text says; what went in, and how long."""
    from modelyard.delivery import start_rollout
    from modelyard.monitoring import update_profiles
    from modelyard.store import Store
    from modelyard.store._judges import Judgement
    from modelyard.store.entities import AlertState, DriftResult, NewInferenceRecord

    started = time.perf_counter()
    now = datetime.now(UTC)
    today = max(now - timedelta(minutes=30), now.replace(hour=0, minute=0, second=1))
    n_tenants = max(1, (args.budgets + 1) // 2)
    with Store.open(url) as store:
        store.register_base_model("tiny", "/models/tiny", {})
        tenants = [f"t{i:03d}" for i in range(n_tenants)]
        for t in tenants:
            store.create_tenant(t)
        for i in range(args.budgets):
            store.set_budget(tenants[i // 2], ("day", "month")[i % 2], 10.0 + i)
        store.put_judge("quality", rubric="relevance", base_url="http://127.0.0.1:9/v1", model="m")
        revision = store.get_judge("quality").revision
        tenant_ids = {t: store.get_tenant(t).id for t in tenants}
        versions: dict[str, list[int]] = {}
        for e in range(args.endpoints):
            name, tenant = f"ep{e:04d}", tenants[e % n_tenants]
            store.create_registered_model(name, tenant=tenant)
            versions[name] = [
                store.create_model_version(
                    name, kind="adapter", artifact_digest="00" * 32, base_model="tiny",
                    run_id=None, lineage={"prompt_template": "alpaca"}, metrics={},
                ).id
                for _ in range(args.versions)
            ]  # fmt: skip
            store.create_endpoint(name, model_ref=f"{name}:1", tenant=tenant)
            if args.versions > 1:
                share = 20 // (args.versions - 1)
                plan = {1: 80} | dict.fromkeys(range(2, args.versions + 1), share)
                plan[2] += 100 - sum(plan.values())
                store.set_traffic(name, plan)
                if e % 5 == 0:
                    store.set_shadow(name, args.versions, 0.1)
        names = sorted(versions)
        for name in names[: args.rollouts]:
            start_rollout(store, name, f"{name}:{args.versions}", steps="10,50,100",
                          override_gates="benchmark fill")  # fmt: skip
        features = [f"feature_{f:02d}" for f in range(args.features)]
        methods = METHODS[: args.methods]
        for run in range(args.runs):
            at = now - timedelta(hours=args.runs - run)
            for e, name in enumerate(names):
                run_id = f"{run:02d}-{e:04d}-0000-0000-000000000000"
                results = [
                    DriftResult(
                        run_id, at, name, f"{name}:1", tenants[e % n_tenants], "baseline",
                        at - timedelta(hours=1), at, feature, method, 0.05 * (e % 7), 0.1,
                        e % 7 > 2, "ok", 500, 500, {},
                    )
                    for feature in features
                    for method in methods
                ]  # fmt: skip
                store.add_drift_results(results, versions[name][0])
        for i in range(args.alerts):
            budget = i % 10 == 9
            labels = (
                {"tenant": tenants[i % n_tenants], "key": "*", "period": "day"}
                if budget
                else {"endpoint": names[i % len(names)]}
            )
            store.save_alert_state(
                AlertState(
                    f"a{i:05d}", f"rule{i // len(names)}" if not budget else f"spend{i}",
                    labels, "warning", ("firing", "pending", "resolved")[i % 3], 1.0, "",
                    now, now, None, now,
                )
            )  # fmt: skip
        records, judgements, rated = [], [], []
        for e, name in enumerate(names):
            for v, vid in enumerate(versions[name]):
                for r in range(args.records):
                    rid = f"r-{e}-{v}-{r}"
                    records.append(
                        NewInferenceRecord(
                            id=rid, endpoint_name=name, route="chat.completions",
                            latency_ms=5.0 + r, status="ok", http_status=200,
                            tenant_id=tenant_ids[tenants[e % n_tenants]], version_id=vid,
                            prompt="Q?", response="A.", created_at=today,
                        )
                    )  # fmt: skip
                    if r == 0:
                        rated.append((rid, tenants[e % n_tenants]))
                        judgements.append(
                            Judgement("quality", revision, f"h{rid}", rid, 4.0, "", None,
                                      10, 2, 0.0, 1.0)
                        )  # fmt: skip
        store.add_inference_records(records)
        store.save_judgements(judgements)
        for rid, tenant in rated[: args.feedback]:
            store.add_feedback(rid, tenant=tenant, score=1.0)
        update_profiles(store)
    return {
        "fill_s": round(time.perf_counter() - started, 1),
        "endpoints": args.endpoints,
        "versions": args.endpoints * args.versions,
        "drift_rows": args.endpoints * args.runs * args.features * args.methods,
        "drift_rows_latest": args.endpoints * args.features * args.methods,
        "alerts": args.alerts,
        "budgets": args.budgets,
        "rollouts": min(args.rollouts, args.endpoints),
        "records": len(records),
        "feedback": min(args.feedback, len(rated)),
    }


def measure(url: str, repeats: int) -> dict[str, Any]:
    """In this process (whichever ``modelyard`` it imports): one scrape's time and SQL."""
    from prometheus_client import CollectorRegistry, generate_latest
    from sqlalchemy import event

    import modelyard
    from modelyard.monitoring import MonitoringCollector
    from modelyard.store import Store

    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    with Store.open(url) as store:
        collector = MonitoringCollector(store)
        registry = CollectorRegistry()
        registry.register(collector)
        list(collector.collect())  # warm: connections opened, statements compiled
        event.listen(store._engine, "before_cursor_execute", seen)
        list(collector.collect())
        event.remove(store._engine, "before_cursor_execute", seen)
        queries = len(statements)
        collect_s, latest_s, cpu_s = [], [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            families = list(collector.collect())
            t1, c1 = time.perf_counter(), time.process_time()
            text = generate_latest(registry)
            t2, c2 = time.perf_counter(), time.process_time()
            collect_s.append(t1 - t0)
            latest_s.append(t2 - t1)
            cpu_s.append(c2 - c1)
        kept_s = []
        try:  # a scrape within max_age_s of the last read: no store read, the same text
            kept = MonitoringCollector(store, max_age_s=3600)
        except TypeError:  # code without it
            kept = None
        if kept is not None:
            again = CollectorRegistry()
            again.register(kept)
            generate_latest(again)
            for _ in range(repeats):
                t0 = time.perf_counter()
                same = generate_latest(again)
                kept_s.append(time.perf_counter() - t0)
            assert same == text
    series = sorted(
        line.rsplit(" ", 1)[0] for line in text.decode().splitlines() if not line.startswith("#")
    )
    return {
        "code": str(Path(modelyard.__file__).resolve().parent.parent),
        "collect_s": statistics.median(collect_s),
        "generate_latest_s": statistics.median(latest_s),
        "generate_latest_cpu_s": statistics.median(cpu_s),
        "queries": queries,
        "kept_s": statistics.median(kept_s) if kept_s else None,
        "families": len(families),
        "series": series,
        "bytes": len(text),
    }


def _child(url: str, repeats: int, src: Path | None) -> dict[str, Any]:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--measure", url,
         "--repeats", str(repeats)],
        env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def _fresh_postgres(url: str) -> None:
    """The database ``url`` names dropped and created again on its server."""
    from sqlalchemy import create_engine, make_url, text

    name = make_url(url).database
    if not name or name in ("postgres", "template0", "template1"):
        raise SystemExit(
            f"--url names database {name!r}: name a throwaway one (this benchmark drops it "
            "and creates it again), e.g. .../scrape_bench"
        )
    server = create_engine(make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    with server.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        c.execute(text(f'CREATE DATABASE "{name}"'))
    server.dispose()


def _by_family(series: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in series:
        name = s.split("{", 1)[0]
        counts[name] = counts.get(name, 0) + 1
    return counts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoints", type=int, default=500)
    p.add_argument("--versions", type=int, default=3)
    p.add_argument("--features", type=int, default=20)
    p.add_argument("--methods", type=int, default=2)
    p.add_argument("--runs", type=int, default=3, help="Drift runs per endpoint (history).")
    p.add_argument("--alerts", type=int, default=1000)
    p.add_argument("--budgets", type=int, default=200)
    p.add_argument("--rollouts", type=int, default=50)
    p.add_argument("--records", type=int, default=2, help="Records per version today.")
    p.add_argument("--feedback", type=int, default=300, help="Records with feedback.")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--replicas", type=int, default=10, help="N replicas scraped every 15 s.")
    p.add_argument("--url", help="A throwaway PostgreSQL database (dropped, created again).")
    p.add_argument("--old-src", type=Path, help="The old code's src, measured beside.")
    p.add_argument("--quick", action="store_true", help="50 endpoints, 100 alerts, ...")
    p.add_argument("--json", action="store_true", help="JSON on stdout, the table on stderr.")
    p.add_argument("--measure", help=argparse.SUPPRESS)  # a child: measure this URL
    args = p.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.repeats)))
        return 0
    if args.quick:
        args.endpoints, args.alerts, args.budgets, args.rollouts = 50, 100, 20, 5
        args.feedback, args.runs, args.repeats = 30, 2, 3
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite:///{Path(tmp) / 'store.db'}"
        if args.url:
            _fresh_postgres(url)
        filled = fill(url, args)
        sides = {"new": _child(url, args.repeats, HERE.parent / "src")}
        if args.old_src is not None:
            sides["old"] = _child(url, args.repeats, args.old_src.resolve())
    out = sys.stderr if args.json else sys.stdout
    print(f"store: {'postgresql' if args.url else 'sqlite'}, " + ", ".join(
        f"{k} {v}" for k, v in filled.items()), file=out)  # fmt: skip
    print(f"{'side':<5} {'collect ms':>11} {'scrape ms':>10} {'scrape cpu ms':>14} "
          f"{'queries':>8} {'series':>7} {'bytes':>9}  at {args.replicas} replicas scraped "
          "every 15 s", file=out)  # fmt: skip
    for name, side in sides.items():
        load = args.replicas / 15 * side["generate_latest_s"]
        print(f"{name:<5} {side['collect_s'] * 1e3:>11.1f} {side['generate_latest_s'] * 1e3:>10.1f}"
              f" {side['generate_latest_cpu_s'] * 1e3:>14.1f} {side['queries']:>8}"
              f" {len(side['series']):>7} {side['bytes']:>9}  {load:.3f} s of scraping a second",
              file=out)  # fmt: skip
    for name, side in sides.items():
        if side["kept_s"] is not None:
            print(f"{name}: a scrape within max_age_s of the last read (nothing read): "
                  f"{side['kept_s'] * 1e3:.1f} ms", file=out)  # fmt: skip
    report: dict[str, Any] = {"filled": filled}
    if "old" in sides:
        old, new = sides["old"], sides["new"]
        missing = sorted(set(old["series"]) - set(new["series"]))
        added = sorted(set(new["series"]) - set(old["series"]))
        print(f"ratio old/new: collect {old['collect_s'] / new['collect_s']:.1f}x, "
              f"scrape {old['generate_latest_s'] / new['generate_latest_s']:.1f}x, "
              f"queries {old['queries']} -> {new['queries']}", file=out)  # fmt: skip
        print(f"series per family, old: {_by_family(old['series'])}", file=out)
        print(f"series per family, new: {_by_family(new['series'])}", file=out)
        print(f"series only old: {len(missing)}; only new: {len(added)} "
              f"({sorted(_by_family(added))})", file=out)  # fmt: skip
        report["only_old"] = missing
        report["only_new_families"] = _by_family(added)
    for side in sides.values():
        side["series"] = len(side["series"])
    report["sides"] = sides
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
