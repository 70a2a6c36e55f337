#!/usr/bin/env python3
"""Writes an nginx configuration that routes like archeio's defaults: a `geo` block over the
same AWS and GCP range files, a `map` from region to mirror, the same upstream URL rule, and
`/v2/` answering 200. Used by run.py as the reference to compare the gateway with.

usage: nginx_conf.py OUTDIR --port P --workers N --mirror-base URL --mirrors mirrors.yaml
       --aws aws-ip-ranges.json --gcp gcp-cloud.json
       [--tls-port P --cert cert.pem --key key.pem [--status-port P]]

With --tls-port the same server also listens with TLS there (`tls_listen`: TLS 1.2 and 1.3,
rustls' cipher suites and groups, HTTP/2 and HTTP/1.1 by ALPN), and --status-port adds a
plain server answering nginx's `stub_status` (connections accepted) at /status.

run.py also imports the writers of the other references: `write_manifest_cache` (proxy_pass to
a registry with proxy_cache), `write_blob_proxy` (proxy_pass of blob requests to a mirror) and
`write_file_mirror` (a mirror serving files from disk with sendfile).
"""
import argparse
import json
import os
import re
import subprocess

UPSTREAM = "https://us-central1-docker.pkg.dev/v2/k8s-artifacts-prod/images"
INFO = "https://github.com/kubernetes/registry.k8s.io"
PRIVACY = "https://www.linuxfoundation.org/privacy-policy/"


def geo_entries(aws_path, gcp_path, custom):
    """prefix -> "cloud:region", with archeio's precedence for identical prefixes:
    custom rules, then GCP, then AWS (nginx's geo picks the most specific prefix, as archeio)."""
    entries = {}
    for prefix, value in custom:
        entries.setdefault(prefix, value)
    for p in json.load(open(gcp_path))["prefixes"]:
        prefix = p.get("ipv4Prefix") or p.get("ipv6Prefix")
        entries.setdefault(prefix, "gcp:" + p["scope"])
    aws = json.load(open(aws_path))
    for p in aws["prefixes"]:
        entries.setdefault(p["ip_prefix"], "aws:" + p["region"])
    for p in aws.get("ipv6_prefixes", []):
        entries.setdefault(p["ipv6_prefix"], "aws:" + p["region"])
    return entries


def read_mirrors(path):
    table = {}
    for line in open(path):
        line = line.split("#", 1)[0].strip()
        if line:
            region, url = line.split(":", 1)
            table[region.strip()] = url.strip()
    return table


# What rustls (the gateway's TLS, ring provider) offers by default, for nginx to offer the same:
# TLS 1.2 suites for the ECDSA certificate, in rustls' order (TLS 1.3: OpenSSL's default suites,
# the same three as rustls'), and rustls' key exchange groups in its order.
TLS12_CIPHERS = "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305"
TLS_GROUPS = "X25519:prime256v1:secp384r1"


def nginx_version():
    """(major, minor, patch) of the `nginx` on PATH (`nginx -v` writes to stderr)."""
    out = subprocess.run(["nginx", "-v"], capture_output=True, text=True)
    m = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out.stderr + out.stdout)
    if not m:
        raise SystemExit(f"cannot read nginx's version from: {out.stderr.strip()}")
    return tuple(int(x) for x in m.groups())


def tls_listen(port, cert, key, version=None):
    """Lines of a `server {}` listening with TLS on 127.0.0.1:port: the certificate, TLS 1.2 and
    1.3, TLS12_CIPHERS and TLS_GROUPS, the client's suite order (as rustls), HTTP/2 by ALPN
    (`http2 on;` from nginx 1.25.1, the `http2` parameter of `listen` before). Session tickets
    and cache are nginx's defaults (tickets on, no cache)."""
    version = version or nginx_version()
    if version >= (1, 25, 1):
        listen = f"listen 127.0.0.1:{port} ssl backlog=4096;\n        http2 on;"
    else:
        listen = f"listen 127.0.0.1:{port} ssl http2 backlog=4096;"
    return f"""        {listen}
        ssl_certificate {os.path.abspath(cert)};
        ssl_certificate_key {os.path.abspath(key)};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers {TLS12_CIPHERS};
        ssl_prefer_server_ciphers off;
        ssl_ecdh_curve {TLS_GROUPS};
"""


def _frame(d, workers, http_body, worker_connections=4096, access_log="off"):
    """nginx.conf in d: workers, no daemon, everything (pid, logs, temp files) inside d,
    the access log (`off`, or a file), then `http_body` inside `http {}`."""
    d = os.path.abspath(d)
    os.makedirs(os.path.join(d, "tmp"), exist_ok=True)
    conf = f"""
worker_processes {workers};
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections {worker_connections}; }}
http {{
    access_log {access_log};
    client_body_temp_path {d}/tmp;
    proxy_temp_path {d}/tmp;
    fastcgi_temp_path {d}/tmp;
    uwsgi_temp_path {d}/tmp;
    scgi_temp_path {d}/tmp;
    keepalive_requests 1000000;
    server_tokens off;
{http_body}
}}
"""
    with open(os.path.join(d, "nginx.conf"), "w") as f:
        f.write(conf)
    return os.path.join(d, "nginx.conf")


def write_manifest_cache(d, port, workers, upstream, path):
    """proxy_pass of /v2/... to `upstream` (http://host:port) under /v2/`path`/, as the
    pass-through gateway maps repositories, with proxy_cache: 200 answers kept 10 minutes,
    keyed by the URI and the Accept header; the upstream's caching headers ignored so that
    it caches. `X-Cache-Status` tells run.py's check whether an answer came from the cache."""
    d = os.path.abspath(d)
    body = f"""
    proxy_cache_path {d}/cache levels=1:2 keys_zone=manifests:4m max_size=64m inactive=60m
                     use_temp_path=off;
    upstream registry {{ server {upstream.split("://", 1)[1]}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /v2/ {{ add_header Docker-Distribution-Api-Version registry/2.0 always; return 200; }}
        location /v2/ {{
            proxy_pass http://registry/v2/{path}/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache manifests;
            proxy_cache_key "$request_uri $http_accept";
            proxy_cache_valid 200 10m;
            proxy_cache_lock on;
            proxy_ignore_headers Cache-Control Expires Set-Cookie Vary X-Accel-Expires;
            proxy_hide_header Set-Cookie;
            add_header X-Cache-Status $upstream_cache_status always;
        }}
    }}"""
    return _frame(d, workers, body)


def write_blob_proxy(d, port, workers, mirror, blob_path="/containers/images/"):
    """proxy_pass of every blob GET to `mirror` (http://host:port) at blob_path + digest,
    nginx's default buffering (proxy_buffering on, temporary files up to 1 GiB)."""
    body = f"""
    upstream mirror {{ server {mirror.split("://", 1)[1]}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /v2/ {{ add_header Docker-Distribution-Api-Version registry/2.0 always; return 200; }}
        location ~ "^/v2/.+/blobs/(?<digest>[^/]+:[a-zA-Z0-9=_-]+)$" {{
            proxy_pass http://mirror{blob_path}$digest;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
        location / {{ return 404; }}
    }}"""
    return _frame(d, workers, body)


def write_file_mirror(d, port, root):
    """A mirror serving the files under `root` (sendfile on, one worker)."""
    body = f"""
    sendfile on;
    tcp_nopush on;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {os.path.abspath(root)};
        location / {{ try_files $uri =404; }}
    }}"""
    return _frame(d, 1, body, worker_connections=1024)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("outdir")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--workers", type=int, required=True)
    ap.add_argument("--mirrors", required=True, help="region: url lines (archeio's data/mirrors.yaml)")
    ap.add_argument("--mirror-base", required=True, help="replaces every mirror host, as in the gateway's bench config")
    ap.add_argument("--default-mirror", required=True)
    ap.add_argument("--aws", required=True)
    ap.add_argument("--gcp", required=True)
    ap.add_argument("--access-log", help="write nginx's access log (format combined) here; default off")
    ap.add_argument("--tls-port", type=int, help="also listen with TLS (HTTP/2 and HTTP/1.1) here")
    ap.add_argument("--cert", help="PEM certificate (chain) for --tls-port")
    ap.add_argument("--key", help="PEM key for --tls-port")
    ap.add_argument("--status-port", type=int, help="a plain server with stub_status at /status here")
    a = ap.parse_args()
    if a.tls_port and not (a.cert and a.key):
        ap.error("--tls-port needs --cert and --key")
    os.makedirs(a.outdir, exist_ok=True)

    entries = geo_entries(a.aws, a.gcp, [])
    with open(os.path.join(a.outdir, "geo.conf"), "w") as f:
        for prefix, value in entries.items():
            f.write(f"{prefix} {value};\n")

    mirrors = read_mirrors(a.mirrors)
    region_map = "".join(
        f'        "aws:{region}" {a.mirror_base}/{region};\n' for region in sorted(mirrors)
    )
    d = os.path.abspath(a.outdir)
    tls = tls_listen(a.tls_port, a.cert, a.key) if a.tls_port else ""
    status = (f"""
    server {{
        listen 127.0.0.1:{a.status_port};
        location = /status {{ stub_status; }}
        location / {{ return 404; }}
    }}
""" if a.status_port else "")
    body = f"""
    # The client: the rightmost X-Forwarded-For entry that is not a trusted proxy (the
    # gateway's client_address.trusted_proxies: the load generator and Google's LB), else
    # the peer.
    set_real_ip_from 127.0.0.1;
    set_real_ip_from 130.211.0.0/22;
    real_ip_header X-Forwarded-For;
    real_ip_recursive on;
    geo $remote_addr $placement {{
        default "";
        include {d}/geo.conf;
    }}
    map $placement $is_gcp {{
        "~^gcp:" 1;
        default 0;
    }}
    map $placement $mirror_base {{
        default {a.default_mirror};
{region_map}    }}

    server {{
        listen 127.0.0.1:{a.port} backlog=4096;
{tls}        location = /v2 {{ add_header Docker-Distribution-Api-Version registry/2.0 always; return 200; }}
        location = /v2/ {{ add_header Docker-Distribution-Api-Version registry/2.0 always; return 200; }}
        location = /v2/_catalog {{ return 404; }}
        location ~ "^/v2(?<rest>/.+/blobs/(?<digest>[^/]+:[a-zA-Z0-9=_-]+))$" {{
            if ($is_gcp) {{ return 307 {UPSTREAM}$rest$is_args$args; }}
            return 307 $mirror_base/containers/images/$digest;
        }}
        location ~ "^/v2(?<rest>/.*)$" {{ return 307 {UPSTREAM}$rest$is_args$args; }}
        location = / {{ return 307 {INFO}; }}
        location /privacy {{ return 307 {PRIVACY}; }}
        location / {{ return 404; }}
    }}
{status}"""
    _frame(a.outdir, a.workers, body, access_log=a.access_log or "off")


if __name__ == "__main__":
    main()
