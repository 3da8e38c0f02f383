"""The static policy the Kubernetes manifests must pass (tests/deploy/test_k8s.py runs it).

Hand-written rather than checkov: checkov 3.3.30 installs (~100 packages) and runs offline, but takes about
17 s on these manifests and adds opinions this deployment answers differently (image digests, pull policy
Always, secrets as files rather than environment variables, readiness probes on workers that serve no
traffic); deploy/k8s/README.md lists what checkov reports here and why each stands.

Refused, per pod template (Deployment, StatefulSet, DaemonSet, Job, CronJob, Pod):
- a privileged container, privilege escalation not switched off, added capabilities or ALL not dropped,
  a writable root filesystem, root (runAsNonRoot not true, or runAsUser 0), no RuntimeDefault seccomp,
  host namespaces or hostPath volumes;
- an image without a tag or digest, or tagged `latest`;
- a container (init containers too) without CPU and memory requests and limits;
- a container running `semtag serve` without a liveness probe on /healthz and a readiness probe on /readyz.
"""

from __future__ import annotations

from typing import Any

from tests.deploy.kustomize_lite import split_image

WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc.get("kind") not in WORKLOADS:
        return None
    spec = doc.get("spec") or {}
    if doc["kind"] == "Pod":
        return spec
    if doc["kind"] == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]["spec"]
    return spec["template"]["spec"]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pod.get("initContainers") or []) + list(pod.get("containers") or [])


def _http_probe_path(probe: dict | None) -> str | None:
    return ((probe or {}).get("httpGet") or {}).get("path")


def violations(docs: list[dict[str, Any]]) -> list[str]:
    found: list[str] = []
    for doc in docs:
        pod = pod_spec(doc)
        if pod is None:
            continue
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        psc = pod.get("securityContext") or {}
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            if pod.get(key):
                found.append(f"{where}: {key} is on")
        for vol in pod.get("volumes") or []:
            if "hostPath" in vol:
                found.append(f"{where}: hostPath volume {vol['name']}")
        if psc.get("runAsUser") == 0:
            found.append(f"{where}: runs as root (runAsUser 0)")
        for c in containers(pod):
            cw = f"{where} container {c['name']}"
            sc = c.get("securityContext") or {}
            if sc.get("privileged"):
                found.append(f"{cw}: privileged")
            if sc.get("allowPrivilegeEscalation") is not False:
                found.append(f"{cw}: allowPrivilegeEscalation is not false")
            if sc.get("readOnlyRootFilesystem") is not True:
                found.append(f"{cw}: root filesystem is writable")
            caps = sc.get("capabilities") or {}
            if caps.get("add"):
                found.append(f"{cw}: adds capabilities {caps['add']}")
            if "ALL" not in (caps.get("drop") or []):
                found.append(f"{cw}: does not drop ALL capabilities")
            if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
                found.append(f"{cw}: runAsNonRoot is not true")
            if sc.get("runAsUser") == 0:
                found.append(f"{cw}: runs as root (runAsUser 0)")
            seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
            if seccomp not in ("RuntimeDefault", "Localhost"):
                found.append(f"{cw}: no RuntimeDefault seccomp profile")
            image = c.get("image") or ""
            _, tag, digest = split_image(image)
            if not image or (tag is None and digest is None):
                found.append(f"{cw}: image {image!r} has no tag or digest")
            elif tag == "latest" and digest is None:
                found.append(f"{cw}: image {image!r} is tagged latest")
            res = c.get("resources") or {}
            for kind in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in (res.get(kind) or {}):
                        found.append(f"{cw}: no {r} {kind[:-1]}")
            command = c.get("command") or []
            if c in (pod.get("containers") or []) and command[:2] == ["semtag", "serve"]:
                if _http_probe_path(c.get("livenessProbe")) != "/healthz":
                    found.append(f"{cw}: the API has no liveness probe on /healthz")
                if _http_probe_path(c.get("readinessProbe")) != "/readyz":
                    found.append(f"{cw}: the API has no readiness probe on /readyz")
    return found
