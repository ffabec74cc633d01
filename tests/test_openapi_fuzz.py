"""schemathesis against the served OpenAPI document, the mock provider behind the gateway: whatever it
generates, no 5xx, and every error in its protocol's envelope. A few examples per operation keep it short."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from proxy.api.openapi import PATH
from tests.test_shutdown import _free_port

MASTER = "sk-fuzz-master-0123456789"
schema = schemathesis.openapi.from_path(str(PATH))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> str:
    d: Path = tmp_path_factory.mktemp("fuzz")
    port = _free_port()
    (d / "config.yaml").write_text(f"""
server: {{host: 127.0.0.1, port: {port}, master_key: {MASTER}}}
storage: {{database: "sqlite:///{d}/l.db"}}
providers: {{local: {{type: mock}}}}
models: [{{name: mock, targets: [{{provider: local, model: mock}}]}}]
""")
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config", str(d / "config.yaml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                with urllib.request.urlopen(url + "/health", timeout=1):
                    break
            except OSError:
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@schema.parametrize()
@settings(max_examples=4, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_no_server_error_and_every_error_in_its_envelope(case, gateway):
    if case.method == "GET" and case.path in ("/v1/responses", "/graphql"):
        return                                   # WebSockets: tests/test_ingress_websocket.py, test_graphql_*
    resp = case.call(base_url=gateway, headers={"Authorization": f"Bearer {MASTER}"}, timeout=10)
    assert resp.status_code < 500, (case.method, case.path, case.body, case.headers, resp.status_code)
    if resp.status_code >= 400:
        body = orjson.loads(resp.content)
        if case.path == "/graphql" and "errors" in body:           # GraphQL's own; the edge's are OpenAI's
            assert all(isinstance(e["message"], str) for e in body["errors"]), body
        elif case.path.startswith("/v1/messages"):
            assert body.get("type") == "error" and body["error"]["type"] and body["error"]["message"], (case.path, resp.status_code, body)
        else:
            assert isinstance(body["error"]["message"], str) and body["error"]["type"], body
