"""Scale review: a registry of thousands of versions and a store of many records.

Each section builds its data in a fresh SQLite store under a temporary directory
(bulk SQL for the bulk, the store's own API for the rest) and measures the path a
user takes, old and new side by side in the same run, printing their ratio:

1. ``versions``: ``Store.list_model_versions`` of a model with ``--versions``
   versions (what ``GET /models/{m}/versions``, ``registry list NAME``, doctor and
   ``data from-records`` read). Old: every version converted on its own
   (``to_version``: a query for its aliases and one for its base model, each
   version); new: the aliases of all of them in one query, models and bases once.
   The ratio is old time / new time; the admin API's page (limit 100) is timed too.
2. ``purge``: ``Store.purge_records`` of ``--records`` records. Old: the records'
   ids read into a list to count them; new: a count in the database. Peak Python
   memory (tracemalloc) of counting, old / new.
3. ``harvest``: what ``data from-records`` reads, the records of a window of
   ``--records`` records (alpaca prompts of 20 random words, 15-word answers), turned
   into rows by ``select_rows``. Old: every record of the window read into one list
   (``query_records(limit=None)``) first; new: ``Store.iter_records``, a page at a
   time. Peak Python memory (tracemalloc) old / new, and both times; the rows must be
   the same. (``validate_rows`` after it is the same on both sides and not timed.)
4. ``read``: a JSONL file of ``--rows`` rows (an id and a 30-word prompt, what a
   batch job or ``data validate`` reads). Old: the file read whole as bytes, decoded,
   split into lines, then parsed; new: ``read_rows``, a line at a time. And the batch
   input's digest: old ``read_bytes()`` hashed, new ``hashlib.file_digest``. Peak
   Python memory (tracemalloc) old / new and the times; the rows must be the same.

Timings are the median of ``--repeats`` runs. Exits 0 whatever the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import string
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _timing import median_s
from sqlalchemy import create_engine, func, select, text

from modelyard.store import Store

SECTIONS = ("versions", "purge", "harvest", "read")


def _seed(url: str, versions: int) -> None:
    with Store.open(url) as store:
        store.create_tenant("acme")
        store.register_base_model("tiny", "/models/tiny", {"model.safetensors": "ab" * 32})
        store.create_registered_model("support", tenant="acme")
        store.create_model_version(
            "support", kind="adapter", artifact_digest="cd" * 32, base_model="tiny",
            run_id=None, lineage={"prompt_template": "alpaca"}, metrics={},
        )  # fmt: skip
        store.set_alias("support", "staging", 1)
        store.create_endpoint("acme-support", model_ref="support:1", tenant="acme")
    if versions < 2:
        return
    lineage = json.dumps({"seed": 1, "prompt_template": "alpaca", "config": {"lr": 1e-4}})
    metrics = json.dumps({"exact_match": 0.9, "gates": {"passed": True, "verdicts": []}})
    engine = create_engine(url)
    with engine.begin() as c:
        now = datetime.now(UTC).replace(tzinfo=None)
        c.execute(
            text(
                "insert into model_versions (registered_model_id, version, kind, status, "
                "artifact_digest, base_model_id, lineage, metrics, created_at, created_by, tags) "
                "values (1, :v, 'adapter', 'ready', :d, 1, :l, :m, :c, 'ops', '{}')"
            ),
            [
                {"v": i, "d": "cd" * 32, "l": lineage, "m": metrics, "c": now}
                for i in range(2, versions + 1)
            ],
        )
    engine.dispose()


def _add_records(url: str, n: int, before: datetime) -> None:
    engine = create_engine(url)
    start = (before - timedelta(days=2)).replace(tzinfo=None)
    with engine.begin() as c:
        for k in range(0, n, 20_000):
            c.execute(
                text(
                    "insert into inference_records (id, created_at, tenant_id, endpoint_name, "
                    "version_id, route, prompt, response, prompt_tokens, completion_tokens, "
                    "latency_ms, status, http_status, shadow, source) values (:id, :c, 1, "
                    "'acme-support', 1, 'chat', :p, :r, 20, 12, 35.0, 'ok', 200, 0, 'api')"
                ),
                [
                    {
                        "id": f"r-{j:09d}",
                        "c": start + timedelta(seconds=j * 0.1),
                        "p": f"q {j}",
                        "r": f"a {j}",
                    }
                    for j in range(k, min(n, k + 20_000))
                ],
            )
    engine.dispose()


def bench_versions(root: Path, versions: int, repeats: int) -> dict[str, Any]:
    from modelyard.admin._encode import version_json
    from modelyard.store._convert import to_version
    from modelyard.store._rows import model_row
    from modelyard.store._schema import ModelVersionRow

    url = f"sqlite:///{root / 'versions.db'}"
    _seed(url, versions)
    with Store.open(url) as store:

        def old() -> list[Any]:  # the code before the review, verbatim
            with store._session("list versions") as s:
                mrow = model_row(s, "support")
                rows = s.scalars(
                    select(ModelVersionRow)
                    .where(ModelVersionRow.registered_model_id == mrow.id)
                    .order_by(ModelVersionRow.version)
                )
                return [to_version(s, r) for r in rows]

        def new() -> list[Any]:
            return store.list_model_versions("support")

        assert old() == new(), "the two lists differ"
        old_s, new_s = median_s(old, repeats), median_s(new, repeats)
        page_s = median_s(
            lambda: [version_json(v) for v in store.list_model_versions("support", limit=100)],
            repeats,
        )
        whole_s = median_s(lambda: [version_json(v) for v in new()], repeats)
    return {
        "versions": versions,
        "old_s": old_s,
        "new_s": new_s,
        "ratio": old_s / new_s,
        "api_page_100_s": page_s,
        "api_whole_before_s": old_s + (whole_s - new_s),
    }


def bench_purge(root: Path, records: int) -> dict[str, Any]:
    from modelyard.store._schema import InferenceRecordRow

    url = f"sqlite:///{root / 'purge.db'}"
    _seed(url, 1)
    cutoff = datetime.now(UTC)
    _add_records(url, records, cutoff)
    r = InferenceRecordRow
    with Store.open(url) as store:
        ids = select(r.id).where(r.tenant_id == 1, r.created_at < cutoff)

        def peak(fn: Callable[[], int]) -> tuple[int, float, float]:
            tracemalloc.start()
            started = time.perf_counter()
            n = fn()
            elapsed = time.perf_counter() - started
            top = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            return n, elapsed, top / 2**20

        def old() -> int:  # the count before the review: every id read into a list
            with store._session("count") as s:
                return len(s.scalars(ids).all())

        def new() -> int:
            with store._session("count") as s:
                return int(s.scalar(select(func.count()).select_from(ids.subquery())) or 0)

        n_old, old_s, old_mib = peak(old)
        n_new, new_s, new_mib = peak(new)
        assert n_old == n_new == records
        started = time.perf_counter()
        purged = store.purge_records("acme", cutoff)
        purge_s = time.perf_counter() - started
        assert purged == records
    return {
        "records": records,
        "count_old_peak_mib": old_mib,
        "count_new_peak_mib": new_mib,
        "peak_ratio": old_mib / max(new_mib, 1e-3),
        "count_old_s": old_s,
        "count_new_s": new_s,
        "purge_s": purge_s,
    }


def _words(rnd: random.Random, n: int) -> str:
    return " ".join(
        "".join(rnd.choices(string.ascii_lowercase, k=rnd.randint(3, 9))) for _ in range(n)
    )


def bench_harvest(root: Path, records: int, repeats: int) -> dict[str, Any]:
    from modelyard.curate import RecordFilters, select_rows
    from modelyard.data import render_prompt

    url = f"sqlite:///{root / 'harvest.db'}"
    _seed(url, 1)
    now = datetime.now(UTC)
    start = (now - timedelta(days=1)).replace(tzinfo=None)
    rnd = random.Random(7)
    engine = create_engine(url)
    with engine.begin() as c:
        for k in range(0, records, 20_000):
            batch = [
                {"id": f"r-{j:09d}", "c": start + timedelta(seconds=j * 0.1),
                 "p": render_prompt({"instruction": _words(rnd, 20) + "?"}), "r": _words(rnd, 15)}
                for j in range(k, min(records, k + 20_000))
            ]  # fmt: skip
            c.execute(
                text(
                    "insert into inference_records (id, created_at, tenant_id, endpoint_name, "
                    "version_id, route, prompt, response, prompt_tokens, completion_tokens, "
                    "latency_ms, status, http_status, shadow, source) values (:id, :c, 1, "
                    "'acme-support', 1, 'chat', :p, :r, 20, 12, 35.0, 'ok', 200, 0, 'api')"
                ),
                batch,
            )
    engine.dispose()
    filters = RecordFilters(since=now - timedelta(days=2), until=now)
    window: dict[str, Any] = {"endpoint": "acme-support", "since": filters.since,
                              "until": filters.until}  # fmt: skip
    with Store.open(url) as store:
        vid = store.get_model_version("support", 1).id

        def select(found: Any) -> Any:
            return select_rows(found, filters=filters, data_format="alpaca",
                               templates={vid: "alpaca"}, policies={"acme": "full"})  # fmt: skip

        def old() -> Any:
            return select(store.query_records(**window, limit=None, newest_first=False))

        def new() -> Any:
            return select(store.iter_records(**window))

        measured = {}
        for name, fn in (("old", old), ("new", new)):
            tracemalloc.start()
            started = time.perf_counter()
            selection = fn()
            elapsed = time.perf_counter() - started
            top = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            measured[name] = (selection, elapsed, top / 2**20)
        assert measured["old"][0] == measured["new"][0], "the rows differ"
        assert len(measured["new"][0].rows) == records
        plain = {"old": median_s(old, repeats), "new": median_s(new, repeats)}
    return {
        "records": records,
        "old_peak_mib": measured["old"][2],
        "new_peak_mib": measured["new"][2],
        "peak_ratio": measured["old"][2] / measured["new"][2],
        "old_s": plain["old"],
        "new_s": plain["new"],
    }


def _peak(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """``fn()``, its time (s) and the peak of Python memory it allocated (MiB)."""
    tracemalloc.start()
    started = time.perf_counter()
    value = fn()
    elapsed = time.perf_counter() - started
    top = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return value, elapsed, top / 2**20


def bench_read(root: Path, rows: int, repeats: int) -> dict[str, Any]:
    import hashlib

    from modelyard.data import read_rows
    from modelyard.data._io import _read_text

    path = root / "input.jsonl"
    rnd = random.Random(3)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(rows):
            fh.write(json.dumps({"id": f"t{i}", "prompt": _words(rnd, 30)}) + "\n")

    def old() -> list[Any]:  # the reader before the review, less its error handling
        return [json.loads(line) for line in _read_text(path).splitlines() if line.strip()]

    def old_digest() -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    def new_digest() -> str:
        with path.open("rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()

    got_old, old_s, old_mib = _peak(old)
    del got_old
    got_new, new_s, new_mib = _peak(lambda: read_rows(path))
    assert len(got_new) == rows and got_new == old(), "the rows differ"
    del got_new
    plain_old = median_s(old, repeats)  # times without tracemalloc, which slows each side
    plain_new = median_s(lambda: read_rows(path), repeats)
    digest_old, _, digest_old_mib = _peak(old_digest)
    digest_new, _, digest_new_mib = _peak(new_digest)
    assert digest_old == digest_new
    return {
        "rows": rows,
        "file_mib": path.stat().st_size / 2**20,
        "old_peak_mib": old_mib,
        "new_peak_mib": new_mib,
        "peak_ratio": old_mib / new_mib,
        "old_s": plain_old,
        "new_s": plain_new,
        "traced_old_s": old_s,
        "traced_new_s": new_s,
        "digest_old_peak_mib": digest_old_mib,
        "digest_new_peak_mib": digest_new_mib,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=SECTIONS, action="append", help="Run these only.")
    parser.add_argument("--versions", type=int, default=5000)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rows", type=int, default=1_000_000, help="Rows of the JSONL file.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="Small sizes: a smoke test.")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args()
    if args.quick:
        args.versions, args.records, args.rows, args.repeats = 200, 2000, 2000, 1
    os.environ.setdefault("MODELYARD_HOME", tempfile.mkdtemp(prefix="modelyard-bench-home-"))
    results: dict[str, Any] = {"cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="modelyard-scale-") as tmp:
        root = Path(tmp)
        for section in args.only or SECTIONS:
            if section == "versions":
                v = results["versions"] = bench_versions(root, args.versions, args.repeats)
                print(
                    f"versions: list of {v['versions']} versions: old {v['old_s'] * 1000:.0f} ms,"
                    f" new {v['new_s'] * 1000:.0f} ms, ratio {v['ratio']:.1f}x; admin API "
                    f"page of 100: {v['api_page_100_s'] * 1000:.0f} ms (whole list before: "
                    f"{v['api_whole_before_s'] * 1000:.0f} ms)"
                )
            elif section == "purge":
                p = results["purge"] = bench_purge(root, args.records)
                print(
                    f"purge: counting {p['records']} records: peak old "
                    f"{p['count_old_peak_mib']:.1f} MiB, new {p['count_new_peak_mib']:.2f} MiB,"
                    f" ratio {p['peak_ratio']:.0f}x (old {p['count_old_s']:.2f} s, new "
                    f"{p['count_new_s']:.2f} s); the whole purge {p['purge_s']:.1f} s"
                )
            elif section == "harvest":
                h = results["harvest"] = bench_harvest(root, args.records, args.repeats)
                print(
                    f"harvest: {h['records']} records to rows: peak old {h['old_peak_mib']:.0f}"
                    f" MiB, new {h['new_peak_mib']:.0f} MiB, ratio {h['peak_ratio']:.1f}x; time"
                    f" old {h['old_s']:.1f} s, new {h['new_s']:.1f} s"
                )
            elif section == "read":
                d = results["read"] = bench_read(root, args.rows, args.repeats)
                print(
                    f"read: JSONL of {d['rows']} rows ({d['file_mib']:.0f} MiB): peak old "
                    f"{d['old_peak_mib']:.0f} MiB, new {d['new_peak_mib']:.0f} MiB, ratio "
                    f"{d['peak_ratio']:.2f}x; time old {d['old_s']:.1f} s, new {d['new_s']:.1f} s;"
                    f" batch digest peak old {d['digest_old_peak_mib']:.0f} MiB, new "
                    f"{d['digest_new_peak_mib']:.1f} MiB"
                )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
