"""The migration Job: a pre-install/pre-upgrade hook, or a plain resource for GitOps."""

import re

from conftest import CHART, fullname, hook_weight, minimal, pod_spec, render

HPA = CHART / "ci" / "hpa-values.yaml"  # renders the URL Secret itself
GITOPS = CHART / "ci" / "gitops-values.yaml"


def migration_job(rendered) -> dict:
    [job] = rendered.of_kind("Job")
    return job


def referenced(job: dict) -> dict[str, set[str]]:
    """ConfigMaps, Secrets and the ServiceAccount the Job's pod needs to start."""
    spec = pod_spec(job)
    refs = {"ConfigMap": set(), "Secret": set(), "ServiceAccount": {spec.get("serviceAccountName", "default")}}
    for volume in spec.get("volumes", []):
        if "configMap" in volume:
            refs["ConfigMap"].add(volume["configMap"]["name"])
        if "secret" in volume:
            refs["Secret"].add(volume["secret"]["secretName"])
    for container in spec["containers"]:
        for env in container.get("env", []):
            source = env.get("valueFrom", {})
            if "secretKeyRef" in source:
                refs["Secret"].add(source["secretKeyRef"]["name"])
            if "configMapKeyRef" in source:
                refs["ConfigMap"].add(source["configMapKeyRef"]["name"])
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                refs["Secret"].add(source["secretRef"]["name"])
            if "configMapRef" in source:
                refs["ConfigMap"].add(source["configMapRef"]["name"])
    return refs


def test_migration_job_is_a_pre_install_pre_upgrade_hook():
    job = migration_job(render(minimal()))
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert annotations["helm.sh/hook-weight"] == "0"
    assert set(annotations["helm.sh/hook-delete-policy"].split(",")) == {"before-hook-creation", "hook-succeeded"}
    spec = job["spec"]
    assert spec["backoffLimit"] >= 0
    assert spec["activeDeadlineSeconds"] > 0
    assert spec["ttlSecondsAfterFinished"] >= 0
    assert pod_spec(job)["restartPolicy"] == "Never"
    [container] = pod_spec(job)["containers"]
    assert container["args"] == ["migrate"]
    assert "ports" not in container and "livenessProbe" not in container


def test_chart_rendered_database_secret_is_a_hook_with_a_lower_weight():
    rendered = render(HPA)
    job = migration_job(rendered)
    secret = rendered.one("Secret", fullname("urls"))
    assert set(secret["metadata"]["annotations"]["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert hook_weight(secret) < hook_weight(job)
    # Roles read it too: it must survive the hook phase.
    assert "hook-succeeded" not in secret["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
    assert set(secret["stringData"]) == {"DATABASE_URL", "REDIS_URL"}
    assert fullname("urls") in referenced(job)["Secret"]


def test_everything_the_hook_job_needs_exists_before_it(ci_rendered):
    """A chart-rendered object the Job references must be an earlier hook, not a release resource
    (release resources are created only after the pre-install hooks have finished)."""
    job = migration_job(ci_rendered)
    if hook_weight(job) is None:
        return
    for kind, names in referenced(job).items():
        for name in names:
            doc = ci_rendered.get(kind, name)
            if doc is None:
                continue  # an existing object (or the namespace's default ServiceAccount)
            weight = hook_weight(doc)
            assert weight is not None, f"hook Job needs {kind} {name}, which is not a hook"
            assert weight < hook_weight(job), f"{kind} {name} weight {weight} is not below the Job's"


def test_hook_job_runs_with_the_same_config_as_the_roles():
    rendered = render(HPA)
    job = migration_job(rendered)
    [job_config] = referenced(job)["ConfigMap"]
    hook_copy = rendered.one("ConfigMap", job_config)
    release_config = rendered.one("ConfigMap", fullname())
    assert hook_copy["data"] == release_config["data"]
    assert hook_weight(release_config) is None


def test_without_helm_hooks_the_job_is_a_plain_resource_named_by_revision():
    rendered = render(GITOPS)
    job = migration_job(rendered)
    assert re.fullmatch(rf"{fullname('migrate-r1')}-[0-9a-f]{{8}}", job["metadata"]["name"])
    for doc in rendered.docs:
        annotations = doc["metadata"].get("annotations") or {}
        assert not any(k.startswith("helm.sh/hook") for k in annotations), doc["metadata"]["name"]
    # The Job reads the release's own objects and keeps user annotations.
    assert referenced(job)["ConfigMap"] == {fullname()}
    assert fullname("urls") in referenced(job)["Secret"]
    assert job["metadata"]["annotations"] == {"argocd.argoproj.io/sync-wave": "-1"}
    assert "ttlSecondsAfterFinished" not in job["spec"]  # -1 keeps it


def test_hook_job_does_not_use_a_service_account_created_by_the_release():
    job = migration_job(render(minimal()))
    assert pod_spec(job)["serviceAccountName"] == "default"
    job = migration_job(render(minimal(), values={"migrations": {"serviceAccountName": "migrator"}}))
    assert pod_spec(job)["serviceAccountName"] == "migrator"


def test_migrations_can_be_disabled():
    rendered = render(minimal(), values={"migrations": {"enabled": False}, "database": {"existingSecret": {"name": ""}, "url": "postgres://u:p@db/mc"}})
    assert rendered.of_kind("Job") == []
    secret = rendered.one("Secret", fullname("urls"))
    assert "annotations" not in secret["metadata"]


def test_without_helm_hooks_a_new_image_or_config_is_a_new_job():
    def name(values=None):
        return migration_job(render(GITOPS, values=values))["metadata"]["name"]

    assert name() == name({"receiver": {"replicas": 3}})
    assert name() != name({"image": {"tag": "0.1.1"}})
    assert name() != name({"config": {"worker": {"turn_mode": "per_message"}}})
    long = name({"fullnameOverride": "a" * 42})
    assert len(long) <= 63 and long.startswith("a" * 30)
