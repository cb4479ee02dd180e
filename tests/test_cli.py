"""The CLI as users meet it: exit codes, one-line errors, JSON output, rows in the store."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from clihelp import modelyard
from modelyard.store import Store


def _one_clean_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("error: ")
    return lines[0]


def test_help_lists_the_command_groups(tmp_path: Path) -> None:
    r = modelyard("--help", home=tmp_path)
    assert r.code == 0
    for group in (
        "init",
        "quickstart",
        "serve",
        "base",
        "tenants",
        "keys",
        "registry",
        "endpoints",
    ):
        assert group in r.out


def test_init_is_idempotent_and_creates_the_store(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = modelyard("init", "--json", home=home)
    assert first.code == 0, first.err
    info = json.loads(first.out)
    assert info["schema_before"] is None and info["schema"]
    assert (home / "store.db").is_file() and (home / "artifacts").is_dir()
    second = modelyard("init", home=home)
    assert second.code == 0 and "up to date" in second.out


def test_unwritable_home_is_one_clear_error(tmp_path: Path) -> None:
    r = modelyard("init", home=Path("/proc/modelyard-home"))
    assert r.code != 0
    assert "cannot write to the modelyard home" in _one_clean_error_line(r.err)


def test_unreachable_store_is_one_clear_error_without_password(tmp_path: Path) -> None:
    url = "postgresql://admin:s3cret@127.0.0.1:9/modelyard"
    r = modelyard("tenants", "list", home=tmp_path, env={"MODELYARD_STORE_URL": url})
    assert r.code == 1
    line = _one_clean_error_line(r.err)
    assert "cannot use the store" in line and "MODELYARD_STORE_URL" in line
    assert "s3cret" not in r.err


def test_bad_store_url_names_the_setting(tmp_path: Path) -> None:
    r = modelyard("init", home=tmp_path, env={"MODELYARD_STORE_URL": "mysql://x/y"})
    assert r.code == 2
    assert "unsupported store database" in _one_clean_error_line(r.err)


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    r = modelyard("--debug", "registry", "show", "nope@champion", home=tmp_path)
    assert r.code != 0 and "Traceback" in r.err


def test_tenants_keys_and_their_errors(tmp_path: Path) -> None:
    assert modelyard("tenants", "create", "acme", home=tmp_path).code == 0
    dup = modelyard("tenants", "create", "acme", home=tmp_path)
    assert dup.code == 1 and "exists already" in _one_clean_error_line(dup.err)
    bad = modelyard("tenants", "create", "b", "--storage-policy", "all", home=tmp_path)
    assert bad.code == 2 and "--storage-policy" in _one_clean_error_line(bad.err)

    created = modelyard("keys", "create", "--tenant", "acme", "--json", home=tmp_path)
    assert created.code == 0, created.err
    key = json.loads(created.out)
    assert set(key) == {"id", "key", "tenant", "scopes"} and key["key"].startswith("myk_")
    listed = json.loads(modelyard("keys", "list", "--json", home=tmp_path).out)
    assert [k["id"] for k in listed] == [key["id"]]
    assert key["key"] not in json.dumps(listed)  # the secret is never shown again

    scope = modelyard("keys", "create", "--tenant", "acme", "--scopes", "root", home=tmp_path)
    assert scope.code == 2 and "root" in _one_clean_error_line(scope.err)
    ghost = modelyard("keys", "create", "--tenant", "ghost", home=tmp_path)
    assert ghost.code == 1 and "ghost" in _one_clean_error_line(ghost.err)

    assert modelyard("keys", "revoke", key["id"], home=tmp_path).code == 0
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        stored = store.get_api_key(key["id"])
        assert stored is not None and stored.revoked_at is not None


def test_registry_and_endpoint_errors_name_the_problem(tmp_path: Path) -> None:
    assert modelyard("init", home=tmp_path).code == 0
    missing = modelyard("registry", "show", "support@champion", home=tmp_path)
    assert missing.code == 1 and "support" in _one_clean_error_line(missing.err)
    badref = modelyard("registry", "show", "a@b:c", home=tmp_path)
    assert badref.code == 2 and "NAME@alias" in _one_clean_error_line(badref.err)
    traffic = modelyard("endpoints", "set-traffic", "ep", "1=ninety", home=tmp_path)
    assert traffic.code == 2 and "1=ninety" in _one_clean_error_line(traffic.err)
    no_tenant = modelyard("endpoints", "create", "ep", "--model", "m:1", home=tmp_path)
    assert no_tenant.code == 2 and "--tenant" in _one_clean_error_line(no_tenant.err)


def test_unknown_option_is_a_usage_error(tmp_path: Path) -> None:
    r = modelyard("tenants", "list", "--colour", home=tmp_path)
    assert r.code == 2 and "--colour" in r.err and "Traceback" not in r.err


def test_create_tiny_with_missing_corpus_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "base"
    r = modelyard(
        "base", "create-tiny", "--corpus", str(tmp_path / "nope.txt"), "--out", str(out),
        home=tmp_path,
    )  # fmt: skip
    assert r.code != 0
    assert "nope.txt" in _one_clean_error_line(r.err)
    assert not out.exists()


@pytest.mark.slow
def test_create_tiny_builds_a_loadable_model_and_registers_it(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "\n".join(f"ticket {i}: the printer on floor {i % 5} is jammed again" for i in range(200))
    )
    out = tmp_path / "base"
    r = modelyard(
        "base", "create-tiny", "--corpus", str(corpus), "--out", str(out), "--steps", "20",
        "--name", "tiny", home=tmp_path,
    )  # fmt: skip
    assert r.code == 0, r.err
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(out)
    assert AutoTokenizer.from_pretrained(out)("printer jammed")["input_ids"]
    config = AutoConfig.from_pretrained(out)  # heads of 32: the vllm engine can serve it too
    assert config.hidden_size // config.num_attention_heads == 32
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        assert "model.safetensors" in store.get_base_model("tiny").weight_hashes
    other = tmp_path / "other"  # no registered base's: --overwrite replaces what is there
    other.mkdir()
    (other / "notes.txt").write_text("old\n")
    again = modelyard(
        "base", "create-tiny", "--corpus", str(corpus), "--out", str(other), "--steps", "2",
        "--overwrite", "--json", home=tmp_path,
    )  # fmt: skip
    assert again.code == 0, again.err
    assert json.loads(again.out)["path"] == str(other)
    assert (other / "model.safetensors").is_file()


def test_version_help_at_80_columns_and_a_closed_pipe(tmp_path: Path) -> None:
    import subprocess
    import sys

    from modelyard import __version__

    version = modelyard("--version", home=tmp_path)
    assert version.code == 0 and version.out.strip() == f"modelyard {__version__}"
    helped = modelyard("serve", "--help", home=tmp_path, env={"COLUMNS": "80"})
    assert helped.code == 0
    for option in ("--vllm-gpu-memory-utilization", "--vllm-tensor-parallel-size"):
        assert option in helped.out  # whole, not cut to `--vllm-gpu-memor…`
    assert all(len(line) <= 80 for line in helped.out.splitlines())
    assert modelyard("init", home=tmp_path).code == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelyard", "audit", "log", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**env, "MODELYARD_HOME": str(tmp_path)},
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # `| head` that has read enough
    with proc.stderr:
        err = proc.stderr.read()
    assert proc.wait(timeout=120) in (0, 141) and err == ""


def test_serve_prints_its_banner_only_once_the_port_is_bound(tmp_path: Path) -> None:
    import socket

    assert modelyard("init", home=tmp_path).code == 0
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = modelyard("serve", "--engine", "echo", "--no-controller", "--port", str(port),
                      home=tmp_path, timeout=120)  # fmt: skip
    assert r.code == 2 and f"cannot listen on 127.0.0.1:{port}" in r.err
    assert "serving" not in r.err and "Traceback" not in r.err


def test_serve_and_controller_refuse_to_start_on_alert_rules_they_cannot_evaluate(
    tmp_path: Path,
) -> None:
    """As Prometheus does with a bad rules file: exit 2 at start, naming the file and what
    is wrong, rather than start and log the error at every monitoring tick."""
    assert modelyard("init", home=tmp_path).code == 0
    rules = tmp_path / "alerts.yml"
    rules.write_text(
        "notify:\n  webhook: {url: https://oncall.example.com/hook,"
        " headers: {Authorization: 'Bearer ${ONCALL_TOKEN_NOT_SET}'}}\n"
        "rules:\n  - {name: errors, metric: error_rate, threshold: 0.05}\n"
    )
    for command in (("controller", "--once"), ("serve", "--engine", "echo", "--port", "0")):
        r = modelyard(*command, home=tmp_path, timeout=120)
        assert r.code == 2, r.err
        assert f"the alert rules {rules} cannot be evaluated" in " ".join(r.err.split())
        assert "ONCALL_TOKEN_NOT_SET, which is not set" in r.err
        assert "serving" not in r.err and "Traceback" not in r.err
