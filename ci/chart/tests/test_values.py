"""values.schema.json and Chart.yaml constraints. Assertions don't depend on Helm's
error wording (it differs between Helm 3 and 4): a bad value must fail where the
same command with a good value passes."""

import pytest
import yaml

from conftest import CHART, helm, minimal, render_result


@pytest.mark.parametrize(
    ("good", "bad"),
    [
        ({"receiver": {"replicas": 2}}, {"receiver": {"replicaCount": 2}}),  # unknown key
        ({"worker": {"keda": {"enabled": False}}}, {"worker": {"keda": {"enabld": True}}}),
        ({"nameOverride": ""}, {"unknownTopLevel": True}),
        ({"receiver": {"port": 8080}}, {"receiver": {"port": 80}}),  # below 1024: non-root can't bind it
        ({"admin": {"port": 8082}}, {"admin": {"port": 70000}}),
        ({"receiver": {"service": {"type": "ClusterIP", "port": 80}}}, {"receiver": {"service": {"type": "ClusterIP", "port": 0}}}),
        ({"image": {"pullPolicy": "Always"}}, {"image": {"pullPolicy": "Sometimes"}}),
        ({"receiver": {"service": {"type": "NodePort", "port": 80}}}, {"receiver": {"service": {"type": "Public", "port": 80}}}),
        ({"securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000}},
         {"securityContext": {"runAsUser": 0, "runAsGroup": 1000, "fsGroup": 1000}}),
        ({"worker": {"keda": {"targetQueryValue": "20"}}}, {"worker": {"keda": {"targetQueryValue": "lots"}}}),
        ({"receiver": {"ingress": {"hosts": [{"host": "a.example.com", "paths": [{"path": "/hooks", "pathType": "Prefix"}]}]}}},
         {"receiver": {"ingress": {"hosts": [{"host": "a.example.com", "paths": [{"path": "/hooks", "pathType": "Glob"}]}]}}}),
    ],
)
def test_schema_rejects_unknown_keys_and_bad_values(good, bad):
    assert render_result(minimal(), values=good).returncode == 0
    assert render_result(minimal(), values=bad).returncode != 0


def test_lint_applies_the_schema_too(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"receiver": {"port": 80}}))
    assert helm("lint", "--strict", str(CHART), "-f", str(minimal())).returncode == 0
    assert helm("lint", "--strict", str(CHART), "-f", str(minimal()), "-f", str(bad)).returncode != 0


def test_every_object_the_chart_owns_closes_its_keys():
    """additionalProperties: false on every object schema with declared properties."""
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    open_objects = []

    def walk(node, path):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and node.get("additionalProperties") is not False:
                if path not in ("definitions.envVar",):  # a Kubernetes EnvVar: only its name is checked
                    open_objects.append(path)
            for key, value in node.items():
                walk(value, f"{path}.{key}" if path else key)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")

    walk(schema, "")
    assert open_objects == []


def test_chart_requires_kubernetes_1_30_for_the_pre_stop_sleep():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == ">=1.30.0-0"
    assert chart["appVersion"] == "0.1.0"
    assert render_result(minimal(), kube_version="1.29.0").returncode != 0
    assert render_result(minimal(), kube_version="1.30.0").returncode == 0
