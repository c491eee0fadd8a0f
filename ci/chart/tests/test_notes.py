"""NOTES.txt: a webhook URL per connector and the way to the admin queue.

`helm template` doesn't render NOTES.txt; `helm install --dry-run=client` does,
offline. ServiceMonitor is switched off there (install has no --api-versions)."""

import tomllib

import pytest
import yaml

from conftest import CHART, CI_VALUES, ci_id, helm, NAMESPACE, RELEASE


def notes(values_file, *extra: str) -> str:
    result = helm("install", RELEASE, str(CHART), "-n", NAMESPACE, "--dry-run=client", "-f", str(values_file),
                  "--set", "metrics.serviceMonitor.enabled=false", *extra)
    assert result.returncode == 0, result.stderr
    return result.stdout.split("NOTES:", 1)[1]


def connectors_of(values_file) -> list[dict]:
    config = yaml.safe_load(values_file.read_text()).get("config")
    if isinstance(config, str):
        config = tomllib.loads(config)
    return (config or {}).get("connectors") or [{"id": "custom", "channel": "custom"}]


def base_url(values_file) -> str:
    values = yaml.safe_load(values_file.read_text())
    receiver = values.get("receiver", {})
    if receiver.get("publicUrl"):
        return receiver["publicUrl"].rstrip("/")
    ingress = receiver.get("ingress", {})
    if ingress.get("enabled"):
        host = ingress["hosts"][0]["host"]
        return f"{'https' if ingress.get('tls') else 'http'}://{host}"
    return "http://127.0.0.1:8080"


@pytest.mark.parametrize("values_file", CI_VALUES, ids=ci_id)
def test_notes_print_a_webhook_url_per_connector(values_file):
    text = notes(values_file)
    base = base_url(values_file)
    for connector in connectors_of(values_file):
        path = "chat" if connector.get("channel") == "webchat" else "hooks"
        assert f"{base}/{path}/{connector['id']}" in text, (connector["id"], text)


def test_notes_show_how_to_reach_the_dead_deliveries():
    text = notes(CHART / "ci" / "default-values.yaml")
    assert "port-forward svc/mc-microclaw-admin 8082:8082" in text
    assert "microclaw admin deliveries list --status dead" in text
    text = notes(CHART / "ci" / "keda-values.yaml")
    assert "https://admin.example.com/admin" in text


def test_notes_follow_the_connectors_in_the_config():
    text = notes(CHART / "ci" / "default-values.yaml", "--set-json",
                 'config={"connectors":[{"id":"tg","channel":"telegram"},{"id":"chat","channel":"webchat"}]}')
    assert "http://127.0.0.1:8080/hooks/tg" in text
    assert "http://127.0.0.1:8080/chat/chat" in text
    assert "/hooks/custom" not in text
