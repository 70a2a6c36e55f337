#!/usr/bin/env python3
"""Rolling restart behind a load balancer: three gateways behind HAProxy, under steady load,
restarted one at a time; no request may fail.

    python3 tests/ops/rolling_restart.py [--rate 300] [--clients 6]
    ARCHEIO_BIN=/path/to/archeio python3 tests/ops/rolling_restart.py

What it checks (the acceptance test of draining on SIGTERM): after SIGTERM a gateway answers
`/readyz` with 503 at once, and BOTH its listeners (registry and admin) keep accepting and
serving for `grace_period_seconds` (2 here), so that the load balancer takes it out of rotation
before any connection is refused; then it stops accepting, lets in-flight requests finish
within `graceful_shutdown_timeout_seconds` (5 here) and exits 0. Its successor binds the same
ports and is put back in rotation by HAProxy's `/readyz` check.

Asserted, for the whole run: zero failed client requests (an unexpected status or Location, a
connection error, a timeout, a connection closed before the answer) and zero HAProxy retries,
redispatches and connection errors (with proper draining HAProxy never meets a refused
connect). For each restart: /readyz 503 within 0.5 s of SIGTERM, both ports accepting new
connections until grace - 0.25 s, exit code 0 within grace + timeout + 3 s, both ports free
after the exit, the successor ready and UP in HAProxy within 10 s.

Everything listens on 127.0.0.1 (ephemeral ports); the load is bounded in time (it stops when
the last restart is done, at the latest after --max-seconds). Every process this script starts
runs in its own process group and is killed by that group's id when the script ends, also on
failure. Python 3 standard library only, plus benches/harness.py (ports, gateway config,
readiness polling). Needs `haproxy` (Debian package `haproxy`).

Exit status: 0 when everything held, 1 when an assertion failed, 2 when the setup failed.
"""
import argparse
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benches"))
import harness  # noqa: E402

GRACE = 2  # grace_period_seconds
TIMEOUT = 5  # graceful_shutdown_timeout_seconds
EXIT_MARGIN = 3  # seconds allowed past grace + timeout for the process to be gone
GATEWAYS = 3
UP = "http://upstream.test/v2/prefix"
# (path, expected status, expected Location or None), alternated by every client.
CASES = [
    ("/v2/pause/manifests/3.10", 307, f"{UP}/pause/manifests/3.10"),
    ("/v2/", 200, None),
]


def now():
    return time.monotonic()


# --- processes ---------------------------------------------------------------------------

class Procs:
    """Every process started, each in its own session (process group = its pid)."""

    def __init__(self):
        self.all = []

    def start(self, cmd, log, env=None):
        out = open(log, "ab")
        try:
            p = subprocess.Popen(cmd, env=env, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
        finally:
            out.close()
        self.all.append(p)
        return p

    def stop_all(self):
        for p in self.all:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p in self.all:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                print(f"warning: pid {p.pid} did not go away after SIGKILL", file=sys.stderr)


def gateway_env():
    env = dict(os.environ, RUST_LOG="warn")
    for var in harness.ENV_OVERRIDES:
        env.pop(var, None)
    return env


class Gateway:
    def __init__(self, index, work, binary, procs):
        self.name = f"g{index}"
        self.dir = os.path.join(work, self.name)
        os.mkdir(self.dir)
        self.port, self.admin = harness.free_port(), harness.free_port()
        self.conf = harness.write_config(
            self.dir, self.port, self.admin, threads=1, mirror_default="http://mirror.test",
            upstream=("http://upstream.test", "prefix"), grace=(GRACE, TIMEOUT),
            extra=["mode: redirect", "client_address: {trusted_proxy_hops: 0}"])
        self.binary, self.procs = binary, procs
        self.generation = 0
        self.proc = None

    @property
    def log(self):
        return os.path.join(self.dir, f"gateway.{self.generation}.log")

    def start(self):
        self.generation += 1
        self.proc = self.procs.start([self.binary, "-c", self.conf], self.log, env=gateway_env())
        harness.wait_ready(self.admin, "/readyz", self.proc, deadline_s=10, interval=0.01)
        harness.wait_ready(self.port, "/v2/", self.proc, deadline_s=10, interval=0.01)

    def log_tail(self, n=15):
        try:
            with open(self.log, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""


# --- HAProxy -----------------------------------------------------------------------------

def haproxy_config(d, port, gateways, retries=True):
    servers = "\n".join(
        f"    server {g.name} 127.0.0.1:{g.port} check port {g.admin} inter 200ms fall 1 rise 2"
        for g in gateways)
    if retries:
        retry_lines = """\
    # Retries and redispatch for connection failures only (`retry-on conn-failure`): this is
    # what a load balancer does for a refused or failed connect, which never reached a
    # gateway, so retrying it elsewhere is fair and hides nothing about the gateway's answers.
    # The point of this test is that, with proper draining, there are no refused connects at
    # all: the test reads `wretr`/`wredis`/`econ` from the stats socket and fails when any is
    # not zero. `option redispatch 1`: every retry goes to another server (counted in wredis).
    retries 2
    retry-on conn-failure
    option redispatch 1"""
    else:
        # --no-lb-retries: like a load balancer without retries (kube-proxy's iptables or IPVS
        # rules), a refused connect reaches the client as an error (here HAProxy's 503; there
        # the client's own ECONNREFUSED).
        retry_lines = "    retries 0"
    return f"""\
global
    maxconn 2000
    stats socket {d}/haproxy.sock mode 600 level admin
    # no log target: the test reads HAProxy's counters from the stats socket

defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 10s
    timeout http-keep-alive 30s
    timeout check 1s

frontend registry
    bind 127.0.0.1:{port}
    default_backend gateways

backend gateways
    balance roundrobin
    option httpchk GET /readyz
{retry_lines}
{servers}
"""


def haproxy_stats(sock_path):
    """{server name: row dict} from `show stat` on the stats socket."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(sock_path)
        s.sendall(b"show stat\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    lines = data.decode().splitlines()
    header = lines[0].lstrip("# ").split(",")
    rows = {}
    for line in lines[1:]:
        if not line:
            continue
        row = dict(zip(header, line.split(",")))
        rows[row["svname"]] = row
    return rows


def wait_haproxy(sock_path, server, status, deadline_s):
    """Seconds until HAProxy reports `server` in `status` (UP/DOWN), None on timeout."""
    start = now()
    while now() - start < deadline_s:
        try:
            if haproxy_stats(sock_path)[server]["status"].startswith(status):
                return now() - start
        except (OSError, KeyError, IndexError):
            pass
        time.sleep(0.02)
    return None


# --- load --------------------------------------------------------------------------------

class Client:
    """One keep-alive HTTP/1.1 connection. Unlike the soak client it does not re-send after a
    close: HAProxy keeps client connections open (timeout http-keep-alive 30s) whatever the
    gateways do, so a close before the answer is a failure."""

    def __init__(self, port, timeout):
        self.port, self.timeout, self.sock, self.buf = port, timeout, None, b""

    def close(self):
        if self.sock is not None:
            self.sock.close()
        self.sock, self.buf = None, b""

    def get(self, path):
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
            self.buf = b""
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: registry.test\r\n\r\n".encode())
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed before the answer")
            self.buf += chunk
        head, rest = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed mid-body")
            rest += chunk
        self.buf = rest[length:]
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers.get("location")


class Load:
    def __init__(self, port, rate, clients, t0):
        self.port, self.rate, self.clients, self.t0 = port, rate, clients, t0
        self.lock = threading.Lock()
        self.sent = 0
        self.ok = 0
        self.failures = []  # (seconds since t0, path, what)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.worker, args=(k,), daemon=True)
                        for k in range(clients)]

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(10)

    def worker(self, k):
        client = Client(self.port, timeout=5)
        per_thread = self.rate / self.clients
        next_at = now() + k / self.rate
        i = k
        while not self.stop.is_set():
            delay = next_at - now()
            if delay > 0:
                time.sleep(delay)
            next_at += 1 / per_thread
            path, want, location = CASES[i % len(CASES)]
            i += 1
            what = None
            try:
                status, got = client.get(path)
                if status != want or (location is not None and got != location):
                    what = f"{status} {got or ''}, wanted {want} {location or ''}".strip()
            except socket.timeout:
                what = "timeout (5 s)"
                client.close()
            except OSError as e:
                what = f"{type(e).__name__}: {e}"
                client.close()
            with self.lock:
                self.sent += 1
                if what is None:
                    self.ok += 1
                else:
                    self.failures.append((now() - self.t0, path, what))
        client.close()


# --- probes of one gateway during its shutdown ---------------------------------------------

def probe(port, path):
    """Status of GET path on a new connection, or the error's name."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=0.5)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        r.read()
        return r.status
    except ConnectionRefusedError:
        return "refused"
    except ConnectionResetError:
        return "reset"
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return type(e).__name__
    finally:
        conn.close()


def port_free(port):
    """Nothing listens on 127.0.0.1:port and a listener could bind it (SO_REUSEADDR, as the
    gateway's own listener)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return False
    except OSError:
        pass
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


class Abort(Exception):
    """A restart could not go on; the failures list says why."""


def restart(g, stats_sock, failures):
    """SIGTERM `g`, watch it drain and exit, start its successor on the same ports. Returns
    the timings; appends to `failures` what did not hold."""
    t = {"gateway": g.name, "pid": g.proc.pid}
    ready, registry = [], []  # (seconds since SIGTERM, answer)
    haproxy_down = None
    sigterm = now()
    g.proc.send_signal(signal.SIGTERM)
    limit = GRACE + TIMEOUT + EXIT_MARGIN
    while g.proc.poll() is None and now() - sigterm < limit:
        ready.append((now() - sigterm, probe(g.admin, "/readyz")))
        registry.append((now() - sigterm, probe(g.port, "/v2/")))
        if haproxy_down is None:
            try:
                row = haproxy_stats(stats_sock)[g.name]
                if row["status"].startswith("DOWN"):
                    haproxy_down = now() - sigterm
                    # L7STS: the check got an HTTP status (503); L4CON: its connect failed.
                    t["check_status"] = row.get("check_status", "?")
            except (OSError, KeyError, IndexError):
                pass
        time.sleep(0.02)
    try:
        code = g.proc.wait(max(0.0, limit - (now() - sigterm)))
        t["exit"] = now() - sigterm
    except subprocess.TimeoutExpired:
        code = None
        t["exit"] = None
    t["code"] = code
    t["haproxy_down"] = haproxy_down
    t.setdefault("check_status", "-")

    def first(samples, pred):
        return next(((s, a) for s, a in samples if pred(a)), None)

    r503 = first(ready, lambda a: a == 503)
    t["readyz_503"] = r503[0] if r503 else None
    ready_lost = first(ready, lambda a: not isinstance(a, int))
    registry_lost = first(registry, lambda a: not isinstance(a, int))
    registry_bad = first(registry, lambda a: isinstance(a, int) and a != 200)
    t["admin_refused"] = ready_lost
    t["registry_refused"] = registry_lost
    t["readyz_answers"] = sorted({str(a) for _, a in ready})
    name = f"{g.name} (pid {g.proc.pid})"
    if r503 is None or r503[0] > 0.5:
        failures.append(f"{name}: /readyz did not answer 503 within 0.5 s of SIGTERM "
                        f"(answers seen: {', '.join(t['readyz_answers']) or 'none'}"
                        + (f"; first {ready_lost[1]} at +{ready_lost[0]*1000:.0f} ms" if ready_lost else "")
                        + ")")
    if ready_lost and ready_lost[0] < GRACE - 0.25:
        failures.append(f"{name}: admin port {ready_lost[1]} at +{ready_lost[0]*1000:.0f} ms, "
                        f"before the {GRACE} s grace period ended")
    if registry_lost and registry_lost[0] < GRACE - 0.25:
        failures.append(f"{name}: registry port {registry_lost[1]} at +{registry_lost[0]*1000:.0f} ms, "
                        f"before the {GRACE} s grace period ended")
    if registry_bad:
        failures.append(f"{name}: registry port answered GET /v2/ with {registry_bad[1]} "
                        f"at +{registry_bad[0]*1000:.0f} ms")
    if code is None:
        failures.append(f"{name}: still running {limit} s after SIGTERM (grace {GRACE} + timeout "
                        f"{TIMEOUT} + {EXIT_MARGIN}); killed")
        os.killpg(g.proc.pid, signal.SIGKILL)
        g.proc.wait(5)
    elif code != 0:
        failures.append(f"{name}: exit status {code} after SIGTERM, wanted 0\n{g.log_tail()}")
    if t["exit"] is not None and t["exit"] < GRACE - 0.25:
        failures.append(f"{name}: exited {t['exit']*1000:.0f} ms after SIGTERM, before the {GRACE} s "
                        "grace period ended")
    elif t["exit"] is not None and t["exit"] > GRACE + 1:
        # Not asserted: nothing slow is in flight here, so the exit should follow the grace
        # period closely; kept-alive idle connections may count as in flight for the gateway.
        print(f"note: {name} exited {t['exit']*1000:.0f} ms after SIGTERM, more than 1 s after the "
              "grace period with nothing slow in flight")

    # The old process released both ports: nothing answers there and they can be bound.
    for port in (g.port, g.admin):
        if not port_free(port):
            failures.append(f"{name}: 127.0.0.1:{port} still taken after the process exited")
    started = now()
    try:
        g.start()
    except SystemExit as e:
        failures.append(f"{g.name}: successor did not start on the same ports: {e}\n{g.log_tail()}")
        raise Abort() from e
    t["successor_ready"] = now() - started
    up = wait_haproxy(stats_sock, g.name, "UP", 10)
    t["successor_up"] = None if up is None else now() - started
    if up is None:
        failures.append(f"{g.name}: HAProxy did not mark the successor UP within 10 s")
    return t


def ms(x):
    return "-" if x is None else f"{x*1000:.0f} ms"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=300, help="requests per second in all (default 300)")
    ap.add_argument("--clients", type=int, default=6, help="keep-alive client connections (default 6)")
    ap.add_argument("--max-seconds", type=float, default=50, help="bound on the whole load (default 50)")
    ap.add_argument("--no-lb-retries", action="store_true",
                    help="HAProxy with `retries 0`: what clients see behind a balancer that does not retry")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, configs)")
    args = ap.parse_args()

    binary = os.environ.get("ARCHEIO_BIN") or os.path.join(ROOT, "target", "release", "archeio")
    if not os.access(binary, os.X_OK):
        print(f"no gateway binary at {binary} (build it, or set ARCHEIO_BIN)", file=sys.stderr)
        return 2
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        print("haproxy not found (apt-get install -y haproxy)", file=sys.stderr)
        return 2
    print(f"binary: {binary}")

    # `timeout` (scripts/test.sh) sends SIGTERM: unwind through the finally below, which
    # kills every process group started (they are in their own sessions, out of its reach).
    def terminated(*_):
        raise KeyboardInterrupt("SIGTERM")
    signal.signal(signal.SIGTERM, terminated)

    work = tempfile.mkdtemp(prefix="archeio-rolling-")
    procs = Procs()
    load = None
    failures = []
    timings = []
    try:
        gateways = [Gateway(i + 1, work, binary, procs) for i in range(GATEWAYS)]
        for g in gateways:
            g.start()
        lb_port = harness.free_port()
        cfg = os.path.join(work, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(haproxy_config(work, lb_port, gateways, retries=not args.no_lb_retries))
        stats_sock = os.path.join(work, "haproxy.sock")
        lb = procs.start([haproxy, "-f", cfg, "-db"], os.path.join(work, "haproxy.log"))
        harness.wait_ready(lb_port, "/v2/", lb, deadline_s=10, interval=0.02)
        for g in gateways:
            if wait_haproxy(stats_sock, g.name, "UP", 10) is None:
                raise SystemExit(f"HAProxy did not mark {g.name} UP")

        t0 = now()
        load = Load(lb_port, args.rate, args.clients, t0)
        load.start()
        time.sleep(1)  # steady state before the first restart
        for g in gateways:
            if now() - t0 > args.max_seconds - 15:
                failures.append("ran out of time before every gateway was restarted")
                break
            start = now() - t0
            t = restart(g, stats_sock, failures)
            t["at"] = start
            timings.append(t)
            time.sleep(0.5)  # the successor takes traffic before the next restart
        time.sleep(1)
        load.finish()
        elapsed = now() - t0
        stats = haproxy_stats(stats_sock)
        backend = stats["BACKEND"]
        counters = {k: int(backend.get(k) or 0) for k in ("wretr", "wredis", "econ", "eresp")}
        for g in gateways:
            row = stats[g.name]
            counters[g.name] = {k: int(row.get(k) or 0) for k in ("stot", "wretr", "wredis", "econ", "eresp")}

        print(f"load: {load.sent} requests in {elapsed:.1f} s ({load.sent / elapsed:.0f}/s) through HAProxy, "
              f"{load.ok} answered as expected, {len(load.failures)} failed")
        for at, path, what in load.failures[:15]:
            print(f"  failed at +{at:.2f} s: GET {path}: {what}")
        if len(load.failures) > 15:
            print(f"  ... and {len(load.failures) - 15} more")
        print(f"haproxy backend: retries {counters['wretr']}, redispatches {counters['wredis']}, "
              f"connection errors {counters['econ']}, response errors {counters['eresp']}")
        for g in gateways:
            c = counters[g.name]
            print(f"  {g.name}: {c['stot']} sessions, retries {c['wretr']}, redispatches {c['wredis']}, "
                  f"connection errors {c['econ']}, response errors {c['eresp']}")
        print("restarts (times from SIGTERM; successor times from its start):")
        print(f"  {'gw':<3} {'at':>7}  {'readyz 503':>10}  {'HAProxy DOWN (check)':<20}  {'admin port lost':<20}  "
              f"{'registry port lost':<20}  {'exit':>7}  {'code':>4}  successor ready / UP")
        for t in timings:
            lost = lambda x: "-" if x is None else f"{x[1]} +{x[0]*1000:.0f} ms"  # noqa: E731
            down = f"{ms(t['haproxy_down'])} ({t['check_status']})"
            print(f"  {t['gateway']:<3} {'+%.2fs' % t['at']:>7}  {ms(t['readyz_503']):>10}  {down:<20}  "
                  f"{lost(t['admin_refused']):<20}  {lost(t['registry_refused']):<20}  {ms(t['exit']):>7}  "
                  f"{str(t['code']):>4}  {ms(t.get('successor_ready'))} / {ms(t.get('successor_up'))}")

        if load.failures:
            failures.append(f"{len(load.failures)} of {load.sent} client requests failed")
        if counters["wretr"] or counters["wredis"] or counters["econ"]:
            failures.append(f"HAProxy met failed connects: {counters['wretr']} retries, "
                            f"{counters['wredis']} redispatches, {counters['econ']} connection errors "
                            "(a draining gateway should never refuse one)")
        if failures:
            print("FAIL:")
            for f in failures:
                print("  -", f)
            return 1
        print("PASS: rolling restart of 3 gateways lost no request")
        return 0
    except Abort:
        print("FAIL (run stopped):")
        for f in failures:
            print("  -", f)
        return 1
    except SystemExit as e:
        print(f"setup failed: {e}", file=sys.stderr)
        for f in failures:
            print("  -", f, file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"interrupted ({e or 'SIGINT'}): stopping everything", file=sys.stderr)
        return 1
    finally:
        if load is not None:
            load.finish()
        procs.stop_all()
        if args.keep or os.environ.get("ROLLING_KEEP"):
            print(f"logs and configs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
