"""Scale review: one evaluation of a ``budget_used`` alert rule over many budgets.

``--tenants`` tenants (two keys each, a day budget and a month budget of one key, 10
records a tenant this month; ``listing._seed_budgets``) in a fresh SQLite store, so
``--tenants`` x 2 alerts. Old: the evaluation loop before this change, verbatim in
what it costs: each budget's spend read on its own (``Store.spent``) and each alert's
state saved in a transaction of its own. New: ``monitoring.evaluate_rules`` (the spend
of all budgets read together, every state saved in one transaction). The first
evaluation (every alert new) and the next (every alert updated) are timed apart; the
two sides alternate, and each starts from the same store state (a copy of the file).
The new side's first evaluation also records each firing's notification (the log's),
which the old loop here leaves out: its first-evaluation ratio understates the gain.

Prints the times, the statements each side sends and the ratio; exits 0 whatever the
numbers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from listing import _seed_budgets
from sqlalchemy import event

from modelyard.monitoring import AlertRules, evaluate_rules
from modelyard.monitoring._alerts import _COMPARISONS, _step, alert_id
from modelyard.store import Store
from modelyard.store._budgets import period_start

RULES = AlertRules.parse({"rules": [{"name": "budget-80", "metric": "budget_used",
                                     "comparison": ">=", "threshold": 0.1}]})  # fmt: skip


def old_evaluate(store: Store, rules: AlertRules, now: datetime) -> None:
    """The loop before: a spend query per budget, a write transaction per alert."""
    states = {a.id: a for a in store.list_alert_states()}
    for rule in rules.rules:
        for budget in store.list_budgets():
            spent = store.spent(budget.tenant, period_start(budget.period, now),
                                key_id=budget.key_id)  # fmt: skip
            where = {"tenant": budget.tenant, "key": budget.key_id or "*",
                     "period": budget.period}  # fmt: skip
            value = spent / budget.amount
            labels = {**rule.labels, **where, "severity": rule.severity}
            aid = alert_id(rule.name, labels)
            holds = _COMPARISONS[rule.comparison](value, rule.threshold)
            store.save_alert_state(_step(states.get(aid), rule, aid, labels, value, holds, now))


def new_evaluate(store: Store, rules: AlertRules, now: datetime) -> None:
    evaluate_rules(store, rules, now)


def _run(url: str, fn: Callable[[Store, AlertRules, datetime], None]) -> tuple[float, int]:
    with Store.open(url, actor="ops") as store:
        sent = [0]

        def seen(*_: Any) -> None:
            sent[0] += 1

        event.listen(store._engine, "before_cursor_execute", seen)
        started = time.perf_counter()
        fn(store, RULES, datetime.now(UTC))
        return time.perf_counter() - started, sent[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("MODELYARD_HOME", tempfile.mkdtemp(prefix="modelyard-bench-home-"))
    with tempfile.TemporaryDirectory(prefix="modelyard-alerts-") as tmp:
        seed = Path(tmp) / "seed.db"
        _seed_budgets(f"sqlite:///{seed}", args.tenants)
        times: dict[str, dict[str, list[float]]] = {}
        statements: dict[str, dict[str, int]] = {}
        for _ in range(args.repeats):
            for side, fn in (("old", old_evaluate), ("new", new_evaluate)):
                db = Path(tmp) / f"{side}.db"
                shutil.copy(seed, db)
                for phase in ("first", "next"):
                    took, sent = _run(f"sqlite:///{db}", fn)
                    times.setdefault(side, {}).setdefault(phase, []).append(took)
                    statements.setdefault(side, {})[phase] = sent
    alerts = 2 * args.tenants
    load = os.getloadavg()[0]
    print(f"budget_used over {alerts} budgets ({args.tenants} tenants), SQLite, "
          f"{os.cpu_count()} CPUs, load {load:.1f}, median of {args.repeats}:")  # fmt: skip
    for phase in ("first", "next"):
        old, new = (statistics.median(times[s][phase]) for s in ("old", "new"))
        print(f"  {phase} evaluation: old {old:.2f} s ({statements['old'][phase]} statements), "
              f"new {new:.2f} s ({statements['new'][phase]} statements), "
              f"ratio {old / new:.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
