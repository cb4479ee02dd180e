"""Journey 5's batch step on vLLM: ``modelyard batch run --engine vllm --endpoint E
--input x.parquet --output y.parquet``.

Before, ``batch run`` took only ``--engine transformers|echo``: on a node serving its
models with vLLM, the journey's batch job loaded the model again in its own process
with transformers (on the GPU vLLM already holds), and ``--engine vllm`` was refused.
Now the job starts a vLLM server for its versions (in vLLM's own environment, as
``serve --engine vllm`` does), waits until it is ready, answers every row through
it, and stops it at the end. The refusals need no vLLM; the job itself needs
``MODELYARD_TEST_VLLM_PYTHON`` (`make vllm`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modelyard.access import create_api_key
from modelyard.artifacts import LocalArtifactStore
from modelyard.base import create_tiny_base
from modelyard.data import DOMAINS, domain_corpus
from tinymodels import QUICK_BASE, random_adapter, register_adapter
from worlds import home_store

READY_S = 300  # vLLM starts in 30-60 s on two cores


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A home with tenant acme's adapter behind ``acme-support``; (home, acme's key)."""
    tmp = tmp_path_factory.mktemp("journey-vllm-batch")
    home = tmp / "home"
    home.mkdir()
    corpus = domain_corpus(DOMAINS, 300, seed=0)
    base = create_tiny_base(corpus, tmp / "base", **QUICK_BASE, max_positions=1024).path
    with home_store(home) as store:
        store.register_base_model("tiny", str(base), {})
        store.create_tenant("acme")
        store.create_registered_model("acme-bot", tenant="acme")
        adapter = random_adapter(base, tmp / "adapter", seed=0, r=8)
        version = register_adapter(store, LocalArtifactStore(home / "artifacts"), adapter,
                                   "acme-bot")  # fmt: skip
        store.create_endpoint("acme-support", model_ref=version.ref, tenant="acme")
        key = create_api_key(store, "acme", scopes=("infer",))[1]
    return home, key


def _batch(home: tuple[Path, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    env |= {"MODELYARD_HOME": str(home[0]), "MODELYARD_API_KEY": home[1]}
    return subprocess.run(
        [sys.executable, "-m", "modelyard", "batch", "run", "--endpoint", "acme-support",
         "--input", "x.parquet", "--output", "y.parquet", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=READY_S + 120, check=False,
    )  # fmt: skip


def _tickets(where: Path, rows: int = 6) -> None:
    pq.write_table(
        pa.table({"ticket_id": list(range(1, rows + 1)),
                  "prompt": [f"my laptop will not start, case {i}" for i in range(rows)]}),
        where / "x.parquet",
    )  # fmt: skip


REFUSED = {
    "no vLLM environment here": (
        ["--engine", "vllm"],
        "--engine vllm needs the python of vLLM's environment, and there is no "
        ".venv-vllm/bin/python here",
    ),
    "an interpreter without vllm": (
        ["--engine", "vllm", "--vllm-python", sys.executable],
        "has no vllm package",
    ),
    "--device with vllm": (
        ["--engine", "vllm", "--device", "cpu"],
        "--device is not read by --engine vllm",
    ),
    "--max-batch-size with vllm": (
        ["--engine", "vllm", "--max-batch-size", "4"],
        "--max-batch-size is not read by --engine vllm",
    ),
    "a vLLM option without vllm": (
        ["--max-loras", "2"],
        "--vllm-max-loras is read only by --engine vllm, not by --engine transformers",
    ),
    "vllm on ray": (
        ["--engine", "vllm", "--ray", "local"],
        "--engine vllm does not run on --ray",
    ),
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_a_vllm_batch_job_it_cannot_run_exits_2_with_one_line_and_writes_nothing(
    case: str, home: tuple[Path, str], tmp_path: Path
) -> None:
    extra, expected = REFUSED[case]
    _tickets(tmp_path)
    done = _batch(home, tmp_path, *extra)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and expected in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.parquet"]


def _vllm_servers(under: Path) -> set[int]:
    """The vLLM servers running a model kept under ``under``: this module's, not those of
    the tests another worker runs at the same time (test_vllm restarts its own)."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"vllm.entrypoints.openai.api_server" in command and bytes(under) in command:
            found.add(int(entry.name))
    return found


def test_the_journeys_batch_job_is_answered_by_vllm_and_its_server_stopped(
    vllm_python: str, home: tuple[Path, str], tmp_path: Path
) -> None:
    rows = 6
    _tickets(tmp_path, rows)
    before = _vllm_servers(home[0].parent)
    done = _batch(home, tmp_path, "--engine", "vllm", "--vllm-python", vllm_python,
                  "--vllm-kv-cache-gb", "1", "--vllm-max-model-len", "1024",
                  "--vllm-start-timeout-s", str(READY_S), "--id-column", "ticket_id",
                  "--max-tokens", "6", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "waiting for vLLM to serve acme-bot:1" in done.stderr
    assert "then rows go 256 at a time" in done.stderr  # as many as vLLM decodes at once
    summary = json.loads(done.stdout)
    assert (summary["answered"], summary["failed"]) == (rows, 0)
    table = pq.read_table(tmp_path / "y.parquet").to_pylist()
    assert [r["ticket_id"] for r in table] == list(range(1, rows + 1))
    assert all(r["answer"] and r["error"] is None for r in table)
    assert {r["version"] for r in table} == {"acme-bot:1"}
    with home_store(home[0]) as store:
        records = store.query_records(job_id=summary["job_id"], limit=None)
    assert sorted(r["id"] for r in records) == sorted(r["record_id"] for r in table)
    assert {r["status"] for r in records} == {"ok"}
    # the laptop's answers, character for character: vLLM's first word came with its
    # leading space (" auto" where the transformers engine said "auto")
    laptop = tmp_path / "laptop"
    laptop.mkdir()
    shutil.copy(tmp_path / "x.parquet", laptop / "x.parquet")
    local = _batch(home, laptop, "--id-column", "ticket_id", "--max-tokens", "6", "--json")
    assert local.returncode == 0, local.stderr
    theirs = pq.read_table(laptop / "y.parquet").to_pylist()
    assert [r["answer"] for r in table] == [r["answer"].rstrip("\ufffd") for r in theirs]
    # vLLM answered: its log has the job's requests; and its server ended with the job
    logs = "".join(p.read_text() for p in (home[0] / "logs").glob("vllm-*.log"))
    assert "/v1/completions" in logs
    assert _vllm_servers(home[0].parent) <= before, "the job's vLLM server is still running"
