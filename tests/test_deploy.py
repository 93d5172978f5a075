"""Deployment artefacts under deploy/, checked offline by real validators.

- Kubernetes manifests: kubernetes-validate, strict, against the schemas it
  bundles for a pinned Kubernetes version, plus the wiring a schema cannot
  see (selectors, probe ports, security context, replicas <= partitions).
- Compose file: check-jsonschema with its bundled compose-spec schema.
- Dockerfile: parsed by `dockerfile` (BuildKit's own parser).
- Grafana dashboard: every PromQL expression parsed by promql-parser and
  checked against the service's metric names.

Needs no database or broker; none of the conftest fixtures is requested.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import dockerfile
import kubernetes_validate
import promql_parser
import pytest
import yaml

from worker.config import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "container" / "Dockerfile"
DOCKERIGNORE = DEPLOY / "container" / "Dockerfile.dockerignore"
HEALTHCHECK = DEPLOY / "container" / "healthcheck.py"
DASHBOARD = DEPLOY / "grafana" / "reservations-dashboard.json"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"

# The oldest Kubernetes minor we support; its schemas ship with
# kubernetes-validate, so nothing is fetched.
K8S_VERSION = "1.31.0"

# Long-running roles and the setting that holds the port of their
# /healthz, /readyz and /metrics.
ROLE_PORT_SETTING = {
    "receiver": "LISTEN_PORT",
    "api": "API_PORT",
    "consumer": "OPS_PORT",
    "relay": "OPS_PORT",
    "scheduler": "OPS_PORT",
}
ROLES = tuple(ROLE_PORT_SETTING)
HTTP_ROLES = ("receiver", "api")
PORT_DEFAULTS = {"LISTEN_PORT": 8080, "API_PORT": 8081, "OPS_PORT": 9090}

# Variables the contract defines that worker.config does not declare yet.
# Settings ignores unknown variables, so a typo would pass silently: every
# other name the deploy files set must be a Settings field.
CONTRACT_ONLY_ENV: frozenset[str] = frozenset()
SETTINGS_ENV = frozenset(name.upper() for name in Settings.model_fields) | CONTRACT_ONLY_ENV
# Settings a pod takes from the downward API instead of a secret.
POD_FIELD_ENV = frozenset({"CONSUMER_INSTANCE_ID"})

COUNTERS = frozenset(
    {
        "fanfare_reservations_webhook_requests_total",
        "fanfare_reservations_webhook_produce_errors_total",
        "fanfare_reservations_quarantined_total",
        "fanfare_reservations_commands_applied_total",
        "fanfare_reservations_batches_applied_total",
        "fanfare_reservations_commands_parked_total",
        "fanfare_reservations_holds_created_total",
        "fanfare_reservations_holds_converted_total",
        "fanfare_reservations_holds_released_total",
        "fanfare_reservations_holds_expired_total",
        "fanfare_reservations_late_conversion_unfilled_total",
        "fanfare_reservations_outbox_published_total",
        "fanfare_reservations_expiries_published_total",
        "fanfare_reservations_retention_rows_deleted_total",
        "fanfare_reservations_units_backfilled_total",
    }
)
HISTOGRAMS = frozenset(
    {
        "fanfare_reservations_webhook_request_duration_seconds",
        "fanfare_reservations_batch_apply_seconds",
        "fanfare_reservations_hold_duration_seconds",
        "fanfare_reservations_backfill_seconds",
    }
)
GAUGES = frozenset(
    {
        "fanfare_reservations_consumer_lag",
        "fanfare_reservations_holds_active",
        "fanfare_reservations_outbox_backlog",
        "fanfare_reservations_reconcile_drift_rows",
    }
)
METRICS = COUNTERS | HISTOGRAMS | GAUGES
HISTOGRAM_SERIES = frozenset(f"{h}_{s}" for h in HISTOGRAMS for s in ("bucket", "sum", "count"))
SERIES = COUNTERS | GAUGES | HISTOGRAM_SERIES
RANGE_FUNCTIONS = frozenset({"rate", "irate", "increase"})
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


# --- helpers ---------------------------------------------------------------------


def _load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    with path.open() as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def _k8s_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _k8s_resources() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in _k8s_files() for doc in _load_yaml_documents(path)]


def _resource_id(item: tuple[Path, dict[str, Any]]) -> str:
    path, doc = item
    return f"{path.name}:{doc['kind']}/{doc['metadata']['name']}"


def _applied() -> list[dict[str, Any]]:
    """Resources the kustomization applies (the example Secret is not one)."""
    return [doc for path, doc in _k8s_resources() if not path.name.endswith(".example.yaml")]


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in _applied() if doc["kind"] == kind]


def _by_component(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in _of_kind(kind)}


def _configmap() -> dict[str, str]:
    (cm,) = _of_kind("ConfigMap")
    data: dict[str, str] = cm["data"]
    return data


def _secret_example() -> dict[str, Any]:
    (secret,) = _load_yaml_documents(K8S / "secret.example.yaml")
    return secret


def _workloads() -> list[dict[str, Any]]:
    return _of_kind("Deployment") + _of_kind("Job") + _of_kind("CronJob")


def _pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    pod: dict[str, Any] = spec["template"]["spec"]
    return pod


def _quantity(value: str | int) -> float:
    """A Kubernetes quantity (the suffixes these manifests use) as a number."""
    text = str(value)
    suffixes = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix in sorted(suffixes, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * suffixes[suffix]
    return float(text)


def _compose() -> dict[str, Any]:
    with COMPOSE.open() as fh:
        data: dict[str, Any] = yaml.safe_load(fh)  # resolves the `<<` merge keys
    return data


def _load_healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_healthcheck", HEALTHCHECK)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_jsonschema(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# --- Kubernetes ------------------------------------------------------------------


@pytest.mark.parametrize("item", _k8s_resources(), ids=_resource_id)
def test_k8s_manifest_is_valid_strict(item: tuple[Path, dict[str, Any]]) -> None:
    _, doc = item
    checked = kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert checked == "1.31"


def test_kubernetes_validate_rejects_unknown_fields() -> None:
    """The validator is live: a misspelt field fails strict validation."""
    deployment = copy.deepcopy(_by_component("Deployment")["consumer"])
    deployment["spec"]["replica"] = deployment["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError, match="replica"):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    (kustomization,) = _load_yaml_documents(K8S / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    expected = sorted(p.name for p in _k8s_files() if not p.name.endswith(".example.yaml"))
    assert sorted(kustomization["resources"]) == expected
    images = {image["name"] for image in kustomization["images"]}
    used = {c["image"] for w in _workloads() for c in _pod_spec(w)["containers"]}
    assert used == images == {"fanfare-reservations"}


def test_one_workload_per_role() -> None:
    deployments = _by_component("Deployment")
    assert sorted(deployments) == sorted(ROLES)
    for role, deployment in deployments.items():
        (container,) = _pod_spec(deployment)["containers"]
        assert container["args"] == [role]
    (job,) = _of_kind("Job")
    (container,) = _pod_spec(job)["containers"]
    assert container["args"] == ["migrate"]
    assert _pod_spec(job)["restartPolicy"] in ("Never", "OnFailure")
    assert job["spec"]["backoffLimit"] >= 1
    (cronjob,) = _of_kind("CronJob")
    (container,) = _pod_spec(cronjob)["containers"]
    assert container["args"] == ["reconcile"]  # report only; --repair stays a human decision
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"


@pytest.mark.parametrize("workload", _workloads(), ids=lambda w: w["metadata"]["name"])
def test_pods_are_locked_down_with_resources(workload: dict[str, Any]) -> None:
    pod = _pod_spec(workload)
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    writable = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
    for container in pod["containers"]:
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        tmp = "/tmp"  # noqa: S108 - the pod's own emptyDir, checked here
        assert mounts.get(tmp) in writable, "read-only root needs a writable /tmp"
        resources = container["resources"]
        for name in ("cpu", "memory"):
            request = _quantity(resources["requests"][name])
            limit = _quantity(resources["limits"][name])
            assert 0 < request <= limit, (name, request, limit)


@pytest.mark.parametrize("role", ROLES)
def test_probes_use_healthz_and_readyz_on_the_roles_port(role: str) -> None:
    deployment = _by_component("Deployment")[role]
    (container,) = _pod_spec(deployment)["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    setting = ROLE_PORT_SETTING[role]
    expected_port = int(_configmap().get(setting, PORT_DEFAULTS[setting]))
    for probe, path in (
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ):
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert ports[get["port"]] == expected_port, probe
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(expected_port)


def test_services_select_the_http_roles() -> None:
    services = _by_component("Service")
    assert sorted(services) == sorted(HTTP_ROLES)
    deployments = _by_component("Deployment")
    for role, service in services.items():
        pod = deployments[role]["spec"]["template"]
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        (container,) = pod["spec"]["containers"]
        names = {p["name"] for p in container["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names


def test_receiver_is_scaled_by_an_hpa() -> None:
    (hpa,) = _of_kind("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    receiver = _by_component("Deployment")["receiver"]
    assert (target["kind"], target["name"]) == ("Deployment", receiver["metadata"]["name"])
    assert "replicas" not in receiver["spec"], "the HPA owns the receiver's replica count"
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_every_deployment_has_a_matching_pdb() -> None:
    pdbs = _by_component("PodDisruptionBudget")
    deployments = _by_component("Deployment")
    assert {"receiver", "consumer"} <= pdbs.keys()
    for role, pdb in pdbs.items():
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert selector == deployments[role]["spec"]["selector"]["matchLabels"]
        assert deployments[role]["spec"]["template"]["metadata"]["labels"].items() >= (
            selector.items()
        )
    assert set(deployments) <= set(pdbs)


def test_consumer_replicas_do_not_exceed_partitions() -> None:
    partitions = int(_configmap()["TOPIC_PARTITIONS"])
    deployments = _by_component("Deployment")
    assert 1 <= deployments["consumer"]["spec"]["replicas"] <= partitions
    for role in ("relay", "scheduler"):  # one active, the rest standby
        assert deployments[role]["spec"]["replicas"] >= 2


def test_k8s_env_is_settings_and_secret_refs_exist() -> None:
    configmap_name = _of_kind("ConfigMap")[0]["metadata"]["name"]
    secret = _secret_example()
    assert set(_configmap()) <= SETTINGS_ENV
    assert set(secret["stringData"]) <= SETTINGS_ENV
    assert _configmap()["LISTEN_HOST"] == _configmap()["API_HOST"] == "0.0.0.0"
    assert _configmap()["OPS_HOST"] == "0.0.0.0"
    for workload in _workloads():
        for container in _pod_spec(workload)["containers"]:
            refs = [e["configMapRef"]["name"] for e in container["envFrom"]]
            assert refs == [configmap_name]
            names = {e["name"] for e in container["env"]}
            assert names <= SETTINGS_ENV
            assert {"DATABASE_URL", "FANFARE_WEBHOOK_SECRET"} <= names
            for entry in container["env"]:
                if "fieldRef" in entry["valueFrom"]:
                    # The downward API, for what is the pod's own.
                    assert entry["name"] in POD_FIELD_ENV, entry
                    assert entry["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
                    continue
                ref = entry["valueFrom"]["secretKeyRef"]
                assert ref["name"] == secret["metadata"]["name"]
                assert ref["key"] in secret["stringData"]


def test_k8s_consumers_are_static_members_named_by_their_pod() -> None:
    """A crashed consumer container restarts in its pod, under its name: the
    instance id must be that name, unique per replica and stable across
    container restarts (README, Consumer failover)."""
    (consumer,) = [w for w in _workloads() if w["metadata"]["name"] == "fanfare-consumer"]
    (container,) = _pod_spec(consumer)["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["CONSUMER_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # Only consumers join the group; nothing else may carry an instance id.
    for workload in _workloads():
        if workload["metadata"]["name"] == "fanfare-consumer":
            continue
        for other in _pod_spec(workload)["containers"]:
            assert "CONSUMER_INSTANCE_ID" not in {e["name"] for e in other.get("env", [])}


# --- Compose ---------------------------------------------------------------------


def test_compose_validates_against_the_compose_spec() -> None:
    result = _check_jsonschema("--builtin-schema", "vendor.compose-spec", str(COMPOSE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_spec_validator_rejects_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text("services:\n  web:\n    image: x\n    restart: sometimes\n    colour: red\n")
    result = _check_jsonschema("--builtin-schema", "vendor.compose-spec", str(broken))
    assert result.returncode == 1, result.stdout + result.stderr


def test_compose_stack_shape() -> None:
    services = _compose()["services"]
    assert services["postgres"]["image"].startswith("postgres:16")
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert set(kafka["environment"]["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not any("zookeeper" in name for name in services)
    for infra in ("postgres", "kafka"):
        assert services[infra]["healthcheck"]["test"]

    migrate = services["migrate"]
    assert migrate["command"] == ["migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"

    for role in ROLES:
        service = services[role]
        assert service["command"] == [role]
        assert service["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"},
            "kafka": {"condition": "service_healthy"},
            "postgres": {"condition": "service_healthy"},
        }
        setting = ROLE_PORT_SETTING[role]
        port = int(service["environment"][setting])
        assert service["healthcheck"]["test"] == [
            "CMD",
            "python",
            "/app/healthcheck.py",
            f"http://127.0.0.1:{port}/readyz",
        ]
        assert service["read_only"] is True
        env = service["environment"]
        assert env["LISTEN_HOST"] == env["API_HOST"] == env["OPS_HOST"] == "0.0.0.0"
    for role in HTTP_ROLES:
        assert services[role]["ports"]
    assert services["consumer"]["deploy"]["replicas"] <= int(
        services["consumer"]["environment"]["TOPIC_PARTITIONS"]
    )


def test_compose_worker_env_is_settings_and_build_paths_exist() -> None:
    services = _compose()["services"]
    for name in ("migrate", *ROLES):
        service = services[name]
        assert set(service["environment"]) <= SETTINGS_ENV, name
        build = service["build"]
        context = (COMPOSE.parent / build["context"]).resolve()
        assert context == ROOT
        assert (context / build["dockerfile"]).resolve() == DOCKERFILE


def test_prometheus_scrapes_every_role_on_its_port() -> None:
    with PROMETHEUS.open() as fh:
        config = yaml.safe_load(fh)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert sorted(jobs) == sorted(ROLES)
    for role, job in jobs.items():
        (sd,) = job["dns_sd_configs"]
        assert sd["names"] == [role]
        assert sd["port"] == PORT_DEFAULTS[ROLE_PORT_SETTING[role]]


# --- Container image -------------------------------------------------------------


def _stages() -> list[list[dockerfile.Command]]:
    stages: list[list[dockerfile.Command]] = [[]]
    for command in dockerfile.parse_file(str(DOCKERFILE)):
        if command.cmd == "FROM":
            stages.append([])
        stages[-1].append(command)
    return stages


def test_dockerfile_is_multi_stage_on_python_slim() -> None:
    preamble, *stages = _stages()
    args = dict(c.value[0].split("=", 1) for c in preamble if c.cmd == "ARG" and "=" in c.value[0])
    assert len(stages) >= 2
    for stage in stages:
        image = stage[0].value[0]
        if image.startswith("${"):
            image = args[image.strip("${}")]
        assert image.startswith("python:3.11-slim"), image
    final = stages[-1]
    assert any(c.cmd == "COPY" and "--from=build" in c.flags for c in final)


def test_dockerfile_runs_non_root_with_a_healthcheck() -> None:
    final = _stages()[-1]
    users = [c.value[0] for c in final if c.cmd == "USER"]
    assert users, "no USER in the final stage"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert user.isdigit(), "numeric uid, so Kubernetes can verify runAsNonRoot"
    (check,) = [c for c in final if c.cmd == "HEALTHCHECK"]
    assert check.value[:3] == ("CMD", "python", "/app/healthcheck.py")
    source = HEALTHCHECK.read_text()
    assert "urllib.request" in source
    assert "/healthz" in source
    entrypoint = [c for c in final if c.cmd == "ENTRYPOINT"][-1]
    assert entrypoint.json
    assert entrypoint.value == ("python", "-m", "worker")


def test_dockerfile_keeps_sql_next_to_the_package_and_context_allows_it() -> None:
    final = _stages()[-1]
    workdirs = [c.value[0] for c in final if c.cmd == "WORKDIR"]
    assert workdirs[-1] == "/app"
    copies = {
        c.value[0].rstrip("/"): c.value[-1].rstrip("/")
        for stage in _stages()
        for c in stage
        if c.cmd == "COPY" and not any(f.startswith("--from") for f in c.flags)
    }
    assert copies["worker"] == "/app/worker"
    assert copies["sql"] == "/app/sql"
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "allow-list: everything else stays out of the context"
    for source in copies:
        assert (ROOT / source).exists(), source
        assert f"!{source}" in patterns or f"!{source}/" in patterns, source


# --- Health check script ---------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {"status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/healthz", handler
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_script_answers_by_status(
    health_server: tuple[str, type[_Handler]],
) -> None:
    url, handler = health_server
    module = _load_healthcheck()
    assert module.main([url], env={}) == 0
    handler.status = 503
    assert module.main([url], env={}) == 1
    assert module.main(["http://127.0.0.1:1/healthz"], env={}) == 1


def test_healthcheck_script_finds_the_roles_port(tmp_path: Path) -> None:
    module = _load_healthcheck()
    for pid, argv in (
        (1, [b"/sbin/docker-init", b"--"]),
        (7, [b"python", b"-m", b"worker", b"api"]),
    ):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cmdline").write_bytes(b"\0".join(argv) + b"\0")
    assert module.running_role(tmp_path) == "api"
    assert module.health_url("api", {}) == "http://127.0.0.1:8081/healthz"
    assert module.health_url("receiver", {"LISTEN_PORT": "9999"}) == (
        "http://127.0.0.1:9999/healthz"
    )
    for role in ("consumer", "relay", "scheduler", None):
        assert module.health_url(role, {}) == "http://127.0.0.1:9090/healthz"
    assert module.health_url("migrate", {}) is None


# --- Grafana dashboard -----------------------------------------------------------


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _panels() -> list[dict[str, Any]]:
    return [p for p in _dashboard()["panels"] if p["type"] != "row"]


def _series_in(expr: str) -> tuple[set[str], list[str]]:
    """Metric names an expression selects, and problems found in it."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    ast = promql_parser.parse(expr)  # raises ValueError on bad PromQL
    names: set[str] = set()
    problems: list[str] = []

    def visit(node: object) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            # A selector by matchers only ({__name__=~"..."}) has no name.
            names.add(node.name or "<no metric name>")
        if isinstance(node, promql_parser.Call):
            inner = node.args[-1] if node.args else None
            if node.func.name in RANGE_FUNCTIONS and isinstance(
                inner, promql_parser.MatrixSelector
            ):
                name = inner.vector_selector.name
                if name in GAUGES:
                    problems.append(f"{node.func.name}() over gauge {name}")
            if node.func.name == "histogram_quantile":
                found: set[str] = set()
                promql_parser.walk(
                    node,
                    lambda n: (
                        found.add(n.name or "")
                        if isinstance(n, promql_parser.VectorSelector)
                        else None
                    ),
                )
                if not found or not all(n.endswith("_bucket") for n in found):
                    problems.append(f"histogram_quantile over {sorted(found)}")
        return True

    promql_parser.walk(ast, visit)
    return names, problems


def test_dashboard_structure() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"]
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0
        assert pos["x"] + pos["w"] <= 24
        assert pos["h"] > 0
        area = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not area & cells, f"panel {panel['title']!r} overlaps another"
        cells |= area


@pytest.mark.parametrize("panel", _panels(), ids=lambda p: p["title"])
def test_dashboard_panel_queries_known_metrics(panel: dict[str, Any]) -> None:
    assert panel["datasource"]["uid"] == "${datasource}"
    assert panel["targets"], "panel without a query"
    for target in panel["targets"]:
        names, problems = _series_in(target["expr"])
        assert names, target["expr"]
        assert names <= SERIES, f"unknown metrics {sorted(names - SERIES)}"
        assert not problems, problems


def test_dashboard_covers_every_metric() -> None:
    used: set[str] = set()
    for panel in _panels():
        for target in panel["targets"]:
            used |= _series_in(target["expr"])[0]
    covered = {name for name in METRICS if name in used or f"{name}_bucket" in used}
    assert covered == METRICS, f"metrics without a panel: {sorted(METRICS - covered)}"


def test_promql_parser_rejects_bad_queries() -> None:
    with pytest.raises(ValueError, match="parenthesis"):
        _series_in("sum(rate(fanfare_reservations_webhook_requests_total[5m])")


def test_dashboard_metrics_are_the_ones_the_service_exports() -> None:
    """The dashboard and worker/metrics.py must not drift apart."""
    from prometheus_client import Counter, Gauge, Histogram

    from worker import metrics

    exported: set[str] = set()
    for obj in vars(metrics).values():
        if isinstance(obj, Counter):
            exported.add(f"{obj._name}_total")
        elif isinstance(obj, Gauge | Histogram):
            exported.add(obj._name)
    assert exported >= METRICS, f"dashboard metrics not exported: {sorted(METRICS - exported)}"
