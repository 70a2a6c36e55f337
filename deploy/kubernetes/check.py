#!/usr/bin/env python3
"""Checks the Kubernetes manifests under deploy/kubernetes/, offline, in a few seconds.

    python3 deploy/kubernetes/check.py            # every check; exit 1 with one line per failure
    python3 deploy/kubernetes/check.py --render   # print what would be checked, as YAML

1. Renders each tree (base, overlays/example, overlays/example-fill,
   overlays/private-registry) with render.py and, where a kubectl with kustomize 5 is
   installed, with it too, and fails unless both agree.
2. Validates every rendered resource against the Kubernetes JSON schemas that the pinned
   kubernetes-validate bundles (strict: an unknown field is an error), for the oldest
   Kubernetes these manifests need and the newest bundled. The ServiceMonitor and the
   cert-manager Certificate (CRDs, not in those schemas) get strict schemas of the fields
   used here, written from the Prometheus Operator's and cert-manager's CRDs, not the CRDs
   themselves.
3. Checks that the manifests agree with the gateway: the ConfigMap is conf/archeio.yaml
   (with components/ingress-nginx: its archeio.yaml, which is conf/archeio.yaml but for
   client_address.trusted_proxies; or the tree's own file, such as
   overlays/private-registry's, with the component's trusted_proxies); ports, probes, the
   shutdown timing, writable paths and egress ports follow from it; the files it reads are
   mounted, credentials from a Secret volume without subPath, not world-readable, with the
   keys its example Secret holds; the registry and TLS ports admit only named peers once
   proxies are trusted; with components/tls the config's tls.listen is the container's
   https port, which the Service's https port reaches, and its certificate files are in the
   directory of the Certificate's Secret, mounted without subPath (cert-manager's renewals
   reach the pod), for the host of client_auth.public_url; an Ingress reaches the registry
   port with the annotations it needs; the
   pods run as the Dockerfile's user, locked down; the sync jobs are set up as documented.
   Every NetworkPolicy that selects the gateway's or the sync pods opens no port but DNS's
   to every address: its ipBlocks except the link-local and private ranges
   (EGRESS_EXCLUDED) and reach no metadata address; the sync pods are isolated both ways,
   with no ingress at all.
4. Breaks the rendered manifests in memory in the ways listed in BREAKAGES and fails unless
   each breakage is caught, so a check cannot quietly stop checking.
"""

import copy
import difflib
import functools
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
from urllib.parse import urlsplit

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import render  # noqa: E402

# The kubernetes-validate that scripts/test.sh installs; its schemas are the reference.
KUBERNETES_VALIDATE = "1.37.0"
# 1.29: the oldest where every field used is on by default (backoffLimitPerIndex is beta
# there); 1.37: the newest that KUBERNETES_VALIDATE bundles.
KUBERNETES_VERSIONS = ["1.29", "1.37"]
TREES = ["base", "overlays/example", "overlays/example-fill", "overlays/private-registry"]
PLACEHOLDER_IMAGE = "archeio:latest"
GATEWAY_CONFIG = os.path.join(REPO, "conf", "archeio.yaml")
SYNC_CONFIG = os.path.join(REPO, "conf", "sync.example.yaml")
COPIES = {
    os.path.join(HERE, "base", "archeio.yaml"): GATEWAY_CONFIG,
    os.path.join(HERE, "components", "sync", "sync.yaml"): SYNC_CONFIG,
}
# The ingress-nginx component's gateway config: conf/archeio.yaml but for the lines of
# client_address.trusted_proxies (the pod CIDR). A tree that lists the component in its
# kustomization's components renders this file, unless a generator that runs after it (a
# component listed later) replaces it; any other tree, conf/archeio.yaml or its own.
INGRESS_NGINX = os.path.join(HERE, "components", "ingress-nginx")
INGRESS_NGINX_CONFIG = os.path.join(INGRESS_NGINX, "archeio.yaml")
# A tree listing this component must render the daily sync CronJob.
SYNC_COMPONENT = os.path.join(HERE, "components", "sync")
# A tree listing this component (the gateway's own TLS, cert-manager's Certificate) must
# generate a config of its own with tls.listen on the container's https port and the
# certificate files in the Certificate's Secret's directory (the component cannot edit the
# ConfigMap's content).
TLS_COMPONENT = os.path.join(HERE, "components", "tls")
# Where cert-manager (any kubernetes.io/tls Secret) keeps the chain and the key.
TLS_SECRET_KEYS = {"cert_file": "tls.crt", "key_file": "tls.key"}
# ingress-nginx annotations the component's Ingress must carry (see its comments).
NGINX_ANNOTATIONS = "nginx.ingress.kubernetes.io/"
# terminationGracePeriodSeconds must be at least grace + timeout + this.
SHUTDOWN_MARGIN_SECONDS = 5
SECRET_LIKE_ENV = re.compile(r"SECRET|PASSWORD|TOKEN|CREDENTIAL|(^|_)KEY($|_)|ACCESS_KEY")
# Config keys naming a file that holds a credential (mirrors' signing keys, the upstream's
# password): it must come from a Secret volume. The gateway reads them again every 2 s.
SECRET_FILE_KEY = re.compile(r"(secret|key|password|token)[a-z_]*_file$")
# Example Secrets an overlay documents but never applies (in no `resources`).
EXAMPLE_SUFFIX = ".example.yaml"
# What an ipBlock wide enough to hold one of these must list in its `except`, in every
# NetworkPolicy selecting the gateway's or the sync pods (the ones these pods may need are
# on public addresses): link-local (the clouds' metadata services, 169.254.169.254), private
# (RFC 1918), shared (RFC 6598, a pod range in some clusters, Alibaba Cloud's metadata) and
# unique local addresses (fc00::/7, which holds fd00::/8 and AWS's fd00:ec2::254).
EGRESS_EXCLUDED = [ipaddress.ip_network(n) for n in (
    "169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
    "fe80::/10", "fc00::/7")]
# Credential services no egress rule may reach, however narrow its block: the EC2 (and
# GCE, Azure) metadata service and EKS Pod Identity's agent, in IPv4 and IPv6. An overlay
# that uses one of them allows it itself (README); the shipped manifests never do.
METADATA_ADDRESSES = [ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.23", "fd00:ec2::254", "fd00:ec2::23")]


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def rel(path):
    return os.path.relpath(path, REPO)


def kustomization(directory):
    return yaml.safe_load(read(os.path.join(directory, "kustomization.yaml"))) or {}


def tree_components(tree):
    """The components `tree`'s kustomization lists, as absolute paths, in order."""
    return [os.path.normpath(os.path.join(HERE, tree, c))
            for c in kustomization(os.path.join(HERE, tree)).get("components") or []]


def own_config(tree):
    """The gateway config file `tree` generates the ConfigMap `archeio` from itself (in its
    kustomization, or in a component of its own directory), or None. The last such generator
    in kustomize's order: the kustomization's own, then its components as listed."""
    directory = os.path.join(HERE, tree)
    local = [c for c in tree_components(tree) if c.startswith(directory + os.sep)]
    found = None
    for d in [directory] + local:
        for gen in kustomization(d).get("configMapGenerator") or []:
            if gen.get("name") != "archeio":
                continue
            for entry in gen.get("files") or []:
                k, _, source = entry.partition("=") if "=" in entry else (
                    os.path.basename(entry), "", entry)
                if k == "archeio.yaml":
                    found = os.path.normpath(os.path.join(d, source))
    return found


def tree_config(tree):
    """The gateway config file that `tree`'s ConfigMap must hold: its own if it has one
    (then it must win over any component's, whatever their order), else the ingress-nginx
    component's if it lists that, else conf/archeio.yaml (base's copy stands for it:
    check_copies keeps the two identical)."""
    own = own_config(tree)
    if own:
        return COPIES.get(own, own)
    return INGRESS_NGINX_CONFIG if INGRESS_NGINX in tree_components(tree) else GATEWAY_CONFIG


# ---------------------------------------------------------------------------- rendering


def kustomize_kubectl():
    """A kubectl whose kustomize knows components (5.x; kubectl 1.24+ reports it), or None."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        return None
    run = subprocess.run([kubectl, "version", "--client", "-o", "json"],
                         capture_output=True, text=True)
    version = re.match(r"v(\d+)\.", yaml.safe_load(run.stdout or "{}").get("kustomizeVersion", "")
                       if run.returncode == 0 else "")
    return kubectl if version and int(version[1]) >= 5 else None


def kubectl_render(tree):
    """`kubectl kustomize TREE`'s resources, or None without a kubectl that has kustomize."""
    kubectl = KUBECTL
    if not kubectl:
        return None
    run = subprocess.run([kubectl, "kustomize", os.path.join(HERE, tree)],
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise render.RenderError(f"kubectl kustomize {tree}: {run.stderr.strip()}")
    return [d for d in yaml.safe_load_all(run.stdout) if d]


KUBECTL = kustomize_kubectl()


def key(resource):
    meta = resource.get("metadata", {})
    return f"{resource.get('kind')}/{meta.get('namespace', '')}/{meta.get('name')}"


def compare_renders(tree, ours, theirs):
    failures = []
    a, b = {key(r): r for r in ours}, {key(r): r for r in theirs}
    for k in sorted(set(a) ^ set(b)):
        failures.append(f"{tree}: {k} rendered only by {'render.py' if k in a else 'kustomize'}")
    for k in sorted(set(a) & set(b)):
        if a[k] != b[k]:
            failures.append(f"{tree}: {k} differs between render.py and kubectl kustomize")
    return failures


# ---------------------------------------------------------------------------- schemas

# The ServiceMonitor fields used here, as monitoring.coreos.com/v1's CRD types them; any
# other field is an error, as kubernetes-validate's strict mode does for built-in kinds.
DURATION = {"type": "string",
            "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
                       r"(([0-9]+)s)?(([0-9]+)ms)?)$"}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object", "additionalProperties": False, "required": ["name"],
            "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                           "labels": STRING_MAP, "annotations": STRING_MAP},
        },
        "spec": {
            "type": "object", "additionalProperties": False,
            "required": ["endpoints", "selector"],
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": {"type": "object", "additionalProperties": False,
                             "properties": {"matchLabels": STRING_MAP}},
                "namespaceSelector": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"any": {"type": "boolean"},
                                   "matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                "endpoints": {
                    "type": "array", "minItems": 1,
                    "items": {
                        "type": "object", "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                            "interval": DURATION,
                            "scrapeTimeout": DURATION,
                            "honorLabels": {"type": "boolean"},
                        },
                    },
                },
            },
        },
    },
}


# The Certificate fields used here (and a few an operator may add), as cert-manager.io/v1's
# CRD types them (cert-manager's deploy/crds/cert-manager.io_certificates.yaml); any other
# field is an error. Durations are Go's time.ParseDuration strings.
GO_DURATION = {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"}
STRING_LIST = {"type": "array", "items": {"type": "string"}}
CERTIFICATE_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "cert-manager.io/v1"},
        "kind": {"const": "Certificate"},
        "metadata": SERVICE_MONITOR_SCHEMA["properties"]["metadata"],
        "spec": {
            "type": "object", "additionalProperties": False,
            "required": ["issuerRef", "secretName"],
            "properties": {
                "secretName": {"type": "string"},
                "commonName": {"type": "string"},
                "dnsNames": {**STRING_LIST, "minItems": 1},
                "ipAddresses": STRING_LIST,
                "duration": GO_DURATION,
                "renewBefore": GO_DURATION,
                "issuerRef": {
                    "type": "object", "additionalProperties": False, "required": ["name"],
                    "properties": {"name": {"type": "string"}, "kind": {"type": "string"},
                                   "group": {"type": "string"}},
                },
                "privateKey": {
                    "type": "object", "additionalProperties": False,
                    "properties": {
                        "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                        "encoding": {"enum": ["PKCS1", "PKCS8"]},
                        "rotationPolicy": {"enum": ["Never", "Always"]},
                        "size": {"type": "integer"},
                    },
                },
                "usages": {"type": "array", "items": {"enum": [
                    "signing", "digital signature", "content commitment", "key encipherment",
                    "key agreement", "data encipherment", "cert sign", "crl sign",
                    "encipher only", "decipher only", "any", "server auth", "client auth",
                    "code signing", "email protection", "s/mime", "ipsec end system",
                    "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing",
                    "microsoft sgc", "netscape sgc"]}},
                "secretTemplate": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"annotations": STRING_MAP, "labels": STRING_MAP},
                },
            },
        },
    },
}
# Kinds that are CRDs, not in kubernetes-validate's schemas: checked against these instead.
CRD_SCHEMAS = {"ServiceMonitor": SERVICE_MONITOR_SCHEMA, "Certificate": CERTIFICATE_SCHEMA}


def validate_schemas(tree, resources):
    import jsonschema

    failures = []
    for r in resources:
        where = f"{tree}: {key(r)}"
        if r.get("kind") in CRD_SCHEMAS:
            for e in jsonschema.Draft202012Validator(CRD_SCHEMAS[r["kind"]]).iter_errors(r):
                failures.append(f"{where}: {r['kind']} schema (fields used here): "
                                f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}")
            continue
        for version in KUBERNETES_VERSIONS:
            failures += [f"{where}: {m}" for m in _validate(json.dumps(r, sort_keys=True), version)]
    return failures


@functools.lru_cache(maxsize=None)
def _validate(resource_json, version):
    """kubernetes-validate's verdict, remembered: the self-test re-checks unchanged copies,
    and each call reads the version's schema files again."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(json.loads(resource_json), version, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(map(str, e.absolute_path)) or "<root>"
        return (f"Kubernetes {version} schema (strict): {path}: {e.message}",)
    except kubernetes_validate.SchemaNotFoundError as e:
        return (e.message,)
    return ()


# ---------------------------------------------------------------------------- consistency


def port_of(address):
    """A listener's port: "0.0.0.0:8080", or {address: ..., proxy_protocol: true}."""
    if isinstance(address, dict):
        address = address.get("address", "")
    return int(address.rsplit(":", 1)[1])


def seconds(duration):
    """The config's durations ("30s", "10m", "1h", "500ms") in seconds, or None."""
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", str(duration))
    return int(m[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m[2]] if m else None


def trusted_proxies_lines(lines):
    """(start, end) of the one `trusted_proxies:` key: its line and the lines below it that
    belong to its value (more indented, or `- ` items at its indentation), else None."""
    starts = [i for i, line in enumerate(lines) if re.match(r"\s*trusted_proxies:", line)]
    if len(starts) != 1:
        return None
    start = end = starts[0]
    indent = len(lines[start]) - len(lines[start].lstrip())
    for line in lines[start + 1:]:
        deeper = len(line) - len(line.lstrip())
        if not line.strip() or deeper < indent or (deeper == indent
                                                    and not line.lstrip().startswith("- ")):
            break
        end += 1
    return start, end + 1


def config_variant_failures(text, where):
    """Failures unless `text` is conf/archeio.yaml with only client_address.trusted_proxies
    changed, to a non-empty list of networks, as the ingress-nginx component ships it."""
    conf = read(GATEWAY_CONFIG)
    ours, theirs = text.splitlines(keepends=True), conf.splitlines(keepends=True)
    a, b = trusted_proxies_lines(ours), trusted_proxies_lines(theirs)
    if a is None or b is None:
        return [f"{where}: not exactly one trusted_proxies key (in it and in conf/archeio.yaml)"]
    outside = (ours[:a[0]], ours[a[1]:]), (theirs[:b[0]], theirs[b[1]:])
    if outside[0] != outside[1]:
        first = next(line for line in difflib.unified_diff(
            outside[1][0] + ["(trusted_proxies)\n"] + outside[1][1],
            outside[0][0] + ["(trusted_proxies)\n"] + outside[0][1], n=0)
            if line[:1] in "+-" and line[:3] not in ("+++", "---"))
        return [f"{where} differs from conf/archeio.yaml beyond client_address.trusted_proxies "
                f"(first: {first.strip()!r}); copy conf/archeio.yaml and set trusted_proxies again"]
    try:
        config, shipped = yaml.safe_load(text), yaml.safe_load(conf)
        client = config["archeio"]["client_address"]
        proxies = client["trusted_proxies"]
        client["trusted_proxies"] = shipped["archeio"]["client_address"]["trusted_proxies"]
    except (yaml.YAMLError, KeyError, TypeError) as e:
        return [f"{where}: no archeio.client_address.trusted_proxies ({type(e).__name__}: {e})"]
    failures = []
    if config != shipped:
        failures.append(f"{where} differs from conf/archeio.yaml beyond "
                        "client_address.trusted_proxies (its trusted_proxies lines hold more)")
    if not isinstance(proxies, list) or not proxies:
        failures.append(f"{where}: client_address.trusted_proxies is {proxies!r}, "
                        "not a list of the proxies' networks")
    for net in proxies if isinstance(proxies, list) else []:
        try:
            if "/" not in str(net):
                raise ValueError("no prefix length")
            ipaddress.ip_network(str(net), strict=False)
        except ValueError as e:
            failures.append(f"{where}: trusted_proxies entry {net!r} is not a CIDR ({e})")
    if client.get("trusted_proxy_hops", 0) != 0:
        failures.append(f"{where}: trusted_proxy_hops must be 0 with trusted_proxies")
    return failures


def pod_templates(resources):
    """(resource, pod template metadata, pod spec) of every workload."""
    for r in resources:
        spec = r.get("spec") or {}
        if r["kind"] in ("Deployment", "Job"):
            t = spec.get("template") or {}
        elif r["kind"] == "CronJob":
            t = ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}
        else:
            continue
        yield r, t.get("metadata") or {}, t.get("spec") or {}


def selects(selector, labels):
    match = (selector or {}).get("matchLabels") or {}
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def label_selector_matches(selector, labels):
    """A label selector as the API server reads it: empty (or absent) selects everything."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        k, op, values = e.get("key"), e.get("operator"), e.get("values") or []
        if (op == "In" and labels.get(k) not in values
                or op == "NotIn" and k in labels and labels[k] in values
                or op == "Exists" and k not in labels
                or op == "DoesNotExist" and k in labels):
            return False
    return True


def policies_selecting(resources, namespace, labels):
    """Every NetworkPolicy that applies to pods with these labels in this namespace."""
    return [r for r in resources if r.get("kind") == "NetworkPolicy"
            and r["metadata"].get("namespace") == namespace
            and label_selector_matches((r.get("spec") or {}).get("podSelector"), labels)]


def uncovered(network, excepts):
    """The parts of `network` that none of `excepts` covers."""
    pieces = [network]
    for x in excepts:
        if x.version != network.version:
            continue
        rest = []
        for p in pieces:
            if p.subnet_of(x):
                continue
            rest.extend(p.address_exclude(x) if x.subnet_of(p) else [p])
        pieces = rest
    return pieces


def egress_exclusion_failures(where, policy):
    """Failures for every egress rule of `policy` that opens a port other than DNS's to the
    metadata services or to the link-local and private ranges wholesale: a rule with no
    `to` (every address), or an ipBlock holding one of EGRESS_EXCLUDED that its `except`
    does not cover, or holding one of METADATA_ADDRESSES at all."""
    failures = []
    for i, rule in enumerate((policy.get("spec") or {}).get("egress") or []):
        ports = rule.get("ports") or []
        if ports and all(p.get("port") == 53 and "endPort" not in p for p in ports):
            continue  # DNS, to anywhere: a node-local cache sits on a link-local address
        what = ("every port" if not ports else "ports " + ", ".join(
            f"{p.get('port')}{'-' + str(p['endPort']) if 'endPort' in p else ''}/"
            f"{p.get('protocol', 'TCP')}" for p in ports))
        if not rule.get("to"):
            failures.append(f"{where}: egress rule {i} reaches every address on {what}, the "
                            "metadata service (169.254.169.254) and every pod and private "
                            "address included; use ipBlocks that except "
                            f"{', '.join(map(str, EGRESS_EXCLUDED))}")
            continue
        for peer in rule["to"]:
            block = peer.get("ipBlock")
            if block is None:
                continue  # pods chosen by labels: no metadata service among them
            try:
                cidr = ipaddress.ip_network(str(block.get("cidr")), strict=False)
                excepts = [ipaddress.ip_network(str(e), strict=False)
                           for e in block.get("except") or []]
            except ValueError as e:
                failures.append(f"{where}: egress rule {i}: ipBlock {block}: {e}")
                continue
            missing = [n for n in EGRESS_EXCLUDED
                       if n.version == cidr.version and n.subnet_of(cidr) and uncovered(n, excepts)]
            if missing:
                failures.append(f"{where}: egress rule {i}'s ipBlock {cidr} on {what} does not "
                                f"except {', '.join(map(str, missing))}")
            reached = [a for a in METADATA_ADDRESSES
                       if a.version == cidr.version and a in cidr
                       and not any(a in x for x in excepts if x.version == a.version)
                       and not any(a in n for n in missing)]
            if reached:
                failures.append(f"{where}: egress rule {i}'s ipBlock {cidr} on {what} reaches "
                                f"the metadata address {', '.join(map(str, reached))}")
    return failures


def resolve_port(port, container):
    """A probe's or policy's port (a number or a container port's name) as a number."""
    if isinstance(port, int):
        return port
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return p.get("containerPort")
    return None


def one(resources, kind, name=None):
    found = [r for r in resources if r.get("kind") == kind
             and (name is None or r["metadata"].get("name") == name)]
    return found[0] if len(found) == 1 else None


def dockerfile_user():
    """The runtime stage's USER, which must be numeric `uid:gid`: the distroless runtime has
    no useradd, and a numeric user needs no /etc/passwd entry."""
    text = read(os.path.join(REPO, "Dockerfile"))
    runtime = text.split("FROM ")[-1]
    user = re.findall(r"^USER\s+(\S+)", runtime, re.M)
    return user[-1] if user else None


def config_urls(archeio):
    """Every URL the gateway may connect to that the shipped config names."""
    upstream = archeio.get("upstream") or {}
    mirrors = archeio.get("mirrors") or {}
    ranges = archeio.get("ranges") or {}
    urls = list(upstream.get("endpoints") or [])
    urls += [archeio.get("signature_upstream"), mirrors.get("default")]
    urls += list((mirrors.get("regions") or {}).values())
    urls += [m.get("url") for m in (mirrors.get("named") or {}).values()]
    urls += [s.get("url") for s in ranges.get("sources") or []]
    urls += list(ranges.get("aws_urls") or []) + list(ranges.get("gcp_urls") or [])
    return [u for u in urls if u]


def check_pods(tree, resources, failures):
    """What every pod here must be: the Dockerfile's user, locked down, no inline secret."""
    user = dockerfile_user()
    if not (user and re.fullmatch(r"[1-9]\d*:[1-9]\d*", user)):
        failures.append(f"Dockerfile: runtime USER {user} is not a numeric non-root uid:gid")
    uid, gid = (user or ":").split(":")[:2] if user and ":" in user else ("", "")
    for r, meta, pod in pod_templates(resources):
        where = f"{tree}: {key(r)}"
        sc = pod.get("securityContext") or {}
        if sc.get("runAsNonRoot") is not True:
            failures.append(f"{where}: pod securityContext.runAsNonRoot is not true")
        for field, wanted in (("runAsUser", uid), ("runAsGroup", gid), ("fsGroup", gid)):
            if str(sc.get(field)) != wanted:
                failures.append(f"{where}: pod securityContext.{field} is {sc.get(field)}, "
                                f"the image's user is {uid}:{gid} (Dockerfile)")
        if (sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            failures.append(f"{where}: pod seccompProfile is not RuntimeDefault")
        if pod.get("automountServiceAccountToken") is not False:
            failures.append(f"{where}: automountServiceAccountToken is not false")
        if pod.get("enableServiceLinks") is not False:
            failures.append(f"{where}: enableServiceLinks is not false (Service links can set "
                            "ARCHEIO_ADMIN_PORT and the like)")
        for c in (pod.get("initContainers") or []) + (pod.get("containers") or []):
            cw = f"{where}: container {c.get('name')}"
            csc = c.get("securityContext") or {}
            if csc.get("allowPrivilegeEscalation") is not False:
                failures.append(f"{cw}: allowPrivilegeEscalation is not false")
            if csc.get("readOnlyRootFilesystem") is not True:
                failures.append(f"{cw}: readOnlyRootFilesystem is not true")
            if (csc.get("capabilities") or {}).get("drop") != ["ALL"]:
                failures.append(f"{cw}: capabilities.drop is not [ALL]")
            res = c.get("resources") or {}
            for part, name in (("requests", "cpu"), ("requests", "memory"), ("limits", "memory")):
                if name not in (res.get(part) or {}):
                    failures.append(f"{cw}: no resources.{part}.{name}")
            for e in c.get("env") or []:
                if SECRET_LIKE_ENV.search(e.get("name", "")) and "value" in e:
                    failures.append(f"{cw}: env {e['name']} has an inline value; "
                                    "take it from a Secret (valueFrom.secretKeyRef)")
            if tree != "base" and c.get("image") == PLACEHOLDER_IMAGE:
                failures.append(f"{cw}: image is the placeholder {PLACEHOLDER_IMAGE}; "
                                "the overlay's images: must set it")
    images = {c.get("image") for _, _, pod in pod_templates(resources)
              for c in pod.get("containers") or []}
    if len(images) > 1:
        failures.append(f"{tree}: the workloads run different images: {sorted(images)}")
    for r in resources:
        if r.get("kind") == "Secret":
            failures.append(f"{tree}: {key(r)}: Secrets are created by the operator, never "
                            "shipped in these manifests")


def mounted_configmap(pod, container, mount_path, resources, tree, failures, where):
    """The rendered ConfigMap that `container` mounts at `mount_path`, or None."""
    mounts = {m.get("mountPath"): m for m in container.get("volumeMounts") or []}
    mount = mounts.get(mount_path)
    volumes = {v.get("name"): v for v in pod.get("volumes") or []}
    volume = volumes.get(mount.get("name")) if mount else None
    name = ((volume or {}).get("configMap") or {}).get("name")
    cm = one(resources, "ConfigMap", name) if name else None
    if cm is None:
        failures.append(f"{where}: no rendered ConfigMap mounted at {mount_path}")
    return cm


def check_gateway(tree, resources, failures):
    deployment = one(resources, "Deployment", "archeio")
    if deployment is None:
        failures.append(f"{tree}: no Deployment archeio")
        return
    where = f"{tree}: {key(deployment)}"
    pod_meta = deployment["spec"]["template"].get("metadata") or {}
    pod_labels = pod_meta.get("labels") or {}
    pod = deployment["spec"]["template"]["spec"]
    containers = pod.get("containers") or []
    if len(containers) != 1:
        failures.append(f"{where}: expected one container, found {len(containers)}")
        return
    c = containers[0]
    if c.get("args") != ["-c", "/etc/archeio/archeio.yaml"]:
        failures.append(f"{where}: args are {c.get('args')}, expected -c /etc/archeio/archeio.yaml")
    for e in c.get("env") or []:
        if e.get("name") in ("PORT", "ARCHEIO_ADMIN_PORT"):
            failures.append(f"{where}: env {e['name']} would replace the config's listeners")
    cm = mounted_configmap(pod, c, "/etc/archeio", resources, tree, failures, where)
    if cm is None:
        return
    text = (cm.get("data") or {}).get("archeio.yaml")
    expected = tree_config(tree)
    if text != read(expected):
        failures.append(f"{tree}: {key(cm)}: archeio.yaml is not {rel(expected)}")
        if text is None:
            return
    if expected == INGRESS_NGINX_CONFIG:
        failures += config_variant_failures(text, f"{tree}: {key(cm)}: archeio.yaml")
    elif expected != GATEWAY_CONFIG:
        failures += own_config_failures(tree, text, f"{tree}: {key(cm)}: archeio.yaml")
    config = yaml.safe_load(text)
    archeio = config.get("archeio") or {}
    check_config_files(tree, resources, pod, c, archeio, failures, where)
    listen = {port_of(a) for a in archeio.get("listen") or []}
    admin = {port_of(a) for a in archeio.get("admin_listen") or []}
    if len(listen) != 1 or len(admin) != 1:
        failures.append(f"{tree}: the config should have one listen port and one admin port, "
                        f"has {sorted(listen)} and {sorted(admin)}")
        return
    (listen,), (admin,) = listen, admin

    # Container ports, by the names the Service, probes and policy use.
    ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
    if ports.get("registry") != listen:
        failures.append(f"{where}: containerPort registry is {ports.get('registry')}, "
                        f"the config's listen port is {listen}")
    if ports.get("admin") != admin:
        failures.append(f"{where}: containerPort admin is {ports.get('admin')}, "
                        f"the config's admin_listen port is {admin}")
    tls = check_tls(tree, resources, pod, c, archeio, expected, failures, where)

    # Probes: on the admin listener, at the paths it serves.
    for probe, path in (("startupProbe", None), ("livenessProbe", "/healthz"),
                        ("readinessProbe", "/readyz")):
        p = c.get(probe)
        if not p:
            failures.append(f"{where}: no {probe}")
            continue
        get = p.get("httpGet") or {}
        if resolve_port(get.get("port"), c) != admin:
            failures.append(f"{where}: {probe} port {get.get('port')} is not the admin port {admin}")
        if path and get.get("path") != path:
            failures.append(f"{where}: {probe} path {get.get('path')}, expected {path}")
        if not path and get.get("path") not in ("/healthz", "/readyz"):
            failures.append(f"{where}: {probe} path {get.get('path')} is not /healthz or /readyz")
    ready = c.get("readinessProbe") or {}
    if ready and (ready.get("failureThreshold") != 1 or ready.get("periodSeconds", 10) > 5):
        failures.append(f"{where}: readinessProbe should have failureThreshold 1 and a period "
                        "of at most 5 s, so a pod that answers 503 leaves the Service at once")

    # Shutdown: SIGKILL after the gateway's own drain.
    grace = config.get("grace_period_seconds")
    timeout = config.get("graceful_shutdown_timeout_seconds")
    tgps = pod.get("terminationGracePeriodSeconds", 30)
    if not isinstance(grace, int) or not isinstance(timeout, int):
        failures.append(f"{tree}: the config lacks grace_period_seconds or "
                        "graceful_shutdown_timeout_seconds")
    elif tgps < grace + timeout + SHUTDOWN_MARGIN_SECONDS:
        failures.append(f"{where}: terminationGracePeriodSeconds {tgps} < grace_period_seconds "
                        f"{grace} + graceful_shutdown_timeout_seconds {timeout} + "
                        f"{SHUTDOWN_MARGIN_SECONDS} s margin: in-flight requests would be killed")

    # Paths the gateway writes must be on a writable volume: the root filesystem is not.
    mounts = [m for m in c.get("volumeMounts") or [] if not m.get("readOnly")]
    for field in ("pid_file", "upgrade_sock"):
        path = config.get(field)
        if path and not any(path.startswith(m["mountPath"].rstrip("/") + "/") for m in mounts):
            failures.append(f"{where}: the config's {field} {path} is on no writable volume "
                            "(readOnlyRootFilesystem)")

    # Spread over zones and nodes, counting this Deployment's pods.
    spread = pod.get("topologySpreadConstraints") or []
    for topology in ("topology.kubernetes.io/zone", "kubernetes.io/hostname"):
        if not any(s.get("topologyKey") == topology and selects(s.get("labelSelector"), pod_labels)
                   for s in spread):
            failures.append(f"{where}: no topologySpreadConstraint over {topology} selecting its pods")

    check_service(tree, resources, pod_labels, c, listen, admin, tls, failures)
    check_scaling(tree, resources, deployment, pod_labels, failures)
    check_network_policy(tree, resources, pod_labels, c, listen, admin, tls, archeio, failures)
    check_ingress(tree, resources, archeio, failures)
    check_service_monitor(tree, resources, failures)


def own_config_failures(tree, text, where, components=None):
    """An overlay's own gateway config: with components/ingress-nginx it replaces the
    component's file, so it must trust the same proxies (README: keep its trusted_proxies).
    `components` stands for the tree's own list (the self-test's)."""
    if INGRESS_NGINX not in (tree_components(tree) if components is None else components):
        return []
    try:
        ours = yaml.safe_load(text)["archeio"]["client_address"]
        theirs = yaml.safe_load(read(INGRESS_NGINX_CONFIG))["archeio"]["client_address"]
    except (yaml.YAMLError, KeyError, TypeError) as e:
        return [f"{where}: no archeio.client_address ({type(e).__name__}: {e})"]
    failures = []
    if ours.get("trusted_proxies") != theirs.get("trusted_proxies"):
        failures.append(f"{where}: client_address.trusted_proxies {ours.get('trusted_proxies')} "
                        f"is not {rel(INGRESS_NGINX_CONFIG)}'s {theirs.get('trusted_proxies')}, "
                        "which this file replaces")
    if ours.get("trusted_proxy_hops", 0) != 0:
        failures.append(f"{where}: trusted_proxy_hops must be 0 with trusted_proxies")
    return failures


def config_files(node, path="archeio"):
    """(key, path) of every file the gateway config's `archeio` section names: keys ending
    in _file (a list for _files) and ranges sources' `file`."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            yield from config_files(item, f"{path}[{i}]")
    elif isinstance(node, dict):
        for k, v in node.items():
            where = f"{path}.{k}"
            if (k.endswith("_file") or k == "file") and isinstance(v, str):
                yield where, v
            elif k.endswith("_files") and isinstance(v, list):
                yield from ((f"{where}[{i}]", f) for i, f in enumerate(v) if isinstance(f, str))
            else:
                yield from config_files(v, where)


def check_config_files(tree, resources, pod, container, archeio, failures, where):
    """Every file the config reads is on a volume; a credential file on a Secret volume,
    mounted read-only as a directory (a subPath mount is never updated when the Secret
    changes, and the gateway re-reads these files every 2 s to follow a rotation), whose
    files no other user may read; and an overlay's example of that Secret holds its keys."""
    volumes = {v.get("name"): v for v in pod.get("volumes") or []}
    needed = {}  # secretName -> {key: config key}
    for name, path in config_files(archeio):
        mounts = [m for m in container.get("volumeMounts") or []
                  if path == m.get("mountPath")
                  or path.startswith(m.get("mountPath", "").rstrip("/") + "/")]
        if not mounts:
            failures.append(f"{where}: the config's {name} {path} is on no volume mount")
            continue
        mount = max(mounts, key=lambda m: len(m["mountPath"]))
        volume = volumes.get(mount.get("name")) or {}
        if not SECRET_FILE_KEY.search(name):
            continue
        mw = f"{where}: {name} {path}"
        secret = volume.get("secret")
        if secret is None:
            failures.append(f"{mw}: volume {mount.get('name')} is not from a Secret")
            continue
        if "subPath" in mount or "subPathExpr" in mount:
            failures.append(f"{mw}: mounted with subPath, which the kubelet never updates when "
                            "the Secret changes (the gateway re-reads the file to follow a "
                            "rotation): mount the Secret's directory")
        if mount.get("readOnly") is not True:
            failures.append(f"{mw}: volume mount {mount.get('name')} is not readOnly")
        item = path[len(mount["mountPath"].rstrip("/")) + 1:] if path != mount["mountPath"] \
            else mount.get("subPath", "")
        items = {i.get("path"): i for i in secret.get("items") or []}
        if items and item not in items:
            failures.append(f"{mw}: Secret volume {mount.get('name')}'s items have no {item}")
        mode = (items.get(item) or {}).get("mode", secret.get("defaultMode", 0o644))
        if not isinstance(mode, int) or mode & 0o007:
            failures.append(f"{mw}: mode {oct(mode) if isinstance(mode, int) else mode} lets "
                            "every user read the key; 0440 (the kubelet gives the pod's "
                            "fsGroup read access)")
        secret_key = (items.get(item) or {}).get("key", item)
        needed.setdefault(secret.get("secretName"), {})[secret_key] = name
    namespace = (one(resources, "Deployment", "archeio") or {"metadata": {}})["metadata"].get(
        "namespace")
    directory = os.path.join(HERE, tree)
    for file in sorted(f for f in os.listdir(directory) if f.endswith(EXAMPLE_SUFFIX)):
        path = os.path.join(directory, file)
        for doc in (d for d in yaml.safe_load_all(read(path)) if d):
            ew = f"{rel(path)}: {key(doc)}"
            failures.extend(f"{ew}: {m}" for version in KUBERNETES_VERSIONS
                            for m in _validate(json.dumps(doc, sort_keys=True), version))
            if doc.get("kind") != "Secret":
                continue
            meta = doc.get("metadata") or {}
            if meta.get("name") not in needed:
                failures.append(f"{ew}: no gateway volume mounts this Secret")
                continue
            if meta.get("namespace") != namespace:
                failures.append(f"{ew}: namespace {meta.get('namespace')}, the gateway's is "
                                f"{namespace}")
            held = set(doc.get("data") or {}) | set(doc.get("stringData") or {})
            for k, name in sorted(needed[meta["name"]].items()):
                if k not in held:
                    failures.append(f"{ew}: no key {k}, which the config's {name} reads")


def host_matches(host, name):
    """A certificate name covers `host`: equal, or `*.` covering exactly one label."""
    host, name = host.lower().rstrip("."), name.lower().rstrip(".")
    if name.startswith("*."):
        return "." in host and host.split(".", 1)[1] == name[2:]
    return host == name


def check_tls(tree, resources, pod, container, archeio, expected, failures, where):
    """The gateway's own TLS listener (components/tls): a tree with the component generates a
    config with tls.listen; its port is the container's `https` port; every certificate
    file is in the directory of a mounted Secret (the Certificate's, under the key
    cert-manager writes), mounted without subPath, so that a renewal reaches the running
    pod; and the Certificate names the host of client_auth.public_url. The TLS port, or
    None."""
    tls = archeio.get("tls") or {}
    listen = {port_of(a) for a in tls.get("listen") or []}
    named = {p.get("name"): p.get("containerPort") for p in container.get("ports") or []}
    if TLS_COMPONENT in tree_components(tree) and not listen:
        failures.append(f"{tree}: includes components/tls but its gateway config "
                        f"({rel(expected)}) has no tls.listen: generate the overlay's own "
                        "archeio.yaml with the tls keys (components/tls/kustomization.yaml), "
                        "in a component listed after components/tls")
    if not listen:
        if "https" in named:
            failures.append(f"{where}: containerPort https {named['https']}, but the config "
                            "has no tls.listen")
        return None
    if len(listen) != 1:
        failures.append(f"{tree}: the config should have one tls.listen port, has {sorted(listen)}")
        return None
    (port,) = listen
    if named.get("https") != port:
        failures.append(f"{where}: containerPort https is {named.get('https')}, the config's "
                        f"tls.listen port is {port}")

    certificates = [r for r in resources if r.get("kind") == "Certificate"]
    issued = {(r.get("spec") or {}).get("secretName"): r for r in certificates}
    volumes = {v.get("name"): v for v in pod.get("volumes") or []}
    for i, pair in enumerate(tls.get("certificates") or []):
        for field, secret_key in TLS_SECRET_KEYS.items():
            path, name = str((pair or {}).get(field)), f"tls.certificates[{i}].{field}"
            mounts = [m for m in container.get("volumeMounts") or []
                      if path == m.get("mountPath")
                      or path.startswith(m.get("mountPath", "").rstrip("/") + "/")]
            mount = max(mounts, key=lambda m: len(m["mountPath"])) if mounts else None
            secret = (volumes.get(mount.get("name")) or {}).get("secret") if mount else None
            if secret is None:
                failures.append(f"{where}: the config's {name} {path} is not in the directory "
                                "of a mounted Secret (cert-manager's, as components/tls mounts it)")
                continue
            if "subPath" in mount or "subPathExpr" in mount or path == mount["mountPath"]:
                failures.append(f"{where}: the config's {name} {path} is mounted with subPath, "
                                "which the kubelet never updates when cert-manager renews the "
                                "certificate: the pod would serve the old one until it restarts, "
                                "past its expiry; mount the Secret's directory")
                continue
            item = path[len(mount["mountPath"].rstrip("/")) + 1:]
            items = {it.get("path"): it for it in secret.get("items") or []}
            secret_name = secret.get("secretName")
            if not certificates:
                continue  # a Secret of the operator's own, in whatever layout
            if secret_name not in issued:
                failures.append(f"{where}: the config's {name} {path} is in the directory of "
                                f"the Secret {secret_name}, not of a Certificate's "
                                f"({', '.join(sorted(map(str, issued)))})")
            elif (items.get(item) or {}).get("key", item) != secret_key:
                failures.append(f"{where}: the config's {name} {path} is not the key "
                                f"{secret_key} of the Secret {secret_name}, where cert-manager "
                                "writes it")
    public = urlsplit(str((archeio.get("client_auth") or {}).get("public_url") or ""))
    names = [n for r in certificates for n in (r.get("spec") or {}).get("dnsNames") or []]
    if public.hostname and certificates and not any(host_matches(public.hostname, n)
                                                    for n in names):
        failures.append(f"{tree}: client_auth.public_url's host {public.hostname} is not among "
                        f"the Certificate's dnsNames {names}: clients would get a certificate "
                        "for another name from the token realm")
    return port


def check_service(tree, resources, pod_labels, container, listen, admin, tls, failures):
    svc = one(resources, "Service", "archeio")
    if svc is None:
        failures.append(f"{tree}: no Service archeio")
        return
    where = f"{tree}: {key(svc)}"
    if not selects({"matchLabels": svc["spec"].get("selector")}, pod_labels):
        failures.append(f"{where}: selector does not match the Deployment's pods")
    targets = {p.get("name"): resolve_port(p.get("targetPort", p.get("port")), container)
               for p in svc["spec"].get("ports") or []}
    if targets.get("registry") != listen:
        failures.append(f"{where}: port registry does not reach the listen port {listen}")
    if targets.get("admin") != admin:
        failures.append(f"{where}: port admin does not reach the admin port {admin}")
    if tls is not None and targets.get("https") != tls:
        failures.append(f"{where}: port https does not reach the TLS port {tls}")


def check_scaling(tree, resources, deployment, pod_labels, failures):
    pdb = one(resources, "PodDisruptionBudget", "archeio")
    if pdb is None or not selects(pdb["spec"].get("selector"), pod_labels):
        failures.append(f"{tree}: no PodDisruptionBudget archeio selecting the gateway's pods")
    hpa = one(resources, "HorizontalPodAutoscaler", "archeio")
    if hpa is None:
        failures.append(f"{tree}: no HorizontalPodAutoscaler archeio")
        return
    where = f"{tree}: {key(hpa)}"
    target = hpa["spec"].get("scaleTargetRef") or {}
    if (target.get("kind"), target.get("name")) != ("Deployment", deployment["metadata"]["name"]):
        failures.append(f"{where}: scaleTargetRef is not the Deployment")
    lo, hi = hpa["spec"].get("minReplicas", 1), hpa["spec"].get("maxReplicas")
    replicas = deployment["spec"].get("replicas", 1)
    if not (lo <= replicas <= hi):
        failures.append(f"{tree}: Deployment replicas {replicas} outside the HPA's {lo}..{hi}")
    if not any((m.get("resource") or {}).get("name") == "cpu"
               and ((m.get("resource") or {}).get("target") or {}).get("type") == "Utilization"
               for m in hpa["spec"].get("metrics") or []):
        failures.append(f"{where}: no CPU utilisation metric")


def check_network_policy(tree, resources, pod_labels, container, listen, admin, tls, archeio,
                         failures):
    np = one(resources, "NetworkPolicy", "archeio")
    if np is None:
        failures.append(f"{tree}: no NetworkPolicy archeio")
        return
    where = f"{tree}: {key(np)}"
    spec = np["spec"]
    if not selects(spec.get("podSelector"), pod_labels):
        failures.append(f"{where}: podSelector does not match the gateway's pods")
    if sorted(spec.get("policyTypes") or []) != ["Egress", "Ingress"]:
        failures.append(f"{where}: policyTypes should be Ingress and Egress")

    def ports(rule):
        return {(resolve_port(p.get("port"), container), p.get("protocol", "TCP"))
                for p in rule.get("ports") or []}

    ingress = spec.get("ingress") or []
    trusted = ((archeio.get("client_address") or {}).get("trusted_proxies")) or []
    networks = [ipaddress.ip_network(str(n), strict=False) for n in trusted]
    # The ports clients connect to: the plain listener, and the TLS one (components/tls).
    for what, port in [("registry", listen)] + ([("TLS", tls)] if tls is not None else []):
        if not trusted:
            # The socket peer is the client: any peer may connect, none can name another.
            if not any((port, "TCP") in ports(r) and not r.get("from") for r in ingress):
                failures.append(f"{where}: no ingress to the {what} port {port} from anywhere")
            continue
        # A peer in trusted_proxies names the client: only the proxies may reach the port.
        # trusted_proxies is usually wider than the proxies (ingress-nginx: the pod CIDR), so
        # the peers must be a named namespace, or addresses inside trusted_proxies.
        rules = [r for r in ingress if (port, "TCP") in ports(r) or not r.get("ports")]
        if not rules:
            failures.append(f"{where}: no ingress to the {what} port {port} from the proxies")
        for r in rules:
            if not r.get("from"):
                failures.append(f"{where}: admits the {what} port {port} from anywhere while "
                                "client_address.trusted_proxies is set: a pod or host in "
                                f"{', '.join(map(str, trusted))} could forge its client address")
            for peer in r.get("from") or []:
                named = (set(peer) <= {"namespaceSelector", "podSelector"}
                         and (peer.get("namespaceSelector") or {}).get("matchLabels"))
                block = peer.get("ipBlock") or {}
                try:
                    inside = set(peer) == {"ipBlock"} and any(
                        ipaddress.ip_network(block.get("cidr", ""), strict=False).subnet_of(n)
                        for n in networks if n.version == ipaddress.ip_network(
                            block.get("cidr", ""), strict=False).version)
                except ValueError:
                    inside = False
                if not (named or inside):
                    failures.append(f"{where}: admits the {what} port {port} from {peer}, "
                                    "not only a namespace named by its labels or addresses "
                                    "inside client_address.trusted_proxies")
    for r in ingress:
        if (admin, "TCP") in ports(r) or not r.get("ports"):
            peers = r.get("from") or []
            if not peers or any(
                    set(p) != {"namespaceSelector"}
                    or (p["namespaceSelector"].get("matchLabels") or {})
                    != {"kubernetes.io/metadata.name": "monitoring"} for p in peers):
                failures.append(f"{where}: an ingress rule opens the admin port {admin} to more "
                                "than the monitoring namespace")
    egress = set().union(*(ports(r) for r in spec.get("egress") or [])) if spec.get("egress") else set()
    for proto in ("UDP", "TCP"):
        if (53, proto) not in egress:
            failures.append(f"{where}: no egress to DNS ({proto} 53)")
    needed = {}
    for url in config_urls(archeio):
        u = urlsplit(url)
        needed.setdefault(u.port or {"https": 443, "http": 80}.get(u.scheme), []).append(url)
    for port, urls in sorted(needed.items(), key=str):
        if (port, "TCP") not in egress:
            failures.append(f"{where}: no egress to TCP port {port}, which the config's {urls[0]} "
                            f"needs ({len(urls)} URLs in all)")
    # NetworkPolicies add up: any policy selecting the gateway's pods may open more.
    for policy in policies_selecting(resources, np["metadata"].get("namespace"), pod_labels):
        failures += egress_exclusion_failures(f"{tree}: {key(policy)}", policy)


def check_ingress(tree, resources, archeio, failures):
    """An Ingress reaches the Service's registry port; on ingress-nginx, with the annotations
    a registry needs; and the gateway then trusts the proxy's X-Forwarded-For."""
    svc = one(resources, "Service", "archeio") or {"metadata": {}, "spec": {}}
    registry = {p.get("port") for p in svc["spec"].get("ports") or [] if p.get("name") == "registry"}
    read_timeout = seconds(((archeio.get("upstream") or {}).get("timeouts") or {}).get("read"))
    for ing in (r for r in resources if r.get("kind") == "Ingress"):
        where = f"{tree}: {key(ing)}"
        spec = ing.get("spec") or {}
        backends = [spec["defaultBackend"]] if spec.get("defaultBackend") else []
        backends += [p.get("backend") or {} for rule in spec.get("rules") or []
                     for p in (rule.get("http") or {}).get("paths") or []]
        if not backends:
            failures.append(f"{where}: no backend")
        for b in backends:
            service, port = b.get("service") or {}, (b.get("service") or {}).get("port") or {}
            if service.get("name") != svc["metadata"].get("name") or not (
                    port.get("name") == "registry" or port.get("number") in registry):
                failures.append(f"{where}: backend {service.get('name')}:{port.get('name') or port.get('number')} "
                                "is not Service archeio port registry")
        if not (archeio.get("client_address") or {}).get("trusted_proxies"):
            failures.append(f"{where}: a proxy in front, but client_address.trusted_proxies is "
                            "empty: every client would be the proxy")
        if spec.get("ingressClassName") != "nginx":
            continue
        notes = (ing["metadata"].get("annotations") or {})
        if notes.get(NGINX_ANNOTATIONS + "proxy-buffering") != "off":
            failures.append(f"{where}: {NGINX_ANNOTATIONS}proxy-buffering is not \"off\" "
                            "(pass-through blobs would be buffered and spooled by nginx)")
        timeout = notes.get(NGINX_ANNOTATIONS + "proxy-read-timeout", "60")
        if not str(timeout).isdigit() or (read_timeout and int(timeout) <= read_timeout):
            failures.append(f"{where}: {NGINX_ANNOTATIONS}proxy-read-timeout {timeout!r} is not "
                            f"seconds beyond the gateway's upstream read timeout ({read_timeout} s)")


def check_service_monitor(tree, resources, failures):
    if tree == "base":
        return  # a component: the base must apply without the Prometheus Operator's CRDs
    sm = one(resources, "ServiceMonitor", "archeio")
    svc = one(resources, "Service", "archeio")
    if sm is None:
        failures.append(f"{tree}: no ServiceMonitor archeio")
        return
    if tree == "overlays/example-fill" or svc is None:
        return
    where = f"{tree}: {key(sm)}"
    if not selects(sm["spec"].get("selector"), svc["metadata"].get("labels") or {}):
        failures.append(f"{where}: selector does not match the Service's labels")
    endpoints = sm["spec"].get("endpoints") or []
    if not any(e.get("port") == "admin" and e.get("path", "/metrics") == "/metrics" for e in endpoints):
        failures.append(f"{where}: no endpoint scraping the Service's admin port at /metrics")


def sync_urls(text):
    """Every URL a sync with this configuration may connect to that the file names: the
    source registry, the token service hosts it allows, S3 or each store's endpoint."""
    config = yaml.safe_load(text or "") or {}
    sync = config.get("sync") or {}
    source = sync.get("source") or {}
    registry = source.get("registry")
    scheme = urlsplit(registry or "").scheme or "https"
    urls = [registry] + [f"{scheme}://{h}" for h in source.get("auth_realm_hosts") or []]
    for d in sync.get("destinations") or []:
        if str(d.get("url", "")).startswith("s3://"):
            urls.append(d.get("endpoint") or f"https://s3.{d.get('region') or 'us-east-1'}.amazonaws.com")
    return [u for u in urls if u]


def check_sync_network_policy(tree, resources, jobs, failures):
    """The sync pods hold the destinations' write credentials: a NetworkPolicy isolates them
    both ways, none admits anything to them, and their egress is DNS and the ports of the
    sync config's URLs, never the metadata service or private ranges wholesale."""
    checked = set()
    for r, meta, pod in jobs:
        where = f"{tree}: {key(r)}"
        policies = policies_selecting(resources, r["metadata"].get("namespace"),
                                      meta.get("labels") or {})
        if not any({"Ingress", "Egress"} <= set((p.get("spec") or {}).get("policyTypes") or [])
                   for p in policies):
            failures.append(f"{where}: its pods are selected by no NetworkPolicy with policyTypes "
                            "Ingress and Egress; they hold the destinations' write credentials "
                            "and could reach every address, the metadata service included")
        egress = {(p.get("port"), p.get("protocol", "TCP"))
                  for policy in policies
                  if "Egress" in ((policy.get("spec") or {}).get("policyTypes") or [])
                  for rule in policy["spec"].get("egress") or [] for p in rule.get("ports") or []}
        for proto in ("UDP", "TCP"):
            if policies and (53, proto) not in egress:
                failures.append(f"{where}: its pods have no egress to DNS ({proto} 53)")
        c = (pod.get("containers") or [{}])[0]
        cm = mounted_configmap(pod, c, "/etc/archeio", resources, tree, [], where)
        needed = {}
        for url in sync_urls((cm or {}).get("data", {}).get("sync.yaml")):
            u = urlsplit(url)
            needed.setdefault(u.port or {"https": 443, "http": 80}.get(u.scheme), []).append(url)
        for port, urls in sorted(needed.items(), key=str):
            if policies and (port, "TCP") not in egress:
                failures.append(f"{where}: no egress to TCP port {port}, which the sync config's "
                                f"{urls[0]} needs ({len(urls)} URLs in all)")
        for policy in policies:
            if key(policy) in checked:
                continue
            checked.add(key(policy))
            pw = f"{tree}: {key(policy)}"
            if (policy.get("spec") or {}).get("ingress"):
                failures.append(f"{pw}: admits ingress to the sync pods, which serve nothing")
            failures += egress_exclusion_failures(pw, policy)


def check_sync(tree, resources, failures):
    jobs = [(r, meta, pod) for r, meta, pod in pod_templates(resources)
            if r["kind"] in ("CronJob", "Job")]
    check_sync_network_policy(tree, resources, jobs, failures)
    for r, _, pod in jobs:
        where = f"{tree}: {key(r)}"
        c = (pod.get("containers") or [{}])[0]
        args = c.get("args") or []
        if args[:3] != ["sync", "-c", "/etc/archeio/sync.yaml"]:
            failures.append(f"{where}: args {args} do not start with sync -c /etc/archeio/sync.yaml")
        cm = mounted_configmap(pod, c, "/etc/archeio", resources, tree, failures, where)
        if cm is not None and (cm.get("data") or {}).get("sync.yaml") != read(SYNC_CONFIG):
            failures.append(f"{tree}: {key(cm)}: sync.yaml is not conf/sync.example.yaml")
        if cm is not None and not cm["metadata"]["name"].startswith("archeio-sync-"):
            failures.append(f"{where}: mounts {key(cm)}, not the archeio-sync ConfigMap")
        if r["kind"] == "CronJob":
            fields = r["spec"].get("schedule", "").split()
            if len(fields) != 5 or fields[2:] != ["*", "*", "*"] or "*" in fields[:2] \
                    or "/" in " ".join(fields[:2]) or "," in " ".join(fields[:2]):
                failures.append(f"{where}: schedule {r['spec'].get('schedule')!r} is not once a day")
            if r["spec"].get("concurrencyPolicy") != "Forbid":
                failures.append(f"{where}: concurrencyPolicy is not Forbid")
        else:
            spec = r["spec"]
            shard = re.fullmatch(r"\$\(JOB_COMPLETION_INDEX\)/(\d+)",
                                 args[args.index("--shard") + 1] if "--shard" in args[:-1] else "")
            if spec.get("completionMode") != "Indexed":
                failures.append(f"{where}: completionMode is not Indexed")
            if not shard:
                failures.append(f"{where}: no --shard $(JOB_COMPLETION_INDEX)/N argument")
            elif not (int(shard[1]) == spec.get("completions") == spec.get("parallelism")):
                failures.append(f"{where}: --shard .../{shard[1]}, completions "
                                f"{spec.get('completions')} and parallelism "
                                f"{spec.get('parallelism')} must be the same N")
    if SYNC_COMPONENT in tree_components(tree) and not any(
            r["kind"] == "CronJob" for r, _, _ in jobs):
        failures.append(f"{tree}: no sync CronJob")
    if tree == "overlays/example-fill" and not any(r["kind"] == "Job" for r, _, _ in jobs):
        failures.append(f"{tree}: no sharded sync Job")


def check_tree(tree, resources):
    failures = validate_schemas(tree, resources)
    try:
        check_pods(tree, resources, failures)
        if tree != "overlays/example-fill":
            check_gateway(tree, resources, failures)
        check_sync(tree, resources, failures)
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as e:
        # A field of the wrong shape (the schema failures above say which) stops the rest.
        failures.append(f"{tree}: consistency checks stopped: {type(e).__name__}: {e}")
    # A policy selecting both the gateway's and the sync pods is reported by both checks.
    return list(dict.fromkeys(failures))


def check_across(rendered):
    """overlays/example-fill re-applies the sync ConfigMap, CronJob and NetworkPolicy: they
    must not differ."""
    failures = []
    example, fill = rendered["overlays/example"], rendered["overlays/example-fill"]
    for kind in ("ConfigMap", "CronJob", "NetworkPolicy"):
        a = {key(r): r for r in example if r["kind"] == kind and "sync" in r["metadata"]["name"]}
        b = {key(r): r for r in fill if r["kind"] == kind}
        if a != b:
            failures.append(f"overlays/example-fill: its sync {kind} differs from overlays/example's; "
                            "applying it would change the daily sync")
    return failures


def check_copies():
    failures = []
    for copy_path, original in COPIES.items():
        if read(copy_path) != read(original):
            failures.append(f"{rel(copy_path)} differs from {rel(original)}: "
                            f"cp {rel(original)} {rel(copy_path)}")
    # The component's file is checked here too, not only as rendered: a tree may not use it.
    return failures + config_variant_failures(read(INGRESS_NGINX_CONFIG), rel(INGRESS_NGINX_CONFIG))


# ---------------------------------------------------------------------------- self-test


def _gateway(rs):
    return one(rs, "Deployment", "archeio")["spec"]["template"]["spec"]


def _container(rs):
    return _gateway(rs)["containers"][0]


def _job(rs):
    return one(rs, "Job", "archeio-sync-sharded")["spec"]


def _edit_config(rs, old, new):
    data = one(rs, "ConfigMap", _gateway(rs)["volumes"][0]["configMap"]["name"])["data"]
    if old not in data["archeio.yaml"]:
        raise KeyError(old)
    data["archeio.yaml"] = data["archeio.yaml"].replace(old, new)


def _mount(rs, name):
    return next(m for m in _container(rs)["volumeMounts"] if m["name"] == name)


def _volume(rs, name):
    return next(v for v in _gateway(rs)["volumes"] if v["name"] == name)


def _ingress(rs):
    return one(rs, "Ingress", "archeio")


def _policy(rs, name="archeio"):
    return one(rs, "NetworkPolicy", name)["spec"]


def _public(rs, name, family=0):
    """The `except` list of the public 443/80 rule's IPv4 (0) or IPv6 (1) ipBlock."""
    return _policy(rs, name)["egress"][1]["to"][family]["ipBlock"]["except"]


def _https_rule(rs):
    return next(r for r in _policy(rs)["ingress"]
                if {"port": "https", "protocol": "TCP"} in r.get("ports") or [])


def _subpath_tls(rs):
    """The TLS Secret mounted file by file with subPath, as is often done, and wrong here."""
    mount = _mount(rs, "tls")
    _container(rs)["volumeMounts"].remove(mount)
    _container(rs)["volumeMounts"].extend(
        {**mount, "mountPath": f"{mount['mountPath']}/{f}", "subPath": f}
        for f in ("tls.crt", "tls.key"))


def _add_policy(rs, name, spec):
    namespace = one(rs, "NetworkPolicy", "archeio-sync") or one(rs, "NetworkPolicy", "archeio")
    rs.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": name, **{k: v for k, v in namespace["metadata"].items()
                                             if k == "namespace"}},
               "spec": spec})


# (tree, what is broken, how, a failure that must then be reported).
BREAKAGES = [
    ("overlays/example", "no readinessProbe",
     lambda rs: _container(rs).pop("readinessProbe"), "no readinessProbe"),
    ("overlays/example", "terminationGracePeriodSeconds 5",
     lambda rs: _gateway(rs).__setitem__("terminationGracePeriodSeconds", 5),
     "terminationGracePeriodSeconds 5 <"),
    ("overlays/example", "an unknown container field",
     lambda rs: _container(rs).__setitem__("bogusField", True), "'bogusField'"),
    ("overlays/example", "an unknown ServiceMonitor field",
     lambda rs: one(rs, "ServiceMonitor")["spec"]["endpoints"][0].__setitem__("bogus", 1),
     "'bogus'"),
    ("overlays/example", "containerPort registry 8081",
     lambda rs: _container(rs)["ports"][0].__setitem__("containerPort", 8081),
     "containerPort registry is 8081"),
    ("overlays/example", "liveness on /readyz",
     lambda rs: _container(rs)["livenessProbe"]["httpGet"].__setitem__("path", "/readyz"),
     "livenessProbe path /readyz"),
    ("overlays/example", "readiness on the registry port",
     lambda rs: _container(rs)["readinessProbe"]["httpGet"].__setitem__("port", "registry"),
     "readinessProbe port registry"),
    ("overlays/example", "runAsUser 0",
     lambda rs: _gateway(rs)["securityContext"].__setitem__("runAsUser", 0),
     "runAsUser is 0"),
    ("base", "ConfigMap content edited",
     lambda rs: next(r for r in rs if r["kind"] == "ConfigMap")["data"].__setitem__(
         "archeio.yaml", "version: 1\n"), "archeio.yaml is not conf/archeio.yaml"),
    ("overlays/example", "ConfigMap content edited",
     lambda rs: next(r for r in rs if r["kind"] == "ConfigMap")["data"].__setitem__(
         "archeio.yaml", "version: 1\n"),
     "archeio.yaml is not deploy/kubernetes/components/ingress-nginx/archeio.yaml"),
    ("overlays/example", "ingress-nginx config changed beyond trusted_proxies",
     lambda rs: _edit_config(rs, "mode: redirect", "mode: passthrough"),
     "differs from conf/archeio.yaml beyond client_address.trusted_proxies"),
    ("overlays/example", "a trusted proxy that is not a CIDR",
     lambda rs: _edit_config(rs, "- 10.244.0.0/16", "- 10.244.0.0"), "is not a CIDR"),
    ("overlays/example", "registry port open to all with trusted proxies",
     lambda rs: _policy(rs)["ingress"][0].pop("from"),
     "admits the registry port 8080 from anywhere while client_address.trusted_proxies"),
    ("overlays/example", "registry port open to every namespace",
     lambda rs: _policy(rs)["ingress"][0]["from"][0].__setitem__(
         "namespaceSelector", {}), "not only a namespace named by its labels"),
    ("overlays/example", "Ingress to the admin port",
     lambda rs: _ingress(rs)["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"][
         "port"].__setitem__("name", "admin"), "is not Service archeio port registry"),
    ("overlays/example", "Ingress buffering blobs",
     lambda rs: _ingress(rs)["metadata"]["annotations"].pop(NGINX_ANNOTATIONS + "proxy-buffering"),
     "proxy-buffering is not \"off\""),
    ("overlays/example", "no /tmp volume",
     lambda rs: _container(rs).__setitem__("volumeMounts", _container(rs)["volumeMounts"][:1]),
     "pid_file /tmp/archeio.pid is on no writable volume"),
    ("overlays/example", "an inline secret",
     lambda rs: one(rs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"][
         "containers"][0]["env"][1].__setitem__("value", "hunter2"),
     "env AWS_SECRET_ACCESS_KEY has an inline value"),
    ("overlays/example", "egress without 443",
     lambda rs: _policy(rs)["egress"].pop(), "no egress to TCP port 443"),
    ("overlays/example", "admin port open to all",
     lambda rs: _policy(rs)["ingress"][1].pop("from"),
     "opens the admin port 9090"),
    ("overlays/example-fill", "parallelism 3 with --shard .../4",
     lambda rs: _job(rs).__setitem__("parallelism", 3), "must be the same N"),
    ("overlays/example", "gateway egress on 443/80 to every address",
     lambda rs: _policy(rs)["egress"][1].pop("to"), "egress rule 1 reaches every address"),
    ("base", "gateway ipBlock without 169.254.0.0/16 excepted",
     lambda rs: _public(rs, "archeio").remove("169.254.0.0/16"), "does not except 169.254.0.0/16"),
    ("overlays/example", "gateway ipBlock without 10.0.0.0/8 excepted",
     lambda rs: _public(rs, "archeio").remove("10.0.0.0/8"), "does not except 10.0.0.0/8"),
    ("overlays/example", "gateway IPv6 ipBlock without fc00::/7 excepted",
     lambda rs: _public(rs, "archeio", 1).remove("fc00::/7"), "does not except fc00::/7"),
    ("overlays/example", "gateway egress to the metadata service",
     lambda rs: _policy(rs)["egress"].append(
         {"to": [{"ipBlock": {"cidr": "169.254.169.254/32"}}], "ports": [{"port": 80}]}),
     "reaches the metadata address 169.254.169.254"),
    ("overlays/example", "another policy opening every address to the namespace's pods",
     lambda rs: _add_policy(rs, "allow-all-egress", {"podSelector": {}, "policyTypes": ["Egress"],
                                                     "egress": [{}]}),
     "NetworkPolicy/archeio/allow-all-egress: egress rule 0 reaches every address on every port"),
    ("overlays/example", "no sync NetworkPolicy",
     lambda rs: rs.remove(one(rs, "NetworkPolicy", "archeio-sync")),
     "CronJob/archeio/archeio-sync: its pods are selected by no NetworkPolicy"),
    ("overlays/example-fill", "sync policy without Ingress",
     lambda rs: _policy(rs, "archeio-sync").__setitem__("policyTypes", ["Egress"]),
     "Job/archeio/archeio-sync-sharded: its pods are selected by no NetworkPolicy with policyTypes Ingress and Egress"),
    ("overlays/example-fill", "the sharded Job's pods labelled out of the sync policy",
     lambda rs: _job(rs)["template"]["metadata"]["labels"].__setitem__(
         "app.kubernetes.io/component", "sync-sharded"),
     "Job/archeio/archeio-sync-sharded: its pods are selected by no NetworkPolicy"),
    ("overlays/example-fill", "sync policy admitting ingress",
     lambda rs: _policy(rs, "archeio-sync").__setitem__("ingress", [{}]),
     "admits ingress to the sync pods"),
    ("overlays/example-fill", "sync egress on 443/80 to every address",
     lambda rs: _policy(rs, "archeio-sync")["egress"][1].pop("to"),
     "NetworkPolicy/archeio/archeio-sync: egress rule 1 reaches every address"),
    ("overlays/example", "sync IPv4 ipBlock without 192.168.0.0/16 excepted",
     lambda rs: _public(rs, "archeio-sync").remove("192.168.0.0/16"),
     "does not except 192.168.0.0/16"),
    ("overlays/example", "sync IPv6 ipBlock without fe80::/10 excepted",
     lambda rs: _public(rs, "archeio-sync", 1).remove("fe80::/10"), "does not except fe80::/10"),
    ("overlays/example", "sync egress without 443",
     lambda rs: _policy(rs, "archeio-sync")["egress"].pop(),
     "no egress to TCP port 443, which the sync config's"),
    ("overlays/example", "sync egress without DNS",
     lambda rs: _policy(rs, "archeio-sync")["egress"].pop(0), "have no egress to DNS (UDP 53)"),
    ("overlays/private-registry", "the ingress-nginx component's config winning over its own",
     lambda rs: one(rs, "ConfigMap")["data"].__setitem__(
         "archeio.yaml", read(INGRESS_NGINX_CONFIG)),
     "archeio.yaml is not deploy/kubernetes/overlays/private-registry/gateway-config/archeio.yaml"),
    ("overlays/private-registry", "the TLS Secret mounted file by file with subPath",
     _subpath_tls, "never updates when cert-manager renews the certificate"),
    ("overlays/private-registry", "tls.listen on another port than the container's https",
     lambda rs: _edit_config(rs, "- 0.0.0.0:8443", "- 0.0.0.0:9443"),
     "containerPort https is 8443, the config's tls.listen port is 9443"),
    ("overlays/private-registry", "no tls.listen in the config of a tree with components/tls",
     lambda rs: _edit_config(rs, "    listen:\n      - 0.0.0.0:8443\n", "    listen: []\n"),
     "includes components/tls but its gateway config"),
    ("overlays/private-registry", "the NetworkPolicy not admitting the TLS port",
     lambda rs: _policy(rs)["ingress"].remove(_https_rule(rs)),
     "no ingress to the TLS port 8443 from anywhere"),
    ("overlays/private-registry", "proxies trusted while the TLS port is open to all",
     lambda rs: _edit_config(rs, "trusted_proxies: []", "trusted_proxies: [10.244.0.0/16]"),
     "admits the TLS port 8443 from anywhere while client_address.trusted_proxies"),
    ("overlays/private-registry", "the Service's https port to the plain listener",
     lambda rs: next(p for p in one(rs, "Service", "archeio")["spec"]["ports"]
                     if p["name"] == "https").__setitem__("targetPort", "registry"),
     "port https does not reach the TLS port 8443"),
    ("overlays/private-registry", "the certificate file outside the Secret's directory",
     lambda rs: _edit_config(rs, "cert_file: /run/secrets/archeio/tls/tls.crt",
                             "cert_file: /etc/archeio/tls.crt"),
     "is not in the directory of a mounted Secret"),
    ("overlays/private-registry", "the TLS volume from another Secret than the Certificate's",
     lambda rs: _volume(rs, "tls")["secret"].__setitem__("secretName", "archeio-tls-old"),
     "in the directory of the Secret archeio-tls-old, not of a Certificate's"),
    ("overlays/private-registry", "the Certificate for another host than public_url's",
     lambda rs: one(rs, "Certificate")["spec"].__setitem__("dnsNames", ["other.example.com"]),
     "client_auth.public_url's host registry.example.com is not among"),
    ("overlays/private-registry", "an unknown Certificate field",
     lambda rs: one(rs, "Certificate")["spec"]["issuerRef"].__setitem__("bogus", 1),
     "Certificate schema (fields used here): spec.issuerRef"),
    ("overlays/private-registry", "no mount of the mirror credentials' Secret",
     lambda rs: _container(rs)["volumeMounts"].remove(_mount(rs, "mirror-credentials")),
     "secret_access_key_file /run/secrets/archeio/mirror/secret_access_key is on no volume mount"),
    ("overlays/private-registry", "the mirror's secret key mounted with subPath",
     lambda rs: _mount(rs, "mirror-credentials").update(
         mountPath="/run/secrets/archeio/mirror/secret_access_key", subPath="secret_access_key"),
     "mounted with subPath"),
    ("overlays/private-registry", "world-readable mirror credentials",
     lambda rs: _volume(rs, "mirror-credentials")["secret"].pop("defaultMode"),
     "mode 0o644 lets every user read the key"),
    ("overlays/private-registry", "mirror credentials from a ConfigMap",
     lambda rs: _volume(rs, "mirror-credentials").__setitem__(
         "configMap", {"name": _volume(rs, "mirror-credentials").pop("secret")["secretName"]}),
     "is not from a Secret"),
    ("overlays/private-registry", "no egress to the in-cluster registry",
     lambda rs: _policy(rs)["egress"].pop(), "no egress to TCP port 5000"),
    ("overlays/private-registry", "no DNS egress",
     lambda rs: _policy(rs)["egress"].pop(0), "no egress to DNS (UDP 53)"),
]


def self_test(rendered):
    failures = []
    # An overlay's own config with components/ingress-nginx (as the README tells you to
    # write one) must keep the component's trusted_proxies. No shipped tree combines the two
    # any more, so the check is run on overlays/private-registry's file as if it did.
    text = read(own_config("overlays/private-registry") or GATEWAY_CONFIG)
    if not any("which this file replaces" in f for f in own_config_failures(
            "overlays/private-registry", text, "self-test", components=[INGRESS_NGINX])):
        failures.append("self-test: an own config with other trusted_proxies than "
                        "components/ingress-nginx's: no failure saying 'which this file replaces'")
    for tree, what, breakage, expected in BREAKAGES:
        if tree not in rendered:
            continue
        broken = copy.deepcopy(rendered[tree])
        try:
            breakage(broken)
        except (KeyError, IndexError, StopIteration, AttributeError, TypeError, ValueError) as e:
            # Only trees that pass get here, so the breakage itself no longer fits them (a
            # renamed or added resource): say so rather than test nothing.
            failures.append(f"self-test: {tree} with {what}: the breakage no longer applies "
                            f"({type(e).__name__}: {e}); update BREAKAGES")
            continue
        if not any(expected in f for f in check_tree(tree, broken)):
            failures.append(f"self-test: {tree} with {what}: no failure saying {expected!r}")
    return failures


# ---------------------------------------------------------------------------- main


def main():
    import kubernetes_validate

    if kubernetes_validate.__version__ != KUBERNETES_VALIDATE:
        print(f"warning: kubernetes-validate {kubernetes_validate.__version__}, "
              f"checked with {KUBERNETES_VALIDATE}", file=sys.stderr)
    failures, rendered, renderers = check_copies(), {}, "render.py"
    for tree in TREES:
        try:
            rendered[tree] = render.render(os.path.join(HERE, tree))
            theirs = kubectl_render(tree)
        except render.RenderError as e:
            failures.append(f"{tree}: {e}")
            continue
        if theirs is not None:
            renderers = "render.py and kubectl kustomize (agreeing)"
            failures += compare_renders(tree, rendered[tree], theirs)
    if "--render" in sys.argv:
        for tree, resources in rendered.items():
            print(f"# {tree}")
            yaml.safe_dump_all(resources, sys.stdout, sort_keys=False)
        return 0
    passed = {}
    for tree, resources in rendered.items():
        own = check_tree(tree, resources)
        failures += own
        if not own:
            passed[tree] = resources
    if len(rendered) == len(TREES):
        failures += check_across(rendered)
    # Only a tree that passes shows whether a breakage is caught.
    failures += self_test(passed)
    for f in failures:
        print(f"FAIL {f}")
    count = sum(len(r) for r in rendered.values())
    if failures:
        print(f"deploy/kubernetes: {len(failures)} failures")
        return 1
    print(f"deploy/kubernetes: {count} resources in {len(TREES)} trees rendered with {renderers}, "
          f"valid for Kubernetes {' and '.join(KUBERNETES_VERSIONS)} (strict), consistent with "
          f"conf/archeio.yaml; {len(BREAKAGES)} deliberate breakages caught")
    if renderers == "render.py":
        print("note: no kubectl with kustomize 5 here, so render.py's output was not compared "
              "with kustomize's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
