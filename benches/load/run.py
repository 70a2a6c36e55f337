#!/usr/bin/env python3
"""Load benchmark of archeio against nginx doing the same work, on loopback only.

For each worker-thread count (default 1), the servers a scenario needs are started (the
gateway with `threads: N`, nginx with `worker_processes N`), their answers are compared before
any load, and `wrk` drives gateway and nginx in alternation, several rounds per scenario.
Around each wrk run the servers' CPU time (utime + stime from /proc/<pid>/stat, for the process
and its children: nginx's master and workers) is read, and divided by the requests wrk
completed. Medians over the rounds are printed: requests/s, CPU µs per request and the
nginx/gateway CPU ratio (above 1: the gateway is cheaper), p50/p99 latency; MB/s and CPU s/GB
for the 100 MiB blob. Then: peak RSS, start-to-ready time, RSS with 100,000 cached mirror answers
and with 100,000 cached relay authorizations.

The floor: beside the plain-HTTP redirect scenarios (manifest, blob_unknown_client,
blob_aws_client_xff, v2) a minimal C epoll server (floor.c, built here with the system C
compiler) answers the same requests with a fixed 307, one recv and one send each, at the same
worker count. Its CPU µs per request is what the kernel and loopback TCP cost on this machine,
measured in the same rounds: the least any server can spend.

Scenarios (--scenarios, comma-separated; default all):
  manifest, blob_unknown_client, blob_aws_client_xff, v2   redirects, gateway vs nginx_conf.py's
  manifest_access_log            the manifest redirect with access records on both sides, each
                                 written to a file (gateway RUST_LOG=info, nginx format combined)
  passthrough_manifest_cached    pass-through + manifest cache vs nginx proxy_cache, before a
                                 docker-registry filled by skopeo
  proxied_blob_100mib            `delivery: proxy` of a 100 MiB blob vs nginx proxy_pass, both
                                 from an nginx mirror serving the file with sendfile
  policy_50_rules                a 50-rule policy (49 miss; its deny rules make the blob wait for
                                 the upstream's cached word on the repository) vs nginx_conf.py's
                                 blob redirect
  blob_unknown_client_geo        a client in no cloud range, placed by a published country
                                 database (ip-location-db, installed with npm) and routed by
                                 its continent (third rule), vs nginx_conf.py's blob redirect
  blob_relay_cached              `client_auth: relay` before the docker-registry: a blob of
                                 bench/pause with a client's Basic credential, its
                                 authorization (the upstream's HEAD) and mirror answer cached,
                                 vs nginx_conf.py's blob redirect
  blob_anonymous_same            the same gateway and request, `client_auth` anonymous (no
                                 upstream HEAD: only the mirror answer, cached)
  manifest_tls_h1                the manifest redirect over TLS, HTTP/1.1 kept alive (wrk): the
                                 gateway's TLS listener vs nginx `listen ... ssl`, the same
                                 certificate (ECDSA P-256, made here with openssl), versions and
                                 suites
  manifest_tls_h2                the same over HTTP/2 (h2load, 10 streams per connection)
  tls_handshakes                 the same with `Connection: close`: one TLS handshake a request;
                                 CPU ms per 1000 handshakes and handshakes per CPU second

usage: benches/load/run.py [--binary PATH] [--baseline PATH] [--no-build] [--duration 5] [--rounds 3]
                         [--threads 1] [--scenarios a,b] [--markdown FILE] [--skip-cache-fill]
--baseline PATH runs a second gateway build (an earlier commit's) beside the first in every
round, so that before and after are measured side by side, not in runs minutes apart.
Access logs are off on both sides (RUST_LOG=warn, nginx `access_log off`) but in
manifest_access_log.
"""
import argparse
import base64
import gzip
import hashlib
import http.client
import io
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import ssl
import time

from nginx_conf import read_mirrors, write_blob_proxy, write_file_mirror, write_manifest_cache

# The shared helpers live in benches/, one level above this script's folder.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import harness  # noqa: E402

NGINX_CONF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nginx_conf.py")
FLOOR_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "floor.c")
SHA = "sha256:4a1c4b21597c1b4415bdbecb28a3296c6b5e23ca4f9feeb599860a1dac6a0108"
AWS_CLIENT = "15.193.6.10"  # us-east-1 in the embedded AWS ranges
CLK_TCK = os.sysconf("SC_CLK_TCK")
BIG_BLOB_BYTES = 100 * 1024 * 1024
# Repository prefix at the upstream registry for the pass-through scenario.
UPSTREAM_PATH = "bench"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACCEPT = f"{OCI_MANIFEST}, application/vnd.docker.distribution.manifest.v2+json"

# The proxies the routing servers trust to name the client: the load generator's address and
# Google's load balancer in the `X-Forwarded-For` of the scenarios (nginx_conf.py's realip).
TRUSTED_PROXIES = ["127.0.0.1/32", "130.211.0.0/22"]
# RIPE NCC in Amsterdam: in no cloud range; the country database places it in NL, Europe.
GEO_CLIENT = "193.0.6.139"
# The published country database of the geo scenario, and where it is installed (the test
# command's cache).
GEO_PACKAGE = "@ip-location-db/geo-whois-asn-country-mmdb@2.3.2026061719"
GEO_DIR = os.path.join(os.environ.get("ARCHEIO_TEST_CACHE", os.path.expanduser("~/.cache/archeio-test")),
                       "ip-location-db")
# A network rule (the lookup happens here), a cloud rule, then continents: the geo example.
GEO_RULES = ["policy:", "  rules:",
             "    - {match: {asn: 1}, action: mirrors, mirrors: [eu]}",
             "    - {match: {provider: aws, region: 'eu-*'}, action: mirrors, mirrors: [eu]}",
             "    - {match: {continent: [EU, AF]}, action: mirrors, mirrors: [eu, us]}",
             "    - {match: {kind: blob}, action: mirrors, mirrors: [us]}"]
# The client credential of the relay scenarios (the open docker-registry ignores it).
AUTHORIZATION = "Basic " + base64.b64encode(b"bench-user:bench-pw").decode()
# Every blob through the mirror chain, to the default mirror (the relay scenarios).
BLOB_RULE = ["policy:", "  rules:", "    - {match: {kind: blob}, action: mirrors, mirrors: [default]}"]

# name -> which gateway and which nginx answer it, the request, and how its answers are checked.
# `gw`/`ng` name the servers started for it (see Servers); "{big}" is the 100 MiB blob's digest.
SCENARIOS = {
    "manifest": dict(gw="routing", ng="routing", target="/v2/pause/manifests/3.10", headers={}),
    "blob_unknown_client": dict(gw="routing", ng="routing", target=f"/v2/pause/blobs/{SHA}", headers={}),
    "blob_aws_client_xff": dict(gw="routing", ng="routing", target=f"/v2/pause/blobs/{SHA}",
                                headers={"X-Forwarded-For": f"{AWS_CLIENT}, 130.211.0.1"}),
    "v2": dict(gw="routing", ng="routing", target="/v2/", headers={}),
    "manifest_access_log": dict(gw="logged", ng="logged", target="/v2/pause/manifests/3.10", headers={}),
    "passthrough_manifest_cached": dict(gw="passthrough", ng="cache", target="/v2/pause/manifests/v1",
                                        headers={"Accept": ACCEPT}),
    "proxied_blob_100mib": dict(gw="proxyblob", ng="proxyblob", target="/v2/pause/blobs/{big}",
                                headers={}, throughput=True),
    # Its deny rules hide repositories, so each blob first needs the upstream's word that the
    # repository holds it (cached): the docker-registry's layer, whose answer is "held".
    "policy_50_rules": dict(gw="policy50", ng="routing", target="/v2/pause/blobs/{layer}",
                            headers={"X-Forwarded-For": f"{AWS_CLIENT}, 130.211.0.1"}),
    "blob_unknown_client_geo": dict(gw="geo", ng="routing", target=f"/v2/pause/blobs/{SHA}",
                                    headers={"X-Forwarded-For": f"{GEO_CLIENT}, 130.211.0.1"}),
    # "{layer}": the digest of bench/pause:v1's layer in the docker-registry.
    "blob_relay_cached": dict(gw="relay", ng="routing", target="/v2/pause/blobs/{layer}",
                              headers={"Authorization": AUTHORIZATION}),
    "blob_anonymous_same": dict(gw="anonymous_same", ng="routing", target="/v2/pause/blobs/{layer}",
                                headers={"Authorization": AUTHORIZATION}),
}
# The columns --baseline adds: the other build's CPU per request and baseline/gateway (above 1:
# the build under test is the cheaper).
BASELINE_COLUMNS = ("", " baseline CPU µs/req | CPU ratio baseline/gateway |")
# Scenarios the C floor server also answers (the plain-HTTP redirects; see floor.c).
FLOOR_KINDS = ("routing",)
# The TLS scenarios (gw/ng "tls", see Servers.tls_files): the routing servers with a TLS
# listener, `tls` naming the client: wrk over HTTP/1.1 kept alive, h2load over HTTP/2, or wrk
# with `Connection: close` (a TCP connection and a full TLS handshake per request).
for _name, _tls, _headers in (("manifest_tls_h1", "h1", {}), ("manifest_tls_h2", "h2", {}),
                              ("tls_handshakes", "handshakes", {"Connection": "close"})):
    SCENARIOS[_name] = dict(gw="tls", ng="tls", target="/v2/pause/manifests/3.10", headers=_headers, tls=_tls)
# h2load's concurrent streams per connection (manifest_tls_h2).
H2_STREAMS = 10
TLS_HANDSHAKES = "archeio_tls_handshakes_total"
# Gateways before the docker-registry (Servers.registry: docker-registry and skopeo needed).
REGISTRY_KINDS = ("passthrough", "relay", "anonymous_same")
SAMPLES = [
    ("GET", "/", None),
    ("GET", "/privacy", None),
    ("GET", "/v2/", None),
    ("HEAD", "/v2/", None),
    ("GET", "/v2/_catalog", None),
    ("GET", "/v2/pause/manifests/3.10", None),
    ("GET", "/v2/a/b/c/manifests/latest", None),
    ("GET", "/v2/pause/tags/list?n=10&last=3.9", None),
    ("GET", f"/v2/pause/blobs/{SHA}", None),
    ("HEAD", f"/v2/pause/blobs/{SHA}", None),
    ("GET", f"/v2/pause/blobs/{SHA}", f"{AWS_CLIENT}, 130.211.0.1"),
    ("GET", f"/v2/pause/blobs/{SHA}", "3.4.12.4, 130.211.0.1"),  # eu-west-1
    ("GET", f"/v2/pause/blobs/{SHA}", "15.193.31.1, 130.211.0.1"),  # AWS GLOBAL
    ("GET", f"/v2/pause/blobs/{SHA}", "34.1.208.5, 130.211.0.1"),  # GCP
    ("GET", f"/v2/pause/blobs/{SHA}", "2406:daba:f000::9, 130.211.0.1"),  # ap-southeast-4
    ("GET", f"/v2/pause/blobs/{SHA}", "198.51.100.1, 130.211.0.1"),  # no cloud
    ("GET", "/nothing", None),
]


def ask(port, method, target, xff=None, context=None):
    """(status, Location); over TLS (HTTP/1.1) with the ssl `context` when given."""
    if context is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    headers = {"X-Forwarded-For": xff} if xff else {}
    conn.request(method, target, headers=headers)
    r = conn.getresponse()
    r.read()
    conn.close()
    return r.status, r.getheader("Location")


def fetch(port, target, headers=None, timeout=60):
    """GET: (status, headers as a dict with lowercase names, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", target, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def fetch_sha256(port, target, timeout=120):
    """GET, body hashed as it arrives: (status, body length, "sha256:...")."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", target)
        r = conn.getresponse()
        h, n = hashlib.sha256(), 0
        while True:
            chunk = r.read(1 << 20)
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
        return r.status, n, "sha256:" + h.hexdigest()
    finally:
        conn.close()


def metric(admin, name, labels=""):
    """The sum of the gateway's `name{labels...}` samples on its admin port (labels: a regex
    matched inside the braces, e.g. `outcome="held"`)."""
    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return int(sum(float(v) for v in re.findall(rf'^{name}\{{[^}}]*{labels}[^}}]*\}} (\S+)', text, re.M)))


def peak_rss_kib(pids):
    return sum(harness.status_kib(pid, "VmHWM") or 0 for pid in pids)


def children(pid):
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]
    except FileNotFoundError:
        return []


def tree(pid):
    """pid and all its descendants (nginx: the master, its workers and cache processes)."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += children(p)
    return pids


def cpu_seconds(pids):
    return sum(harness.cpu_ticks(p) or 0 for p in pids) / CLK_TCK


def to_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s|m)", text)
    value, unit = float(m.group(1)), m.group(2)
    return {"us": value / 1000, "ms": value, "s": value * 1000, "m": value * 60_000}[unit]


UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}  # wrk's are binary


def wrk(port, target, headers, threads, duration, connections, pid, timeout_s=2, scheme="http"):
    """One wrk run (`scheme` https: over TLS, HTTP/1.1); the CPU time of `pid`'s process tree
    is read just before and after. Returns a dict: rps, p50 and p99 (ms), requests, bytes
    (read), seconds, cpu (s), us_per_req."""
    cmd = ["wrk", f"-t{threads}", f"-c{max(connections, threads)}", f"-d{duration}s", "--latency",
           f"--timeout={timeout_s}s"]
    for name, value in headers.items():
        cmd += ["-H", f"{name}: {value}"]
    cmd.append(f"{scheme}://127.0.0.1:{port}{target}")
    pids = tree(pid)
    before = cpu_seconds(pids)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(pids) - before
    errors = re.search(r"Socket errors: (.*)", out)
    non3xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors or non3xx:
        raise SystemExit(f"wrk saw errors against port {port}:\n{out}")
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m), ([\d.]+)(B|KB|MB|GB|TB) read", out)
    requests = int(done.group(1))
    seconds = to_ms(done.group(2) + done.group(3)) / 1000
    if requests == 0:
        raise SystemExit(f"wrk completed no request against port {port}:\n{out}")
    return dict(
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        p50=to_ms(re.search(r"\s50%\s+(\S+)", out).group(1)),
        p99=to_ms(re.search(r"\s99%\s+(\S+)", out).group(1)),
        requests=requests,
        bytes=float(done.group(4)) * UNITS[done.group(5)],
        seconds=seconds,
        cpu=cpu,
        us_per_req=cpu * 1e6 / requests,
    )


def h2load(port, target, headers, threads, duration, connections, pid, streams=H2_STREAMS):
    """One h2load run over TLS and HTTP/2 (ALPN h2): `connections` in all, `streams` concurrent
    requests on each, for `duration` s; the CPU time of `pid`'s process tree read around it, as
    wrk(). Returns wrk()'s dict, with the mean latency (h2load gives no percentiles) for p50
    and None for p99."""
    cmd = ["h2load", "-t", str(threads), "-c", str(max(connections, threads)), "-m", str(streams),
           "-D", str(duration)]
    for name, value in headers.items():
        cmd += ["-H", f"{name}: {value}"]
    cmd.append(f"https://127.0.0.1:{port}{target}")
    pids = tree(pid)
    before = cpu_seconds(pids)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=duration + 60).stdout
    cpu = cpu_seconds(pids) - before
    finished = re.search(r"finished in ([\d.]+)(us|ms|s|m), ([\d.]+) req/s", out)
    counts = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                       r"(\d+) errored, (\d+) timeout", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    latency = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", out)
    if not (finished and counts and codes and latency) or "Application protocol: h2" not in out:
        raise SystemExit(f"h2load against port {port}: no HTTP/2 or unexpected output:\n{out}")
    requests, failed, errored, timeouts = (int(counts.group(i)) for i in (4, 5, 6, 7))
    if failed or errored or timeouts or int(codes.group(3)) or int(codes.group(4)) or requests == 0:
        raise SystemExit(f"h2load saw errors against port {port}:\n{out}")
    return dict(
        rps=float(finished.group(3)),
        p50=to_ms(latency.group(3)),
        p99=None,
        requests=requests,
        bytes=0.0,
        seconds=to_ms(finished.group(1) + finished.group(2)) / 1000,
        cpu=cpu,
        us_per_req=cpu * 1e6 / requests,
    )


def gateway_conf(d, threads, port, admin, mirror_base, extra=(), upstream=None, named=None):
    """The gateway with every region of data/mirrors.yaml on the mirror, `named` mirrors and
    `extra` keys."""
    regions = {r: f"{mirror_base}/{r}"
               for r in sorted(read_mirrors(os.path.join(harness.ROOT, "data", "mirrors.yaml")))}
    return harness.write_config(d, port, admin, threads=threads, mirror_default=f"{mirror_base}/default",
                                regions=regions, upstream=upstream, extra=extra, named=named)


def start_gateway(binary, d, threads, port, admin, mirror_base, extra=(), upstream=None, named=None,
                  rust_log="warn"):
    conf = gateway_conf(d, threads, port, admin, mirror_base, extra, upstream, named)
    return harness.start_gateway(binary, conf, log=os.path.join(d, "gateway.log"), rust_log=rust_log)


def start_nginx(conf_dir):
    return subprocess.Popen(["nginx", "-p", conf_dir, "-c", os.path.join(conf_dir, "nginx.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def mirror_nginx(d, port):
    """The blob mirror the redirect scenarios point at: 200 for every HEAD/GET."""
    os.makedirs(os.path.join(d, "tmp"), exist_ok=True)
    with open(os.path.join(d, "nginx.conf"), "w") as f:
        f.write(f"""worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{ access_log off; client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp;
  fastcgi_temp_path {d}/tmp; uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
  server {{ listen 127.0.0.1:{port}; location / {{ return 200; }} }} }}
""")
    return start_nginx(d)


def ensure_tools(names):
    pkg = {"nginx": "nginx-light", "wrk": "wrk", "docker-registry": "docker-registry", "skopeo": "skopeo",
           "h2load": "nghttp2-client", "openssl": "openssl", "curl": "curl", "cc": "gcc"}
    missing = [t for t in names if not shutil.which(t)]
    if missing:
        pkgs = [pkg[t] for t in missing]
        if os.geteuid() == 0 and shutil.which("apt-get"):
            subprocess.run(["apt-get", "install", "-y", "-qq", *pkgs], check=True)
        else:
            raise SystemExit(f"missing {missing}: sudo apt-get install -y {' '.join(pkgs)}")


def median(xs):
    return statistics.median(xs)


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_oci_layout(path):
    """A one-layer OCI image (a tiny config and a tiny gzipped tar) tagged v1 in an OCI
    layout at `path`, as tests/e2e/run.py writes its test images. Returns the manifest bytes."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as t:
        data = b"hello from the archeio load benchmark\n"
        info = tarfile.TarInfo("hello")
        info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
        t.addfile(info, io.BytesIO(data))
    layer = gzip.compress(raw.getvalue(), compresslevel=1, mtime=0)
    config = json.dumps({"created": "2024-01-01T00:00:00Z", "architecture": "amd64", "os": "linux",
                         "config": {"Cmd": ["/hello"]},
                         "rootfs": {"type": "layers", "diff_ids": [sha256(raw.getvalue())]}},
                        sort_keys=True).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": sha256(config), "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                       "digest": sha256(layer), "size": len(layer)}]},
                          sort_keys=True).encode()
    os.makedirs(os.path.join(path, "blobs", "sha256"))
    for data in (layer, config, manifest):
        with open(os.path.join(path, "blobs", "sha256", sha256(data)[7:]), "wb") as f:
            f.write(data)
    with open(os.path.join(path, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(path, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                   "manifests": [{"mediaType": OCI_MANIFEST, "digest": sha256(manifest), "size": len(manifest),
                                  "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}, f)
    return manifest


class Servers:
    """Starts what the selected scenarios need, once: shared backends (the 200 mirror, the
    upstream registry, the file mirror) for the whole run, and per thread count the servers
    under test. Every process goes into `procs`, stopped by the caller."""

    def __init__(self, tmp, binary, procs):
        self.tmp, self.binary, self.procs = tmp, binary, procs
        self.shared = {}
        self.nginx_status = {}  # nginx pid -> port of its stub_status server (kind "tls")

    def _dir(self, name):
        d = os.path.join(self.tmp, name)
        os.makedirs(d)
        return d

    def _nginx(self, d, port, path="/"):
        p = start_nginx(d)
        self.procs.append(p)
        harness.wait_ready(port, path, p)
        return p

    def mirror_base(self):
        """The 200-to-everything mirror of the redirect scenarios."""
        if "mirror" not in self.shared:
            port = harness.free_port()
            d = self._dir("mirror")
            p = mirror_nginx(d, port)
            self.procs.append(p)
            harness.wait_ready(port, "/", p)
            self.shared["mirror"] = f"http://127.0.0.1:{port}"
        return self.shared["mirror"]

    def registry(self):
        """docker-registry (filesystem storage in the temp dir) holding bench/pause:v1,
        pushed by skopeo from an OCI layout written here. Returns (url, manifest bytes, log)."""
        if "registry" not in self.shared:
            d = self._dir("registry")
            port = harness.free_port()
            conf, log = os.path.join(d, "config.yml"), os.path.join(d, "registry.log")
            with open(conf, "w") as f:
                f.write("version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: false\n"
                        f"storage:\n  filesystem:\n    rootdirectory: {d}/storage\n  delete:\n    enabled: false\n"
                        f"http:\n  addr: 127.0.0.1:{port}\n")
            with open(log, "wb") as out:
                p = subprocess.Popen(["docker-registry", "serve", conf], stdout=out, stderr=out)
            self.procs.append(p)
            harness.wait_ready(port, "/v2/", p)
            manifest = write_oci_layout(os.path.join(d, "layout"))
            subprocess.run(["skopeo", "copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false",
                            f"oci:{d}/layout:v1", f"docker://127.0.0.1:{port}/{UPSTREAM_PATH}/pause:v1"],
                           check=True, timeout=120)
            url = f"http://127.0.0.1:{port}"
            status, _, body = fetch(port, f"/v2/{UPSTREAM_PATH}/pause/manifests/v1", {"Accept": ACCEPT})
            if status != 200 or body != manifest:
                raise SystemExit(f"pushed {UPSTREAM_PATH}/pause:v1 but the registry answers {status}, "
                                 f"{sha256(body)} instead of {sha256(manifest)}")
            self.shared["registry"] = (url, manifest, log)
        return self.shared["registry"]

    def tls_files(self):
        """A CA and a server certificate signed by it for DNS localhost and IP 127.0.0.1, both
        keys ECDSA P-256 (PKCS#8), made with the openssl CLI: (CA file, certificate file, key
        file). The gateway and nginx serve the same pair (the certificate alone, no chain); the
        checks verify it against the CA."""
        if "tls" not in self.shared:
            d = self._dir("tls")
            ca_key, ca, key, csr, cert, ext = (os.path.join(d, n) for n in (
                "ca.key", "ca.pem", "server.key", "server.csr", "server.pem", "server.ext"))

            def openssl(*args):
                r = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
                if r.returncode:
                    raise SystemExit(f"openssl {' '.join(args)}: {r.stderr}")

            for k in (ca_key, key):
                openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", k)
            openssl("req", "-x509", "-new", "-key", ca_key, "-sha256", "-days", "2",
                    "-subj", "/CN=archeio load benchmark CA", "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", ca)
            openssl("req", "-new", "-key", key, "-subj", "/CN=localhost", "-out", csr)
            with open(ext, "w") as f:
                f.write("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                        "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n")
            openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
                    "-days", "2", "-sha256", "-extfile", ext, "-out", cert)
            self.shared["tls"] = (ca, cert, key)
        return self.shared["tls"]

    def file_mirror(self):
        """An nginx serving a 100 MiB file (seeded noise) at /containers/images/<digest>."""
        if "files" not in self.shared:
            d = self._dir("files")
            data = random.Random(20240101).randbytes(BIG_BLOB_BYTES)
            digest = sha256(data)
            os.makedirs(os.path.join(d, "www", "containers", "images"))
            with open(os.path.join(d, "www", "containers", "images", digest), "wb") as f:
                f.write(data)
            del data
            port = harness.free_port()
            write_file_mirror(d, port, os.path.join(d, "www"))
            self._nginx(d, port, f"/containers/images/{digest}")
            self.shared["files"] = (f"http://127.0.0.1:{port}", digest)
        return self.shared["files"]

    def geo_database(self):
        """The published country database, installed with npm when missing."""
        db = os.path.join(GEO_DIR, "node_modules", "@ip-location-db", "geo-whois-asn-country-mmdb",
                          "geo-whois-asn-country.mmdb")
        if not os.path.exists(db):
            ensure_tools(["npm"])
            os.makedirs(GEO_DIR, exist_ok=True)
            subprocess.run(["npm", "install", "--prefix", GEO_DIR, "--no-audit", "--no-fund",
                            "--silent", GEO_PACKAGE], check=True)
        return db

    def layer(self):
        """The digest of the layer of bench/pause:v1 in the registry."""
        _, manifest, _ = self.registry()
        return json.loads(manifest)["layers"][0]["digest"]

    def target(self, sc):
        """The scenario's request target, its digest placeholder filled in."""
        target = sc["target"]
        if "{big}" in target:
            target = target.replace("{big}", self.file_mirror()[1])
        if "{layer}" in target:
            target = target.replace("{layer}", self.layer())
        return target

    def gateway(self, kind, threads, binary=None):
        """(process, port, admin port) of the gateway of `kind` at `threads` threads (kind
        "tls": the port of its TLS listener), of `binary` (default: the binary under test)."""
        d = self._dir(f"gw-{kind}-{threads}" + ("-baseline" if binary else ""))
        port, admin = harness.free_port(), harness.free_port()
        tls_port = None
        mirror, extra, upstream, named = self.mirror_base(), [], None, None
        rust_log = "info" if kind == "logged" else "warn"  # info: one access record a request
        if kind == "passthrough":
            url, _, _ = self.registry()
            upstream = (url, UPSTREAM_PATH)
            extra = ["mode: passthrough", "manifest_cache: {max_bytes: 67108864, tag_ttl: 10m}"]
        elif kind == "proxyblob":
            files, _ = self.file_mirror()
            named = {"files": files}
            extra = ["policy:", "  rules:",
                     "    - {match: {kind: blob}, action: mirrors, mirrors: [files], delivery: proxy}"]
        elif kind == "policy50":
            url, _, _ = self.registry()
            upstream = (url, UPSTREAM_PATH)
            extra = harness.policy_50_rules()
        elif kind == "geo":
            named = {"eu": f"{mirror}/eu", "us": f"{mirror}/us"}
            extra = [f"geo: {{databases: ['{self.geo_database()}']}}", *GEO_RULES]
        elif kind == "tls":
            # The routing gateway with a TLS listener besides its plain one.
            _, cert, key = self.tls_files()
            tls_port = harness.free_port()
            extra = ["tls:", f"  listen: ['127.0.0.1:{tls_port}']",
                     f"  certificates: [{{cert_file: '{cert}', key_file: '{key}'}}]"]
        elif kind in ("relay", "anonymous_same"):
            # The same gateway but for client_auth: every blob to the mirror chain (default
            # mirror), the docker-registry as upstream (open: it ignores Authorization).
            url, _, _ = self.registry()
            upstream = (url, UPSTREAM_PATH)
            extra = list(BLOB_RULE)
            if kind == "relay":
                extra.append(f"client_auth: {{mode: relay, public_url: 'http://127.0.0.1:{port}', "
                             "authorization_ttl: 10m}")
        if kind in ("routing", "logged", "policy50", "geo", "relay", "anonymous_same", "tls"):
            # wrk on 127.0.0.1 plays the proxy in front, which appended the client's entry
            # after Google's load balancer (130.211.0.0/22); both trusted, as nginx's realip.
            extra = [*extra, f"client_address: {{trusted_proxies: {TRUSTED_PROXIES}}}"]
        p = start_gateway(binary or self.binary, d, threads, port, admin, mirror, extra, upstream, named,
                          rust_log)
        self.procs.append(p)
        harness.wait_ready(admin, "/readyz", p)
        return p, tls_port or port, admin

    def nginx(self, kind, threads):
        """(process, port) of the nginx of `kind` at `threads` workers (kind "tls": the port of
        its TLS listener)."""
        d = self._dir(f"nginx-{kind}-{threads}")
        port = harness.free_port()
        tls_port = status_port = None
        if kind in ("routing", "logged", "tls"):
            mirror_base = self.mirror_base()
            log = ["--access-log", os.path.join(d, "access.log")] if kind == "logged" else []
            if kind == "tls":
                # nginx_conf.py's routing server, also listening with TLS; and stub_status (its
                # accepted connections: the handshakes of tls_handshakes) on a port of its own.
                _, cert, key = self.tls_files()
                tls_port, status_port = harness.free_port(), harness.free_port()
                log = ["--tls-port", str(tls_port), "--cert", cert, "--key", key,
                       "--status-port", str(status_port)]
            subprocess.run([sys.executable, NGINX_CONF, d, *log,
                            "--port", str(port), "--workers", str(threads),
                            "--mirrors", os.path.join(harness.ROOT, "data", "mirrors.yaml"),
                            "--mirror-base", mirror_base, "--default-mirror", f"{mirror_base}/default",
                            "--aws", os.path.join(harness.ROOT, "data", "aws-ip-ranges.json"),
                            "--gcp", os.path.join(harness.ROOT, "data", "gcp-cloud.json")], check=True)
        elif kind == "cache":
            url, _, _ = self.registry()
            write_manifest_cache(d, port, threads, url, UPSTREAM_PATH)
        elif kind == "proxyblob":
            files, _ = self.file_mirror()
            write_blob_proxy(d, port, threads, files)
        p = self._nginx(d, port, "/v2/")
        if status_port:
            self.nginx_status[p.pid] = status_port
        return p, tls_port or port

    def floor(self, threads):
        """(process, port) of the C floor server with `threads` worker processes, built once."""
        if "floor" not in self.shared:
            binary = os.path.join(self.tmp, "floor")
            subprocess.run(["cc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", binary, FLOOR_SOURCE], check=True)
            self.shared["floor"] = binary
        port = harness.free_port()
        p = subprocess.Popen([self.shared["floor"], str(port), str(threads)])
        self.procs.append(p)
        harness.wait_answer(port, "/v2/", p, status=307)
        return p, port


def nginx_accepts(status_port):
    """Connections nginx accepted so far (stub_status), this request's own included."""
    conn = http.client.HTTPConnection("127.0.0.1", status_port, timeout=10)
    try:
        conn.request("GET", "/status")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return int(re.search(r"^\s*(\d+) \d+ \d+\s*$", text, re.M).group(1))


# openssl s_client -brief's lines that must read the same on both sides.
TLS_FIELDS = ("Protocol version", "Ciphersuite", "Signature type", "Server Temp Key", "Verification")


def tls_parameters(port, ca, version):
    """What `openssl s_client` agrees with 127.0.0.1:port (SNI localhost, `version` -tls1_3 or
    -tls1_2, verifying against the CA): {field: value} for TLS_FIELDS."""
    r = subprocess.run(["openssl", "s_client", "-brief", version, "-connect", f"127.0.0.1:{port}",
                        "-servername", "localhost", "-CAfile", ca, "-verify_return_error"],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=20)
    text = (r.stdout + r.stderr).decode(errors="replace")
    found = dict(re.findall(r"^([A-Za-z ]+): (.*)$", text, re.M))
    return {k: found.get(k) for k in TLS_FIELDS}


def curl_answer(port, target, ca, http):
    """(HTTP version, status, Location) of a curl GET over TLS (`http`: --http2 or --http1.1)."""
    out = subprocess.run(["curl", "-sS", http, "--cacert", ca, "--max-time", "10", "-o", "/dev/null",
                          "-w", "%{http_version} %{http_code} %{redirect_url}",
                          f"https://127.0.0.1:{port}{target}"],
                         capture_output=True, text=True, check=True, timeout=20).stdout.split(" ", 2)
    return out[0], int(out[1]), out[2] if len(out) > 2 and out[2] else None


REPO_CHECKS = "archeio_repository_checks_total"


def check(name, sc, servers, gport, nport, gadmin):
    """The answers of both servers to the scenario's request, compared before any load.
    Returns a line to print, or None."""
    kind = sc["gw"]
    if kind in ("routing", "logged"):
        for method, target, xff in SAMPLES:
            g, n = ask(gport, method, target, xff), ask(nport, method, target, xff)
            if g != n:
                raise SystemExit(f"answers differ for {method} {target} xff={xff}: gateway {g}, nginx {n}")
    elif kind == "tls":
        ca = servers.tls_files()[0]
        agreed = {}
        for version in ("-tls1_3", "-tls1_2"):
            g, n = tls_parameters(gport, ca, version), tls_parameters(nport, ca, version)
            if g != n or g["Verification"] != "OK" or g["Signature type"] != "ECDSA":
                raise SystemExit(f"{name}: TLS ({version}) differs: gateway {g}, nginx {n}")
            agreed[version] = g
        context = ssl.create_default_context(cafile=ca)  # verifies the name (IP 127.0.0.1)
        for method, target, xff in SAMPLES:
            g, n = ask(gport, method, target, xff, context), ask(nport, method, target, xff, context)
            if g != n:
                raise SystemExit(f"{name}: answers over TLS differ for {method} {target} xff={xff}: "
                                 f"gateway {g}, nginx {n}")
        answers = {}
        for http, version in (("--http1.1", "1.1"), ("--http2", "2")):
            g, n = curl_answer(gport, sc["target"], ca, http), curl_answer(nport, sc["target"], ca, http)
            if g != n or g[:2] != (version, 307):
                raise SystemExit(f"{name}: curl {http}: gateway {g}, nginx {n}; expected HTTP/{version} "
                                 "307 and the same Location on both")
            answers[version] = g
        t13, t12 = agreed["-tls1_3"], agreed["-tls1_2"]
        return (f"{name}: gateway and nginx alike (openssl s_client, verified against the CA): "
                f"{t13['Protocol version']} {t13['Ciphersuite']}, {t12['Protocol version']} "
                f"{t12['Ciphersuite']}, {t13['Signature type']} signature, key exchange "
                f"{t13['Server Temp Key']}; GET {sc['target']}: {answers['2'][1]} {answers['2'][2]} "
                "over HTTP/1.1 and HTTP/2 (curl)")
    elif kind == "policy50":
        xff = sc["headers"]["X-Forwarded-For"]
        g, n = ask(gport, "GET", sc["target"], xff), ask(nport, "GET", sc["target"], xff)
        if g != n or g[0] != 307:
            raise SystemExit(f"{name}: answers differ: gateway {g}, nginx {n}")
    elif kind == "passthrough":
        _, manifest, _ = servers.registry()
        for attempt in range(2):  # the second from each one's cache
            (gs, _, gb), (ns, nh, nb) = (fetch(gport, sc["target"], sc["headers"]),
                                         fetch(nport, sc["target"], sc["headers"]))
            if (gs, ns) != (200, 200) or gb != nb or gb != manifest:
                raise SystemExit(f"{name}: gateway {gs} {sha256(gb)}, nginx {ns} {sha256(nb)}, "
                                 f"pushed {sha256(manifest)}")
        if nh.get("x-cache-status") != "HIT":
            raise SystemExit(f"{name}: nginx did not answer from its cache ({nh.get('x-cache-status')})")
    elif kind == "proxyblob":
        _, digest = servers.file_mirror()
        for who, port in (("gateway", gport), ("nginx", nport)):
            status, n, got = fetch_sha256(port, sc["target"])
            if (status, n, got) != (200, BIG_BLOB_BYTES, digest):
                raise SystemExit(f"{name}: {who} answered {status}, {n} bytes, {got}; the file is {digest}")
    elif kind in ("relay", "anonymous_same"):
        # Also the warm-up: the gateway's mirror answer (and, relay, the upstream's HEAD for
        # this credential) cached here, so that the load measures the cached path.
        mirror = f"{servers.mirror_base()}/default/"
        for attempt in range(2):
            gs, gh, _ = fetch(gport, sc["target"], sc["headers"])
            ns, nh, _ = fetch(nport, sc["target"], sc["headers"])
            g, n = (gs, gh.get("location")), (ns, nh.get("location"))
            if gs != 307 or not (g[1] or "").startswith(mirror) or g != n:
                raise SystemExit(f"{name}: gateway {g}, nginx {n}; expected 307 to {mirror}...")
        held = metric(gadmin, REPO_CHECKS, 'outcome="held"')
        hits = metric(gadmin, REPO_CHECKS, 'outcome="cache_hit"')
        mirror_hits = metric(gadmin, "archeio_blob_checks_total", 'outcome="cache_hit"')
        want = (1, 1) if kind == "relay" else (0, 0)  # anonymous: no repository to confirm
        if (held, hits) != want or mirror_hits < 1:
            raise SystemExit(f"{name}: after two requests the upstream was asked {held} times, "
                             f"{hits} authorizations and {mirror_hits} mirror answers came from the "
                             f"caches; expected {want[0]}, {want[1]} and at least 1")


# wrk Lua: request i (1..100,000, then again) sends the credential `Basic base64("u<i>:pw")`;
# one blob for all, so that only the authorization cache grows (one mirror answer).
RELAY_FILL_LUA = r"""
local alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
local function b64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local chars = 2 + (b and 1 or 0) + (c and 1 or 0)
    for k = 1, 4 do
      if k <= chars then
        local v = math.floor(n / 2 ^ (6 * (4 - k))) % 64 + 1
        out[#out + 1] = alphabet:sub(v, v)
      else
        out[#out + 1] = '='
      end
    end
  end
  return table.concat(out)
end
counter = 0
request = function()
  counter = counter % 100000 + 1
  return wrk.format('GET', '%(target)s', { Authorization = 'Basic ' .. b64('u' .. counter .. ':pw') })
end
"""


def relay_authorization_fill(binary, tmp, procs, mirror_base, say):
    """Peak RSS of a relay gateway (2 threads) after 100,000 distinct (credential, blob)
    authorizations were cached, against the same gateway before: freshly started, and after
    the same load with one credential (connections, buffers and the one mirror answer
    allocated). The upstream: an nginx answering 200 to everything (every HEAD "held")."""
    d = os.path.join(tmp, "relay-fill")
    os.makedirs(d)
    up_dir = os.path.join(d, "upstream")
    os.makedirs(up_dir)
    up_port = harness.free_port()
    up = mirror_nginx(up_dir, up_port)
    procs.append(up)
    harness.wait_ready(up_port, "/", up)
    port, admin = harness.free_port(), harness.free_port()
    extra = [*BLOB_RULE, f"client_auth: {{mode: relay, public_url: 'http://127.0.0.1:{port}', "
                         "authorization_ttl: 10m}"]
    gw = start_gateway(binary, d, 2, port, admin, mirror_base, extra,
                       upstream=(f"http://127.0.0.1:{up_port}", UPSTREAM_PATH))
    procs.append(gw)
    harness.wait_ready(admin, "/readyz", gw)
    fresh = peak_rss_kib([gw.pid])
    target = f"/v2/pause/blobs/{SHA}"
    status, headers, _ = fetch(port, target, {"Authorization": AUTHORIZATION})
    if status != 307 or not headers.get("location", "").startswith(f"{mirror_base}/default/"):
        raise SystemExit(f"relay fill: the gateway answered {status} {headers.get('location')}")
    subprocess.run(["wrk", "-t1", "-c16", "-d3s", "-H", f"Authorization: {AUTHORIZATION}",
                    f"http://127.0.0.1:{port}{target}"], capture_output=True, check=True)
    one = peak_rss_kib([gw.pid])
    script = os.path.join(d, "credentials.lua")
    with open(script, "w") as f:
        f.write(RELAY_FILL_LUA.replace("%(target)s", target))
    # One wrk thread so that one counter walks the 100,000 credentials, then again (hits).
    filled = 0
    deadline = time.monotonic() + 180
    while filled < 100_000 and time.monotonic() < deadline:
        subprocess.run(["wrk", "-t1", "-c16", "-d5s", "-s", script, f"http://127.0.0.1:{port}/"],
                       capture_output=True, check=True)
        filled = metric(admin, REPO_CHECKS, 'outcome="held"')
    hits = metric(admin, REPO_CHECKS, 'outcome="cache_hit"')
    refused = metric(admin, REPO_CHECKS, 'outcome="(?:not_held|error)"')
    full = peak_rss_kib([gw.pid])
    harness.stop(gw, 5)
    harness.stop(up, 5)
    say(f"peak RSS with 100,000 cached relay authorizations (capacity 100,000; {filled:,} upstream "
        f"HEADs answered 200, {hits:,} cache hits, {refused:,} refused or failed): {full / 1024:.1f} MiB; "
        f"freshly started {fresh / 1024:.1f} MiB ({(full - fresh) * 1024 / 100_000:,.0f} bytes per "
        f"authorization more), after the same load with one credential {one / 1024:.1f} MiB "
        f"({(full - one) * 1024 / 100_000:,.0f} bytes per authorization more)")


def manifest_gets(log):
    with open(log, errors="replace") as f:
        return len(re.findall(rf'"GET /v2/{UPSTREAM_PATH}/pause/manifests/v1 HTTP', f.read()))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=harness.BINARY, help="the gateway binary (default: the release build)")
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", default="1", help="comma-separated worker thread counts, e.g. 1,2")
    ap.add_argument("--connections", type=int, default=32, help="per wrk thread")
    ap.add_argument("--blob-connections", type=int, default=4,
                    help="wrk connections in all for proxied_blob_100mib")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS),
                    help=f"comma-separated, from: {', '.join(SCENARIOS)}")
    ap.add_argument("--baseline", help="another gateway binary (e.g. a build of an earlier commit), run beside "
                    "the first in every round: its CPU µs/req and the ratio baseline/gateway are added")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--markdown", help="also write the tables here")
    ap.add_argument("--skip-cache-fill", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true", help="only start time and memory")
    a = ap.parse_args()
    names = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    unknown = [s for s in names if s not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
    if a.skip_throughput:
        names = []
    tools = ["nginx", "wrk"]
    if any(SCENARIOS[n]["gw"] in FLOOR_KINDS for n in names):
        tools.append("cc")
    if any(SCENARIOS[n]["gw"] in REGISTRY_KINDS for n in names):
        tools += ["docker-registry", "skopeo"]
    if any(SCENARIOS[n].get("tls") for n in names):
        tools += ["openssl", "curl"]
    if any(SCENARIOS[n].get("tls") == "h2" for n in names):
        tools.append("h2load")
    ensure_tools(tools)
    if not a.no_build:
        harness.build(quiet=False)
    for binary in (a.binary, a.baseline):
        if binary and not os.access(binary, os.X_OK):
            raise SystemExit(f"no gateway binary at {binary}")

    tmp = tempfile.mkdtemp(prefix="archeio-load-")
    # nginx's workers run as another user when started by root (`nobody`): they must reach the
    # cache, temporary and served files inside (traverse only, no listing).
    os.chmod(tmp, 0o711)
    procs = []
    lines = []

    def say(text=""):
        print(text, flush=True)
        lines.append(text)

    try:
        servers = Servers(tmp, a.binary, procs)
        if a.baseline:
            say(f"baseline binary {a.baseline}: a second gateway of each kind, in every round")
        say(f"binary {a.binary}; wrk {a.duration}s x {a.rounds} rounds, {a.connections} connections per "
            f"wrk thread ({a.blob_connections} in all for the 100 MiB blob); medians over rounds; "
            f"CPU: {os.cpu_count()} cores, shared by wrk and the servers")
        say("CPU µs/req: utime+stime of the server's processes (nginx: master + workers) over the wrk run "
            "/ requests wrk completed; CPU ratio nginx/gateway > 1: the gateway is cheaper")
        rows, big_rows, hs_rows, rss, notes = [], [], [], {}, []
        for threads in [int(t) for t in a.threads.split(",")] if names else []:
            gws, ngs, bgws = {}, {}, {}
            floor = None
            for name in names:
                sc = SCENARIOS[name]
                if sc["gw"] not in gws:
                    gws[sc["gw"]] = servers.gateway(sc["gw"], threads)
                    if a.baseline:
                        bgws[sc["gw"]] = servers.gateway(sc["gw"], threads, a.baseline)
                if sc["ng"] not in ngs:
                    ngs[sc["ng"]] = servers.nginx(sc["ng"], threads)
                if sc["gw"] in FLOOR_KINDS and floor is None:
                    floor = servers.floor(threads)
            checked = set()
            for name in names:
                sc = SCENARIOS[name]
                sc = dict(sc, target=servers.target(sc))
                if (sc["gw"], sc["ng"], sc["target"]) not in checked:
                    note = check(name, sc, servers, gws[sc["gw"]][1], ngs[sc["ng"]][1], gws[sc["gw"]][2])
                    if note:
                        say(note)
                    if a.baseline:
                        # Checked the same way, which also fills its caches as the gateway's.
                        bgw = bgws[sc["gw"]]
                        check(name, sc, servers, bgw[1], ngs[sc["ng"]][1], bgw[2])
                    checked.add((sc["gw"], sc["ng"], sc["target"]))
            results = {}
            for r in range(a.rounds):
                for name in names:
                    sc = SCENARIOS[name]
                    big = sc.get("throughput", False)
                    target = servers.target(sc)
                    gw, ng = gws[sc["gw"]], ngs[sc["ng"]]
                    order = [("gateway", gw[1], gw[0].pid), ("nginx", ng[1], ng[0].pid)]
                    if a.baseline:
                        bgw = bgws[sc["gw"]]
                        order.append(("baseline", bgw[1], bgw[0].pid))
                    if sc["gw"] in FLOOR_KINDS:
                        order.append(("floor", floor[1], floor[0].pid))
                    if r % 2:
                        order.reverse()
                    if name == "passthrough_manifest_cached":
                        before = manifest_gets(servers.registry()[2])
                    if sc["gw"] == "relay":
                        asked = metric(gw[2], REPO_CHECKS, 'outcome="(?:held|not_held|error)"')
                    for who, port, pid in order:
                        conns = a.blob_connections if big else a.connections * threads
                        handshakes = sc.get("tls") == "handshakes"
                        if handshakes:
                            # Handshakes the server saw: the gateway's counter, nginx's accepted
                            # connections (less the second stub_status request's own).
                            if who in ("gateway", "baseline"):
                                admin = gw[2] if who == "gateway" else bgws[sc["gw"]][2]
                                counted = lambda: metric(admin, TLS_HANDSHAKES)  # noqa: E731
                            else:
                                counted = lambda: nginx_accepts(servers.nginx_status[ng[0].pid]) - 1  # noqa: E731
                            seen = counted()
                        if sc.get("tls") == "h2":
                            run = h2load(port, target, sc["headers"], threads, a.duration, conns, pid)
                        else:
                            run = wrk(port, target, sc["headers"], threads, a.duration, conns, pid,
                                      timeout_s=60 if big else 2, scheme="https" if sc.get("tls") else "http")
                        if handshakes:
                            seen = counted() - seen
                            if seen < run["requests"]:
                                raise SystemExit(f"{name}: {who} saw {seen} connections for {run['requests']} "
                                                 "requests: connections were kept alive")
                        results.setdefault((name, who), []).append(run)
                    if name == "passthrough_manifest_cached":
                        fetched = manifest_gets(servers.registry()[2]) - before
                        if fetched > (4 if a.baseline else 2):
                            raise SystemExit(f"{name}: the upstream registry answered {fetched} manifest "
                                             "GETs during the load: a cache is not serving")
                        if fetched:
                            notes.append(f"{name}, round {r + 1}: {fetched} manifest GETs reached the upstream")
                    if sc["gw"] == "relay":
                        asked = metric(gw[2], REPO_CHECKS, 'outcome="(?:held|not_held|error)"') - asked
                        if asked:
                            raise SystemExit(f"{name}: the upstream was asked {asked} times during the "
                                             "load: the authorization was not served from the cache")
            for name in names:
                g, n = results[(name, "gateway")], results[(name, "nginx")]

                def med(xs, key):
                    return median([x[key] for x in xs])

                def latency(xs):
                    if xs[0]["p99"] is None:  # h2load: mean only
                        return f"mean {med(xs, 'p50'):.3f}"
                    return f"{med(xs, 'p50'):.3f} / {med(xs, 'p99'):.3f}"

                gus, nus = med(g, "us_per_req"), med(n, "us_per_req")
                b = results.get((name, "baseline"))
                # The baseline's CPU per request (per GB for the big blob) and baseline/gateway.
                bcol = f" {med(b, 'us_per_req'):.1f} | {med(b, 'us_per_req') / gus:.2f} |" if b else ""
                if SCENARIOS[name].get("tls") == "handshakes":
                    # One handshake a request: CPU µs/request = CPU ms per 1000 handshakes.
                    gps = median([x["requests"] / x["cpu"] for x in g])
                    nps = median([x["requests"] / x["cpu"] for x in n])
                    hs_rows.append(f"| {threads} | {name} | {med(g, 'rps'):,.0f} | {med(n, 'rps'):,.0f} | "
                                   f"{gus:.1f} | {nus:.1f} | {gps:,.0f} | {nps:,.0f} | "
                                   f"{nus / gus:.2f} | {latency(g)} | {latency(n)} |{bcol}")
                elif SCENARIOS[name].get("throughput"):
                    gmb = median([x["bytes"] / x["seconds"] / 1e6 for x in g])
                    nmb = median([x["bytes"] / x["seconds"] / 1e6 for x in n])
                    gsg = median([x["cpu"] / (x["bytes"] / 1e9) for x in g])
                    nsg = median([x["cpu"] / (x["bytes"] / 1e9) for x in n])
                    if b:
                        bsg = median([x["cpu"] / (x["bytes"] / 1e9) for x in b])
                        bcol = f" {bsg:.3f} | {bsg / gsg:.2f} |"
                    big_rows.append(f"| {threads} | {name} | {gmb:,.0f} | {nmb:,.0f} | {gsg:.3f} | {nsg:.3f} | "
                                    f"{nsg / gsg:.2f} | {med(g, 'rps'):.1f} | {med(n, 'rps'):.1f} | "
                                    f"{gus:,.0f} | {nus:,.0f} |{bcol}")
                else:
                    grps, nrps = med(g, "rps"), med(n, "rps")
                    f = results.get((name, "floor"))
                    fus = f"{med(f, 'us_per_req'):.1f}" if f else "-"
                    rows.append(f"| {threads} | {name} | {grps:,.0f} | {nrps:,.0f} | {grps / nrps:.2f} | "
                                f"{gus:.1f} | {nus:.1f} | {nus / gus:.2f} | {fus} | {latency(g)} | {latency(n)} |{bcol}")
            for kind, (p, _, _) in gws.items():
                rss.setdefault(threads, {})[f"gateway {kind}"] = peak_rss_kib([p.pid])
            for kind, (p, _, _) in bgws.items():
                rss.setdefault(threads, {})[f"baseline {kind}"] = peak_rss_kib([p.pid])
                harness.stop(p, 5)
            for kind, (p, _) in ngs.items():
                rss.setdefault(threads, {})[f"nginx {kind}"] = peak_rss_kib(tree(p.pid))
            for p, _, _ in gws.values():
                harness.stop(p, 5)
            for p, _ in ngs.values():
                harness.stop(p, 5)
            if floor:
                rss.setdefault(threads, {})["floor"] = peak_rss_kib(tree(floor[0].pid))
                harness.stop(floor[0], 5)
        if rows:
            say()
            say("| threads | scenario | gateway req/s | nginx req/s | req/s ratio gateway/nginx | "
                "gateway CPU µs/req | nginx CPU µs/req | CPU ratio nginx/gateway | floor CPU µs/req | "
                "gateway p50/p99 ms | nginx p50/p99 ms |" + BASELINE_COLUMNS[bool(a.baseline)])
            say("|---|---|---|---|---|---|---|---|---|---|---|" + "---|---|" * bool(a.baseline))
            for row in rows:
                say(row)
        if big_rows:
            say()
            say("| threads | scenario | gateway MB/s | nginx MB/s | gateway CPU s/GB | nginx CPU s/GB | "
                "CPU ratio nginx/gateway | gateway req/s | nginx req/s | gateway CPU µs/req | nginx CPU µs/req |"
                + (" baseline CPU s/GB | CPU ratio baseline/gateway |" if a.baseline else ""))
            say("|---|---|---|---|---|---|---|---|---|---|---|" + "---|---|" * bool(a.baseline))
            for row in big_rows:
                say(row)
        if hs_rows:
            say()
            say("| threads | scenario | gateway handshakes/s | nginx handshakes/s | "
                "gateway CPU ms/1000 handshakes | nginx CPU ms/1000 handshakes | "
                "gateway handshakes/CPU-s | nginx handshakes/CPU-s | CPU ratio nginx/gateway | "
                "gateway p50/p99 ms | nginx p50/p99 ms |" + BASELINE_COLUMNS[bool(a.baseline)])
            say("|---|---|---|---|---|---|---|---|---|---|---|" + "---|---|" * bool(a.baseline))
            for row in hs_rows:
                say(row)
        for note in notes:
            say(f"note: {note}")
        if rss:
            say()
            say("| threads | server | peak RSS MiB (nginx: master + workers) |")
            say("|---|---|---|")
            for threads, figures in rss.items():
                for who, kib in figures.items():
                    say(f"| {threads} | {who} | {kib / 1024:.1f} |")

        # Start to ready with the embedded ranges.
        mirror_base = servers.mirror_base()
        times = []
        for i in range(5):
            d = os.path.join(tmp, f"start{i}")
            os.makedirs(d)
            port, admin = harness.free_port(), harness.free_port()
            t0 = time.monotonic()
            gw = start_gateway(a.binary, d, 1, port, admin, mirror_base)
            procs.append(gw)
            harness.wait_ready(admin, "/readyz", gw)
            times.append(time.monotonic() - t0)
            harness.stop(gw, 5)
        say()
        say(f"start to /readyz 200 (embedded ranges), median of 5: {median(times) * 1000:.0f} ms "
            f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f})")

        if not a.skip_cache_fill:
            d = os.path.join(tmp, "fill")
            os.makedirs(d)
            port, admin = harness.free_port(), harness.free_port()
            gw = start_gateway(a.binary, d, 2, port, admin, mirror_base)
            procs.append(gw)
            harness.wait_ready(admin, "/readyz", gw)
            script = os.path.join(d, "distinct.lua")
            with open(script, "w") as f:
                f.write("counter = 0\nrequest = function()\n  counter = counter % 100000 + 1\n"
                        "  return wrk.format('GET', string.format('/v2/p/blobs/sha256:%064x', counter))\nend\n")
            # One wrk thread so that one counter walks the 100,000 digests, then again (hits).
            filled = 0
            deadline = time.monotonic() + 120
            while filled < 100_000 and time.monotonic() < deadline:
                subprocess.run(["wrk", "-t1", "-c16", "-d5s", "-s", script, f"http://127.0.0.1:{port}/"],
                               capture_output=True, check=True)
                conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
                conn.request("GET", "/metrics")
                text = conn.getresponse().read().decode()
                filled = int(sum(float(v) for v in re.findall(
                    r'archeio_blob_checks_total\{mirror="[^"]*",outcome="present"\} (\S+)', text)))
            say(f"peak RSS after {filled:,} distinct mirror answers cached (capacity 100,000): "
                f"{peak_rss_kib([gw.pid]) / 1024:.1f} MiB")
            harness.stop(gw, 5)
            relay_authorization_fill(a.binary, tmp, procs, mirror_base, say)
    finally:
        for p in procs:
            harness.stop(p, 5)
        shutil.rmtree(tmp, ignore_errors=True)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
