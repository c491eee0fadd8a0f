"""Renders the MicroClaw chart with `helm template` for the tests.

HELM names the helm binary (ci/chart/run.sh sets it); it defaults to the one
run.sh installs under ci/chart/.tools.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

CI_DIR = Path(__file__).resolve().parents[1]
REPO = CI_DIR.parents[1]
CHART = Path(os.environ.get("MICROCLAW_CHART", REPO / "helm" / "microclaw"))
HELM = os.environ.get("HELM", str(CI_DIR / ".tools" / "helm" / "helm"))
CI_VALUES = sorted(CHART.glob("ci/*-values.yaml"))
SERVICE_MONITOR_API = "monitoring.coreos.com/v1"
RELEASE = "mc"
NAMESPACE = "chart-ci"


@dataclass
class Rendered:
    docs: list[dict]

    def of_kind(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d.get("kind") == kind]

    def get(self, kind: str, name: str) -> dict | None:
        for d in self.of_kind(kind):
            if d["metadata"]["name"] == name:
                return d
        return None

    def one(self, kind: str, name: str) -> dict:
        doc = self.get(kind, name)
        assert doc is not None, f"no {kind} {name}; have {[d['metadata']['name'] for d in self.of_kind(kind)]}"
        return doc

    def workloads(self) -> list[dict]:
        return [d for d in self.docs if d.get("kind") in ("Deployment", "Job", "StatefulSet", "DaemonSet")]


class RenderError(Exception):
    pass


_TMP = tempfile.mkdtemp(prefix="microclaw-chart-tests-")
atexit.register(shutil.rmtree, _TMP, True)


def _values_file(values: dict | None) -> list[str]:
    """Extra values go through a file: --set would reinterpret types and commas."""
    if not values:
        return []
    handle = tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=_TMP, delete=False)
    with handle:
        yaml.safe_dump(values, handle)
    return ["-f", handle.name]


def helm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([HELM, *args], capture_output=True, text=True, check=False)


@functools.lru_cache(maxsize=None)
def _render(files: tuple[str, ...], values_json: str, kube_version: str, api_versions: tuple[str, ...]):
    args = ["template", RELEASE, str(CHART), "-n", NAMESPACE, "--kube-version", kube_version]
    for f in files:
        args += ["-f", f]
    args += _values_file(json.loads(values_json))
    for api in api_versions:
        args += ["--api-versions", api]
    return helm(*args)


def render_result(
    *files: Path | str,
    values: dict | None = None,
    kube_version: str = "1.30.0",
    api_versions: tuple[str, ...] = (SERVICE_MONITOR_API,),
) -> subprocess.CompletedProcess:
    return _render(tuple(str(f) for f in files), json.dumps(values or {}, sort_keys=True), kube_version, tuple(api_versions))


def render(*files: Path | str, **kwargs) -> Rendered:
    result = render_result(*files, **kwargs)
    if result.returncode != 0:
        raise RenderError(result.stderr)
    return Rendered([d for d in yaml.safe_load_all(result.stdout) if d])


def minimal() -> Path:
    return CHART / "ci" / "default-values.yaml"


def ci_id(path: Path) -> str:
    return path.name.removesuffix("-values.yaml")


@pytest.fixture(params=CI_VALUES, ids=ci_id)
def ci_values(request) -> Path:
    return request.param


@pytest.fixture
def ci_rendered(ci_values) -> Rendered:
    return render(ci_values)


def fullname(role: str = "") -> str:
    base = f"{RELEASE}-microclaw"
    return f"{base}-{role}" if role else base


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def containers(workload: dict) -> list[dict]:
    spec = pod_spec(workload)
    return spec.get("initContainers", []) + spec["containers"]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def hook_weight(doc: dict) -> int | None:
    annotations = doc["metadata"].get("annotations") or {}
    if "helm.sh/hook" not in annotations:
        return None
    return int(annotations.get("helm.sh/hook-weight", "0"))
