#!/usr/bin/env python3
"""Soak test: the release gateway under a fixed request rate mixing every route, for a
bounded time, sampling its RSS; a graceful upgrade (`-u` + SIGQUIT) near the end.

Passes (exit 0) when no request failed or got an unexpected answer, and the RSS just before
the upgrade is within 10% of the RSS after warm-up.

    python3 benches/soak/run.py [--duration 600] [--rate 400] [--no-build]

Clients keep connections alive and, like HTTP clients do for GET, send a request again on a
new connection when the server closed an idle one before answering (which is what a process
handing over to its successor does); anything else counts as an error.
"""
import argparse
import os
import signal
import socket
import sys
import tempfile
import threading
import time

# The shared helpers live in benches/, one level above this script's folder.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import harness  # noqa: E402

UP = "http://upstream.test/v2/prefix"
DIGESTS = 5000  # distinct blobs in rotation; every third one is on the mirror


def mirror_status(path):
    """The mirror holds every third digest."""
    return 200 if int(path.rsplit(":", 1)[1], 16) % 3 == 0 else 404


def digest(n):
    return f"sha256:{n:064x}"


def cases(mirror):
    """(method, path, expected status, expected Location prefix) for request number i."""
    fixed = [
        ("GET", "/", 307, "https://github.com/kubernetes/registry.k8s.io"),
        ("GET", "/privacy", 307, "https://www.linuxfoundation.org/"),
        ("GET", "/v2/", 200, None),
        ("HEAD", "/v2/", 200, None),
        ("GET", "/v2/_catalog", 404, None),
        ("GET", "/v2/pause/manifests/3.10", 307, f"{UP}/pause/manifests/3.10"),
        ("HEAD", "/v2/pause/manifests/3.10", 307, f"{UP}/pause/manifests/3.10"),
        ("GET", "/v2/pause/tags/list?n=10", 307, f"{UP}/pause/tags/list?n=10"),
        ("GET", "/v2/a/../b/manifests/x", 400, None),
        ("POST", "/v2/pause/blobs/uploads/", 405, None),
        ("GET", "/nope", 404, None),
    ]

    def case(i):
        if i % 2 == 0:
            n = (i // 2) % DIGESTS
            d = digest(n)
            if n % 3 == 0:
                return ("GET", f"/v2/pause/blobs/{d}", 307, f"{mirror}/containers/images/{d}")
            return ("GET", f"/v2/pause/blobs/{d}", 307, f"{UP}/pause/blobs/{d}")
        return fixed[(i // 2) % len(fixed)]

    return case


class Client:
    def __init__(self, port):
        self.port = port
        self.sock = None

    def connect(self):
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.buf = b""

    def send(self, method, path):
        """(status, location), or None when the connection closed before an answer."""
        if self.sock is None:
            self.connect()
        try:
            self.sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: soak\r\n\r\n".encode())
            while b"\r\n\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionResetError("closed")
                self.buf += chunk
        except (ConnectionResetError, BrokenPipeError) as e:
            if self.buf:
                raise RuntimeError(f"connection closed mid-answer: {e}")
            self.sock.close()
            self.sock = None
            return None
        head, rest = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {k.lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
        length = 0 if method == "HEAD" else int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed mid-body")
            rest += chunk
        self.buf = rest[length:]
        if headers.get("connection", "").lower() == "close":
            self.sock.close()
            self.sock = None
        return status, headers.get("location")


def rss_kib(pid):
    return harness.status_kib(pid, "VmRSS")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=600, help="seconds (default 600)")
    ap.add_argument("--rate", type=float, default=400, help="requests per second (default 400)")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    if not args.no_build:
        harness.build()

    mirror_url, stop_mirror = harness.start_mirror(mirror_status)

    work = tempfile.mkdtemp(prefix="archeio-soak-")
    port, admin = harness.free_port(), harness.free_port()
    conf = harness.write_config(work, port, admin, threads=2, upstream=("http://upstream.test", "prefix"),
                                mirror_default=mirror_url, grace=(1, 5),
                                extra=["ranges: {embedded: true}", "client_address: {trusted_proxy_hops: 0}",
                                       "blob_check: {miss_ttl: 2s, hit_ttl: 5s}"])
    procs = []

    def spawn(extra):
        p = harness.start_gateway(harness.BINARY, conf, log=os.path.join(work, f"gateway{len(procs)}.log"),
                                  args=extra)
        procs.append(p)
        return p

    try:
        first = spawn([])
        harness.wait_ready(port, "/v2/", first)

        case = cases(mirror_url)
        counter = [0]
        lock = threading.Lock()
        errors, sent, retried = [], [0], [0]
        stop = threading.Event()
        start = time.monotonic()
        per_thread = args.rate / args.threads

        def worker(k):
            client = Client(port)
            next_at = start + k / args.rate
            while not stop.is_set():
                now = time.monotonic()
                if now < next_at:
                    time.sleep(next_at - now)
                next_at += 1 / per_thread
                with lock:
                    i = counter[0]
                    counter[0] += 1
                method, path, want, prefix = case(i)
                try:
                    answer = client.send(method, path)
                    if answer is None:
                        with lock:
                            retried[0] += 1
                        answer = client.send(method, path)
                    if answer is None:
                        raise RuntimeError("closed again before answering")
                    status, location = answer
                    if status != want or (prefix and not (location or "").startswith(prefix)):
                        raise RuntimeError(f"{status} {location}, wanted {want} {prefix}")
                except Exception as e:  # noqa: BLE001 - every failure is a soak error
                    with lock:
                        errors.append(f"{method} {path}: {e}")
                    client = Client(port)
                with lock:
                    sent[0] += 1

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(args.threads)]
        for t in threads:
            t.start()

        # Long enough for the blob rotation to have filled the mirror-check cache.
        warm_up = start + max(args.duration * 0.1, min(30.0, args.duration * 0.4))
        upgrade_at = start + args.duration * 0.85
        end = start + args.duration
        samples = []
        baseline = before_upgrade = None
        second = None
        while time.monotonic() < end:
            time.sleep(1)
            now = time.monotonic()
            pid = first.pid if second is None else second.pid
            samples.append((round(now - start), pid, rss_kib(pid)))
            if baseline is None and now >= warm_up:
                baseline = rss_kib(first.pid)
            if second is None and now >= upgrade_at:
                before_upgrade = rss_kib(first.pid)
                second = spawn(["-u"])
                sock_path = os.path.join(work, "upgrade.sock")
                wait = time.time() + 10
                while not os.path.exists(sock_path) and time.time() < wait:
                    time.sleep(0.02)
                first.send_signal(signal.SIGQUIT)
        stop.set()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start
        old_exited = first.wait(timeout=30) is not None
        final_second = rss_kib(second.pid) if second else None

        print(f"duration {elapsed:.0f} s, {sent[0]} requests ({sent[0] / elapsed:.0f}/s), "
              f"{len(errors)} errors, {retried[0]} re-sent after an idle close")
        print(f"RSS after warm-up {baseline} KiB, before the upgrade {before_upgrade} KiB "
              f"({(before_upgrade / baseline - 1) * 100:+.1f}%), successor at the end {final_second} KiB")
        print(f"upgrade: old process exited: {old_exited}, successor running: "
              f"{second is not None and second.poll() is None}")
        for e in errors[:10]:
            print("  error:", e)
        ok = (not errors and baseline and before_upgrade
              and abs(before_upgrade / baseline - 1) <= 0.10
              and old_exited and second is not None and second.poll() is None)
        sys.exit(0 if ok else 1)
    finally:
        for p in procs:
            harness.stop(p, 5)
        stop_mirror()


if __name__ == "__main__":
    main()
