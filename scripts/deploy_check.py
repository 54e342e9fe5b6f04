"""``make deploy-check``: validate everything under ``deploy/`` offline.

No Docker engine, no cluster and no schema site is needed:

* **YAML lint** of every YAML file under ``deploy/`` (yamllint, ``deploy/.yamllint.yaml``).
* **Kustomize**: every overlay is rendered with the real kustomize (pinned, ``go install``-ed
  into the git-ignored ``.cache/bin`` on first use; the Go module and build caches make later
  installs take seconds).
* **Kubernetes schemas**: every rendered built-in resource is validated, strictly (unknown
  fields rejected), against the schemas the ``kubernetes-validate`` wheel ships, for each
  Kubernetes version in ``KUBERNETES_VERSIONS``; every custom resource (Strimzi, CloudNativePG,
  KEDA, Prometheus Operator) against the hand-kept JSON Schemas in ``deploy/schemas/``. A
  resource with no schema fails.
* **Policy**, on the rendered overlays, against the code: every topic of the contract has a
  KafkaTopic with at least the contract's partitions and the code's retention; every service
  has a Deployment with liveness/readiness/startup probes on the right port, requests and
  limits, a non-root restricted securityContext, topology spread, a PodDisruptionBudget, a
  Service, a migration Job with the same image, and a KEDA ScaledObject on its consumer group's
  lag capped at the partition count; every ``<PREFIX>*`` variable is a field of the service's
  settings class and the resulting settings validate; every referenced Secret/ConfigMap exists;
  every metric an alert uses is exported by the code (or marked pending) and every alert has a
  runbook section.
* **Compose**: ``deploy/compose.yaml`` against the compose-spec schema (the copy the
  ``check-jsonschema`` wheel vendors) plus the same settings and wiring checks; its
  Prometheus scrapes every service and its Grafana loads every dashboard (provisioning files).
* **Grafana dashboards** (``deploy/k8s/components/dashboards/*.json``): the fields Grafana
  needs (uid, title, schemaVersion, panels with unique integer ids inside the 24-column grid,
  a refId and an expression per query, data sources through a variable), every ``$variable``
  defined, every metric a query or a variable reads exported by the code (or by a named
  external exporter); and every overlay renders each one, unchanged, in a ConfigMap
  labelled ``grafana_dashboard: "1"`` for the Grafana sidecar.
* **Dockerfiles**: parsed with BuildKit's own parser (the ``dockerfile`` wheel); multi-stage,
  numeric non-root USER, no build tools or installers in the final stage, locked ``uv sync``,
  and ``.dockerignore`` keeps what the COPYs need and drops ``.git``/``.venv``/``.cache``.
  Each builder stage's ``uv`` commands are then run as written on a copy of the build
  context (no Docker): the virtualenv must hold the service as a package with its
  migrations, and ``python -m <package>`` must start.

Run ``python -m scripts.deploy_check`` (``-v`` lists every passing check).
"""

from __future__ import annotations

import argparse
import ast
import base64
import concurrent.futures
import contextlib
import fcntl
import importlib
import importlib.resources
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("dev", "prod")
SCHEMAS = DEPLOY / "schemas"
DOCKER = DEPLOY / "docker"
COMPOSE = DEPLOY / "compose.yaml"
RUNBOOK = ROOT / "docs" / "runbook.md"
DASHBOARDS = K8S / "components" / "dashboards"
GRAFANA_DASHBOARD_LABEL = "grafana_dashboard"
CONTRACT = ROOT / "contracts" / "asyncapi.json"
BIN_DIR = ROOT / ".cache" / "bin"

KUSTOMIZE_MODULE = "sigs.k8s.io/kustomize/kustomize/v5"
# v5.7.1 builds with Go >= 1.22.7; later ones need newer Go than many machines have.
KUSTOMIZE_VERSION = "v5.7.1"
# The oldest Kubernetes we deploy to and the newest we have checked against.
KUBERNETES_VERSIONS = ("1.31.0", "1.34.0")

EXTERNAL_SECRETS_ANNOTATION = "deploy-check.collections/external-secrets"
PENDING_METRICS_ANNOTATION = "pending_metrics"
# Metrics an alert may use that other exporters provide, by name prefix.
EXTERNAL_METRICS = {
    "up": "Prometheus itself",
    "kube_": "kube-state-metrics",
    "kafka_": "Strimzi's Kafka Exporter",
    "cnpg_": "CloudNativePG",
}
# Parameters of KEDA's Kafka scaler (trigger metadata is scaler-specific, not in the CRD).
KEDA_KAFKA_PARAMETERS = {
    "bootstrapServers",
    "consumerGroup",
    "topic",
    "lagThreshold",
    "activationLagThreshold",
    "offsetResetPolicy",
    "allowIdleConsumers",
    "scaleToZeroOnInvalidOffset",
    "excludePersistentLag",
    "limitToPartitionsWithLag",
    "ensureEvenDistributionOfPartitions",
    "partitionLimitation",
    "version",
    "sasl",
    "tls",
    "unsafeSsl",
}
COMPONENT = "app.kubernetes.io/component"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
# Words in a final-stage RUN that mean build tools or an installer in the runtime image.
BUILD_TOOLS = re.compile(
    r"\b(apt-get\s+install|apt\s+install|apk\s+add|yum\s+install|dnf\s+install|pip\s+install|"
    r"uv\s+(sync|pip)|gcc|g\+\+|clang|make|build-essential|cargo|rustc|go\s+build)\b"
)


# --- reporting ------------------------------------------------------------------------------


@dataclass
class Report:
    verbose: bool = False
    failures: int = 0
    passed: int = 0

    def result(self, name: str, problems: list[str], seconds: float, detail: str = "") -> None:
        if problems:
            self.failures += 1
            print(f"FAIL  {name} ({seconds:.1f}s)")
            for problem in problems:
                print(f"      - {problem}")
        else:
            self.passed += 1
            if self.verbose or seconds >= 1.0:
                suffix = f": {detail}" if detail else ""
                print(f"ok    {name}{suffix} ({seconds:.1f}s)")

    def run(self, name: str, check: Callable[[], list[str] | tuple[list[str], str]]) -> None:
        started = time.perf_counter()
        try:
            outcome = check()
        except Exception as exc:  # a crash in a check is a failure of that check, not of all
            outcome = [f"check crashed: {type(exc).__name__}: {exc}"]
        problems, detail = outcome if isinstance(outcome, tuple) else (outcome, "")
        self.result(name, problems, time.perf_counter() - started, detail)


# --- what the code says -----------------------------------------------------------------------


@dataclass(frozen=True)
class Service:
    name: str  # workflow, ledger-sync, notifier
    package: str
    env_prefix: str
    settings_cls: Any
    consumes: frozenset[str]


@dataclass(frozen=True)
class TopicFacts:
    partitions: int
    retention_ms: int


@dataclass
class Facts:
    services: dict[str, Service]
    topics: dict[str, TopicFacts]
    metrics: set[str] = field(default_factory=set)


def load_facts() -> Facts:
    """Services, topics and metrics, from the code and the generated contract."""
    from collections_kit.settings import ServiceSettings
    from collections_kit.topics import topic_specs

    contract = json.loads(CONTRACT.read_text())
    channels = {key: ch["address"] for key, ch in contract["channels"].items()}
    partitions = {
        ch["address"]: int(ch["bindings"]["kafka"]["partitions"])
        for ch in contract["channels"].values()
    }
    retention = {spec.name: spec.retention_ms for spec in topic_specs(partitions=1)}
    if set(retention) != set(partitions):
        raise ValueError(
            f"collections_kit.topics and contracts/asyncapi.json disagree: "
            f"{sorted(set(retention) ^ set(partitions))} (run `make contracts`)"
        )
    topics = {name: TopicFacts(partitions[name], retention[name]) for name in partitions}

    consumes: dict[str, set[str]] = {}
    for op in contract["operations"].values():
        service = op["summary"].split(" ", 1)[0]
        channel = op["channel"]["$ref"].rsplit("/", 1)[-1]
        if op["action"] == "receive":
            consumes.setdefault(service, set()).add(channels[channel])

    services: dict[str, Service] = {}
    for pyproject in sorted((ROOT / "services").glob("*/pyproject.toml")):
        name = tomllib.loads(pyproject.read_text())["project"]["name"]
        package = name.replace("-", "_")
        module = importlib.import_module(f"{package}.settings")
        classes = [
            v
            for v in vars(module).values()
            if isinstance(v, type) and issubclass(v, ServiceSettings) and v is not ServiceSettings
        ]
        if len(classes) != 1:
            raise ValueError(f"{package}.settings: expected one ServiceSettings subclass")
        cls = classes[0]
        services[name] = Service(
            name,
            package,
            str(cls.model_config.get("env_prefix", "")),
            cls,
            frozenset(consumes.get(name, ())),
        )
    return Facts(services, topics, exported_metrics())


def exported_metrics() -> set[str]:
    """Every series name the code's Prometheus metrics expose, found in the source (AST):
    calls of prometheus_client's metric classes, under whatever name they were imported."""
    suffixes = {
        "Counter": ("_total", "_created"),
        "Gauge": ("",),
        "Histogram": ("_bucket", "_sum", "_count", "_created"),
        "Summary": ("", "_sum", "_count", "_created"),
        "Info": ("_info",),
        "Enum": ("",),
    }
    names: set[str] = set()
    for source in [*ROOT.glob("libs/*/src/**/*.py"), *ROOT.glob("services/*/src/**/*.py")]:
        try:
            tree = ast.parse(source.read_text())
        except SyntaxError:
            continue
        kinds: dict[str, str] = {}  # local name -> metric class
        modules: set[str] = set()  # local names of the prometheus_client module
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "prometheus_client":
                kinds.update({a.asname or a.name: a.name for a in node.names if a.name in suffixes})
            elif isinstance(node, ast.Import):
                modules.update(
                    a.asname or a.name for a in node.names if a.name == "prometheus_client"
                )
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            func = node.func
            if isinstance(func, ast.Name):
                kind = kinds.get(func.id)
            elif (
                isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Name)
                and func.value.id in modules
            ):
                kind = func.attr if func.attr in suffixes else None
            else:
                kind = None
            if kind is None:
                continue
            for base in _metric_names(node.args[0], _enclosing_generators(node, parents)):
                if kind == "Counter":
                    base = base.removesuffix("_total")
                names.update(base + suffix for suffix in suffixes[kind])
    return names


def _enclosing_generators(node: ast.AST, parents: Mapping[ast.AST, ast.AST]) -> list[Any]:
    """The ``for`` clauses of the comprehensions around ``node``, outermost first."""
    found: list[ast.comprehension] = []
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            found[:0] = node.generators
    return found


def _bind(target: ast.expr, value: object) -> dict[str, object] | None:
    if isinstance(target, ast.Name):
        return {target.id: value}
    if isinstance(target, ast.Tuple) and isinstance(value, tuple):
        if len(target.elts) != len(value):
            return None
        bound: dict[str, object] = {}
        for elt, item in zip(target.elts, value, strict=True):
            part = _bind(elt, item)
            if part is None:
                return None
            bound |= part
        return bound
    return None


def _metric_names(arg: ast.expr, generators: list[ast.comprehension]) -> list[str]:
    """A metric's name: a string literal, or an f-string over the names a comprehension
    takes from a literal tuple (``{n: Gauge(f"x_{n}", ...) for n in ("a", "b")}``), expanded
    to every name it makes. Anything else is not followed: its series stay unknown."""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return [arg.value]
    if not isinstance(arg, ast.JoinedStr):
        return []
    bindings: list[dict[str, object]] = [{}]
    for generator in generators:
        try:
            values = ast.literal_eval(generator.iter)
        except ValueError:
            return []
        if not isinstance(values, (tuple, list)):
            return []
        expanded = []
        for binding in bindings:
            for value in values:
                bound = _bind(generator.target, value)
                if bound is None:
                    return []
                expanded.append(binding | bound)
        bindings = expanded
    names = []
    for binding in bindings:
        parts = []
        for part in arg.values:
            if isinstance(part, ast.Constant):
                parts.append(str(part.value))
            elif (
                isinstance(part, ast.FormattedValue)
                and isinstance(part.value, ast.Name)
                and part.value.id in binding
                and part.conversion == -1
                and part.format_spec is None
            ):
                parts.append(str(binding[part.value.id]))
            else:
                return []
        names.append("".join(parts))
    return names


# --- tools ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_kustomize() -> Path:
    """The pinned kustomize: $KUSTOMIZE, else .cache/bin/kustomize, installed with Go if needed."""
    if os.environ.get("KUSTOMIZE"):
        return Path(os.environ["KUSTOMIZE"])
    binary = BIN_DIR / "kustomize"

    def current() -> bool:
        if not binary.exists():
            return False
        out = subprocess.run(
            [str(binary), "version"], capture_output=True, text=True, check=False
        ).stdout
        return out.strip() == KUSTOMIZE_VERSION

    with _lock(BIN_DIR / ".kustomize.lock"):
        if current():
            return binary
        go = shutil.which("go") or next(
            (
                str(p)
                for p in (Path("/usr/local/go/bin/go"), Path("/usr/lib/go/bin/go"))
                if p.exists()
            ),
            None,
        )
        if go is None:
            raise RuntimeError(
                "kustomize is not installed and there is no Go toolchain to "
                "build it; install Go or set KUSTOMIZE=/path/to/kustomize"
            )
        print(
            f"installing kustomize {KUSTOMIZE_VERSION} into {binary.parent} (go install)",
            flush=True,
        )
        env = {**os.environ, "GOBIN": str(BIN_DIR), "GOTOOLCHAIN": "local", "GOFLAGS": ""}
        subprocess.run(
            [go, "install", f"{KUSTOMIZE_MODULE}@{KUSTOMIZE_VERSION}"], env=env, check=True
        )
        if not current():
            raise RuntimeError(f"{binary} does not report version {KUSTOMIZE_VERSION}")
        return binary


@dataclass
class Rendered:
    overlay: str
    docs: list[dict[str, Any]]
    kustomization: dict[str, Any]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d.get("kind") == kind]

    def named(self, kind: str, name: str) -> dict[str, Any] | None:
        return next((d for d in self.of_kind(kind) if d["metadata"]["name"] == name), None)


def render(kustomize: Path, overlay: str) -> Rendered:
    path = K8S / "overlays" / overlay
    out = subprocess.run(
        [str(kustomize), "build", str(path)], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"kustomize build {path.relative_to(ROOT)}: {out.stderr.strip()}")
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    return Rendered(overlay, docs, yaml.safe_load((path / "kustomization.yaml").read_text()))


def ident(doc: Mapping[str, Any]) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


# --- YAML lint --------------------------------------------------------------------------------


def yaml_files() -> list[Path]:
    files = [
        p
        for p in sorted(DEPLOY.rglob("*"))
        if p.suffix in {".yaml", ".yml"} and p.name != ".yamllint.yaml"
    ]
    return [*files, DEPLOY / ".yamllint.yaml"]


def check_yamllint() -> tuple[list[str], str]:
    from yamllint import linter  # type: ignore[import-untyped]
    from yamllint.config import YamlLintConfig  # type: ignore[import-untyped]

    config = YamlLintConfig(file=str(DEPLOY / ".yamllint.yaml"))
    problems = []
    files = yaml_files()
    for path in files:
        for p in linter.run(path.read_text(), config, str(path)):
            problems.append(f"{path.relative_to(ROOT)}:{p.line}:{p.column}: {p.level}: {p.message}")
    return problems, f"{len(files)} files"


# --- schemas ----------------------------------------------------------------------------------


@cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    schemas = {}
    for path in sorted(SCHEMAS.glob("*.json")):
        schema = json.loads(path.read_text())
        props = schema["properties"]
        schemas[(props["apiVersion"]["const"], props["kind"]["const"])] = schema
    return schemas


def check_crd_schema_files() -> tuple[list[str], str]:
    problems = []
    files = sorted(SCHEMAS.glob("*.json"))
    for path in files:
        schema = json.loads(path.read_text())
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            problems.append(f"{path.name}: not a valid JSON Schema: {exc.message}")
        if "HAND-KEPT SUBSET" not in schema.get("$comment", ""):
            problems.append(f"{path.name}: its $comment must say it is a hand-kept subset")
    return problems, f"{len(files)} schemas"


def validate_schemas(rendered: Rendered) -> tuple[list[str], str]:
    import kubernetes_validate  # type: ignore[import-untyped]
    from kubernetes_validate import utils as kv_utils

    problems: list[str] = []
    builtin = custom = 0
    for doc in rendered.docs:
        crd = crd_schemas().get((doc.get("apiVersion", ""), doc.get("kind", "")))
        if crd is not None:
            custom += 1
            validator = jsonschema.Draft202012Validator(crd)
            for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
                where = ".".join(str(p) for p in error.path) or "(root)"
                problems.append(f"{ident(doc)}: {where}: {error.message}")
            continue
        builtin += 1
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kv_utils.ValidationError as error:
                where = ".".join(str(p) for p in error.path) or "(root)"
                problems.append(f"{ident(doc)} (Kubernetes {version}): {where}: {error.message}")
            except kv_utils.SchemaNotFoundError:
                problems.append(
                    f"{ident(doc)}: no schema for {doc.get('apiVersion')} "
                    f"{doc.get('kind')} (Kubernetes {version} or deploy/schemas)"
                )
                break
    versions = "/".join(KUBERNETES_VERSIONS)
    return problems, f"{builtin} built-in (Kubernetes {versions}, strict), {custom} custom"


# --- settings and environment -----------------------------------------------------------------

_VAR_REF = re.compile(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion; an unknown variable stays as written, as in a pod."""
    return _VAR_REF.sub(lambda m: env.get(m.group(1), m.group(0)), value).replace("$$", "$")


def settings_problems(service: Service, env: Mapping[str, str], where: str) -> list[str]:
    """Every ``<PREFIX>*`` variable names a settings field; together they validate."""
    problems = []
    values: dict[str, str] = {}
    fields = service.settings_cls.model_fields
    for key, value in env.items():
        if not key.startswith(service.env_prefix):
            continue
        name = key[len(service.env_prefix) :].lower()
        if name not in fields:
            problems.append(
                f"{where}: {key} is not a setting of {service.settings_cls.__name__} "
                f"(the service would silently ignore it)"
            )
            continue
        values[name] = value
        unresolved = _VAR_REF.findall(value)
        if unresolved:
            problems.append(f"{where}: {key} refers to undefined variables {unresolved}")
    if problems:
        return problems
    try:
        settings = service.settings_cls(_env_prefix="DEPLOY_CHECK_UNUSED_", **values)
    except Exception as exc:
        return [f"{where}: the settings do not validate: {exc}"]
    if (
        not settings.database_url.startswith("postgresql+asyncpg://")
        or "database_url" not in values
    ):
        problems.append(
            f"{where}: {service.env_prefix}DATABASE_URL must be set, postgresql+asyncpg://..."
        )
    if "kafka_bootstrap" not in values:
        problems.append(f"{where}: {service.env_prefix}KAFKA_BOOTSTRAP must be set")
    if settings.http_host in {"127.0.0.1", "localhost", "::1"}:
        problems.append(
            f"{where}: {service.env_prefix}HTTP_HOST={settings.http_host} is not "
            f"reachable from outside the container (probes would fail)"
        )
    return problems


def make_settings(service: Service, env: Mapping[str, str]) -> Any:
    values = {
        k[len(service.env_prefix) :].lower(): v
        for k, v in env.items()
        if k.startswith(service.env_prefix)
    }
    return service.settings_cls(_env_prefix="DEPLOY_CHECK_UNUSED_", **values)


# --- Kubernetes policy ------------------------------------------------------------------------

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
_FACTORS = {
    None: 1.0,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
}


def quantity(value: object) -> float:
    match = _QUANTITY.match(str(value))
    if match is None:
        raise ValueError(f"not a quantity: {value!r}")
    return float(match.group(1)) * _FACTORS[match.group(2)]


def pod_spec(doc: Mapping[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def containers(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(doc)
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    if not selector:
        return False
    match = selector.get("matchLabels", selector)
    if not isinstance(match, Mapping) or not match:
        return False
    return all(labels.get(k) == v for k, v in match.items() if isinstance(v, str))


def check_workload_hygiene(rendered: Rendered) -> list[str]:
    """Every container of every workload: requests and limits, restricted securityContext."""
    problems = []
    for doc in rendered.docs:
        if doc.get("kind") not in WORKLOAD_KINDS:
            continue
        spec = pod_spec(doc)
        pod_sc = spec.get("securityContext", {})
        if pod_sc.get("seccompProfile", {}).get("type") not in {"RuntimeDefault", "Localhost"}:
            problems.append(
                f"{ident(doc)}: pod securityContext.seccompProfile must be RuntimeDefault"
            )
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(
                f"{ident(doc)}: automountServiceAccountToken must be false "
                f"(no service needs the Kubernetes API)"
            )
        for c in containers(doc):
            where = f"{ident(doc)} container {c['name']}"
            sc = c.get("securityContext", {})
            if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
                problems.append(f"{where}: runAsNonRoot must be true")
            uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
            if not isinstance(uid, int) or uid == 0:
                problems.append(f"{where}: runAsUser must be a non-zero uid")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation must be false")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: readOnlyRootFilesystem must be true")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                problems.append(f"{where}: capabilities must drop ALL")
            if sc.get("privileged"):
                problems.append(f"{where}: must not be privileged")
            resources = c.get("resources", {})
            for kind in ("requests", "limits"):
                for res in ("cpu", "memory"):
                    if res not in resources.get(kind, {}):
                        problems.append(f"{where}: resources.{kind}.{res} is missing")
            for res in ("cpu", "memory"):
                request = resources.get("requests", {}).get(res)
                limit = resources.get("limits", {}).get(res)
                if (
                    request is not None
                    and limit is not None
                    and quantity(request) > quantity(limit)
                ):
                    problems.append(f"{where}: {res} request {request} exceeds limit {limit}")
            if ":" not in c.get("image", "").rsplit("/", 1)[-1] and "@" not in c.get("image", ""):
                problems.append(f"{where}: image {c.get('image')!r} has no tag or digest")
            if c.get("image", "").endswith(":latest"):
                problems.append(f"{where}: image must not use the latest tag")
    return problems


def external_secrets(rendered: Rendered) -> set[str]:
    annotations = (rendered.kustomization.get("metadata") or {}).get("annotations") or {}
    raw = annotations.get(EXTERNAL_SECRETS_ANNOTATION, "")
    return {name.strip() for name in raw.split(",") if name.strip()}


def secret_keys(doc: Mapping[str, Any]) -> set[str]:
    return set(doc.get("data") or {}) | set(doc.get("stringData") or {})


def secret_value(doc: Mapping[str, Any], key: str) -> str | None:
    if key in (doc.get("stringData") or {}):
        return str(doc["stringData"][key])
    if key in (doc.get("data") or {}):
        return base64.b64decode(doc["data"][key]).decode()
    return None


def check_references(rendered: Rendered) -> list[str]:
    """Every Secret and ConfigMap a pod or the database uses exists (or is declared external)."""
    problems = []
    config_maps = {d["metadata"]["name"]: d for d in rendered.of_kind("ConfigMap")}
    secrets = {d["metadata"]["name"]: d for d in rendered.of_kind("Secret")}
    external = external_secrets(rendered)
    # CloudNativePG creates "<cluster>-app" for the application owner.
    generated = {f"{d['metadata']['name']}-app" for d in rendered.of_kind("Cluster")}
    for name in sorted(external & set(secrets)):
        problems.append(f"Secret {name} is rendered and also declared external")

    def secret(where: str, name: str, key: str | None = None) -> None:
        if name in secrets:
            if key is not None and key not in secret_keys(secrets[name]):
                problems.append(f"{where}: Secret {name} has no key {key!r}")
        elif name not in external and name not in generated:
            problems.append(
                f"{where}: Secret {name} is neither rendered, generated by an "
                f"operator, nor listed in {EXTERNAL_SECRETS_ANNOTATION}"
            )

    def config_map(where: str, name: str, key: str | None = None) -> None:
        if name not in config_maps:
            problems.append(f"{where}: ConfigMap {name} is not rendered")
        elif key is not None and key not in (config_maps[name].get("data") or {}):
            problems.append(f"{where}: ConfigMap {name} has no key {key!r}")

    for doc in rendered.docs:
        if doc.get("kind") not in WORKLOAD_KINDS:
            continue
        for volume in pod_spec(doc).get("volumes", []):
            if "secret" in volume:
                secret(ident(doc), volume["secret"]["secretName"])
            if "configMap" in volume:
                config_map(ident(doc), volume["configMap"]["name"])
        for c in containers(doc):
            where = f"{ident(doc)} container {c['name']}"
            for source in c.get("envFrom", []):
                if "configMapRef" in source:
                    config_map(where, source["configMapRef"]["name"])
                if "secretRef" in source:
                    secret(where, source["secretRef"]["name"])
            for var in c.get("env", []):
                ref = var.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    secret(where, ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"])
                if "configMapKeyRef" in ref:
                    config_map(where, ref["configMapKeyRef"]["name"], ref["configMapKeyRef"]["key"])
    for cluster in rendered.of_kind("Cluster"):
        for role in cluster["spec"].get("managed", {}).get("roles", []):
            name = role.get("passwordSecret", {}).get("name")
            if name is None:
                continue
            where = f"{ident(cluster)} role {role['name']}"
            secret(where, name, "username" if name in secrets else None)
            if name in secrets:
                secret(where, name, "password")
                username = secret_value(secrets[name], "username")
                if username is not None and username != role["name"]:
                    problems.append(
                        f"{where}: Secret {name} has username {username!r}; "
                        f"CloudNativePG needs the role's name"
                    )
    return problems


# Secrets whose value has a shape the settings check: their placeholders keep that shape.
_SECRET_SHAPES = {
    "NOTIFIER_PII_KEYS": "deploy-check:" + base64.b64encode(b"\0" * 32).decode(),
}


def container_env(
    rendered: Rendered, container: Mapping[str, Any], base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The container's environment as the kubelet builds it over the image's own (``base``);
    secrets are placeholders."""
    env: dict[str, str] = dict(base or {})
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            cm = rendered.named("ConfigMap", source["configMapRef"]["name"])
            env.update({k: str(v) for k, v in ((cm or {}).get("data") or {}).items()})
        if "secretRef" in source:
            sec = rendered.named("Secret", source["secretRef"]["name"])
            env.update({k: f"secret-{k.lower()}" for k in secret_keys(sec or {})})
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = expand(str(var["value"]), env)
        elif "secretKeyRef" in var.get("valueFrom", {}):
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = _SECRET_SHAPES.get(
                var["name"], re.sub(r"[^a-z0-9]", "-", f"secret-{ref['name']}-{ref['key']}")
            )
        elif "configMapKeyRef" in var.get("valueFrom", {}):
            ref = var["valueFrom"]["configMapKeyRef"]
            cm = rendered.named("ConfigMap", ref["name"])
            env[var["name"]] = str(((cm or {}).get("data") or {}).get(ref["key"], ""))
        else:
            env[var["name"]] = "downward-api-value"
    return env


def http_port(container: Mapping[str, Any]) -> int | None:
    for port in container.get("ports", []):
        if port.get("name") == "http":
            return int(port["containerPort"])
    return None


def probe_port(probe: Mapping[str, Any], container: Mapping[str, Any]) -> int | None:
    port = probe.get("httpGet", {}).get("port")
    if isinstance(port, int):
        return port
    return next(
        (int(p["containerPort"]) for p in container.get("ports", []) if p.get("name") == port), None
    )


def kafka_cluster(bootstrap: str) -> str | None:
    host = bootstrap.split(",")[0].rsplit(":", 1)[0].split(".")[0]
    return host.removesuffix("-kafka-bootstrap") if host.endswith("-kafka-bootstrap") else None


def check_services(rendered: Rendered, facts: Facts) -> list[str]:
    """Each service: Deployment, probes, spread, PDB, Service, migration Job, ScaledObject,
    settings; its consumer group scales on lag up to the partition count."""
    problems = []
    topics = {
        t["spec"].get("topicName", t["metadata"]["name"]): t for t in rendered.of_kind("KafkaTopic")
    }
    clusters = rendered.of_kind("Cluster")
    for service in facts.services.values():
        name = service.name
        deployment = rendered.named("Deployment", name)
        if deployment is None:
            problems.append(f"{name}: no Deployment named {name}")
            continue
        where = ident(deployment)
        pod = pod_spec(deployment)
        pod_labels = deployment["spec"]["template"]["metadata"].get("labels", {})
        main = next((c for c in pod["containers"] if c["name"] == name), None)
        if main is None:
            problems.append(f"{where}: no container named {name}")
            continue
        if not selects(deployment["spec"]["selector"], pod_labels):
            problems.append(f"{where}: selector does not match the pod labels")
        # The runbook's two-step apply selects on these labels.
        if deployment["metadata"].get("labels", {}).get(COMPONENT) != "service":
            problems.append(f"{where}: needs the label {COMPONENT}=service")

        # Probes: each kind, on the HTTP port, on the right path.
        port = http_port(main)
        if port is None:
            problems.append(f"{where}: container has no port named http")
        expected = {
            "startupProbe": "/livez",
            "livenessProbe": "/livez",
            "readinessProbe": "/readyz",
        }
        for probe_name, path in expected.items():
            probe = main.get(probe_name)
            if probe is None:
                problems.append(f"{where}: {probe_name} is missing")
                continue
            if probe.get("httpGet", {}).get("path") != path:
                problems.append(f"{where}: {probe_name} must GET {path}")
            if port is not None and probe_port(probe, main) != port:
                problems.append(f"{where}: {probe_name} does not probe the http port {port}")

        # Settings, as the pod will see them.
        env = container_env(rendered, main, image_env(service))
        setting_problems = settings_problems(service, env, where)
        problems += setting_problems
        settings = None if setting_problems else make_settings(service, env)
        if settings is not None:
            if port is not None and settings.http_port != port:
                problems.append(
                    f"{where}: {service.env_prefix}HTTP_PORT={settings.http_port} "
                    f"but the container port is {port}"
                )
            db = urlsplit(settings.database_url)
            hosts = {f"{c['metadata']['name']}-rw" for c in clusters}
            if clusters and (db.hostname or "").split(".")[0] not in hosts:
                problems.append(
                    f"{where}: database host {db.hostname} is not the read-write "
                    f"service of a rendered CloudNativePG Cluster {sorted(hosts)}"
                )
            databases = {
                c["spec"].get("bootstrap", {}).get("initdb", {}).get("database") for c in clusters
            }
            if clusters and db.path.lstrip("/") not in databases:
                problems.append(
                    f"{where}: database {db.path.lstrip('/')!r} is not created by "
                    f"the Cluster ({sorted(str(d) for d in databases)})"
                )

        if not any(
            selects(t.get("labelSelector"), pod_labels)
            for t in pod.get("topologySpreadConstraints", [])
        ):
            problems.append(f"{where}: no topologySpreadConstraint selects its pods")
        if not any(
            selects(p["spec"].get("selector"), pod_labels)
            for p in rendered.of_kind("PodDisruptionBudget")
        ):
            problems.append(f"{where}: no PodDisruptionBudget selects its pods")
        svc = rendered.named("Service", name)
        if svc is None or not selects({"matchLabels": svc["spec"].get("selector", {})}, pod_labels):
            problems.append(f"{where}: no Service {name} selecting its pods")
        elif not any(p.get("targetPort") in {"http", port} for p in svc["spec"]["ports"]):
            problems.append(f"Service/{name}: no port targets the container's http port")

        # Migration Job: same image, `migrate`, same settings.
        job = rendered.named("Job", f"{name}-migrate")
        if job is None:
            problems.append(f"{where}: no migration Job {name}-migrate")
        else:
            job_container = pod_spec(job)["containers"][0]
            if job_container.get("image") != main.get("image"):
                problems.append(
                    f"{ident(job)}: image {job_container.get('image')} differs "
                    f"from the Deployment's {main.get('image')}"
                )
            if job["metadata"].get("labels", {}).get(COMPONENT) != "migration":
                problems.append(f"{ident(job)}: needs the label {COMPONENT}=migration")
            if job_container.get("args") != ["migrate"]:
                problems.append(f"{ident(job)}: args must be [migrate]")
            if pod_spec(job).get("restartPolicy") not in {"Never", "OnFailure"}:
                problems.append(f"{ident(job)}: restartPolicy must be Never or OnFailure")
            problems += settings_problems(
                service, container_env(rendered, job_container, image_env(service)), ident(job)
            )

        # Autoscaling on the consumer group's lag, capped at the partition count.
        scalers = [
            s
            for s in rendered.of_kind("ScaledObject")
            if s["spec"]["scaleTargetRef"].get("name") == name
            and s["spec"]["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
        ]
        if service.consumes and len(scalers) != 1:
            problems.append(
                f"{where}: expected one ScaledObject targeting it, found {len(scalers)}"
            )
        for scaler in scalers:
            problems += check_scaler(scaler, deployment, service, settings, topics)
    return problems


def check_scaler(
    scaler: Mapping[str, Any],
    deployment: Mapping[str, Any],
    service: Service,
    settings: Any,
    topics: Mapping[str, Mapping[str, Any]],
) -> list[str]:
    where = ident(scaler)
    spec = scaler["spec"]
    problems = []
    if "replicas" in deployment["spec"]:
        problems.append(
            f"{ident(deployment)}: spec.replicas is set, but {where} owns the "
            f"replica count (each apply would reset it)"
        )
    prefix = settings.topic_prefix if settings is not None else ""
    consumed = {prefix + topic for topic in service.consumes}
    missing = sorted(t for t in consumed if t not in topics)
    if missing:
        problems.append(f"{where}: consumed topics without a KafkaTopic: {missing}")
    ceiling = max(
        (int(topics[t]["spec"].get("partitions", 0)) for t in consumed if t in topics), default=0
    )
    minimum = int(spec.get("minReplicaCount", 0))
    maximum = int(spec.get("maxReplicaCount", 100))
    if minimum < 1:
        problems.append(
            f"{where}: minReplicaCount must be at least 1: the pods also run the "
            f"outbox relay and the REST API, which must never scale to zero"
        )
    if maximum > ceiling:
        problems.append(
            f"{where}: maxReplicaCount {maximum} exceeds the partition count "
            f"{ceiling} of the topics it consumes (the extra pods would sit idle)"
        )
    if maximum < minimum:
        problems.append(f"{where}: maxReplicaCount {maximum} < minReplicaCount {minimum}")
    fallback = spec.get("fallback", {}).get("replicas")
    if fallback is not None and not minimum <= int(fallback) <= maximum:
        problems.append(f"{where}: fallback replicas {fallback} outside [{minimum}, {maximum}]")
    kafka = [t for t in spec["triggers"] if t["type"] == "kafka"]
    if not kafka:
        problems.append(f"{where}: no kafka trigger (it must scale on consumer lag)")
    for trigger in kafka:
        meta = trigger["metadata"]
        unknown = sorted(set(meta) - KEDA_KAFKA_PARAMETERS)
        if unknown:
            problems.append(f"{where}: unknown Kafka scaler parameters {unknown}")
        if settings is not None:
            if meta.get("consumerGroup") != settings.group_id():
                problems.append(
                    f"{where}: consumerGroup {meta.get('consumerGroup')!r} is not "
                    f"the service's group {settings.group_id()!r}"
                )
            if meta.get("bootstrapServers") != settings.kafka_bootstrap:
                problems.append(
                    f"{where}: bootstrapServers {meta.get('bootstrapServers')!r} "
                    f"differs from the service's {settings.kafka_bootstrap!r}"
                )
        if "topic" in meta and meta["topic"] not in consumed:
            problems.append(f"{where}: topic {meta['topic']!r} is not one {service.name} consumes")
        if not str(meta.get("lagThreshold", "")).isdigit() or int(meta["lagThreshold"]) < 1:
            problems.append(f"{where}: lagThreshold must be a positive integer")
        if str(meta.get("allowIdleConsumers", "false")).lower() == "true":
            problems.append(f"{where}: allowIdleConsumers must stay false (cap at partitions)")
        if meta.get("offsetResetPolicy", "latest") != "earliest":
            problems.append(
                f"{where}: offsetResetPolicy must be earliest, as the consumers' auto_offset_reset"
            )
    return problems


def check_topics(rendered: Rendered, facts: Facts) -> list[str]:
    """Every contract topic, and only those, with partitions, replicas and retention."""
    problems = []
    prefixes = set()
    bootstraps = set()
    for service in facts.services.values():
        deployment = rendered.named("Deployment", service.name)
        main = (
            next((c for c in pod_spec(deployment)["containers"] if c["name"] == service.name), None)
            if deployment
            else None
        )
        if main is None:
            continue
        env = container_env(rendered, main)
        prefixes.add(env.get(f"{service.env_prefix}TOPIC_PREFIX", ""))
        bootstraps.add(env.get(f"{service.env_prefix}KAFKA_BOOTSTRAP", ""))
    if len(prefixes) > 1:
        problems.append(f"the services use different topic prefixes: {sorted(prefixes)}")
    if len(bootstraps) > 1:
        problems.append(f"the services use different Kafka bootstraps: {sorted(bootstraps)}")
    prefix = next(iter(prefixes), "")
    clusters = {kafka_cluster(b) for b in bootstraps}
    if None in clusters:
        problems.append(
            f"Kafka bootstrap {sorted(bootstraps)} is not a Strimzi bootstrap "
            f"service (<cluster>-kafka-bootstrap)"
        )
    by_name: dict[str, dict[str, Any]] = {}
    for topic in rendered.of_kind("KafkaTopic"):
        name = topic["spec"].get("topicName", topic["metadata"]["name"])
        if name in by_name:
            problems.append(f"topic {name} has two KafkaTopics")
        by_name[name] = topic
    expected = {prefix + name: f for name, f in facts.topics.items()}
    for name in sorted(set(expected) - set(by_name)):
        problems.append(f"contract topic {name} has no KafkaTopic")
    for name in sorted(set(by_name) - set(expected)):
        problems.append(f"KafkaTopic {name} is not a topic of the contract")
    for name, topic in sorted(by_name.items()):
        if name not in expected:
            continue
        want = expected[name]
        spec = topic["spec"]
        where = ident(topic)
        cluster = topic["metadata"].get("labels", {}).get("strimzi.io/cluster")
        if cluster is None:
            problems.append(f"{where}: no strimzi.io/cluster label (the operator ignores it)")
        elif clusters and cluster not in clusters:
            problems.append(
                f"{where}: strimzi.io/cluster={cluster} but the services connect "
                f"to {sorted(str(c) for c in clusters)}"
            )
        partitions = spec.get("partitions")
        if not isinstance(partitions, int) or partitions < want.partitions:
            problems.append(f"{where}: partitions {partitions} < the contract's {want.partitions}")
        replicas = spec.get("replicas")
        config = spec.get("config", {})
        if not isinstance(replicas, int):
            problems.append(f"{where}: replicas must be set")
        else:
            isr = int(config.get("min.insync.replicas", 1))
            if isr > replicas or (replicas > 1 and isr >= replicas):
                problems.append(
                    f"{where}: min.insync.replicas {isr} with {replicas} replicas "
                    f"stops producers (acks=all) when one broker is down"
                )
        retention = config.get("retention.ms")
        if retention is None or int(retention) != want.retention_ms:
            problems.append(
                f"{where}: retention.ms {retention} != {want.retention_ms} (collections_kit.topics)"
            )
    return problems


# --- alerts and runbook -----------------------------------------------------------------------

PROMQL_WORDS = {
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "rate",
    "irate",
    "increase",
    "delta",
    "idelta",
    "deriv",
    "predict_linear",
    "histogram_quantile",
    "label_replace",
    "label_join",
    "abs",
    "absent",
    "absent_over_time",
    "ceil",
    "floor",
    "round",
    "clamp",
    "clamp_min",
    "clamp_max",
    "changes",
    "resets",
    "time",
    "timestamp",
    "vector",
    "scalar",
    "sort",
    "sort_desc",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "last_over_time",
    "quantile_over_time",
    "present_over_time",
    "exp",
    "ln",
    "log2",
    "log10",
    "sqrt",
    "inf",
    "nan",
    "humanize",
    "humanizePercentage",
}


def promql_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression (strings, label matchers, ranges stripped)."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', " ", expr)
    text = re.sub(r"'(?:\\.|[^'\\])*'", " ", text)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    tokens = re.findall(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)", text)
    return {t for t in tokens if t not in PROMQL_WORDS}


def external_metric(metric: str) -> bool:
    """Exported by another exporter (EXTERNAL_METRICS), not by the code."""
    return any(metric == p or (p.endswith("_") and metric.startswith(p)) for p in EXTERNAL_METRICS)


def markdown_anchors(text: str) -> set[str]:
    anchors = set()
    for line in text.splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            heading = re.sub(r"[`*_]", "", match.group(1)).strip().lower()
            anchors.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", heading)))
    return anchors


def check_alerts(rendered: Rendered, facts: Facts) -> tuple[list[str], str]:
    problems = []
    anchors = markdown_anchors(RUNBOOK.read_text()) if RUNBOOK.exists() else set()
    if not RUNBOOK.exists():
        problems.append("docs/runbook.md is missing")
    alerts = 0
    pending_total = set()
    monitors = rendered.of_kind("ServiceMonitor")
    for monitor in monitors:
        for service in facts.services.values():
            svc = rendered.named("Service", service.name)
            if svc is None:
                continue
            labels = svc["metadata"].get("labels", {})
            selector = monitor["spec"]["selector"]
            ok = all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())
            for expr in selector.get("matchExpressions", []):
                if expr["operator"] == "In":
                    ok = ok and labels.get(expr["key"]) in expr.get("values", [])
            if not ok:
                problems.append(f"{ident(monitor)} does not select Service/{service.name}")
            ports = {p.get("name") for p in svc["spec"]["ports"]}
            for endpoint in monitor["spec"].get("endpoints", []):
                if endpoint.get("port") not in ports:
                    problems.append(
                        f"{ident(monitor)}: port {endpoint.get('port')} is not a "
                        f"port of Service/{service.name}"
                    )
    for rule_doc in rendered.of_kind("PrometheusRule"):
        for group in rule_doc["spec"].get("groups", []):
            for rule in group.get("rules", []):
                if "alert" not in rule:
                    continue
                alerts += 1
                where = f"alert {rule['alert']}"
                annotations = rule.get("annotations", {})
                if rule.get("labels", {}).get("severity") not in {"critical", "warning", "info"}:
                    problems.append(f"{where}: labels.severity must be critical, warning or info")
                for key in ("summary", "description", "runbook_url"):
                    if not annotations.get(key):
                        problems.append(f"{where}: annotation {key} is missing")
                url = annotations.get("runbook_url", "")
                if url:
                    path, _, anchor = url.partition("#")
                    if path != "docs/runbook.md" or anchor not in anchors:
                        problems.append(
                            f"{where}: runbook_url {url} has no section in docs/runbook.md"
                        )
                pending = {
                    m.strip()
                    for m in annotations.get(PENDING_METRICS_ANNOTATION, "").split(",")
                    if m.strip()
                }
                pending_total |= pending
                for metric in sorted(pending & facts.metrics):
                    problems.append(
                        f"{where}: {metric} is exported now: remove it from "
                        f"{PENDING_METRICS_ANNOTATION}"
                    )
                for metric in sorted(promql_metrics(str(rule["expr"]))):
                    if (
                        metric not in facts.metrics
                        and not external_metric(metric)
                        and metric not in pending
                    ):
                        problems.append(
                            f"{where}: metric {metric} is not exported by the code "
                            f"(nor external, nor in {PENDING_METRICS_ANNOTATION})"
                        )
    return problems, f"{alerts} alerts, {len(pending_total)} pending metrics"


def check_runbook(facts: Facts) -> list[str]:
    if not RUNBOOK.exists():
        return ["docs/runbook.md is missing"]
    text = RUNBOOK.read_text().lower()
    problems = []
    for topic, words in {
        "scaling": ("## scaling",),
        "DLQ replay": ("replay",),
        "secret rotation": ("## rotating secrets",),
        "alerts": ("## alerts",),
    }.items():
        if not all(w in text for w in words):
            problems.append(f"docs/runbook.md has no section on {topic}")
    for service in facts.services:
        if service not in text:
            problems.append(f"docs/runbook.md never mentions {service}")
    return problems


# --- Grafana dashboards -----------------------------------------------------------------------

# Variables Grafana defines itself; any other $name in a query must be a dashboard variable.
GRAFANA_BUILTINS = {
    "__interval",
    "__interval_ms",
    "__rate_interval",
    "__range",
    "__range_s",
    "__range_ms",
    "__from",
    "__to",
    "__name",
    "__dashboard",
    "__org",
    "__user",
}
_GRAFANA_VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+)|\[\[(\w+)\]\])")
# Grafana's uid limit; a longer one is refused on import.
GRAFANA_UID = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
GRID_COLUMNS = 24
# Client-side `kubectl apply` copies the whole object into an annotation of at most 256 KiB.
DASHBOARD_MAX_BYTES = 200_000


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def dashboard_panels(panels: Iterable[Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside (collapsed) rows too."""
    for panel in panels:
        if isinstance(panel, dict):
            yield panel
            yield from dashboard_panels(panel.get("panels") or [])


def variable_query_expr(query: Any) -> str:
    """The PromQL inside a query variable: label_values(expr, label), query_result(expr)."""
    text = str(query.get("query", "") if isinstance(query, dict) else query).strip()
    match = re.fullmatch(r"label_values\(\s*(.*?)\s*,\s*\w+\s*\)", text, re.S)
    if match:
        return match.group(1)
    if re.fullmatch(r"label_values\(\s*\w+\s*\)|label_names\(.*\)|metrics\(.*\)", text, re.S):
        return ""
    match = re.fullmatch(r"query_result\((.*)\)", text, re.S)
    return match.group(1) if match else text


def _dashboard_fields(name: str, dashboard: Mapping[str, Any], size: int) -> list[str]:
    problems = []
    if size > DASHBOARD_MAX_BYTES:
        problems.append(f"{name}: over {DASHBOARD_MAX_BYTES} bytes (kubectl apply's annotation)")
    if not GRAFANA_UID.match(str(dashboard.get("uid", ""))):
        problems.append(f"{name}: uid must be 1-40 letters, digits, - or _")
    if not isinstance(dashboard.get("title"), str) or not dashboard["title"].strip():
        problems.append(f"{name}: no title")
    if not isinstance(dashboard.get("schemaVersion"), int):
        problems.append(f"{name}: no integer schemaVersion")
    if dashboard.get("id") is not None:
        problems.append(f"{name}: id must be null or absent (Grafana assigns it per instance)")
    if not isinstance(dashboard.get("panels"), list) or not dashboard["panels"]:
        problems.append(f"{name}: no panels")
    return problems


def _panel_layout(where: str, panel: Mapping[str, Any], ids: set[int]) -> list[str]:
    """The panel's id is an integer no other panel has; it sits inside the grid."""
    problems = []
    pid = panel.get("id")
    if not isinstance(pid, int) or isinstance(pid, bool):
        problems.append(f"{where} has no integer id")
    elif pid in ids:
        problems.append(f"{where}: id {pid} is used twice")
    else:
        ids.add(pid)
    if not panel.get("type"):
        problems.append(f"{where} has no type")
    grid = panel.get("gridPos") or {}
    if not all(isinstance(grid.get(k), int) for k in ("h", "w", "x", "y")):
        problems.append(f"{where}: gridPos needs integer h, w, x and y")
    elif min(grid["w"], grid["h"]) < 1 or grid["x"] < 0 or grid["x"] + grid["w"] > GRID_COLUMNS:
        problems.append(f"{where}: gridPos outside the {GRID_COLUMNS} columns")
    return problems


def dashboard_problems(name: str, text: str, facts: Facts) -> list[str]:
    """What Grafana needs to load ``text`` as a dashboard, and every metric a query reads
    exported by the code (or by an EXTERNAL_METRICS exporter)."""
    try:
        dashboard = json.loads(text)
    except json.JSONDecodeError as exc:
        return [f"{name}: not JSON: {exc}"]
    if not isinstance(dashboard, dict):
        return [f"{name}: not a JSON object"]
    problems = _dashboard_fields(name, dashboard, len(text.encode()))
    if not isinstance(dashboard.get("panels"), list):
        return problems
    variables = {
        v.get("name"): v for v in dashboard.get("templating", {}).get("list", []) if "name" in v
    }
    sources = {n for n, v in variables.items() if v.get("type") == "datasource"}
    queried = {n: v for n, v in variables.items() if v.get("type") == "query"}
    exprs = [(f"variable {n}", variable_query_expr(v.get("query", ""))) for n, v in queried.items()]
    # Where each query reads from: a data source variable, so one JSON serves any Grafana.
    uses = [(f"variable {n}", v.get("datasource")) for n, v in queried.items()]
    ids: set[int] = set()
    for panel in dashboard_panels(dashboard["panels"]):
        where = f"{name}: panel {panel.get('id')} {panel.get('title', '')!r}"
        problems += _panel_layout(where, panel, ids)
        if panel.get("type") == "row":
            continue
        targets = panel.get("targets") or []
        refs = [t.get("refId") for t in targets]
        if not targets:
            problems.append(f"{where} has no query")
        elif len(set(refs)) != len(refs) or not all(refs):
            problems.append(f"{where}: each query needs its own refId")
        uses += [(where, panel.get("datasource")), *((where, t.get("datasource")) for t in targets)]
        for target in targets:
            expr = target.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                problems.append(f"{where}: query {target.get('refId')} has no expr")
            else:
                exprs.append((where, expr))
    for where, source in uses:
        uid = source.get("uid", "") if isinstance(source, dict) else str(source or "")
        ref = _GRAFANA_VARIABLE.fullmatch(uid)
        if ref and next(g for g in ref.groups() if g) not in sources:
            problems.append(f"{where}: data source {uid} is not a datasource variable")
    for where, expr in exprs:
        for groups in _GRAFANA_VARIABLE.findall(expr):
            var = next(g for g in groups if g)
            if var not in variables and var not in GRAFANA_BUILTINS:
                problems.append(f"{where}: ${var} is not a dashboard variable")
        for metric in sorted(promql_metrics(_GRAFANA_VARIABLE.sub(" ", expr))):
            if metric not in facts.metrics and not external_metric(metric):
                problems.append(f"{where}: metric {metric} is not exported by the code")
    return problems


def check_dashboards(facts: Facts) -> tuple[list[str], str]:
    files = dashboard_files()
    if not files:
        return [f"no dashboard in {DASHBOARDS.relative_to(ROOT)}"], ""
    problems = []
    panels = 0
    for path in files:
        text = path.read_text()
        problems += dashboard_problems(str(path.relative_to(ROOT)), text, facts)
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            panels += sum(1 for _ in dashboard_panels(json.loads(text)["panels"]))
    return problems, f"{len(files)} dashboards, {panels} panels, every query's metrics exported"


def check_dashboard_configmaps(rendered: Rendered) -> list[str]:
    """The overlay ships every dashboard, as it stands in the repository, in a ConfigMap the
    Grafana sidecar loads (label grafana_dashboard: "1")."""
    shipped: dict[str, str] = {}
    for config_map in rendered.of_kind("ConfigMap"):
        labels = config_map["metadata"].get("labels") or {}
        if labels.get(GRAFANA_DASHBOARD_LABEL) == "1":
            shipped |= config_map.get("data") or {}
    problems = []
    for path in dashboard_files():
        if path.name not in shipped:
            problems.append(
                f'no ConfigMap labelled {GRAFANA_DASHBOARD_LABEL}: "1" holds {path.name} '
                f"(components/dashboards in the overlay)"
            )
        elif shipped[path.name] != path.read_text():
            problems.append(f"the ConfigMap's {path.name} differs from {path.relative_to(ROOT)}")
    return problems


def _bind_mounts(svc: Mapping[str, Any]) -> dict[str, Path]:
    """A compose service's bind mounts: target path -> source file (relative to deploy/)."""
    mounts = {}
    for volume in svc.get("volumes") or []:
        if isinstance(volume, str) and volume.startswith((".", "/")):
            source, target = volume.split(":")[:2]
            mounts[target] = (COMPOSE.parent / source).resolve()
        elif isinstance(volume, dict) and volume.get("type") == "bind":
            mounts[str(volume["target"])] = (COMPOSE.parent / str(volume["source"])).resolve()
    return mounts


def check_compose_monitoring(facts: Facts) -> tuple[list[str], str]:
    """compose's Prometheus scrapes every service; its Grafana has it as a data source and
    loads every dashboard, through provisioning files that exist and say so."""
    services: dict[str, Any] = yaml.safe_load(COMPOSE.read_text()).get("services", {})
    problems = []
    for needed in ("prometheus", "grafana"):
        if needed not in services:
            problems.append(f"compose: no {needed} service")
    if problems:
        return problems, ""
    mounts = {name: _bind_mounts(svc) for name, svc in services.items()}
    for name, by_target in mounts.items():
        for source in by_target.values():
            if not source.exists():
                problems.append(f"compose service {name} mounts {source}, which does not exist")
    if problems:
        return problems, ""

    scraped: set[str] = set()
    for source in mounts["prometheus"].values():
        config = yaml.safe_load(source.read_text()) if source.is_file() else None
        for job in (config or {}).get("scrape_configs", []) if isinstance(config, dict) else []:
            for static in job.get("static_configs", []):
                scraped |= {str(t).rsplit(":", 1)[0] for t in static.get("targets", [])}
    for service in facts.services:
        if service not in scraped:
            problems.append(f"compose: prometheus does not scrape {service}")

    grafana = mounts["grafana"]
    provisioned = {
        kind: [
            yaml.safe_load(source.read_text())
            for target, source in grafana.items()
            if target.startswith(f"/etc/grafana/provisioning/{kind}/")
        ]
        for kind in ("datasources", "dashboards")
    }
    datasources = [d for doc in provisioned["datasources"] for d in doc.get("datasources", [])]
    if not any(
        d.get("type") == "prometheus" and urlsplit(str(d.get("url"))).hostname == "prometheus"
        for d in datasources
    ):
        problems.append("compose: grafana has no provisioned data source on the prometheus service")
    paths = {
        str(p["options"]["path"]).rstrip("/")
        for doc in provisioned["dashboards"]
        for p in doc.get("providers", [])
        if p.get("type", "file") == "file" and p.get("options", {}).get("path")
    }
    for path in dashboard_files():
        targets = [t for t, source in grafana.items() if source == path.resolve()]
        if not any(str(PurePosixPath(t).parent) in paths for t in targets):
            problems.append(
                f"compose: grafana does not load {path.relative_to(ROOT)} (mounted into a "
                f"provisioned dashboards path)"
            )
    return problems, f"prometheus scrapes {len(scraped)} targets; grafana provisioned"


# --- compose ----------------------------------------------------------------------------------

_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?]([^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with nothing set in the environment: the default."""
    return _INTERPOLATION.sub(lambda m: m.group(2) or "", value)


def check_compose(facts: Facts) -> tuple[list[str], str]:
    problems = []
    doc = yaml.safe_load(COMPOSE.read_text())
    schema_file = importlib.resources.files("check_jsonschema.builtin_schemas.vendor").joinpath(
        "compose-spec.json"
    )
    schema = json.loads(schema_file.read_text())
    validator_cls = jsonschema.validators.validator_for(schema)
    for error in validator_cls(schema).iter_errors(doc):
        where = ".".join(str(p) for p in error.path) or "(root)"
        problems.append(f"compose.yaml: {where}: {error.message}")
    services: dict[str, Any] = doc.get("services", {})
    for name, svc in services.items():
        depends = svc.get("depends_on", {})
        for target in depends if isinstance(depends, list) else depends.keys():
            if target not in services:
                problems.append(f"compose service {name} depends on unknown {target}")
        build = svc.get("build")
        if isinstance(build, dict):
            context = (COMPOSE.parent / build.get("context", ".")).resolve()
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            if not dockerfile.exists():
                problems.append(f"compose service {name}: {dockerfile} does not exist")
    for name, svc in services.items():
        entrypoint = svc.get("entrypoint") or []
        if list(entrypoint)[-2:] == ["python", "-c"] and svc.get("command"):
            try:
                compile(str(svc["command"][0]), f"compose service {name}", "exec")
            except SyntaxError as exc:
                problems.append(f"compose service {name}: its Python does not compile: {exc}")
    kafka = services.get("kafka", {})
    roles = str((kafka.get("environment") or {}).get("KAFKA_PROCESS_ROLES", ""))
    if "controller" not in roles:
        problems.append(
            "compose: kafka must run in KRaft mode (KAFKA_PROCESS_ROLES with controller)"
        )
    if "postgres" not in services:
        problems.append("compose: no postgres service")
    images = {}
    for service in facts.services.values():
        svc = services.get(service.name)
        if svc is None:
            problems.append(f"compose: no service {service.name}")
            continue
        images[service.name] = svc.get("image")
        env = image_env(service) | {
            k: interpolate(str(v)) for k, v in (svc.get("environment") or {}).items()
        }
        problems += settings_problems(service, env, f"compose service {service.name}")
        if not svc.get("healthcheck"):
            problems.append(f"compose service {service.name}: no healthcheck")
        build = svc.get("build") or {}
        if Path(str(build.get("dockerfile", ""))).name != f"{service.name}.Dockerfile":
            problems.append(
                f"compose service {service.name}: must build "
                f"deploy/docker/{service.name}.Dockerfile"
            )
        migrations = [
            n
            for n, s in services.items()
            if s.get("image") == svc.get("image") and s.get("command") == ["migrate"]
        ]
        if not migrations:
            problems.append(f"compose: no migration step for {service.name}")
        depends = svc.get("depends_on", {})
        for migration in migrations:
            condition = (
                depends.get(migration, {}).get("condition") if isinstance(depends, dict) else None
            )
            if condition != "service_completed_successfully":
                problems.append(
                    f"compose service {service.name} must wait for {migration} "
                    f"(condition: service_completed_successfully)"
                )
        for migration in migrations:
            menv = image_env(service) | {
                k: interpolate(str(v))
                for k, v in (services[migration].get("environment") or {}).items()
            }
            problems += settings_problems(service, menv, f"compose service {migration}")
    return problems, f"{len(services)} services, compose-spec schema"


# --- Dockerfiles ------------------------------------------------------------------------------


def dockerignore_patterns() -> list[tuple[bool, str]]:
    patterns = []
    path = ROOT / ".dockerignore"
    for raw in path.read_text().splitlines() if path.exists() else []:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = str(PurePosixPath(line.lstrip("!").strip().rstrip("/")))
        patterns.append((negate, pattern.lstrip("/")))
    return patterns


def _match(pattern: str, path: str) -> bool:
    """One .dockerignore pattern against one path (Go filepath.Match plus ``**``)."""
    regex = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex, i = regex + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            regex, i = regex + ".*", i + 2
        elif pattern[i] == "*":
            regex, i = regex + "[^/]*", i + 1
        elif pattern[i] == "?":
            regex, i = regex + "[^/]", i + 1
        elif pattern[i] == "[" and "]" in pattern[i:]:
            end = pattern.index("]", i)
            regex, i = regex + pattern[i : end + 1].replace("[!", "[^"), end + 1
        else:
            regex, i = regex + re.escape(pattern[i]), i + 1
    return re.fullmatch(regex, path) is not None


def docker_excluded(path: str, patterns: list[tuple[bool, str]]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a parent matches."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negate, pattern in patterns:
        if any(_match(pattern, prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


def dockerfile_stages(path: Path) -> tuple[list[str], list[list[Any]]]:
    """The base image and the instructions of each stage, with ARG defaults substituted."""
    import dockerfile  # type: ignore[import-not-found]

    commands = dockerfile.parse_string(path.read_text())
    args = {
        c.value[0].split("=", 1)[0]: c.value[0].split("=", 1)[1]
        for c in commands
        if c.cmd == "ARG" and "=" in c.value[0]
    }
    bases: list[str] = []
    stages: list[list[Any]] = []
    for c in commands:
        if c.cmd == "FROM":
            stages.append([])
            bases.append(
                re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), c.value[0])
            )
        elif stages:
            stages[-1].append(c)
    return bases, stages


def stage_env(stage: Iterable[Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for c in stage:
        if c.cmd == "ENV":
            values = list(c.value)
            env.update(dict(zip(values[0::2], values[1::2], strict=False)))
    return env


def image_env(service: Service) -> dict[str, str]:
    """The environment the service's image sets (its Dockerfile's runtime stage)."""
    path = DOCKER / f"{service.name}.Dockerfile"
    if not path.exists():
        return {}
    _, stages = dockerfile_stages(path)
    return stage_env(stages[-1]) if stages else {}


def dockerfile_problems(
    path: Path, service: Service, patterns: list[tuple[bool, str]]
) -> list[str]:
    """One service's Dockerfile: stages, user, final-stage contents, entrypoint, sources."""
    rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    problems: list[str] = []
    bases, stages = dockerfile_stages(path)
    if len(stages) < 2:
        return [f"{rel}: must be multi-stage (a builder and a runtime stage)"]
    final = stages[-1]
    if bases[-1] != bases[0]:
        problems.append(
            f"{rel}: the runtime stage ({bases[-1]}) must use the builder's "
            f"image ({bases[0]}): the virtualenv links to its interpreter"
        )
    if not re.search(r":[\w.-]+", bases[-1].rsplit("/", 1)[-1]) or bases[-1].endswith(":latest"):
        problems.append(f"{rel}: base image {bases[-1]} must be pinned to a tag or digest")
    users = [c.value[0] for c in final if c.cmd == "USER"]
    uid = users[-1].split(":")[0] if users else ""
    if not uid.isdigit() or int(uid) == 0:
        problems.append(
            f"{rel}: the runtime stage must end as a numeric non-root USER "
            f"(found {users[-1] if users else 'none'})"
        )
    for c in final:
        if c.cmd == "RUN" and BUILD_TOOLS.search(" ".join(c.value)):
            problems.append(
                f"{rel}:{c.start_line}: build tools or an installer in the "
                f"runtime stage: {c.original[:80]}"
            )
        if c.cmd in {"COPY", "ADD"} and not any(f.startswith("--from=") for f in c.flags):
            problems.append(
                f"{rel}:{c.start_line}: the runtime stage copies from the "
                f"context; copy the built virtualenv from the builder instead"
            )
        if c.cmd == "COPY" and any(".cache" in v or v.endswith("/uv") for v in c.value):
            problems.append(f"{rel}:{c.start_line}: copies a cache or uv into the runtime")
    entry = [c for c in final if c.cmd == "ENTRYPOINT"]
    if (
        not entry
        or not entry[-1].json
        or list(entry[-1].value) != ["python", "-m", service.package]
    ):
        problems.append(
            f'{rel}: ENTRYPOINT must be the exec form ["python", "-m", "{service.package}"]'
        )
    env = stage_env(final)
    port = env.get(f"{service.env_prefix}HTTP_PORT")
    exposed = {v.split("/")[0] for c in final if c.cmd == "EXPOSE" for v in c.value}
    if port is None or port not in exposed:
        problems.append(f"{rel}: EXPOSE must match {service.env_prefix}HTTP_PORT ({port})")
    if env.get(f"{service.env_prefix}HTTP_HOST") not in {"0.0.0.0", "::"}:
        problems.append(
            f"{rel}: set {service.env_prefix}HTTP_HOST=0.0.0.0 (the default "
            f"127.0.0.1 is unreachable from outside the container)"
        )
    builder_text = " ".join(
        " ".join(c.value) for stage in stages[:-1] for c in stage if c.cmd in {"RUN", "ENV"}
    )
    if (
        "uv sync" not in builder_text
        or "--no-dev" not in builder_text
        or not (
            "--frozen" in builder_text
            or "UV_FROZEN 1" in builder_text
            or "UV_FROZEN=1" in builder_text
        )
    ):
        problems.append(
            f"{rel}: the builder must `uv sync --no-dev` from the lock (--frozen or UV_FROZEN=1)"
        )
    sources: list[str] = []
    for stage in stages[:-1]:
        for c in stage:
            if c.cmd in {"COPY", "ADD"} and not any(f.startswith("--from=") for f in c.flags):
                sources += list(c.value[:-1])
    for needed in ("uv.lock", "libs/collections-kit/", f"services/{service.name}/"):
        if needed not in sources:
            problems.append(f"{rel}: the builder must COPY {needed}")
    for source in sources:
        target = ROOT / source
        if not target.exists():
            problems.append(f"{rel}: COPY source {source} does not exist")
            continue
        files = [target] if target.is_file() else [p for p in target.rglob("*") if p.is_file()]
        kept = [
            p for p in files if patterns and not docker_excluded(str(p.relative_to(ROOT)), patterns)
        ]
        if patterns and not kept:
            problems.append(f"{rel}: COPY {source}: .dockerignore excludes all of it")
    return problems


def _copy_into(source: Path, dest: Path, patterns: list[tuple[bool, str]]) -> None:
    """COPY of one context path, minus what .dockerignore drops."""
    files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
    for file in files:
        if docker_excluded(str(file.relative_to(ROOT)), patterns):
            continue
        target = dest / file.name if source.is_file() else dest / file.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file, target)


def dry_run_builder(service: Service) -> list[str]:
    """Run the builder stage's ``uv`` commands as written, without Docker: on a copy of the
    build context (after .dockerignore), with this machine's Python 3.11 and uv's cache. Then
    the virtualenv must run ``python -m <package>`` and hold the Alembic migrations.
    Not run: the base image, the RUN that installs uv, the runtime stage."""
    path = DOCKER / f"{service.name}.Dockerfile"
    _, stages = dockerfile_stages(path)
    patterns = dockerignore_patterns()
    uv = shutil.which("uv")
    if uv is None:
        return ["uv is not on PATH"]
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="deploy-check-") as tmp:
        context, venv = Path(tmp) / "src", Path(tmp) / "venv"
        context.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "VIRTUAL_ENV"))}
        ran = 0
        for c in stages[0]:
            if c.cmd == "ENV":
                values = list(c.value)
                env.update(dict(zip(values[0::2], values[1::2], strict=False)))
            elif c.cmd == "COPY" and not any(f.startswith("--from=") for f in c.flags):
                *sources, dest = c.value
                for source in sources:
                    _copy_into(ROOT / source, context / dest, patterns)
            elif c.cmd == "RUN" and " ".join(c.value).lstrip().startswith("uv "):
                # The image's paths, mapped onto this machine.
                env.update(
                    UV_PROJECT_ENVIRONMENT=str(venv),
                    UV_PYTHON=sys.executable,
                    UV_LINK_MODE="symlink",
                )
                command = " ".join(c.value).strip().replace("uv ", f"{uv} ", 1)
                run = subprocess.run(
                    ["bash", "-c", command],
                    cwd=context,
                    env=env,
                    capture_output=True,
                    text=True,
                    check=False,
                )
                ran += 1
                if run.returncode != 0:
                    return [
                        f"{path.name}:{c.start_line}: `{' '.join(c.value).strip()}` "
                        f"failed: {run.stderr.strip()[-800:]}"
                    ]
        if ran == 0:
            return [f"{path.name}: the builder runs no uv command"]
        package = next(venv.glob(f"lib/python*/site-packages/{service.package}"), None)
        if package is None or not (package / "__init__.py").is_file():
            problems.append(
                f"{path.name}: {service.package} is not installed as a package "
                f"(an editable install would need the sources in the image)"
            )
        elif not any((package / "migrations" / "versions").glob("*.py")):
            problems.append(f"{path.name}: the installed {service.package} has no migrations")
        # The entry point imports the whole service; an unknown command exits 2 with usage.
        run = subprocess.run(
            [str(venv / "bin" / "python"), "-m", service.package, "usage?"],
            cwd=tmp,
            capture_output=True,
            text=True,
            check=False,
            env={"PATH": os.environ.get("PATH", "")},
        )
        if run.returncode != 2 or "usage" not in run.stderr:
            problems.append(
                f"{path.name}: `python -m {service.package}` fails in the built "
                f"virtualenv: {run.stderr.strip()[-400:]}"
            )
    return problems


def check_builders(facts: Facts) -> tuple[list[str], str]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        results = pool.map(dry_run_builder, facts.services.values())
    problems = [problem for result in results for problem in result]
    return problems, "uv sync as in each builder stage; package, entry point, migrations"


def check_dockerfiles(facts: Facts) -> tuple[list[str], str]:
    problems = []
    patterns = dockerignore_patterns()
    if not patterns:
        problems.append(".dockerignore is missing: the whole repository would be sent")
    for unwanted in (
        ".git/HEAD",
        ".venv/bin/python",
        ".cache/bin/kustomize",
        "services/workflow/tests/unit/x.py",
    ):
        if patterns and not docker_excluded(unwanted, patterns):
            problems.append(f".dockerignore lets {unwanted} into the build context")
    for service in facts.services.values():
        path = DOCKER / f"{service.name}.Dockerfile"
        if not path.exists():
            problems.append(f"{path.relative_to(ROOT)} is missing")
            continue
        problems += dockerfile_problems(path, service, patterns)
    return problems, f"{len(facts.services)} Dockerfiles (BuildKit parser), .dockerignore"


# --- main -------------------------------------------------------------------------------------


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("-v", "--verbose", action="store_true", help="list passing checks too")
    args = parser.parse_args(list(argv) if argv is not None else None)
    started = time.perf_counter()
    report = Report(verbose=args.verbose)
    facts = load_facts()

    report.run("yamllint deploy/", check_yamllint)
    report.run("CRD schemas in deploy/schemas are valid JSON Schema", check_crd_schema_files)
    report.run("compose.yaml", partial(check_compose, facts))
    report.run("Dockerfiles", partial(check_dockerfiles, facts))
    report.run("Dockerfiles: builder stages dry-run without Docker", partial(check_builders, facts))
    report.run("runbook", partial(check_runbook, facts))
    report.run("Grafana dashboards: fields, panels, metrics", partial(check_dashboards, facts))
    report.run("compose: Prometheus and Grafana", partial(check_compose_monitoring, facts))

    kustomize: Path | None = None

    def install() -> tuple[list[str], str]:
        nonlocal kustomize
        kustomize = ensure_kustomize()
        return [], str(kustomize.relative_to(ROOT) if kustomize.is_relative_to(ROOT) else kustomize)

    report.run(f"kustomize {KUSTOMIZE_VERSION}", install)
    for overlay in OVERLAYS:
        if kustomize is None:
            break
        rendered: list[Rendered] = []

        def build(overlay: str = overlay, out: list[Rendered] = rendered) -> tuple[list[str], str]:
            assert kustomize is not None
            out.append(render(kustomize, overlay))
            return [], f"{len(out[0].docs)} resources"

        report.run(f"[{overlay}] kustomize build", build)
        if not rendered:
            continue
        r = rendered[0]
        report.run(f"[{overlay}] schemas", partial(validate_schemas, r))
        report.run(f"[{overlay}] topics: contract <-> KafkaTopics", partial(check_topics, r, facts))
        report.run(
            f"[{overlay}] services: probes, spread, PDB, Job, KEDA, settings",
            partial(check_services, r, facts),
        )
        report.run(
            f"[{overlay}] workloads: requests/limits, securityContext",
            partial(check_workload_hygiene, r),
        )
        report.run(f"[{overlay}] Secret and ConfigMap references", partial(check_references, r))
        report.run(
            f"[{overlay}] Grafana dashboards in a sidecar ConfigMap",
            partial(check_dashboard_configmaps, r),
        )
        if r.of_kind("PrometheusRule") or r.of_kind("ServiceMonitor"):
            report.run(
                f"[{overlay}] alerts: metrics and runbook sections", partial(check_alerts, r, facts)
            )
    elapsed = time.perf_counter() - started
    if report.failures:
        print(
            f"deploy-check: {report.failures} of {report.failures + report.passed} checks "
            f"FAILED ({elapsed:.1f}s)"
        )
        return 1
    print(f"deploy-check: all {report.passed} checks ok ({elapsed:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
