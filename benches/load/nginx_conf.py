#!/usr/bin/env python3
"""Writes an nginx configuration that routes like archeio's defaults: a `geo` block over the
same AWS and GCP range files, a `map` from region to mirror, the same upstream URL rule, and
`/v2/` answering 200. Used by run.py as the reference to compare the gateway with.

usage: nginx_conf.py OUTDIR --port P --workers N --mirror-base URL --mirrors mirrors.yaml
       --aws aws-ip-ranges.json --gcp gcp-cloud.json
"""
import argparse
import json
import os

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
    a = ap.parse_args()
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
    conf = f"""
worker_processes {a.workers};
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp;
    proxy_temp_path {d}/tmp;
    fastcgi_temp_path {d}/tmp;
    uwsgi_temp_path {d}/tmp;
    scgi_temp_path {d}/tmp;
    keepalive_requests 1000000;
    server_tokens off;

    # The client: second-to-last X-Forwarded-For entry (one trusted hop), else the peer.
    map $http_x_forwarded_for $client_ip {{
        "~(?<c>[^, ]+)[, ]+[^, ]+[, ]*$" $c;
        default $remote_addr;
    }}
    geo $client_ip $placement {{
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
        location = /v2 {{ add_header Docker-Distribution-Api-Version registry/2.0 always; return 200; }}
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
}}
"""
    os.makedirs(os.path.join(a.outdir, "tmp"), exist_ok=True)
    with open(os.path.join(a.outdir, "nginx.conf"), "w") as f:
        f.write(conf)


if __name__ == "__main__":
    main()
