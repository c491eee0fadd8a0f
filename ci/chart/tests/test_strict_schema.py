"""Combinations of switches the ci/*-values.yaml files don't cover, validated against
the strict Kubernetes schemas (run.sh validates the ci/ renders with the CLI)."""

import kubernetes_validate
import pytest

from conftest import minimal, render

CRD_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor"}

SCENARIOS = {
    "everything-off": {
        "admin": {"enabled": False},
        "migrations": {"enabled": False},
        "serviceAccount": {"create": False},
        "receiver": {"replicas": 1, "pdb": {"enabled": False}},
        "worker": {"replicas": 1},
    },
    "network-policy-ingress-only": {
        "networkPolicy": {"enabled": True},
        "worker": {"service": {"enabled": True}},
    },
    "url-secrets-and-pdb-percentages": {
        "database": {"existingSecret": {"name": ""}, "url": "postgresql://u:p@db.example.com/mc"},
        "redis": {"url": "rediss://:p@cache.example.com:6380/1"},
        "receiver": {"replicas": 4, "pdb": {"minAvailable": "50%"}},
        "worker": {"replicas": 3, "pdb": {"maxUnavailable": "25%"}},
    },
    "service-types-and-probes": {
        "receiver": {
            "service": {"type": "LoadBalancer", "port": 443, "annotations": {"example.com/lb": "external"}},
            "probes": {
                "startup": {"initialDelaySeconds": 1, "periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 60},
                "liveness": {"periodSeconds": 20, "timeoutSeconds": 3, "failureThreshold": 5},
                "readiness": {"periodSeconds": 3, "timeoutSeconds": 1, "failureThreshold": 1, "successThreshold": 2},
            },
        },
        "admin": {"service": {"type": "NodePort", "port": 8082}},
    },
    "keda-scale-to-zero": {
        "worker": {"keda": {"enabled": True, "minReplicaCount": 0, "activationTargetQueryValue": "1",
                            "fallback": {"failureThreshold": 0, "replicas": 0}}},
    },
    "extra-objects": {
        "extraObjects": [
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "{{ .Release.Name }}-extra",
                                                                    "labels": {"app.kubernetes.io/name": "microclaw",
                                                                               "app.kubernetes.io/instance": "mc",
                                                                               "app.kubernetes.io/version": "0.1.0",
                                                                               "app.kubernetes.io/managed-by": "Helm",
                                                                               "helm.sh/chart": "microclaw-0.1.0"}},
             "data": {"a": "b"}},
        ],
    },
}


@pytest.mark.parametrize("kube_version", ["1.30.0", "1.33.0"])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_scenario_renders_strictly_valid_objects(scenario, kube_version):
    rendered = render(minimal(), values=SCENARIOS[scenario], kube_version=kube_version)
    assert rendered.docs
    for doc in rendered.docs:
        if doc["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(doc, kube_version, strict=True)


def test_extra_objects_are_templated():
    rendered = render(minimal(), values=SCENARIOS["extra-objects"])
    assert rendered.one("ConfigMap", "mc-extra")["data"] == {"a": "b"}
