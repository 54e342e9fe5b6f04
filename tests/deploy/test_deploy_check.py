"""``make deploy-check`` passes, and its checks catch the mistakes they are there for."""

from __future__ import annotations

import ast
import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scripts import deploy_check as dc

# The check runs as a process, and kustomize renders the overlays the tests mutate.
pytestmark = pytest.mark.subprocess


def test_deploy_check_passes() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "scripts.deploy_check"],
        cwd=dc.ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.fixture(scope="module")
def facts() -> dc.Facts:
    return dc.load_facts()


@pytest.fixture(scope="module")
def prod() -> dc.Rendered:
    return dc.render(dc.ensure_kustomize(), "prod")


def mutated(rendered: dc.Rendered) -> dc.Rendered:
    return dc.Rendered(
        rendered.overlay, copy.deepcopy(rendered.docs), copy.deepcopy(rendered.kustomization)
    )


def doc(rendered: dc.Rendered, kind: str, name: str) -> dict[str, Any]:
    found = rendered.named(kind, name)
    assert found is not None
    return found


def test_the_rendered_overlays_pass_every_policy(prod: dc.Rendered, facts: dc.Facts) -> None:
    assert dc.check_topics(prod, facts) == []
    assert dc.check_services(prod, facts) == []
    assert dc.check_workload_hygiene(prod) == []
    assert dc.check_references(prod) == []
    assert dc.check_alerts(prod, facts)[0] == []


def test_a_contract_topic_without_kafkatopic_is_caught(prod: dc.Rendered, facts: dc.Facts) -> None:
    r = mutated(prod)
    r.docs = [
        d
        for d in r.docs
        if d.get("kind") != "KafkaTopic" or d["spec"]["topicName"] != "collections.dlq.v1"
    ]
    assert "collections.dlq.v1 has no KafkaTopic" in " ".join(dc.check_topics(r, facts))


def test_wrong_retention_and_fewer_partitions_are_caught(
    prod: dc.Rendered, facts: dc.Facts
) -> None:
    r = mutated(prod)
    topic = doc(r, "KafkaTopic", "collections.dlq.v1")
    topic["spec"]["config"]["retention.ms"] = 604800000
    topic["spec"]["partitions"] = 3
    problems = " ".join(dc.check_topics(r, facts))
    assert "retention.ms" in problems
    assert "partitions 3" in problems


def test_missing_probe_and_limits_are_caught(prod: dc.Rendered, facts: dc.Facts) -> None:
    r = mutated(prod)
    container = dc.pod_spec(doc(r, "Deployment", "notifier"))["containers"][0]
    del container["livenessProbe"]
    del container["resources"]["limits"]
    assert "livenessProbe is missing" in " ".join(dc.check_services(r, facts))
    assert "resources.limits.memory is missing" in " ".join(dc.check_workload_hygiene(r))


def test_root_containers_are_caught(prod: dc.Rendered) -> None:
    r = mutated(prod)
    spec = dc.pod_spec(doc(r, "Deployment", "workflow"))
    spec["securityContext"]["runAsUser"] = 0
    assert "runAsUser must be a non-zero uid" in " ".join(dc.check_workload_hygiene(r))


def test_a_setting_the_service_does_not_know_is_caught(prod: dc.Rendered, facts: dc.Facts) -> None:
    r = mutated(prod)
    config = next(
        d for d in r.of_kind("ConfigMap") if d["metadata"]["name"].startswith("ledger-sync-config")
    )
    config["data"]["LEDGER_SYNC_KAFKA_BOOTSTRAPS"] = "elsewhere:9092"
    config["data"]["LEDGER_SYNC_HTTP_PORT"] = "9090"
    problems = " ".join(dc.check_services(r, facts))
    assert "LEDGER_SYNC_KAFKA_BOOTSTRAPS is not a setting" in problems


def test_scaling_beyond_the_partitions_or_to_zero_is_caught(
    prod: dc.Rendered, facts: dc.Facts
) -> None:
    r = mutated(prod)
    scaler = doc(r, "ScaledObject", "workflow")
    scaler["spec"]["maxReplicaCount"] = 12
    scaler["spec"]["minReplicaCount"] = 0
    scaler["spec"]["triggers"][0]["metadata"]["consumerGroup"] = "workflow-v2"
    problems = " ".join(dc.check_services(r, facts))
    assert "exceeds the partition count" in problems
    assert "minReplicaCount must be at least 1" in problems
    assert "is not the service's group 'workflow'" in problems


def test_a_missing_secret_is_caught(prod: dc.Rendered) -> None:
    r = mutated(prod)
    r.kustomization["metadata"]["annotations"][dc.EXTERNAL_SECRETS_ANNOTATION] = (
        "collections-db-workflow"
    )
    assert "Secret notifier-smtp is neither rendered" in " ".join(dc.check_references(r))


def test_an_alert_on_an_unknown_metric_is_caught(prod: dc.Rendered, facts: dc.Facts) -> None:
    r = mutated(prod)
    rule = doc(r, "PrometheusRule", "collections")["spec"]["groups"][0]["rules"][0]
    rule["expr"] = 'sum(rate(collections_no_such_metric_total{job="x"}[5m])) > 0'
    problems, _ = dc.check_alerts(r, facts)
    assert "collections_no_such_metric_total is not exported" in " ".join(problems)


def test_promql_metric_names_are_found() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, consumer) "
        '(rate(collections_consumer_batch_seconds_bucket{consumer=~"a|b"}[10m]))) > 10 '
        'unless on (consumer) up{job="workflow"} == 0'
    )
    assert dc.promql_metrics(expr) == {"collections_consumer_batch_seconds_bucket", "up"}


def test_code_metrics_are_found_in_the_source(facts: dc.Facts) -> None:
    assert {
        "collections_messages_consumed_total",
        "collections_consumer_batch_seconds_bucket",
        "collections_consumer_lag",
    } <= facts.metrics


def test_dockerignore_rules_follow_docker() -> None:
    patterns = [
        (False, "*"),
        (True, "services"),
        (False, "services/*/tests"),
        (False, "**/*.py[co]"),
    ]
    assert not dc.docker_excluded("services/workflow/src/workflow/app.py", patterns)
    assert dc.docker_excluded("services/workflow/tests/unit/test_x.py", patterns)
    assert dc.docker_excluded("services/workflow/src/x.pyc", patterns)
    assert dc.docker_excluded(".git/HEAD", patterns)


def test_unknown_fields_fail_the_schemas(prod: dc.Rendered) -> None:
    r = mutated(prod)
    container = dc.pod_spec(doc(r, "Deployment", "workflow"))["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")  # a typo
    doc(r, "KafkaTopic", "loans.overdue.v1")["spec"]["partition"] = 6  # another
    doc(r, "ScaledObject", "notifier")["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 5
    problems = " ".join(dc.validate_schemas(r)[0])
    assert "Deployment/workflow (Kubernetes 1.31.0)" in problems
    assert "readinesProbe" in problems
    assert "KafkaTopic/loans.overdue.v1" in problems
    assert "'partition'" in problems
    assert "ScaledObject/notifier" in problems
    assert "is not of type 'string'" in problems


def test_a_fat_or_root_final_stage_is_caught(tmp_path: Any, facts: dc.Facts) -> None:
    service = facts.services["workflow"]
    original = (dc.DOCKER / "workflow.Dockerfile").read_text()
    broken = original.replace("USER 10001:10001", "USER root").replace(
        "FROM ${PYTHON_IMAGE} AS runtime\n",
        "FROM ${PYTHON_IMAGE} AS runtime\nRUN apt-get update && apt-get install -y gcc\n",
    )
    path = tmp_path / "workflow.Dockerfile"
    path.write_text(broken)
    problems = " ".join(dc.dockerfile_problems(path, service, dc.dockerignore_patterns()))
    assert "numeric non-root USER" in problems
    assert "build tools or an installer in the runtime stage" in problems
    path.write_text(original)
    assert dc.dockerfile_problems(path, service, dc.dockerignore_patterns()) == []


def test_compose_settings_are_checked_against_the_code(facts: dc.Facts) -> None:
    service = facts.services["notifier"]
    env = dc.image_env(service) | {
        "NOTIFIER_DATABASE_URL": "postgresql+asyncpg://u:p@postgres:5432/collections",
        "NOTIFIER_KAFKA_BOOTSTRAP": "kafka:9092",
        "NOTIFIER_SMTP_TIMEOUT_S": "100",  # must be shorter than half the sending lease (120)
    }
    problems = dc.settings_problems(service, env, "compose service notifier")
    assert "do not validate" in " ".join(problems)


# --- the Grafana dashboard ------------------------------------------------------------------


def dashboard_text() -> str:
    (path,) = dc.dashboard_files()
    return path.read_text()


def test_the_dashboard_loads_and_ships_in_every_overlay(facts: dc.Facts) -> None:
    assert dc.check_dashboards(facts)[0] == []
    for overlay in dc.OVERLAYS:
        assert dc.check_dashboard_configmaps(dc.render(dc.ensure_kustomize(), overlay)) == []


def test_dashboard_mistakes_are_caught(facts: dc.Facts) -> None:
    board = json.loads(dashboard_text())
    del board["uid"]
    board["schemaVersion"] = "39"
    panels = [p for p in dc.dashboard_panels(board["panels"]) if p["type"] != "row"]
    panels[1]["id"] = panels[0]["id"]
    panels[2]["gridPos"]["x"] = 20
    panels[2]["gridPos"]["w"] = 6
    panels[3]["targets"][0]["expr"] = 'sum(rate(collections_no_such_metric_total{v="$nope"}[5m]))'
    panels[4]["targets"] = []
    problems = " | ".join(dc.dashboard_problems("d.json", json.dumps(board), facts))
    assert "uid must be" in problems
    assert "no integer schemaVersion" in problems
    assert f"id {panels[0]['id']} is used twice" in problems
    assert "gridPos outside the 24 columns" in problems
    assert "metric collections_no_such_metric_total is not exported by the code" in problems
    assert "$nope is not a dashboard variable" in problems
    assert "has no query" in problems
    assert dc.dashboard_problems("d.json", "{", facts)[0].startswith("d.json: not JSON")


def test_a_variable_on_an_unknown_metric_is_caught(facts: dc.Facts) -> None:
    board = json.loads(dashboard_text())
    board.setdefault("templating", {}).setdefault("list", []).append(
        {
            "name": "gone",
            "type": "query",
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "query": {"query": "label_values(collections_gone, variant)", "refId": "x"},
        }
    )
    problems = " ".join(dc.dashboard_problems("d.json", json.dumps(board), facts))
    assert "metric collections_gone is not exported by the code" in problems


def test_an_overlay_without_the_dashboard_configmap_is_caught(prod: dc.Rendered) -> None:
    r = mutated(prod)
    (config_map,) = [
        d
        for d in r.of_kind("ConfigMap")
        if d["metadata"].get("labels", {}).get(dc.GRAFANA_DASHBOARD_LABEL) == "1"
    ]
    (key,) = config_map["data"]
    config_map["data"][key] += " "
    assert "differs from" in " ".join(dc.check_dashboard_configmaps(r))
    r.docs.remove(config_map)
    assert "no ConfigMap labelled grafana_dashboard" in " ".join(dc.check_dashboard_configmaps(r))


def test_compose_grafana_and_prometheus_wiring_is_checked(
    tmp_path: Path, facts: dc.Facts, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(dc.DEPLOY / "monitoring", tmp_path / "monitoring")
    (tmp_path / "k8s").symlink_to(dc.K8S)
    compose = tmp_path / "compose.yaml"
    compose.write_text(dc.COMPOSE.read_text())
    monkeypatch.setattr(dc, "COMPOSE", compose)
    assert dc.check_compose_monitoring(facts)[0] == []
    scrape = tmp_path / "monitoring" / "prometheus.yaml"
    scrape.write_text(scrape.read_text().replace('"notifier:8080"', '"elsewhere:8080"'))
    provider = tmp_path / "monitoring" / "grafana-dashboards.yaml"
    provider.write_text(provider.read_text().replace("/etc/grafana/dashboards", "/srv/boards"))
    problems = " ".join(dc.check_compose_monitoring(facts)[0])
    assert "prometheus does not scrape notifier" in problems
    assert "grafana does not load deploy/k8s/components/dashboards/collections.json" in problems


def test_metric_names_made_in_a_comprehension_are_found() -> None:
    tree = ast.parse(
        "G = {n: Gauge(f'kpi_{n}', h) for n, h in (('roll_rate', 'x'), ('cure_rate', 'y'))}\n"
        "H = [Gauge(f'x_{n}', 'h') for n in names()]\n"
    )
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and n.args]
    found = [dc._metric_names(c.args[0], dc._enclosing_generators(c, parents)) for c in calls]
    assert ["kpi_roll_rate", "kpi_cure_rate"] in found
    # Names the check cannot know without running the code are not guessed.
    assert [] in found
