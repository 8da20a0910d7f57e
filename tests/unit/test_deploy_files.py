"""The deploy files keep the promises production depends on.

No container engine runs these tests (``deploy/smoke.sh`` does, outside CI): they read the
Dockerfile, the compose files, the Kubernetes manifests and redis.conf, and pin what must hold
there (non-root, probes, AOF always, noeviction, grace periods, secrets only by reference,
settings that exist, metrics off the public port, one image name everywhere). The alert rules
are checked and unit-tested by ``promtool`` where it is installed (CI installs it).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import AliasChoices

from loops_webhooks.redis_url import REDIS_URL_FORMS, sentinel_address
from loops_webhooks.settings import RECEIVER_METRICS_PORT, WORKER_METRICS_PORT, Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
COMPOSE_HANDLERS = DEPLOY / "compose.handlers.yaml"
KUSTOMIZATION = K8S / "kustomization.yaml"
SMOKE = DEPLOY / "smoke.sh"
SMOKE_SHOP_DOCKERFILE = DEPLOY / "smoke-shop" / "Dockerfile"
README = DEPLOY.parent / "README.md"
LOCAL_IMAGE = "loops-webhooks:local"
REDIS_CONF = DEPLOY / "redis.conf"
ENV_EXAMPLE = DEPLOY / ".env.example"
EXAMPLE_SECRETS = K8S / "secrets" / "secrets.example.yaml"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts.test.yaml"
PROMETHEUS_RULE = K8S / "prometheus-rule.yaml"
GRAFANA_BOARD = DEPLOY / "grafana" / "loops-webhooks.json"

RECEIVER, WORKER, REDIS = "loops-webhooks-receiver", "loops-webhooks-worker", "loops-webhooks-redis"
DASHBOARD = "loops-webhooks-dashboard"
SECRET_VARIABLES = {
    "LOOPS_WEBHOOK_SECRET",
    "LOOPS_REDIS_SENTINEL_PASSWORD",
    "REDIS_URL",
    "REDIS_PASSWORD",
    "REDISCLI_AUTH",
    "LOOPS_DASHBOARD_TOKEN",
}

BINARY_UNITS = {"k": 2**10, "m": 2**20, "g": 2**30}


# --- reading the files -------------------------------------------------------------------


def yaml_files() -> list[Path]:
    return sorted(DEPLOY.rglob("*.yaml"))


@functools.cache
def yaml_documents(path: Path) -> list[Any]:
    """The documents of one YAML file, parsed once per run (tests only read them)."""
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def k8s_manifests() -> list[Path]:
    """The manifests: every YAML file under deploy/k8s but the kustomization."""
    return [path for path in sorted(K8S.rglob("*.yaml")) if path != KUSTOMIZATION]


def k8s_objects() -> list[dict[str, Any]]:
    return [document for path in k8s_manifests() for document in yaml_documents(path)]


def kustomization() -> dict[str, Any]:
    (document,) = yaml_documents(KUSTOMIZATION)
    assert isinstance(document, dict)
    return document


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def workloads() -> list[dict[str, Any]]:
    return [o for o in k8s_objects() if o["kind"] in {"Deployment", "StatefulSet"}]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def containers() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every (workload name, container) in the manifests."""
    for workload in workloads():
        for container in pod_spec(workload)["containers"]:
            yield workload["metadata"]["name"], container


def app_containers() -> Iterator[tuple[str, dict[str, Any]]]:
    """The containers that run loops-webhooks (Redis's are not)."""
    for workload in workloads():
        if workload["kind"] == "Deployment":
            for container in pod_spec(workload)["containers"]:
                yield workload["metadata"]["name"], container


def the_container(workload_kind: str, name: str) -> dict[str, Any]:
    (container,) = pod_spec(k8s_object(workload_kind, name))["containers"]
    return container


def literal_env(container: dict[str, Any]) -> dict[str, str]:
    return {entry["name"]: entry["value"] for entry in container["env"] if "value" in entry}


def compose() -> dict[str, Any]:
    (document,) = yaml_documents(COMPOSE)
    assert isinstance(document, dict)
    return document


def compose_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose()["services"]
    return services


def compose_app_services() -> dict[str, dict[str, Any]]:
    """The services that run loops-webhooks' image: the receiver, the workers, the dashboard."""
    return {
        name: service
        for name, service in compose_services().items()
        if service["image"].startswith("${WEBHOOKS_IMAGE")
    }


def with_defaults(text: str) -> str:
    """``text`` with each ``${NAME:-default}`` replaced by its default, as compose does for an
    unset variable."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", text)


def compose_workers() -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose_app_services().items()
        if service["command"][0] == "worker"
    }


def compose_environment(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    assert isinstance(environment, dict), "write compose environments as mappings"
    return {name: str(value) for name, value in environment.items()}


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), " ".join(arguments.split())))
        pending = ""
    return instructions


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, arguments in dockerfile_instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, arguments))
    return stages


def final_stage() -> list[tuple[str, str]]:
    return dockerfile_stages()[-1]


def arguments_of(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [arguments for found, arguments in stage if found == keyword]


def redis_directives(text: str) -> dict[str, str]:
    """Each directive of a redis.conf with its arguments (the last one wins, as in Redis)."""
    directives = {}
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            name, _, arguments = stripped.partition(" ")
            directives[name.lower()] = arguments.strip()
    return directives


def size_in_bytes(quantity: str) -> int:
    """A memory size as compose (1g), Kubernetes (1Gi) or redis.conf (768mb) writes it."""
    match = re.fullmatch(r"(\d+)([kmg])(?:i|b)?", quantity.lower())
    assert match, f"unexpected size {quantity!r}"
    return int(match[1]) * BINARY_UNITS[match[2]]


def duration_in_seconds(text: str) -> float:
    """A compose duration such as 60s or 1m30s."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|m|s)", text)
    assert parts and "".join(a + u for a, u in parts) == text, f"unexpected duration {text!r}"
    return sum(float(amount) * {"h": 3600, "m": 60, "s": 1}[unit] for amount, unit in parts)


def shutdown_grace_seconds(environment: dict[str, str]) -> float:
    default = Settings.model_fields["shutdown_grace_seconds"].default
    return float(environment.get("LOOPS_SHUTDOWN_GRACE_SECONDS", default))


def healthcheck_url(command: list[str]) -> str:
    """The URL a ``python -c "...urlopen('URL')..."`` healthcheck asks for."""
    (url,) = re.findall(r"urlopen\('([^']+)'", " ".join(command))
    return url


def env_file_variables(path: Path) -> dict[str, str]:
    variables = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            variables[name.strip()] = value.strip()
    return variables


def setting_variables() -> set[str]:
    """The environment variables that Settings reads."""
    prefix = Settings.model_config.get("env_prefix", "")
    names: set[str] = set()
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(choice for choice in alias.choices if isinstance(choice, str))
        else:
            names.add(f"{prefix}{field_name}".upper())
    return names


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("LOOPS_") or name == "REDIS_URL":
            monkeypatch.delenv(name)
    return monkeypatch


# --- every file --------------------------------------------------------------------------


@pytest.mark.parametrize("path", yaml_files(), ids=lambda path: str(path.relative_to(DEPLOY)))
def test_every_yaml_file_in_deploy_parses(path: Path):
    assert yaml_documents(path)


def test_every_loops_variable_named_in_deploy_is_a_setting():
    named = {
        name: path.relative_to(DEPLOY)
        for path in sorted(DEPLOY.rglob("*"))
        if path.is_file()
        for name in re.findall(r"\bLOOPS_[A-Z0-9_]+\b", path.read_text())
    }
    unknown = {name: str(path) for name, path in named.items() if name not in setting_variables()}
    assert unknown == {}


def test_app_containers_are_given_only_settings():
    given = {
        (f"compose {service_name}", name)
        for service_name, service in compose_app_services().items()
        for name in compose_environment(service)
    } | {
        (f"k8s {workload}", entry["name"])
        for workload, container in app_containers()
        for entry in container["env"]
    }
    assert {(where, name) for where, name in given if name not in setting_variables()} == set()


def test_app_container_environments_are_valid_settings(clean_environment):
    environments = [compose_environment(s) for s in compose_app_services().values()]
    environments += [literal_env(container) for _, container in app_containers()]
    for environment in environments:
        with clean_environment.context() as patch:
            for name, value in environment.items():
                patch.setenv(name, value)
            Settings()


# --- the image ---------------------------------------------------------------------------


def test_the_image_is_built_in_a_separate_stage_from_a_slim_python_by_default():
    bases = [stage[0][1].split()[0] for stage in dockerfile_stages()]
    arguments = arguments_of(dockerfile_instructions(DOCKERFILE.read_text()), "ARG")
    assert len(bases) >= 2
    assert bases[-1] == "${BASE_IMAGE}"
    assert "BASE_IMAGE=python:3.11-slim" in arguments


def test_the_image_serves_metrics_on_every_interface_of_the_container():
    environment = " ".join(arguments_of(final_stage(), "ENV")).split()
    assert "LOOPS_METRICS_HOST=0.0.0.0" in environment


def test_the_final_stage_copies_only_the_virtualenv_from_the_build_stage():
    assert arguments_of(final_stage(), "COPY") == ["--from=build /opt/venv /opt/venv"]
    assert arguments_of(final_stage(), "ADD") == []


def test_the_final_stage_installs_nothing():
    installers = ("apt-get", "apk", "pip", "gcc", "build-essential", "make")
    commands = arguments_of(final_stage(), "RUN")
    assert [c for c in commands if any(tool in c.split() for tool in installers)] == []


def test_the_image_runs_as_a_numeric_non_root_user():
    *_, user = arguments_of(final_stage(), "USER")
    uid = user.split(":")[0]
    assert uid.isdigit()
    assert int(uid) != 0


def test_the_image_checks_the_receivers_healthz():
    (healthcheck,) = arguments_of(final_stage(), "HEALTHCHECK")
    command = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert command[0] == "python"
    assert healthcheck_url(command) == "http://127.0.0.1:8080/healthz"


def test_one_image_runs_the_receiver_unless_the_command_says_worker():
    (entrypoint,) = arguments_of(final_stage(), "ENTRYPOINT")
    (command,) = arguments_of(final_stage(), "CMD")
    assert json.loads(entrypoint) == ["loops-webhooks"]
    assert json.loads(command) == ["serve", "--host", "0.0.0.0", "--port", "8080"]


def test_the_image_logs_json():
    environment = " ".join(arguments_of(final_stage(), "ENV"))
    assert "LOOPS_LOG_FORMAT=json" in environment.split()


def test_the_build_context_excludes_everything_it_does_not_name():
    ignore = DEPLOY / f"{DOCKERFILE.name}.dockerignore"
    patterns = [line for line in ignore.read_text().splitlines() if line and line[0] != "#"]
    assert patterns[0] == "*"


def test_every_source_the_build_copies_is_in_the_build_context():
    ignore = DEPLOY / f"{DOCKERFILE.name}.dockerignore"
    included = {line[1:].rstrip("/") for line in ignore.read_text().splitlines() if line[:1] == "!"}
    build_stage = dockerfile_stages()[0]
    sources = {
        source.rstrip("/")
        for arguments in arguments_of(build_stage, "COPY")
        for source in arguments.split()[:-1]
        if not source.startswith("--")
    }
    assert sources <= included


# --- redis.conf --------------------------------------------------------------------------


def test_redis_fsyncs_the_append_only_file_before_acknowledging_a_write():
    directives = redis_directives(REDIS_CONF.read_text())
    assert directives["appendonly"] == "yes"
    assert directives["appendfsync"] == "always"
    assert directives["no-appendfsync-on-rewrite"] == "no"


def test_redis_never_evicts():
    assert redis_directives(REDIS_CONF.read_text())["maxmemory-policy"] == "noeviction"


def test_redis_without_its_password_refuses_remote_clients():
    directives = redis_directives(REDIS_CONF.read_text())
    assert directives["protected-mode"] == "yes"
    assert "requirepass" not in directives


def test_every_redis_setting_is_explained_by_a_comment():
    paragraphs = REDIS_CONF.read_text().split("\n\n")
    unexplained = [
        paragraph
        for paragraph in paragraphs
        if redis_directives(paragraph) and not paragraph.lstrip().startswith("#")
    ]
    assert unexplained == []


# --- compose -----------------------------------------------------------------------------


def test_compose_redis_runs_deploy_redis_conf_mounted_read_only():
    redis = compose_services()["redis"]
    mounts = [volume.split(":") for volume in redis["volumes"]]
    (config_path,) = [target for source, target, *_ in mounts if source == "./redis.conf"]
    assert ["./redis.conf", config_path, "ro"] in mounts
    assert redis["command"][:2] == ["redis-server", config_path]


def test_compose_redis_keeps_its_data_in_a_named_volume():
    redis = compose_services()["redis"]
    data_dir = redis_directives(REDIS_CONF.read_text())["dir"]
    sources = [v.split(":")[0] for v in redis["volumes"] if v.split(":")[1] == data_dir]
    assert sources
    assert sources[0] in compose()["volumes"]


def test_compose_redis_memory_limit_leaves_room_above_maxmemory():
    limit = compose_services()["redis"]["deploy"]["resources"]["limits"]["memory"]
    maxmemory = redis_directives(REDIS_CONF.read_text())["maxmemory"]
    assert size_in_bytes(maxmemory) <= 0.75 * size_in_bytes(limit)


def test_compose_runs_two_workers():
    replicas = [s.get("deploy", {}).get("replicas", 1) for s in compose_workers().values()]
    assert sum(replicas) == 2


def test_every_compose_service_has_a_healthcheck():
    unchecked = [name for name, s in compose_services().items() if not s.get("healthcheck")]
    assert unchecked == []


def test_every_compose_service_restarts_unless_stopped():
    policies = {name: service.get("restart") for name, service in compose_services().items()}
    assert set(policies.values()) == {"unless-stopped"}


def test_compose_checks_workers_health_on_their_metrics_port():
    for worker in compose_workers().values():
        port = compose_environment(worker)["LOOPS_METRICS_PORT"]
        url = healthcheck_url(worker["healthcheck"]["test"])
        assert url == f"http://127.0.0.1:{port}/healthz"


def test_compose_gives_workers_longer_to_stop_than_their_shutdown_grace():
    for worker in compose_workers().values():
        stop_grace = duration_in_seconds(worker["stop_grace_period"])
        assert stop_grace > shutdown_grace_seconds(compose_environment(worker))


def test_compose_starts_the_service_once_redis_is_healthy():
    for service in compose_app_services().values():
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_services_use_redis_not_the_embedded_development_redis():
    for service in compose_app_services().values():
        assert urlsplit(compose_environment(service)["REDIS_URL"]).hostname == "redis"


def test_every_compose_service_reads_the_env_file():
    assert {name: s.get("env_file") for name, s in compose_services().items()} == {
        name: ".env" for name in compose_services()
    }


def test_compose_writes_no_secret_and_no_handlers_into_the_file():
    environments = [compose_environment(service) for service in compose_services().values()]
    written = {"LOOPS_WEBHOOK_SECRET", "LOOPS_DASHBOARD_TOKEN", "LOOPS_HANDLERS"}
    assert [env for env in environments if written & env.keys()] == []


def test_compose_publishes_the_receiver_on_loopback_only_by_default():
    (port,) = compose_services()["receiver"]["ports"]
    assert with_defaults(port) == "127.0.0.1:8080:8080"
    published = [name for name, s in compose_services().items() if s.get("ports")]
    assert sorted(published) == ["dashboard", "receiver"]


def test_compose_publishes_the_dashboard_on_loopback_only_on_its_own_port():
    dashboard = compose_services()["dashboard"]
    (port,) = dashboard["ports"]
    published, container_port = port.rsplit(":", 1)
    assert published == "127.0.0.1:${DASHBOARD_PORT:-8081}"
    command = dashboard["command"]
    assert command[0] == "dashboard"
    assert (option_value(command, "--host"), option_value(command, "--port")) == (
        "0.0.0.0", container_port
    )  # fmt: skip
    (receiver_port,) = compose_services()["receiver"]["ports"]
    assert with_defaults(port).split(":")[1] != with_defaults(receiver_port).split(":")[1]


def test_compose_checks_the_dashboards_health_on_its_login_page():
    dashboard = compose_services()["dashboard"]
    port = option_value(dashboard["command"], "--port")
    assert healthcheck_url(dashboard["healthcheck"]["test"]) == f"http://127.0.0.1:{port}/login"


def test_compose_runs_the_local_image_unless_the_env_file_names_another():
    images = {with_defaults(s["image"]) for s in compose_app_services().values()}
    assert images == {LOCAL_IMAGE}
    assert set(compose_app_services()) == {"receiver", "worker", "dashboard"}


def test_compose_redis_image_can_be_replaced():
    assert compose_services()["redis"]["image"] == "${REDIS_IMAGE:-redis:7}"


def test_compose_handlers_override_runs_a_named_image_built_from_the_shops_directory():
    (document,) = yaml_documents(COMPOSE_HANDLERS)
    for name in compose_app_services():
        service = document["services"][name]
        assert service["image"].startswith("${WEBHOOKS_IMAGE:?")
        assert service["build"]["context"].startswith("${HANDLERS_BUILD_CONTEXT:?")
    assert set(document["services"]) == set(compose_app_services())


def test_compose_takes_the_redis_password_from_the_env_file():
    redis = compose_services()["redis"]
    passwords = [redis["command"][redis["command"].index("--requirepass") + 1]]
    passwords.append(compose_environment(redis)["REDISCLI_AUTH"])
    passwords += [
        re.fullmatch(r"redis://:(.*)@redis:6379/\d+", compose_environment(s)["REDIS_URL"])[1]
        for s in compose_app_services().values()
    ]
    assert [p for p in passwords if not p.startswith("${REDIS_PASSWORD")] == []


def test_env_example_names_every_variable_the_compose_files_substitute():
    text = COMPOSE.read_text() + COMPOSE_HANDLERS.read_text()
    substituted = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    named = set(re.findall(r"^#?([A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    assert substituted | {"LOOPS_WEBHOOK_SECRET", "LOOPS_HANDLERS"} <= named


def test_env_example_sets_only_the_three_secrets_and_leaves_them_empty():
    assert env_file_variables(ENV_EXAMPLE) == {
        "LOOPS_WEBHOOK_SECRET": "", "REDIS_PASSWORD": "", "LOOPS_DASHBOARD_TOKEN": ""
    }  # fmt: skip


def test_a_filled_in_env_file_is_ignored_by_git():
    assert ".env" in (DEPLOY / ".gitignore").read_text().splitlines()


# --- Kubernetes --------------------------------------------------------------------------


def test_k8s_manifests_leave_the_namespace_to_kubectl():
    assert [o["metadata"]["name"] for o in k8s_objects() if "namespace" in o["metadata"]] == []


def test_receiver_is_ready_on_readyz_and_alive_on_healthz():
    receiver = the_container("Deployment", RECEIVER)
    assert receiver["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert receiver["livenessProbe"]["httpGet"]["path"] == "/healthz"
    ports = {port["name"]: port["containerPort"] for port in receiver["ports"]}
    assert ports[receiver["readinessProbe"]["httpGet"]["port"]] == 8080
    assert ports[receiver["livenessProbe"]["httpGet"]["port"]] == 8080


def test_worker_is_ready_on_healthz_at_its_metrics_port_bound_for_the_pod_ip():
    worker = the_container("Deployment", WORKER)
    ports = {port["name"]: port["containerPort"] for port in worker["ports"]}
    probe = worker["readinessProbe"]["httpGet"]
    assert "livenessProbe" not in worker  # a full or down Redis must not restart workers
    assert probe["path"] == "/healthz"
    assert ports[probe["port"]] == int(literal_env(worker)["LOOPS_METRICS_PORT"])
    assert literal_env(worker)["LOOPS_METRICS_HOST"] == "0.0.0.0"


def test_worker_termination_grace_exceeds_its_shutdown_grace():
    worker = k8s_object("Deployment", WORKER)
    grace = pod_spec(worker)["terminationGracePeriodSeconds"]
    assert grace > shutdown_grace_seconds(literal_env(the_container("Deployment", WORKER)))


def test_every_deployed_process_serves_metrics_on_its_roles_default_port():
    expected = {"serve": RECEIVER_METRICS_PORT, "worker": WORKER_METRICS_PORT}
    for service in compose_app_services().values():
        if service["command"][0] in expected:  # the dashboard serves no metrics
            port = compose_environment(service)["LOOPS_METRICS_PORT"]
            assert int(port) == expected[service["command"][0]]
    for name, port in ((RECEIVER, RECEIVER_METRICS_PORT), (WORKER, WORKER_METRICS_PORT)):
        assert int(literal_env(the_container("Deployment", name))["LOOPS_METRICS_PORT"]) == port
    exposed = {
        int(port) for ports in arguments_of(final_stage(), "EXPOSE") for port in ports.split()
    }
    assert {RECEIVER_METRICS_PORT, WORKER_METRICS_PORT} <= exposed


def test_pods_are_scraped_by_prometheus_on_their_metrics_ports():
    for name in (RECEIVER, WORKER):
        container = the_container("Deployment", name)
        port = literal_env(container)["LOOPS_METRICS_PORT"]
        ports = {entry["name"]: str(entry["containerPort"]) for entry in container["ports"]}
        annotations = k8s_object("Deployment", name)["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == port == ports["metrics"]
        assert annotations["prometheus.io/path"] == "/metrics"


def test_receiver_service_exposes_the_webhook_port_only():
    (port,) = k8s_object("Service", RECEIVER)["spec"]["ports"]
    assert port["targetPort"] == "http"


def test_secrets_reach_containers_only_through_secret_key_refs():
    inline = [
        (workload, entry["name"])
        for workload, container in containers()
        for entry in container.get("env", [])
        if entry["name"] in SECRET_VARIABLES and "secretKeyRef" not in entry.get("valueFrom", {})
    ]
    assert inline == []


def test_every_secret_key_ref_names_a_key_of_the_example_secrets():
    example_keys = {
        (secret["metadata"]["name"], key)
        for secret in yaml_documents(EXAMPLE_SECRETS)
        for key in secret["stringData"]
    }
    referenced = {
        (entry["valueFrom"]["secretKeyRef"]["name"], entry["valueFrom"]["secretKeyRef"]["key"])
        for _, container in containers()
        for entry in container.get("env", [])
        if "secretKeyRef" in entry.get("valueFrom", {})
    }
    assert referenced <= example_keys


def test_example_secrets_applied_unedited_start_nothing():
    values = {
        (secret["metadata"]["name"], key): value
        for secret in yaml_documents(EXAMPLE_SECRETS)
        for key, value in secret["stringData"].items()
    }
    assert values[("loops-webhooks-signing", "webhook-secret")] == ""
    assert values[("loops-webhooks-redis", "password")] == ""
    assert values[(DASHBOARD, "token")] == ""


def test_kubectl_apply_k_applies_no_secret_and_no_redis():
    applied = [document for name in kustomization()["resources"] for document in
               yaml_documents(K8S / name)]  # fmt: skip
    assert [o["metadata"]["name"] for o in applied if o["kind"] == "Secret"] == []
    assert [o["metadata"]["name"] for o in applied if o["metadata"]["name"] == REDIS] == []


def test_kustomization_resources_are_the_top_level_manifests():
    resources = kustomization()["resources"]
    assert all((K8S / name).is_file() for name in resources)
    assert sorted(resources) == sorted(path.name for path in K8S.glob("*.yaml")
                                       if path != KUSTOMIZATION)  # fmt: skip


def test_kustomization_sets_the_image_of_every_app_container():
    (image,) = kustomization()["images"]
    assert {container["image"] for _, container in app_containers()} == {image["name"]}
    assert image["newName"] and image["newTag"]


def test_kustomization_sets_the_handlers_once_for_receivers_and_workers():
    (generator,) = kustomization()["configMapGenerator"]
    literals = dict(literal.split("=", 1) for literal in generator["literals"])
    assert literals["LOOPS_HANDLERS"] == Settings.model_fields["handlers"].default
    for _, container in app_containers():
        assert {"configMapRef": {"name": generator["name"]}} in container["envFrom"]
        assert "LOOPS_HANDLERS" not in {entry["name"] for entry in container["env"]}


def test_ingress_routes_only_the_webhook_path_to_the_receivers():
    ingress = k8s_object("Ingress", RECEIVER)
    paths = [path for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]]
    assert [(p["path"], p["pathType"]) for p in paths] == [
        (Settings.model_fields["webhook_path"].default, "Exact")
    ]
    (path,) = paths
    assert path["backend"]["service"] == {"name": RECEIVER, "port": {"name": "http"}}
    assert ingress["spec"]["tls"]


def test_redis_network_policy_admits_only_receiver_worker_and_dashboard_pods():
    policy = k8s_object("NetworkPolicy", REDIS)["spec"]
    redis_labels = k8s_object("StatefulSet", REDIS)["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= redis_labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    ((source,),) = [rule["from"] for rule in policy["ingress"]]
    selector = source["podSelector"]

    def admitted(labels: dict[str, str]) -> bool:
        if not selector["matchLabels"].items() <= labels.items():
            return False
        return all(
            labels.get(expression["key"]) in expression["values"]
            for expression in selector.get("matchExpressions", [])
        )

    admitted_workloads = {
        workload["metadata"]["name"]
        for workload in workloads()
        if admitted(workload["spec"]["template"]["metadata"]["labels"])
    }
    assert admitted_workloads == {RECEIVER, WORKER, DASHBOARD}


def test_dashboard_is_ready_and_alive_on_its_login_page_at_the_port_it_serves():
    dashboard = the_container("Deployment", DASHBOARD)
    ports = {port["name"]: port["containerPort"] for port in dashboard["ports"]}
    assert dashboard["args"][0] == "dashboard"
    assert option_value(dashboard["args"], "--host") == "0.0.0.0"
    for probe in (dashboard["readinessProbe"], dashboard["livenessProbe"]):
        assert probe["httpGet"]["path"] == "/login"
        assert str(ports[probe["httpGet"]["port"]]) == option_value(dashboard["args"], "--port")


def test_dashboard_takes_its_token_from_a_secret():
    dashboard = the_container("Deployment", DASHBOARD)
    (token,) = [entry for entry in dashboard["env"] if entry["name"] == "LOOPS_DASHBOARD_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"] == {"name": DASHBOARD, "key": "token"}


def test_dashboard_service_routes_to_the_dashboard_pods_and_no_ingress_routes_to_it():
    service = k8s_object("Service", DASHBOARD)["spec"]
    labels = k8s_object("Deployment", DASHBOARD)["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    assert [port["targetPort"] for port in service["ports"]] == ["http"]
    backends = [
        path["backend"]["service"]["name"]
        for ingress in k8s_objects()
        if ingress["kind"] == "Ingress"
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    ]
    assert DASHBOARD not in backends
    assert service.get("type", "ClusterIP") == "ClusterIP"


def test_k8s_readme_says_the_hpa_needs_metrics_server():
    assert "metrics-server" in (K8S / "README.md").read_text()


def test_receiver_pdb_selects_the_receiver_pods_only():
    selector = k8s_object("PodDisruptionBudget", RECEIVER)["spec"]["selector"]["matchLabels"]
    for workload in workloads():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        selected = selector.items() <= labels.items()
        assert selected == (workload["metadata"]["name"] == RECEIVER)


def test_receiver_service_routes_to_the_receiver_pods():
    selector = k8s_object("Service", RECEIVER)["spec"]["selector"]
    labels = k8s_object("Deployment", RECEIVER)["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()


def test_receiver_hpa_scales_the_receiver_on_cpu():
    hpa = k8s_object("HorizontalPodAutoscaler", RECEIVER)
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", RECEIVER)
    assert [metric["resource"]["name"] for metric in hpa["spec"]["metrics"]] == ["cpu"]
    assert hpa["spec"]["minReplicas"] >= 2


def test_receiver_deployment_leaves_its_replica_count_to_the_hpa():
    assert "replicas" not in k8s_object("Deployment", RECEIVER)["spec"]


def test_every_pod_runs_as_non_root():
    for workload in workloads():
        security = pod_spec(workload)["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security.get("runAsUser", 1) != 0


def test_every_container_has_a_read_only_root_filesystem():
    writable = [w for w, c in containers() if not c["securityContext"]["readOnlyRootFilesystem"]]
    assert writable == []


def test_every_container_declares_resource_requests_and_a_memory_limit():
    for _, container in containers():
        assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
        assert "memory" in container["resources"]["limits"]


def test_k8s_redis_config_is_deploy_redis_conf():
    config_maps = [o for o in k8s_objects() if o["kind"] == "ConfigMap"]
    (config_map,) = [c for c in config_maps if "redis.conf" in c["data"]]
    assert config_map["data"]["redis.conf"] == REDIS_CONF.read_text()


def test_redis_statefulset_runs_redis_with_the_mounted_config():
    redis = k8s_object("StatefulSet", REDIS)
    container = the_container("StatefulSet", REDIS)
    volumes = {volume["name"]: volume for volume in pod_spec(redis)["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if "configMap" in volumes.get(m["name"], {})]
    config_map = k8s_object("ConfigMap", volumes[mount["name"]]["configMap"]["name"])
    assert "redis.conf" in config_map["data"]
    assert mount["readOnly"] is True
    assert container["args"][:2] == ["redis-server", f"{mount['mountPath']}/redis.conf"]


def test_redis_statefulset_keeps_its_data_on_a_persistent_claim():
    redis = k8s_object("StatefulSet", REDIS)
    claims = {claim["metadata"]["name"] for claim in redis["spec"]["volumeClaimTemplates"]}
    container = the_container("StatefulSet", REDIS)
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    assert mounts[redis_directives(REDIS_CONF.read_text())["dir"]] in claims


def test_redis_statefulset_runs_a_single_primary():
    assert k8s_object("StatefulSet", REDIS)["spec"]["replicas"] == 1


def test_redis_statefulset_memory_limit_leaves_room_above_maxmemory():
    limit = the_container("StatefulSet", REDIS)["resources"]["limits"]["memory"]
    maxmemory = redis_directives(REDIS_CONF.read_text())["maxmemory"]
    assert size_in_bytes(maxmemory) <= 0.75 * size_in_bytes(limit)


# --- the smoke test, the shop's image and the README ----------------------------------


def test_smoke_sh_is_executable_and_parses():
    assert os.access(SMOKE, os.X_OK)
    assert subprocess.run(["bash", "-n", str(SMOKE)], capture_output=True).returncode == 0


def test_smoke_sh_builds_and_runs_the_image_compose_runs():
    assert f"IMAGE={LOCAL_IMAGE}\n" in SMOKE.read_text()


def test_smoke_sh_checks_the_dashboards_login_with_a_token_it_accepts():
    text = SMOKE.read_text()
    (variable,) = re.findall(r"^LOOPS_DASHBOARD_TOKEN=\$\{(\w+)\}$", text, re.MULTILINE)
    (random_bytes,) = re.findall(rf"^{variable}=\$\(head -c (\d+) /dev/urandom \| od ", text,
                                 re.MULTILINE)  # fmt: skip
    assert 2 * int(random_bytes) >= 32  # hex: two characters a byte
    assert 'status_of "http://127.0.0.1:${SMOKE_DASHBOARD_PORT}/login")" = 200' in text
    assert "eventually dashboard_answers_login" in text
    assert "DASHBOARD_PORT=${SMOKE_DASHBOARD_PORT}" in text


def test_the_readmes_derived_image_is_built_from_the_image_compose_runs():
    operations = README.read_text().split("## Operations", 1)[1]
    (dockerfile,) = re.findall(r"```dockerfile\n(.*?)```", operations, re.DOTALL)
    assert dockerfile_instructions(dockerfile)[0] == ("FROM", LOCAL_IMAGE)
    assert f"docker build -f deploy/Dockerfile -t {LOCAL_IMAGE} ." in operations


def test_the_smoke_shop_is_built_as_the_readme_tells_a_shop():
    operations = README.read_text().split("## Operations", 1)[1]
    (dockerfile,) = re.findall(r"```dockerfile\n(.*?)```", operations, re.DOTALL)
    told = [i for i in dockerfile_instructions(dockerfile) if i[0] != "ENV"]
    built = dockerfile_instructions(SMOKE_SHOP_DOCKERFILE.read_text())
    assert [i for i in built if i[0] != "ENV"] == told


def test_every_deploy_file_the_readme_names_exists():
    named = set(re.findall(r"`(deploy/[^`*]+?)`", README.read_text())) - {"deploy/.env"}
    assert ENV_EXAMPLE.relative_to(DEPLOY.parent).as_posix() in named
    assert [name for name in sorted(named) if not (DEPLOY.parent / name).exists()] == []


# --- the deploy READMEs say what the code and the manifests do ----------------------------

DEPLOY_READMES = sorted(DEPLOY.rglob("README.md"))
K8S_README = K8S / "README.md"
PATH_SUFFIXES = (".md", ".yaml", ".conf", ".sh", ".py", ".toml", ".example", "Dockerfile")


def readme_sentences() -> Iterator[tuple[str, str]]:
    """Every sentence (or table row) of every deploy README, with its file, on one line."""
    for path in DEPLOY_READMES:
        text = " ".join(path.read_text().split())
        for sentence in re.split(r"(?<=[.:;|])\s+(?=[A-Z`|*-])", text):
            yield str(path.relative_to(DEPLOY)), sentence


def readme_prose(path: Path) -> str:
    """A README without its code blocks: what it says rather than what it runs."""
    return re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)


def test_no_deploy_readme_says_sentinel_urls_are_unsupported():
    unsupported = re.compile(r"not supported|unsupported|not yet|cannot|no sentinel", re.I)
    wrong = [
        (where, sentence)
        for where, sentence in readme_sentences()
        if "sentinel" in sentence.lower() and unsupported.search(sentence)
    ]
    assert wrong == []


def test_the_k8s_readme_names_every_redis_url_form_the_code_accepts():
    schemes = set(re.findall(r"([a-z+]+)://", REDIS_URL_FORMS))
    assert {"redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel"} <= schemes
    named = set(re.findall(r"`([a-z+]+)://", K8S_README.read_text()))
    assert schemes - named == set()


def test_no_deploy_readme_says_a_worker_exits_on_a_redis_failure():
    wrong = [
        (where, clause)
        for where, sentence in readme_sentences()
        for clause in re.split(r"[,;:()]", sentence)
        if re.search(r"\bworkers?\b", clause)
        and re.search(r"\bexit", clause)
        and not re.search(r"\b(no|none|never|not|instead of)\b", clause)
    ]
    assert wrong == []


def test_no_deploy_readme_says_the_password_is_not_percent_decoded():
    wrong = [
        (where, sentence)
        for where, sentence in readme_sentences()
        if re.search(r"(not|never|n't) (percent-)?decode", sentence)
    ]
    assert wrong == []
    assert "percent-decodes the password" in K8S_README.read_text()


@pytest.mark.parametrize(
    ("manifest", "workload"), [("receiver.yaml", RECEIVER), ("worker.yaml", WORKER)]
)
def test_the_k8s_readme_calls_each_probe_what_the_manifest_makes_it(manifest: str, workload: str):
    (row,) = [line for line in K8S_README.read_text().splitlines() if f"| `{manifest}` |" in line]
    container = the_container("Deployment", workload)
    named = {kind for kind in ("liveness", "readiness") if re.search(rf"\b{kind} `", row)}
    probes = {kind for kind in ("liveness", "readiness") if f"{kind}Probe" in container}
    assert named == probes


def test_every_secret_key_a_deploy_readme_creates_is_read_by_a_manifest():
    created = set()
    for path in DEPLOY_READMES:
        for command in path.read_text().replace("\\\n", " ").splitlines():
            secret = re.search(r"kubectl create secret generic ([\w-]+)", command)
            if secret:
                keys = re.findall(r"--from-literal=([\w-]+)=", command)
                created |= {(secret[1], key) for key in keys}
    read = {
        (entry["valueFrom"]["secretKeyRef"]["name"], entry["valueFrom"]["secretKeyRef"]["key"])
        for _, container in containers()
        for entry in container.get("env", [])
        if "secretKeyRef" in entry.get("valueFrom", {})
    }
    assert ("loops-webhooks-redis", "sentinel-password") in created
    assert created - read == set()


def test_every_container_that_reads_redis_url_reads_the_sentinel_password_too():
    def env_names(container: dict[str, Any]) -> set[str]:
        return {entry["name"] for entry in container.get("env", [])}

    readers = [(name, c) for name, c in containers() if "REDIS_URL" in env_names(c)]
    assert len(readers) >= 3  # receiver, worker, dashboard
    assert [
        name for name, c in readers if "LOOPS_REDIS_SENTINEL_PASSWORD" not in env_names(c)
    ] == []


def test_every_path_a_deploy_readme_names_is_in_the_repository():
    named = {
        (path, name)
        for path in DEPLOY_READMES
        for quoted, linked in re.findall(r"`([^`\s]+)`|\]\(([^)\s]+)\)", readme_prose(path))
        for name in (quoted or linked,)
        if ":" not in name
        and not re.search(r"[*<>]", name)
        and ("/" in name or name.endswith(PATH_SUFFIXES))
        and (not name.startswith("/") or name.endswith(".md"))
    }
    assert (DEPLOY / "README.md", "smoke.sh") in named
    missing = [
        f"{path.relative_to(DEPLOY)}: {name}"
        for path, name in sorted(named)
        if name.startswith("/")
        or not ((path.parent / name).exists() or (DEPLOY.parent / name).exists())
    ]
    assert missing == []


# --- compose.sentinel.yaml: replicas and Sentinel ------------------------------------------

COMPOSE_SENTINEL = DEPLOY / "compose.sentinel.yaml"


def sentinel_compose_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = yaml_documents(COMPOSE_SENTINEL)[0]["services"]
    return services


def option_value(command: list[str], option: str) -> str | None:
    return command[command.index(option) + 1] if option in command else None


def sentinel_config(service: dict[str, Any]) -> str:
    script: str = service["entrypoint"][-1]
    return script


def test_compose_sentinel_runs_two_replicas_of_the_primary():
    services = sentinel_compose_services()
    replicas = [s for s in services.values() if "--replicaof" in s.get("command", [])]
    assert len(replicas) == 2
    for replica in replicas:
        command = replica["command"]
        assert command[command.index("--replicaof") + 1 :][:2] == ["redis", "6379"]


def test_compose_sentinel_data_nodes_refuse_writes_without_a_replica_and_keep_redis_conf():
    services = sentinel_compose_services()
    data_nodes = [s for name, s in services.items() if name.startswith("redis")]
    assert len(data_nodes) == 3
    for node in data_nodes:
        assert int(option_value(node["command"], "--min-replicas-to-write") or 0) >= 1
        assert option_value(node["command"], "--masterauth")  # a demoted primary must resync
        assert node["command"][1] == "/usr/local/etc/redis/redis.conf"
        assert "./redis.conf:/usr/local/etc/redis/redis.conf:ro" in node["volumes"]


def test_compose_sentinel_runs_three_sentinels_with_a_quorum_of_two_on_the_primary():
    services = sentinel_compose_services()
    sentinels = {name: s for name, s in services.items() if name.startswith("sentinel")}
    assert len(sentinels) == 3
    for sentinel in sentinels.values():
        config = sentinel_config(sentinel)
        assert re.search(r"^\s*sentinel monitor loops redis 6379 2$", config, re.M)
        assert "--sentinel" in config
        assert sentinel["healthcheck"]


def test_compose_sentinel_points_receiver_workers_and_dashboard_at_the_sentinels(
    clean_environment,
):
    services = sentinel_compose_services()
    sentinel_names = {name for name in services if name.startswith("sentinel")}
    for name in ("receiver", "worker", "dashboard"):
        environment = services[name]["environment"]
        address = sentinel_address(environment["REDIS_URL"])
        assert address is not None, name
        assert {host for host, _ in address.sentinels} == sentinel_names
        assert address.master_name == "loops"
        assert int(environment["LOOPS_REDIS_MIN_REPLICAS"]) >= 1
        assert environment["LOOPS_REDIS_SENTINEL_PASSWORD"] == "${REDIS_PASSWORD}"
        assert name in compose_services(), "an override of a compose.yaml service"


# --- the alert rules -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def promtool() -> str:
    """promtool's path; missing, the test is skipped, unless under CI (CI=true), where the
    rules must be tested: .ci/run installs Debian's prometheus package for it."""
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but promtool is not on PATH (Debian: apt-get install prometheus)")
        pytest.skip("promtool is not on PATH (Debian: apt-get install prometheus)")
    return path


def run_promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)


def alert_rules() -> list[dict[str, Any]]:
    (document,) = yaml_documents(ALERTS)
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_promtool_finds_the_alert_rules_valid(promtool: str):
    checked = run_promtool(promtool, "check", "rules", str(ALERTS))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_alert_rules_pass_their_promtool_unit_tests(promtool: str):
    tested = run_promtool(promtool, "test", "rules", str(ALERT_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_is_tested_firing_and_not_firing():
    (document,) = yaml_documents(ALERT_TESTS)
    cases = [case for test in document["tests"] for case in test["alert_rule_test"]]
    firing = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    alerts = {rule["alert"] for rule in alert_rules()}
    assert (alerts - firing, alerts - quiet) == (set(), set())
    assert [ALERTS.name] == document["rule_files"]


def test_every_alert_says_how_severe_and_what_it_means():
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_the_prometheus_rule_holds_the_groups_of_alerts_yaml():
    (rule,) = yaml_documents(PROMETHEUS_RULE)
    (alerts,) = yaml_documents(ALERTS)
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["spec"] == alerts


def test_the_readmes_alert_table_is_alerts_yaml():
    section = README.read_text().split("### What to alert on", 1)[1].split("\n### ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| `([^`]+)` \| (\w*) \|", section, re.MULTILINE)
    assert rows == [(r["alert"], r["expr"], r.get("for", "")) for r in alert_rules()]


# --- the Grafana board (test_observability.py checks its queries) ---


def grafana_panels() -> list[dict[str, Any]]:
    board: dict[str, Any] = json.loads(GRAFANA_BOARD.read_text())
    panels: list[dict[str, Any]] = board["panels"]
    return panels


def test_the_grafana_board_reads_the_prometheus_its_importer_chooses():
    board = json.loads(GRAFANA_BOARD.read_text())
    (variable,) = board["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "DS_PROMETHEUS", "datasource", "prometheus"
    )  # fmt: skip
    chosen = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    queried = [p for p in grafana_panels() if p["type"] != "row"]
    assert queried
    assert [p["title"] for p in queried if p["datasource"] != chosen] == []
    assert [t["expr"] for p in queried for t in p["targets"] if t["datasource"] != chosen] == []


def test_the_grafana_board_uses_panels_of_grafana_10():
    board = json.loads(GRAFANA_BOARD.read_text())
    assert board["schemaVersion"] >= 38  # Grafana 10.0
    assert {panel["type"] for panel in grafana_panels()} <= {"row", "timeseries", "stat"}


def test_the_grafana_boards_panels_have_distinct_ids_and_fit_its_width():
    panels = grafana_panels()
    assert len({panel["id"] for panel in panels}) == len(panels)
    assert [p["title"] for p in panels if p["gridPos"]["x"] + p["gridPos"]["w"] > 24] == []
