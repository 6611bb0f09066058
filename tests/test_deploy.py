"""The deployment files, checked with what runs here (no Docker engine, no cluster): they parse,
wire the roles together, probe the right endpoints, run as non-root and embed no secret."""

from __future__ import annotations

import re
import runpy
import subprocess
import zipfile
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
SECRETISH = re.compile(r"(SECRET|PASSWORD|KEY|DATABASE_URL)", re.I)


def test_compose_wires_two_web_instances_worker_relay_postgres_redis() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {
        "proxy",
        "web-a",
        "web-b",
        "worker",
        "relay",
        "migrate",
        "postgres",
        "redis",
        "mediamtx",
    } <= set(services)
    assert services["worker"]["command"] == ["camvoice", "worker"]
    assert services["relay"]["command"][:2] == ["camvoice", "relay"]
    assert services["mediamtx"]["profiles"] == ["mediamtx"]
    caddy = (DEPLOY / "Caddyfile").read_text()
    assert "web-a:8080 web-b:8080" in caddy and "health_uri /readyz" in caddy
    for name, service in services.items():
        env = service.get("environment") or {}
        for key, value in env.items():
            if SECRETISH.search(key):
                allowed = "${" in str(value) or str(value).startswith("/run/secrets/")
                assert allowed, f"{name}.{key} must come from the environment or a secret file"


def test_kubernetes_manifests() -> None:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "k8s/camvoice.yaml").read_text()) if d]
    by_kind: dict[str, list[dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    deployments = {d["metadata"]["name"]: d for d in by_kind["Deployment"]}
    assert set(deployments) == {"camvoice-web", "camvoice-worker", "camvoice-relay"}
    web = deployments["camvoice-web"]["spec"]["template"]["spec"]
    container = web["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for deployment in deployments.values():
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    hpa = by_kind["HorizontalPodAutoscaler"][0]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "camvoice-web" and hpa["minReplicas"] >= 2
    assert by_kind["Ingress"] and by_kind["Service"] and by_kind["Job"]
    relay_service = next(s for s in by_kind["Service"] if s["metadata"]["name"] == "camvoice-relay")
    assert relay_service["spec"]["ports"][0]["port"] == 443
    assert "Secret" not in by_kind  # referenced (secretRef / secretName), never embedded
    config = by_kind["ConfigMap"][0]["data"]
    assert not any(SECRETISH.search(k) and "HOMEGRAPH_KEY" not in k for k in config)


def test_dockerfile_is_multi_stage_and_non_root() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2
    assert re.search(r"^USER camvoice$", text, re.M)
    assert "uv sync --frozen --no-dev" in text
    assert "gir1.2-gst-rtsp-server-1.0" in text  # the relay runs from the same image


def test_gunicorn_config() -> None:
    config = runpy.run_path(str(DEPLOY / "gunicorn.conf.py"))
    assert config["worker_class"] == "gthread"
    assert config["accesslog"] is None
    assert config["graceful_timeout"] <= config["timeout"]


def test_lambda_build_makes_a_zip_with_the_handler(tmp_path: Path) -> None:
    subprocess.run([str(DEPLOY / "lambda/build")], check=True, capture_output=True)
    with zipfile.ZipFile(DEPLOY / "lambda/dist/camvoice-alexa-forwarder.zip") as archive:
        assert archive.namelist() == ["lambda_function.py"]
        assert "def lambda_handler" in archive.read("lambda_function.py").decode()
