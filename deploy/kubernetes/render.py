#!/usr/bin/env python3
"""A stand-in for `kustomize build` covering exactly the features deploy/kubernetes/ uses.

Why: no Debian package has a kustomize that knows components (Debian's kubernetes-client is
kubectl 1.20 with kustomize 2.0.3), so on a machine without a recent kubectl, check.py still
needs the rendered manifests. Where `kubectl kustomize` exists, check.py renders every tree
with both and fails if they differ, so this file is itself checked against real kustomize
there. It is not a kustomize: anything outside the list below is refused, not guessed.

Supported: `resources` (files, and directories holding a kustomization.yaml),
`components` (kind: Component), `configMapGenerator` (name + files, default options:
the content-hash suffix, computed as kustomize does), `namespace`, `images` (name, newName,
newTag, digest), `replicas`; generated ConfigMaps' names are substituted in pod volumes,
env and envFrom references.

    python3 deploy/kubernetes/render.py deploy/kubernetes/overlays/example
"""

import copy
import hashlib
import json
import os
import sys

import yaml

KUSTOMIZATION_KEYS = {
    "apiVersion",
    "kind",
    "resources",
    "components",
    "configMapGenerator",
    "namespace",
    "images",
    "replicas",
}
# Kinds the namespace transformer leaves alone (cluster-scoped) among those this tree could use.
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PriorityClass",
    "StorageClass",
    "PersistentVolume",
}
WORKLOADS_WITH_REPLICAS = {"Deployment", "ReplicaSet", "StatefulSet", "ReplicationController"}


class RenderError(Exception):
    pass


def _go_json(value):
    """json.Marshal's output: sorted keys, no spaces, HTML characters escaped as Go does."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text


def configmap_hash(data):
    """kustomize's suffix: sha256 of {data, kind, name} as Go's JSON, its first 10 hex digits
    with 0, 1, 3, a, e replaced (g, h, k, m, t). kustomize 5 hashes an empty name (its lookup
    of "metadata/name" finds nothing): matched here, as checked against kubectl 1.32's
    kustomize 5.5.0, which check.py compares with wherever kubectl is installed."""
    encoded = _go_json({"data": data, "kind": "ConfigMap", "name": ""})
    digest = hashlib.sha256(encoded.encode("utf-8")).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def _load_kustomization(directory, expected_kind):
    path = os.path.join(directory, "kustomization.yaml")
    if not os.path.isfile(path):
        raise RenderError(f"{directory}: no kustomization.yaml")
    with open(path, encoding="utf-8") as f:
        k = yaml.safe_load(f) or {}
    unknown = set(k) - KUSTOMIZATION_KEYS
    if unknown:
        raise RenderError(f"{path}: fields this renderer does not support: {sorted(unknown)}")
    if k.get("kind", "Kustomization") != expected_kind:
        raise RenderError(f"{path}: kind {k.get('kind')!r}, expected {expected_kind}")
    return k


def _inside(root, path):
    """kustomize's default load restrictor: no file outside the kustomization's directory."""
    root, path = os.path.realpath(root), os.path.realpath(path)
    if os.path.commonpath([root, path]) != root:
        raise RenderError(f"{path}: outside {root} (kustomize's load restrictor refuses it)")
    return path


def _pod_specs(resource):
    kind, spec = resource.get("kind"), resource.get("spec") or {}
    if kind in WORKLOADS_WITH_REPLICAS or kind in {"Job", "DaemonSet"}:
        yield spec.get("template", {}).get("spec", {})
    elif kind == "CronJob":
        yield spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec", {})
    elif kind == "Pod":
        yield spec


def _containers(pod_spec):
    for key in ("initContainers", "containers"):
        yield from pod_spec.get(key) or []


class _Level:
    """The resources of one kustomization (or component) while it is built."""

    def __init__(self):
        self.resources = []
        self.generated = {}  # ConfigMap name before the suffix -> after

    def add(self, resources, generated=None):
        for r in resources:
            key = (r["kind"], r["metadata"].get("namespace"), r["metadata"]["name"])
            if any((o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) == key
                   for o in self.resources):
                raise RenderError(f"duplicate resource {key}")
            self.resources.append(r)
        self.generated.update(generated or {})


def _apply(directory, k, level):
    """Adds a kustomization's (or component's) generators, then runs its transformers."""
    for gen in k.get("configMapGenerator") or []:
        if set(gen) - {"name", "files"}:
            raise RenderError(f"{directory}: configMapGenerator {gen.get('name')}: only name and files")
        data = {}
        for entry in gen.get("files") or []:
            key, _, source = entry.partition("=") if "=" in entry else (os.path.basename(entry), "", entry)
            with open(_inside(directory, os.path.join(directory, source)), encoding="utf-8") as f:
                data[key] = f.read()
        cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data}
        hashed = f"{gen['name']}-{configmap_hash(data)}"
        cm["metadata"]["name"] = hashed
        level.add([cm], {gen["name"]: hashed})
    if "namespace" in k:
        for r in level.resources:
            if r["kind"] not in CLUSTER_SCOPED:
                r["metadata"]["namespace"] = k["namespace"]
    for image in k.get("images") or []:
        if set(image) - {"name", "newName", "newTag", "digest"}:
            raise RenderError(f"{directory}: images entry {image}: unsupported fields")
        for r in level.resources:
            for pod in _pod_specs(r):
                for c in _containers(pod):
                    _set_image(c, image)
    for rep in k.get("replicas") or []:
        for r in level.resources:
            if r["kind"] in WORKLOADS_WITH_REPLICAS and r["metadata"]["name"] == rep["name"]:
                r["spec"]["replicas"] = rep["count"]
    _substitute_names(level)


def _set_image(container, image):
    ref = container.get("image", "")
    name, tag, digest = ref, None, None
    if "@" in name:
        name, digest = name.split("@", 1)
    if ":" in name.rsplit("/", 1)[-1]:
        name, tag = name.rsplit(":", 1)
    if name != image["name"]:
        return
    name = image.get("newName", name)
    if "digest" in image:
        container["image"] = f"{name}@{image['digest']}"
    elif "newTag" in image:
        container["image"] = f"{name}:{image['newTag']}"
    else:
        container["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def _substitute_names(level):
    def fix(ref):
        if ref and ref.get("name") in level.generated:
            ref["name"] = level.generated[ref["name"]]

    for r in level.resources:
        for pod in _pod_specs(r):
            for v in pod.get("volumes") or []:
                fix(v.get("configMap"))
                for source in (v.get("projected") or {}).get("sources") or []:
                    fix(source.get("configMap"))
            for c in _containers(pod):
                for e in c.get("env") or []:
                    fix((e.get("valueFrom") or {}).get("configMapKeyRef"))
                for e in c.get("envFrom") or []:
                    fix(e.get("configMapRef"))


def _read_resources(directory, entry):
    path = os.path.join(directory, entry)
    if os.path.isdir(path):
        return build(path)
    with open(_inside(directory, path), encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    return docs, {}


def build(directory, kind="Kustomization", level=None):
    """Builds the kustomization in `directory`: (resources, generated ConfigMap names)."""
    k = _load_kustomization(directory, kind)
    level = level or _Level()
    for entry in k.get("resources") or []:
        resources, generated = _read_resources(directory, entry)
        level.add(copy.deepcopy(resources), generated)
    for component in k.get("components") or []:
        build(os.path.join(directory, component), "Component", level)
    _apply(directory, k, level)
    return level.resources, level.generated


def render(directory):
    return build(directory)[0]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    try:
        yaml.safe_dump_all(render(sys.argv[1]), sys.stdout, sort_keys=False)
    except RenderError as e:
        sys.exit(f"render.py: {e}")
