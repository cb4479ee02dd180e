"""``modelyard doctor``: find, and with ``fix`` repair, what crashed processes left.

Eight checks (docs/operations.md): six for what a crash leaves, two for what a
restore or a lost disk leaves.

- ``run``: a run still ``running`` whose process is gone (its pid and host are
  recorded at start), or, without a process we can check, running for longer
  than ``stale``; fixed by marking it ``interrupted`` with the reason.
- ``model``: a registered model with no version, older than ``stale`` (a
  fine-tune or import died between creating it and registering its version);
  fixed by deleting it (only when it has no version and no endpoint).
- ``blob``: a stored artifact no model version and no dataset references,
  older than ``stale``; fixed by deleting it.
- ``tmp``: an entry of the artifact store's work area whose writer is gone
  (or, when that cannot be told, older than ``stale``); fixed by deleting it.
- ``upload``: on an S3 artifact store, a write that never finished (a
  multipart upload, or a writer's mark with what it uploaded) whose writer is
  gone, or older than ``stale`` when that cannot be told; fixed by aborting the
  upload and deleting what the write left, unless the artifact is whole.
- ``requests``: inference records still ``running``, started more than
  ``stale`` ago, of a server that is gone (a stale heartbeat, a dead process
  here, or no heartbeat ever and no process here: one on another machine that
  no running server's sweep would close); fixed by closing them as failed,
  as a server's own sweep does (``monitoring.gone_servers``).
- ``missing``: a model version or dataset whose artifact is not in the artifact
  store (the artifacts restored from an older backup than the database, a
  lost disk, a bucket emptied by hand). Nothing here can repair it: it stays
  unresolved until the artifacts are restored.
- ``corrupt`` (only with ``verify``, which reads every stored byte): an
  artifact whose files no longer match its manifest. Unresolved, as above.

Younger leftovers are not touched: they may belong to a writer still at work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from modelyard.artifacts import ArtifactStore, pid_alive, this_host
from modelyard.errors import ArtifactError, AuditError, AuditKeyMissing, ModelyardError
from modelyard.monitoring import ABANDONED, gone_servers
from modelyard.registry import drop_if_empty, referenced_digests
from modelyard.store import Run, Store

FindingKind = Literal["run", "model", "blob", "tmp", "upload", "requests", "missing", "corrupt"]
RESTORE = "restore the artifacts from a backup (nothing here can repair it)"


@dataclass(frozen=True)
class Finding:
    """One leftover: what it is, what is wrong, what ``fix`` does (or did)."""

    kind: FindingKind
    subject: str
    problem: str
    action: str
    fixed: bool = False
    error: str | None = None  # why the fix failed, when it did

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "subject": self.subject,
            "problem": self.problem,
            "action": self.action,
            "fixed": self.fixed,
            "error": self.error,
        }


@dataclass(frozen=True)
class DoctorReport:
    findings: tuple[Finding, ...]
    fix: bool

    @property
    def unresolved(self) -> int:
        """Findings still in place (all of them without ``fix``)."""
        return sum(not f.fixed for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "fix": self.fix,
            "problems": len(self.findings),
            "unresolved": self.unresolved,
            "findings": [f.to_dict() for f in self.findings],
        }


def _age(moment: datetime, now: datetime) -> timedelta:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return now - moment


def _human(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds >= 86400:
        return f"{seconds // 86400}d {seconds % 86400 // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    return f"{seconds // 60}m {seconds % 60}s"


def _run_problem(run: Run, stale: timedelta, now: datetime) -> str | None:
    process = run.environment.get("process")
    age = _age(run.started_at, now)
    if isinstance(process, dict) and isinstance(process.get("pid"), int):
        pid, host = process["pid"], process.get("host")
        if host == this_host():
            return None if pid_alive(pid) else f"its process {pid} on {host} is gone"
        if age >= stale:
            return f"running for {_human(age)} on {host}, longer than --stale {_human(stale)}"
        return None
    if age >= stale:
        return f"running for {_human(age)} with no recorded process, longer than --stale"
    return None


def _attempt(finding: Finding, fix: bool, action: Any) -> Finding:
    if not fix:
        return finding
    try:
        done = action()
    except (ModelyardError, OSError) as exc:
        return Finding(**{**finding.to_dict(), "error": str(exc)})
    if done is False:
        return Finding(**{**finding.to_dict(), "error": "changed meanwhile; left in place"})
    return Finding(**{**finding.to_dict(), "fixed": True})


def _runs(store: Store, stale: timedelta, now: datetime, fix: bool) -> list[Finding]:
    found = []
    for run in store.list_runs(status="running"):
        problem = _run_problem(run, stale, now)
        if problem is None:
            continue
        finding = Finding("run", run.id, f"still 'running': {problem}", "mark it interrupted")

        def mark(run: Run = run, problem: str = problem) -> None:
            store.finish_run(
                run.id,
                status="interrupted",
                metrics={**run.metrics, "error": f"marked by modelyard doctor: {problem}"},
            )

        found.append(_attempt(finding, fix, mark))
    return found


def _models(store: Store, stale: timedelta, now: datetime, fix: bool) -> list[Finding]:
    found = []
    for model in store.list_registered_models():
        age = _age(model.created_at, now)
        if model.latest_version is not None or age < stale:
            continue
        finding = Finding(
            "model",
            model.name,
            f"has no version ({_human(age)} old): left by a crashed fine-tune or import",
            "delete the empty model",
        )

        def drop(name: str = model.name) -> bool:
            return drop_if_empty(store, name, reason="modelyard doctor: no version")

        found.append(_attempt(finding, fix, drop))
    return found


def _blobs(store: Store, artifacts: ArtifactStore, stale: timedelta, fix: bool) -> list[Finding]:
    referenced = referenced_digests(store)
    found = []
    for digest in artifacts.digests():
        if digest in referenced:
            continue
        age = timedelta(seconds=artifacts.age_s(digest))
        if age < stale:
            continue
        try:
            ref = artifacts.get(digest)
            what = f"{ref.kind}, {sum(entry.size for entry in ref.files.values())} bytes"
        except ArtifactError as exc:  # damaged, and nothing needs it: deleting is still right
            what = f"unreadable ({exc.message})"
        finding = Finding(
            "blob",
            f"sha256:{digest}",
            f"{what}, {_human(age)} old: no version or dataset references it",
            "delete the artifact",
        )

        def delete(digest: str = digest) -> bool:
            if digest in referenced_digests(store):  # registered meanwhile
                return False
            # as a file's bytes are discarded: an upload of the same bytes that holds them
            # now keeps them, and one that holds them after waits for the delete to end
            return store.discard_bytes(digest, artifacts.delete)

        found.append(_attempt(finding, fix, delete))
    return found


def _tmp(artifacts: ArtifactStore, stale: timedelta, fix: bool) -> list[Finding]:
    found = []
    for entry in artifacts.tmp_entries(max_age_s=stale.total_seconds()):
        if not entry.stale:
            continue
        finding = Finding(
            "tmp",
            str(entry.path),
            f"{entry.size} bytes left in the work area: {entry.reason}",
            "delete it",
        )
        found.append(_attempt(finding, fix, lambda e=entry: artifacts.remove_tmp(e)))
    return found


def _uploads(artifacts: ArtifactStore, stale: timedelta, fix: bool) -> list[Finding]:
    found = []
    for entry in artifacts.upload_entries(max_age_s=stale.total_seconds()):
        if not entry.stale:
            continue
        finding = Finding(
            "upload",
            entry.location,
            f"{entry.what}, {_human(timedelta(seconds=entry.age_s))} old: {entry.reason}",
            "abort it" if entry.upload_id else "delete what it wrote (unless whole), then it",
        )
        found.append(_attempt(finding, fix, lambda e=entry: artifacts.remove_upload(e)))
    return found


def _requests(store: Store, stale: timedelta, now: datetime, fix: bool) -> list[Finding]:
    found = []
    for sid in gone_servers(store, started_before=now - stale):
        finding = Finding(
            "requests",
            sid,
            f"requests still 'running', started more than {_human(stale)} ago, of a server "
            "that is gone",
            "close them as failed",
        )
        found.append(_attempt(finding, fix, lambda sid=sid: _close_requests(store, sid)))
    return found


def _close_requests(store: Store, server_id: str) -> bool:
    """Close a gone server's ``running`` records sealed, as its own sweep does
    (``monitoring.close_abandoned``): unsealed, ``audit verify --records`` would call them
    inserted. When the audit chain refuses the anchor they are closed unsealed, as there."""
    try:
        return store.close_running_records([server_id], ABANDONED, seal=True) > 0
    except (AuditError, AuditKeyMissing):
        return store.close_running_records([server_id], ABANDONED) > 0


def _holders(store: Store) -> dict[str, list[str]]:
    """Each artifact digest (bare hex) a row references, with the rows: ``support:2``,
    ``dataset tickets:1``."""
    held: dict[str, list[str]] = {}
    for d in store.list_datasets():
        held.setdefault(_bare(d.artifact_digest), []).append(f"dataset {d.name}:{d.version}")
    for model in store.list_registered_models():
        for v in store.list_model_versions(model.name):
            held.setdefault(_bare(v.artifact_digest), []).append(f"{model.name}:{v.version}")
    return held


def _bare(digest: str) -> str:
    return digest.removeprefix("sha256:").lower()


def _unrepairable(kind: FindingKind, subject: str, problem: str, fix: bool) -> Finding:
    return Finding(kind, subject, problem, RESTORE, error="cannot be repaired" if fix else None)


def _missing_and_corrupt(
    store: Store,
    artifacts: ArtifactStore,
    fix: bool,
    verify: bool,
    progress: Callable[[int, int], None] | None,
) -> list[Finding]:
    held = _holders(store)
    stored = set(artifacts.digests())
    found = [
        _unrepairable(
            "missing",
            ", ".join(rows),
            f"its artifact sha256:{digest} is not in {artifacts.location}",
            fix,
        )
        for digest, rows in sorted(held.items())
        if digest not in stored
    ]
    if not verify:
        return found
    present = sorted(d for d in held if d in stored)
    for done, digest in enumerate(present, 1):
        try:
            artifacts.verify(digest)
        except ArtifactError as exc:  # a file edited, truncated or removed since stored
            found.append(_unrepairable("corrupt", ", ".join(held[digest]), exc.message, fix))
        if progress is not None:
            progress(done, len(present))
    return found


def diagnose(
    store: Store,
    artifacts: ArtifactStore,
    *,
    stale: timedelta = timedelta(hours=1),
    fix: bool = False,
    verify: bool = False,
    now: datetime | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DoctorReport:
    """Every leftover of a crash, repaired when ``fix`` (runs first: a run marked
    interrupted no longer protects what it was writing), and every row whose artifact
    is missing (or, with ``verify``, no longer matches its manifest: ``progress`` sees
    each artifact checked)."""
    now = now or datetime.now(UTC)
    findings = [
        *_runs(store, stale, now, fix),
        *_models(store, stale, now, fix),
        *_blobs(store, artifacts, stale, fix),
        *_tmp(artifacts, stale, fix),
        *_uploads(artifacts, stale, fix),
        *_requests(store, stale, now, fix),
        *_missing_and_corrupt(store, artifacts, fix, verify, progress),
    ]
    return DoctorReport(tuple(findings), fix)


__all__ = ["DoctorReport", "Finding", "FindingKind", "diagnose"]
