"""``modelyard batch run --ray`` when things go wrong with blocks out on the actors: the
error budget (``--max-errors``) running out, and an actor's process lost mid-job.

One Ray of two CPUs for the module (``ray.init(num_cpus=2)``), shut down at the end.
Drivers that must be watched from outside (an actor killed under them) are other
processes connected to it by address; the others run in this process (``--ray auto``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchworld import World, batch, build_world, enter, write_jsonl
from conftest import IN_CI
from modelyard.cli import main
from waiting import until

ACTOR_TITLE = b"ray::_RowActor"  # the process title Ray gives a job's actors


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("ray-failures"))


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A Ray of two CPUs for the module; its GCS address."""
    try:
        import ray
    except ImportError:
        if IN_CI:
            pytest.fail("CI=true but Ray is not installed (it is in requirements.lock)")
        pytest.skip('Ray is not installed: pip install "modelyard[ray]"')
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture
def here(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return enter(world, tmp_path, monkeypatch)


def _actor_pids() -> set[int]:
    """The live processes of the jobs' actors on this machine."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if command.startswith(ACTOR_TITLE) and state != "Z":
            found.add(int(entry.name))
    return found


def _kept(out: Path) -> list[dict[str, Any]]:
    """The results a job has committed to its parts so far."""
    parts = sorted((out.parent / f"{out.name}.batch").glob("part-*.jsonl"))
    return [json.loads(line) for part in parts for line in part.read_text().splitlines()]


def _free_cpus(ray: Any, want: float, within_s: float = 60.0) -> None:
    until(
        f"the cluster's CPUs given back ({want} free)",
        lambda: ray.available_resources().get("CPU", 0.0) >= want,
        timeout_s=within_s,
        every_s=0.2,
    )


def test_max_errors_with_blocks_out_stops_sending_keeps_what_came_back_and_resumes(
    cluster: str,
    world: World,
    here: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two actors, each sent several blocks at once: the budget runs out with blocks out.
    No block is sent after; every block out comes back and is kept, each row with its
    record; exit 1 with one line, no output; the same command with a larger budget
    completes the job, one record per row."""
    from modelyard.batch import _ray

    events: list[tuple[str, list[str]]] = []  # ("send" | "back", the block's row keys)
    send, back = _ray._Window.send, _ray._Window.back

    def sent(self: Any, rows: Any) -> None:
        events.append(("send", [r.key for r in rows]))
        send(self, rows)

    def came_back(self: Any, wait_s: float) -> Iterator[Any]:
        for results in back(self, wait_s):
            events.append(("back", [r.key for r in results if r.error]))
            yield results

    monkeypatch.setattr(_ray._Window, "send", sent)
    monkeypatch.setattr(_ray._Window, "back", came_back)
    long = " ".join(f"word{i}" for i in range(400))  # past the tiny base's 256 positions
    rows = 60
    prompts = [long if i in (2, 3) else f"short question {i}" for i in range(rows)]
    write_jsonl(here / "in.jsonl", [{"id": f"q{i}", "prompt": p} for i, p in enumerate(prompts)])
    args = ["in.jsonl", "-o", "out.jsonl", "-e", "claims-router", "--max-tokens", "2",
            "--id-column", "id", "--concurrency", "2", "--json",
            "--ray", "auto", "--ray-actors", "2"]  # fmt: skip
    code, out, err = batch(capsys, *args, "--max-errors", "1")
    assert code == 1, err
    assert err.startswith("error: the job stopped: 2 rows failed, more than --max-errors 1")
    assert len(err.strip().splitlines()) == 1, err
    stopped = json.loads(out)
    assert stopped["failed"] == 2 and stopped["stopped"]
    # the failing block (rows 3 and 4) came back: nothing was sent after it
    over = events.index(("back", ["3", "4"]))
    assert [kind for kind, _ in events[over:]].count("send") == 0, events
    # every block sent came back and is kept: the rows kept are the first ones, each once
    sends = [keys for kind, keys in events if kind == "send"]
    assert len(sends) == len([kind for kind, _ in events if kind == "back"])
    kept = _kept(here / "out.jsonl")
    assert stopped["answered"] == len(kept) == sum(map(len, sends))
    assert sorted(int(r["key"]) for r in kept) == list(range(1, len(kept) + 1))
    assert not (here / "out.jsonl").exists()
    # each kept row has its record, and no other row has one
    records = {r["id"]: r for r in world.records(stopped["job_id"])}
    assert sorted(records) == sorted(r["record_id"] for r in kept)

    code, out, err = batch(capsys, *args, "--max-errors", "5")
    assert code == 0, err
    done = json.loads(out)
    assert (done["skipped"], done["answered"]) == (len(kept), rows - len(kept))
    answers = [json.loads(line) for line in (here / "out.jsonl").read_text().splitlines()]
    assert [a["row"] for a in answers] == list(range(1, rows + 1))
    assert [a["id"] for a in answers if a["error"]] == ["q2", "q3"]
    assert all("tokens" in a["error"] for a in answers if a["error"])
    records = {r["id"]: r for r in world.records(done["job_id"])}
    assert sorted(records) == sorted(a["record_id"] for a in answers)  # one each
    assert [r["status"] for r in records.values()].count("refused") == 2


@pytest.mark.parametrize("actors", [1, 2])
def test_an_actor_lost_mid_job_stops_it_with_one_line_and_the_same_command_resumes(
    actors: int, cluster: str, world: World, here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An actor's process killed (out of memory, its node gone) while blocks are out on
    it: the driver neither hangs nor keeps a row twice; it exits 1 with one line saying
    an actor was lost, and the same command completes the job, one record per row."""
    import ray

    rows = 160
    write_jsonl(here / "in.jsonl", [{"id": f"q{i}", "prompt": f"question {i}"}
                                    for i in range(rows)])  # fmt: skip
    out = here / "out.jsonl"
    command = ["batch", "run", str(here / "in.jsonl"), "-o", str(out), "-e", "claims-router",
               "--engine", "echo", "--echo-delay-ms", "20", "--concurrency", "2",
               "--id-column", "id", "--json", "--ray", cluster,
               "--ray-actors", str(actors)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    env |= {"MODELYARD_HOME": str(world.home), "MODELYARD_API_KEY": world.key}
    _free_cpus(ray, 2.0)
    before = _actor_pids()
    driver = subprocess.Popen(
        [sys.executable, "-m", "modelyard", *command],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not _kept(out) or len(_actor_pids() - before) < actors:
            assert driver.poll() is None, driver.communicate()
            assert time.monotonic() < deadline, "no part committed within 180 s"
            time.sleep(0.05)
        victim = min(_actor_pids() - before)
        os.kill(victim, signal.SIGKILL)
        # it must not hang: the driver ends on its own, well within a minute
        stdout, stderr = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == 1, stderr
    # one error line, last (the driver's record writer may warn first that it closed
    # the lost actor's unfinished records)
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and stderr.strip().endswith(errors[0]), stderr
    assert errors[0].startswith("error: a Ray actor of the job was lost"), errors[0]
    assert "run the same command again" in errors[0], errors[0]
    assert len(errors[0]) < 500, errors[0]  # not Ray's page of advice
    assert '"job_id"' not in stdout  # no summary of a job that did not end (Ray's raylet
    # prints its own line about the dead worker to the driver's stdout)
    kept = _kept(out)
    assert 0 < len(kept) < rows
    assert len({r["key"] for r in kept}) == len(kept)  # no row kept twice
    assert not out.exists()

    _free_cpus(ray, 2.0)  # the job's actors ended with it
    capsys.readouterr()
    assert main([*command[:-3], "auto", "--ray-actors", str(actors)]) == 0, capsys.readouterr()
    summary = json.loads(capsys.readouterr().out)
    assert (summary["skipped"], summary["answered"]) == (len(kept), rows - len(kept))
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert [a["row"] for a in answers] == list(range(1, rows + 1))
    assert [a["id"] for a in answers] == [f"q{i}" for i in range(rows)]
    assert all(a["error"] is None and a["version"] == "acme-claims:1" for a in answers)
    records = world.records(summary["job_id"])
    assert len(records) == rows  # one record per row: none twice, none missing
    assert {r["id"] for r in records} == {a["record_id"] for a in answers}
    assert {r["status"] for r in records} == {"ok"}


def test_a_job_whose_actors_wait_for_busy_cpus_says_so_then_runs_when_they_free_up(
    cluster: str, world: World, here: Path
) -> None:
    """The cluster has the CPUs, but another job holds them: the actors wait, and before
    Ray said nothing (the job seemed to hang at its first row). The job says it waits,
    once, and runs when the CPUs are free."""
    import threading

    import ray

    class Hog:  # another job's actor (local: Ray sends it by value, not by module name)
        def ping(self) -> int:
            return 1

    _free_cpus(ray, 2.0)
    hog = ray.remote(num_cpus=2)(Hog).remote()
    ray.get(hog.ping.remote())  # started: the cluster's two CPUs are held
    write_jsonl(here / "in.jsonl", [{"id": f"q{i}", "prompt": f"question {i}"} for i in range(4)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    env |= {"MODELYARD_HOME": str(world.home), "MODELYARD_API_KEY": world.key}
    driver = subprocess.Popen(
        [sys.executable, "-m", "modelyard", "batch", "run", "in.jsonl", "-o", "out.jsonl",
         "-e", "claims-router", "--engine", "echo", "--json", "--ray", cluster],
        cwd=here, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[str] = []
    assert driver.stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(driver.stderr or ()), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not any("waiting for the Ray cluster" in line for line in lines):
            assert driver.poll() is None, lines
            assert time.monotonic() < deadline, lines
            time.sleep(0.1)
        (said,) = [line for line in lines if "waiting for the Ray cluster" in line]
        assert "1 actors of 1 CPU each need 1 CPUs and 0 are free now" in said, said
        assert driver.poll() is None  # it waits, as a job on a shared cluster does
        ray.kill(hog)
        stdout, _ = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == 0, lines
    assert json.loads(stdout)["answered"] == 4
    assert len((here / "out.jsonl").read_text().splitlines()) == 4
