"""``modelyard doctor``: what a kill -9 leaves is found, reported, and repaired with --fix."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from clihelp import modelyard
from modelyard.artifacts import ArtifactStore, this_host
from modelyard.doctor import diagnose
from modelyard.store import Store


def dead_pid() -> int:
    """The pid of a process that has exited (and was reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def leave_garbage(store: Store, artifacts: ArtifactStore, tmp_path: Path) -> dict[str, str]:
    """What a fine-tune and an import killed with -9 leave behind, plus a live run."""
    store.register_base_model("tiny", "/nowhere", {"model.safetensors": "0" * 64})
    process = {"pid": dead_pid(), "host": this_host()}
    store.create_run(
        "run-killed", base_model="tiny", dataset_id=None, config={}, seed=0,
        environment={"process": process},
    )  # fmt: skip
    store.create_run(
        "run-alive", base_model="tiny", dataset_id=None, config={}, seed=0,
        environment={"process": {"pid": os.getpid(), "host": this_host()}},
    )  # fmt: skip
    store.create_registered_model("empty")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "adapter.bin").write_bytes(b"x" * 1000)
    orphan = artifacts.put_dir(tmp_path / "weights", kind="adapter")
    killed = artifacts.root / "tmp" / f"import-{this_host()}-{process['pid']}-abc"
    (killed / "staged").mkdir(parents=True)
    (killed / "staged" / "model.safetensors").write_bytes(b"\0" * 4096)
    with artifacts.staging("import") as live:  # left in place: its process (us) is alive
        pass
    live.mkdir()
    return {"orphan": orphan.digest, "killed_tmp": str(killed), "live_tmp": str(live)}


def test_diagnose_reports_then_fixes_on_every_store(store: Store, tmp_path: Path) -> None:
    artifacts = ArtifactStore(tmp_path / "artifacts")
    left = leave_garbage(store, artifacts, tmp_path)
    report = diagnose(store, artifacts, stale=timedelta(0))
    found = {(f.kind, f.subject) for f in report.findings}
    assert found == {
        ("run", "run-killed"),
        ("model", "empty"),
        ("blob", f"sha256:{left['orphan']}"),
        ("tmp", left["killed_tmp"]),
    }
    assert report.unresolved == 4
    assert store.get_run("run-killed").status == "running"  # a report changes nothing
    assert artifacts.exists(left["orphan"])

    fixed = diagnose(store, artifacts, stale=timedelta(0), fix=True)
    assert fixed.unresolved == 0 and all(f.fixed for f in fixed.findings)
    run = store.get_run("run-killed")
    assert run.status == "interrupted" and "is gone" in run.metrics["error"]
    assert store.get_run("run-alive").status == "running"
    assert "empty" not in {m.name for m in store.list_registered_models()}
    assert not artifacts.exists(left["orphan"])
    assert not Path(left["killed_tmp"]).exists() and Path(left["live_tmp"]).exists()
    assert [e.action for e in store.list_audit_events(action="registered_model.deleted")]
    assert diagnose(store, artifacts, stale=timedelta(0)).findings == ()


def test_young_leftovers_without_an_owner_are_left_alone(store: Store, tmp_path: Path) -> None:
    artifacts = ArtifactStore(tmp_path / "artifacts")
    store.register_base_model("tiny", "/nowhere", {"model.safetensors": "0" * 64})
    store.create_run("run-1", base_model="tiny", dataset_id=None, config={}, seed=0,
                     environment={})  # fmt: skip
    store.create_registered_model("fresh")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f.json").write_text("{}")
    artifacts.put_dir(tmp_path / "d", kind="adapter")
    assert diagnose(store, artifacts, stale=timedelta(hours=1), fix=True).findings == ()
    assert store.get_run("run-1").status == "running"


def test_doctor_cli_reports_fixes_and_exits(home: Path, tmp_path: Path) -> None:
    assert modelyard("init", home=home).code == 0
    with Store.open(f"sqlite:///{home / 'store.db'}") as store:
        left = leave_garbage(store, ArtifactStore(home / "artifacts"), tmp_path)
    r = modelyard("doctor", "--stale", "0", "--json", home=home)
    assert r.code == 1, r.err
    report = json.loads(r.out)
    assert report["unresolved"] == 4 and not report["fix"]
    assert {f["kind"] for f in report["findings"]} == {"run", "model", "blob", "tmp"}
    r = modelyard("doctor", "--stale", "0", home=home)
    assert r.code == 1 and "run-killed" in r.out and "--fix" in r.out, r.out
    r = modelyard("doctor", "--stale", "0", "--fix", home=home)
    assert r.code == 0 and "repaired 4 problem(s)" in r.out, (r.out, r.err)
    assert not Path(left["killed_tmp"]).exists()
    r = modelyard("doctor", "--stale", "0", home=home)
    assert r.code == 0 and "nothing to repair" in r.out


def test_doctor_refuses_a_bad_stale(home: Path) -> None:
    r = modelyard("doctor", "--stale", "soon", home=home)
    assert r.code == 2 and "--stale" in r.err and "Traceback" not in r.err, r.err


@pytest.mark.parametrize("purpose", ["put", "import"])
def test_sweep_removes_what_a_dead_writer_left(tmp_path: Path, purpose: str) -> None:
    artifacts = ArtifactStore(tmp_path / "a")
    dead = artifacts.root / "tmp" / f"{purpose}-{this_host()}-{dead_pid()}-xyz"
    dead.mkdir(parents=True)
    (dead / "f").write_bytes(b"1")
    (dead / "f").chmod(0o444)
    legacy = artifacts.root / "tmp" / "modelyard-import-old"
    legacy.mkdir()
    removed = artifacts.sweep_tmp(max_age_s=3600)
    assert [e.path for e in removed] == [dead]
    assert legacy.exists()  # no owner in its name and recent: maybe still in use
    assert [e.path for e in artifacts.sweep_tmp(max_age_s=0)] == [legacy]


class _Quiet:
    def info(self, message: str) -> None:
        pass

    def bar(self, description: str, total: int, unit: str) -> Any:
        return contextlib.nullcontext(lambda done, total, info="": None)


def test_a_fine_tune_that_fails_after_storing_its_adapter_leaves_nothing(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelyard import finetune
    from modelyard.base import create_tiny_base
    from modelyard.data import DOMAINS, domain_corpus, synthetic_domain
    from modelyard.finetune import _pipeline

    base = create_tiny_base(
        domain_corpus(DOMAINS, 100, seed=0), tmp_path / "base",
        steps=2, batch_size=4, seq_len=64, hidden_size=32, vocab_size=512,
    ).path  # fmt: skip
    rows = synthetic_domain("it-support", 12, seed=0)
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = finetune.parse_config(
        {
            "base_model": str(base),
            "data": {"train": str(tmp_path / "train.jsonl"), "eval_fraction": 0.25},
            "method": {"r": 4, "alpha": 8},
            "training": {"max_steps": 1, "batch_size": 4},
            "evaluation": {"metrics": ["exact_match"], "max_new_tokens": 2},
            "registry": {"model": "helpdesk"},
        }
    )

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("evaluation ran out of memory")

    monkeypatch.setattr(_pipeline, "_evaluate_all", crash)
    artifacts = ArtifactStore(home / "artifacts")
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        with pytest.raises(RuntimeError, match="out of memory"):
            _pipeline.run_finetune(
                _pipeline.prepare(config), store=store, artifacts=artifacts, home=home,
                ui=_Quiet(),
            )  # fmt: skip
        (run,) = store.list_runs()
        assert run.status == "failed" and "out of memory" in run.metrics["error"]
        assert run.environment["process"] == {"pid": os.getpid(), "host": this_host()}
        assert store.list_registered_models() == []  # no empty model
        kinds = sorted(ref.kind for ref in artifacts.list())
        assert kinds == ["dataset", "dataset"]  # the adapter blob is gone; the data stays
        assert diagnose(store, artifacts, stale=timedelta(0)).findings == ()


def test_rows_whose_artifacts_are_gone_or_altered_are_named_and_never_fixed(
    home: Path, tmp_path: Path
) -> None:
    """After restoring a database newer than its artifacts (or losing a disk), doctor names
    each version and dataset whose bytes are gone; --verify also finds altered ones."""
    assert modelyard("init", home=home).code == 0
    artifacts = ArtifactStore(home / "artifacts")
    digests = []
    for name in ("one", "two", "three"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_model.safetensors").write_bytes(name.encode() * 100)
        digests.append(artifacts.put_dir(tmp_path / name, kind="adapter").digest)
    with Store.open(f"sqlite:///{home / 'store.db'}") as store:
        store.register_base_model("tiny", "/nowhere", {"model.safetensors": "0" * 64})
        store.create_registered_model("support")
        for digest in digests:
            store.create_model_version(
                "support", kind="adapter", artifact_digest=f"sha256:{digest}",
                base_model="tiny", run_id=None, lineage={}, metrics={},
            )  # fmt: skip
    r = modelyard("doctor", "--verify", home=home)
    assert r.code == 0 and "every artifact verified" in r.out, (r.out, r.err)

    artifacts.delete(digests[1])  # the artifacts restored from an older backup
    tamper_path = next(artifacts.root.rglob(f"{digests[2]}/files/adapter_model.safetensors"))
    tamper_path.chmod(0o644)
    tamper_path.write_bytes(b"changed")
    r = modelyard("doctor", home=home)  # without --verify, the bytes are not read
    assert r.code == 1 and "support:2" in r.out and "support:3" not in r.out, r.out
    r = modelyard("doctor", "--json", home=home)
    (missing,) = json.loads(r.out)["findings"]
    assert missing["kind"] == "missing" and missing["subject"] == "support:2"
    assert digests[1] in missing["problem"] and "restore the artifacts" in missing["action"]

    r = modelyard("doctor", "--verify", "--fix", "--json", home=home)
    assert r.code == 1, r.err  # nothing here can bring the bytes back
    found = {(f["kind"], f["subject"], f["error"]) for f in json.loads(r.out)["findings"]}
    assert found == {
        ("missing", "support:2", "cannot be repaired"),
        ("corrupt", "support:3", "cannot be repaired"),
    }
    with Store.open(f"sqlite:///{home / 'store.db'}") as store:  # nothing was deleted
        assert [v.version for v in store.list_model_versions("support")] == [1, 2, 3]


def test_an_artifact_directory_without_its_manifest_is_one_finding_among_the_rest(
    store: Store, tmp_path: Path
) -> None:
    """A damaged directory in the local store used to stop the doctor with its one error."""
    artifacts = ArtifactStore(tmp_path / "artifacts")
    digests = []
    for name in ("kept", "loose"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_model.safetensors").write_bytes(name.encode() * 100)
        digests.append(artifacts.put_dir(tmp_path / name, kind="adapter").digest)
    store.register_base_model("tiny", "/nowhere", {"model.safetensors": "0" * 64})
    store.create_registered_model("support")
    store.create_model_version(
        "support", kind="adapter", artifact_digest=digests[0],
        base_model="tiny", run_id=None, lineage={}, metrics={},
    )  # fmt: skip
    for digest in digests:
        manifest = next(artifacts.root.rglob(f"{digest}/manifest.json"))
        manifest.parent.chmod(0o755)
        manifest.unlink()

    report = diagnose(store, artifacts, stale=timedelta(0), verify=True)
    found = {(f.kind, f.subject): f.problem for f in report.findings}
    assert set(found) == {("blob", f"sha256:{digests[1]}"), ("corrupt", "support:1")}
    assert "unreadable" in found[("blob", f"sha256:{digests[1]}")]
    assert "manifest.json is missing" in found[("corrupt", "support:1")]
    fixed = diagnose(store, artifacts, stale=timedelta(0), fix=True)
    assert [(f.kind, f.fixed) for f in fixed.findings] == [("blob", True)]
    assert not artifacts.exists(digests[1]) and artifacts.exists(digests[0])


def _block(text: str, first_line: str) -> str:
    found = re.search(rf"```bash\n{re.escape(first_line)}\n(.*?)```", text, re.S)
    assert found is not None, first_line
    return found.group(1)


def test_the_backup_and_restore_of_the_operations_guide_work_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/operations.md's two blocks, run as written on a home with a registered version
    and an audited chain: after the home is lost, the restore's checks pass."""
    guide = (Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text()
    backup, restore = _block(guide, "# back up"), _block(guide, "# restore")
    home = tmp_path / ".modelyard"
    monkeypatch.setenv("MODELYARD_HOME", str(home))
    assert modelyard("tenants", "create", "acme", home=home).code == 0  # audited
    artifacts = ArtifactStore(home / "artifacts")
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_model.safetensors").write_bytes(b"weights" * 100)
    digest = artifacts.put_dir(tmp_path / "adapter", kind="adapter").digest
    with Store.open(f"sqlite:///{home / 'store.db'}") as store:
        store.register_base_model("tiny", "/nowhere", {"model.safetensors": "0" * 64})
        store.create_registered_model("support", tenant="acme")
        store.create_model_version(
            "support", kind="adapter", artifact_digest=f"sha256:{digest}",
            base_model="tiny", run_id=None, lineage={}, metrics={},
        )  # fmt: skip
    assert (home / "audit.key").is_file()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "MODELYARD_HOME": str(home),
    }
    env.pop("MODELYARD_STORE_URL", None)

    def bash(script: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=300)  # fmt: skip

    done = bash(backup)
    assert done.returncode == 0, done.stderr
    subprocess.run(["rm", "-rf", str(home)], check=True)  # the machine is lost
    done = bash(restore)
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "audit chain OK" in done.stdout and "every artifact verified" in done.stdout
    with Store.open(f"sqlite:///{home / 'store.db'}") as store:
        assert store.get_model_version("support", 1).artifact_digest == f"sha256:{digest}"
