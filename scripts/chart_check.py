#!/usr/bin/env python3
"""Checks of the Gatehouse Helm chart, run by scripts/chart-test.sh with the tools that
scripts/chart-tools.sh installs (HELM, KUBECTL, and this interpreter with kubernetes-validate).

  chart_check.py check              every check below; exit 1 on any failure
  chart_check.py render-deploy DIR  write the plain manifests (deploy/) into DIR

What `check` does:
  * renders the chart for the default values, cert-manager mode and ci/overrides-values.yaml;
  * validates every rendered object against the Kubernetes OpenAPI schemas in strict mode
    (unknown fields are errors) for the oldest supported Kubernetes and the newest the package
    knows. cert-manager's Issuer/Certificate and the Prometheus Operator's ServiceMonitor are
    CRDs with no built-in schema: they are checked structurally here (fields, types, and that
    the names they refer to exist), and reported as such;
  * asserts on the webhook configuration and the workload (rules, sideEffects, the
    namespaceSelector exclusions, the caBundle matching the chart's Secret, security context,
    probes, volumes, ...);
  * starts the real gatehouse binary with the chart's rendered config.yaml, policies and
    self-signed certificate, and posts a review over TLS to the Service's DNS name with only the
    caBundle trusted and only subjectAltNames accepted (as the API server does);
  * proves the self-signed pair is stable across `helm upgrade`: a stand-in Kubernetes API
    server on 127.0.0.1 (discovery plus the stored Secret, what helm's `lookup` reads) serves
    the first render's Secret, and a second render with --dry-run=server reuses it;
  * checks deploy/ is what render-deploy would write now.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml
import kubernetes_validate
from kubernetes_validate import utils as kv

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "gatehouse"
HELM = os.environ.get("HELM", "helm")
KUBECTL = os.environ.get("KUBECTL", "kubectl")
GATEHOUSE_BIN = os.environ.get("GATEHOUSE_BIN", str(ROOT / "target" / "debug" / "gatehouse"))

# The chart's kubeVersion floor, and the newest schemas kubernetes-validate ships.
K8S_VERSIONS = ["1.28", kv.latest_version()]

# Kinds that come from CRDs: no schema in kubernetes-validate; checked structurally below.
CRD_KINDS = {
    ("cert-manager.io/v1", "Issuer"),
    ("cert-manager.io/v1", "Certificate"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}

DEPLOY_NAMESPACE = "gatehouse"
DEPLOY_RELEASE = "gatehouse"
CA_PLACEHOLDER = "${CA_BUNDLE}"


class Failures:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.passed = 0

    def check(self, cond: bool, what: str) -> bool:
        if cond:
            self.passed += 1
        else:
            self.items.append(what)
            print(f"FAIL {what}", flush=True)
        return cond

    def eq(self, got, want, what: str) -> bool:
        return self.check(got == want, f"{what}: got {got!r}, want {want!r}")


F = Failures()


def run(cmd: list[str], **kw) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr}{res.stdout}")
    return res.stdout


def helm_template(release: str, namespace: str, *args: str, env: dict | None = None) -> list[dict]:
    out = run([HELM, "template", release, str(CHART), "--namespace", namespace, *args],
              env={**os.environ, **(env or {})})
    return [d for d in yaml.safe_load_all(out) if d]


def find(objs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: list[dict], kind: str, name: str | None = None) -> dict:
    found = find(objs, kind, name)
    if len(found) != 1:
        raise SystemExit(f"expected exactly one {kind} {name or ''}, found {len(found)}")
    return found[0]


# ---------------------------------------------------------------------------------------------
# Schema validation


def check_structure(obj: dict, spec: dict, path: str) -> None:
    """A small structural check for CRD objects: `spec` maps field -> type, nested dict, or a
    (type, required) tuple; unknown fields are errors."""
    if not F.check(isinstance(obj, dict), f"{path}: not an object"):
        return
    for key in obj:
        F.check(key in spec, f"{path}.{key}: unknown field")
    for key, rule in spec.items():
        required = False
        if isinstance(rule, tuple):
            rule, required = rule
        if key not in obj:
            F.check(not required, f"{path}.{key}: required")
            continue
        value = obj[key]
        if isinstance(rule, dict):
            check_structure(value, rule, f"{path}.{key}")
        elif rule is list:
            F.check(isinstance(value, list), f"{path}.{key}: not a list")
        else:
            F.check(isinstance(value, rule), f"{path}.{key}: not {rule.__name__}")


METADATA = {"name": (str, True), "namespace": (str, True), "labels": dict, "annotations": dict}
ISSUER_REF = {"name": (str, True), "kind": str, "group": str}
CRD_STRUCTURE = {
    "Issuer": {"apiVersion": (str, True), "kind": (str, True), "metadata": (METADATA, True),
               "spec": ({"selfSigned": dict, "ca": {"secretName": (str, True)}}, True)},
    "Certificate": {"apiVersion": (str, True), "kind": (str, True), "metadata": (METADATA, True),
                    "spec": ({"secretName": (str, True), "commonName": str, "dnsNames": list,
                              "isCA": bool, "duration": str, "renewBefore": str, "usages": list,
                              "privateKey": {"algorithm": str, "size": int, "rotationPolicy": str},
                              "issuerRef": (ISSUER_REF, True)}, True)},
    "ServiceMonitor": {"apiVersion": (str, True), "kind": (str, True), "metadata": (METADATA, True),
                       "spec": ({"selector": ({"matchLabels": dict}, True),
                                 "namespaceSelector": {"matchNames": list},
                                 "endpoints": (list, True)}, True)},
}


def validate_all(objs: list[dict], label: str) -> None:
    schema_checked = structural = 0
    for obj in objs:
        key = (obj.get("apiVersion"), obj.get("kind"))
        name = f"{label}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        if key in CRD_KINDS:
            check_structure(obj, CRD_STRUCTURE[obj["kind"]], name)
            structural += 1
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
                F.check(True, name)
            except kubernetes_validate.ValidationError as e:
                where = ".".join(str(p) for p in e.path)
                F.check(False, f"{name} (Kubernetes {version}, strict): {where}: {e.message}")
            except kv.SchemaNotFoundError as e:
                F.check(False, f"{name}: no schema and not a known CRD kind: {e.message}")
        schema_checked += 1
    print(f"ok   {label}: {schema_checked} objects valid against the Kubernetes "
          f"{' and '.join(K8S_VERSIONS)} schemas (strict); {structural} CRD objects "
          f"(cert-manager, ServiceMonitor) checked structurally: no schema is available offline",
          flush=True)


# ---------------------------------------------------------------------------------------------
# Assertions


def dns_names(svc: str, ns: str) -> list[str]:
    return [svc, f"{svc}.{ns}", f"{svc}.{ns}.svc", f"{svc}.{ns}.svc.cluster.local"]


def rules_cover(rules: list[dict], resources: set[str], ops: set[str]) -> bool:
    covered = set()
    for r in rules:
        if "apps" in r["apiGroups"] and "v1" in r["apiVersions"] and ops <= set(r["operations"]):
            covered |= set(r["resources"])
    return resources <= covered


def check_common(objs: list[dict], release: str, ns: str, svc_name: str, label: str) -> dict:
    """Checks every render shares; returns the named objects."""
    F.check(not [o for o in objs if o["kind"] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")],
            f"{label}: no RBAC objects")
    for o in objs:
        if o["kind"] != "ValidatingWebhookConfiguration":
            F.eq(o["metadata"].get("namespace"), ns, f"{label}: {o['kind']} namespace")

    vwc = one(objs, "ValidatingWebhookConfiguration")
    F.eq(len(vwc["webhooks"]), 1, f"{label}: one webhook")
    wh = vwc["webhooks"][0]
    F.check(wh["name"].count(".") >= 2, f"{label}: webhook name has three segments: {wh['name']}")
    F.eq(wh["admissionReviewVersions"], ["v1", "v1beta1"], f"{label}: admissionReviewVersions")
    F.eq(wh["sideEffects"], "NoneOnDryRun", f"{label}: sideEffects")
    F.check(rules_cover(wh["rules"], {"deployments", "deployments/scale"}, {"CREATE", "UPDATE"}),
            f"{label}: rules cover deployments and deployments/scale on CREATE and UPDATE")
    svc = one(objs, "Service", svc_name)
    F.eq(wh["clientConfig"].get("service", {}).get("name"), svc_name, f"{label}: webhook Service name")
    F.eq(wh["clientConfig"]["service"].get("namespace"), ns, f"{label}: webhook Service namespace")
    F.eq(wh["clientConfig"]["service"].get("path"), "/validate", f"{label}: webhook path")
    https = [p for p in svc["spec"]["ports"] if p["name"] == "https"]
    F.check(len(https) == 1 and https[0]["port"] == wh["clientConfig"]["service"].get("port", 443),
            f"{label}: webhook port is the Service's https port")
    sel = wh["namespaceSelector"]["matchExpressions"][0]
    F.eq((sel["key"], sel["operator"]), ("kubernetes.io/metadata.name", "NotIn"),
         f"{label}: first namespaceSelector expression")
    F.check({"kube-system", ns} <= set(sel["values"]),
            f"{label}: namespaceSelector excludes kube-system and {ns}: {sel['values']}")

    dep = one(objs, "Deployment", svc_name)
    pod = dep["spec"]["template"]["spec"]
    F.eq(svc["spec"]["selector"], dep["spec"]["selector"]["matchLabels"], f"{label}: Service selects the pods")
    F.check(all(dep["spec"]["template"]["metadata"]["labels"].get(k) == v
                for k, v in svc["spec"]["selector"].items()), f"{label}: pod labels match the selector")
    (c,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    F.eq(https[0]["targetPort"], "webhook", f"{label}: Service targets the webhook port")
    F.check("webhook" in ports and "health" in ports, f"{label}: container ports named")
    F.eq(c["livenessProbe"]["httpGet"], {"path": "/healthz", "port": "health"}, f"{label}: liveness probe")
    F.eq(c["readinessProbe"]["httpGet"], {"path": "/readyz", "port": "health"}, f"{label}: readiness probe")
    sc, psc = c["securityContext"], pod["securityContext"]
    F.check(sc.get("runAsNonRoot") or psc.get("runAsNonRoot"), f"{label}: runAsNonRoot")
    F.eq(sc.get("readOnlyRootFilesystem"), True, f"{label}: readOnlyRootFilesystem")
    F.eq(sc.get("allowPrivilegeEscalation"), False, f"{label}: allowPrivilegeEscalation")
    F.eq(sc.get("capabilities", {}).get("drop"), ["ALL"], f"{label}: capabilities drop ALL")
    F.eq(psc.get("seccompProfile", {}).get("type"), "RuntimeDefault", f"{label}: seccomp RuntimeDefault")
    F.check("resources" in c and c["resources"].get("requests"), f"{label}: resources set")
    F.eq(pod.get("automountServiceAccountToken"), False, f"{label}: no service account token")
    F.check(bool(pod.get("topologySpreadConstraints")), f"{label}: topology spread")
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    F.check(all("subPath" not in m for m in mounts.values()), f"{label}: no subPath mounts (they never update)")
    vols = {v["name"]: v for v in pod["volumes"]}
    F.check("emptyDir" in vols.get("data", {}), f"{label}: data directory is an emptyDir")
    F.eq(mounts.get("data", {}).get("mountPath"), "/var/lib/gatehouse", f"{label}: data mount")
    F.eq(c["args"], ["--config", "/etc/gatehouse/config/config.yaml", "serve"], f"{label}: args")

    cfg_map = one(objs, "ConfigMap", vols["config"]["configMap"]["name"])
    config = yaml.safe_load(cfg_map["data"]["config.yaml"])
    F.eq(config["tls_cert"], mounts["tls"]["mountPath"] + "/tls.crt", f"{label}: tls_cert under the tls mount")
    F.eq(config["policies"], mounts["policies"]["mountPath"], f"{label}: policies is the policies mount")
    F.eq(config["limits"]["request_timeout"], f"{max(1, wh['timeoutSeconds'] - 1)}s",
         f"{label}: request_timeout one second below timeoutSeconds")
    limits = config["limits"]
    idle = limits.get("idle_timeout", "")
    F.check(idle.endswith("s") and not idle.endswith("ms") and idle[:-1].isdigit() and int(idle[:-1]) > 90,
            f"{label}: idle_timeout {idle!r} outlasts the API server's 90 s idle keep-alive")
    F.check(limits.get("max_connections_per_source", 0) >= limits.get("max_concurrent_requests", 1 << 30) + 25,
            f"{label}: max_connections_per_source leaves the API server its requests in flight + 25 idle")
    F.check(limits.get("max_streams_per_connection", 1 << 30) < limits.get("max_concurrent_requests", 0),
            f"{label}: one HTTP/2 connection cannot take every request slot")
    F.check({"kube-system", ns} <= set(config["excluded_namespaces"]),
            f"{label}: Gatehouse itself excludes kube-system and {ns}")
    F.eq(config["listen"].rsplit(":", 1)[1], str(ports["webhook"]), f"{label}: listen port = container port")

    pdbs = find(objs, "PodDisruptionBudget")
    if dep["spec"]["replicas"] > 1:
        F.eq(len(pdbs), 1, f"{label}: a PodDisruptionBudget")
        F.eq(pdbs[0]["spec"]["selector"]["matchLabels"], dep["spec"]["selector"]["matchLabels"],
             f"{label}: PDB selects the pods")
    sa = one(objs, "ServiceAccount")
    F.eq(pod["serviceAccountName"], sa["metadata"]["name"], f"{label}: pod uses the ServiceAccount")
    return {"vwc": vwc, "webhook": wh, "svc": svc, "dep": dep, "pod": pod, "container": c,
            "vols": vols, "config": config, "config_text": cfg_map["data"]["config.yaml"]}


def tls_secret_data(objs: list[dict], name: str) -> dict[str, str]:
    return one(objs, "Secret", name)["data"]


def check_default(objs: list[dict]) -> dict:
    label = "default values"
    got = check_common(objs, "gatehouse", "gatehouse", "gatehouse", label)
    kinds = sorted(o["kind"] for o in objs)
    F.eq(kinds, sorted(["ServiceAccount", "ConfigMap", "ConfigMap", "Secret", "Service", "Deployment",
                        "PodDisruptionBudget", "ValidatingWebhookConfiguration"]), f"{label}: objects")
    wh = got["webhook"]
    F.eq(wh["failurePolicy"], "Fail", f"{label}: failurePolicy")
    F.eq(wh["timeoutSeconds"], 5, f"{label}: timeoutSeconds")
    F.eq(wh["clientConfig"]["service"]["port"], 443, f"{label}: Service port 443")
    F.eq(got["dep"]["spec"]["replicas"], 2, f"{label}: 2 replicas")
    F.eq(one(objs, "PodDisruptionBudget")["spec"]["minAvailable"], 1, f"{label}: PDB minAvailable")
    F.eq(wh["namespaceSelector"]["matchExpressions"][0]["values"], ["kube-system", "gatehouse"],
         f"{label}: excluded namespaces")
    F.check("matchConditions" not in wh, f"{label}: no matchConditions by default")
    secret_name = got["vols"]["tls"]["secret"]["secretName"]
    secret = one(objs, "Secret", secret_name)
    F.eq(secret["type"], "kubernetes.io/tls", f"{label}: TLS Secret type")
    F.check(bool(wh["clientConfig"].get("caBundle")), f"{label}: caBundle present in selfSigned mode")
    F.eq(wh["clientConfig"].get("caBundle"), secret["data"]["ca.crt"], f"{label}: caBundle is the Secret's ca.crt")
    policies = one(objs, "ConfigMap", got["vols"]["policies"]["configMap"]["name"])
    F.eq(policies["data"], {"default.yaml": (ROOT / "policies" / "default.yaml").read_text()},
         f"{label}: the policies ConfigMap holds the shipped policies/default.yaml "
         f"(run scripts/render-deploy.sh to copy it into the chart)")
    F.check(not any(e["name"].startswith("TWILIO") for e in got["container"]["env"]),
            f"{label}: no Twilio variables unless enabled")
    return got


def check_cert_manager(objs: list[dict]) -> None:
    label = "cert-manager mode"
    got = check_common(objs, "gatehouse", "gatehouse", "gatehouse", label)
    wh, vwc = got["webhook"], got["vwc"]
    F.check("caBundle" not in wh["clientConfig"], f"{label}: no caBundle (cainjector fills it)")
    inject = vwc["metadata"].get("annotations", {}).get("cert-manager.io/inject-ca-from", "")
    ns, _, cert_name = inject.partition("/")
    F.eq(ns, "gatehouse", f"{label}: inject-ca-from namespace")
    cert = one(objs, "Certificate", cert_name)
    F.eq(cert["spec"]["secretName"], got["vols"]["tls"]["secret"]["secretName"],
         f"{label}: the Certificate's Secret is the one mounted")
    F.eq(cert["spec"]["dnsNames"], dns_names("gatehouse", "gatehouse"), f"{label}: dnsNames")
    F.check(not find(objs, "Secret"), f"{label}: the chart makes no TLS Secret itself")
    issuer = one(objs, "Issuer", cert["spec"]["issuerRef"]["name"])
    ca_cert = one(objs, "Certificate", "gatehouse-ca")
    F.eq(issuer["spec"]["ca"]["secretName"], ca_cert["spec"]["secretName"], f"{label}: CA Issuer uses the CA's Secret")
    F.eq(ca_cert["spec"]["isCA"], True, f"{label}: CA certificate isCA")
    selfsigned = one(objs, "Issuer", ca_cert["spec"]["issuerRef"]["name"])
    F.eq(selfsigned["spec"], {"selfSigned": {}}, f"{label}: self-signed bootstrap Issuer")
    check_service_monitor(objs, got, label)


def check_service_monitor(objs: list[dict], got: dict, label: str) -> None:
    sm = one(objs, "ServiceMonitor")
    svc = got["svc"]
    F.check(all(svc["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items()),
            f"{label}: ServiceMonitor selects the Service")
    port_names = {p["name"] for p in svc["spec"]["ports"]}
    for ep in sm["spec"]["endpoints"]:
        F.check(ep["port"] in port_names, f"{label}: ServiceMonitor port {ep['port']} is a Service port")
        F.eq(ep.get("path"), "/metrics", f"{label}: ServiceMonitor path")


def check_overrides(objs: list[dict]) -> dict:
    label = "overrides values"
    got = check_common(objs, "gh", "infra", "admission-gate", label)
    wh, vwc, pod, c = got["webhook"], got["vwc"], got["pod"], got["container"]
    F.eq(wh["failurePolicy"], "Ignore", f"{label}: failurePolicy")
    F.eq(wh["timeoutSeconds"], 10, f"{label}: timeoutSeconds")
    F.check(rules_cover(wh["rules"], {"statefulsets", "statefulsets/scale"}, {"CREATE", "UPDATE"}),
            f"{label}: extra rules appended")
    F.eq(len(wh["rules"]), 2, f"{label}: rules")
    exprs = wh["namespaceSelector"]["matchExpressions"]
    F.eq(exprs[0]["values"], ["kube-system", "infra", "monitoring", "cert-manager"], f"{label}: exclusions")
    F.eq(exprs[1]["key"], "environment", f"{label}: extra namespace expression kept")
    F.eq(wh["namespaceSelector"]["matchLabels"], {"gatehouse.dev/enforce": "true"}, f"{label}: matchLabels")
    F.eq([m["name"] for m in wh.get("matchConditions", [])], ["not-node-users"], f"{label}: matchConditions")
    F.check("objectSelector" in wh, f"{label}: objectSelector")
    F.eq(wh["clientConfig"].get("caBundle"), "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==", f"{label}: caBundle from values")
    F.eq(vwc["metadata"]["labels"].get("admissions.enforcer/disabled"), "true", f"{label}: AKS opt-out label")
    F.eq(got["vols"]["tls"]["secret"]["secretName"], "gatehouse-serving", f"{label}: existing TLS Secret mounted")
    F.check(not [s for s in find(objs, "Secret") if s["type"] == "kubernetes.io/tls"], f"{label}: no chart TLS Secret")
    F.eq(pod.get("hostNetwork"), True, f"{label}: hostNetwork")
    F.eq(pod.get("dnsPolicy"), "ClusterFirstWithHostNet", f"{label}: dnsPolicy on the host network")
    F.eq({p["name"]: p["containerPort"] for p in c["ports"]}, {"webhook": 10260, "health": 10261}, f"{label}: ports")
    F.eq(got["config"]["listen"], "0.0.0.0:10260", f"{label}: listen")
    F.eq(got["config"]["limits"]["request_timeout"], "9s", f"{label}: request_timeout")
    F.check("team-legacy-*" in got["config"]["excluded_namespaces"], f"{label}: app-level exclusions")
    F.check("@sha256:" in c["image"], f"{label}: image pinned by digest")
    F.eq(got["dep"]["spec"]["replicas"], 3, f"{label}: replicas")
    twilio = one(objs, "Secret", "admission-gate-twilio")
    F.eq(sorted(twilio["stringData"]), ["GATEHOUSE_SMS_TO", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_FROM"],
         f"{label}: Twilio Secret keys")
    env = {e["name"]: e for e in c["env"]}
    for key in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_FROM", "GATEHOUSE_SMS_TO"):
        ref = env.get(key, {}).get("valueFrom", {}).get("secretKeyRef", {})
        F.eq((ref.get("name"), ref.get("key")), ("admission-gate-twilio", key), f"{label}: {key} from the Secret")
    F.check(all("value" not in env[k] for k in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN")),
            f"{label}: credentials never inline in the pod spec")
    np = one(objs, "NetworkPolicy")
    F.eq(sorted(p["ports"][0]["port"] for p in np["spec"]["ingress"]), ["health", "webhook"], f"{label}: NetworkPolicy ports")
    check_service_monitor(objs, got, label)
    policies = one(objs, "ConfigMap", got["vols"]["policies"]["configMap"]["name"])
    F.eq(sorted(policies["data"]), ["replicas.yaml", "sandbox.yml"], f"{label}: policy files from values")
    got["policies"] = policies["data"]
    return got


def check_variants() -> None:
    """Smaller switches, each rendered, validated and checked on its own."""
    label = "existing Secrets and ConfigMap"
    objs = helm_template("gatehouse", "gatehouse", "--set", "twilio.enabled=true",
                         "--set", "twilio.existingSecret=ops-twilio", "--set", "policies.existingConfigMap=team-policies")
    validate_all(objs, label)
    got = check_common(objs, "gatehouse", "gatehouse", "gatehouse", label)
    F.check(not [s for s in find(objs, "Secret") if s["type"] == "Opaque"], f"{label}: no chart Twilio Secret")
    env = {e["name"]: e for e in got["container"]["env"]}
    for key, optional in (("TWILIO_ACCOUNT_SID", None), ("TWILIO_AUTH_TOKEN", None),
                          ("TWILIO_FROM", True), ("GATEHOUSE_SMS_TO", True)):
        ref = env.get(key, {}).get("valueFrom", {}).get("secretKeyRef", {})
        F.eq((ref.get("name"), ref.get("key"), ref.get("optional")), ("ops-twilio", key, optional),
             f"{label}: {key} from the existing Secret")
    F.eq(got["vols"]["policies"]["configMap"]["name"], "team-policies", f"{label}: existing policies ConfigMap mounted")
    F.eq(len(find(objs, "ConfigMap")), 1, f"{label}: only the config ConfigMap rendered")

    label = "cert-manager with an existing issuer"
    objs = helm_template("gatehouse", "gatehouse", "--set", "tls.mode=certManager",
                         "--set", "tls.certManager.issuerRef.name=corp-ca",
                         "--set", "tls.certManager.issuerRef.kind=ClusterIssuer")
    validate_all(objs, label)
    check_common(objs, "gatehouse", "gatehouse", "gatehouse", label)
    F.check(not find(objs, "Issuer"), f"{label}: no Issuer made")
    F.eq(one(objs, "Certificate")["spec"]["issuerRef"], {"name": "corp-ca", "kind": "ClusterIssuer"},
         f"{label}: the given issuer signs")

    label = "single replica"
    objs = helm_template("gatehouse", "gatehouse", "--set", "replicaCount=1")
    F.check(not find(objs, "PodDisruptionBudget"), f"{label}: no PDB (it would block every drain)")
    print("ok   variants: existing Secrets/ConfigMap, cert-manager issuerRef, single replica", flush=True)


# ---------------------------------------------------------------------------------------------
# The real binary with the chart's config, policies and certificate


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_with_chart_output(got: dict, objs: list[dict]) -> None:
    label = "default values, served"
    data = tls_secret_data(objs, got["vols"]["tls"]["secret"]["secretName"])
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        (t / "config.yaml").write_text(got["config_text"])
        (t / "policies").mkdir()
        policies = one(objs, "ConfigMap", got["vols"]["policies"]["configMap"]["name"])
        for name, text in policies["data"].items():
            (t / "policies" / name).write_text(text)
        for key in ("tls.crt", "tls.key", "ca.crt"):
            (t / key).write_bytes(base64.b64decode(data[key]))
        port, health = free_port(), free_port()
        # The rendered config.yaml as it is; only the in-cluster paths and the listeners are
        # pointed at this machine through the environment (which overrides the file).
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEHOUSE_")}
        env.update({
            "GATEHOUSE_LISTEN": f"127.0.0.1:{port}",
            "GATEHOUSE_HEALTH_LISTEN": f"127.0.0.1:{health}",
            "GATEHOUSE_TLS_CERT": str(t / "tls.crt"),
            "GATEHOUSE_TLS_KEY": str(t / "tls.key"),
            "GATEHOUSE_POLICIES": str(t / "policies"),
            "GATEHOUSE_DATA_DIR": str(t / "data"),
            "RUST_LOG": "warn",
        })
        proc = subprocess.Popen([GATEHOUSE_BIN, "--config", str(t / "config.yaml"), "serve"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            ready = False
            for _ in range(200):
                if proc.poll() is not None:
                    break
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{health}/readyz", timeout=1) as r:
                        ready = r.status == 200
                        break
                except OSError:
                    time.sleep(0.05)
            if not F.check(ready, f"{label}: gatehouse starts with the chart's config.yaml"):
                proc.kill()
                print(proc.communicate()[1])
                return
            ctx = ssl.create_default_context(cafile=str(t / "ca.crt"))
            ctx.hostname_checks_common_name = False  # SANs only, like the API server
            review = (ROOT / "examples" / "reviews" / "create-2-replicas.json").read_bytes()
            for host in dns_names("gatehouse", "gatehouse")[1:]:
                resp = b""
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                        with ctx.wrap_socket(raw, server_hostname=host) as tls:
                            req = (f"POST /validate HTTP/1.1\r\nHost: {host}\r\n"
                                   f"Content-Type: application/json\r\nContent-Length: {len(review)}\r\n"
                                   f"Connection: close\r\n\r\n").encode() + review
                            tls.sendall(req)
                            while chunk := tls.recv(65536):
                                resp += chunk
                except (ssl.SSLError, OSError) as e:
                    F.check(False, f"{label}: {host}: {e}")
                    continue
                head, _, body = resp.partition(b"\r\n\r\n")
                F.check(head.startswith(b"HTTP/1.1 200"), f"{label}: {host}: {head[:40]!r}")
                answer = json.loads(body)
                F.eq(answer["response"]["allowed"], False, f"{label}: {host}: 2 replicas denied")
            print(f"ok   {label}: the chart's certificate verifies for the Service names against its "
                  f"caBundle and gatehouse answers with its config and policies", flush=True)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def review_with_chart_output(got: dict, label: str) -> None:
    """`gatehouse review` with the overrides' rendered config.yaml and policy files."""
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        (t / "config.yaml").write_text(got["config_text"])
        (t / "policies").mkdir()
        for name, text in got["policies"].items():
            (t / "policies" / name).write_text(text)
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEHOUSE_")}
        env["GATEHOUSE_POLICIES"] = str(t / "policies")
        for review, code in (("create-2-replicas.json", 0), ("scale-to-1.json", 1)):
            res = subprocess.run([GATEHOUSE_BIN, "--config", str(t / "config.yaml"), "review",
                                  str(ROOT / "examples" / "reviews" / review)],
                                 env=env, capture_output=True, text=True)
            F.eq(res.returncode, code, f"{label}: gatehouse review {review} with the chart's config "
                                       f"and policies ({res.stderr.strip()})")


# ---------------------------------------------------------------------------------------------
# A stand-in Kubernetes API server for `lookup`


DISCOVERY = {
    "v1": [("secrets", "Secret"), ("configmaps", "ConfigMap"), ("services", "Service"),
           ("serviceaccounts", "ServiceAccount"), ("namespaces", "Namespace")],
    "apps/v1": [("deployments", "Deployment")],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget")],
    "admissionregistration.k8s.io/v1": [("validatingwebhookconfigurations", "ValidatingWebhookConfiguration")],
    "networking.k8s.io/v1": [("networkpolicies", "NetworkPolicy")],
    "cert-manager.io/v1": [("issuers", "Issuer"), ("certificates", "Certificate")],
    "monitoring.coreos.com/v1": [("servicemonitors", "ServiceMonitor")],
}
CLUSTER_SCOPED = {"namespaces", "validatingwebhookconfigurations"}


class FakeApiServer:
    """Serves discovery and GETs of stored objects, and 404 for anything else, like the
    Kubernetes API would for what helm asks during `template --dry-run=server`."""

    def __init__(self, objects: dict[str, dict]):
        self.objects = objects  # path -> object
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def reply(self, code: int, obj: dict) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                path = self.path.split("?")[0]
                outer.requests.append(path)
                if path == "/version":
                    return self.reply(200, {"major": "1", "minor": "33", "gitVersion": "v1.33.0",
                                            "platform": "linux/amd64"})
                if path == "/api":
                    return self.reply(200, {"kind": "APIVersions", "versions": ["v1"],
                                            "serverAddressByClientCIDRs": []})
                if path == "/apis":
                    groups = []
                    for gv in DISCOVERY:
                        if "/" in gv:
                            g, v = gv.split("/")
                            groups.append({"name": g, "versions": [{"groupVersion": gv, "version": v}],
                                           "preferredVersion": {"groupVersion": gv, "version": v}})
                    return self.reply(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
                gv = path[len("/api/"):] if path.startswith("/api/") else path[len("/apis/"):]
                if gv in DISCOVERY:
                    return self.reply(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                                            "resources": [{"name": n, "singularName": k.lower(), "kind": k,
                                                           "namespaced": n not in CLUSTER_SCOPED,
                                                           "verbs": ["get", "list", "create", "update", "patch", "delete"]}
                                                          for n, k in DISCOVERY[gv]]})
                if path in outer.objects:
                    return self.reply(200, outer.objects[path])
                return self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                        "reason": "NotFound", "code": 404, "message": "not found"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def kubeconfig(self, path: Path) -> None:
        port = self.server.server_address[1]
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
            "users": [{"name": "fake", "user": {}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": "gatehouse"}}],
        }))


def check_upgrade_keeps_self_signed_pair(first: list[dict]) -> None:
    label = "selfSigned across upgrade"
    secret = one(first, "Secret", "gatehouse-tls")
    # As helm stored it at install: with its ownership annotations.
    stored = {**secret, "metadata": {
        **secret["metadata"], "uid": "1", "resourceVersion": "1",
        "annotations": {"meta.helm.sh/release-name": "gatehouse", "meta.helm.sh/release-namespace": "gatehouse"}}}
    with FakeApiServer({"/api/v1/namespaces/gatehouse/secrets/gatehouse-tls": stored}) as api, \
            tempfile.TemporaryDirectory() as tmp:
        kubeconfig = Path(tmp) / "kubeconfig"
        api.kubeconfig(kubeconfig)
        env = {"KUBECONFIG": str(kubeconfig), "HELM_CACHE_HOME": tmp, "HELM_CONFIG_HOME": tmp, "HELM_DATA_HOME": tmp}
        args = ("--dry-run=server", "--disable-openapi-validation")
        again = helm_template("gatehouse", "gatehouse", *args, env=env)
        F.check("/api/v1/namespaces/gatehouse/secrets/gatehouse-tls" in api.requests,
                f"{label}: helm looked the Secret up")
        # (Compared, never printed: the data holds a private key.)
        F.check(one(again, "Secret", "gatehouse-tls")["data"] == secret["data"],
                f"{label}: the stored pair is reused (the second render made a different Secret)")
        F.check(one(again, "ValidatingWebhookConfiguration")["webhooks"][0]["clientConfig"]["caBundle"]
                == secret["data"]["ca.crt"], f"{label}: caBundle unchanged")
        fresh = helm_template("gatehouse", "gatehouse", *args, "--set", "tls.selfSigned.regenerate=true", env=env)
        F.check(one(fresh, "Secret", "gatehouse-tls")["data"]["tls.crt"] != secret["data"]["tls.crt"],
                f"{label}: regenerate=true makes a new pair")
    # Without a stored Secret (a first install) every render makes a new pair.
    F.check(one(helm_template("gatehouse", "gatehouse"), "Secret", "gatehouse-tls")["data"]["ca.crt"]
            != secret["data"]["ca.crt"], f"{label}: a first install generates its own CA")
    print(f"ok   {label}: the Secret found by lookup is reused, regenerate=true replaces it", flush=True)


# ---------------------------------------------------------------------------------------------
# deploy/


NAMESPACE_DOC = f"""\
# The namespace, labelled for the restricted Pod Security Standard Gatehouse's pods meet.
apiVersion: v1
kind: Namespace
metadata:
  name: {DEPLOY_NAMESPACE}
  labels:
    pod-security.kubernetes.io/enforce: restricted
"""

DEPLOY_HEADER = """\
# Rendered from charts/gatehouse by scripts/render-deploy.sh (tls.mode=secret); do not edit.
# Install steps: README.md, "Install with kubectl".
"""


def render_deploy() -> dict[str, str]:
    out = run([HELM, "template", DEPLOY_RELEASE, str(CHART), "--namespace", DEPLOY_NAMESPACE,
               "--set", "tls.mode=secret", "--set", f"tls.secret.name={DEPLOY_RELEASE}-tls",
               "--set", f"tls.secret.caBundle={CA_PLACEHOLDER}"])
    # Not installed by helm: say so in the labels.
    out = out.replace("app.kubernetes.io/managed-by: Helm", "app.kubernetes.io/managed-by: kubectl")
    docs = [d.strip("\n") for d in out.split("\n---\n")]
    docs = [d[4:] if d.startswith("---\n") else d for d in docs]
    webhook = [d for d in docs if "kind: ValidatingWebhookConfiguration" in d]
    rest = [d for d in docs if d and d not in webhook]
    return {
        "gatehouse.yaml": DEPLOY_HEADER + "---\n" + NAMESPACE_DOC + "".join(f"---\n{d}\n" for d in rest),
        "webhook.yaml": DEPLOY_HEADER
        + "# Apply it after the Deployment is ready, with the caBundle filled in:\n"
        + "#   sed \"s|\\${CA_BUNDLE}|$CA_BUNDLE|\" deploy/webhook.yaml | kubectl apply -f -\n"
        + "".join(f"---\n{d}\n" for d in webhook),
    }


def check_deploy() -> None:
    rendered = render_deploy()
    deploy = ROOT / "deploy"
    for name, text in rendered.items():
        path = deploy / name
        F.check(path.is_file() and path.read_text() == text,
                f"deploy/{name} is out of step with the chart: run scripts/render-deploy.sh")
    objs = [d for text in rendered.values() for d in yaml.safe_load_all(text) if d]
    validate_all(objs, "deploy/")
    wh = one(objs, "ValidatingWebhookConfiguration")["webhooks"][0]
    F.eq(wh["clientConfig"]["caBundle"], CA_PLACEHOLDER, "deploy/webhook.yaml: caBundle placeholder")
    filled = run([KUBECTL, "patch", "--local", "-f", str(deploy / "webhook.yaml"), "--type=json", "-o", "json",
                  "-p", json.dumps([{"op": "replace", "path": "/webhooks/0/clientConfig/caBundle",
                                     "value": base64.b64encode(b"ca").decode()}])])
    F.eq(json.loads(filled)["webhooks"][0]["clientConfig"]["caBundle"], "Y2E=",
         "deploy/webhook.yaml: kubectl reads it and the caBundle can be filled in")
    sed = subprocess.run(["sed", "s|${CA_BUNDLE}|Y2E=|", str(deploy / "webhook.yaml")],
                         capture_output=True, text=True, check=True).stdout
    F.eq(one([d for d in yaml.safe_load_all(sed) if d], "ValidatingWebhookConfiguration")
         ["webhooks"][0]["clientConfig"]["caBundle"], "Y2E=", "deploy/webhook.yaml: the README's sed fills it in")
    F.eq(one(objs, "Namespace")["metadata"]["name"], DEPLOY_NAMESPACE, "deploy/: namespace")
    print("ok   deploy/ matches the chart", flush=True)


# ---------------------------------------------------------------------------------------------
# Dockerfile (no container engine here: what can be checked without building)


def check_dockerfile() -> None:
    label = "Dockerfile"
    text = (ROOT / "Dockerfile").read_text()
    F.check("cargo build --release --locked" in text, f"{label}: cargo build --release --locked")
    stages = [line.split()[1] for line in text.splitlines() if line.startswith("FROM ")]
    F.check(len(stages) == 2 and stages[-1].startswith("gcr.io/distroless/static"),
            f"{label}: two stages, the last on distroless static: {stages}")
    F.check("\nUSER 65532:65532\n" in text, f"{label}: runs as non-root")
    start = text.index("COPY <<EOF /etc/gatehouse/gatehouse.yaml\n") + len("COPY <<EOF /etc/gatehouse/gatehouse.yaml\n")
    config = text[start:text.index("\nEOF\n", start) + 1]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gatehouse.yaml"
        path.write_text(config)
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEHOUSE_")}
        env["GATEHOUSE_POLICIES"] = str(ROOT / "policies")
        res = subprocess.run([GATEHOUSE_BIN, "--config", str(path), "review",
                              str(ROOT / "examples" / "reviews" / "create-3-replicas.json")],
                             env=env, capture_output=True, text=True)
        F.eq(res.returncode, 0, f"{label}: the image's config file is a valid gatehouse config ({res.stderr.strip()})")
    print(f"ok   {label}: build and runtime stages, non-root, valid built-in config", flush=True)


# ---------------------------------------------------------------------------------------------


def check() -> int:
    default = helm_template("gatehouse", "gatehouse")
    validate_all(default, "default values")
    got = check_default(default)
    print("ok   default values: assertions", flush=True)

    cm = helm_template("gatehouse", "gatehouse", "-f", str(CHART / "ci" / "cert-manager-values.yaml"))
    validate_all(cm, "cert-manager mode")
    check_cert_manager(cm)
    print("ok   cert-manager mode: assertions", flush=True)

    ov = helm_template("gh", "infra", "-f", str(CHART / "ci" / "overrides-values.yaml"))
    validate_all(ov, "overrides values")
    ov_got = check_overrides(ov)
    review_with_chart_output(ov_got, "overrides values")
    print("ok   overrides values: assertions", flush=True)

    check_variants()
    serve_with_chart_output(got, default)
    check_upgrade_keeps_self_signed_pair(default)
    check_deploy()
    check_dockerfile()

    print(f"{F.passed} passed, {len(F.items)} failed")
    return 1 if F.items else 0


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[1] == "check":
        return check()
    if len(argv) == 3 and argv[1] == "render-deploy":
        out = Path(argv[2])
        out.mkdir(parents=True, exist_ok=True)
        for name, text in render_deploy().items():
            (out / name).write_text(text)
            print(f"wrote {out / name}")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
