"""What the benchmark scripts under benches/ share: building and locating the release binary,
free loopback ports, the gateway's configuration file, starting, waiting for and stopping the
gateway, a loopback blob mirror, and a process's memory and CPU figures from /proc.

Python 3 standard library only; the scripts import it from benches/<name>/run.py.
"""
import http.client
import http.server
import os
import signal
import socket
import subprocess
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "target", "release", "archeio")
# Environment variables that would override the configuration file's ports, upstream or mirror.
ENV_OVERRIDES = ["PORT", "ARCHEIO_ADMIN_PORT", "UPSTREAM_REGISTRY_ENDPOINT", "UPSTREAM_REGISTRY_PATH",
                 "SIGNATURE_UPSTREAM_ENDPOINT", "DEFAULT_AWS_BASE_URL"]


def build(quiet=True):
    """`cargo build --release --locked` in the repository (what the scripts' --no-build skips)."""
    cmd = ["cargo", "build", "--release", "--locked"] + (["--quiet"] if quiet else [])
    subprocess.run(cmd, cwd=ROOT, check=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(d, port, admin, *, threads, mirror_default, regions=None, upstream=None, grace=None,
                 extra=(), named=None):
    """Writes the gateway's configuration to d/archeio.yaml and returns its path.

    Pingora's keys: `threads`, pid file and upgrade socket in d, and, when `grace` is
    (grace_period_seconds, graceful_shutdown_timeout_seconds), those two. Then `archeio:`:
    registry on 127.0.0.1:port, admin on 127.0.0.1:admin, `upstream` (endpoint, path) when given
    (else the built-in default), mirrors: `mirror_default` and `regions` (region -> URL; none
    when empty) and `named` (name -> URL, for policy chains), then the `extra` lines (YAML keys
    of the `archeio:` section, unindented)."""
    lines = ["version: 1", f"threads: {threads}", f"pid_file: {d}/archeio.pid",
             f"upgrade_sock: {d}/upgrade.sock"]
    if grace is not None:
        lines += [f"grace_period_seconds: {grace[0]}", f"graceful_shutdown_timeout_seconds: {grace[1]}"]
    lines += ["archeio:", f"  listen: ['127.0.0.1:{port}']", f"  admin_listen: ['127.0.0.1:{admin}']"]
    if upstream is not None:
        lines += ["  upstream:", f"    endpoints: ['{upstream[0]}']", f"    path: '{upstream[1]}'"]
    lines += ["  mirrors:", f"    default: '{mirror_default}'", "    replace_regions: true"]
    if regions:
        lines += ["    regions:"] + [f"      {region}: '{url}'" for region, url in regions.items()]
    else:
        lines.append("    regions: {}")
    if named:
        lines += ["    named:"] + [f"      {name}: {{url: '{url}'}}" for name, url in named.items()]
    lines += [f"  {line}" for line in extra]
    path = os.path.join(d, "archeio.yaml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def start_gateway(binary, conf, log=None, args=(), wrapper=(), rust_log="warn"):
    """Starts `wrapper... binary args... -c conf` with RUST_LOG=`rust_log` (warn: no access
    records) and without the ENV_OVERRIDES variables; stdout and stderr go to the file `log`
    (else nowhere)."""
    env = dict(os.environ, RUST_LOG=rust_log)
    for var in ENV_OVERRIDES:
        env.pop(var, None)
    cmd = [*wrapper, binary, *args, "-c", conf]
    if log is None:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=out)


def wait_ready(port, path="/readyz", proc=None, deadline_s=20, interval=0.002):
    """Polls GET http://127.0.0.1:port{path} every `interval` s until it answers 200; exits
    (SystemExit) when `proc` ends first or after `deadline_s` s."""
    wait_answer(port, path, proc, 200, deadline_s, interval)


def wait_answer(port, path, proc=None, status=200, deadline_s=20, interval=0.002):
    """wait_ready() for a server whose ready answer is `status`."""
    start = time.monotonic()
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                conn.request("GET", path)
                r = conn.getresponse()
                r.read()
                if r.status == status:
                    return
            finally:
                conn.close()
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"process exited with {proc.returncode} before 127.0.0.1:{port}{path} answered {status}")
        if time.monotonic() - start > deadline_s:
            raise SystemExit(f"127.0.0.1:{port}{path} did not answer {status} within {deadline_s}s")
        time.sleep(interval)


def stop(proc, timeout):
    """SIGINT, then SIGKILL after `timeout` s. Returns True when the process exited by itself."""
    if proc.poll() is not None:
        return True
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return False


def start_mirror(status):
    """A blob mirror on 127.0.0.1 answering every HEAD and GET with an empty body and `status`
    (an int, or a function of the request path). Returns (base URL, function stopping it)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self):
            self.send_response(status(self.path) if callable(status) else status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_HEAD = _answer
        do_GET = _answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop_mirror():
        server.shutdown()
        server.server_close()

    return f"http://127.0.0.1:{server.server_address[1]}", stop_mirror


def status_kib(pid, field):
    """A KiB figure (`VmRSS`, `VmHWM`, ...) from /proc/<pid>/status; None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except FileNotFoundError:
        return None
    return None


def cpu_ticks(pid):
    """utime + stime of a process, all its threads included (fields 14 and 15 of
    /proc/<pid>/stat), in clock ticks (os.sysconf("SC_CLK_TCK") a second); None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # Field 2 (the command) is in parentheses and may hold spaces: count from after it.
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 are the 12th and 13th after it


def policy_50_rules():
    """benches/policy_50_rules.yaml as `extra` lines for write_config (under `policy:`)."""
    with open(os.path.join(ROOT, "benches", "policy_50_rules.yaml")) as f:
        lines = [line.rstrip("\n") for line in f if line.strip() and not line.startswith("#")]
    return ["policy:"] + [f"  {line}" for line in lines]
