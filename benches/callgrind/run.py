#!/usr/bin/env python3
"""User-space instructions per request of archeio, counted by valgrind's callgrind.

For each scenario the gateway (threads: 1, RUST_LOG=warn but where a scenario says, loopback only) is started twice
under `valgrind --tool=callgrind`:

  run B: start, warm-up (WARMUP requests), N measured requests (taking T seconds), stop
  run A: start, warm-up (WARMUP requests), T seconds idle, stop

All requests of a run go over one keep-alive HTTP/1.1 connection; every status (and, for
redirects, the Location) is checked, and the script fails on any difference. Instructions per
request = (total Ir of B - total Ir of A) / N, so start-up, warm-up, readiness check and
shutdown cancel out, and so does the idle gateway's background timer work (which would
otherwise add ~0.1-0.2% per request: ~90k Ir per idle second here). Totals
cover every thread of the process (callgrind's summary line).

Scenarios:
  manifest  GET /v2/pause/manifests/latest           307 to the upstream
  v2        GET /v2/                                 200
  blob      GET /v2/pause/blobs/sha256:<64 hex>      307 to the default mirror; the client
            (127.0.0.1, no X-Forwarded-For) is in no cloud; the first warm-up request HEADs
            the mirror (a local http.server answering 200) and fills the mirror-answer cache,
            so the measured requests are cache hits.
  blob_50_rules  the same request and answer under a 50-rule policy (harness.POLICY_50_RULES:
            49 rules miss, on repository globs, networks, providers and regions).
  manifest_access_log  the manifest request with access records on (RUST_LOG=info; the
            records go to a file).

The gateway is stopped with SIGINT (SIGKILL after --stop-timeout seconds; a killed run
writes no profile and fails the measurement).

usage: benches/callgrind/run.py --binary PATH [--requests 2000] [--warmup 200] [--scenarios manifest,v2,blob]
                  [--keep DIR] [--valgrind /usr/bin/valgrind]
"""
import argparse
import http.client
import os
import shutil
import sys
import tempfile
import time

# The shared helpers live in benches/, one level above this script's folder.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import harness  # noqa: E402

DIGEST = "sha256:4a1c4b21597c1b4415bdbecb28a3296c6b5e23ca4f9feeb599860a1dac6a0108"
# name: request target, expected status, expected Location ({base}: the local mirror/upstream
# base URL; None: no Location expected).
SCENARIOS = {
    "manifest": ("/v2/pause/manifests/latest", 307, "{base}/v2/images/pause/manifests/latest"),
    "v2": ("/v2/", 200, None),
    "blob": (f"/v2/pause/blobs/{DIGEST}", 307, "{base}/default/containers/images/" + DIGEST),
    "blob_50_rules": (f"/v2/pause/blobs/{DIGEST}", 307, "{base}/default/containers/images/" + DIGEST),
    "manifest_access_log": ("/v2/pause/manifests/latest", 307, "{base}/v2/images/pause/manifests/latest"),
}
# Scenarios run with access records on (RUST_LOG=info, written to the run's gateway.log).
LOGGED = {"manifest_access_log"}
# Scenarios run with a policy: harness.POLICY_50_RULES, whose 49 first rules miss and whose last
# sends a blob to the client's region's mirror (here the default: 127.0.0.1 is in no cloud).
POLICIES = {"blob_50_rules": harness.policy_50_rules}


def listening(port):
    """True once 127.0.0.1:port is in LISTEN state (read from /proc, no request to the server)."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        return any(line.split()[1] == want and line.split()[3] == "0A" for line in f.readlines()[1:])


def wait_ready(proc, port, admin, deadline_s):
    start = time.monotonic()
    while not (listening(port) and listening(admin)):
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode} before listening")
        if time.monotonic() - start > deadline_s:
            raise RuntimeError(f"gateway not listening within {deadline_s}s")
        time.sleep(0.05)
    # Usually ready at once (embedded ranges); each extra poll adds a little noise to the count.
    harness.wait_ready(admin, "/readyz", proc, deadline_s - (time.monotonic() - start), interval=0.5)


def drive(port, target, status, location, warmup, measured, idle):
    """`warmup` + `measured` GETs of `target` over one keep-alive connection, each answer
    checked, then `idle` seconds with the connection open. Returns the measured requests' time."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.connect()
    sock = conn.sock
    try:
        for i in range(warmup + measured):
            if i == warmup:
                start = time.monotonic()
            conn.request("GET", target)
            r = conn.getresponse()
            r.read()
            if r.status != status:
                raise RuntimeError(f"request {i}: GET {target} answered {r.status}, expected {status}")
            loc = r.getheader("Location")
            if loc != location:
                raise RuntimeError(f"request {i}: GET {target} Location {loc!r}, expected {location!r}")
            if r.will_close or conn.sock is not sock:
                raise RuntimeError(f"request {i}: the connection was not kept alive")
        elapsed = time.monotonic() - start if measured else 0.0
        time.sleep(idle)
        return elapsed
    finally:
        conn.close()


def total_ir(out_file):
    with open(out_file) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError(f"no summary line in {out_file}")


def run_once(a, workdir, base, target, status, location, measured, idle=0.0, extra=(), rust_log="warn"):
    """One gateway under callgrind: warm-up, `measured` requests, `idle` s. -> (total Ir, time)"""
    d = tempfile.mkdtemp(dir=workdir)
    port, admin = harness.free_port(), harness.free_port()
    conf = harness.write_config(d, port, admin, threads=1, upstream=(base, "images"),
                                mirror_default=f"{base}/default", grace=(0, 1), extra=extra)
    out = os.path.join(d, "callgrind.out")
    proc = harness.start_gateway(a.binary, conf, log=os.path.join(d, "gateway.log"),
                                 wrapper=[a.valgrind, "--tool=callgrind", f"--callgrind-out-file={out}"],
                                 rust_log=rust_log)
    try:
        wait_ready(proc, port, admin, a.start_timeout)
        elapsed = drive(port, target, status, location, a.warmup, measured, idle)
    finally:
        clean = harness.stop(proc, a.stop_timeout)
    if not clean:
        raise RuntimeError(f"gateway did not exit within {a.stop_timeout}s of SIGINT (killed); see {d}")
    if not os.path.exists(out):
        raise RuntimeError(f"no callgrind profile written (exit {proc.returncode}); see {d}/gateway.log")
    return total_ir(out), elapsed


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", required=True, help="archeio release binary")
    ap.add_argument("--requests", type=int, default=2000, help="measured requests (N)")
    ap.add_argument("--warmup", type=int, default=200, help="requests before the measured ones")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset")
    ap.add_argument("--valgrind", default=shutil.which("valgrind") or "/usr/bin/valgrind")
    ap.add_argument("--start-timeout", type=float, default=120, help="seconds to become ready")
    ap.add_argument("--stop-timeout", type=float, default=10, help="seconds after SIGINT")
    ap.add_argument("--keep", help="keep configs, logs and profiles in this directory")
    a = ap.parse_args()
    names = [s for s in a.scenarios.split(",") if s]
    unknown = [s for s in names if s not in SCENARIOS]
    if unknown or a.requests <= 0:
        ap.error(f"unknown scenarios {unknown}" if unknown else "--requests must be positive")
    a.binary = os.path.abspath(a.binary)

    if a.keep:
        os.makedirs(a.keep, exist_ok=True)
    workdir = a.keep or tempfile.mkdtemp(prefix="archeio-callgrind-")
    base, stop_mirror = harness.start_mirror(200)

    rows = []
    try:
        for name in names:
            target, status, location = SCENARIOS[name]
            location = location.format(base=base) if location else None
            extra = POLICIES[name]() if name in POLICIES else ()
            rust_log = "info" if name in LOGGED else "warn"
            full_ir, elapsed = run_once(a, workdir, base, target, status, location, a.requests,
                                        extra=extra, rust_log=rust_log)
            # The idle gateway still runs timers (~0.1 M Ir/s under valgrind here): the baseline
            # run stays idle, connection open, as long as the measured requests took.
            base_ir, _ = run_once(a, workdir, base, target, status, location, 0, idle=elapsed,
                                  extra=extra, rust_log=rust_log)
            rows.append((name, base_ir, full_ir, elapsed, (full_ir - base_ir) / a.requests))
            print(f"{name}: {rows[-1][4]:,.0f} Ir/request", file=sys.stderr, flush=True)
    finally:
        stop_mirror()
        if not a.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    print(f"binary {a.binary}; warm-up {a.warmup}, measured N={a.requests}, one keep-alive connection")
    print(f"{'scenario':<10} {'total Ir, baseline':>19} {'total Ir, +N':>15} {'window s':>9} {'Ir/request':>11}")
    for name, base_ir, full_ir, elapsed, per in rows:
        print(f"{name:<10} {base_ir:>19,} {full_ir:>15,} {elapsed:>9.1f} {per:>11,.0f}")


if __name__ == "__main__":
    main()
