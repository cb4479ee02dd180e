"""Journey 5 at its scale: one base, 200 tenants, each with its own endpoint, versions,
API keys, budgets and traffic plan, a week of records.

The script fills a store (``--tenants`` tenants, one endpoint each on a model of
``--versions`` versions with a traffic plan over them, every fifth with a shadow; two API
keys per tenant, a day budget per tenant and a month budget on one key; a drift run per
endpoint; ``--rollouts`` rollouts in progress; ``--records`` inference records spread over
the endpoints and the last 7 days, bulk inserted, a twentieth with feedback; the profiles
of them; ``--judge-rollouts`` more rollouts with a guard on judge ``quality``, whose
endpoints' records keep their prompt and response, every other one of the last two hours
scored by the judge), then measures, in a child process of its own, each periodic or
per-request job whose work grows with the number of endpoints: the SQL statements one run
sends and its median wall time over ``--repeats`` runs.

- ``startup``: a serving app's start (``create_app`` and its lifespan: abandoned requests
  closed, the endpoints read); ``refresh``: the router's reload every ``refresh_seconds``;
  ``/v1/models``: a key's model list (the key authenticated once, then cached);
- ``controller tick``: the rollout controller's pass over the active rollouts, and the
  judging job it starts for those with a guard on a judge (the judge's calls left out:
  ``judge_records`` answers nothing, so the job's reads are measured and the store stays);
- ``alert rules``: ``evaluate_rules`` of a rules file with per-endpoint traffic rules
  (error rate, p95 latency), a drift rule, a judge rule and a budget rule;
- ``drift tick``: the monitoring tick's drift part in its steady state (every endpoint's
  last scheduled run is recent: nothing is due);
- ``profiles``: ``update_profiles`` after a minute more of traffic;
- ``scrape``: ``/metrics`` of the serving app (the store's gauges read at scrape time);
- ``admin ...``: the admin API's pages (``/tenants``, ``/keys``, ``/endpoints``,
  ``/budgets``) and the console's overview calls (``/endpoints``, ``/rollouts?active=true``,
  ``/alerts``, ``/drift?latest=true``, ``/feedback/summary``, ``/models``);
- ``report``: ``monitor report`` of one endpoint over 7 days.

``--small`` fills a second store of a tenth of the tenants (the same records per
endpoint) and shows the statements of both side by side: an operation whose statements
grow tenfold reads the store once per endpoint. ``--old-src DIR`` measures the large
store a second time with the code under ``DIR`` (a checkout's ``src``), e.g.

    git worktree add /tmp/many_old HEAD   # before the change
    .venv/bin/python benchmarks/many_tenants.py --old-src /tmp/many_old/src
    git worktree remove /tmp/many_old

``--url`` measures a PostgreSQL database (a throwaway one: dropped and created again).
Exits 0 whatever the numbers.

    .venv/bin/python benchmarks/many_tenants.py --quick   # 40 tenants, 100k records
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RULES = {
    "drift": {"every": "1h", "window": "1h", "reference": "previous:1d"},
    "rules": [
        {"name": "errors", "metric": "error_rate", "comparison": ">", "threshold": 0.05,
         "window": "5m"},
        {"name": "slow", "metric": "p95_latency_ms", "comparison": ">", "threshold": 900,
         "window": "15m"},
        {"name": "drifting", "metric": "drifted_features", "comparison": ">=", "threshold": 3,
         "window": "2h"},
        {"name": "judged", "metric": "judge.quality", "comparison": "<", "threshold": 2,
         "window": "1h"},
        {"name": "spend", "metric": "budget_used", "comparison": ">=", "threshold": 0.9},
    ],
}  # fmt: skip


def _records(
    url: str,
    endpoints: list[tuple[str, int, list[int], str]],
    n: int,
    now: datetime,
    judged: set[str],
) -> None:
    """``n`` records over ``endpoints`` (name, tenant id, version ids, API key id) and 7 days
    before ``now``, a twentieth with feedback, in bulk (their usage counted after); those of
    the endpoints ``judged`` keep their text, and every other one of the last two hours has a
    score of judge ``quality``."""
    from sqlalchemy import create_engine, text

    rng = random.Random(5)
    engine = create_engine(url)
    start = (now - timedelta(days=7)).replace(tzinfo=None)
    span = 7 * 86400 - 120
    insert = text(
        "insert into inference_records (id, created_at, tenant_id, api_key_id, endpoint_name, "
        "version_id, route, prompt_tokens, completion_tokens, latency_ms, ttft_ms, status, "
        "http_status, shadow, source, prompt, response) values (:id, :c, :t, :k, :e, :v, "
        "'chat.completions', :pt, :ct, :l, :f, :s, :h, :sh, 'api', :p, :r)"
    )
    scored = text(
        "insert into judgements (judge, revision, input_hash, record_id, score, "
        "prompt_tokens, completion_tokens, cost, latency_ms, created_at) values "
        "('quality', 1, :i, :r, :s, 1, 1, 0.0, 1.0, :c)"
    )
    recent = (now - timedelta(hours=2)).replace(tzinfo=None)
    feedback = text(
        "insert into feedback (id, record_id, tenant_id, score, created_at, updated_at) "
        "values (:i, :r, :t, :s, :c, :c)"
    )
    with engine.begin() as c:
        for k in range(0, n, 50_000):
            rows, rated, judgements = [], [], []
            for j in range(k, min(n, k + 50_000)):
                name, tid, vids, key_id = endpoints[j % len(endpoints)]
                at = start + timedelta(seconds=rng.random() * span)
                ok = rng.random() > 0.02
                rows.append({
                    "id": f"r{j:09d}", "c": at, "t": tid, "k": key_id, "e": name,
                    "v": vids[0] if rng.random() < 0.8 else rng.choice(vids),
                    "pt": 40, "ct": 20, "l": rng.lognormvariate(5, 0.4), "f": 20.0,
                    "s": "ok" if ok else "error", "h": 200 if ok else 500, "sh": False,
                    "p": "### Instruction:\nhi\n\n### Response:\n" if name in judged else None,
                    "r": "hello" if name in judged else None,
                })  # fmt: skip
                if name in judged and at >= recent and j % 2 == 0:
                    judgements.append({"i": f"h{j:09d}", "r": f"r{j:09d}", "c": at,
                                       "s": float(1 + j % 5)})  # fmt: skip
                if rng.random() < 0.05 and ok:
                    rated.append({"i": f"fb{j:09d}", "r": f"r{j:09d}", "t": tid, "s": 1.0, "c": at})
            c.execute(insert, rows)
            c.execute(feedback, rated)
            if judgements:
                c.execute(scored, judgements)
    engine.dispose()


def fill(
    url: str, tenants: int, versions: int, records: int, rollouts: int, judge_rollouts: int
) -> dict[str, Any]:
    """The store at ``url`` filled as the module's text says; what went in, and how long."""
    from modelyard.access import create_api_key
    from modelyard.delivery import DEFAULT_POLICY, start_rollout
    from modelyard.monitoring import update_profiles
    from modelyard.store import Store
    from modelyard.store.entities import DriftResult

    started = time.perf_counter()
    now = datetime.now(UTC)
    keys: dict[str, str] = {}
    with Store.open(url) as store:
        store.register_base_model("base", "/models/base", {})
        store.put_judge("quality", rubric="relevance", base_url="http://127.0.0.1:9/v1", model="m")
        endpoints = []
        for i in range(tenants):
            tenant = name = f"t{i:03d}"
            store.create_tenant(tenant)
            store.create_registered_model(name, tenant=tenant)
            vids = [
                store.create_model_version(
                    name, kind="adapter", artifact_digest="00" * 32, base_model="base",
                    run_id=None, lineage={"prompt_template": "alpaca"}, metrics={},
                ).id
                for _ in range(versions)
            ]  # fmt: skip
            store.create_endpoint(name, model_ref=f"{name}:1", tenant=tenant)
            if versions > 1:
                store.set_traffic(name, {1: 90, 2: 10})
            if i % 5 == 0:
                store.set_shadow(name, versions, 0.1)
            made = [create_api_key(store, tenant) for _ in range(2)]
            keys[tenant] = made[0][1]
            store.set_budget(tenant, "day", 10.0 + i)
            store.set_budget(tenant, "month", 100.0, key_id=made[1][0].id)
            endpoints.append((name, store.get_tenant(tenant).id, vids, made[0][0].id))
            at = now - timedelta(minutes=20)
            store.add_drift_results(
                [DriftResult(f"{i:08d}-0000-0000-0000-000000000000", at, name, f"{name}:1",
                             tenant, "previous:1d", at - timedelta(hours=1), at, f"f{f}",
                             "psi", 0.05 * f, 0.2, f > 3, "ok", 500, 500, {}, True)
                 for f in range(6)],
                vids[0],
            )  # fmt: skip
        store.set_token_price("base", input_per_1k=0.5, output_per_1k=1.5)
        judged = [name for name, *_ in endpoints[rollouts : rollouts + judge_rollouts]]
        _records(url, endpoints, records, now, set(judged))
        for name, *_ in endpoints:  # bulk inserted: their usage (budgets' spend) counted
            store.recount_usage(name, now - timedelta(days=8))
        for name, *_ in endpoints[:rollouts]:
            start_rollout(store, name, f"{name}:{versions}", steps="10,50,100", bake_s=3600,
                          override_gates="benchmark fill")  # fmt: skip
        for name in judged:
            start_rollout(store, name, f"{name}:{versions}", steps="10,50,100", bake_s=3600,
                          override_gates="benchmark fill",
                          guards=(*DEFAULT_POLICY.guards,
                                  "judge.quality >= baseline - 0.5 (sample 20)"))  # fmt: skip
        profiled = time.perf_counter()
        update_profiles(store, now=now)
        profiles_s = time.perf_counter() - profiled
    return {
        "fill_s": round(time.perf_counter() - started, 1),
        "first_profiles_s": round(profiles_s, 1),
        "tenants": tenants,
        "versions": tenants * versions,
        "keys": 2 * tenants,
        "budgets": 2 * tenants,
        "records": records,
        "rollouts": min(rollouts, tenants),
        "judge_rollouts": len(judged),
        "key": keys["t001"],
    }


def measure(url: str, repeats: int, key: str) -> dict[str, Any]:
    """In this process (whichever ``modelyard`` it imports): each operation's SQL and time."""
    from types import SimpleNamespace

    from fastapi.testclient import TestClient
    from sqlalchemy import event

    import modelyard
    from modelyard.access import create_actor_token
    from modelyard.admin import create_admin_app
    from modelyard.audit import AccessPolicy
    from modelyard.delivery import Controller, _judging
    from modelyard.monitoring import AlertRules, evaluate_rules, update_profiles
    from modelyard.monitoring._report import render_report
    from modelyard.monitoring._tick import _due_drift
    from modelyard.serving import create_app
    from modelyard.serving._engine import EchoEngine
    from modelyard.store import Store

    def no_judge(store: Any, judge: Any, ids: Any) -> Any:
        return SimpleNamespace(judgements=[])

    judging: Any = _judging  # its judge answers nothing: the job's reads, no call, no write
    judging.judge_records = no_judge
    rules = AlertRules.parse(RULES)
    sent: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        sent.append(statement)

    out: dict[str, Any] = {"code": str(Path(modelyard.__file__).resolve().parent.parent)}
    with Store.open(url, actor="ops", policy=AccessPolicy(bootstrap_admin="ops")) as store:
        store.add_actor("ops", "admin")
        token = create_actor_token(store, "ops")[1]
        admin = TestClient(create_admin_app(store))
        admin.headers["Authorization"] = f"Bearer {token}"
        app = create_app(store, EchoEngine(), heartbeat_s=None, refresh_seconds=3600)
        router = app.state.plane.router
        controller = Controller(store, holder="bench")
        clock = [datetime.now(UTC)]

        def tick() -> None:  # and the judging job it started (one at a time: wait for it)
            controller.tick()
            controller._judging.submit(lambda: None).result()

        def startup() -> None:
            with TestClient(create_app(store, EchoEngine(), heartbeat_s=None)):
                pass

        def serving(path: str) -> Any:
            return lambda: served.get(path, headers={"Authorization": f"Bearer {key}"})

        def profiles() -> None:
            clock[0] += timedelta(minutes=1)
            update_profiles(store, now=clock[0])

        def get(path: str) -> Any:
            def call() -> None:
                r = admin.get(path)
                assert r.status_code == 200, (path, r.status_code, r.text[:200])

            return call

        ops = {
            "startup": startup,
            "refresh": router.refresh,
            "/v1/models": None,
            "controller tick": tick,
            "alert rules": lambda: evaluate_rules(store, rules, datetime.now(UTC)),
            "drift tick": lambda: _due_drift(store, rules, datetime.now(UTC), None),
            "profiles": profiles,
            "scrape": None,
            "admin /tenants": get("/tenants?limit=50"),
            "admin /keys": get("/keys?limit=100"),
            "admin /endpoints": get("/endpoints"),
            "admin /budgets": get("/budgets"),
            "console /rollouts": get("/rollouts?active=true"),
            "console /alerts": get("/alerts"),
            "console /drift": get("/drift?latest=true"),
            "console /feedback": get("/feedback/summary"),
            "console /models": get("/models?limit=50"),
            "report": None,
        }
        week = datetime.now(UTC) - timedelta(days=7)
        ops["report"] = lambda: render_report(store, "t001", since=week)
        with TestClient(app) as served:
            ops["/v1/models"] = serving("/v1/models")
            ops["scrape"] = serving("/metrics")
            for name, fn in ops.items():
                assert fn is not None
                try:
                    fn()  # warm: connections, compiled statements, caches
                except Exception as exc:  # an old side without an endpoint: say so
                    out[name] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
                    continue
                event.listen(store._engine, "before_cursor_execute", seen)
                fn()
                event.remove(store._engine, "before_cursor_execute", seen)
                count = len(sent)
                sent.clear()
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - t0)
                out[name] = {"statements": count, "ms": statistics.median(times) * 1e3}
        controller.close()
    return out


def _child(url: str, repeats: int, key: str, src: Path | None) -> dict[str, Any]:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--measure", url, "--key", key,
         "--repeats", str(repeats)],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"the child measuring {url} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _fresh_postgres(url: str) -> None:
    """The database ``url`` names dropped and created again on its server."""
    from sqlalchemy import create_engine, make_url, text

    name = make_url(url).database
    if not name or name in ("postgres", "template0", "template1"):
        raise SystemExit(f"--url names database {name!r}: name a throwaway one (it is dropped)")
    server = create_engine(make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    with server.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        c.execute(text(f'CREATE DATABASE "{name}"'))
    server.dispose()


def _cell(side: dict[str, Any], op: str) -> str:
    got = side.get(op, {})
    if "error" in got:
        return f"{'error':>10} {'':>10}"
    return f"{got['statements']:>10} {got['ms']:>10.1f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tenants", type=int, default=200)
    p.add_argument("--versions", type=int, default=3)
    p.add_argument("--records", type=int, default=1_500_000)
    p.add_argument("--rollouts", type=int, default=4)
    p.add_argument("--judge-rollouts", type=int, default=4, help="Rollouts with a judge guard.")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--small", action="store_true", help="Also a store of a tenth the tenants.")
    p.add_argument("--url", help="A throwaway PostgreSQL database (dropped, created again).")
    p.add_argument("--old-src", type=Path, help="The old code's src, measured beside.")
    p.add_argument("--quick", action="store_true", help="40 tenants, 100k records.")
    p.add_argument("--json", action="store_true", help="JSON on stdout, the table on stderr.")
    p.add_argument("--measure", help=argparse.SUPPRESS)  # a child: measure this URL
    p.add_argument("--key", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.repeats, args.key)))
        return 0
    if args.quick:
        args.tenants, args.records = 40, 100_000
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        sizes = {"large": (args.tenants, args.records)}
        if args.small:
            sizes["small"] = (max(1, args.tenants // 10), args.records // 10)
        sides: dict[str, dict[str, Any]] = {}
        for size, (tenants, records) in sizes.items():
            url = f"sqlite:///{Path(tmp) / f'{size}.db'}"
            if args.url:
                url = args.url if size == "large" else f"{args.url}_small"
                _fresh_postgres(url)
            filled = fill(url, tenants, args.versions, records, args.rollouts, args.judge_rollouts)
            key = filled.pop("key")
            report[f"filled_{size}"] = filled
            sides[f"new {size}"] = _child(url, args.repeats, key, HERE.parent / "src")
            if args.old_src is not None:
                sides[f"old {size}"] = _child(url, args.repeats, key, args.old_src.resolve())
    out = sys.stderr if args.json else sys.stdout
    for size in sizes:
        print(f"store {size}: {'postgresql' if args.url else 'sqlite'}, " + ", ".join(
            f"{k} {v}" for k, v in report[f"filled_{size}"].items()), file=out)  # fmt: skip
    names = list(sides)
    print(f"{'operation':<20}" + "".join(f" {n + ' stmts':>10} {n + ' ms':>10}" for n in names),
          file=out)  # fmt: skip
    ops = [k for k in sides[names[0]] if k != "code"]
    for op in ops:
        print(f"{op:<20}" + "".join(f" {_cell(sides[n], op)}" for n in names), file=out)
    if "old large" in sides:
        old, new = sides["old large"], sides["new large"]
        print("ratio old/new (large): " + ", ".join(
            f"{op} {old[op]['ms'] / new[op]['ms']:.1f}x"
            for op in ops if "ms" in old.get(op, {}) and "ms" in new.get(op, {})
        ), file=out)  # fmt: skip
    report["sides"] = sides
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
