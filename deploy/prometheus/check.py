#!/usr/bin/env python3
"""Checks the Prometheus rules and the Grafana dashboard against promtool, the real gateway
and a real Prometheus (python3 standard library only).

  1. `promtool check rules` on alerts.yml, `promtool test rules` on alerts_test.yml, and
     prometheusrule.yaml (the Prometheus Operator's wrapper) holding the same rules; every
     alert has its runbook link and README.md section, and test cases where it fires and
     where it stays silent;
  2. every PromQL expression of deploy/grafana/archeio.json parses (`promtool check rules`
     on a temporary file with one recording rule per expression);
  3. every metric name that the rules and the dashboard use is exported by the gateway:
     the binary at $ARCHEIO_BIN (default target/release/archeio) runs on loopback with a
     small config, in pass-through mode against an in-process fake upstream and mirror so
     that the per-endpoint, per-mirror, per-source series exist, and its /metrics is read;
     archeio_sync_* names are those `archeio sync --metrics-file` writes after a run against
     the same fake upstream, push_time_seconds the Pushgateway's;
  4. a real `prometheus` scrapes that gateway every second with alerts.yml loaded; after a
     few registry requests its HTTP API must return archeio_build_info, the request counts
     sent, up == 1, every alert and dashboard expression must evaluate without error, the
     rules must report health "ok", and the alerts whose condition the setup creates (a dead
     upstream endpoint, a dead mirror's breaker, a range URL that never loads) must match,
     those of a healthy gateway must not; once the gateway is stopped, ArcheioNoReadyReplica's
     condition must hold;
  5. with prometheus-pushgateway installed, the sync run pushes to it and Prometheus scrapes
     it (honor_labels): the sync alerts' series must be there, paired, and their conditions
     must not hold after a successful run.

Exits 1 with one FAIL line per problem. `--write-prometheusrule` regenerates
prometheusrule.yaml from alerts.yml instead.
"""

import hashlib
import http.client
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
ALERTS = os.path.join(HERE, "alerts.yml")
ALERTS_TEST = os.path.join(HERE, "alerts_test.yml")
PROMETHEUSRULE = os.path.join(HERE, "prometheusrule.yaml")
DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "archeio.json")
BINARY = os.environ.get("ARCHEIO_BIN") or os.path.join(ROOT, "target", "release", "archeio")
JOB = "archeio"

# Series Prometheus itself writes (never scraped from the gateway).
PROMETHEUS_BUILTINS = {
    "up", "scrape_duration_seconds", "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling", "scrape_series_added", "ALERTS", "ALERTS_FOR_STATE",
}
# Series the Pushgateway adds to every group pushed to it (the sync's, job="archeio_sync").
PUSHGATEWAY_BUILTINS = {"push_time_seconds", "push_failure_time_seconds"}
# Metric names `archeio sync` writes (--metrics-file) and pushes (--push-gateway), not the
# gateway's /metrics.
SYNC_PREFIX = "archeio_sync_"
README = os.path.join(HERE, "README.md")
# Words in PromQL that look like metric names.
PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan", "sum", "min", "max", "avg", "group", "stddev", "stdvar",
    "count", "count_values", "bottomk", "topk", "quantile",
}

PROMETHEUSRULE_HEADER = """\
# GENERATED from alerts.yml by `python3 deploy/prometheus/check.py --write-prometheusrule`;
# do not edit (check.py fails when the two differ). For the Prometheus Operator: the
# operator's ruleSelector must match these labels.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: archeio
  labels:
    app.kubernetes.io/name: archeio
spec:
"""

failures = []


def fail(msg):
    failures.append(msg)
    print(f"FAIL: {msg}", flush=True)


def ok(msg):
    print(f"ok: {msg}", flush=True)


def run(cmd):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return p.returncode, p.stdout


# --- the rules file -------------------------------------------------------------------


def alerts_groups_text():
    """alerts.yml from its `groups:` line on (the comments above it stay out)."""
    text = open(ALERTS).read()
    m = re.search(r"^groups:", text, re.M)
    if not m:
        raise SystemExit(f"{ALERTS}: no top-level groups: key")
    return text[m.start():]


def prometheusrule_text():
    body = "".join(
        ("  " + line if line.strip() else line) for line in alerts_groups_text().splitlines(True)
    )
    return PROMETHEUSRULE_HEADER + body


def rule_exprs(path):
    """(name, expr) of every rule in a rules file as alerts.yml writes them: `expr:` with a
    one-line value or a `|`/`>` block. No YAML parser in the standard library; the count is
    checked against promtool's."""
    lines = open(path).read().splitlines()
    out, name, i = [], None, 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^\s*-?\s*(alert|record):\s*(\S+)", line)
        if m:
            name = m.group(2)
        m = re.match(r"^(\s*)expr:\s*(.*)$", line)
        if m:
            indent, value = len(m.group(1)), m.group(2).strip()
            if value[:1] in ("|", ">"):
                block = []
                i += 1
                while i < len(lines) and (not lines[i].strip() or
                                          len(lines[i]) - len(lines[i].lstrip()) > indent):
                    block.append(lines[i].strip())
                    i += 1
                out.append((name, "\n".join(block).strip()))
                continue
            if value[:1] in ("'", '"'):
                value = value[1:-1]
            out.append((name, value))
        i += 1
    return out


def check_rules():
    if not shutil.which("promtool"):
        fail("promtool not found (apt-get install prometheus)")
        return []
    code, out = run(["promtool", "check", "rules", ALERTS])
    found = re.search(r"SUCCESS: (\d+) rules found", out)
    if code or not found:
        fail(f"promtool check rules {ALERTS}:\n{out}")
    else:
        ok(f"promtool check rules: {found.group(1)} rules")
    exprs = rule_exprs(ALERTS)
    if found and len(exprs) != int(found.group(1)):
        fail(f"read {len(exprs)} expressions from {ALERTS}, promtool found {found.group(1)} rules")
    code, out = run(["promtool", "test", "rules", ALERTS_TEST])
    lines = out.splitlines()
    out = "\n".join(l for i, l in enumerate(lines) if l not in lines[:i] or not l.strip())
    if code or "SUCCESS" not in out:
        fail(f"promtool test rules {ALERTS_TEST}:\n{out}")
    else:
        ok("promtool test rules: SUCCESS")
    try:
        current = open(PROMETHEUSRULE).read()
    except OSError as e:
        fail(f"{PROMETHEUSRULE}: {e}; write it with: python3 {sys.argv[0]} --write-prometheusrule")
    else:
        if current != prometheusrule_text():
            fail(f"{PROMETHEUSRULE} differs from alerts.yml; regenerate it with: "
                 f"python3 {sys.argv[0]} --write-prometheusrule")
        else:
            ok("prometheusrule.yaml holds the rules of alerts.yml")
    return exprs


def check_alert_coverage():
    """Each alert: a runbook annotation pointing at README.md#<name, lowercase>, a `### <name>`
    section there, and alerts_test.yml cases where it fires and where it stays silent (a test
    naming an alert that does not exist passes in promtool, so that is refused too)."""
    before = len(failures)
    text = open(ALERTS).read()
    blocks = re.split(r"^\s*-\s*alert:\s*", text, flags=re.M)[1:]
    names = [b.split()[0] for b in blocks]
    headings = set(re.findall(r"^###\s+(\S+)\s*$", open(README).read(), re.M))
    for name, block in zip(names, blocks):
        want = f"deploy/prometheus/README.md#{name.lower()}"
        m = re.search(r'^\s*runbook:\s*"?([^"\n]*)"?\s*$', block, re.M)
        if not m or m.group(1) != want:
            fail(f"{name}: runbook annotation {m.group(1) if m else None!r}, expected {want!r}")
        if name not in headings:
            fail(f"{name}: no `### {name}` section in {README}")
    fires, silent = set(), set()
    lines = open(ALERTS_TEST).read().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^\s*-?\s*alertname:\s*(\S+)\s*$", line)
        if not m:
            continue
        for nxt in lines[i + 1:i + 3]:
            e = re.match(r"^\s*exp_alerts:\s*(.*?)\s*$", nxt)
            if e:
                (silent if e.group(1) == "[]" else fires).add(m.group(1))
                break
    for name in sorted((fires | silent) - set(names)):
        fail(f"{ALERTS_TEST} tests alert {name}, which {ALERTS} does not have")
    for name in names:
        if name not in fires:
            fail(f"{name}: no case in {ALERTS_TEST} where it fires")
        if name not in silent:
            fail(f"{name}: no case in {ALERTS_TEST} where it stays silent")
    if len(failures) == before:
        ok(f"each of the {len(names)} alerts has its runbook section and promtool cases where "
           "it fires and where it stays silent")


# --- the dashboard --------------------------------------------------------------------


def dashboard_exprs():
    """(where, raw expr) of every query target, and (where, metric) of label_values()
    variables."""
    dash = json.load(open(DASHBOARD))
    exprs, var_metrics = [], []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    exprs.append((f'panel {p.get("id")} "{p.get("title")}" {t.get("refId")}',
                                  t["expr"]))
            walk(p.get("panels", []))

    walk(dash.get("panels", []))
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v.get("query")
        q = q.get("query", "") if isinstance(q, dict) else (q or "")
        m = re.match(r"^\s*label_values\((.*),\s*\w+\s*\)\s*$", q)
        exprs_of = m.group(1) if m else q
        var_metrics.append((f'variable "{v.get("name")}"', exprs_of))
    return dash, exprs, var_metrics


def substitute(expr):
    """The expression with Grafana's variables replaced by values PromQL takes."""
    e = re.sub(r"\$\{?__(rate_interval|interval|range)\}?", "5m", expr)
    e = re.sub(r"\$\{(\w+)(:\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", ".+", e)
    return e


def check_dashboard_structure(dash):
    if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
        fail(f"dashboard schemaVersion {dash.get('schemaVersion')!r}: expected a recent one (>= 36)")
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        fail("dashboard: no `datasource` template variable of type datasource (prometheus)")
    ids = []

    def walk(panels):
        for p in panels:
            ids.append(p.get("id"))
            if p.get("type") != "row":
                for where in [p] + p.get("targets", []):
                    uid = (where.get("datasource") or {}).get("uid")
                    if uid != "${datasource}":
                        fail(f'dashboard panel "{p.get("title")}": datasource uid {uid!r}, '
                             "expected ${datasource}")
            walk(p.get("panels", []))

    walk(dash.get("panels", []))
    if len(ids) != len(set(ids)):
        fail(f"dashboard: panel ids repeat: {sorted(i for i in ids if ids.count(i) > 1)}")


def check_dashboard_parses(exprs, tmp):
    path = os.path.join(tmp, "dashboard_rules.yml")
    with open(path, "w") as f:
        f.write("groups:\n")
        for i, (where, expr) in enumerate(exprs):
            f.write(f"  - name: {json.dumps(where)}\n    rules:\n")
            f.write(f"      - record: dashboard:expr_{i}\n        expr: {json.dumps(substitute(expr))}\n")
    code, out = run(["promtool", "check", "rules", path])
    if code:
        fail(f"dashboard expressions do not all parse (group = panel):\n{out}")
    else:
        ok(f"{len(exprs)} dashboard expressions parse")


# --- metric names ---------------------------------------------------------------------


def metric_names(expr):
    """Metric names a PromQL expression selects (a tokenizer, not a parser: strings, label
    matchers, ranges and grouping clauses are dropped first)."""
    e = re.sub(r'"(\\.|[^"\\])*"|\'(\\.|[^\'\\])*\'|`[^`]*`', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w.:])[a-zA-Z_:][\w:]*", e):
        word = m.group(0)
        if word in PROMQL_WORDS or re.match(r"\s*\(", e[m.end():]):
            continue
        names.add(word)
    return names


def exported_names(text):
    names, histograms = set(), set()
    for line in text.splitlines():
        m = re.match(r"^# TYPE (\S+) (\w+)", line)
        if m:
            names.add(m.group(1))
            if m.group(2) in ("histogram", "summary"):
                histograms.add(m.group(1))
            continue
        m = re.match(r"^([a-zA-Z_:][\w:]*)", line)
        if m:
            names.add(m.group(1))
    for h in histograms:
        names.discard(h)  # a histogram's own name selects nothing
        names.update({f"{h}_bucket", f"{h}_sum", f"{h}_count"})
    return names


def check_names(uses, exported, sync_written):
    """sync_written: the names `archeio sync --metrics-file` wrote (None: it did not run)."""
    missing = {}
    for where, name in uses:
        if name in PROMETHEUS_BUILTINS or name in PUSHGATEWAY_BUILTINS:
            continue
        if name.startswith(SYNC_PREFIX) and name not in exported:
            if sync_written is not None and name not in sync_written:
                missing.setdefault(name, []).append(where)
            continue
        if name not in exported:
            missing.setdefault(name, []).append(where)
    for name, wheres in sorted(missing.items()):
        source = f"`{BINARY} sync --metrics-file`" if name.startswith(SYNC_PREFIX) else \
            f"{BINARY} (or had no series in its /metrics)"
        fail(f"metric {name} is not exported by {source}; "
             f"used by: {'; '.join(sorted(set(wheres)))}")
    if not missing and sync_written is not None:
        ok(f"{len({n for _, n in uses})} metric names used are exported by the gateway, "
           "written by `archeio sync`, or Prometheus's and the Pushgateway's own")


# --- processes ------------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=5):
    """(status, body) of a GET, not following redirects."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


BLOB = b"archeio check.py blob\n"
BLOB_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                  "digest": BLOB_DIGEST, "size": len(BLOB)},
                       "layers": []}).encode()
# What the tampered mirror serves for BLOB: as long, other bytes (a digest mismatch).
TAMPERED = bytes(b ^ 0x20 for b in BLOB)
GEO_SAMPLE = os.path.join(ROOT, "conf", "examples", "geo-sample.mmdb")


class FakeRegistry(http.server.BaseHTTPRequestHandler):
    """The upstream registry (under /v2/prefix/) and the public mirror (/containers/images/),
    with a token service the upstream's Bearer challenge points at; under /nolength/ a mirror
    whose HEAD gives no Content-Length (a blob of unknown size), under /tampered/ one whose
    bytes are not the blob's (a digest mismatch)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        path = urllib.parse.urlsplit(self.path).path
        port = self.server.server_address[1]
        if path == "/v2/":
            return self.answer(200, b"{}", [("Docker-Distribution-Api-Version", "registry/2.0")])
        if path == "/token":
            return self.answer(200, b'{"token": "t"}', [("Content-Type", "application/json")])
        if path == f"/v2/{SYNC_REPOSITORY}/tags/list":
            # What `archeio sync` reads: a repository with no tag, so a run that copies
            # nothing and succeeds.
            body = json.dumps({"name": SYNC_REPOSITORY, "tags": []}).encode()
            return self.answer(200, body, [("Content-Type", "application/json")])
        if path.startswith("/containers/images/"):
            if path.endswith(BLOB_DIGEST):
                return self.answer(200, BLOB, [("Content-Type", "application/octet-stream")])
            return self.answer(404)
        if path == f"/nolength/containers/images/{BLOB_DIGEST}" and self.command == "HEAD":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            return
        if path == f"/tampered/containers/images/{BLOB_DIGEST}":
            return self.answer(200, TAMPERED, [("Content-Type", "application/octet-stream")])
        if path.startswith("/v2/prefix/"):
            if self.headers.get("Authorization") != "Bearer t":
                realm = f'Bearer realm="http://127.0.0.1:{port}/token",service="fake"'
                return self.answer(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}',
                                   [("WWW-Authenticate", realm)])
            if "/manifests/" in path:
                digest = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
                return self.answer(200, MANIFEST, [
                    ("Content-Type", "application/vnd.oci.image.manifest.v1+json"),
                    ("Docker-Content-Digest", digest)])
            if "/blobs/" in path:
                return self.answer(200, BLOB, [("Content-Type", "application/octet-stream"),
                                               ("Docker-Content-Digest", BLOB_DIGEST)])
        return self.answer(404)

    do_HEAD = do_GET


def gateway_config(tmp, port, admin, tls, fake, dead):
    cidrs = os.path.join(tmp, "cidrs.txt")
    with open(cidrs, "w") as f:
        f.write("10.0.0.0/8\n")
    # A geo database, so that its load and build-time series exist: the repository's sample.
    geo = os.path.join(tmp, "geo.mmdb")
    try:
        shutil.copyfile(GEO_SAMPLE, geo)
    except OSError as e:
        fail(f"the geo database sample: {e}")
    # A TLS listener, so that the certificate's series exist: a self-signed pair.
    code, out = run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "30", "-subj", "/CN=localhost", "-addext",
         "subjectAltName=DNS:localhost", "-keyout", f"{tmp}/tls.key", "-out", f"{tmp}/tls.crt"])
    if code:
        fail(f"openssl could not make the TLS listener's certificate: {out}")
    return f"""\
version: 1
threads: 1
pid_file: {tmp}/archeio.pid
upgrade_sock: {tmp}/upgrade.sock
grace_period_seconds: 0
graceful_shutdown_timeout_seconds: 1
archeio:
  listen: ['127.0.0.1:{port}']
  admin_listen: ['127.0.0.1:{admin}']
  tls:
    listen: ['127.0.0.1:{tls}']
    certificates: [{{cert_file: '{tmp}/tls.crt', key_file: '{tmp}/tls.key'}}]
  mode: passthrough
  upstream:
    # The fake upstream, then a closed port: an unhealthy endpoint.
    endpoints: ['http://127.0.0.1:{fake}', 'http://127.0.0.1:{dead}']
    path: prefix
    health_check: {{interval: 1s, timeout: 1s, unhealthy_after: 1, healthy_after: 1}}
  mirrors:
    default: 'http://127.0.0.1:{fake}'
    regions: {{}}
    named:
      dead: {{url: 'http://127.0.0.1:{dead}'}}
      nolength: {{url: 'http://127.0.0.1:{fake}/nolength'}}
      tampered: {{url: 'http://127.0.0.1:{fake}/tampered'}}
  geo:
    databases: ['{geo}']
  policy:
    rules:
      - {{name: dead-mirror, match: {{repository: 'broken/**', kind: blob}}, action: mirrors, mirrors: [dead]}}
      - {{name: unsized, match: {{repository: 'unsized/**', kind: blob}}, action: mirrors, mirrors: [nolength]}}
      - {{name: tampered, match: {{repository: 'tampered/**', kind: blob}}, action: mirrors, mirrors: [tampered], delivery: proxy}}
      - {{name: streamed, match: {{repository: 'streamed/**', kind: blob}}, action: mirrors, mirrors: [default], delivery: proxy}}
      - {{name: mirrored, match: {{kind: blob}}, action: mirrors, mirrors: [default]}}
  ranges:
    embedded: false
    sources:
      - {{format: cidrs, file: '{cidrs}', provider: onprem, region: lab}}
      # Never answers: a source that fails.
      - {{format: cidrs, url: 'http://127.0.0.1:{dead}/ranges.txt', provider: onprem, region: lab}}
  blob_check:
    breaker: {{failures: 1, cool_down: 10m}}
  offload:
    # The egress prices, for the dashboard's estimate and savings.
    cost_per_gb: {{upstream: 0.09, default: 0.02, dead: 0.02, nolength: 0.01, tampered: 0.01}}
"""


REQUESTS = 3  # of each kind
SYNC_REPOSITORY = "check/sync"


def sync_run(tmp, fake_port, pushgateway=None):
    """Runs `archeio sync` once against the fake registry (SYNC_REPOSITORY, no tags: a run
    that succeeds), with --metrics-file and, given a Pushgateway URL, --push-gateway. Returns
    the metric names it wrote, or None."""
    d = os.path.join(tmp, "sync")
    os.mkdir(d)
    conf = os.path.join(d, "sync.yaml")
    with open(conf, "w") as f:
        f.write(f"""\
sync:
  source:
    registry: 'http://127.0.0.1:{fake_port}'
    repositories: ['{SYNC_REPOSITORY}']
    attempts: 1
    timeout: 5s
  destinations:
    - url: 'file://{d}/mirror'
""")
    metrics = os.path.join(d, "metrics.txt")
    cmd = [BINARY, "sync", "-c", conf, "--metrics-file", metrics]
    if pushgateway:
        cmd += ["--push-gateway", pushgateway]
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=60, cwd=d)
    except subprocess.TimeoutExpired:
        fail(f"{' '.join(cmd)}: still running after 60 s")
        return None
    if p.returncode != 0:
        fail(f"{' '.join(cmd)} exited {p.returncode}, expected 0:\n{p.stdout[-2000:]}")
        return None
    text = open(metrics).read()
    if not re.search(r"^archeio_sync_success(\{\})? 1$", text, re.M):
        fail(f"`archeio sync` succeeded, but its --metrics-file has no archeio_sync_success 1:\n{text}")
    names = exported_names(text)
    ok(f"`archeio sync` ran against the fake registry (exit 0), wrote {len(names)} metric "
       "names" + (" and pushed them to the Pushgateway" if pushgateway else ""))
    return names


def registry_requests(base):
    """Sends REQUESTS of each kind; returns {(route, status): count} of what came back as
    expected, failing on anything else."""
    sent = {}
    cases = [
        ("/v2/", "api_version", 200),
        ("/v2/lib/app/manifests/v1", "upstream", 200),
        (f"/v2/lib/app/blobs/{BLOB_DIGEST}", "blob", 307),
        (f"/v2/streamed/app/blobs/{BLOB_DIGEST}", "blob", 200),
        (f"/v2/broken/app/blobs/{BLOB_DIGEST}", "blob", 200),  # dead mirror: from the upstream
        (f"/v2/unsized/app/blobs/{BLOB_DIGEST}", "blob", 307),  # a mirror HEAD without length
    ]
    for path, route, want in cases:
        for _ in range(REQUESTS):
            status, body = http_get(base + path)
            if status != want:
                fail(f"GET {path}: {status}, expected {want}: {body[:200]!r}")
                continue
            sent[(route, str(want))] = sent.get((route, str(want)), 0) + 1
    # A mirror whose copy is not the blob, streamed: the gateway must cut the answer off (a
    # digest mismatch), never hand the client the whole of it.
    path = f"/v2/tampered/app/blobs/{BLOB_DIGEST}"
    try:
        status, body = http_get(base + path)
    except (OSError, http.client.HTTPException):
        ok(f"GET {path} from a tampered mirror: cut off")
    else:
        if status == 200 and body == TAMPERED:
            fail(f"GET {path}: the tampered mirror's bytes were served whole")
        else:
            ok(f"GET {path} from a tampered mirror: {status}, {len(body)} bytes")
    return sent


def stop(proc):
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def tail(path, n=30):
    try:
        return "".join(open(path, errors="replace").readlines()[-n:])
    except OSError:
        return ""


def wait_for(what, probe, timeout, proc=None, log=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}:\n{tail(log)}")
        try:
            result = probe()
            if result:
                return result
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what}: not within {timeout} s" + (f":\n{tail(log)}" if log else ""))


def prom_query(base, expr):
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    status, body = http_get(url, timeout=10)
    doc = json.loads(body)
    if status != 200 or doc.get("status") != "success":
        raise ValueError(f"{doc.get('errorType')}: {doc.get('error')}")
    return doc["data"]["result"]


def expect_silent(prom, exprs, alerts, when):
    """Each of `alerts` is in alerts.yml and its condition does not hold `when`."""
    for alert in alerts:
        if alert not in exprs:
            fail(f"{alert}: not in alerts.yml")
        elif prom_query(prom, exprs[alert]):
            fail(f"{alert}: its condition holds {when}")
        else:
            ok(f"{alert}'s condition does not hold {when}")


def live_checks(tmp, alert_exprs, dash_exprs, uses):
    if not os.access(BINARY, os.X_OK):
        fail(f"gateway binary {BINARY} not found; build it (cargo build --release --locked) "
             "or set ARCHEIO_BIN")
        return
    if not shutil.which("prometheus"):
        fail("prometheus not found (apt-get install prometheus)")
    fake = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeRegistry)
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    gateway = prometheus = pushgateway = None
    try:
        dead = free_port()  # nothing listens here
        port, admin, tls = free_port(), free_port(), free_port()
        gwdir = os.path.join(tmp, "gateway")
        os.mkdir(gwdir)
        conf = os.path.join(gwdir, "archeio.yaml")
        with open(conf, "w") as f:
            f.write(gateway_config(gwdir, port, admin, tls, fake.server_address[1], dead))
        gwlog = os.path.join(gwdir, "stderr.log")
        env = {k: v for k, v in os.environ.items()
               if k not in ("PORT", "UPSTREAM_REGISTRY_ENDPOINT", "UPSTREAM_REGISTRY_PATH",
                            "SIGNATURE_UPSTREAM_ENDPOINT", "DEFAULT_AWS_BASE_URL",
                            "ARCHEIO_ADMIN_PORT")}
        env["RUST_LOG"] = "info"
        with open(gwlog, "w") as log:
            gateway = subprocess.Popen([BINARY, "-c", conf], stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=log, env=env, cwd=gwdir)
        admin_url, base = f"http://127.0.0.1:{admin}", f"http://127.0.0.1:{port}"
        wait_for("gateway /readyz 200", lambda: http_get(admin_url + "/readyz")[0] == 200,
                 30, gateway, gwlog)
        wait_for("gateway registry listener", lambda: http_get(base + "/")[0] == 307, 10,
                 gateway, gwlog)
        ok(f"gateway {BINARY} ready (pid {gateway.pid}, registry {port}, admin {admin})")

        sent = registry_requests(base)
        # The dead endpoint's health check and the dead mirror's breaker need a moment.
        time.sleep(3)
        status, body = http_get(admin_url + "/metrics")
        if status != 200:
            fail(f"GET /metrics: {status}")
            return
        exported = exported_names(body.decode())
        with open(os.path.join(tmp, "metrics.txt"), "wb") as f:
            f.write(body)

        # The sync's metrics: written by a real run, and pushed to a real Pushgateway when
        # one is installed (Debian package prometheus-pushgateway), which Prometheus scrapes.
        pg_url = None
        if shutil.which("prometheus-pushgateway"):
            pg_port = free_port()
            pglog = os.path.join(tmp, "pushgateway.log")
            with open(pglog, "w") as log:
                pushgateway = subprocess.Popen(
                    ["prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{pg_port}"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=tmp)
            pg_url = f"http://127.0.0.1:{pg_port}"
            wait_for("pushgateway /-/ready", lambda: http_get(pg_url + "/-/ready")[0] == 200,
                     30, pushgateway, pglog)
            ok(f"pushgateway ready (pid {pushgateway.pid}, port {pg_port})")
        else:
            print("skip: prometheus-pushgateway not found: the sync's series are not pushed "
                  "and scraped (apt-get install prometheus-pushgateway)", flush=True)
        sync_written = sync_run(tmp, fake.server_address[1], pg_url)
        check_names(uses, exported, sync_written)

        if not shutil.which("prometheus"):
            return
        prom_port = free_port()
        promdir = os.path.join(tmp, "prometheus")
        os.mkdir(promdir)
        promconf = os.path.join(promdir, "prometheus.yml")
        with open(promconf, "w") as f:
            f.write(f"""\
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: [{json.dumps(ALERTS)}]
scrape_configs:
  - job_name: {JOB}
    static_configs: [{{targets: ['127.0.0.1:{admin}']}}]
""")
            if pg_url:
                # honor_labels: the pushed job="archeio_sync" stays, as the alerts expect.
                f.write(f"""\
  - job_name: pushgateway
    honor_labels: true
    static_configs: [{{targets: ['{pg_url[len("http://"):]}']}}]
""")
        promlog = os.path.join(promdir, "prometheus.log")
        with open(promlog, "w") as log:
            prometheus = subprocess.Popen(
                ["prometheus", f"--config.file={promconf}",
                 f"--storage.tsdb.path={os.path.join(promdir, 'data')}",
                 f"--web.listen-address=127.0.0.1:{prom_port}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=promdir)
        prom = f"http://127.0.0.1:{prom_port}"
        wait_for("prometheus /-/ready", lambda: http_get(prom + "/-/ready")[0] == 200, 60,
                 prometheus, promlog)
        ok(f"prometheus ready (pid {prometheus.pid}, port {prom_port})")
        live_prometheus(prom, sent, alert_exprs, dash_exprs, prometheus, promlog,
                        gateway, bool(pg_url))
    except RuntimeError as e:
        fail(str(e))
    finally:
        stop(prometheus)
        stop(pushgateway)
        stop(gateway)
        fake.shutdown()
        fake.server_close()


def live_prometheus(prom, sent, alert_exprs, dash_exprs, proc, log, gateway, pushed):
    sel = f'job="{JOB}"'
    wait_for("a scrape of the gateway", lambda: prom_query(prom, f"up{{{sel}}} == 1"), 30, proc, log)
    ok(f"up{{{sel}}} == 1")
    if prom_query(prom, f'archeio_build_info{{{sel}}} == 1'):
        ok("archeio_build_info == 1")
    else:
        fail("archeio_build_info: no series in Prometheus")
    if prom_query(prom, f'archeio_ready{{{sel}}} == 1'):
        ok("archeio_ready == 1 (the gateway answers /readyz with 200)")
    else:
        fail("archeio_ready: no series at 1 in Prometheus, yet /readyz answered 200")
    for (route, status), n in sorted(sent.items()):
        q = f'sum(archeio_requests_total{{{sel}, route="{route}", status="{status}"}}) >= {n}'
        try:
            wait_for(f"{q}", lambda q=q: prom_query(prom, q), 15, proc, log)
            ok(q)
        except RuntimeError as e:
            got = prom_query(prom, f'archeio_requests_total{{{sel}, route="{route}"}}')
            fail(f"{e}; Prometheus has: {[(r['metric'], r['value'][1]) for r in got]}")
    for where, expr in alert_exprs + [(w, substitute(e)) for w, e in dash_exprs]:
        try:
            prom_query(prom, expr)
        except ValueError as e:
            fail(f"{where}: Prometheus cannot evaluate the expression: {e}\n{expr}")
    ok(f"Prometheus evaluated {len(alert_exprs)} alert and {len(dash_exprs)} dashboard expressions")
    live_offload_panels(prom, dash_exprs, proc, log)
    # The conditions this setup creates, without the `for:` wait.
    exprs = dict(alert_exprs)
    expect = [
        ("ArcheioUpstreamEndpointUnhealthy", "endpoint", lambda v: v != ""),
        ("ArcheioMirrorBreakerOpen", "host", lambda v: v != ""),
        ("ArcheioRangeRefreshFailing", "source", lambda v: v.endswith("/ranges.txt")),
        ("ArcheioMirrorDigestMismatch", "mirror", lambda v: v == "tampered"),
    ]
    for alert, label, good in expect:
        if alert not in exprs:
            fail(f"{alert}: not in alerts.yml")
            continue
        try:
            result = wait_for(f"{alert}'s condition", lambda a=alert: prom_query(prom, exprs[a]),
                              15, proc, log)
        except RuntimeError as e:
            fail(f"{alert}: the setup creates its condition, but the expression returned nothing ({e})")
            continue
        values = [r["metric"].get(label, "") for r in result]
        if any(good(v) for v in values):
            ok(f"{alert}'s condition holds for {label} {values}")
        else:
            fail(f"{alert}: expression returned {label} {values}")
    healthy = ("ArcheioMetricsAbsent", "ArcheioNoReadyReplica", "ArcheioFewReadyReplicas",
               "ArcheioTargetDown", "ArcheioNotReady", "ArcheioHigh5xxRatio")
    expect_silent(prom, exprs, healthy, "for the healthy, ready gateway")
    if pushed:
        live_sync_series(prom, exprs, proc, log)
    # The rule manager's own view: every rule evaluated, none in error.
    def rules_evaluated():
        doc = json.loads(http_get(prom + "/api/v1/rules")[1])
        rules = [r for g in doc["data"]["groups"] for r in g["rules"]]
        if rules and all(not r.get("lastEvaluation", "0001").startswith("0001") for r in rules):
            return rules
        return None
    try:
        rules = wait_for("every rule evaluated once", rules_evaluated, 15, proc, log)
        bad = [f"{r['name']}: {r.get('lastError')}" for r in rules if r.get("health") != "ok"]
        if bad:
            fail("rules in error in Prometheus: " + "; ".join(bad))
        elif len(rules) != len(alert_exprs):
            fail(f"Prometheus loaded {len(rules)} rules, alerts.yml has {len(alert_exprs)}")
        else:
            ok(f"Prometheus loaded {len(rules)} rules, all health ok")
    except RuntimeError as e:
        fail(str(e))

    # Last: the gateway stops. Its target stays, scraped in vain (up 0, no archeio_ready):
    # every replica of the job down must page through ArcheioNoReadyReplica, not through
    # ArcheioMetricsAbsent (there is a target).
    stop(gateway)
    for alert in ("ArcheioNoReadyReplica", "ArcheioMetricsAbsent"):
        if alert not in exprs:
            fail(f"{alert}: not in alerts.yml")
            return
    try:
        result = wait_for("ArcheioNoReadyReplica's condition once the gateway stopped",
                          lambda: prom_query(prom, exprs["ArcheioNoReadyReplica"]), 15, proc, log)
        ok(f"gateway stopped: ArcheioNoReadyReplica's condition holds for job "
           f"{[r['metric'].get('job') for r in result]}")
    except RuntimeError as e:
        up = prom_query(prom, f'up{{job="{JOB}"}}')
        fail(f"{e}; Prometheus has up {[(r['metric'], r['value'][1]) for r in up]}")
    if prom_query(prom, exprs["ArcheioMetricsAbsent"]):
        fail("ArcheioMetricsAbsent: its condition holds while the stopped gateway's target is "
             "still scraped")


# Dashboard panels whose every query the setup gives data (bytes from mirrors and the
# upstream, their prices, a mirror HEAD without Content-Length, a tampered mirror): a vector
# matching that matches nothing evaluates without error, so it is looked for here.
DATA_PANELS = ("Bytes served by source", "Egress estimate", "Share offloaded",
               "Saved versus all from upstream", "Blob answers of unknown size",
               "Digest mismatches by mirror")


def live_offload_panels(prom, dash_exprs, proc, log):
    """Each query of DATA_PANELS returns series; the egress estimate has the (source,
    mirror) pairs of the bytes (every source of the setup has a price)."""
    results = {}
    for title in DATA_PANELS:
        mine = [(w, e) for w, e in dash_exprs if f'"{title}"' in w]
        if not mine:
            fail(f'dashboard: no panel "{title}"')
        for where, expr in mine:
            try:
                results[title] = wait_for(f"{where} returns data",
                                          lambda e=substitute(expr): prom_query(prom, e),
                                          15, proc, log)
            except RuntimeError as e:
                fail(f"{e}: the setup gives it data\n{substitute(expr)}")
    if len(results) == len(DATA_PANELS):
        pairs = {t: sorted((r["metric"].get("source"), r["metric"].get("mirror", ""))
                           for r in results[t]) for t in ("Bytes served by source", "Egress estimate")}
        if pairs["Bytes served by source"] != pairs["Egress estimate"]:
            fail(f"Egress estimate has (source, mirror) {pairs['Egress estimate']}, the bytes "
                 f"{pairs['Bytes served by source']}")
        else:
            ok(f"the offload panels return data; bytes and egress estimate for {pairs['Egress estimate']}")


def live_sync_series(prom, exprs, proc, log):
    """The series a real `archeio sync --push-gateway` left, as Prometheus scrapes them from
    the Pushgateway: the selectors of the sync alerts find them, the two series of the group
    pair up on (job, instance, shard), and neither sync alert's condition holds after a
    successful run."""
    sel = 'job="archeio_sync"'
    try:
        success = wait_for(f"archeio_sync_success{{{sel}}} == 1 scraped from the Pushgateway",
                           lambda: prom_query(prom, f"archeio_sync_success{{{sel}}} == 1"), 15, proc, log)
    except RuntimeError as e:
        fail(str(e))
        return
    pushed = prom_query(prom, f"push_time_seconds{{{sel}}}")
    key = lambda r: {k: v for k, v in r["metric"].items() if k in ("job", "instance", "shard")}
    if [key(r) for r in success] != [key(r) for r in pushed]:
        fail(f"archeio_sync_success {[r['metric'] for r in success]} and push_time_seconds "
             f"{[r['metric'] for r in pushed]} do not pair up on (job, instance, shard)")
    else:
        ok(f"archeio_sync_success{{{sel}}} == 1 and push_time_seconds{{{sel}}} scraped from the "
           f"Pushgateway with labels {key(success[0])}")
    expect_silent(prom, exprs, ("ArcheioSyncNotSucceeding", "ArcheioSyncMetricsAbsent"),
                  "after a successful sync run")


def main():
    if sys.argv[1:] == ["--write-prometheusrule"]:
        with open(PROMETHEUSRULE, "w") as f:
            f.write(prometheusrule_text())
        print(f"wrote {PROMETHEUSRULE}")
        return 0
    if sys.argv[1:]:
        print(__doc__, file=sys.stderr)
        return 2
    code, out = run(["prometheus", "--version"]) if shutil.which("prometheus") else (1, "")
    print(f"== {out.splitlines()[0] if out else 'prometheus not found'}; gateway {BINARY}")
    alert_exprs = check_rules()
    check_alert_coverage()
    dash, dash_exprs, var_queries = dashboard_exprs()
    check_dashboard_structure(dash)
    uses = [(f"alerts.yml {name}", m) for name, e in alert_exprs for m in metric_names(e)]
    uses += [(f"dashboard {where}", m) for where, e in dash_exprs + var_queries
             for m in metric_names(substitute(e))]
    tmp = tempfile.mkdtemp(prefix="archeio-prom-check-")
    try:
        if shutil.which("promtool"):
            check_dashboard_parses(dash_exprs, tmp)
        live_checks(tmp, alert_exprs, dash_exprs, uses)
    finally:
        if failures and os.environ.get("ARCHEIO_CHECK_KEEP"):
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        print(f"\n{len(failures)} check(s) failed (deploy/prometheus/check.py)", file=sys.stderr)
        return 1
    print("\nall Prometheus and Grafana checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
