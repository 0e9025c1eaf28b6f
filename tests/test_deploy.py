"""The deployment files (``docker/``, ``deploy/``) against the code they run.

Every compose, Kubernetes, Prometheus and Grafana file parses, and every image, ``TINCT_*`` variable, ``tinct``
command line, port, queue and metric name they mention exists in the code, so a rename in ``worker/`` fails here
rather than in a cluster. Fast and offline: no Docker daemon or cluster; ``docker compose config`` and
``kubectl kustomize`` run only where those clients are installed.
"""

from __future__ import annotations

import inspect
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import fields
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from models.engines import KINDS
from models.engines.base import DEVICES, PRECISIONS
from worker import liveness, metrics
from worker.cli import build_parser
from worker.cli_service import QUEUE_NAMES
from worker.settings import GPU_QUEUE, IO_QUEUE, Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "tinct.json"

SETTINGS_VARIABLES = {f"TINCT_{spec.name.upper()}" for spec in fields(Settings)}
# NVML gauges of worker.metrics' GPU collector; listed here too so the dashboard can be checked on its own.
GPU_METRICS = {"tinct_gpu_utilization_ratio", "tinct_gpu_memory_used_bytes", "tinct_gpu_temperature_celsius"}
# The series Prometheus stores for each metric type, after the family name.
SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
}


# ---------------------------------------------------------------------------------------------------- loading


def _yaml_documents(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _dotenv(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def _k8s_documents() -> list[dict]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in _yaml_documents(path)]


def _k8s(kind: str) -> list[dict]:
    return [doc for doc in _k8s_documents() if doc.get("kind") == kind]


def _k8s_one(kind: str, name: str) -> dict:
    (doc,) = [doc for doc in _k8s(kind) if doc["metadata"]["name"] == name]
    return doc


def _pod_containers() -> list[tuple[dict, dict]]:
    """(workload, container) for every container of every Deployment and StatefulSet."""
    return [
        (doc, container)
        for doc in _k8s_documents()
        if doc.get("kind") in ("Deployment", "StatefulSet")
        for container in doc["spec"]["template"]["spec"]["containers"]
    ]


def _is_tinct_image(image: str) -> bool:
    return image.split(":")[0].rsplit("/", 1)[-1] == "tinct"


def _tinct_services() -> dict[str, dict]:
    return {name: svc for name, svc in _compose()["services"].items() if _is_tinct_image(svc.get("image", ""))}


def _tinct_containers() -> list[tuple[dict, dict]]:
    return [(doc, c) for doc, c in _pod_containers() if _is_tinct_image(c["image"])]


def _dockerfiles() -> list[Path]:
    return sorted(path for path in DOCKER.glob("Dockerfile.*") if path.suffix != ".dockerignore")


def _dockerfile_stages(path: Path) -> list[list[tuple[str, str]]]:
    """Instructions per build stage, as (KEYWORD, arguments), with continuations joined and comments dropped."""
    logical, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[list[tuple[str, str]]] = []
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword.upper(), arguments.strip()))
    return stages


def _final_stage(path: Path) -> list[tuple[str, str]]:
    return _dockerfile_stages(path)[-1]


def _dockerfile_env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for keyword, arguments in instructions:
        if keyword == "ENV":
            for token in shlex.split(arguments):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def _instruction(instructions: list[tuple[str, str]], keyword: str) -> str:
    values = [arguments for kw, arguments in instructions if kw == keyword]
    assert values, f"no {keyword} in the final stage"
    return values[-1]


def _flavour(dockerfile: str | Path) -> str:
    return Path(dockerfile).name.removeprefix("Dockerfile.")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _parse_tinct(argv: list[str], where: str):
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits on a usage error, after printing it
        pytest.fail(f"{where}: `tinct {shlex.join(argv)}` does not parse (exit {exc.code})")


def _metrics_port() -> int:
    return int(_compose()["x-tinct-env"]["TINCT_METRICS_PORT"])


def _option(argv: list[str], option: str) -> str:
    return argv[argv.index(option) + 1]


# ---------------------------------------------------------------------------------------------------- parsing

DEPLOY_FILES = sorted(
    path for path in DEPLOY.rglob("*") if path.is_file() and path.suffix in (".yaml", ".yml", ".json")
)


@pytest.mark.parametrize("path", DEPLOY_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_deploy_file_parses(path: Path) -> None:
    documents = [json.loads(path.read_text())] if path.suffix == ".json" else _yaml_documents(path)
    assert documents and all(isinstance(doc, dict) for doc in documents), f"{path}: empty or not a mapping"


def test_the_expected_files_exist() -> None:
    expected = [DOCKER / "Dockerfile.cpu", DOCKER / "Dockerfile.gpu", COMPOSE_FILE, ENV_EXAMPLE,
                DEPLOY / "prometheus.yml", DASHBOARD, K8S / "kustomization.yaml", K8S / "secret.example.yaml"]
    assert [path for path in expected if not path.is_file()] == []
    for dockerfile in _dockerfiles():
        ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
        assert ignore.is_file(), f"{ignore.name}: the build context is the repository root, which has no ignore file"


# ---------------------------------------------------------------------------------------------------- settings


def test_every_tinct_variable_mentioned_is_a_setting() -> None:
    """Any TINCT_* name anywhere under docker/ and deploy/ (env blocks, scripts, comments) is a Settings field."""
    unknown = {}
    for path in [*DOCKER.rglob("*"), *DEPLOY.rglob("*")]:
        if path.is_file():
            for name in set(re.findall(r"\bTINCT_[A-Z0-9_]+\b", path.read_text())) - SETTINGS_VARIABLES:
                unknown.setdefault(name, []).append(str(path.relative_to(ROOT)))
    assert unknown == {}, f"not fields of worker.settings.Settings: {unknown}"


def _check_settings(env: dict[str, str], where: str) -> Settings:
    tinct = {key: str(value) for key, value in env.items() if key.startswith("TINCT_")}
    try:
        settings = Settings.from_env(tinct)
    except (TypeError, ValueError) as exc:
        pytest.fail(f"{where}: {exc}")
    assert settings.device in DEVICES, f"{where}: TINCT_DEVICE={settings.device!r}"
    assert settings.engine in KINDS, f"{where}: TINCT_ENGINE={settings.engine!r}"
    assert settings.precision in PRECISIONS, f"{where}: TINCT_PRECISION={settings.precision!r}"
    return settings


def test_compose_settings_parse() -> None:
    secrets = _dotenv(ENV_EXAMPLE)
    services = _tinct_services()
    assert {"tinct-webhook", "cpu-worker", "gpu-worker"} <= set(services)
    for name, service in services.items():
        settings = _check_settings({**secrets, **service.get("environment", {})}, f"compose service {name}")
        assert settings.webhook_secret and settings.s3_access_key_id and settings.s3_secret_access_key, name
    assert services["gpu-worker"]["environment"]["TINCT_DEVICE"] == "cuda"


def test_kubernetes_settings_parse() -> None:
    config = _k8s_one("ConfigMap", "tinct-settings")["data"]
    (secret,) = _yaml_documents(K8S / "secret.example.yaml")
    containers = _tinct_containers()
    assert containers
    for workload, container in containers:
        refs = {ref.get("configMapRef", ref.get("secretRef"))["name"] for ref in container.get("envFrom", [])}
        assert refs == {"tinct-settings", secret["metadata"]["name"]}, workload["metadata"]["name"]
        env = {**config, **secret["stringData"], **{e["name"]: e["value"] for e in container.get("env", [])}}
        _check_settings(env, f"k8s {workload['metadata']['name']}")


@pytest.mark.parametrize("dockerfile", _dockerfiles(), ids=lambda p: p.name)
def test_dockerfile_settings_parse(dockerfile: Path) -> None:
    env = _dockerfile_env(_final_stage(dockerfile))
    settings = _check_settings(env, dockerfile.name)
    assert settings.metrics_port == _metrics_port()
    assert str(settings.cache_dir) == env["TINCT_CACHE_DIR"]


def test_example_secrets_are_obviously_examples() -> None:
    """Published example secrets must never pass for real ones (and are documented where they are defined)."""
    (secret,) = _yaml_documents(K8S / "secret.example.yaml")
    for values in (_dotenv(ENV_EXAMPLE), secret["stringData"]):
        assert values and all(value.startswith("example-") for value in values.values()), values
    assert "secret.example.yaml" not in (K8S / "kustomization.yaml").read_text().split("resources:")[1]


# ---------------------------------------------------------------------------------------------------- commands


def _command_lines() -> list[tuple[str, list[str]]]:
    lines = [(f"compose {name}", svc["command"]) for name, svc in _tinct_services().items()]
    lines += [(f"k8s {doc['metadata']['name']}", c["args"]) for doc, c in _tinct_containers()]
    lines += [(path.name, json.loads(_instruction(_final_stage(path), "CMD"))) for path in _dockerfiles()]
    return lines


def test_every_tinct_command_line_parses() -> None:
    lines = _command_lines()
    assert len(lines) >= 6
    for where, argv in lines:
        args = _parse_tinct(argv, where)
        if args.command == "worker":
            queues = args.queues.split(",")
            assert set(queues) <= set(QUEUE_NAMES), f"{where}: --queues {args.queues}"


def test_images_run_tinct_as_their_entry_point() -> None:
    for path in _dockerfiles():
        assert json.loads(_instruction(_final_stage(path), "ENTRYPOINT")) == ["tinct"], path.name
    for name, service in _tinct_services().items():
        assert "entrypoint" not in service, f"compose {name}: command lines are tinct arguments"
    for doc, container in _tinct_containers():
        assert "command" not in container, f"k8s {doc['metadata']['name']}: args are tinct arguments"


def test_gpu_workers_take_only_network_work() -> None:
    """GPU workers consume tinct.colorize alone (what KEDA scales them on); someone else consumes tinct.io."""
    gpu_args = _tinct_services()["gpu-worker"]["command"]
    k8s_gpu = [c for doc, c in _tinct_containers() if "nvidia.com/gpu" in c["resources"].get("limits", {})]
    assert k8s_gpu
    for argv in [gpu_args, *(c["args"] for c in k8s_gpu)]:
        assert QUEUE_NAMES[_option(argv, "--queues")] == GPU_QUEUE
    k8s_lines = [c["args"] for _, c in _tinct_containers()]
    compose_lines = [s["command"] for s in _tinct_services().values()]
    for lines in (k8s_lines, compose_lines):
        consumed = {q for argv in lines if argv[0] == "worker" for q in _option(argv, "--queues").split(",")}
        assert {QUEUE_NAMES[q] for q in consumed} == {GPU_QUEUE, IO_QUEUE}


# ---------------------------------------------------------------------------------------------------- ports


def test_metrics_port_is_the_same_everywhere() -> None:
    port = _metrics_port()
    assert port > 0
    assert int(_k8s_one("ConfigMap", "tinct-settings")["data"]["TINCT_METRICS_PORT"]) == port
    for path in _dockerfiles():
        final = _final_stage(path)
        assert str(port) in _instruction(final, "EXPOSE").split(), path.name
        assert "TINCT_METRICS_PORT" in _instruction(final, "HEALTHCHECK"), path.name
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (workers,) = [job for job in prometheus["scrape_configs"] if job["job_name"] == "tinct-workers"]
    worker_services = {n for n, s in _tinct_services().items() if s["command"][0] == "worker"}
    for discovery in workers["dns_sd_configs"]:
        assert discovery["port"] == port
        assert set(discovery["names"]) == worker_services
    for doc, container in _tinct_containers():
        if container["args"][0] != "worker":
            continue
        name = doc["metadata"]["name"]
        assert {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"] == port, name
        annotations = doc["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port) and annotations["prometheus.io/scrape"] == "true", name
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["port"] == "metrics", f"{name} {probe}"


def test_webhook_port_is_the_same_everywhere() -> None:
    service = _tinct_services()["tinct-webhook"]
    port = int(_option(service["command"], "--port"))
    assert f":{port}/healthz" in " ".join(service["healthcheck"]["test"])
    init = " ".join(_compose()["services"]["minio-init"]["command"])
    assert re.findall(r"http://tinct-webhook:(\d+)/", init) == [str(port)], "MinIO's notify_webhook endpoint"

    deployment = _k8s_one("Deployment", "tinct-webhook")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    k8s_port = int(_option(container["args"], "--port"))
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["http"] == k8s_port
    (service_port,) = _k8s_one("Service", "tinct-webhook")["spec"]["ports"]
    assert service_port["targetPort"] == "http"


def test_minio_notifies_the_webhook_about_its_input_bucket() -> None:
    """The bucket the webhook writes to exists, and the notification ARN is the target that minio-init configures."""
    init = _compose()["services"]["minio-init"]["command"][0]
    buckets = set(re.findall(r"local/([a-z0-9.-]+)", re.search(r"mc mb .*", init).group(0)))
    output = urlparse(_option(_tinct_services()["tinct-webhook"]["command"], "-o"))
    assert output.scheme == "s3" and output.netloc in buckets
    target = re.search(r"notify_webhook:(\w+)", init).group(1)
    assert re.search(rf"mc event add .*local/(\S+) arn:minio:sqs::{target}:webhook --event put", init)
    assert "$$TINCT_WEBHOOK_SECRET" in init, "the webhook secret is the notification's auth_token"


# ---------------------------------------------------------------------------------------------------- queues


def test_keda_scales_gpu_workers_on_the_gpu_queue() -> None:
    (scaled,) = _k8s("ScaledObject")
    target = _k8s_one("Deployment", scaled["spec"]["scaleTargetRef"]["name"])
    (container,) = target["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1, "one worker process per GPU"
    assert "replicas" not in target["spec"], "KEDA owns the replica count"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == GPU_QUEUE
    redis_url = urlparse(_k8s_one("ConfigMap", "tinct-settings")["data"]["TINCT_REDIS_URL"])
    host, _, port = trigger["metadata"]["address"].partition(":")
    assert host.split(".")[0] == redis_url.hostname and int(port) == redis_url.port
    assert trigger["metadata"]["databaseIndex"] == redis_url.path.strip("/")
    (redis_port,) = _k8s_one("Service", redis_url.hostname)["spec"]["ports"]
    assert redis_port["port"] == redis_url.port


def test_redis_keeps_an_append_only_file() -> None:
    compose_redis = _compose()["services"]["redis"]
    assert "--appendonly" in compose_redis["command"] and compose_redis["volumes"]
    statefulset = _k8s_one("StatefulSet", "redis")
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    assert _option(container["args"], "--appendonly") == "yes"
    assert statefulset["spec"]["volumeClaimTemplates"]
    assert urlparse(_compose()["x-tinct-env"]["TINCT_REDIS_URL"]).hostname == "redis"


def test_flower_watches_the_workers_redis() -> None:
    compose = _compose()
    broker = compose["services"]["flower"]["environment"]["CELERY_BROKER_URL"]
    assert broker == compose["x-tinct-env"]["TINCT_REDIS_URL"]


# ---------------------------------------------------------------------------------------------------- images


def test_tinct_images_are_built_from_the_dockerfiles() -> None:
    """Compose builds each tinct image from docker/Dockerfile.<flavour> as tinct:<version>-<flavour>; Kubernetes
    runs only those tags; docker/README.md builds the same tags from the same files."""
    version = _pyproject()["project"]["version"]
    readme = (DOCKER / "README.md").read_text()
    built = {}
    for name, service in _tinct_services().items():
        build = service["build"]
        assert (COMPOSE_FILE.parent / build["context"]).resolve() == ROOT, name
        dockerfile = ROOT / build["dockerfile"]
        assert dockerfile in _dockerfiles(), f"{name}: {build['dockerfile']}"
        assert service["image"] == f"tinct:{version}-{_flavour(dockerfile)}", name
        built[service["image"]] = dockerfile
        assert f"-f docker/{dockerfile.name} -t {service['image']} ." in readme
    assert set(built.values()) == set(_dockerfiles())
    k8s_images = {container["image"] for _, container in _tinct_containers()}
    assert k8s_images <= set(built), f"not built by compose: {k8s_images - set(built)}"


def test_images_install_the_pinned_torch() -> None:
    pinned = next(dep for dep in _pyproject()["project"]["dependencies"] if dep.startswith("torch=="))
    for path in _dockerfiles():
        build_args = [args for stage in _dockerfile_stages(path) for kw, args in stage if kw == "ARG"]
        assert f"TORCH_VERSION={pinned.removeprefix('torch==')}" in build_args, path.name


def test_images_copy_every_package() -> None:
    """Every package pyproject.toml ships is copied into the build, and its ignore file lets it through."""
    packages = [pattern.rstrip("*") for pattern in _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]]
    for path in _dockerfiles():
        copied = {Path(src).name for stage in _dockerfile_stages(path) for kw, args in stage if kw == "COPY"
                  and not args.startswith("--from") for src in args.split()[:-1]}
        allowed = {line.strip("!/") for line in Path(f"{path}.dockerignore").read_text().splitlines()
                   if line.startswith("!")}
        for needed in [*packages, "pyproject.toml", "README.md"]:
            assert needed in copied and needed in allowed, f"{path.name}: {needed}"


@pytest.mark.parametrize("dockerfile", _dockerfiles(), ids=lambda p: p.name)
def test_images_run_as_an_unprivileged_user(dockerfile: Path) -> None:
    final = _final_stage(dockerfile)
    user = _instruction(final, "USER").split(":")[0]
    assert user not in ("root", "0") and int(user) > 0
    assert any(f"--uid {user}" in args for kw, args in final if kw == "RUN"), "the user exists in the image"
    assert _instruction(final, "HEALTHCHECK")
    for doc, _ in _tinct_containers():
        security = doc["spec"]["template"]["spec"]["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] == int(user), doc["metadata"]["name"]


def test_gpu_worker_reserves_a_gpu_behind_a_profile() -> None:
    """The stack starts without a GPU: only the gpu profile's worker reserves one."""
    services = _compose()["services"]
    reserving = {name for name, svc in services.items() if "deploy" in svc}
    assert reserving == {"gpu-worker"}
    gpu = services["gpu-worker"]
    assert gpu["profiles"] == ["gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert len(device.get("device_ids", [])) == 1 or device.get("count") == 1, "one worker process per GPU"


# ---------------------------------------------------------------------------------------------------- monitoring


def _defined_metric_names() -> set[str]:
    names = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                names |= {family.name + suffix for suffix in SAMPLE_SUFFIXES[family.type]}
    # Collectors build their families at scrape time; their names are literals in the module.
    for module in (metrics, liveness):  # liveness exports the stalled-pieces gauge
        names |= set(re.findall(r"[\"'](tinct_[a-z0-9_]+)[\"']", inspect.getsource(module)))
    return names | GPU_METRICS


def _dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())

    def panels(items: list[dict]):
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    expressions = [t["expr"] for p in panels(dashboard["panels"]) for t in p.get("targets", [])]
    expressions += [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return expressions


def test_dashboard_uses_only_metrics_the_workers_export() -> None:
    defined = _defined_metric_names()
    used = set()
    for expression in _dashboard_expressions():
        names = set(re.findall(r"\btinct_[a-z0-9_]+", expression))
        assert names, f"no Tinct metric in {expression!r}"
        assert names <= defined, f"{expression!r}: {names - defined} not in worker/metrics.py"
        for queue in re.findall(r'queue="([^"]+)"', expression):
            assert queue in (GPU_QUEUE, IO_QUEUE), expression
        used |= names
    wanted = {"tinct_frames_total", "tinct_images_total", "tinct_jobs_total", "tinct_failures_total",
              "tinct_stage_seconds_bucket", "tinct_queue_depth", *GPU_METRICS}
    assert wanted <= used, f"no panel for {wanted - used}"
    assert any("histogram_quantile(0.95" in e and "by (le, stage)" in e for e in _dashboard_expressions())


def test_dashboard_is_provisioned_with_its_data_source() -> None:
    (source,) = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/tinct.yaml").read_text())["providers"]
    grafana = _compose()["services"]["grafana"]
    mounts = dict(volume.split(":")[:2] for volume in grafana["volumes"] if volume.startswith("./"))
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboard = json.loads(DASHBOARD.read_text())
    sources = {json.dumps(p["datasource"], sort_keys=True) for p in dashboard["panels"] if "datasource" in p}
    assert sources == {json.dumps({"type": "prometheus", "uid": "${datasource}"}, sort_keys=True)}


# ---------------------------------------------------------------------------------------------------- clients


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert set(kustomization["resources"]) == manifests
    assert kustomization["namespace"] == "tinct"


def test_kubectl_kustomize_builds() -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    result = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    kinds = {doc["kind"] for doc in yaml.safe_load_all(result.stdout)}
    assert {"Namespace", "StatefulSet", "Deployment", "Service", "ConfigMap", "ScaledObject"} <= kinds


def test_docker_compose_config_validates() -> None:
    if shutil.which("docker") is None:
        pytest.skip("the docker client is not installed")
    version = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=60)
    if version.returncode != 0:
        pytest.skip("the docker client has no compose plugin")
    result = subprocess.run(["docker", "compose", "-f", str(COMPOSE_FILE), "--profile", "gpu", "config", "-q"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------------------------------- liveness


def _seconds(value: str | int) -> float:
    """A compose duration (``60s``, ``1m30s``) or a plain number of seconds."""
    if isinstance(value, int):
        return float(value)
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", value)
    assert parts and value, f"not a duration: {value!r}"
    return 60.0 * int(parts[1] or 0) + int(parts[2] or 0)


def test_orchestrators_wait_longer_than_the_workers_stop_grace() -> None:
    """SIGTERM gives the piece in hand TINCT_STOP_GRACE_S, then hands it back; the orchestrator's SIGKILL must come
    later (with time to hand back and exit), or the piece waits out the liveness window instead."""
    config = _check_settings(_k8s_one("ConfigMap", "tinct-settings")["data"], "k8s configmap")
    for workload, container in _tinct_containers():
        if container["args"][:1] != ["worker"]:
            continue
        grace = workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert config.stop_grace_s + 15 <= grace <= config.stop_grace_s + 120, workload["metadata"]["name"]
    secrets = _dotenv(ENV_EXAMPLE)
    for name, service in _tinct_services().items():
        if service["command"][:1] != ["worker"]:
            continue
        settings = _check_settings({**secrets, **service.get("environment", {})}, f"compose service {name}")
        grace = _seconds(service.get("stop_grace_period", "10s"))
        assert settings.stop_grace_s + 15 <= grace <= settings.stop_grace_s + 120, name


def test_time_limits_cover_a_planned_piece_and_the_visibility_timeout_backs_them_up() -> None:
    for env, where in ((_k8s_one("ConfigMap", "tinct-settings")["data"], "k8s"), ({}, "defaults")):
        settings = _check_settings(env, where)  # Settings itself refuses limits that break these relations
        assert 2 * settings.piece_target_s <= settings.task_soft_time_limit_s < settings.task_time_limit_s
        assert settings.task_time_limit_s < settings.visibility_timeout_s, where
        assert settings.task_time_limit_s <= 15 * 60, f"{where}: pieces are bounded to minutes"


def test_alert_rules_are_loaded_and_use_only_metrics_the_workers_export() -> None:
    rules_file = DEPLOY / "prometheus" / "alerts.yml"
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    mounts = dict(volume.split(":")[:2] for volume in _compose()["services"]["prometheus"]["volumes"])
    assert mounts["./prometheus/alerts.yml"] in prometheus["rule_files"]
    rules = [rule for group in yaml.safe_load(rules_file.read_text())["groups"] for rule in group["rules"]]
    defined = _defined_metric_names()
    for rule in rules:
        names = set(re.findall(r"\btinct_[a-z0-9_]+", rule["expr"]))
        assert names and names <= defined, f"{rule['alert']}: {names - defined} not exported"
        assert rule["labels"]["severity"] and rule["annotations"]["summary"], rule["alert"]
    assert any("tinct_pieces_stalled" in rule["expr"] for rule in rules)
