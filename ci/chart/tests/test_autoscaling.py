"""Autoscaling: HPA and KEDA own the replica count, never both on one Deployment."""

import pytest

from conftest import CHART, fullname, minimal, render, render_result

KEDA = CHART / "ci" / "keda-values.yaml"
HPA = CHART / "ci" / "hpa-values.yaml"

SCALED_OBJECT_SPEC_KEYS = {
    "scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod", "idleReplicaCount",
    "minReplicaCount", "maxReplicaCount", "fallback", "advanced", "triggers",
}
TRIGGER_KEYS = {"type", "name", "metadata", "authenticationRef", "metricType", "useCachedMetrics"}


def autoscaler_targets(rendered) -> list[tuple[str, str]]:
    """(kind of autoscaler, Deployment name) for every HPA and ScaledObject."""
    targets = []
    for kind in ("HorizontalPodAutoscaler", "ScaledObject"):
        for doc in rendered.of_kind(kind):
            ref = doc["spec"]["scaleTargetRef"]
            assert ref.get("kind", "Deployment") == "Deployment"
            targets.append((kind, ref["name"]))
    return targets


def test_no_replicas_where_an_autoscaler_owns_the_deployment(ci_rendered):
    owned = {name for _, name in autoscaler_targets(ci_rendered)}
    for deployment in ci_rendered.of_kind("Deployment"):
        name = deployment["metadata"]["name"]
        if name in owned:
            assert "replicas" not in deployment["spec"], f"{name} is autoscaled but renders replicas"
        else:
            assert deployment["spec"]["replicas"] >= 1, name
    for _, target in autoscaler_targets(ci_rendered):
        assert ci_rendered.get("Deployment", target), f"autoscaler targets missing Deployment {target}"


def test_hpa_and_scaled_object_never_target_the_same_deployment(ci_rendered):
    targets = [name for _, name in autoscaler_targets(ci_rendered)]
    assert len(targets) == len(set(targets)), targets


def test_ci_values_cover_both_worker_autoscalers():
    assert ("ScaledObject", fullname("worker")) in autoscaler_targets(render(KEDA))
    assert ("HorizontalPodAutoscaler", fullname("worker")) in autoscaler_targets(render(HPA))


def test_rendering_fails_when_the_worker_has_both_autoscalers():
    result = render_result(KEDA, values={"worker": {"autoscaling": {"enabled": True}}})
    assert result.returncode != 0
    assert "worker.autoscaling.enabled and worker.keda.enabled" in result.stderr


def test_keda_trigger_is_the_postgres_queue_depth_with_exact_metadata():
    rendered = render(KEDA)
    scaled = rendered.one("ScaledObject", fullname("worker"))
    spec = scaled["spec"]
    assert set(spec) <= SCALED_OBJECT_SPEC_KEYS, set(spec) - SCALED_OBJECT_SPEC_KEYS
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": fullname("worker")}
    assert spec["minReplicaCount"] <= spec["maxReplicaCount"]

    [trigger] = spec["triggers"]
    assert set(trigger) <= TRIGGER_KEYS
    assert trigger["type"] == "postgresql"
    metadata = trigger["metadata"]
    # The CRD leaves metadata free-form, so a misspelt key would pass its schema.
    assert set(metadata) == {"query", "targetQueryValue", "activationTargetQueryValue"}
    assert all(isinstance(v, str) for v in metadata.values()), metadata
    float(metadata["targetQueryValue"])
    float(metadata["activationTargetQueryValue"])
    query = " ".join(metadata["query"].split())
    assert "FROM apalis.jobs" in query
    assert "'microclaw.turns'" in query and "'microclaw.deliveries'" in query
    assert "status IN ('Pending','Queued')" in query
    assert "run_at <= now()" in query
    assert query.upper().startswith("SELECT COUNT(*)")

    auth_ref = trigger["authenticationRef"]
    assert auth_ref.get("kind", "TriggerAuthentication") == "TriggerAuthentication"
    auth = rendered.one("TriggerAuthentication", auth_ref["name"])
    [target] = auth["spec"]["secretTargetRef"]
    # The same Secret and key the pods read the database URL from.
    worker = rendered.one("Deployment", fullname("worker"))
    [container] = worker["spec"]["template"]["spec"]["containers"]
    db_env = next(e for e in container["env"] if e["name"] == "MICROCLAW_DATABASE__URL")
    assert target == {"parameter": "connection", **db_env["valueFrom"]["secretKeyRef"]}


def test_keda_query_and_target_are_values():
    query = "SELECT COUNT(*) FROM apalis.jobs WHERE job_type = 'microclaw.turns'"
    rendered = render(KEDA, values={"worker": {"keda": {"query": query, "targetQueryValue": "7.5"}}})
    metadata = rendered.one("ScaledObject", fullname("worker"))["spec"]["triggers"][0]["metadata"]
    assert metadata["query"] == query
    assert metadata["targetQueryValue"] == "7.5"


def test_keda_can_read_the_queue_with_its_own_secret():
    rendered = render(KEDA, values={"worker": {"keda": {"connectionSecret": {"name": "keda-reader"}}}})
    [target] = rendered.one("TriggerAuthentication", fullname("worker"))["spec"]["secretTargetRef"]
    assert target == {"parameter": "connection", "name": "keda-reader", "key": "DATABASE_URL"}


def test_receiver_hpa_is_autoscaling_v2_with_the_configured_targets():
    hpa = render(HPA).one("HorizontalPodAutoscaler", fullname("receiver"))
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["minReplicas"] == 3 and hpa["spec"]["maxReplicas"] == 12
    targets = {m["resource"]["name"]: m["resource"]["target"]["averageUtilization"] for m in hpa["spec"]["metrics"]}
    assert targets == {"cpu": 65, "memory": 80}


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, {"receiver", "worker"}),  # 2 replicas each; admin has 1
        ({"receiver": {"replicas": 1}, "worker": {"replicas": 1}}, set()),
        ({"admin": {"replicas": 3}}, {"receiver", "worker", "admin"}),
        ({"worker": {"replicas": 1, "keda": {"enabled": True, "minReplicaCount": 2}}}, {"receiver", "worker"}),
        ({"worker": {"keda": {"enabled": True, "minReplicaCount": 1}}}, {"receiver"}),
        ({"receiver": {"replicas": 5, "autoscaling": {"enabled": True, "minReplicas": 1}}}, {"worker"}),
        ({"receiver": {"pdb": {"enabled": False}}}, {"worker"}),
    ],
)
def test_pod_disruption_budgets_only_for_more_than_one_replica(values, expected):
    rendered = render(minimal(), values=values)
    names = {pdb["metadata"]["name"] for pdb in rendered.of_kind("PodDisruptionBudget")}
    assert names == {fullname(role) for role in expected}
    for pdb in rendered.of_kind("PodDisruptionBudget"):
        spec = pdb["spec"]
        assert ("maxUnavailable" in spec) != ("minAvailable" in spec)
        role = pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
        assert rendered.get("Deployment", fullname(role))
