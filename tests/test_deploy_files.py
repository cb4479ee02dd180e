"""deploy/k8s and examples/ci keep their contract with the code they deploy and call."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.main import get_command

from modelyard.cli import app
from modelyard.delivery import parse_guard, parse_steps
from modelyard.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
CLI = get_command(app)


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def _resources() -> dict[str, dict[str, Any]]:
    kustomization = _docs("kustomization.yaml")[0]
    out = {}
    for name in kustomization["resources"]:
        for doc in _docs(name):
            out[doc["kind"]] = doc
    return out


def _command(words: list[str]) -> tuple[Any, list[str]]:
    """The (click) command a `modelyard ...` line runs, and the rest of its words."""
    assert words[0] == "modelyard", words
    command: Any = CLI
    rest = words[1:]
    while hasattr(command, "commands") and rest and rest[0] in command.commands:
        command = command.commands[rest[0]]
        rest = rest[1:]
    assert not hasattr(command, "commands"), f"{' '.join(words)} names no command"
    return command, rest


def _check_invocation(words: list[str]) -> None:
    """Every option exists on the command, and what it takes parses."""
    command, rest = _command(words)
    ctx = command.make_context("modelyard", list(rest), resilient_parsing=False)
    assert ctx.params is not None
    for guard in ctx.params.get("guard") or []:
        parse_guard(guard)
    if "steps" in ctx.params and isinstance(ctx.params["steps"], str):
        parse_steps(ctx.params["steps"])


def test_the_deployment_serves_probes_and_scrapes_what_the_server_offers() -> None:
    res = _resources()
    deployment, service = res["Deployment"], res["Service"]
    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]
    assert container["command"] == ["modelyard", "serve"]
    _check_invocation(["modelyard", "serve", *container["args"]])
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    assert f"--port={port}" in container["args"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    notes = pod["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true"
    assert (notes["prometheus.io/port"], notes["prometheus.io/path"]) == (str(port), "/metrics")
    # the pod outlives the drain it is given
    grace = next(a for a in container["args"] if a.startswith("--shutdown-grace-s="))
    assert pod["spec"]["terminationGracePeriodSeconds"] > float(grace.split("=", 1)[1])
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert res["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = res["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


def test_settings_come_from_real_names_and_secrets_from_the_secret() -> None:
    res = _resources()
    known = {f"MODELYARD_{name.upper()}" for name in Settings.model_fields}
    config = res["ConfigMap"]
    assert set(config["data"]) <= known, set(config["data"]) - known
    [container] = res["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
    secret = _docs("secret.example.yaml")[0]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert set(refs) == {"MODELYARD_STORE_URL", "MODELYARD_AUDIT_KEY"} <= known
    for ref in refs.values():
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["stringData"]
    assert "secret.example.yaml" not in _docs("kustomization.yaml")[0]["resources"]


def _github_commands() -> list[list[str]]:
    workflow = yaml.safe_load((ROOT / "examples/ci/github-actions.yml").read_text())
    commands = []
    for step in workflow["jobs"]["deliver"]["steps"]:
        for line in str(step.get("run", "")).splitlines():
            if line.strip().startswith("modelyard "):
                commands.append(shlex.split(line))
    return commands


def _shell_commands() -> list[list[str]]:
    text = (ROOT / "examples/ci/pipeline.sh").read_text().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        if line.startswith("modelyard "):
            line = re.sub(r'"\$(\w+)"', r"\1", line)  # "$VAR" → VAR, a word for the parser
            line = re.sub(r'"\$(\w+)(@\w+)"', r"\1\2", line)
            commands.append(shlex.split(line))
    return commands


@pytest.mark.parametrize("source", [_github_commands, _shell_commands], ids=["github", "shell"])
def test_the_ci_examples_run_validate_finetune_rollout_start_and_wait(source: Any) -> None:
    commands = source()
    steps = [" ".join(c[1:3]) for c in commands]
    assert steps[:4] == ["data validate", "finetune -c", "rollout start", "rollout wait"]
    for words in commands:
        _check_invocation(words)
    start = next(c for c in commands if c[1:3] == ["rollout", "start"])
    assert "--promote-alias" in start and "champion" in start


def test_an_unknown_option_would_be_caught() -> None:
    with pytest.raises(Exception, match="No such option: --stepz"):
        _check_invocation(["modelyard", "rollout", "start", "e", "--to", "m:2", "--stepz", "5"])


@pytest.mark.parametrize("source", [_github_commands, _shell_commands], ids=["github", "shell"])
def test_the_ci_examples_validate_in_the_format_the_config_trains_with(source: Any) -> None:
    validate = next(c for c in source() if c[1:3] == ["data", "validate"])
    fmt = validate[validate.index("--format") + 1]
    assert fmt in ("FORMAT", "$FORMAT")  # read from finetune.yaml's data.format, not alpaca
