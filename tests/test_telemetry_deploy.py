"""deploy/: Docker is not runnable here, so the files are checked as data: they parse, the probes,
HPA and compose services are what the README promises, and the shipped configs pass our own validator."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from proxy.config import parse

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
ENV = {"LLM_SERVICE_MASTER_KEY": "sk-x", "DATABASE_URL": "postgresql://u@h/db", "REDIS_URL": "redis://r:6379/0"}


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def test_compose_brings_up_the_whole_stack():
    compose = docs("compose.yaml")[0]
    services = compose["services"]
    assert set(services) == {"proxy", "redis", "postgres", "jaeger", "prometheus"}
    assert services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    assert services["proxy"]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in services["prometheus"]["volumes"]
    prom = docs("prometheus.yml")[0]
    job = prom["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics" and job["static_configs"][0]["targets"] == ["proxy:8080"]
    metrics_key = services["proxy"]["environment"]["LLM_SERVICE_METRICS_KEY"]
    assert job["authorization"]["credentials"] in metrics_key
    cfg = parse(docs("config.compose.yaml")[0], env={**ENV, "LLM_SERVICE_METRICS_KEY": "k"})
    assert cfg.telemetry.tracing.endpoint == "http://jaeger:4318"
    assert cfg.storage.redis.startswith("redis://redis") and "@postgres:5432" in cfg.storage.database


def test_dockerfile_is_slim_non_root_with_healthcheck():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert re.search(r"^USER (?!root|0\b)\S+", text, re.M)
    assert "HEALTHCHECK" in text and "/health" in text
    assert "pip install ." in text


def test_kubernetes_manifests():
    by_kind = {d["kind"]: d for f in sorted((DEPLOY / "k8s").glob("*.yaml")) for d in docs(f"k8s/{f.name}")}
    assert set(by_kind) >= {"Deployment", "Service", "ConfigMap", "Secret", "HorizontalPodAutoscaler"}
    dep = by_kind["Deployment"]
    assert dep["spec"]["replicas"] >= 2
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["envFrom"][0]["secretRef"]["name"] == by_kind["Secret"]["metadata"]["name"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert by_kind["Service"]["spec"]["selector"] == labels
    hpa = by_kind["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": dep["metadata"]["name"]}
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 70
    assert hpa["spec"]["minReplicas"] >= 2
    # Every replica shares the same Redis and PostgreSQL, from the Secret.
    secret_keys = set(by_kind["Secret"]["stringData"])
    assert {"DATABASE_URL", "REDIS_URL", "LLM_SERVICE_MASTER_KEY"} <= secret_keys
    cfg = parse(yaml.safe_load(by_kind["ConfigMap"]["data"]["config.yaml"]), env=ENV)
    assert (cfg.storage.database, cfg.storage.redis) == (ENV["DATABASE_URL"], ENV["REDIS_URL"])
    assert cfg.routing.drain_seconds < pod["terminationGracePeriodSeconds"]
