"""What ``batch run --ray`` needs installed: Ray's core (``ray``), not Ray Data.

The job starts a pool of Ray actors and waits on their calls; it uses nothing of
Ray Data. A machine with ``pip install ray`` (no ``[data]``: no pandas, no
pyarrow of Ray's choosing) runs it, and a machine without Ray is told to install
the ``ray`` extra, in one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from batchworld import World, build_world
from conftest import IN_CI

BLOCKED = (
    "import sys\n"
    "for name in sys.argv[1].split(','):\n"
    "    sys.modules[name] = None  # `import NAME` fails as it does where it is missing\n"
    "from modelyard.cli import main\n"
    "raise SystemExit(main(sys.argv[2:]))\n"
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("ray-extra"))


def _run(world: World, cwd: Path, blocked: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    env |= {"MODELYARD_HOME": str(world.home), "MODELYARD_API_KEY": world.key}
    return subprocess.run(
        [sys.executable, "-c", BLOCKED, blocked, "batch", "run", "in.jsonl", "-o", "out.jsonl",
         "-e", "claims-router", "--engine", "echo", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip


def test_a_ray_job_runs_with_ray_alone_without_ray_data(world: World, tmp_path: Path) -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        if IN_CI:
            pytest.fail("CI=true but Ray is not installed (it is in requirements.lock)")
        pytest.skip('Ray is not installed: pip install "modelyard[ray]"')
    rows = [{"id": f"q{i}", "prompt": f"question {i}"} for i in range(3)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = _run(world, tmp_path, "ray.data", "--id-column", "id", "--json", "--ray", "local")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout[done.stdout.index("{") :])["answered"] == 3
    answers = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [a["id"] for a in answers] == ["q0", "q1", "q2"]
    assert all(a["answer"] and not a["error"] and a["version"] == "acme-claims:1" for a in answers)


def test_without_ray_the_error_asks_for_the_ray_extra_in_one_line(
    world: World, tmp_path: Path
) -> None:
    (tmp_path / "in.jsonl").write_text('{"prompt": "hi"}\n')
    done = _run(world, tmp_path, "ray", "--ray", "local")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: --ray needs Ray, which is not installed here"), (
        done.stderr
    )
    assert "Ray Data" not in done.stderr
    assert 'Install it with: pip install "modelyard[ray]"' in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]
