"""The content-addressed artifact store: round trips, dedup, integrity, atomicity."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from modelyard.artifacts import ArtifactRef, ArtifactStore, FileEntry, _local
from modelyard.errors import ArtifactError, ArtifactIntegrityError, ArtifactNotFound, NotFound

CONFIG = b'{"r": 8, "lora_alpha": 16}'
WEIGHTS = bytes(range(256)) * 64


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "store")


@pytest.fixture
def adapter(tmp_path: Path) -> Path:
    src = tmp_path / "adapter"
    (src / "extra").mkdir(parents=True)
    (src / "adapter_config.json").write_bytes(CONFIG)
    (src / "adapter_model.safetensors").write_bytes(WEIGHTS)
    (src / "extra" / "README.md").write_bytes(b"notes\n")
    return src


def artifact_dir(store: ArtifactStore, ref: ArtifactRef) -> Path:
    return store.root / "sha256" / ref.digest[:2] / ref.digest


def tamper(path: Path, data: bytes) -> None:
    """Overwrite a stored (read-only) file, as an accident or an attacker would."""
    path.chmod(0o644)
    path.write_bytes(data)


def flip_first_byte(path: Path) -> None:
    data = path.read_bytes()
    tamper(path, bytes([data[0] ^ 0xFF]) + data[1:])


def tmp_entries(store: ArtifactStore) -> list[Path]:
    tmp = store.root / "tmp"
    return list(tmp.iterdir()) if tmp.exists() else []


# -- round trip ------------------------------------------------------------------


def test_round_trip(store: ArtifactStore, adapter: Path) -> None:
    ref = store.put_dir(adapter, kind="adapter")

    assert ref.kind == "adapter"
    assert ref.uri == f"sha256:{ref.digest}"
    assert set(ref.files) == {"adapter_config.json", "adapter_model.safetensors", "extra/README.md"}
    assert ref.files["adapter_model.safetensors"] == FileEntry(
        sha256=hashlib.sha256(WEIGHTS).hexdigest(), size=len(WEIGHTS)
    )
    assert ref.size == len(CONFIG) + len(WEIGHTS) + len(b"notes\n")

    assert store.exists(ref.digest)
    assert store.get(ref.digest) == ref
    assert store.get(ref.uri) == ref
    assert store.list() == [ref]

    files = store.open_verified(ref.uri)
    assert (files / "adapter_config.json").read_bytes() == CONFIG
    assert (files / "adapter_model.safetensors").read_bytes() == WEIGHTS
    assert (files / "extra" / "README.md").read_bytes() == b"notes\n"
    store.verify(ref.digest)
    assert tmp_entries(store) == []


def test_digest_is_sha256_of_canonical_manifest(store: ArtifactStore, adapter: Path) -> None:
    ref = store.put_dir(adapter, kind="adapter")
    raw = (artifact_dir(store, ref) / "manifest.json").read_bytes()

    assert hashlib.sha256(raw).hexdigest() == ref.digest
    doc = json.loads(raw)
    assert raw == json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    assert doc["format"] == 1
    assert doc["kind"] == "adapter"
    assert doc["files"]["adapter_config.json"] == {
        "sha256": hashlib.sha256(CONFIG).hexdigest(),
        "size": len(CONFIG),
    }


def test_stored_files_are_read_only(store: ArtifactStore, adapter: Path) -> None:
    ref = store.put_dir(adapter, kind="adapter")
    stored = [p for p in artifact_dir(store, ref).rglob("*") if p.is_file()]

    assert len(stored) == 4  # three files and the manifest
    for path in stored:
        assert stat.S_IMODE(path.stat().st_mode) & 0o222 == 0, path


def test_put_file_keeps_the_file_name(store: ArtifactStore, tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_bytes(b'{"prompt": "hi", "completion": "hello"}\n')

    ref = store.put_file(data, kind="dataset")

    assert list(ref.files) == ["train.jsonl"]
    assert (store.open_verified(ref.digest) / "train.jsonl").read_bytes() == data.read_bytes()


def test_empty_files_are_stored(store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "empty.txt").touch()

    ref = store.put_dir(src, kind="misc")

    assert ref.files["empty.txt"].size == 0
    store.verify(ref.digest)


# -- content addressing ------------------------------------------------------------


def test_same_content_same_digest_and_idempotent(
    store: ArtifactStore, adapter: Path, tmp_path: Path
) -> None:
    first = store.put_dir(adapter, kind="adapter")
    again = store.put_dir(adapter, kind="adapter")
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(adapter, copy)  # same bytes and names at another path
    moved = store.put_dir(copy, kind="adapter")

    assert first == again == moved
    assert store.list() == [first]
    assert tmp_entries(store) == []
    store.verify(first.digest)


def test_different_content_different_digest(
    store: ArtifactStore, adapter: Path, tmp_path: Path
) -> None:
    original = store.put_dir(adapter, kind="adapter")
    as_other_kind = store.put_dir(adapter, kind="dataset")
    flip_first_byte(adapter / "adapter_model.safetensors")
    one_byte_changed = store.put_dir(adapter, kind="adapter")
    (adapter / "extra" / "README.md").rename(adapter / "extra" / "NOTES.md")
    renamed = store.put_dir(adapter, kind="adapter")

    digests = {original.digest, as_other_kind.digest, one_byte_changed.digest, renamed.digest}
    assert len(digests) == 4
    assert len(store.list()) == 4


# -- integrity -------------------------------------------------------------------


def test_modified_file_is_refused(store: ArtifactStore, adapter: Path) -> None:
    ref = store.put_dir(adapter, kind="adapter")
    stored = artifact_dir(store, ref) / "files" / "adapter_model.safetensors"
    flip_first_byte(stored)  # same size, different bytes

    with pytest.raises(ArtifactIntegrityError, match=r"adapter_model\.safetensors") as info:
        store.open_verified(ref.digest)

    err = info.value
    assert err.context["digest"] == ref.digest
    assert err.context["path"] == "adapter_model.safetensors"
    assert ref.files["adapter_model.safetensors"].sha256[:12] in err.message
    assert hashlib.sha256(stored.read_bytes()).hexdigest()[:12] in err.message
    with pytest.raises(ArtifactIntegrityError):
        store.verify(ref.uri)


def test_truncated_file_is_refused(store: ArtifactStore, adapter: Path) -> None:
    ref = store.put_dir(adapter, kind="adapter")
    tamper(artifact_dir(store, ref) / "files" / "adapter_model.safetensors", WEIGHTS[:10])

    with pytest.raises(ArtifactIntegrityError, match=r"adapter_model\.safetensors"):
        store.verify(ref.digest)


def test_deleted_file_is_refused(store: ArtifactStore, adapter: Path) -> None:
    ref = store.put_dir(adapter, kind="adapter")
    (artifact_dir(store, ref) / "files" / "extra" / "README.md").unlink()

    with pytest.raises(ArtifactIntegrityError, match=r"extra/README\.md.*missing") as info:
        store.open_verified(ref.digest)
    assert info.value.context["path"] == "extra/README.md"


def test_extra_file_is_refused(store: ArtifactStore, adapter: Path) -> None:
    ref = store.put_dir(adapter, kind="adapter")
    (artifact_dir(store, ref) / "files" / "evil.py").write_text("import os\n")

    with pytest.raises(ArtifactIntegrityError, match=r"evil\.py.*not in the manifest"):
        store.open_verified(ref.digest)


def test_symlink_planted_in_store_is_refused(store: ArtifactStore, adapter: Path) -> None:
    ref = store.put_dir(adapter, kind="adapter")
    stored = artifact_dir(store, ref) / "files" / "adapter_config.json"
    stored.unlink()
    stored.symlink_to(adapter / "adapter_config.json")  # same bytes, but not ours to trust

    with pytest.raises(ArtifactIntegrityError, match=r"adapter_config\.json"):
        store.open_verified(ref.digest)


def test_tampered_manifest_is_refused(store: ArtifactStore, adapter: Path) -> None:
    ref = store.put_dir(adapter, kind="adapter")
    manifest = artifact_dir(store, ref) / "manifest.json"
    doc = json.loads(manifest.read_bytes())
    doc["kind"] = "dataset"
    tamper(manifest, json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())

    for read in (store.get, store.open_verified, store.verify):
        with pytest.raises(ArtifactIntegrityError, match="manifest") as info:
            read(ref.digest)
        assert info.value.context == {"digest": ref.digest, "path": "manifest.json"}


def test_putting_again_repairs_a_damaged_copy(store: ArtifactStore, adapter: Path) -> None:
    ref = store.put_dir(adapter, kind="adapter")
    flip_first_byte(artifact_dir(store, ref) / "files" / "adapter_model.safetensors")

    assert store.put_dir(adapter, kind="adapter") == ref
    files = store.open_verified(ref.digest)
    assert (files / "adapter_model.safetensors").read_bytes() == WEIGHTS
    assert tmp_entries(store) == []


# -- not found, delete ------------------------------------------------------------


def test_missing_artifact(store: ArtifactStore) -> None:
    digest = "ab" * 32

    assert not store.exists(digest)
    assert store.list() == []
    for call in (store.get, store.open_verified, store.delete):
        with pytest.raises(ArtifactNotFound) as info:
            call(f"sha256:{digest}")
        assert isinstance(info.value, NotFound)
        assert info.value.hint
        assert info.value.context["digest"] == digest


@pytest.mark.parametrize("digest", ["", "sha256:", "abc", "zz" * 32, "../" * 22])
def test_malformed_digest_is_rejected(store: ArtifactStore, digest: str) -> None:
    with pytest.raises(ArtifactError, match="not an artifact digest"):
        store.get(digest)


def test_delete(store: ArtifactStore, adapter: Path) -> None:
    keep = store.put_file(adapter / "adapter_config.json", kind="config")
    ref = store.put_dir(adapter, kind="adapter")

    store.delete(ref.uri)

    assert not store.exists(ref.digest)
    assert not artifact_dir(store, ref).exists()
    assert store.list() == [keep]
    assert tmp_entries(store) == []
    with pytest.raises(ArtifactNotFound):
        store.get(ref.digest)
    assert store.put_dir(adapter, kind="adapter") == ref  # can be stored again


# -- rejected sources ---------------------------------------------------------------


def test_symlink_in_source_is_rejected(store: ArtifactStore, adapter: Path) -> None:
    (adapter / "extra" / "link.bin").symlink_to(adapter / "adapter_model.safetensors")

    with pytest.raises(ArtifactError, match=r"extra/link\.bin.*symlink") as info:
        store.put_dir(adapter, kind="adapter")

    assert info.value.context["path"] == str(adapter / "extra" / "link.bin")
    assert store.list() == []


def test_symlinked_directory_in_source_is_rejected(
    store: ArtifactStore, adapter: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (adapter / "linked").symlink_to(outside, target_is_directory=True)

    with pytest.raises(ArtifactError, match="linked"):
        store.put_dir(adapter, kind="adapter")


def test_special_file_in_source_is_rejected(store: ArtifactStore, adapter: Path) -> None:
    os.mkfifo(adapter / "pipe")

    with pytest.raises(ArtifactError, match="pipe"):
        store.put_dir(adapter, kind="adapter")


def test_empty_source_is_rejected(store: ArtifactStore, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "only" / "dirs").mkdir(parents=True)

    with pytest.raises(ArtifactError, match="no files"):
        store.put_dir(empty, kind="adapter")
    assert store.list() == []


def test_wrong_source_types_are_rejected(
    store: ArtifactStore, adapter: Path, tmp_path: Path
) -> None:
    with pytest.raises(ArtifactError, match="not a directory"):
        store.put_dir(adapter / "adapter_config.json", kind="adapter")
    with pytest.raises(ArtifactError, match="not a directory"):
        store.put_dir(tmp_path / "nope", kind="adapter")
    with pytest.raises(ArtifactError, match="not a regular file"):
        store.put_file(adapter, kind="dataset")
    link = tmp_path / "link.json"
    link.symlink_to(adapter / "adapter_config.json")
    with pytest.raises(ArtifactError, match="not a regular file"):
        store.put_file(link, kind="dataset")
    with pytest.raises(ArtifactError, match="kind"):
        store.put_dir(adapter, kind=" ")


# -- atomicity --------------------------------------------------------------------


def test_failure_mid_copy_leaves_nothing_behind(
    store: ArtifactStore, adapter: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = ArtifactStore(tmp_path / "reference").put_dir(adapter, kind="adapter").digest
    real_copy = _local._copy_file
    calls: list[Path] = []

    def copy_then_fail(src: Path, dst: Path) -> FileEntry:
        calls.append(src)
        if len(calls) == 2:
            real_copy(src, dst)  # bytes written, then the disk fills up
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_copy(src, dst)

    monkeypatch.setattr(_local, "_copy_file", copy_then_fail)

    with pytest.raises(ArtifactError, match="No space left on device"):
        store.put_dir(adapter, kind="adapter")

    assert len(calls) == 2
    assert not (store.root / "sha256" / digest[:2] / digest).exists()
    assert not store.exists(digest)
    assert store.list() == []
    assert tmp_entries(store) == []

    monkeypatch.setattr(_local, "_copy_file", real_copy)
    assert store.put_dir(adapter, kind="adapter").digest == digest
