"""A small kustomize renderer for the test suite, for machines without the kustomize binary.

Why hand-written: PyPI has no maintained kustomize in Python (the `kustomize` package there is an
unrelated 7 kB stub; `pykustomize` needs Python ≥ 3.14), and Debian's kubernetes-client is 1.20, whose
kustomize (v2) lacks `labels` and `patches`. Where `kubectl` (with kustomize v5) is on PATH the tests
render with it too and check that both agree (tests/deploy/test_k8s.py).

It implements exactly what deploy/k8s uses and refuses everything else (NotImplementedError), so a new
kustomize feature in the manifests cannot be silently ignored: resources (files and folders), namespace,
labels (pairs, no selectors), secretGenerator/configMapGenerator from env files and literals with the name
hash disabled, JSON 6902 patches with a kind/name target, and images (newName/newTag/digest). Transformers
run in kustomize's order: generators, patches, namespace, labels, images.
"""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import yaml

KNOWN_KEYS = {"apiVersion", "kind", "resources", "namespace", "labels", "secretGenerator", "configMapGenerator",
              "generatorOptions", "patches", "images"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PersistentVolume",
                  "StorageClass", "PriorityClass", "IngressClass", "RuntimeClass", "ValidatingWebhookConfiguration",
                  "MutatingWebhookConfiguration", "ClusterTriggerAuthentication"}


def render(folder: Path | str) -> list[dict[str, Any]]:
    folder = Path(folder)
    k = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(k) - KNOWN_KEYS
    if unknown:
        raise NotImplementedError(f"{folder}: kustomization keys {sorted(unknown)} are not supported here")
    docs: list[dict[str, Any]] = []
    for entry in k.get("resources", []):
        path = folder / entry
        if path.is_dir():
            docs += render(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    options = k.get("generatorOptions", {})
    for kind, key in (("Secret", "secretGenerator"), ("ConfigMap", "configMapGenerator")):
        for gen in k.get(key, []):
            docs.append(_generate(folder, kind, gen, options))
    for patch in k.get("patches", []):
        _patch(folder, docs, patch)
    if "namespace" in k:
        for d in docs:
            if d["kind"] not in CLUSTER_SCOPED:
                d["metadata"]["namespace"] = k["namespace"]
    for entry in k.get("labels", []):
        if entry.get("includeSelectors"):
            raise NotImplementedError("labels with includeSelectors")
        for d in docs:
            d["metadata"].setdefault("labels", {}).update(entry["pairs"])
            if entry.get("includeTemplates") and "template" in d.get("spec", {}):
                d["spec"]["template"].setdefault("metadata", {}).setdefault("labels", {}).update(entry["pairs"])
    for image in k.get("images", []):
        for d in docs:
            for c in _containers(d):
                _set_image(c, image)
    return docs


def _env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"{path}: {line!r} is not KEY=VALUE")
        out[key] = value
    return out


def _generate(folder: Path, kind: str, gen: dict, global_options: dict) -> dict:
    opts = {**global_options, **gen.get("options", {})}
    if not opts.get("disableNameSuffixHash"):
        raise NotImplementedError(f"{gen['name']}: generated names with a hash suffix")
    unknown = set(gen) - {"name", "envs", "literals", "options", "type"}
    if unknown:
        raise NotImplementedError(f"{gen['name']}: generator keys {sorted(unknown)}")
    data: dict[str, str] = {}
    for env in gen.get("envs", []):
        data.update(_env_file(folder / env))
    for lit in gen.get("literals", []):
        key, _, value = lit.partition("=")
        data[key] = value
    meta: dict[str, Any] = {"name": gen["name"]}
    if opts.get("labels"):
        meta["labels"] = dict(opts["labels"])
    if opts.get("annotations"):
        meta["annotations"] = dict(opts["annotations"])
    doc: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "metadata": meta}
    if kind == "Secret":
        doc["type"] = gen.get("type", "Opaque")
        doc["data"] = {key: base64.b64encode(v.encode()).decode() for key, v in data.items()}
    else:
        doc["data"] = data
    return doc


def _patch(folder: Path, docs: list[dict], patch: dict) -> None:
    text = patch["patch"] if "patch" in patch else (folder / patch["path"]).read_text()
    ops = yaml.safe_load(text)
    if not isinstance(ops, list):
        raise NotImplementedError("strategic-merge patches (only JSON 6902 operation lists are supported)")
    target = patch["target"]
    unknown = set(target) - {"kind", "name"}
    if unknown:
        raise NotImplementedError(f"patch targets by {sorted(unknown)}")
    hits = [d for d in docs if target.get("kind", d["kind"]) == d["kind"]
            and target.get("name", d["metadata"]["name"]) == d["metadata"]["name"]]
    if not hits:
        raise ValueError(f"patch target {target} matches no resource")
    for d in hits:
        for op in ops:
            _apply_op(d, op)


def _apply_op(doc: dict, op: dict) -> None:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
    parent: Any = doc
    for p in parts[:-1]:
        parent = parent[int(p)] if isinstance(parent, list) else parent[p]
    last = parts[-1]
    kind = op["op"]
    if kind not in ("add", "replace", "remove"):
        raise NotImplementedError(f"JSON patch op {kind}")
    if isinstance(parent, list):
        if kind == "add":
            parent.insert(len(parent) if last == "-" else int(last), copy.deepcopy(op["value"]))
        elif kind == "replace":
            parent[int(last)] = copy.deepcopy(op["value"])
        else:
            del parent[int(last)]
        return
    if kind == "replace" and last not in parent:
        raise ValueError(f"replace of a missing field {op['path']}")
    if kind == "remove":
        del parent[last]
    else:
        parent[last] = copy.deepcopy(op["value"])


def _containers(doc: dict) -> list[dict]:
    spec = doc.get("spec") or {}
    pods = [spec] if doc["kind"] == "Pod" else []
    if "template" in spec:
        pods.append(spec["template"].get("spec") or {})
    if "jobTemplate" in spec:
        pods.append(spec["jobTemplate"]["spec"]["template"]["spec"])
    return [c for pod in pods for c in pod.get("containers", []) + pod.get("initContainers", [])]


def split_image(ref: str) -> tuple[str, str | None, str | None]:
    """(name, tag, digest) of an image reference; a port in the registry is not a tag."""
    name, _, digest = ref.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = None
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
    return name, tag, digest or None


def _set_image(container: dict, image: dict) -> None:
    name, tag, digest = split_image(container["image"])
    if name != image["name"]:
        return
    name = image.get("newName", name)
    if "digest" in image:
        container["image"] = f"{name}@{image['digest']}"
    else:
        tag = image.get("newTag", tag)
        container["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
