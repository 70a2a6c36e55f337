#!/usr/bin/env python3
"""A stand-in for `kustomize build` covering exactly the features deploy/kubernetes/ uses.

Why: no Debian package has a kustomize that knows components (Debian's kubernetes-client is
kubectl 1.20 with kustomize 2.0.3), so on a machine without a recent kubectl, check.py still
needs the rendered manifests. Where `kubectl kustomize` exists, check.py renders every tree
with both and fails if they differ, so this file is itself checked against real kustomize
there. It is not a kustomize: anything outside the list below is refused, not guessed.

Supported: `resources` (files, and directories holding a kustomization.yaml),
`components` (kind: Component), `configMapGenerator` (name + files + behavior create,
replace or merge, default options: the content-hash suffix, computed as kustomize does),
`patches` (a file of JSON 6902 operations add, remove, replace and test, aimed by a target
of kind and name, which must match exactly one resource), `namespace`, `images` (name,
newName, newTag, digest), `replicas`; generated ConfigMaps' names are substituted in pod
volumes, env and envFrom references. Order as kustomize 5 (5.1 on): resources, the
kustomization's own generators, its components in order, its own transformers.

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
    "patches",
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
        self.superseded = {}  # a suffixed name replaced by a later generator -> name before

    def add(self, resources, generated=None):
        for r in resources:
            key = (r["kind"], r["metadata"].get("namespace"), r["metadata"]["name"])
            if any((o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) == key
                   for o in self.resources):
                raise RenderError(f"duplicate resource {key}")
            self.resources.append(r)
        self.generated.update(generated or {})


def _generate(directory, k, level):
    """Adds a kustomization's (or component's) generated ConfigMaps, or replaces or merges
    those generated earlier."""
    for gen in k.get("configMapGenerator") or []:
        if set(gen) - {"name", "files", "behavior"}:
            raise RenderError(f"{directory}: configMapGenerator {gen.get('name')}: "
                              "only name, files and behavior")
        behavior = gen.get("behavior", "create")
        if behavior not in ("create", "replace", "merge"):
            raise RenderError(f"{directory}: configMapGenerator {gen['name']}: behavior {behavior!r}")
        data = {}
        for entry in gen.get("files") or []:
            key, _, source = entry.partition("=") if "=" in entry else (os.path.basename(entry), "", entry)
            with open(_inside(directory, os.path.join(directory, source)), encoding="utf-8") as f:
                data[key] = f.read()
        if behavior == "create":
            cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data}
            hashed = f"{gen['name']}-{configmap_hash(data)}"
            cm["metadata"]["name"] = hashed
            level.add([cm], {gen["name"]: hashed})
            continue
        # replace / merge: the ConfigMap generated under this name earlier (a base's, another
        # component's) gets the new data, and with it a new suffix that references follow.
        old = level.generated.get(gen["name"])
        cm = next((r for r in level.resources if r["kind"] == "ConfigMap"
                   and r["metadata"]["name"] == old), None) if old else None
        if cm is None:
            raise RenderError(f"{directory}: configMapGenerator {gen['name']}: behavior "
                              f"{behavior}, but no ConfigMap {gen['name']} was generated before")
        cm["data"] = data if behavior == "replace" else {**(cm.get("data") or {}), **data}
        hashed = f"{gen['name']}-{configmap_hash(cm['data'])}"
        cm["metadata"]["name"] = hashed
        level.superseded[old] = gen["name"]
        level.generated[gen["name"]] = hashed


def _transform(directory, k, level):
    """Runs a kustomization's (or component's) transformers."""
    for patch in k.get("patches") or []:
        _patch(directory, patch, level)
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


def _patch(directory, patch, level):
    """A `patches` entry: a file of JSON 6902 operations applied to the one resource that its
    target's kind and name select."""
    if set(patch) - {"path", "target"} or set(patch.get("target") or {}) != {"kind", "name"}:
        raise RenderError(f"{directory}: patches entry {patch}: only path and a target of "
                          "kind and name are supported")
    target = patch["target"]
    with open(_inside(directory, os.path.join(directory, patch["path"])), encoding="utf-8") as f:
        ops = yaml.safe_load(f)
    if not isinstance(ops, list):
        raise RenderError(f"{directory}: {patch['path']}: not a list of JSON 6902 operations "
                          "(strategic merge patches are not supported)")
    matched = [r for r in level.resources
               if r["kind"] == target["kind"] and r["metadata"]["name"] == target["name"]]
    if len(matched) != 1:
        raise RenderError(f"{directory}: {patch['path']}: target {target} matches "
                          f"{len(matched)} resources, not one")
    for op in ops:
        _json_patch(matched[0], op, f"{directory}: {patch['path']}")


def _json_patch(doc, op, where):
    """One RFC 6902 operation (add, remove, replace, test) on `doc`, in place."""
    if op.get("op") not in ("add", "remove", "replace", "test") or "path" not in op:
        raise RenderError(f"{where}: unsupported operation {op}")
    if (op["op"] == "remove") == ("value" in op):
        raise RenderError(f"{where}: {op}: a value is required for add, replace and test only")
    tokens = [t.replace("~1", "/").replace("~0", "~") for t in op["path"].split("/")[1:]]
    if not op["path"].startswith("/") or not tokens:
        raise RenderError(f"{where}: {op}: the path must name a member below the root")
    parent = doc
    try:
        for t in tokens[:-1]:
            parent = parent[int(t)] if isinstance(parent, list) else parent[t]
        last = tokens[-1]
        if isinstance(parent, list):
            index = len(parent) if last == "-" and op["op"] == "add" else int(last)
            if not 0 <= index <= len(parent) - (op["op"] != "add"):
                raise IndexError(index)
            if op["op"] == "add":
                parent.insert(index, copy.deepcopy(op["value"]))
            elif op["op"] == "remove":
                del parent[index]
            elif op["op"] == "replace":
                parent[index] = copy.deepcopy(op["value"])
            elif parent[index] != op["value"]:
                raise RenderError(f"{where}: test failed: {op['path']} is {parent[index]!r}")
        elif not isinstance(parent, dict):
            raise KeyError(last)
        elif op["op"] == "add":
            parent[last] = copy.deepcopy(op["value"])
        elif op["op"] == "remove":
            del parent[last]
        elif op["op"] == "replace":
            if last not in parent:  # replace, unlike add, needs the member to exist
                raise KeyError(last)
            parent[last] = copy.deepcopy(op["value"])
        elif parent[last] != op["value"]:
            raise RenderError(f"{where}: test failed: {op['path']} is {parent[last]!r}")
    except (KeyError, IndexError, ValueError, TypeError) as e:
        raise RenderError(f"{where}: {op['op']} {op['path']}: no such member ({e})") from None


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
        name = ref.get("name") if ref else None
        name = name if name in level.generated else level.superseded.get(name)
        if name:
            ref["name"] = level.generated[name]

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
    # kustomize 5's order: a kustomization's own generators run before its components (in
    # the order listed, each built whole), its transformers after them. So an overlay's own
    # configMapGenerator `behavior: replace` is itself replaced by a component's of the same
    # name; a component listed later wins.
    _generate(directory, k, level)
    for component in k.get("components") or []:
        build(os.path.join(directory, component), "Component", level)
    _transform(directory, k, level)
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
