#!/usr/bin/env python3
"""A stand-in for the gateway that drains on SIGTERM the way rolling_restart.py expects, to
check that the test can pass at all (HAProxy's checks, retries and connection reuse as
configured there); it is not the gateway and proves nothing about it.

    ARCHEIO_BIN=tests/ops/draining_stub.py python3 tests/ops/rolling_restart.py

Takes `-c FILE` (a file written by benches/harness.py's write_config) and serves, on the
registry listener, GET /v2/ (200) and GET /v2/<name>/manifests/<ref> (307 to the upstream),
and on the admin listener GET /readyz. On SIGTERM: /readyz answers 503 at once, both listeners
keep accepting for grace_period_seconds, then they close, kept-alive connections are closed
after their current answer (Connection: close) or at once when idle, and the process exits
when none is left, at the latest after graceful_shutdown_timeout_seconds. Stdlib only.
"""
import http.server
import os
import re
import select
import signal
import socketserver
import sys
import threading
import time

conf = open(sys.argv[sys.argv.index("-c") + 1]).read()
port = int(re.search(r"listen: \['127\.0\.0\.1:(\d+)'\]", conf).group(1))
admin = int(re.search(r"admin_listen: \['127\.0\.0\.1:(\d+)'\]", conf).group(1))
grace = int(re.search(r"^grace_period_seconds: (\d+)", conf, re.M).group(1))
timeout = int(re.search(r"^graceful_shutdown_timeout_seconds: (\d+)", conf, re.M).group(1))
upstream = re.search(r"endpoints: \['([^']+)'\]", conf).group(1)
prefix = re.search(r"path: '([^']+)'", conf).group(1)

draining = threading.Event()  # SIGTERM received: /readyz 503
closing = threading.Event()  # grace period over: no keep-alive, listeners closed
conns = set()
lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        with lock:
            conns.add(self)

    def finish(self):
        with lock:
            conns.discard(self)
        super().finish()

    def handle_one_request(self):
        # Wait for the next request in short slices so an idle connection closes soon after
        # the grace period, as a draining server does (HAProxy does not pipeline, so nothing
        # waits in rfile's buffer while the socket is not readable).
        while not select.select([self.connection], [], [], 0.05)[0]:
            if closing.is_set():
                self.close_connection = True
                return
        self.raw_requestline = self.rfile.readline(65537)
        if not self.raw_requestline:
            self.close_connection = True
            return
        if not self.parse_request():
            return
        self.do_GET()
        self.wfile.flush()

    def answer(self, status, location=None):
        self.send_response(status)
        if location:
            self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        if closing.is_set():
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()

    def do_GET(self):
        if self.server.server_address[1] == admin:
            if self.path == "/readyz":
                self.answer(503 if draining.is_set() else 200)
            else:
                self.answer(200 if self.path == "/healthz" else 404)
        elif self.path in ("/", "/v2/"):
            self.answer(307 if self.path == "/" else 200, "https://example.test/" if self.path == "/" else None)
        elif re.fullmatch(r"/v2/[a-z0-9/]+/manifests/[\w.-]+", self.path):
            self.answer(307, f"{upstream}/v2/{prefix}{self.path[3:]}")
        else:
            self.answer(404)

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


servers = [Server(("127.0.0.1", p), Handler) for p in (port, admin)]
for s in servers:
    threading.Thread(target=s.serve_forever, args=(0.05,), daemon=True).start()
signal.signal(signal.SIGTERM, lambda *_: draining.set())
while not draining.wait(0.1):
    pass
time.sleep(grace)
closing.set()
for s in servers:
    s.shutdown()
    s.server_close()
end = time.monotonic() + timeout
while time.monotonic() < end:
    with lock:
        if not conns:
            break
    time.sleep(0.02)
os._exit(0)
