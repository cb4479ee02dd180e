"""What tenants' uploads cost the record writer on SQLite when S3 is slow: the request
journal's write (``add_monitored_records``, a batch every ``--every-ms``) alone, then
while uploads run (a file stored, then deleted: its bytes deleted), S3 answering every
request ``--delay-ms`` late. The old code (``--old-src``, a checkout of the commit before
the change) checked and deleted the bytes inside the store's write transaction, holding
SQLite's one write lock through those S3 calls; the new holds no transaction while S3
works.

S3 is moto's server (``moto[server]``, a process on 127.0.0.1) with a sleep before each
request it is sent (a botocore ``before-send`` hook), the store SQLite in a temporary
directory. Each side runs in a process of its own (its ``src`` first on ``sys.path``),
the sides taking turns ``--rounds`` times. Prints the writer's p50, p99 and longest write
alone and beside the uploads, and the uploads done, for each side. Exits 0 whatever
the numbers.

    .venv/bin/python benchmarks/file_uploads.py --old-src /tmp/old/src
    .venv/bin/python benchmarks/file_uploads.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "modelyard-bench",
    "AWS_SECRET_ACCESS_KEY": "modelyard-bench-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old-src", help="The old code's src directory (a worktree of it).")
    p.add_argument("--delay-ms", type=float, default=250.0, help="S3's delay per request.")
    p.add_argument("--seconds", type=float, default=12.0, help="Each phase's length.")
    p.add_argument("--every-ms", type=float, default=20.0, help="Between the writer's writes.")
    p.add_argument("--batch", type=int, default=20, help="Records per write.")
    p.add_argument("--uploaders", type=int, default=2, help="Uploads at once.")
    p.add_argument("--file-kib", type=int, default=256, help="Each upload's size.")
    p.add_argument("--rounds", type=int, default=1, help="Turns of each side.")
    p.add_argument("--quick", action="store_true", help="Short phases (a smoke test).")
    p.add_argument("--child", help=argparse.SUPPRESS)  # the side's src, in its process
    p.add_argument("--endpoint", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.seconds, args.delay_ms = 2.0, 100.0
    if args.child:
        print(json.dumps(_side(args)))
        return 0

    sides = {"new": str(HERE.parent / "src")}
    if args.old_src:
        sides = {"old": str(Path(args.old_src).resolve()), **sides}
    found: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    with _Moto() as endpoint:
        for _ in range(args.rounds):
            for name, src in sides.items():
                found[name].append(_run_side(src, endpoint, sys.argv[1:]))
    print(f"S3 {args.delay_ms:g} ms a request; a write of {args.batch} records every "
          f"{args.every_ms:g} ms; {args.uploaders} uploaders of {args.file_kib} KiB files "
          f"(each stored, then deleted); {args.seconds:g} s a phase; SQLite")  # fmt: skip
    print(f"{'side':5} {'phase':13} {'writes':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'uploads':>8} {'upload p50 ms':>14}")  # fmt: skip
    for name, runs in found.items():
        for run in runs:
            for phase in ("alone", "with uploads"):
                w = run[phase]
                ups = run["uploads"] if phase == "with uploads" else None
                print(
                    f"{name:5} {phase:13} {w['writes']:7d} {w['p50']:8.1f} {w['p99']:8.1f} "
                    f"{w['max']:8.1f} "
                    + (f"{ups['count']:8d} {ups['p50']:14.0f}" if ups else f"{'':8} {'':14}")
                )
    return 0


def _run_side(src: str, endpoint: str, argv: list[str]) -> dict[str, Any]:
    env = {**os.environ, **S3_ENV, "AWS_ENDPOINT_URL": endpoint, "PYTHONPATH": src}
    out = subprocess.run(
        [sys.executable, __file__, *argv, "--child", src, "--endpoint", endpoint],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"the side {src} failed:\n{out.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


class _Moto:
    """moto's S3 server on a free port of 127.0.0.1, ended by its pid."""

    def __enter__(self) -> str:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return f"http://127.0.0.1:{port}"
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit("moto's S3 server did not start") from None
                time.sleep(0.05)

    def __exit__(self, *_: object) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _side(args: argparse.Namespace) -> dict[str, Any]:
    """One side's two phases, in this process (its ``src`` first on the path)."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    import boto3

    import modelyard
    import modelyard.artifacts._s3_api as s3_api
    from modelyard.artifacts import open_artifact_store
    from modelyard.serving._files import FileKeeper
    from modelyard.store import NewInferenceRecord, Store
    from worlds import two_tenant_world

    assert Path(modelyard.__file__).is_relative_to(args.child), modelyard.__file__
    delay = args.delay_ms / 1000
    real_client = s3_api.new_client

    def slow_client() -> Any:
        client = real_client()
        client.meta.events.register("before-send.s3", lambda **_: time.sleep(delay))
        return client

    s3_api.new_client = slow_client  # type: ignore[assignment]
    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    with tempfile.TemporaryDirectory() as d:
        artifacts = open_artifact_store(f"s3://{bucket}/artifacts", cache_dir=Path(d) / "cache")
        with Store.open(f"sqlite:///{d}/s.db", audit_key="5e" * 32) as store:
            two_tenant_world(store, versions=1)
            files = FileKeeper(store, artifacts)
            tenant = store.get_tenant("acme").id
            version = store.get_model_version("acme-bot", 1).id
            counter = iter(range(10**9))

            def write() -> float:
                n, now = next(counter), datetime.now(UTC)
                batch = [
                    (NewInferenceRecord(
                        id=f"r{n}-{i}", endpoint_name="acme-support", route="completions",
                        latency_ms=1.0, status="ok", http_status=200, tenant_id=tenant,
                        prompt="p", response="r", prompt_tokens=40, completion_tokens=20,
                        version_id=version, api_key_id="k", created_at=now,
                    ), None)
                    for i in range(args.batch)
                ]  # fmt: skip
                started = time.perf_counter()
                store.add_monitored_records(batch, server_id="bench")
                return (time.perf_counter() - started) * 1000

            def writer(seconds: float) -> list[float]:
                took, end = [], time.monotonic() + seconds
                while time.monotonic() < end:
                    took.append(write())
                    time.sleep(args.every_ms / 1000)
                return took

            alone = writer(args.seconds)
            stop, uploads = threading.Event(), []
            body = os.urandom(args.file_kib * 1024 - 64)

            def uploader(k: int) -> None:
                import io

                while not stop.is_set():
                    data = body + f"\n{k}-{time.monotonic_ns()}".encode()  # new bytes
                    started = time.perf_counter()
                    made = files.save("acme", io.BytesIO(data), filename="in.jsonl",
                                      purpose="batch", api_key_id=None)  # fmt: skip
                    uploads.append((time.perf_counter() - started) * 1000)
                    files.delete("acme", made.id)

            threads = [threading.Thread(target=uploader, args=(k,)) for k in range(args.uploaders)]
            for t in threads:
                t.start()
            try:
                beside = writer(args.seconds)
            finally:
                stop.set()
                for t in threads:
                    t.join()
    return {
        "alone": _summary(alone),
        "with uploads": _summary(beside),
        "uploads": {"count": len(uploads), "p50": statistics.median(uploads or [0.0])},
    }


def _summary(took: list[float]) -> dict[str, Any]:
    ordered = sorted(took)
    return {
        "writes": len(ordered),
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "max": ordered[-1],
    }


if __name__ == "__main__":
    raise SystemExit(main())
