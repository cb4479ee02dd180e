"""Import safety checks on real crafted files: pickles, safetensors headers, archives, adapters.

No malicious pickle is ever loaded here: they are built with ``pickle.dumps``
(which only records the ``__reduce__`` result) or by hand, and only scanned.
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import pickletools
import shutil
import struct
import subprocess
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from modelyard.artifacts import (
    ALLOWED_PICKLE_GLOBALS,
    ImportLimits,
    inspect_artifact,
    read_safetensors_header,
    scan_pickle,
    stage_import,
)
from modelyard.errors import BaseModelNotFound, ConfigError, UnsafeArtifact

SYSTEM = f"{os.system.__module__}.system"  # posix.system on Linux


class RunsShell:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo pwned",))


class StartsProcess:
    def __reduce__(self) -> tuple[Any, ...]:
        return (subprocess.Popen, (["echo", "pwned"],))


def refusal(call: Callable[[], object]) -> UnsafeArtifact:
    with pytest.raises(UnsafeArtifact) as info:
        call()
    return info.value


def torch_bytes(obj: object, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **kwargs)
    return buf.getvalue()


def state_dict() -> collections.OrderedDict[str, torch.Tensor]:
    return collections.OrderedDict(
        weight=torch.randn(4, 3),
        bias=torch.zeros(4, dtype=torch.bfloat16),
        steps=torch.arange(3),
        scale=torch.nn.Parameter(torch.ones(2, dtype=torch.float16)),
    )


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return path


def full_model(root: Path, weights: dict[str, bytes] | None = None) -> Path:
    """A minimal full-model directory: config.json plus the given weight files."""
    write(root / "config.json", json.dumps({"model_type": "llama"}))
    st = root / "model.safetensors"
    root.mkdir(parents=True, exist_ok=True)
    if weights is None:
        save_file({"w": torch.zeros(2, 2)}, str(st))
    for name, data in (weights or {}).items():
        write(root / name, data)
    return root


# -- pickles -----------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_reduce_to_os_system_is_refused_naming_the_global(tmp_path: Path, protocol: int) -> None:
    path = write(tmp_path / "evil.pkl", pickle.dumps(RunsShell(), protocol=protocol))
    err = refusal(lambda: scan_pickle(path))
    assert err.rule == "pickle_global"
    assert err.path == "evil.pkl"
    assert SYSTEM in err.message
    assert err.context["globals"] == [SYSTEM]
    assert err.code == "unsafe_artifact"


def test_stack_global_pickle_is_resolved_and_refused(tmp_path: Path) -> None:
    data = pickle.dumps({"weights": StartsProcess()}, protocol=4)
    assert "STACK_GLOBAL" in {op.name for op, _, _ in pickletools.genops(data)}
    err = refusal(lambda: scan_pickle(write(tmp_path / "w.pt", data)))
    assert err.rule == "pickle_global"
    assert err.context["globals"] == ["subprocess.Popen"]


def test_stack_global_through_the_memo_past_a_decoy_string(tmp_path: Path) -> None:
    # memoize "os" and "system", push and pop a decoy, then fetch both from the memo
    data = (
        b"\x80\x04"
        + b"\x8c\x02os\x94"  # SHORT_BINUNICODE 'os', MEMOIZE -> 0
        + b"\x8c\x06system\x94"  # SHORT_BINUNICODE 'system', MEMOIZE -> 1
        + b"\x8c\x05torch0"  # a decoy string, POP
        + b"h\x00h\x01\x93"  # BINGET 0, BINGET 1, STACK_GLOBAL
        + b"\x8c\x02id\x85R."  # ('id',) REDUCE STOP
    )
    err = refusal(lambda: scan_pickle(write(tmp_path / "w.pkl", data)))
    assert err.context["globals"] == ["os.system"]


def test_python2_names_are_reported_as_what_they_import(tmp_path: Path) -> None:
    path = write(tmp_path / "w.pkl", b"c__builtin__\neval\n(S'1+1'\ntR.")
    err = refusal(lambda: scan_pickle(path))
    assert err.context["globals"] == ["builtins.eval"]


def test_calling_anything_but_an_allowed_import_is_refused(tmp_path: Path) -> None:
    # OrderedDict() is allowed; calling its result is not
    data = b"\x80\x02ccollections\nOrderedDict\n)R)R."
    err = refusal(lambda: scan_pickle(write(tmp_path / "w.pkl", data)))
    assert err.rule == "pickle_global"
    assert "calls an object that is not an imported global" in err.message


def test_copyreg_extension_codes_are_refused(tmp_path: Path) -> None:
    err = refusal(lambda: scan_pickle(write(tmp_path / "w.pkl", b"\x80\x02\x82\x01)R.")))
    assert err.rule == "pickle_global"
    assert "EXT1" in err.message


def test_benign_torch_zip_imports_only_allowed_globals(tmp_path: Path) -> None:
    found = scan_pickle(write(tmp_path / "pytorch_model.bin", torch_bytes(state_dict())))
    assert "torch._utils._rebuild_tensor_v2" in found
    assert "collections.OrderedDict" in found
    assert set(found) <= ALLOWED_PICKLE_GLOBALS


def test_benign_legacy_torch_file_passes(tmp_path: Path) -> None:
    data = torch_bytes(state_dict(), _use_new_zipfile_serialization=False)
    assert not data.startswith(b"PK")
    found = scan_pickle(write(tmp_path / "old.pt", data))
    assert "torch._utils._rebuild_tensor_v2" in found


def inject(zip_bytes: bytes, member_suffix: str, payload: bytes) -> bytes:
    """Rewrite a torch zip, replacing the member ending in ``member_suffix``."""
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(zip_bytes)) as src,
        zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst,
    ):
        for info in src.infolist():
            data = payload if info.filename.endswith(member_suffix) else src.read(info)
            dst.writestr(info.filename, data)
    return out.getvalue()


def test_torch_zip_with_injected_data_pkl_is_refused(tmp_path: Path) -> None:
    data = inject(torch_bytes(state_dict()), "/data.pkl", pickle.dumps(RunsShell(), protocol=2))
    path = write(tmp_path / "pytorch_model.bin", data)
    err = refusal(lambda: scan_pickle(path))
    assert err.rule == "pickle_global"
    assert err.context["globals"] == [SYSTEM]


def test_pickle_disguised_as_zip_is_scanned_as_torch_would_load_it(tmp_path: Path) -> None:
    # torch.load decides by the first bytes: this file starts with a pickle, then a zip
    data = pickle.dumps(RunsShell(), protocol=2) + torch_bytes(state_dict())
    err = refusal(lambda: scan_pickle(write(tmp_path / "model.pt", data)))
    assert err.context["globals"] == [SYSTEM]


@pytest.mark.parametrize(
    "data",
    [
        pickle.dumps(collections.OrderedDict(a=1), protocol=2)[:-1],  # no STOP
        b"\x80\x02\x8c",  # truncated inside an argument
        b"",
        b"\xff\xfe not a pickle",
        pickle.dumps(1) + b"trailing junk",
    ],
    ids=["no-stop", "truncated-arg", "empty", "garbage", "trailing-bytes"],
)
def test_unparseable_pickle_is_a_refusal(tmp_path: Path, data: bytes) -> None:
    err = refusal(lambda: scan_pickle(write(tmp_path / "w.bin", data)))
    assert err.rule == "pickle"
    assert "cannot be scanned" in err.message


def test_the_docs_show_the_refusal_the_scanner_prints(tmp_path: Path) -> None:
    docs = (Path(__file__).resolve().parents[1] / "docs" / "artifact-safety.md").read_text()
    path = write(tmp_path / "pytorch_model.bin", pickle.dumps(RunsShell()))
    err = refusal(lambda: scan_pickle(path))
    assert f"error: {err.one_line()}".replace(SYSTEM, "posix.system") in docs


def test_truncated_torch_zip_is_a_refusal(tmp_path: Path) -> None:
    data = torch_bytes(state_dict())
    err = refusal(lambda: scan_pickle(write(tmp_path / "w.pt", data[: len(data) // 2])))
    assert err.rule == "pickle"


def test_pickle_weights_need_the_opt_in(tmp_path: Path) -> None:
    root = full_model(tmp_path / "m", {"pytorch_model.bin": torch_bytes(state_dict())})
    err = refusal(lambda: inspect_artifact(root, kind="full"))
    assert (err.rule, err.path) == ("pickle", "pytorch_model.bin")
    assert "--allow-pickle" in err.hint

    report = inspect_artifact(root, kind="full", allow_pickle=True)
    [weights] = [f for f in report.files if f.path == "pytorch_model.bin"]
    assert weights.kind == "pickle"
    assert "torch._utils._rebuild_tensor_v2" in weights.pickle_globals
    assert report.pickle is True


def test_malicious_pickle_weights_are_refused_even_with_the_opt_in(tmp_path: Path) -> None:
    root = full_model(tmp_path / "m", {"sub/model.ckpt": pickle.dumps(RunsShell())})
    err = refusal(lambda: inspect_artifact(root, kind="full", allow_pickle=True))
    assert (err.rule, err.path) == ("pickle_global", "sub/model.ckpt")
    assert SYSTEM in err.one_line()


# -- safetensors headers -------------------------------------------------------------


def raw_safetensors(
    path: Path, header: dict[str, Any], data: bytes, length: int | None = None
) -> Path:
    blob = json.dumps(header).encode()
    size = len(blob) if length is None else length
    return write(path, struct.pack("<Q", size) + blob + data)


def test_valid_safetensors_header_is_read_without_loading(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    tensors = {"a": torch.zeros(2, 3), "b": torch.ones(5, dtype=torch.bfloat16)}
    save_file(tensors, str(path), metadata={"format": "pt"})
    header = read_safetensors_header(path)
    assert header.tensors["a"].shape == (2, 3)
    assert header.tensors["a"].dtype == "F32"
    assert header.tensors["b"].dtype == "BF16"
    assert header.metadata == {"format": "pt"}
    assert header.data_bytes == 2 * 3 * 4 + 5 * 2


F32_2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(
    ("header", "data", "length", "expected", "tensor"),
    [
        ({"a": F32_2}, bytes(8), 2**40, "exceeds the limit", None),
        ({"a": F32_2}, bytes(8), 5000, "exceeds the file's", None),
        ({"a": F32_2}, bytes(4), None, "beyond the data section", "a"),
        (
            {"a": F32_2, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
            bytes(12),
            None,
            "overlap",
            "b",
        ),
        (
            {"a": {"dtype": "F128", "shape": [2], "data_offsets": [0, 8]}},
            bytes(8),
            None,
            "unknown dtype",
            "a",
        ),
        (
            {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},
            bytes(8),
            None,
            "span 8 bytes",
            "a",
        ),
        (
            {"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}},
            bytes(8),
            None,
            "non-negative",
            "a",
        ),
        (
            {"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}},
            bytes(8),
            None,
            "begin is after end",
            "a",
        ),
        ({"a": F32_2}, bytes(12), None, "belong to no tensor", None),
        ({"a": F32_2, "__metadata__": {"n": 1}}, bytes(8), None, "__metadata__", "__metadata__"),
    ],
    ids=[
        "huge-header-length",
        "header-longer-than-file",
        "offsets-beyond-file",
        "overlapping-offsets",
        "unknown-dtype",
        "size-mismatch",
        "negative-shape",
        "reversed-offsets",
        "trailing-bytes",
        "metadata-not-strings",
    ],
)
def test_bad_safetensors_headers_are_refused_naming_the_tensor(
    tmp_path: Path,
    header: dict[str, Any],
    data: bytes,
    length: int | None,
    expected: str,
    tensor: str | None,
) -> None:
    path = raw_safetensors(tmp_path / "model.safetensors", header, data, length)
    err = refusal(lambda: read_safetensors_header(path))
    assert err.rule == "safetensors_header"
    assert err.path == "model.safetensors"
    assert expected in err.message
    assert err.context["tensor"] == tensor


def test_duplicate_tensor_names_are_refused(tmp_path: Path) -> None:
    entry = b'{"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}'
    blob = b'{"a": ' + entry + b', "a": ' + entry + b"}"
    path = write(tmp_path / "x.safetensors", struct.pack("<Q", len(blob)) + blob + b"\x00")
    err = refusal(lambda: read_safetensors_header(path))
    assert "names 'a' twice" in err.message


def test_a_bad_header_in_an_artifact_names_the_file(tmp_path: Path) -> None:
    root = full_model(tmp_path / "m", {})
    raw_safetensors(root / "shards" / "model-00002.safetensors", {"x": F32_2}, bytes(4))
    err = refusal(lambda: inspect_artifact(root, kind="full"))
    assert (err.rule, err.path) == ("safetensors_header", "shards/model-00002.safetensors")
    assert err.one_line().startswith("shards/model-00002.safetensors: invalid safetensors header")


# -- file kinds, remote code, shard indexes ------------------------------------------


def test_a_complete_full_model_passes_and_reports_every_file(tmp_path: Path) -> None:
    root = full_model(tmp_path / "m")
    write(root / "generation_config.json", "{}")
    write(root / "tokenizer.json", json.dumps({"model": {"vocab": {"auto_map": 1}}}))
    write(root / "tokenizer_config.json", json.dumps({"model_max_length": 128}))
    write(root / "special_tokens_map.json", "{}")
    write(root / "vocab.json", json.dumps({"auto_map": 7}))
    write(root / "merges.txt", "#version: 0.2\na b\n")
    write(root / "tokenizer.model", b"\x0a\x05\x0a\x01a\x15\x00\x00\x00\x00")
    write(root / "cl100k.tiktoken", "IQ== 0\n")
    write(root / "README.md", "# model\n")
    write(root / "LICENSE", "Apache-2.0\n")
    write(root / "chat_template.jinja", "{% for m in messages %}{{ m.content }}{% endfor %}")
    report = inspect_artifact(root, kind="full")
    kinds = {f.path: f.kind for f in report.files}
    assert kinds["model.safetensors"] == "safetensors"
    assert kinds["tokenizer.model"] == "tokenizer"
    assert kinds["LICENSE"] == "text"
    assert kinds["generation_config.json"] == "json"
    assert kinds["chat_template.jinja"] == "text"
    assert len(kinds) == 13
    assert report.remote_code is False
    assert json.loads(json.dumps(report.to_dict()))["files"][0]["path"] == "LICENSE"


@pytest.mark.parametrize("name", ["run.sh", ".gitattributes", "weights.npz", "sub/model.onnx"])
def test_files_of_other_kinds_are_refused_by_name(tmp_path: Path, name: str) -> None:
    root = full_model(tmp_path / "m")
    write(root / name, b"\x7fELF")
    err = refusal(lambda: inspect_artifact(root, kind="full"))
    assert (err.rule, err.path) == ("file_kind", name)


def test_a_json_file_that_is_not_json_is_refused(tmp_path: Path) -> None:
    root = full_model(tmp_path / "m")
    write(root / "config.json", pickle.dumps(RunsShell()))
    err = refusal(lambda: inspect_artifact(root, kind="full"))
    assert (err.rule, err.path) == ("file_kind", "config.json")


@pytest.mark.parametrize("name", ["config.json", "tokenizer_config.json", "processor_config.json"])
def test_auto_map_needs_trust_remote_code(tmp_path: Path, name: str) -> None:
    root = full_model(tmp_path / "m")
    config = {"model_type": "llama", "auto_map": {"AutoModel": "modeling_x.XModel"}}
    write(root / name, json.dumps(config))
    err = refusal(lambda: inspect_artifact(root, kind="full"))
    assert (err.rule, err.path) == ("remote_code", name)
    assert "--trust-remote-code" in err.hint
    assert inspect_artifact(root, kind="full", trust_remote_code=True).remote_code is True


def test_python_files_need_trust_remote_code(tmp_path: Path) -> None:
    root = full_model(tmp_path / "m")
    write(root / "modeling_x.py", "import os\n")
    err = refusal(lambda: inspect_artifact(root, kind="full"))
    assert (err.rule, err.path) == ("remote_code", "modeling_x.py")
    report = inspect_artifact(root, kind="full", trust_remote_code=True)
    assert {f.path: f.kind for f in report.files}["modeling_x.py"] == "python"


@pytest.mark.parametrize(
    "target", ["../../outside.safetensors", "/etc/passwd", "missing.safetensors", "README.md"]
)
def test_a_shard_index_may_only_name_weights_inside_the_artifact(
    tmp_path: Path, target: str
) -> None:
    root = full_model(tmp_path / "m")
    write(root / "README.md", "hi\n")
    index = {"metadata": {}, "weight_map": {"w": "model.safetensors", "v": target}}
    write(root / "model.safetensors.index.json", json.dumps(index))
    err = refusal(lambda: inspect_artifact(root, kind="full"))
    assert (err.rule, err.path) == ("path", "model.safetensors.index.json")
    assert repr(target) in err.message


def test_a_full_model_needs_config_and_weights(tmp_path: Path) -> None:
    root = write(tmp_path / "m" / "README.md", "hi\n").parent
    err = refusal(lambda: inspect_artifact(root, kind="full"))
    assert (err.rule, err.path) == ("file_kind", "config.json")


def test_symlinks_in_a_directory_are_refused(tmp_path: Path) -> None:
    root = full_model(tmp_path / "m")
    (root / "README.md").symlink_to("/etc/passwd")
    err = refusal(lambda: inspect_artifact(root, kind="full"))
    assert (err.rule, err.path) == ("path", "README.md")
    err = refusal(lambda: stage_import(root, tmp_path / "staging"))
    assert (err.rule, err.path) == ("path", "README.md")
    assert not (tmp_path / "staging").exists()


def test_hard_links_in_a_directory_are_refused(tmp_path: Path) -> None:
    root = full_model(tmp_path / "m")
    os.link(write(tmp_path / "elsewhere.md", "x\n"), root / "NOTES.md")
    err = refusal(lambda: inspect_artifact(root, kind="full"))
    assert (err.rule, err.path) == ("path", "NOTES.md")


# -- staging: directories and archives --------------------------------------------------


def make_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz" if path.name.endswith("gz") else "w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def tar_member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


def test_a_directory_is_copied_into_staging(tmp_path: Path) -> None:
    root = full_model(tmp_path / "m")
    write(root / "docs" / "README.md", "hi\n")
    staged = stage_import(root, tmp_path / "staging")
    assert staged == tmp_path / "staging"
    assert (staged / "docs" / "README.md").read_text() == "hi\n"
    assert (staged / "config.json").read_bytes() == (root / "config.json").read_bytes()
    inspect_artifact(staged, kind="full")


def test_tar_with_dot_dot_member_writes_nothing_outside(tmp_path: Path) -> None:
    archive = make_tar(
        tmp_path / "in" / "model.tar",
        [(tar_member("config.json"), b"{}"), (tar_member("../evil"), b"pwned")],
    )
    err = refusal(lambda: stage_import(archive, tmp_path / "work" / "staging"))
    assert (err.rule, err.path) == ("path", "../evil")
    assert not (tmp_path / "work" / "evil").exists()
    assert not (tmp_path / "work" / "staging").exists()


@pytest.mark.parametrize(
    ("member", "why"),
    [
        (tar_member("model/README.md", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link"),
        (tar_member("model/README.md", tarfile.LNKTYPE, "/etc/passwd"), "hard link"),
        (tar_member("model/dev", tarfile.CHRTYPE), "device"),
        (tar_member("/abs/config.json"), "absolute"),
    ],
    ids=["symlink", "hardlink", "device", "absolute"],
)
def test_tar_links_devices_and_absolute_names_are_refused(
    tmp_path: Path, member: tarfile.TarInfo, why: str
) -> None:
    data = None if member.type != tarfile.REGTYPE else b"{}"
    archive = make_tar(tmp_path / "model.tar.gz", [(member, data)])
    err = refusal(lambda: stage_import(archive, tmp_path / "staging"))
    assert err.rule == "path"
    assert err.path == member.name
    assert why in err.message
    assert not (tmp_path / "staging").exists()


@pytest.mark.parametrize(
    "name", ["/tmp/evil.json", "..\\evil.json", "a/../../evil.json", "C:/evil.json"]
)
def test_zip_with_unsafe_names_is_refused(tmp_path: Path, name: str) -> None:
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("config.json", "{}")
        zf.writestr(name, "{}")
    err = refusal(lambda: stage_import(archive, tmp_path / "staging"))
    assert (err.rule, err.path) == ("path", name)
    assert not (tmp_path / "staging").exists()


def test_zip_symlink_entries_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("README.md")
        info.external_attr = 0o120777 << 16  # a symlink, as `zip --symlinks` writes it
        zf.writestr(info, "/etc/passwd")
    err = refusal(lambda: stage_import(archive, tmp_path / "staging"))
    assert (err.rule, err.path) == ("path", "README.md")


def test_zip_with_a_duplicate_entry_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as zf, pytest.warns(UserWarning, match="Duplicate"):
        zf.writestr("config.json", "{}")
        zf.writestr("config.json", '{"auto_map": {}}')
    err = refusal(lambda: stage_import(archive, tmp_path / "staging"))
    assert (err.rule, err.path) == ("path", "config.json")


def test_archive_larger_than_the_limit_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("README.md", b"a" * (4 << 20))
    assert archive.stat().st_size < 100_000
    err = refusal(lambda: stage_import(archive, tmp_path / "staging", max_bytes=1 << 20))
    assert (err.rule, err.path) == ("size", "README.md")


def test_a_corrupt_archive_is_refused(tmp_path: Path) -> None:
    archive = write(tmp_path / "model.tar.gz", b"\x1f\x8b not really gzip")
    err = refusal(lambda: stage_import(archive, tmp_path / "staging"))
    assert (err.rule, err.path) == ("archive", "model.tar.gz")


def test_staging_must_be_new_or_empty(tmp_path: Path) -> None:
    root = full_model(tmp_path / "m")
    write(tmp_path / "staging" / "old.txt", "x")
    with pytest.raises(ConfigError, match="not empty"):
        stage_import(root, tmp_path / "staging")
    with pytest.raises(ConfigError, match="neither a directory nor"):
        stage_import(tmp_path / "m" / "config.json", tmp_path / "other")


# -- adapters against their base ----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
    )
    path = tmp_path_factory.mktemp("base")
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def saved_adapter(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    path = tmp_path_factory.mktemp("adapter")
    get_peft_model(model, lora).save_pretrained(path)
    return path


@pytest.fixture
def adapter(saved_adapter: Path, tmp_path: Path) -> Path:
    """A private copy of the good adapter, free to edit."""
    return Path(shutil.copytree(saved_adapter, tmp_path / "adapter"))


def edit_config(adapter: Path, **changes: Any) -> None:
    path = adapter / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_a_good_adapter_passes(adapter: Path, tiny_base: Path) -> None:
    report = inspect_artifact(adapter, kind="adapter", base_model_dir=tiny_base)
    assert report.adapter is not None
    assert report.adapter.r == 4
    assert report.adapter.target_modules == ("q_proj", "v_proj")
    assert "model.layers.1.self_attn.v_proj" in report.adapter.matched_modules
    assert len(report.adapter.matched_modules) == 4
    assert report.adapter.tensors_checked is True
    assert {f.path for f in report.files} == {
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    }


def test_a_good_adapter_passes_through_a_tar_gz(
    saved_adapter: Path, tiny_base: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "adapter.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(saved_adapter, arcname="my-adapter")
    staged = stage_import(archive, tmp_path / "staging")
    assert staged == tmp_path / "staging" / "my-adapter"
    inspect_artifact(staged, kind="adapter", base_model_dir=tiny_base)


@pytest.mark.parametrize("targets", ["all-linear", r".*\.(q_proj|v_proj)"])
def test_string_target_modules_follow_peft(adapter: Path, tiny_base: Path, targets: str) -> None:
    edit_config(adapter, target_modules=targets)
    report = inspect_artifact(adapter, kind="adapter", base_model_dir=tiny_base)
    assert report.adapter is not None
    assert "model.layers.0.self_attn.q_proj" in report.adapter.matched_modules


def test_a_target_module_missing_from_the_base_is_refused(adapter: Path, tiny_base: Path) -> None:
    edit_config(adapter, target_modules=["q_proj", "v_proj", "c_attn"])
    err = refusal(lambda: inspect_artifact(adapter, kind="adapter", base_model_dir=tiny_base))
    assert (err.rule, err.path) == ("adapter_config", "adapter_config.json")
    assert "'c_attn' does not exist in the base model" in err.message
    assert "q_proj" in err.message  # names what does exist


def test_a_regex_matching_nothing_is_refused(adapter: Path, tiny_base: Path) -> None:
    edit_config(adapter, target_modules=r".*\.query_key_value")
    err = refusal(lambda: inspect_artifact(adapter, kind="adapter", base_model_dir=tiny_base))
    assert "selects no module" in err.message


def test_a_container_module_cannot_be_a_target(adapter: Path, tiny_base: Path) -> None:
    edit_config(adapter, target_modules=["self_attn"])
    err = refusal(lambda: inspect_artifact(adapter, kind="adapter", base_model_dir=tiny_base))
    assert "which LoRA cannot adapt" in err.message


def test_a_rank_above_the_bound_is_refused(adapter: Path, tiny_base: Path) -> None:
    edit_config(adapter, r=512)
    err = refusal(lambda: inspect_artifact(adapter, kind="adapter", base_model_dir=tiny_base))
    assert err.rule == "adapter_config"
    assert "r=512 is outside 1..256" in err.message
    assert "--max-rank" in err.hint


def test_the_rank_bound_is_configurable(adapter: Path, tiny_base: Path) -> None:
    err = refusal(
        lambda: inspect_artifact(adapter, kind="adapter", base_model_dir=tiny_base, max_rank=2)
    )
    assert "r=4 is outside 1..2" in err.message


def test_weights_inconsistent_with_the_rank_are_refused(adapter: Path, tiny_base: Path) -> None:
    edit_config(adapter, r=8)
    err = refusal(lambda: inspect_artifact(adapter, kind="adapter", base_model_dir=tiny_base))
    assert err.rule == "adapter_config"
    assert err.context["tensor"].endswith("q_proj.lora_A.weight")
    assert "expected [8, 32]" in err.message


def test_weights_for_an_unselected_module_are_refused(adapter: Path, tiny_base: Path) -> None:
    edit_config(adapter, target_modules=["q_proj"])
    err = refusal(lambda: inspect_artifact(adapter, kind="adapter", base_model_dir=tiny_base))
    assert "v_proj" in err.context["tensor"]
    assert "does not select" in err.message


def test_weights_for_another_architecture_are_refused(adapter: Path, tiny_base: Path) -> None:
    save_file(
        {
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 64),
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(32, 4),
        },
        str(adapter / "adapter_model.safetensors"),
    )
    err = refusal(lambda: inspect_artifact(adapter, kind="adapter", base_model_dir=tiny_base))
    assert "has shape [4, 64], expected [4, 32]" in err.message


def test_only_lora_adapters_are_accepted(adapter: Path, tiny_base: Path) -> None:
    edit_config(adapter, peft_type="IA3")
    err = refusal(lambda: inspect_artifact(adapter, kind="adapter", base_model_dir=tiny_base))
    assert "only LORA adapters" in err.message


def test_an_adapter_needs_its_config_and_weights(adapter: Path, tiny_base: Path) -> None:
    (adapter / "adapter_model.safetensors").unlink()
    err = refusal(lambda: inspect_artifact(adapter, kind="adapter", base_model_dir=tiny_base))
    assert (err.rule, err.path) == ("adapter_config", "adapter_model.safetensors")


def test_an_adapter_needs_a_base_to_be_checked_against(adapter: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="base model directory"):
        inspect_artifact(adapter, kind="adapter")
    with pytest.raises(BaseModelNotFound, match=r"no config\.json"):
        inspect_artifact(adapter, kind="adapter", base_model_dir=tmp_path)


@pytest.mark.parametrize(
    "changes",
    [{"target_modules": "(q_proj"}, {"rank_pattern": {"[": 2}}, {"modules_to_save": ["lm_head("]}],
    ids=["target-regex", "rank-pattern", "modules-to-save"],
)
def test_an_invalid_regex_in_the_config_is_a_refusal_not_a_crash(
    adapter: Path, tiny_base: Path, changes: dict[str, Any]
) -> None:
    edit_config(adapter, **changes)
    err = refusal(lambda: inspect_artifact(adapter, kind="adapter", base_model_dir=tiny_base))
    assert err.rule == "adapter_config"
    assert "invalid regular expression" in err.message


# -- limits: archive bombs, too many files, deep JSON ----------------------------------


def zip_of_zeros(path: Path, name: str, size: int) -> Path:
    """A zip holding ``size`` zero bytes; its listing may be forged to claim fewer."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open(name, "w") as out:
        chunk = bytes(1 << 20)
        for _ in range(size // len(chunk)):
            out.write(chunk)
    return path


def test_a_zip_bomb_is_refused_by_its_compression_ratio(tmp_path: Path) -> None:
    archive = zip_of_zeros(tmp_path / "bomb.zip", "model.safetensors", 64 << 20)
    assert archive.stat().st_size < 200_000  # ~64 MiB of zeros in well under 1 MiB
    err = refusal(lambda: stage_import(archive, tmp_path / "staging"))
    assert (err.rule, err.path) == ("compression_ratio", "model.safetensors")
    assert "--max-ratio" in (err.hint or "")
    assert not (tmp_path / "staging").exists()  # nothing half-written stays


def test_a_zip_whose_listing_lies_about_sizes_is_stopped_while_writing(tmp_path: Path) -> None:
    archive = zip_of_zeros(tmp_path / "bomb.zip", "model.safetensors", 8 << 20)
    raw = bytearray(archive.read_bytes())
    central = raw.rindex(b"PK\x01\x02")  # the central directory claims 10 bytes
    struct.pack_into("<I", raw, central + 24, 10)
    archive.write_bytes(bytes(raw))
    limits = ImportLimits(max_bytes=4 << 20)
    err = refusal(lambda: stage_import(archive, tmp_path / "staging", limits=limits))
    assert err.rule in ("size", "archive")  # zipfile itself may notice the lie first
    assert not (tmp_path / "staging").exists()


def test_too_many_files_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "many.tar"
    with tarfile.open(archive, "w") as tf:
        for i in range(12):
            info = tarfile.TarInfo(f"m/notes-{i:02}.txt")
            info.size = 1
            tf.addfile(info, io.BytesIO(b"x"))
    err = refusal(
        lambda: stage_import(archive, tmp_path / "staging", limits=ImportLimits(max_files=10))
    )
    assert (err.rule, err.path) == ("file_count", "m/notes-10.txt")
    zipped = tmp_path / "many.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        for i in range(12):
            zf.writestr(f"notes-{i:02}.txt", "x")
    err = refusal(
        lambda: stage_import(zipped, tmp_path / "staging2", limits=ImportLimits(max_files=10))
    )
    assert (err.rule, err.path) == ("file_count", "notes-10.txt")


@pytest.mark.parametrize("field", ["max_bytes", "max_files", "max_ratio", "max_json_depth"])
def test_a_limit_must_be_positive(field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        ImportLimits(**{field: 0})


@pytest.mark.parametrize("depth", [65, 200_000], ids=["over-the-limit", "past-the-parser"])
def test_deeply_nested_json_is_refused_not_a_crash(tmp_path: Path, depth: int) -> None:
    root = full_model(tmp_path / "m")
    write(root / "generation_config.json", "[" * depth + "]" * depth)
    err = refusal(lambda: inspect_artifact(root, kind="full"))
    assert (err.rule, err.path) == ("json_depth", "generation_config.json")


def test_json_depth_is_configurable(tmp_path: Path) -> None:
    root = full_model(tmp_path / "m")
    write(root / "generation_config.json", "[" * 65 + "]" * 65)
    inspect_artifact(root, kind="full", max_json_depth=65)


# -- adapters the server cannot serve ------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"use_dora": True}, "use_dora"),
        ({"lora_alpha": float("nan")}, "lora_alpha"),
        ({"lora_alpha": 1e30}, "lora_alpha"),
        ({"lora_alpha": float("inf")}, "lora_alpha"),
        ({"lora_alpha": -8}, "lora_alpha"),
        ({"lora_alpha": "16"}, "lora_alpha"),
        ({"alpha_pattern": {"q_proj": float("nan")}}, "alpha_pattern['q_proj']"),
        ({"bias": "all"}, "bias"),
        ({"fan_in_fan_out": True}, "fan_in_fan_out"),
    ],
    ids=["dora", "nan", "1e30", "inf", "negative", "string", "pattern-nan", "bias", "fan-in"],
)
def test_an_adapter_the_server_cannot_serve_is_refused_at_import(
    adapter: Path, tiny_base: Path, changes: dict[str, Any], field: str
) -> None:
    edit_config(adapter, **changes)
    err = refusal(lambda: inspect_artifact(adapter, kind="adapter", base_model_dir=tiny_base))
    assert (err.rule, err.path) == ("adapter_config", "adapter_config.json")
    assert err.context["field"] == field
    assert field.split("[")[0] in err.message


def test_rslora_is_served_so_it_passes(adapter: Path, tiny_base: Path) -> None:
    edit_config(adapter, use_rslora=True, lora_alpha=16)
    inspect_artifact(adapter, kind="adapter", base_model_dir=tiny_base)
