"""Scale review: listings of many registered models, tenants and keys.

Each section builds its data in a fresh SQLite store under a temporary directory (bulk
SQL for the bulk, the store's own API for the rest) and measures the path a user takes,
old and new side by side in the same run, printing their ratio and the SELECT
statements (or HTTP requests) each side sends:

1. ``store``: ``Store.list_registered_models`` of ``--models`` models (each with 3
   versions and aliases; what doctor, the orphan check and ``GET /models`` read). Old:
   every model converted on its own (``to_registered_model``: its tenant, aliases and
   latest number, three queries a model); new: three queries for them all. And what
   the local ``registry list`` reads: old, that list and then each model's latest
   version on its own (``get_model_version``); new, ``list_models_with_latest``.
2. ``remote``: ``registry list`` through a server (a real one on 127.0.0.1, the admin
   API mounted). Old: the old ``GET /models`` (its handler verbatim, mounted beside the
   API) and a ``GET /models/{m}/versions/{n}`` for each model's latest gates; new:
   ``RemotePlane.list_models``, one ``GET /models`` a page of 1000.
3. ``tenants``: ``GET /tenants``'s handler over ``--tenants`` tenants with two keys each.
   Old: the retention policies read again for each tenant, every key looked at for
   each tenant; new: a page of 1000 at a time, the policies once, each key once.
4. ``budgets``: the first page of ``GET /tenants`` (1000 of ``--budget-tenants``
   tenants, each with two keys, a day budget, a month budget of one key, and 10 records
   this month). Old: a ``budget_status`` each (its code before ``budget_statuses``,
   verbatim: ``spent``, a query or two a budget); new: ``budget_statuses`` for the page.

Timings are the median of ``--repeats`` runs. Exits 0 whatever the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _timing import median_s
from sqlalchemy import create_engine, event, select, text

from modelyard.store import Store

SECTIONS = ("store", "remote", "tenants", "budgets")


@contextmanager
def _selects(store: Store) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append(statement)

    event.listen(store._engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(store._engine, "before_cursor_execute", count)


def _count(store: Store, fn: Callable[[], Any]) -> int:
    with _selects(store) as seen:
        fn()
    return len(seen)


def _seed_models(url: str, models: int) -> None:
    """``models`` models m00000.. of 20 tenants, 3 versions each (the latest's gates
    passed), staging on version 1 and champion on 3 for every other model."""
    with Store.open(url) as store:
        for t in range(20):
            store.create_tenant(f"t{t:02d}")
        store.register_base_model("tiny", "/models/tiny", {"model.safetensors": "ab" * 32})
    now = datetime.now(UTC).replace(tzinfo=None)
    gates = json.dumps({"exact_match": 0.9, "gates": {"passed": True, "verdicts": [
        {"gate": "exact_match >= 0.8", "passed": True, "reason": "0.9 >= 0.8"}]}})  # fmt: skip
    engine = create_engine(url)
    with engine.begin() as c:
        c.execute(
            text("insert into registered_models (id, name, tenant_id, description, created_at) "
                 "values (:i, :n, :t, '', :c)"),
            [{"i": i + 1, "n": f"m{i:05d}", "t": i % 20 + 1, "c": now} for i in range(models)],
        )  # fmt: skip
        c.execute(
            text("insert into model_versions (id, registered_model_id, version, kind, status, "
                 "artifact_digest, base_model_id, lineage, metrics, created_at, created_by, tags)"
                 " values (:id, :m, :v, 'adapter', 'ready', :d, 1, '{}', :x, :c, 'ops', '{}')"),
            [{"id": i * 3 + v, "m": i + 1, "v": v, "d": f"{i:032x}{v:032x}",
              "x": gates if v == 3 else "{}", "c": now}
             for i in range(models) for v in (1, 2, 3)],
        )  # fmt: skip
        c.execute(
            text("insert into model_aliases (registered_model_id, alias, version_id, updated_at)"
                 " values (:m, :a, :v, :c)"),
            [{"m": i + 1, "a": a, "v": i * 3 + v, "c": now}
             for i in range(models) for a, v in (("staging", 1), ("champion", 3))
             if a == "staging" or i % 2 == 0],
        )  # fmt: skip
    engine.dispose()


def bench_store(root: Path, models: int, repeats: int) -> dict[str, Any]:
    from modelyard.store._convert import to_registered_model
    from modelyard.store._schema import RegisteredModelRow

    url = f"sqlite:///{root / 'models.db'}"
    _seed_models(url, models)
    with Store.open(url) as store:

        def old() -> list[Any]:  # list_registered_models before the review, verbatim
            with store._session("list registered models") as s:
                query = select(RegisteredModelRow).order_by(RegisteredModelRow.name)
                return [to_registered_model(s, r) for r in s.scalars(query)]

        def old_cli() -> list[Any]:  # registry list on the database before: + each latest
            listed = old()
            return [
                (m, store.get_model_version(m.name, m.latest_version).gates)
                for m in listed
                if m.latest_version is not None
            ]

        def new_cli() -> list[Any]:
            return [(m, v.gates) for m, v in store.list_models_with_latest() if v is not None]

        assert old() == store.list_registered_models(), "the two lists differ"
        assert old_cli() == new_cli(), "the two registry lists differ"
        out = {
            "models": models,
            "old_s": median_s(old, repeats),
            "new_s": median_s(store.list_registered_models, repeats),
            "old_queries": _count(store, old),
            "new_queries": _count(store, store.list_registered_models),
            "cli_old_s": median_s(old_cli, repeats),
            "cli_new_s": median_s(new_cli, repeats),
            "cli_old_queries": _count(store, old_cli),
            "cli_new_queries": _count(store, new_cli),
        }
    out["ratio"] = out["old_s"] / out["new_s"]
    out["cli_ratio"] = out["cli_old_s"] / out["cli_new_s"]
    return out


def bench_remote(root: Path, models: int, repeats: int) -> dict[str, Any]:
    from fastapi import FastAPI

    from modelyard.access import create_actor_token
    from modelyard.admin import ADMIN_PREFIX, create_admin_app
    from modelyard.admin._encode import jsonable
    from modelyard.audit import AccessPolicy
    from modelyard.cli._decode import decode
    from modelyard.cli._remote import AdminClient, Remote
    from modelyard.cli._remote_plane import RemotePlane
    from modelyard.serving import BackgroundServer, EchoEngine, create_app
    from modelyard.store import ModelVersion, RegisteredModel
    from modelyard.store._convert import to_registered_model
    from modelyard.store._schema import RegisteredModelRow

    url = f"sqlite:///{root / 'remote.db'}"
    _seed_models(url, models)
    with Store.open(url, actor="ops", policy=AccessPolicy(bootstrap_admin="ops")) as ops:
        ops.add_actor("ops", "admin")
        token = create_actor_token(ops, "ops")[1]
        old_api = FastAPI()

        @old_api.get("/models")
        def old_models() -> list[dict[str, Any]]:  # the route before the review, verbatim
            with ops._session("list registered models") as s:
                query = select(RegisteredModelRow).order_by(RegisteredModelRow.name)
                return [jsonable(to_registered_model(s, r)) for r in s.scalars(query)]

        mounts = {ADMIN_PREFIX: create_admin_app(ops), "/old": old_api}
        app = create_app(ops, EchoEngine(), heartbeat_s=None, mounts=mounts)
        with BackgroundServer(app) as server:
            remote = Remote.from_env({"MODELYARD_URL": server.base_url, "MODELYARD_TOKEN": token})
            sent: list[str] = []
            with RemotePlane(AdminClient(remote)) as plane:
                send = plane.client.send

                def counted(method: str, path: str, **kw: Any) -> Any:
                    sent.append(path)
                    return send(method, path, **kw)

                plane.client.send = counted  # type: ignore[method-assign]
                import httpx

                def old() -> list[Any]:  # registry list before: the list, then each latest
                    listed = httpx.get(server.base_url + "/old/models", timeout=600).json()
                    sent.append("/models")
                    out = []
                    for m in listed:
                        if m["latest_version"] is not None:
                            v = plane.get_model_version(m["name"], m["latest_version"])
                            out.append((decode(RegisteredModel, m), v.gates))
                    return out

                def new() -> list[Any]:
                    return [(e.model, e.latest_gates) for e in plane.list_models()]

                assert old() == new(), "the two registry lists differ"
                sent.clear()
                old()
                old_requests = len(sent)
                sent.clear()
                new()
                new_requests = len(sent)
                old_s, new_s = median_s(old, repeats), median_s(new, repeats)
                assert isinstance(plane.get_model_version("m00000", 3), ModelVersion)
    return {
        "models": models,
        "old_s": old_s,
        "new_s": new_s,
        "ratio": old_s / new_s,
        "old_requests": old_requests,
        "new_requests": new_requests,
    }


def _seed_tenants(url: str, tenants: int) -> None:
    with Store.open(url) as store:
        store.create_tenant("t00000")
        store.set_retention("t00000", 30)
    now = datetime.now(UTC).replace(tzinfo=None)
    engine = create_engine(url)
    with engine.begin() as c:
        c.execute(
            text("insert into tenants (id, name, storage_policy, created_at) "
                 "values (:i, :n, 'redacted', :c)"),
            [{"i": i + 1, "n": f"t{i:05d}", "c": now} for i in range(1, tenants)],
        )  # fmt: skip
        c.execute(
            text("insert into api_keys (id, tenant_id, key_hash, scopes, created_at) "
                 "values (:i, :t, :h, '[\"infer\"]', :c)"),
            [{"i": f"k{i:06d}{k}", "t": i + 1, "h": f"{i:062x}{k:02x}", "c": now}
             for i in range(tenants) for k in (0, 1)],
        )  # fmt: skip
    engine.dispose()


def bench_tenants(root: Path, tenants: int, repeats: int) -> dict[str, Any]:
    from modelyard.admin._encode import jsonable
    from modelyard.admin._params import MAX_PAGE
    from modelyard.admin._tenants import _tenants_json, key_json

    url = f"sqlite:///{root / 'tenants.db'}"
    _seed_tenants(url, tenants)
    with Store.open(url) as store:

        def old() -> list[dict[str, Any]]:  # GET /tenants before the review, verbatim
            now = datetime.now(UTC)
            keys, budgets = store.list_api_keys(), store.list_budgets()
            out = []
            for t in store.list_tenants():
                retention = {p.tenant: p.raw_days for p in store.list_retention()}
                mine = [key_json(k, now) for k in keys if k.tenant == t.name]
                out.append({
                    **jsonable(t), "retention_days": retention.get(t.name),
                    "keys": {"active": sum(k["state"] == "active" for k in mine),
                             "total": len(mine)},
                    "budgets": [store.budget_status(b, now) for b in budgets
                                if b.tenant == t.name],
                })  # fmt: skip
            return out

        def page(after: str | None) -> list[dict[str, Any]]:  # GET /tenants?after= now
            found = store.list_tenants(limit=MAX_PAGE, after=after)
            keys, budgets = store.list_api_keys(), store.list_budgets()
            return _tenants_json(store, found, keys, budgets, datetime.now(UTC))

        def new() -> list[dict[str, Any]]:  # every page, as the CLI reads them
            out, after = [], None
            while True:
                found = page(after)
                out.extend(found)
                if len(found) < MAX_PAGE:
                    return out
                after = found[-1]["name"]

        assert old() == new(), "the two tenant lists differ"
        out = {
            "tenants": tenants,
            "old_s": median_s(old, repeats),
            "new_s": median_s(new, repeats),
            "first_page_s": median_s(lambda: page(None), repeats),
            "old_queries": _count(store, old),
            "new_queries": _count(store, new),
        }
    out["ratio"] = out["old_s"] / out["new_s"]
    return out


def _seed_budgets(url: str, tenants: int) -> None:
    """``_seed_tenants`` plus a priced base model, each tenant's day budget and its second
    key's month budget, and 10 records a tenant this month (5 of them today), on both
    keys; prices and tokens exact in binary, so old and new sums agree to the bit."""
    from datetime import timedelta

    from modelyard.store._budgets import period_start

    _seed_tenants(url, tenants)
    with Store.open(url) as store:
        store.register_base_model("tiny", "/models/tiny", {})
        store.create_registered_model("bot", tenant="t00000")
        version = store.create_model_version(
            "bot", kind="adapter", artifact_digest="00" * 32, base_model="tiny", run_id=None,
            lineage={}, metrics={},
        ).id  # fmt: skip
        store.set_token_price("tiny", input_per_1k=0.5, output_per_1k=2.0)
    now = datetime.now(UTC)
    today = period_start("day", now)
    earlier = max(period_start("month", now), today - timedelta(days=1))
    stamp = now.replace(tzinfo=None)
    engine = create_engine(url)
    with engine.begin() as c:
        c.execute(
            text("insert into budgets (tenant_id, key_id, period, amount, updated_at, "
                 "updated_by) values (:t, :k, :p, :a, :c, 'ops')"),
            [row for i in range(tenants) for row in (
                {"t": i + 1, "k": "", "p": "day", "a": 10.0, "c": stamp},
                {"t": i + 1, "k": f"k{i:06d}1", "p": "month", "a": 20.0, "c": stamp})],
        )  # fmt: skip
        c.execute(
            text("insert into inference_records (id, created_at, tenant_id, api_key_id, "
                 "endpoint_name, version_id, route, prompt_tokens, completion_tokens, "
                 "latency_ms, status, http_status, shadow, source) values (:i, :c, :t, :k, "
                 "'support', :v, 'completions', 1000, :o, 1.0, 'ok', 200, false, 'api')"),
            [{"i": f"r{i:06d}-{r}", "c": (today if r < 5 else earlier).replace(tzinfo=None)
              + timedelta(minutes=r), "t": i + 1, "k": f"k{i:06d}{r % 2}", "v": version,
              "o": 500 * (r + 1)} for i in range(tenants) for r in range(10)],
        )  # fmt: skip
    engine.dispose()


def bench_budgets(root: Path, tenants: int, repeats: int) -> dict[str, Any]:
    from modelyard.admin._encode import jsonable
    from modelyard.admin._params import MAX_PAGE
    from modelyard.admin._tenants import _state, _tenants_json
    from modelyard.store import Budget
    from modelyard.store._budgets import period_end, period_start

    url = f"sqlite:///{root / 'budgets.db'}"
    _seed_budgets(url, tenants)
    with Store.open(url) as store:

        def old_status(budget: Budget, now: datetime) -> dict[str, Any]:  # verbatim, before
            spent = store.spent(
                budget.tenant, period_start(budget.period, now), key_id=budget.key_id
            )
            return {
                "tenant": budget.tenant,
                "key_id": budget.key_id,
                "period": budget.period,
                "amount": budget.amount,
                "spent": spent,
                "used_percent": 100 * spent / budget.amount,
                "renews_at": period_end(budget.period, now).isoformat(),
                "updated_at": budget.updated_at.isoformat(),
                "updated_by": budget.updated_by,
            }

        def old(now: datetime) -> list[dict[str, Any]]:  # the first page, a status each
            found = store.list_tenants(limit=MAX_PAGE)
            keys, budgets = store.list_api_keys(), store.list_budgets()
            retention = {p.tenant: p.raw_days for p in store.list_retention()}
            counts: dict[str, list[int]] = {t.name: [0, 0] for t in found}
            for k in keys:
                if k.tenant in counts:
                    counts[k.tenant][0] += _state(k, now) == "active"
                    counts[k.tenant][1] += 1
            return [
                {
                    **jsonable(t),
                    "retention_days": retention.get(t.name),
                    "keys": {"active": counts[t.name][0], "total": counts[t.name][1]},
                    "budgets": [old_status(b, now) for b in budgets if b.tenant == t.name],
                }
                for t in found
            ]

        def new(now: datetime) -> list[dict[str, Any]]:  # GET /tenants's first page now
            found = store.list_tenants(limit=MAX_PAGE)
            keys, budgets = store.list_api_keys(), store.list_budgets()
            return _tenants_json(store, found, keys, budgets, now)

        now = datetime.now(UTC)
        first = new(now)
        assert old(now) == first, "the two pages differ"
        assert sum(len(t["budgets"]) for t in first) == 2 * min(tenants, MAX_PAGE)
        assert all(b["spent"] > 0 for t in first for b in t["budgets"]), "no spend seeded"
        out = {
            "tenants": tenants,
            "page": len(first),
            "old_s": median_s(lambda: old(now), repeats),
            "new_s": median_s(lambda: new(now), repeats),
            "old_queries": _count(store, lambda: old(now)),
            "new_queries": _count(store, lambda: new(now)),
        }
    out["ratio"] = out["old_s"] / out["new_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=SECTIONS, action="append", help="Run these only.")
    parser.add_argument("--models", type=int, default=2000)
    parser.add_argument("--tenants", type=int, default=2000)
    parser.add_argument("--budget-tenants", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="Small sizes: a smoke test.")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args()
    if args.quick:
        args.models, args.tenants, args.budget_tenants, args.repeats = 50, 50, 50, 1
    os.environ.setdefault("MODELYARD_HOME", tempfile.mkdtemp(prefix="modelyard-bench-home-"))
    results: dict[str, Any] = {"cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="modelyard-listing-") as tmp:
        root = Path(tmp)
        for section in args.only or SECTIONS:
            if section == "store":
                r = results["store"] = bench_store(root, args.models, args.repeats)
                print(
                    f"store: list of {r['models']} models: old {r['old_s'] * 1000:.0f} ms "
                    f"({r['old_queries']} queries), new {r['new_s'] * 1000:.0f} ms "
                    f"({r['new_queries']} queries), ratio {r['ratio']:.1f}x; registry list "
                    f"(with the latest versions): old {r['cli_old_s'] * 1000:.0f} ms "
                    f"({r['cli_old_queries']} queries), new {r['cli_new_s'] * 1000:.0f} ms "
                    f"({r['cli_new_queries']} queries), ratio {r['cli_ratio']:.1f}x"
                )
            elif section == "remote":
                r = results["remote"] = bench_remote(root, args.models, args.repeats)
                print(
                    f"remote: registry list of {r['models']} models through a server: old "
                    f"{r['old_s']:.2f} s ({r['old_requests']} requests), new {r['new_s']:.2f} s"
                    f" ({r['new_requests']} requests), ratio {r['ratio']:.1f}x"
                )
            elif section == "tenants":
                r = results["tenants"] = bench_tenants(root, args.tenants, args.repeats)
                print(
                    f"tenants: GET /tenants of {r['tenants']} tenants (2 keys each): old "
                    f"{r['old_s']:.2f} s ({r['old_queries']} queries), new (every page) "
                    f"{r['new_s']:.2f} s ({r['new_queries']} queries), ratio {r['ratio']:.1f}x;"
                    f" first page of 1000: {r['first_page_s']:.2f} s"
                )
            elif section == "budgets":
                r = results["budgets"] = bench_budgets(root, args.budget_tenants, args.repeats)
                print(
                    f"budgets: GET /tenants, first page ({r['page']} of {r['tenants']} tenants,"
                    f" 2 budgets each): old (a budget_status each) {r['old_s']:.2f} s "
                    f"({r['old_queries']} queries), new (budget_statuses) {r['new_s']:.2f} s "
                    f"({r['new_queries']} queries), ratio {r['ratio']:.1f}x"
                )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
