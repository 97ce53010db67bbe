"""The deployment files are valid: Prometheus config and alert rules (promtool,
from Debian's prometheus package), Kubernetes manifests, the Grafana dashboard."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def referenced_metrics() -> set[str]:
    """Metric names used by the dashboard and the alert rules."""
    from deploy_metrics import metric_names

    texts = [(DEPLOY / "grafana" / "vllm-sparse-dashboard.json").read_text(), (DEPLOY / "prometheus" / "alerts.yml").read_text()]
    return set().union(*(metric_names(text) for text in texts))


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool comes with Debian's prometheus (scripts/test.sh installs it)")
def test_promtool_accepts_config_and_rules():
    for command in (["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"]):
        done = subprocess.run(["promtool", *command], cwd=DEPLOY / "prometheus", capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def test_kubernetes_manifests_parse_and_probe_grpc_health():
    documents = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "vllm-sparse.yaml").read_text()))
    kinds = {doc["kind"]: doc for doc in documents}
    assert set(kinds) == {"Deployment", "Service"}
    container = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["grpc"]["port"] == 50051
    assert {port["containerPort"] for port in container["ports"]} == {8000, 50051}


def test_dashboard_panels_query_known_metrics():
    dashboard = json.loads((DEPLOY / "grafana" / "vllm-sparse-dashboard.json").read_text())
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
    assert all(target["expr"] for panel in dashboard["panels"] for target in panel["targets"])
    ours = {name for name in referenced_metrics() if name.startswith("vllm_sparse_")}
    assert ours == {
        "vllm_sparse_grpc_requests_total", "vllm_sparse_ffn_blocks_total", "vllm_sparse_ffn_neurons_total",
        "vllm_sparse_kernel_layers", "vllm_sparse_layer_sparsity_ratio",
    }
