#!/usr/bin/env python3
"""Load benchmark of archeio against nginx doing the same routing, on loopback only.

For 1 and then 2 worker threads, both servers are started with the same range files, mirror
table and upstream rule (nginx_conf.py writes nginx's), their answers are compared for a sample
of requests, and `wrk` drives each in alternation, several rounds per scenario. Medians over
the rounds are printed (requests/s, p50, p99, peak RSS) with the gateway/nginx ratio.
Then: start-to-ready time, and RSS with 100,000 cached mirror answers.

usage: benches/load/run.py [--duration 5] [--rounds 3] [--threads 1,2] [--no-build]
                         [--markdown FILE]
Access logs are off on both sides (RUST_LOG=warn, nginx `access_log off`).
"""
import argparse
import http.client
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from nginx_conf import read_mirrors

# The shared helpers live in benches/, one level above this script's folder.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import harness  # noqa: E402

NGINX_CONF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nginx_conf.py")
SHA = "sha256:4a1c4b21597c1b4415bdbecb28a3296c6b5e23ca4f9feeb599860a1dac6a0108"
AWS_CLIENT = "15.193.6.10"  # us-east-1 in the embedded AWS ranges
SCENARIOS = [
    ("manifest", "/v2/pause/manifests/3.10", None),
    ("blob_unknown_client", f"/v2/pause/blobs/{SHA}", None),
    ("blob_aws_client_xff", f"/v2/pause/blobs/{SHA}", f"{AWS_CLIENT}, 130.211.0.1"),
    ("v2", "/v2/", None),
]
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


def ask(port, method, target, xff=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"X-Forwarded-For": xff} if xff else {}
    conn.request(method, target, headers=headers)
    r = conn.getresponse()
    r.read()
    conn.close()
    return r.status, r.getheader("Location")


def peak_rss_kib(pids):
    return sum(harness.status_kib(pid, "VmHWM") or 0 for pid in pids)


def children(pid):
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]
    except FileNotFoundError:
        return []


def to_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def wrk(port, target, xff, threads, duration, connections):
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency"]
    if xff:
        cmd += ["-H", f"X-Forwarded-For: {xff}"]
    cmd.append(f"http://127.0.0.1:{port}{target}")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = to_ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = to_ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    errors = re.search(r"Socket errors: (.*)", out)
    non3xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors or non3xx:
        raise SystemExit(f"wrk saw errors against port {port}:\n{out}")
    return rps, p50, p99


def start_gateway(d, threads, port, admin, mirror_base):
    """The gateway with the default upstream and every region of data/mirrors.yaml on the mirror."""
    regions = {r: f"{mirror_base}/{r}"
               for r in sorted(read_mirrors(os.path.join(harness.ROOT, "data", "mirrors.yaml")))}
    conf = harness.write_config(d, port, admin, threads=threads, mirror_default=f"{mirror_base}/default",
                                regions=regions)
    return harness.start_gateway(harness.BINARY, conf)


def start_nginx(conf_dir):
    return subprocess.Popen(["nginx", "-p", conf_dir, "-c", os.path.join(conf_dir, "nginx.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def mirror_nginx(d, port):
    """The blob mirror both servers point at: 200 for every HEAD/GET."""
    os.makedirs(os.path.join(d, "tmp"), exist_ok=True)
    with open(os.path.join(d, "nginx.conf"), "w") as f:
        f.write(f"""worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{ access_log off; client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp;
  fastcgi_temp_path {d}/tmp; uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
  server {{ listen 127.0.0.1:{port}; location / {{ return 200; }} }} }}
""")
    return start_nginx(d)


def ensure_tools():
    missing = [t for t in ("nginx", "wrk") if not shutil.which(t)]
    if missing:
        pkgs = ["nginx-light" if t == "nginx" else t for t in missing]
        if os.geteuid() == 0 and shutil.which("apt-get"):
            subprocess.run(["apt-get", "install", "-y", "-qq", *pkgs], check=True)
        else:
            raise SystemExit(f"missing {missing}: sudo apt-get install -y {' '.join(pkgs)}")


def median(xs):
    return statistics.median(xs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--connections", type=int, default=32, help="per wrk thread")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--markdown", help="also write the tables here")
    ap.add_argument("--skip-cache-fill", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true", help="only start time and memory")
    a = ap.parse_args()
    ensure_tools()
    if not a.no_build:
        harness.build(quiet=False)

    tmp = tempfile.mkdtemp(prefix="archeio-load-")
    procs = []
    lines = []

    def say(text=""):
        print(text, flush=True)
        lines.append(text)

    try:
        mport = harness.free_port()
        mdir = os.path.join(tmp, "mirror")
        os.makedirs(mdir)
        procs.append(mirror_nginx(mdir, mport))
        harness.wait_ready(mport, "/", procs[-1])
        mirror_base = f"http://127.0.0.1:{mport}"

        say(f"wrk {a.duration}s x {a.rounds} rounds, {a.connections} connections per wrk thread; "
            f"medians over rounds; CPU: {os.cpu_count()} cores")
        say()
        say("| threads | scenario | gateway req/s | nginx req/s | ratio | gateway p50/p99 ms | nginx p50/p99 ms |")
        say("|---|---|---|---|---|---|---|")
        rss = {}
        for threads in [] if a.skip_throughput else [int(t) for t in a.threads.split(",")]:
            gdir = os.path.join(tmp, f"gw{threads}")
            os.makedirs(gdir)
            gport, admin, nport = harness.free_port(), harness.free_port(), harness.free_port()
            gw = start_gateway(gdir, threads, gport, admin, mirror_base)
            procs.append(gw)
            harness.wait_ready(admin, "/readyz", gw)
            ndir = os.path.join(tmp, f"nginx{threads}")
            subprocess.run([sys.executable, NGINX_CONF, ndir,
                            "--port", str(nport), "--workers", str(threads),
                            "--mirrors", os.path.join(harness.ROOT, "data", "mirrors.yaml"),
                            "--mirror-base", mirror_base, "--default-mirror", f"{mirror_base}/default",
                            "--aws", os.path.join(harness.ROOT, "data", "aws-ip-ranges.json"),
                            "--gcp", os.path.join(harness.ROOT, "data", "gcp-cloud.json")], check=True)
            ng = start_nginx(ndir)
            procs.append(ng)
            harness.wait_ready(nport, "/v2/", ng)

            for method, target, xff in SAMPLES:
                g, n = ask(gport, method, target, xff), ask(nport, method, target, xff)
                if g != n:
                    raise SystemExit(f"answers differ for {method} {target} xff={xff}: gateway {g}, nginx {n}")
            results = {}
            for r in range(a.rounds):
                for name, target, xff in SCENARIOS:
                    order = [("gateway", gport), ("nginx", nport)]
                    if r % 2:
                        order.reverse()
                    for who, port in order:
                        results.setdefault((name, who), []).append(
                            wrk(port, target, xff, threads, a.duration, a.connections * threads))
            for name, _, _ in SCENARIOS:
                g = results[(name, "gateway")]
                n = results[(name, "nginx")]
                grps, nrps = median([x[0] for x in g]), median([x[0] for x in n])
                say(f"| {threads} | {name} | {grps:,.0f} | {nrps:,.0f} | {grps / nrps:.2f} | "
                    f"{median([x[1] for x in g]):.3f} / {median([x[2] for x in g]):.3f} | "
                    f"{median([x[1] for x in n]):.3f} / {median([x[2] for x in n]):.3f} |")
            rss[threads] = (peak_rss_kib([gw.pid]), peak_rss_kib([ng.pid] + children(ng.pid)))
            harness.stop(gw, 5)
            harness.stop(ng, 5)
        say()
        say("| threads | gateway peak RSS MiB | nginx peak RSS MiB (master + workers) |")
        say("|---|---|---|")
        for threads, (g, n) in rss.items():
            say(f"| {threads} | {g / 1024:.1f} | {n / 1024:.1f} |")

        # Start to ready with the embedded ranges.
        times = []
        for i in range(5):
            d = os.path.join(tmp, f"start{i}")
            os.makedirs(d)
            port, admin = harness.free_port(), harness.free_port()
            t0 = time.monotonic()
            gw = start_gateway(d, 1, port, admin, mirror_base)
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
            gw = start_gateway(d, 2, port, admin, mirror_base)
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
                filled = int(float(re.search(r'archeio_blob_checks_total\{outcome="present"\} (\S+)', text).group(1)))
            say(f"peak RSS after {filled:,} distinct mirror answers cached (capacity 100,000): "
                f"{peak_rss_kib([gw.pid]) / 1024:.1f} MiB")
            harness.stop(gw, 5)
    finally:
        for p in procs:
            harness.stop(p, 5)
        shutil.rmtree(tmp, ignore_errors=True)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
