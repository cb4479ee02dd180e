"""``modelyard batch run --ray``: the same job answered by Ray actors.

One Ray for the module, started here as a user's cluster would be
(``ray.init(num_cpus=1)``: one actor of one CPU fits; an actor asking for more
than the cluster has is refused rather than left waiting), shut down at the
end with no process of it left. In-process runs reuse it (``--ray auto`` in a
process that has Ray already); the kill -9 test's drivers are other processes
that connect to it by address, as drivers connect to a shared cluster.
"""

from __future__ import annotations

import ast
import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchworld import DOC, World, batch, build_world, docs_command, enter
from conftest import IN_CI
from modelyard.cli import main

SAME = ["row", "claim_id", "answer", "finish_reason", "prompt_tokens", "completion_tokens"]
SAME += ["version", "error"]  # every output column but record_id (each job has its own)
RAY_PROCESS = re.compile(r"ray::|/ray/|raylet|gcs_server")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("batch-ray"))


def _session_processes(sid: int) -> set[int]:
    """Ray's processes (live, not zombies) in session ``sid``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rpartition(")")[2].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if stat[0] != "Z" and int(stat[3]) == sid and RAY_PROCESS.search(command):
            found.add(int(entry.name))
    return found


def _gone(pids: set[int], sid: int, within_s: float = 60.0) -> set[int]:
    """Which of ``pids`` are still running after ``within_s`` seconds."""
    deadline = time.monotonic() + within_s
    left = pids & _session_processes(sid)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = pids & _session_processes(sid)
    return left


def _commands(pids: set[int]) -> list[str]:
    found = []
    for pid in sorted(pids):
        try:
            found.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A Ray of one CPU for the module; its GCS address. Shut down at the end, every
    process it started with it."""
    try:
        import ray
    except ImportError:
        if IN_CI:
            pytest.fail("CI=true but Ray is not installed (it is in requirements.lock)")
        pytest.skip('Ray is not installed: pip install "modelyard[ray]"')
    sid = os.getsid(0)
    before = _session_processes(sid)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        started = _session_processes(sid) - before
        ray.shutdown()
    assert started, "no Ray process found to check"
    left = _gone(started, sid)
    assert not left, f"Ray processes left after ray.shutdown(): {_commands(left)}"


@pytest.fixture
def here(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return enter(world, tmp_path, monkeypatch)


def test_the_docs_ray_example_gives_the_same_answers_as_the_local_path(
    cluster: str,
    world: World,
    here: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    example = re.search(r"`claims.csv`:\n\n```csv\n(.*?)```\n\n```bash\n(.*?)```", DOC, re.S)
    assert example is not None
    on_cluster = DOC.split("### Example: the claims on a cluster")[1].split("\n### ")[0]
    block = re.search(r"```bash\n(.*?)```", on_cluster, re.S)
    assert block is not None
    local_command, ray_command = docs_command(example.group(2)), docs_command(block.group(1))
    assert ray_command[: len(local_command)] == local_command  # the same job, then --ray ...
    extra = ray_command[len(local_command) :]
    assert extra == ["--ray", "auto", "--ray-actors", "2", "--ray-cpus", "2"]
    claims = example.group(1) + "C-1004,write to me at jane@example.com: my car was towed\n"
    for side, command in (("local", local_command), ("ray", [*local_command, "--ray", "auto"])):
        (here / side).mkdir()  # the module's Ray has one CPU: one actor of one CPU
        monkeypatch.chdir(here / side)
        (here / side / "claims.csv").write_text(claims)
        capsys.readouterr()
        assert main(command) == 0, capsys.readouterr().err
    written = {
        side: list(csv.DictReader((here / side / "routed.csv").read_text().splitlines()))
        for side in ("local", "ray")
    }
    assert [[r[c] for c in SAME] for r in written["ray"]] == [
        [r[c] for c in SAME] for r in written["local"]
    ]
    assert [r["claim_id"] for r in written["ray"]] == ["C-1001", "C-1002", "C-1003", "C-1004"]
    assert {r["version"] for r in written["ray"]} == {"acme-claims:1"}
    assert all(r["answer"] and not r["error"] for r in written["ray"])
    # one record per row, written by the actor as the API writes them (storage policy too)
    job = written["ray"][0]["record_id"].rpartition("-")[0]
    records = world.records(job)
    assert sorted(r["id"] for r in records) == sorted(r["record_id"] for r in written["ray"])
    assert {(r["source"], r["status"], r["endpoint_name"]) for r in records} == {
        ("batch", "ok", "claims-router")
    }
    assert any("[EMAIL]" in r["prompt"] for r in records)
    assert not any("jane@example.com" in r["prompt"] for r in records)
    assert not (here / "ray" / "routed.csv.batch").exists()


def test_a_driver_killed_half_way_then_run_again_keeps_every_row_once(
    cluster: str, world: World, here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import ray

    rows = 120
    (here / "in.jsonl").write_text(
        "".join(json.dumps({"id": f"q{i}", "prompt": f"question {i}"}) + "\n" for i in range(rows))
    )
    out = here / "out.jsonl"
    command = ["batch", "run", str(here / "in.jsonl"), "-o", str(out), "-e", "claims-router",
               "--engine", "echo", "--echo-delay-ms", "25", "--concurrency", "4",
               "--id-column", "id", "--json", "--ray", cluster]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    env |= {"MODELYARD_HOME": str(world.home), "MODELYARD_API_KEY": world.key}
    driver = subprocess.Popen(
        [sys.executable, "-m", "modelyard", *command],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    first_part = here / "out.jsonl.batch" / "part-00000001.jsonl"
    deadline = time.monotonic() + 180
    while not first_part.exists():
        assert driver.poll() is None, "the driver ended before it was killed"
        assert time.monotonic() < deadline, "no part committed within 180 s"
        time.sleep(0.02)
    time.sleep(0.3)  # blocks answered (records written) since that commit, not yet kept
    driver.send_signal(signal.SIGKILL)
    assert driver.wait(10) == -signal.SIGKILL
    committed = sum(len(p.read_text().splitlines()) for p in first_part.parent.glob("part-*"))
    assert 0 < committed < rows

    # Ray ends a dead driver's actors: the cluster's one CPU is free again
    deadline = time.monotonic() + 60
    while ray.available_resources().get("CPU", 0.0) < 1.0:
        assert time.monotonic() < deadline, "the killed driver's actor still holds its CPU"
        time.sleep(0.2)

    # the same command again, here in this process (on the same cluster: --ray auto here)
    capsys.readouterr()
    assert main([*command[:-1], "auto"]) == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert (summary["skipped"], summary["answered"]) == (committed, rows - committed)
    assert summary["replaced"] >= 1  # answered by the killed run's actor, never kept
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert [a["row"] for a in answers] == list(range(1, rows + 1))
    assert [a["id"] for a in answers] == [f"q{i}" for i in range(rows)]
    assert all(a["error"] is None and a["version"] == "acme-claims:1" for a in answers)
    records = world.records(summary["job_id"])
    assert len(records) == rows  # one record per row: none twice, none missing
    assert {r["id"] for r in records} == {a["record_id"] for a in answers}
    assert {r["status"] for r in records} == {"ok"}


def test_the_driver_reads_the_rows_a_window_at_a_time_as_the_actors_answer_them(
    cluster: str,
    world: World,
    here: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from modelyard.batch import RayJobRunner

    rows, concurrency = 90, 2
    (here / "in.jsonl").write_text(
        "".join(json.dumps({"id": f"q{i}", "prompt": f"question {i}"}) + "\n" for i in range(rows))
    )
    held: list[int] = []  # at each row the driver reads: rows read but not answered yet
    windows: list[int] = []
    answer_rows = RayJobRunner.answer_rows

    def counted(self: RayJobRunner, source: Any, sink: Any, summary: Any, progress: Any) -> None:
        windows.append(getattr(self, "in_flight", 4) * self.options.actors * concurrency)

        def read() -> Iterator[Any]:
            for number, row in enumerate(source, start=1):
                held.append(number - summary.answered)
                yield row

        answer_rows(self, read(), sink, summary, progress)

    monkeypatch.setattr(RayJobRunner, "answer_rows", counted)
    command = ["in.jsonl", "-e", "claims-router", "--engine", "echo", "--id-column", "id",
               "--concurrency", str(concurrency)]  # fmt: skip
    for out, extra in (("local.jsonl", []), ("ray.jsonl", ["--ray", "auto"])):
        code, _, err = batch(capsys, *command, "-o", out, *extra)
        assert code == 0, err
    assert len(held) == rows and len(windows) == 1
    # the blocks sent and not back, and the block being read: never the job's rows
    assert max(held) <= windows[0] + concurrency < rows, held
    written = {
        side: [json.loads(line) for line in (here / f"{side}.jsonl").read_text().splitlines()]
        for side in ("local", "ray")
    }
    columns = [c if c != "claim_id" else "id" for c in SAME]
    assert [[r[c] for c in columns] for r in written["ray"]] == [
        [r[c] for c in columns] for r in written["local"]
    ]
    assert [r["row"] for r in written["ray"]] == list(range(1, rows + 1))
    job = written["ray"][0]["record_id"].rpartition("-")[0]
    assert sorted(r["id"] for r in world.records(job)) == sorted(
        r["record_id"] for r in written["ray"]
    )


REFUSED = {
    "not an address": (["--ray", "in.jsonl"], "--ray 'in.jsonl' is not a Ray address"),
    "actors without --ray": (["--ray-actors", "2"], "go with --ray ADDRESS"),
    "more CPUs than the cluster": (
        ["--ray", "auto", "--ray-actors", "2"],
        "2 actors of 1 CPU each need 2 CPUs; the Ray cluster has 1",
    ),
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_a_ray_job_it_cannot_run_exits_2_with_one_line_and_writes_nothing(
    case: str, cluster: str, here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra, expected = REFUSED[case]
    (here / "in.jsonl").write_text('{"prompt": "hi"}\n')
    code, _, err = batch(capsys, "in.jsonl", "-o", "out.jsonl", "-e", "claims-router",
                         "--engine", "echo", *extra)  # fmt: skip
    assert code == 2, err
    assert err.startswith("error: ") and expected in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in here.iterdir()) == ["in.jsonl"]


def test_without_ray_installed_ray_is_a_one_line_error_and_nothing_else_imports_it(
    world: World, tmp_path: Path
) -> None:
    (tmp_path / "in.jsonl").write_text('{"prompt": "hi"}\n')
    script = (
        "import sys\n"
        "sys.modules['ray'] = None  # `import ray` fails as it does where Ray is missing\n"
        "from modelyard.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "assert 'ray.data' not in sys.modules\n"
        "raise SystemExit(code)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    env |= {"MODELYARD_HOME": str(world.home), "MODELYARD_API_KEY": world.key}
    done = subprocess.run(
        [sys.executable, "-c", script, "batch", "run", "in.jsonl", "-o", "out.jsonl",
         "-e", "claims-router", "--engine", "echo", "--ray", "local"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: --ray needs Ray, which is not installed")
    assert 'Install it with: pip install "modelyard[ray]"' in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]

    # nothing imports Ray at a module's top: only import_ray, when a job asks for it
    source = Path(__file__).resolve().parents[1] / "src" / "modelyard"
    for path in source.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not [n for n in names if n.split(".")[0] == "ray"], path
