"""Pods: restricted security, shutdown timing, probes, ports and environment."""

import re
import tomllib

import pytest

from conftest import CHART, containers, env_of, fullname, minimal, pod_spec, render, render_result

KEDA = CHART / "ci" / "keda-values.yaml"
HPA = CHART / "ci" / "hpa-values.yaml"
ROLE_ARGS = {"receiver": ["receiver"], "worker": ["worker"], "admin": ["admin"], "discord-gateway": ["discord-gateway"]}


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m|h)?", duration)
    assert match, duration
    value, unit = int(match[1]), match[2] or "s"
    return value * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def test_every_pod_and_container_runs_restricted(ci_rendered):
    workloads = ci_rendered.workloads()
    assert workloads
    for workload in workloads:
        name = workload["metadata"]["name"]
        spec = pod_spec(workload)
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, name
        assert pod["runAsUser"] > 0 and pod["runAsGroup"] > 0, name
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(key), (name, key)
        assert not any("hostPath" in v for v in spec.get("volumes", [])), name
        tmp = [v for v in spec["volumes"] if v["name"] == "tmp"]
        assert tmp and "emptyDir" in tmp[0], name
        for container in containers(workload):
            ctx = container["securityContext"]
            where = f"{name}/{container['name']}"
            assert ctx["allowPrivilegeEscalation"] is False, where
            assert ctx["readOnlyRootFilesystem"] is True, where
            assert ctx["capabilities"]["drop"] == ["ALL"], where
            assert not ctx["capabilities"].get("add"), where
            assert not ctx.get("privileged"), where
            assert ctx.get("runAsNonRoot", pod["runAsNonRoot"]) is True, where
            assert ctx.get("runAsUser", pod["runAsUser"]) > 0, where
            assert ctx.get("seccompProfile", pod["seccompProfile"])["type"] in ("RuntimeDefault", "Localhost"), where
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"], where


def test_service_account_token_is_not_mounted(ci_rendered):
    for account in ci_rendered.of_kind("ServiceAccount"):
        assert account["automountServiceAccountToken"] is False


def test_worker_grace_period_is_longer_than_its_drain_deadline(ci_rendered):
    worker = ci_rendered.one("Deployment", fullname("worker"))
    [container] = pod_spec(worker)["containers"]
    drain = seconds(env_of(container)["MICROCLAW_WORKER__SHUTDOWN_GRACE"]["value"])
    assert pod_spec(worker)["terminationGracePeriodSeconds"] > drain


def test_rendering_fails_when_the_worker_grace_period_does_not_cover_the_drain():
    result = render_result(minimal(), values={"worker": {"shutdownGraceSeconds": 60, "terminationGracePeriodSeconds": 60}})
    assert result.returncode != 0
    assert "worker.terminationGracePeriodSeconds" in result.stderr


def test_receiver_pauses_in_pre_stop_before_it_stops(ci_rendered):
    receiver = ci_rendered.one("Deployment", fullname("receiver"))
    [container] = pod_spec(receiver)["containers"]
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pause > 0
    assert pod_spec(receiver)["terminationGracePeriodSeconds"] > pause
    strategy = receiver["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0


def test_roles_run_their_subcommand_with_probes_on_their_port(ci_rendered):
    for role, args in ROLE_ARGS.items():
        deployment = ci_rendered.get("Deployment", fullname(role))
        if deployment is None:
            assert role in ("admin", "discord-gateway")
            continue
        [container] = pod_spec(deployment)["containers"]
        assert container["args"] == args
        [port] = container["ports"]
        assert port["name"] == "http"
        listen_key = {"receiver": "RECEIVER", "admin": "ADMIN"}.get(role, "WORKER")
        listen = env_of(container)[f"MICROCLAW_{listen_key}__LISTEN"]["value"]
        assert listen.endswith(f":{port['containerPort']}")
        assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert env_of(container)["MICROCLAW_CONFIG"]["value"] == "/etc/microclaw/microclaw.toml"
        mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
        assert mount["mountPath"] == "/etc/microclaw" and mount["readOnly"] is True


def test_services_reach_the_roles_by_port_name(ci_rendered):
    for service in ci_rendered.of_kind("Service"):
        selector = service["spec"]["selector"]
        role = selector["app.kubernetes.io/component"]
        deployment = ci_rendered.one("Deployment", fullname(role))
        assert deployment["spec"]["template"]["metadata"]["labels"].items() >= selector.items()
        assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]


def test_no_container_lists_an_environment_variable_twice(ci_rendered):
    for workload in ci_rendered.workloads():
        for container in containers(workload):
            names = [e["name"] for e in container.get("env", [])]
            assert len(names) == len(set(names)), (workload["metadata"]["name"], names)


def test_extra_env_merges_by_name_with_the_role_winning():
    rendered = render(KEDA)  # RUST_BACKTRACE globally "1", receiver "full"
    receiver = env_of(pod_spec(rendered.one("Deployment", fullname("receiver")))["containers"][0])
    worker = env_of(pod_spec(rendered.one("Deployment", fullname("worker")))["containers"][0])
    assert receiver["RUST_BACKTRACE"]["value"] == "full"
    assert worker["RUST_BACKTRACE"]["value"] == "1"


@pytest.mark.parametrize("path", ["extraEnv", "worker.extraEnv"])
def test_extra_env_may_not_redefine_what_the_chart_sets(path):
    values: dict = {}
    node = values
    *parents, leaf = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = [{"name": "MICROCLAW_DATABASE__URL", "value": "postgres://elsewhere"}]
    result = render_result(minimal(), values=values)
    assert result.returncode != 0
    assert "MICROCLAW_DATABASE__URL is set by the chart" in result.stderr


def test_credentials_come_from_existing_secrets(ci_rendered):
    for workload in ci_rendered.workloads():
        for container in containers(workload):
            sources = [s["secretRef"]["name"] for s in container.get("envFrom", []) if "secretRef" in s]
            assert sources, workload["metadata"]["name"]


def config_checksums(rendered) -> set[str]:
    return {w["spec"]["template"]["metadata"]["annotations"]["checksum/config"] for w in rendered.workloads()}


def test_config_checksum_changes_when_the_config_changes():
    before = config_checksums(render(minimal()))
    same = config_checksums(render(minimal()))
    after = config_checksums(render(minimal(), values={"config": {"worker": {"turn_mode": "per_message"}}}))
    assert len(before) == 1 and len(after) == 1
    assert before == same
    assert before != after


def test_config_map_holds_the_toml_with_integers_kept_integers():
    rendered = render(KEDA)
    config = tomllib.loads(rendered.one("ConfigMap", fullname())["data"]["microclaw.toml"])
    assert config["database"]["max_connections"] == 20
    assert isinstance(config["database"]["max_connections"], int)
    assert config["worker"]["turn_concurrency"] == 16
    assert config["delivery"]["jitter"] == 0.2
    assert config["delivery"]["retry_schedule"] == ["5s", "30s", "2m"]
    assert [c["id"] for c in config["connectors"]] == ["slack", "telegram", "web"]


def test_a_toml_string_config_is_mounted_as_written():
    rendered = render(HPA)
    import yaml

    written = yaml.safe_load(HPA.read_text())["config"]
    assert rendered.one("ConfigMap", fullname())["data"]["microclaw.toml"].strip() == written.strip()


def test_invalid_toml_fails_rendering():
    result = render_result(minimal(), values={"config": "[database\nurl = 1"})
    assert result.returncode != 0
    assert "config is not valid TOML" in result.stderr


def test_database_url_in_config_is_refused():
    result = render_result(minimal(), values={"config": {"database": {"url": "postgres://x@y/z"}}})
    assert result.returncode != 0
    assert "config.database.url" in result.stderr


def test_a_database_is_required():
    result = render_result(values={})
    assert result.returncode != 0
    assert "database" in result.stderr


def test_discord_gateway_needs_a_gateway_connector():
    rendered = render(CHART / "ci" / "discord-gateway-values.yaml")
    gateway = rendered.one("Deployment", fullname("discord-gateway"))
    assert gateway["spec"]["replicas"] == 1
    assert gateway["spec"]["strategy"] == {"type": "Recreate"}
    result = render_result(minimal(), values={"discordGateway": {"enabled": True}})
    assert result.returncode != 0
    assert "gateway = true" in result.stderr


def test_receiver_ingress_publishes_only_webhooks_and_chat():
    ingress = render(KEDA).one("Ingress", fullname("receiver"))
    paths = {p["path"] for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]}
    assert paths == {"/hooks", "/chat"}
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            assert path["backend"]["service"] == {"name": fullname("receiver"), "port": {"name": "http"}}


def test_service_monitor_needs_the_prometheus_operator_api():
    assert render_result(KEDA, api_versions=()).returncode != 0
    rendered = render(KEDA)
    [monitor] = rendered.of_kind("ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "http"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    components = set(monitor["spec"]["selector"]["matchExpressions"][0]["values"])
    services = {s["spec"]["selector"]["app.kubernetes.io/component"] for s in rendered.of_kind("Service")}
    assert components <= services
    assert monitor["metadata"]["labels"]["release"] == "prometheus"


def test_network_policies_cover_every_pod(ci_rendered):
    policies = ci_rendered.of_kind("NetworkPolicy")
    if not policies:
        return
    selected = {p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in policies}
    roles = {w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] for w in ci_rendered.workloads()}
    assert roles <= selected
    migrate = next(p for p in policies if p["metadata"]["name"] == fullname("migrate"))
    assert migrate["spec"]["ingress"] == []


def test_standard_labels_everywhere_and_immutable_selectors(ci_rendered):
    for doc in ci_rendered.docs:
        labels = doc["metadata"]["labels"]
        for key in ("helm.sh/chart", "app.kubernetes.io/name", "app.kubernetes.io/instance",
                    "app.kubernetes.io/version", "app.kubernetes.io/managed-by"):
            assert key in labels, (doc["kind"], doc["metadata"]["name"], key)
    for deployment in ci_rendered.of_kind("Deployment"):
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert set(selector) == {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component"}


def test_image_by_tag_or_by_digest():
    [container] = pod_spec(render(minimal()).one("Deployment", fullname("worker")))["containers"]
    assert container["image"] == "ghcr.io/microclaw/microclaw:0.1.0"
    rendered = render(CHART / "ci" / "discord-gateway-values.yaml")
    [container] = pod_spec(rendered.one("Deployment", fullname("worker")))["containers"]
    assert re.fullmatch(r"registry\.example\.com/microclaw@sha256:[0-9a-f]{64}", container["image"])
