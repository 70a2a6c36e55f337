#!/usr/bin/env python3
"""Blob latency with a healthy mirror versus a black-holed one (issue 6: the breaker).

Starts the release gateway twice on loopback, in front of
  - a healthy mirror (answers every HEAD with 404 at once: the blob goes upstream), then
  - a black hole (accepts connections, never answers),
sends the same number of blob requests for distinct digests over one keep-alive connection
after a warm-up (which, for the black hole, is what opens the breaker), and prints p50, p99
and max latency, and any answer that is not a 307 to the upstream.

    python3 benches/breaker/run.py [--requests 2000] [--no-build]
"""
import argparse
import os
import socket
import sys
import tempfile
import threading
import time

# The shared helpers live in benches/, one level above this script's folder.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import harness  # noqa: E402

UPSTREAM = "http://upstream.test/v2/prefix"


def healthy_mirror():
    """Answers every HEAD with 404 at once: the blob goes upstream."""
    return harness.start_mirror(404)


def black_hole():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    held = []
    stop = threading.Event()

    def accept():
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except socket.timeout:
                pass

    threading.Thread(target=accept, daemon=True).start()
    return f"http://127.0.0.1:{sock.getsockname()[1]}", stop.set


def start_gateway(mirror_url, workdir):
    port, admin = harness.free_port(), harness.free_port()
    breaker = "blob_check: {timeout: 1s, miss_ttl: 1h, breaker: {failures: 5, cool_down: 1h}}"
    conf = harness.write_config(workdir, port, admin, threads=2, upstream=("http://upstream.test", "prefix"),
                                mirror_default=mirror_url, extra=["ranges: {embedded: false}", breaker])
    return harness.start_gateway(harness.BINARY, conf, log=os.path.join(workdir, "gateway.log")), port


def request(sock, path):
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    status = int(head.split(" ", 2)[1])
    location = next((l.split(":", 1)[1].strip() for l in head.split("\r\n")
                     if l.lower().startswith("location:")), "")
    return status, location


def run(name, mirror, requests, counter):
    mirror_url, stop = mirror()
    with tempfile.TemporaryDirectory() as workdir:
        proc, port = start_gateway(mirror_url, workdir)
        try:
            harness.wait_ready(port, "/v2/", proc)
            sock = socket.create_connection(("127.0.0.1", port))
            bad = 0
            for _ in range(10):  # warm-up; opens the breaker of the black hole
                counter[0] += 1
                request(sock, f"/v2/p/blobs/sha256:{counter[0]:064x}")
            times = []
            for _ in range(requests):
                counter[0] += 1
                digest = f"sha256:{counter[0]:064x}"
                t = time.perf_counter()
                status, location = request(sock, f"/v2/p/blobs/{digest}")
                times.append(time.perf_counter() - t)
                if status != 307 or location != f"{UPSTREAM}/p/blobs/{digest}":
                    bad += 1
            times.sort()
            pct = lambda q: times[min(len(times) - 1, int(q * len(times)))] * 1e3
            print(f"{name:12} p50 {pct(0.50):7.3f} ms  p99 {pct(0.99):7.3f} ms  "
                  f"max {times[-1] * 1e3:7.3f} ms  wrong answers {bad}")
            return pct(0.99), bad
        finally:
            harness.stop(proc, 5)
            stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    if not args.no_build:
        harness.build()
    counter = [0]
    healthy, bad1 = run("healthy", healthy_mirror, args.requests, counter)
    holed, bad2 = run("black hole", black_hole, args.requests, counter)
    print(f"p99 difference (black hole - healthy): {holed - healthy:+.3f} ms")
    if bad1 or bad2 or holed - healthy >= 10:
        sys.exit(1)


if __name__ == "__main__":
    main()
