#!/usr/bin/env python3
"""End-to-end suite: real registry clients pull through the archeio gateway, on loopback only.

What it starts (all on 127.0.0.1, ephemeral ports, state in one temporary directory):
  - docker-registry (Distribution) as the upstream, filled by skopeo with images written here;
  - moto_server as the S3-compatible mirror, holding some (not all) of the blobs;
  - the gateway (target/release/archeio), whose custom CIDR rule puts 127.0.0.0/8 in AWS
    us-east-1, whose mirror is the moto bucket;
  - containerd and dockerd when those clients are selected;
  - for the private scenario: s3s-fs (an S3 server that checks SigV4) with a private bucket
    filled by `archeio sync`, and Azurite (the Azure Blob emulator, which checks SAS) with a
    private container filled with Shared Key requests;
  - for the auth scenario: a second docker-registry over the same storage behind htpasswd
    (user robot), and gateways with `client_auth: relay` and `client_auth: local`;
  - for the tls scenario: a CA and a server certificate for localhost made with openssl, and
    gateways with a TLS listener serving it;
  - for the geo scenario: three static mirrors in this process (default, asia, europe) and
    gateways whose MaxMind DB file, written here, puts 127.0.0.0/8 in Japan, then Germany.
Then, for each mode (redirect, passthrough) and client (skopeo, ctr, podman, docker), it pulls
every image into a fresh store, checks the digests the client reports, and reads the mirror's
and the upstream's request logs to check which server served each blob. The tamper scenario
changes one mirror object and checks that the client refuses the pull. The private scenario
pulls through gateways whose chain is one private store, and checks from the store's own log
that every blob was served there on a signed URL. The auth scenario pulls from the htpasswd
registry with the right credentials (relay: robot's; local: the gateway's user alice), and
checks that no credentials, a wrong password and (local) a repository not granted are refused.
The tls scenario pulls over the TLS listener with each client trusting the run's CA, reads the
ALPN protocol each agreed from archeio_tls_handshakes_total, and checks that a client not
trusting the CA is refused with a certificate error. The geo scenario pulls through a gateway
whose continent rules send Asian clients' blobs to the asia mirror (European: europe), and
checks that only that mirror served them and archeio_blob_bytes_total counted their bytes there.

Everything started is stopped by process id, and the temporary directory removed, on success,
failure, Ctrl-C or SIGTERM (--keep keeps the directory). See tests/e2e/README.md.
"""

import argparse
import atexit
import base64
import contextlib
import email.utils
import gzip
import hashlib
import hmac
import io
import ipaddress
import json
import os
import platform
import random
import re
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLIENTS = ["skopeo", "ctr", "podman", "docker"]
MODES = ["redirect", "passthrough"]
SCENARIOS = ["pull", "tamper", "private", "auth", "tls", "faults", "geo"]
BUCKET = "archeio-e2e"
# The private scenario: a private S3 bucket (s3s-fs) and a private Azure container (Azurite),
# each the only mirror of a gateway's chain; named as the gateway's mirrors.named entries.
PRIVATE_STORES = ["s3-private", "azure-private"]
PRIVATE_BUCKET = "archeio-private"
AZURE_ACCOUNT = "devstoreaccount1"  # Azurite's account and its published, well-known key
AZURE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
BLOB_PATH = "/containers/images/{digest}"  # the gateway's default mirrors.blob_path
REGION = "us-east-1"
# Clients pull the host's platform of a multi-arch index; single-arch images are built for it.
HOST_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower())

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
ACCEPT = ", ".join(
    [OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST, "application/vnd.docker.distribution.manifest.list.v2+json"]
)


class Failure(Exception):
    """A check failed: the message says what a user would have seen."""


class Exited(Failure):
    """A server exited while starting (most often: its port was taken in the meantime)."""


def log(msg):
    print(msg, flush=True)


# --------------------------------------------------------------------------------------
# Processes: everything started is tracked by pid and stopped on every way out.
# --------------------------------------------------------------------------------------


class Procs:
    def __init__(self):
        self.procs = []  # (name, Popen)
        self.cleanups = []  # callables run after the processes stopped
        self.done = False

    def start(self, name, argv, logfile, env=None, cwd=None):
        out = open(logfile, "ab")
        p = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        out.close()
        self.procs.append((name, p))
        return p

    def stop(self, p, name, timeout=10):
        if p.poll() is not None:
            return
        try:
            os.kill(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log(f"   {name} (pid {p.pid}) did not stop on SIGTERM; SIGKILL")
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()

    def stop_named(self, name):
        for n, p in list(self.procs):
            if n == name:
                self.stop(p, n)
                self.procs.remove((n, p))

    def shutdown(self):
        if self.done:
            return
        self.done = True
        # Reverse start order: dockerd before containerd, the gateway before its upstream.
        for name, p in reversed(self.procs):
            self.stop(p, name)
        self.procs.clear()
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception as e:  # a cleanup failure must not hide the test result
                log(f"cleanup: {e}")


PROCS = Procs()


def _on_signal(signum, _frame):
    log(f"\n== signal {signum}: stopping everything started")
    PROCS.shutdown()
    sys.exit(128 + signum)


def run(argv, timeout=300, env=None, check=True, capture=True):
    """Runs a client command; on failure raises with its output."""
    r = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.STDOUT if capture else None,
        env=env,
        timeout=timeout,
        text=True,
    )
    if check and r.returncode != 0:
        raise Failure(f"command failed ({r.returncode}): {' '.join(argv)}\n{r.stdout}")
    return r


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, fn, proc, logfile, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise Exited(f"{what} exited with {proc.returncode}:\n{tail(logfile)}")
        try:
            if fn():
                return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.1)
    raise Failure(f"{what} not ready within {timeout} s:\n{tail(logfile)}")


def start(what, fn):
    """fn() starts a server on a port that was free a moment ago; tried three times, as another
    process on the machine may take the port between the check and the bind."""
    for attempt in range(3):
        try:
            return fn()
        except Exited as e:
            if attempt == 2:
                raise
            log(f"   {what} did not start (port taken?), trying another port:\n{e}")


def tail(path, n=40):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return "(no log)"


def http(method, url, data=None, headers=None, timeout=30, context=None):
    """(status, headers, body) without following redirects; `context`: the ssl.SSLContext of an
    https URL (the tls scenario's, trusting its CA)."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None

    handlers = [NoRedirect] + ([urllib.request.HTTPSHandler(context=context)] if context else [])
    opener = urllib.request.build_opener(*handlers)
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with opener.open(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------
# Prerequisites
# --------------------------------------------------------------------------------------

# client -> [(command, Debian package)]
NEEDS = {
    "base": [("docker-registry", "docker-registry"), ("skopeo", "skopeo")],
    "skopeo": [],
    "ctr": [("containerd", "containerd"), ("ctr", "containerd")],
    "podman": [("podman", "podman")],
    "docker": [("containerd", "containerd"), ("dockerd", "docker.io"), ("docker", "docker.io")],
    # the auth scenario's bcrypt hashes, when nothing here makes them (see bcrypt_tool)
    "bcrypt": [("htpasswd", "apache2-utils")],
    # the tls scenario's CA and server certificate
    "tls": [("openssl", "openssl")],
}


def moto_available():
    r = subprocess.run(
        [sys.executable, "-c", "import moto.server, flask, werkzeug"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return r.returncode == 0


def ensure_prerequisites(clients, install, bcrypt=False, tls=False):
    """`bcrypt`: the auth scenario runs; it needs something that makes bcrypt hashes. `tls`: the
    tls scenario runs; it needs openssl."""
    pkgs = []
    for group in ["base"] + clients + (["bcrypt"] if bcrypt and bcrypt_tool() is None else []) + (["tls"] if tls else []):
        for cmd, pkg in NEEDS[group]:
            if shutil.which(cmd) is None and pkg not in pkgs:
                pkgs.append(pkg)
    need_moto = not moto_available()
    if not pkgs and not need_moto:
        return
    root = os.geteuid() == 0
    if install and root and pkgs and shutil.which("apt-get"):
        log(f"== installing {' '.join(pkgs)} (apt-get)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        run(["apt-get", "update", "-qq"], timeout=600, env=env)
        run(["apt-get", "install", "-y", "-qq", "--no-install-recommends"] + pkgs, timeout=1200, env=env)
        pkgs = [p for p in pkgs if any(shutil.which(c) is None for g in NEEDS.values() for c, q in g if q == p)]
    if install and root and need_moto:
        log(f"== installing moto[server] (pip, for {sys.executable})")
        r = run([sys.executable, "-m", "pip", "install", "-q", "moto[server]"], timeout=900, check=False)
        if r.returncode != 0:
            log(r.stdout)
        need_moto = not moto_available()
    missing = []
    if pkgs:
        missing.append(f"apt-get install -y {' '.join(pkgs)}")
    if need_moto:
        missing.append(f"{sys.executable} -m pip install 'moto[server]'")
    if missing:
        if not install:
            how = "--no-install was given"
        elif not root:
            how = "run as root and this script installs them itself"
        else:
            how = "the install above failed"
        raise Failure(
            "missing prerequisites; install them with:\n  "
            + "\n  ".join(missing)
            + f"\n({how}; or leave a client out with --skip-client NAME / ARCHEIO_E2E_SKIP_CLIENTS)"
        )


def s3s_fs_binary():
    """s3s-fs: $S3S_FS, else on PATH, else in cargo's bin directory (where scripts/test.sh's
    `cargo install` puts it); None when absent."""
    cargo_bin = os.path.join(os.environ.get("CARGO_HOME") or os.path.expanduser("~/.cargo"), "bin", "s3s-fs")
    for c in (os.environ.get("S3S_FS"), shutil.which("s3s-fs"), cargo_bin):
        if c and os.access(c, os.X_OK):
            return c
    return None


def azurite_dir():
    return os.path.join(os.environ.get("ARCHEIO_TEST_CACHE") or os.path.expanduser("~/.cache/archeio-test"), "azurite")


def azurite_binary():
    """azurite-blob: $AZURITE_BLOB, else scripts/test.sh's npm prefix, else on PATH."""
    for c in (os.environ.get("AZURITE_BLOB"), os.path.join(azurite_dir(), "node_modules", ".bin", "azurite-blob"),
              shutil.which("azurite-blob")):
        if c and os.access(c, os.X_OK):
            return c
    return None


S3S_FS_INSTALL = "cargo install s3s-fs --version 0.14.1 --features binary --locked"
AZURITE_INSTALL = "npm install --prefix {dir} --no-audit --no-fund --silent azurite@3.35.0"


def ensure_private_servers(install):
    """The private scenario's servers, installed as scripts/test.sh does (cargo, npm) when
    allowed; (s3s-fs, azurite-blob) paths."""
    s3s, azurite = s3s_fs_binary(), azurite_binary()
    if install and os.geteuid() == 0:
        if s3s is None and shutil.which("cargo"):
            log(f"== installing s3s-fs ({S3S_FS_INSTALL})")
            run(S3S_FS_INSTALL.split(), timeout=1800, capture=False)
            s3s = s3s_fs_binary()
        if azurite is None:
            if shutil.which("npm") is None and shutil.which("apt-get"):
                log("== installing nodejs npm (apt-get, for Azurite)")
                env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
                run(["apt-get", "update", "-qq"], timeout=600, env=env)
                run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "nodejs", "npm"], timeout=1200, env=env)
            if shutil.which("npm"):
                log(f"== installing Azurite into {azurite_dir()}")
                os.makedirs(azurite_dir(), exist_ok=True)
                run(AZURITE_INSTALL.format(dir=azurite_dir()).split(), timeout=900, capture=False)
                azurite = azurite_binary()
    missing = []
    if s3s is None:
        missing.append(S3S_FS_INSTALL + "   (or set S3S_FS)")
    if azurite is None:
        missing.append(AZURITE_INSTALL.format(dir=azurite_dir()) + "   (or set AZURITE_BLOB)")
    if missing:
        raise Failure("the private scenario needs s3s-fs and Azurite; install them with:\n  " + "\n  ".join(missing)
                      + "\n(or leave the scenario out: --scenario pull --scenario tamper)")
    return s3s, azurite


# --------------------------------------------------------------------------------------
# Test images, written as an OCI layout (and a Docker v2 schema 2 image in skopeo's dir: format)
# --------------------------------------------------------------------------------------


def layer(files):
    """A gzipped tar of {name: bytes}, reproducible; (compressed, diff_id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            info.mode = 0o644
            t.addfile(info, io.BytesIO(data))
    tar = raw.getvalue()
    gz = gzip.compress(tar, compresslevel=1, mtime=0)
    return gz, sha256(tar)


def config(arch, diff_ids, label):
    return json.dumps(
        {
            "created": "2024-01-01T00:00:00Z",
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": ["/hello"], "Labels": {"archeio.e2e": label}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": "2024-01-01T00:00:00Z", "created_by": f"archeio e2e {i}"} for i in diff_ids],
        },
        sort_keys=True,
    ).encode()


class Image:
    """One pushed tag: what a client pulling it on linux/amd64 must end up with."""

    def __init__(self, repo, ref_digest, manifest_digest, config_digest, layers, other_blobs=()):
        self.repo = repo  # e.g. test/app
        self.tag = "v1"
        self.ref_digest = ref_digest  # what the tag points to (index digest for multi-arch)
        self.manifest_digest = manifest_digest  # the linux/amd64 manifest
        self.config_digest = config_digest
        self.layers = layers
        self.other_blobs = list(other_blobs)  # blobs of other platforms: never fetched

    @property
    def blobs(self):
        return [self.config_digest] + self.layers


class Images:
    def __init__(self, work):
        self.work = work
        self.blobs = {}  # digest -> bytes
        self.images = []
        self.mirrored = []  # digests copied to the mirror

    def add(self, data):
        d = sha256(data)
        self.blobs[d] = data
        return d

    def desc(self, media, data, **extra):
        d = dict(mediaType=media, digest=self.add(data), size=len(data))
        d.update(extra)
        return d

    def oci_image(self, arch, layers, label, mirror):
        """(manifest bytes, config digest, layer digests); `mirror`: which of config and layers
        to copy to the mirror (booleans, config first)."""
        lds, diff_ids = [], []
        for files in layers:
            gz, diff = layer(files)
            lds.append(self.desc(OCI_LAYER, gz))
            diff_ids.append(diff)
        cfg = self.desc(OCI_CONFIG, config(arch, diff_ids, label))
        manifest = json.dumps(
            {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg, "layers": lds}, sort_keys=True
        ).encode()
        digests = [cfg["digest"]] + [x["digest"] for x in lds]
        self.mirrored += [d for d, m in zip(digests, mirror) if m]
        return manifest, cfg["digest"], [x["digest"] for x in lds]

    def write_oci_layout(self, path, manifests, index_entry):
        os.makedirs(os.path.join(path, "blobs", "sha256"))
        for data in list(self.blobs.values()) + manifests:
            with open(os.path.join(path, "blobs", "sha256", sha256(data)[7:]), "wb") as f:
                f.write(data)
        with open(os.path.join(path, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)
        with open(os.path.join(path, "index.json"), "w") as f:
            json.dump({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [index_entry]}, f)

    def build(self):
        rnd = random.Random(20240101)
        # test/app:v1 -- single-arch OCI image; one layer of 6 MiB of noise (does not compress).
        big = rnd.randbytes(6 * 1024 * 1024)
        app_m, app_cfg, app_layers = self.oci_image(
            HOST_ARCH,
            [{"big.bin": big}, {"hello": b"hello from test/app\n"}],
            "app",
            mirror=[True, True, False],
        )
        # test/multi:v1 -- OCI index of linux/amd64 and linux/arm64.
        amd_m, amd_cfg, amd_layers = self.oci_image(
            "amd64", [{"arch": b"amd64\n" + rnd.randbytes(300_000)}], "multi-amd64", mirror=[False, True]
        )
        arm_m, arm_cfg, arm_layers = self.oci_image(
            "arm64", [{"arch": b"arm64\n" + rnd.randbytes(300_000)}], "multi-arm64", mirror=[True, False]
        )
        index = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [
                    dict(mediaType=OCI_MANIFEST, digest=sha256(amd_m), size=len(amd_m),
                         platform={"architecture": "amd64", "os": "linux"}),
                    dict(mediaType=OCI_MANIFEST, digest=sha256(arm_m), size=len(arm_m),
                         platform={"architecture": "arm64", "os": "linux"}),
                ],
            },
            sort_keys=True,
        ).encode()
        # test/docker:v1 -- Docker v2 schema 2 media types throughout.
        gz, diff = layer({"docker": b"docker v2s2\n" + rnd.randbytes(200_000)})
        dl = self.desc(DOCKER_LAYER, gz)
        dc = self.desc(DOCKER_CONFIG, config(HOST_ARCH, [diff], "docker"))
        docker_m = json.dumps(
            {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": dc, "layers": [dl]}, sort_keys=True
        ).encode()
        self.mirrored += [dc["digest"]]  # config mirrored, layer not

        layouts = os.path.join(self.work, "layouts")
        app_dir = os.path.join(layouts, "app")
        self.write_oci_layout(app_dir, [app_m], dict(mediaType=OCI_MANIFEST, digest=sha256(app_m),
                                                      size=len(app_m), annotations={"org.opencontainers.image.ref.name": "v1"}))
        multi_dir = os.path.join(layouts, "multi")
        self.write_oci_layout(multi_dir, [amd_m, arm_m, index], dict(mediaType=OCI_INDEX, digest=sha256(index),
                                                                      size=len(index), annotations={"org.opencontainers.image.ref.name": "v1"}))
        docker_dir = os.path.join(layouts, "docker")  # skopeo dir: format keeps the manifest as is
        os.makedirs(docker_dir)
        for data in (gz, config(HOST_ARCH, [diff], "docker")):
            with open(os.path.join(docker_dir, sha256(data)[7:]), "wb") as f:
                f.write(data)
        with open(os.path.join(docker_dir, "manifest.json"), "wb") as f:
            f.write(docker_m)
        with open(os.path.join(docker_dir, "version"), "w") as f:
            f.write("Directory Transport Version: 1.1\n")

        if HOST_ARCH == "amd64":
            multi = Image("test/multi", sha256(index), sha256(amd_m), amd_cfg, amd_layers, [arm_cfg] + arm_layers)
        else:
            multi = Image("test/multi", sha256(index), sha256(arm_m), arm_cfg, arm_layers, [amd_cfg] + amd_layers)
        self.images = [
            Image("test/app", sha256(app_m), sha256(app_m), app_cfg, app_layers),
            multi,
            Image("test/docker", sha256(docker_m), sha256(docker_m), dc["digest"], [dl["digest"]]),
        ]
        self.sources = {
            "test/app": (f"oci:{app_dir}:v1", []),
            "test/multi": (f"oci:{multi_dir}:v1", ["--all"]),
            "test/docker": (f"dir:{docker_dir}", []),
        }
        for img in self.images:
            assert any(b in self.mirrored for b in img.blobs) and any(b not in self.mirrored for b in img.blobs)


# --------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------


class Upstream:
    """docker-registry serving `work/registry/storage`. `name`, `storage`, `htpasswd`: the auth
    scenario's second instance, `work/<name>/`, over the first one's storage (read only: delete
    is off, nothing pushes to it), behind htpasswd (Basic; its own file of bcrypt entries)."""

    def __init__(self, work, name="registry", storage=None, htpasswd=None):
        self.dir = os.path.join(work, name)
        os.makedirs(self.dir, exist_ok=True)
        self.storage = storage or os.path.join(self.dir, "storage")
        self.port = free_port()
        self.log = os.path.join(self.dir, "registry.log")
        conf = os.path.join(self.dir, "config.yml")
        auth = f"auth:\n  htpasswd:\n    realm: archeio-e2e\n    path: {htpasswd}\n" if htpasswd else ""
        with open(conf, "w") as f:
            f.write(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n"
                f"storage:\n  filesystem:\n    rootdirectory: {self.storage}\n  delete:\n    enabled: false\n"
                f"http:\n  addr: 127.0.0.1:{self.port}\n" + auth
            )
        self.proc = PROCS.start("docker-registry" + ("" if name == "registry" else f"-{name}"),
                                ["docker-registry", "serve", conf], self.log)
        self.url = f"http://127.0.0.1:{self.port}"
        # Behind htpasswd, /v2/ without credentials is the 401 challenge.
        wait_for("docker-registry", lambda: http("GET", self.url + "/v2/")[0] == (401 if htpasswd else 200),
                 self.proc, self.log)

    def blob_gets(self, text, digest):
        """Blob GETs the upstream answered (its access log lines), any repository."""
        return len(re.findall(r'"GET /v2/[^ ]+/blobs/' + re.escape(digest) + r' HTTP/1\.1" 200 ', text))

    def manifest_requests(self, text):
        return len(re.findall(r'"(?:GET|HEAD) /v2/[^ ]+/manifests/[^ ]+ HTTP/1\.1" 200 ', text))


class Mirror:
    def __init__(self, work):
        self.dir = os.path.join(work, "moto")
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        self.log = os.path.join(self.dir, "moto.log")
        env = dict(os.environ, AWS_DEFAULT_REGION=REGION, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test")
        self.proc = PROCS.start(
            "moto_server", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)], self.log, env=env
        )
        self.base = f"http://127.0.0.1:{self.port}/{BUCKET}"
        wait_for("moto_server", lambda: http("GET", f"http://127.0.0.1:{self.port}/")[0] == 200, self.proc, self.log)
        status, _, body = http("PUT", self.base, data=b"")
        if status != 200:
            raise Failure(f"creating bucket {BUCKET} in moto: {status} {body[:300]!r}")

    def key(self, digest):
        return BLOB_PATH.replace("{digest}", digest)

    def put(self, digest, data):
        url = self.base + self.key(digest)
        status, _, body = http("PUT", url, data=data, headers={"x-amz-acl": "public-read",
                                                                "Content-Type": "application/octet-stream"})
        if status != 200:
            raise Failure(f"PUT {url}: {status} {body[:300]!r}")
        status, _, got = http("GET", url)  # anonymous, as the gateway and the clients are
        if status != 200 or got != data:
            raise Failure(f"anonymous GET {url} after PUT: {status}, {len(got)} bytes")

    def blob_gets(self, text, digest):
        return len(re.findall(r'"GET /' + BUCKET + re.escape(self.key(digest)) + r' HTTP/1\.1" 200 ', text))


def blob_key(digest):
    """A blob's object key in the private stores: the gateway's blob_path without its `/`."""
    return BLOB_PATH[1:].replace("{digest}", digest)


def error_code(body):
    m = re.search(rb"<Code>([^<]*)</Code>", body)
    return m.group(1).decode() if m else body[:80].decode(errors="replace")


class PrivateStore:
    """What the private scenario asks of either store: the blob's plain URL, and the requests
    its own log shows for a blob as (method, signed, status)."""

    def url(self, digest):
        return f"{self.base}/{blob_key(digest)}"

    def blob_requests(self, text, digest):
        path = urllib.parse.urlsplit(self.url(digest)).path
        out = []
        for method, target, status in self.requests(text):
            u = urllib.parse.urlsplit(target)
            if urllib.parse.unquote(u.path) == path:
                out.append((method, self.signed(urllib.parse.parse_qs(u.query)), status))
        return out


class S3Private(PrivateStore):
    """s3s-fs serving one private bucket: it checks the SigV4 signature of every request
    (Authorization header or presigned query: method, path, query, expiry) against one
    access key, made up for this run. Its request log: with RUST_LOG=s3s::service=debug it
    writes a `req` and a `resp` event for each request (pretty format, several lines each),
    each followed by the request's span line holding its start time."""

    name = "s3-private"

    def __init__(self, work, binary):
        self.dir = os.path.join(work, "s3s-fs")
        os.makedirs(os.path.join(self.dir, "root", PRIVATE_BUCKET), exist_ok=True)  # a directory = a bucket
        self.port = free_port()
        self.log = os.path.join(self.dir, "s3s-fs.log")
        self.key_id = "AKIAE2E" + os.urandom(6).hex().upper()
        self.secret = base64.b64encode(os.urandom(30)).decode()
        env = dict(os.environ, RUST_LOG="s3s::service=debug,s3s_fs=info")
        self.proc = PROCS.start(
            "s3s-fs",
            [binary, "--host", "127.0.0.1", "--port", str(self.port), "--access-key", self.key_id,
             "--secret-key", self.secret, os.path.join(self.dir, "root")],
            self.log, env=env,
        )
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.base = f"{self.endpoint}/{PRIVATE_BUCKET}"
        wait_for("s3s-fs", lambda: http("GET", self.endpoint + "/")[0] in (200, 403), self.proc, self.log)

    def env(self):
        key_id_env, secret_env = PRIVATE_ENV["s3"]
        return {key_id_env: self.key_id, secret_env: self.secret}

    def signed(self, query):
        return "X-Amz-Signature" in query and query.get("X-Amz-Credential", [""])[0].startswith(self.key_id + "/")

    def requests(self, text):
        """(method, target, status) of each request in a piece of the log; status None while
        the response is not logged yet."""
        seen = {}
        pending = None
        for line in text.splitlines():
            m = re.search(r"s3s::service: req: Request \{ method: (\S+), uri: (\S+), ", line)
            if m:
                pending = ("req", m.group(1), m.group(2))
                continue
            m = re.search(r"s3s::service: duration: .*resp: Response \{ status: (\d+),", line)
            if m:
                pending = ("resp", int(m.group(1)))
                continue
            m = re.search(r"in s3s::service::call with start_time: (.+)$", line)
            if m and pending:
                entry = seen.setdefault(m.group(1), [None, None, None])
                if pending[0] == "req":
                    entry[0], entry[1] = pending[1], pending[2]
                else:
                    entry[2] = pending[1]
                pending = None
        return [tuple(e) for e in seen.values() if e[0]]


class AzurePrivate(PrivateStore):
    """Azurite's blob service with one private container (no public access), filled with
    Shared Key requests; it checks the SAS of every anonymous request (signature, permissions,
    expiry). Its access log (stdout, one line a request, query included) is the request log."""

    name = "azure-private"

    def __init__(self, work, binary):
        self.dir = os.path.join(work, "azurite")
        os.makedirs(os.path.join(self.dir, "data"), exist_ok=True)
        self.port = free_port()
        self.log = os.path.join(self.dir, "azurite.log")
        self.proc = PROCS.start(
            "azurite-blob",
            [binary, "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--location",
             os.path.join(self.dir, "data"), "--skipApiVersionCheck", "--disableTelemetry"],
            self.log,
        )
        self.endpoint = f"http://127.0.0.1:{self.port}/{AZURE_ACCOUNT}"
        self.base = f"{self.endpoint}/{PRIVATE_BUCKET}"
        wait_for("azurite-blob", lambda: http("GET", self.endpoint + "?comp=list")[0] in (200, 403),
                 self.proc, self.log)
        status, body = self.shared_key("PUT", f"/{PRIVATE_BUCKET}", {"restype": "container"})
        if status != 201:
            raise Failure(f"creating container {PRIVATE_BUCKET} in Azurite: {status} {body[:300]!r}")

    def env(self):
        return {PRIVATE_ENV["azure"]: AZURE_KEY}

    def signed(self, query):
        return all(k in query for k in ("sig", "sv", "se", "sp"))

    def shared_key(self, method, path, query=None, data=b"", headers=None):
        """A request under the account authorized with Shared Key (the account key's HMAC of
        the canonical request): test setup, as `az storage` would."""
        query = query or {}
        h = {"x-ms-date": email.utils.formatdate(usegmt=True), "x-ms-version": "2021-08-06",
             "Content-Type": "application/octet-stream"}
        h.update(headers or {})
        canonical_headers = "".join(f"{k}:{h[k]}\n" for k in sorted(h) if k.startswith("x-ms-"))
        # The emulator's path-style URLs: the account appears twice in the canonical resource.
        resource = f"/{AZURE_ACCOUNT}/{AZURE_ACCOUNT}{path}" + "".join(f"\n{k}:{query[k]}" for k in sorted(query))
        fields = [method, "", "", str(len(data)) if data else "", "", h["Content-Type"], "", "", "", "", "", ""]
        to_sign = "\n".join(fields) + "\n" + canonical_headers + resource
        sig = hmac.new(base64.b64decode(AZURE_KEY), to_sign.encode(), hashlib.sha256).digest()
        h["Authorization"] = f"SharedKey {AZURE_ACCOUNT}:{base64.b64encode(sig).decode()}"
        url = self.endpoint + path + ("?" + urllib.parse.urlencode(query) if query else "")
        status, _, body = http(method, url, data=data if method == "PUT" else None, headers=h)
        return status, body

    def put(self, digest, data):
        path = f"/{PRIVATE_BUCKET}/{blob_key(digest)}"
        status, body = self.shared_key("PUT", path, data=data, headers={"x-ms-blob-type": "BlockBlob"})
        if status != 201:
            raise Failure(f"Shared Key PUT {path}: {status} {body[:300]!r}")
        status, got = self.shared_key("GET", path)
        if status != 200 or got != data:
            raise Failure(f"Shared Key GET {path} after PUT: {status}, {len(got)} bytes")

    def requests(self, text):
        return [(m, t, int(st)) for m, t, st in re.findall(r'"(\S+) (\S+) HTTP/1\.1" (\d+) ', text)]


class Gateway:
    """The release binary with the configuration `config(dir, port, admin_port)` writes, in
    `work/<name>/`; `env`: variables added to its environment (the private mirrors' secrets).
    `v2`: what its `/v2/` answers an anonymous client once ready (401 with `client_auth`).
    `tls` (the tls scenario): a TestCA; the gateway gets a third port, `config(dir, port,
    admin_port, tls_port)`, and is ready once `https://localhost:<tls_port>/v2/` answers too,
    verified with that CA."""

    def __init__(self, work, binary, name, config, env=None, v2=200, tls=None):
        self.dir = os.path.join(work, name)
        os.makedirs(self.dir, exist_ok=True)
        self.port, self.admin = free_port(), free_port()
        self.tls_port = free_port() if tls else None
        self.tls_addr = f"localhost:{self.tls_port}" if tls else None
        self.log = os.path.join(self.dir, "gateway.log")
        self.conf = os.path.join(self.dir, "archeio.yaml")
        with open(self.conf, "w") as f:
            f.write(config(self.dir, self.port, self.admin, *([self.tls_port] if tls else [])))
        env = dict(os.environ, RUST_LOG="info", **(env or {}))
        for k in ("PORT", "ARCHEIO_ADMIN_PORT", "UPSTREAM_REGISTRY_ENDPOINT", "UPSTREAM_REGISTRY_PATH",
                  "SIGNATURE_UPSTREAM_ENDPOINT", "DEFAULT_AWS_BASE_URL"):
            env.pop(k, None)
        self.name = f"archeio-{name}"
        self.proc = PROCS.start(self.name, [binary, "-c", self.conf], self.log, env=env)
        self.addr = f"127.0.0.1:{self.port}"
        wait_for(
            "the gateway",
            lambda: http("GET", f"http://127.0.0.1:{self.admin}/readyz")[0] == 200
            and http("GET", f"http://{self.addr}/v2/")[0] == v2
            and (not tls or http("GET", f"https://{self.tls_addr}/v2/", context=tls.context())[0] == v2),
            self.proc,
            self.log,
        )

    def stop(self):
        PROCS.stop_named(self.name)

    def tls_handshakes(self):
        """archeio_tls_handshakes_total from the admin /metrics: {alpn: count} (a label not yet
        seen is absent: 0)."""
        status, _, body = http("GET", f"http://127.0.0.1:{self.admin}/metrics")
        if status != 200:
            raise Failure(f"GET /metrics on the admin port: {status}")
        return {m.group(1): float(m.group(2)) for m in re.finditer(
            r'^archeio_tls_handshakes_total\{alpn="([^"]*)"\} (\S+)$', body.decode(errors="replace"), re.M)}


def pingora_config(d):
    """The server section both gateway configurations share."""
    return f"""version: 1
threads: 2
pid_file: {d}/archeio.pid
upgrade_sock: {d}/upgrade.sock
grace_period_seconds: 0
graceful_shutdown_timeout_seconds: 1
"""


def gateway_config(d, port, admin, upstream_url, mirror_base, mode, upstream_extra="", extra=""):
    """The gateway's configuration: the custom rule sends 127.0.0.0/8 to AWS us-east-1, whose
    mirror is the moto bucket; the default mirror is a closed port (never used by a correct
    gateway). Redirect and pass-through differ by the `mode` line only. `upstream_extra` and
    `extra`: lines added to `upstream:` and to `archeio:` (the auth scenario's)."""
    dead = f"http://127.0.0.1:{free_port()}"
    return pingora_config(d) + f"""archeio:
  listen: ['127.0.0.1:{port}']
  admin_listen: ['127.0.0.1:{admin}']
  mode: {mode}
  upstream:
    endpoints: ['{upstream_url}']
    path: ''
{upstream_extra}  mirrors:
    default: '{dead}'
    blob_path: '{BLOB_PATH}'
    replace_regions: true
    regions:
      {REGION}: '{mirror_base}'
  ranges:
    embedded: false
    custom:
      - {{cidr: 127.0.0.0/8, cloud: aws, region: {REGION}}}
  client_address:
    trusted_proxy_hops: 0
""" + extra


# The gateway reads the private stores' secrets from these variables (never from its file).
PRIVATE_ENV = {"s3": ("E2E_S3_KEY_ID", "E2E_S3_SECRET"), "azure": "E2E_AZURE_KEY"}


def chain_gateway_config(d, port, admin, upstream_url, mode, named, rule):
    """A gateway whose loopback blobs go along a chain of named mirrors: `named`, the YAML
    lines under `mirrors.named` (indented six spaces); `rule`, the one policy rule (flow
    style). The default and region mirrors are a closed port: a correct gateway never uses
    them here."""
    dead = f"http://127.0.0.1:{free_port()}"
    return pingora_config(d) + f"""archeio:
  listen: ['127.0.0.1:{port}']
  admin_listen: ['127.0.0.1:{admin}']
  mode: {mode}
  upstream:
    endpoints: ['{upstream_url}']
    path: ''
  mirrors:
    default: '{dead}'
    blob_path: '{BLOB_PATH}'
    replace_regions: true
    regions:
      {REGION}: '{dead}'
    named:
{named}  policy:
    rules:
      - {rule}
  ranges:
    embedded: false
    custom:
      - {{cidr: 127.0.0.0/8, cloud: aws, region: {REGION}}}
  client_address:
    trusted_proxy_hops: 0
"""


def private_gateway_config(d, port, admin, upstream_url, s3, azure, store, mode):
    """Both private stores as named mirrors; loopback blobs go to the chain `[store]` alone.
    Redirect mode: `307` to a URL presigned for the client's method. Pass-through mode: the
    rule's `delivery: proxy`, the gateway streams the blob from a presigned GET (a pass-through
    deployment's clients need not reach the store)."""
    delivery = "redirect" if mode == "redirect" else "proxy"
    key_id_env, secret_env = PRIVATE_ENV["s3"]
    named = f"""      s3-private:
        blob_path: '{BLOB_PATH}'
        signing:
          s3: {{bucket: {PRIVATE_BUCKET}, region: {REGION}, endpoint: '{s3.endpoint}',
               access_key_id_env: {key_id_env}, secret_access_key_env: {secret_env}, lifetime: 15m}}
      azure-private:
        blob_path: '{BLOB_PATH}'
        signing:
          azure: {{account: {AZURE_ACCOUNT}, container: {PRIVATE_BUCKET}, endpoint: '{azure.endpoint}',
                  access_key_env: {PRIVATE_ENV["azure"]}, lifetime: 15m}}
"""
    rule = (f"{{match: {{cidr: 127.0.0.0/8, kind: blob}}, action: mirrors, mirrors: [{store}], "
            f"delivery: {delivery}}}")
    return chain_gateway_config(d, port, admin, upstream_url, mode, named, rule)


class Containerd:
    def __init__(self, work):
        self.dir = os.path.join(work, "containerd")
        os.makedirs(self.dir)
        self.sock = os.path.join(self.dir, "containerd.sock")
        self.log = os.path.join(self.dir, "containerd.log")
        conf = os.path.join(self.dir, "config.toml")
        with open(conf, "w") as f:
            f.write(
                f"""version = 2
root = "{self.dir}/root"
state = "{self.dir}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{self.sock}"
[ttrpc]
  address = "{self.sock}.ttrpc"
[plugins."io.containerd.metadata.v1.bolt"]
  content_sharing_policy = "isolated"
"""
            )
        self.proc = PROCS.start("containerd", ["containerd", "--config", conf], self.log)
        wait_for("containerd", lambda: run(["ctr", "-a", self.sock, "version"], timeout=10, check=False).returncode == 0,
                 self.proc, self.log)


class Dockerd:
    def __init__(self, work, containerd):
        self.dir = os.path.join(work, "docker")
        os.makedirs(self.dir)
        self.sock = os.path.join(self.dir, "docker.sock")
        self.log = os.path.join(self.dir, "dockerd.log")
        conf = os.path.join(self.dir, "daemon.json")
        with open(conf, "w") as f:
            json.dump({}, f)  # not /etc/docker/daemon.json
        self.host = f"unix://{self.sock}"
        self.cli = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else shutil.which("docker")
        self.proc = PROCS.start(
            "dockerd",
            [
                "dockerd", "--config-file", conf, "--data-root", f"{self.dir}/data", "--exec-root", f"{self.dir}/exec",
                "--pidfile", f"{self.dir}/docker.pid", "-H", self.host, "--containerd", containerd.sock,
                "--iptables=false", "--ip-masq=false", "--bridge=none", "--storage-driver", "vfs",
            ],
            self.log,
        )
        wait_for("dockerd", lambda: run(self.docker("version"), timeout=10, check=False).returncode == 0,
                 self.proc, self.log)

    def docker(self, *args):
        return [self.cli, "-H", self.host] + list(args)


# --------------------------------------------------------------------------------------
# Clients: pull into a fresh store, return what the client says it got
# --------------------------------------------------------------------------------------


class Clients:
    def __init__(self, work, selected):
        self.work = work
        self.n = 0
        try:
            self.containerd = Containerd(work) if {"ctr", "docker"} & set(selected) else None
        except Failure as e:
            raise Failure(f"{e}\ncontainerd cannot run here: ctr and docker need it "
                          "(leave them out with --skip-client ctr --skip-client docker)")
        try:
            self.dockerd = Dockerd(work, self.containerd) if "docker" in selected else None
        except Failure as e:
            raise Failure(f"{e}\ndockerd cannot run here (leave docker out with --skip-client docker)")

    def fresh(self, name):
        self.n += 1
        d = os.path.join(self.work, "pulls", f"{self.n:03d}-{name}")
        os.makedirs(d)
        return d

    def pull(self, client, gw, img, expect_ok=True, creds=False, tls=None, trust=True):
        """Pulls `img` through `gw` with `client` into a fresh store. Returns the command result;
        when `expect_ok`, also checks the digests the client reports. `creds` (the auth
        scenario): `(user, password)` given to the client, or None for none at all, not even
        from the user's auth files; False (the other scenarios): the client's defaults.
        docker: the credentials go through `docker login` into a fresh `--config` directory
        (the result's `login` is login's result); when login refuses them they are written
        into that directory's config.json, so the pull still sends them.
        `tls` (the tls scenario): a TestCA; the pull goes to the gateway's TLS listener,
        `localhost:<tls_port>`, verifying its certificate, trusting that CA when `trust`
        (skopeo `--src-cert-dir`, podman `--cert-dir`, ctr `--tlscacert`; docker: the caller
        puts it in /etc/docker/certs.d). Without `tls`: the plain listener, no verification."""
        addr = gw.tls_addr if tls else gw.addr
        ref = f"{addr}/{img.repo}:{img.tag}"
        d = self.fresh(client)
        if client == "skopeo":
            dest = os.path.join(d, "image")
            auth = [] if creds is False else ["--src-no-creds"] if creds is None else ["--src-creds", ":".join(creds)]
            verify = ["--src-tls-verify=false"] if not tls else ["--src-cert-dir", tls.cert_dir] if trust else []
            r = run(["skopeo", "copy"] + verify + auth + [f"docker://{ref}", f"dir:{dest}"], check=False)
            if r.returncode == 0 and expect_ok:
                with open(os.path.join(dest, "manifest.json"), "rb") as f:
                    got = sha256(f.read())
                expect(got == img.manifest_digest, f"skopeo: manifest {got}, expected {img.manifest_digest}")
                for b in img.blobs:
                    with open(os.path.join(dest, b[7:]), "rb") as f:
                        expect(sha256(f.read()) == b, f"skopeo: blob {b} has other bytes")
        elif client == "ctr":
            ns = f"e2e{self.n}"
            a = ["ctr", "-a", self.containerd.sock, "-n", ns]
            auth = ["--user", ":".join(creds)] if creds else []  # ctr reads no auth file
            # ctr takes a localhost registry for plain HTTP (containerd 1.6: http, TLS unverified)
            # unless its hosts.toml names the server, as tls.ctr_hosts_dir() writes it.
            verify = ["--plain-http"] if not tls else ["--hosts-dir", tls.ctr_hosts_dir(addr)] + (
                ["--tlscacert", tls.ca_cert] if trust else [])
            r = run(a + ["images", "pull"] + verify + ["--snapshotter", "native"] + auth + [ref], check=False)
            if r.returncode == 0 and expect_ok:
                ls = run(a + ["images", "ls"]).stdout
                line = [x for x in ls.splitlines() if x.startswith(ref + " ")]
                expect(line and img.ref_digest in line[0].split(),
                       f"ctr: image list does not show {ref} at {img.ref_digest}:\n{ls}")
                content = run(a + ["content", "ls", "-q"]).stdout.split()
                for b in img.blobs + [img.manifest_digest]:
                    expect(b in content, f"ctr: {b} not in the content store")
        elif client == "podman":
            env = dict(os.environ, TMPDIR=d)
            if creds is not False:  # an auth file of its own, empty: no stored credentials
                env["REGISTRY_AUTH_FILE"] = os.path.join(d, "auth.json")
                with open(env["REGISTRY_AUTH_FILE"], "w") as f:
                    json.dump({"auths": {}}, f)
            p = ["podman", "--root", f"{d}/root", "--runroot", f"{d}/runroot", "--storage-driver", "vfs",
                 "--events-backend", "none", "--cgroup-manager", "cgroupfs"]
            auth = ["--creds", ":".join(creds)] if creds else []
            verify = ["--tls-verify=false"] if not tls else ["--cert-dir", tls.cert_dir] if trust else []
            r = run(p + ["pull"] + verify + auth + [ref], env=env, check=False)
            if r.returncode == 0 and expect_ok:
                out = run(p + ["image", "inspect", "--format", "{{.Id}} {{json .RepoDigests}}", ref], env=env).stdout
                image_id, digests = out.split(" ", 1)
                expect(image_id == img.config_digest[7:], f"podman: image id {image_id}, expected {img.config_digest}")
                want = f"{addr}/{img.repo}@{img.ref_digest}"
                expect(want in json.loads(digests), f"podman: RepoDigests {digests.strip()} lack {want}")
            # vfs layers of a root store: removed with the pulls directory
        elif client == "docker":
            dk = self.dockerd.docker
            login = None
            if creds is not False:
                conf = os.path.join(d, "docker-config")
                os.makedirs(conf)
                dk = lambda *args: self.dockerd.docker("--config", conf, *args)  # noqa: E731
                if creds:
                    login = subprocess.run(dk("login", "-u", creds[0], "--password-stdin", addr),
                                           input=creds[1], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                           text=True, timeout=120)
                    if login.returncode != 0:
                        auth = base64.b64encode(":".join(creds).encode()).decode()
                        with open(os.path.join(conf, "config.json"), "w") as f:
                            json.dump({"auths": {addr: {"auth": auth}}}, f)
            r = run(dk("pull", ref), check=False)
            r.login = login
            if r.returncode == 0:
                try:
                    if expect_ok:
                        out = run(dk("image", "inspect", "--format", "{{.Id}} {{json .RepoDigests}}", ref)).stdout
                        image_id, digests = out.split(" ", 1)
                        expect(image_id == img.config_digest, f"docker: image id {image_id}, expected {img.config_digest}")
                        want = f"{addr}/{img.repo}@{img.ref_digest}"
                        expect(want in json.loads(digests), f"docker: RepoDigests {digests.strip()} lack {want}")
                finally:
                    run(dk("rmi", ref))  # the next pull must fetch every blob again
        else:
            raise ValueError(client)
        return r


def expect(cond, msg):
    if not cond:
        raise Failure(msg)


class LogWindow:
    """The lines a log file got since construction."""

    def __init__(self, path):
        self.path = path
        self.start = os.path.getsize(path)

    def text(self):
        with open(self.path, "rb") as f:
            f.seek(self.start)
            return f.read().decode(errors="replace")


# --------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------


def manifest_problems(ctx, mode, up, gwl):
    """Manifests in a pull's logs (`up`: the upstream's, `gwl`: the gateway's): redirect mode,
    every manifest request got a 307 to the upstream, which served them; pass-through, a 200
    proxied or cached, and the upstream served exactly as many as the gateway proxied."""
    problems = []
    manifests_seen = ctx.upstream.manifest_requests(up)
    manifest_answers = re.findall(r"(?:GET|HEAD) /v2/[^ ]+/manifests/\S+ client=\S+ decision=(\S+) status=(\d+)", gwl)
    if mode == "redirect":
        if not manifest_answers or any(a != ("upstream/upstream", "307") for a in manifest_answers):
            problems.append(f"manifests: gateway answered {manifest_answers or 'nothing'}, expected 307 to the upstream")
        if manifests_seen < 1:
            problems.append("manifests: the upstream served none (the client should have followed the 307)")
    else:
        # Pass-through: the client never sees a redirect for a manifest; the gateway fetched
        # it (or answered from its manifest cache); the upstream answered only the gateway.
        bad = [a for a in manifest_answers if a[1] != "200" or a[0] not in ("upstream/proxy", "upstream/cache")]
        if not manifest_answers or bad:
            problems.append(f"manifests: gateway answered {manifest_answers or 'nothing'}, expected 200 proxied or cached")
        proxied = sum(1 for a in manifest_answers if a[0] == "upstream/proxy")
        if manifests_seen != proxied:
            problems.append(f"manifests: the upstream served {manifests_seen}, the gateway proxied {proxied}")
    return problems


def settle(check):
    """The servers write their access lines after the response: waits until `check()` finds
    no problem (at most 10 s), then checks once more a moment later, so that a late line (a
    GET that should not have happened) is still seen. Returns the last `check()`."""
    deadline = time.time() + 10
    result = check()
    while result[0] and time.time() < deadline:
        time.sleep(0.2)
        result = check()
    time.sleep(0.3)
    return check()


def pull_problems(ctx, img, mode, up, mi, gwl):
    """What is wrong with the logs of one pull of `img` (`up`, `mi`, `gwl`: the upstream's, the
    mirror's and the gateway's lines written during it): each blob answered once by the
    gateway, mirrored blobs served by the mirror once and never by the upstream, the others by
    the upstream once (redirect, or proxied by the gateway), other platforms' blobs by nobody,
    and the manifests as manifest_problems() wants them."""
    imgs = ctx.images
    problems = []
    for b in img.blobs:
        # What the gateway answered for this blob: a 307 to the mirror, a 307 to the
        # upstream (redirect mode) or the proxied upstream answer (pass-through). Each
        # client asks for each blob once in a fresh pull, and must get it from one place.
        answers = re.findall(r"GET /v2/[^ ]+/blobs/" + re.escape(b) + r" client=\S+ decision=(\S+) status=(\d+)", gwl)
        want = ("blob/mirror", "307") if b in imgs.mirrored else (
            ("blob/upstream", "307") if mode == "redirect" else ("blob/proxy", "200"))
        if answers != [want]:
            problems.append(f"blob {b}: gateway answered {answers or 'nothing'}, expected once {want}")
        u, m = ctx.upstream.blob_gets(up, b), ctx.mirror.blob_gets(mi, b)
        if b in imgs.mirrored:
            if (m, u) != (1, 0):
                problems.append(f"mirrored blob {b}: {m} GETs at the mirror, {u} at the upstream (expected 1 and 0)")
        elif (m, u) != (0, 1):
            problems.append(f"unmirrored blob {b}: {m} successful GETs at the mirror, {u} at the upstream "
                            f"(expected 0 and 1)")
    for b in img.other_blobs:
        if ctx.upstream.blob_gets(up, b) or ctx.mirror.blob_gets(mi, b):
            problems.append(f"blob {b} of another platform was fetched")
    problems += manifest_problems(ctx, mode, up, gwl)
    return problems


def scenario_pull(ctx, client, gw, mode):
    """Every image pulls with the right digests; mirrored blobs came from the mirror and never
    from the upstream; the others from the upstream (by redirect, or proxied by the gateway)."""
    imgs = ctx.images
    for img in imgs.images:
        wins = [LogWindow(p) for p in (ctx.upstream.log, ctx.mirror.log, gw.log)]
        t = time.time()
        r = ctx.clients.pull(client, gw, img)
        if r.returncode != 0:
            raise Failure(f"{client} could not pull {img.repo}:{img.tag} through the gateway ({mode}):\n{r.stdout}")

        def check():
            up, mi, gwl = (w.text() for w in wins)
            return pull_problems(ctx, img, mode, up, mi, gwl), gwl

        problems, gwl = settle(check)
        if problems:
            raise Failure(f"{client} pull of {img.repo}:{img.tag} ({mode}) was misrouted:\n  " + "\n  ".join(problems)
                          + f"\n-- gateway log:\n{gwl}")
        log(f"   ok  {client:7} {mode:11} pull   {img.repo}:{img.tag}  ({time.time() - t:.1f} s)")


def scenario_tamper(ctx, client, gw, mode):
    """A mirror object with other bytes than its digest says: the client must refuse the pull."""
    imgs = ctx.images
    img = imgs.images[0]  # test/app: its 6 MiB layer is mirrored
    victim = img.layers[0]
    assert victim in imgs.mirrored
    good = imgs.blobs[victim]
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF  # same size, one byte different
    t = time.time()
    ctx.mirror.put(victim, bytes(bad))
    try:
        win = LogWindow(ctx.mirror.log)
        r = ctx.clients.pull(client, gw, img, expect_ok=False)
        deadline = time.time() + 10
        while ctx.mirror.blob_gets(win.text(), victim) == 0 and time.time() < deadline:
            time.sleep(0.2)
        served = ctx.mirror.blob_gets(win.text(), victim)
    finally:
        ctx.mirror.put(victim, good)
    if r.returncode == 0:
        raise Failure(f"{client} accepted {img.repo}:{img.tag} ({mode}) although the mirror's copy of {victim} "
                      f"was tampered with (mirror GETs of it: {served})\n{r.stdout}")
    if served < 1:
        raise Failure(f"{client} pull failed, but not on the tampered blob (the mirror served it {served} times):\n{r.stdout}")
    reason = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "(no output)"
    log(f"   ok  {client:7} {mode:11} tamper {img.repo}:{img.tag} refused ({time.time() - t:.1f} s): {reason[:150]}")


def scenario_private(ctx, client, gw, mode, store, other, since):
    """Every image pulls with the right digests through a gateway whose chain is the private
    `store` alone. Each blob: the gateway answered once (`307` in redirect mode, `200` streamed
    with `delivery: proxy` in pass-through mode); the store's own log shows exactly one GET of
    it, signed (presigned query) and served with 200, and no unsigned request; a signed HEAD of
    it reached the store since the gateway started (its check, cached afterwards); the upstream
    served no blob and the `other` private store got no request at all. `since`: the store's
    log from the gateway's start."""
    imgs = ctx.images
    want = ("blob/mirror", "307") if mode == "redirect" else ("blob/mirror_proxy", "200")
    for img in imgs.images:
        wins = [LogWindow(p) for p in (ctx.upstream.log, store.log, other.log, gw.log)]
        t = time.time()
        r = ctx.clients.pull(client, gw, img)
        if r.returncode != 0:
            raise Failure(f"{client} could not pull {img.repo}:{img.tag} through the gateway ({mode}, chain "
                          f"[{store.name}]):\n{r.stdout}")

        def check():
            up, st, ot, gwl = (w.text() for w in wins)
            whole = since.text()
            problems = []
            for b in img.blobs:
                answers = re.findall(r"GET /v2/[^ ]+/blobs/" + re.escape(b) + r" client=\S+ decision=(\S+) status=(\d+)", gwl)
                if answers != [want]:
                    problems.append(f"blob {b}: gateway answered {answers or 'nothing'}, expected once {want}")
                reqs = store.blob_requests(st, b)
                gets = [x for x in reqs if x[0] == "GET"]
                if gets != [("GET", True, 200)]:
                    problems.append(f"blob {b}: {store.name} got GETs (method, signed, status) {gets or 'none'}, "
                                    "expected one signed GET answered 200")
                bad = [x for x in reqs if not x[1] or x[2] != 200]
                if bad:
                    problems.append(f"blob {b}: {store.name} got unsigned or refused requests {bad}")
                if ("HEAD", True, 200) not in store.blob_requests(whole, b):
                    problems.append(f"blob {b}: no signed HEAD of it at {store.name} since the gateway started")
                if ctx.upstream.blob_gets(up, b):
                    problems.append(f"blob {b}: the upstream served it")
            for b in img.other_blobs:
                if ctx.upstream.blob_gets(up, b) or store.blob_requests(st, b):
                    problems.append(f"blob {b} of another platform was fetched")
            if other.requests(ot):
                problems.append(f"{other.name}, not in the chain, got requests: {other.requests(ot)}")
            problems += manifest_problems(ctx, mode, up, gwl)
            return problems, gwl

        problems, gwl = settle(check)
        if problems:
            raise Failure(f"{client} pull of {img.repo}:{img.tag} ({mode}, chain [{store.name}]) was misrouted:\n  "
                          + "\n  ".join(problems) + f"\n-- gateway log:\n{gwl}")
        log(f"   ok  {client:7} {mode:11} private {store.name:13} {img.repo}:{img.tag}  ({time.time() - t:.1f} s)")


def fill_private(ctx, binary):
    """The private stores get every blob the upstream holds for the pushed images (all
    platforms): the S3 bucket by `archeio sync` (SigV4-signed multipart uploads, then
    `--verify` reads each object back), the Azure container by Shared Key PUTs of the bytes
    read from the upstream (digest checked). Then each store is shown private: a GET of a
    blob's plain URL is refused with 403."""
    s3, azure = ctx.s3, ctx.azure
    repos = {}
    for img in ctx.images.images:
        for b in img.blobs + img.other_blobs:
            repos.setdefault(b, img.repo)
    assert set(repos) == set(ctx.images.blobs)
    conf = os.path.join(s3.dir, "sync.yaml")
    key_id_env, secret_env = PRIVATE_ENV["s3"]
    with open(conf, "w") as f:
        f.write(f"""sync:
  source:
    registry: '{ctx.upstream.url}'
    repositories: [{", ".join(img.repo for img in ctx.images.images)}]
  destinations:
    - url: 's3://{PRIVATE_BUCKET}'
      region: {REGION}
      endpoint: '{s3.endpoint}'
      access_key_id_env: {key_id_env}
      secret_access_key_env: {secret_env}
  blob_path: '{BLOB_PATH[1:]}'
""")
    env = dict(os.environ, RUST_LOG="info", **s3.env())
    r = run([binary, "sync", "-c", conf], env=env, check=False, timeout=300)
    m = re.search(r"sync done: (\d+) blobs copied, (\d+) already present, (\d+) failed", r.stdout)
    if r.returncode != 0 or not m or int(m.group(1)) != len(repos) or m.group(3) != "0":
        raise Failure(f"archeio sync into the private bucket (expected {len(repos)} blobs copied), "
                      f"exit {r.returncode}:\n{r.stdout[-3000:]}")
    r = run([binary, "sync", "-c", conf, "--verify"], env=env, check=False, timeout=300)
    m = re.search(r"sync verify: (\d+) objects checked, (\d+) corrupt", r.stdout)
    if r.returncode != 0 or not m or int(m.group(1)) != len(repos) or m.group(2) != "0":
        raise Failure(f"archeio sync --verify of the private bucket (expected {len(repos)} objects), "
                      f"exit {r.returncode}:\n{r.stdout[-3000:]}")
    log(f"== private: archeio sync copied {len(repos)} blobs from the upstream to s3://{PRIVATE_BUCKET} "
        f"on s3s-fs (SigV4), --verify read them back")
    for d, repo in repos.items():
        status, _, data = http("GET", f"{ctx.upstream.url}/v2/{repo}/blobs/{d}")
        if status != 200 or sha256(data) != d:
            raise Failure(f"upstream GET of {repo}@{d}: {status}, digest {sha256(data)}")
        azure.put(d, data)
    log(f"== private: {len(repos)} blobs read from the upstream and put to Azurite's container "
        f"{PRIVATE_BUCKET} (Shared Key), read back")
    probe = ctx.images.images[0].layers[0]
    for store in (s3, azure):
        status, _, body = http("GET", store.url(probe))
        log(f"== private: {store.name}: unsigned GET {store.url(probe)} -> {status} {error_code(body)}")
        if status != 403:
            raise Failure(f"{store.name} is not private: an unsigned GET of {store.url(probe)} answered {status}")


# --------------------------------------------------------------------------------------
# The auth scenario: the upstream behind htpasswd, gateways with client_auth relay and local
# --------------------------------------------------------------------------------------

AUTH_MODES = ["relay", "local"]
ROBOT, ALICE = "robot", "alice"  # the registry's account; the gateway's user (local)
AUTH_REPO = "test/app"  # what every auth pull reads; alice's only repository (local)
AUTH_OTHER = "test/docker"  # in the registry, readable by robot, not granted to alice


def bcrypt_tool():
    """What makes bcrypt hashes here: `htpasswd` (apache2-utils), else Python's `crypt` module
    when the C library's crypt does bcrypt (glibc with libxcrypt; the module is gone from
    Python 3.13), else None."""
    if shutil.which("htpasswd"):
        return "htpasswd"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt
        h = crypt.crypt("x", crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
        if h and h.startswith("$2") and crypt.crypt("x", h) == h:
            return "crypt"
    except (ImportError, AttributeError, ValueError, OSError):
        pass
    return None


def htpasswd_line(user, password):
    """`user:<bcrypt hash>` of cost 4, the lowest: Distribution checks the password with bcrypt
    on every request."""
    if bcrypt_tool() == "htpasswd":
        return run(["htpasswd", "-nbB", "-C", "4", user, password]).stdout.strip()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
    return f"{user}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))}"


class AuthSetup:
    """The auth scenario's files and its upstream: a second docker-registry over the first one's
    storage (the pushed images), behind htpasswd with robot's account; alice's bcrypt entry for
    the local gateways; robot's password in a file for their upstream.credentials. Passwords
    are made up for the run."""

    def __init__(self, work, plain):
        self.dir = os.path.join(work, "auth")
        os.makedirs(self.dir, exist_ok=True)
        self.robot_pw = "robot-" + os.urandom(8).hex()
        self.alice_pw = "alice-" + os.urandom(8).hex()
        self.robot_file = os.path.join(self.dir, "robot-password")
        with open(self.robot_file, "w") as f:
            f.write(self.robot_pw + "\n")
        upstream_htpasswd = os.path.join(self.dir, "upstream.htpasswd")
        with open(upstream_htpasswd, "w") as f:
            f.write(htpasswd_line(ROBOT, self.robot_pw) + "\n")
        self.gateway_htpasswd = os.path.join(self.dir, "gateway.htpasswd")
        with open(self.gateway_htpasswd, "w") as f:
            f.write(htpasswd_line(ALICE, self.alice_pw) + "\n")
        self.upstream = start("docker-registry (htpasswd)", lambda: Upstream(
            work, "registry-auth", storage=plain.storage, htpasswd=upstream_htpasswd))
        url = f"{self.upstream.url}/v2/{AUTH_REPO}/manifests/v1"
        basic = lambda pw: {"Accept": ACCEPT, "Authorization": "Basic " + base64.b64encode(  # noqa: E731
            f"{ROBOT}:{pw}".encode()).decode()}
        anonymous = http("GET", url, headers={"Accept": ACCEPT})[0]
        wrong = http("GET", url, headers=basic(self.robot_pw + "-wrong"))[0]
        status, _, body = http("GET", url, headers=basic(self.robot_pw))
        if (anonymous, wrong, status) != (401, 401, 200):
            raise Failure(f"the htpasswd upstream answered {AUTH_REPO}:v1 anonymously {anonymous}, with a wrong "
                          f"password {wrong}, with robot's {status} (expected 401, 401, 200)")
        log(f"== auth: upstream {self.upstream.url} (htpasswd, user {ROBOT}, bcrypt by {bcrypt_tool()}) over the "
            f"same storage: {AUTH_REPO}:v1 anonymously {anonymous}, wrong password {wrong}, {ROBOT} {status} "
            f"{sha256(body)[:19]}")


def auth_gateway_config(d, port, admin, ctx, mode, auth_mode):
    """The pull scenario's configuration (loopback blobs to the moto mirror) in front of the
    htpasswd upstream, with `client_auth`. relay: no upstream credentials, each client's go to
    the upstream. local: alice's htpasswd entry, alice may pull AUTH_REPO only; the upstream is
    read with robot's account."""
    a = ctx.auth
    public = f"http://127.0.0.1:{port}"
    if auth_mode == "relay":
        upstream_extra = ""
        extra = f"  client_auth: {{mode: relay, public_url: '{public}'}}\n"
    else:
        upstream_extra = f"    credentials: {{username: {ROBOT}, password_file: '{a.robot_file}'}}\n"
        extra = f"""  client_auth:
    mode: local
    public_url: '{public}'
    htpasswd_file: '{a.gateway_htpasswd}'
    users: {{{ALICE}: ['{AUTH_REPO}']}}
"""
    return gateway_config(d, port, admin, a.upstream.url, ctx.mirror.base, mode, upstream_extra, extra)


def last_line(text, n=160):
    """The end of a client's last output line: where its error message says why."""
    lines = [x for x in (text or "").strip().splitlines() if x.strip()]
    line = lines[-1].strip() if lines else "(no output)"
    return line if len(line) <= n else "..." + line[-n:]


def scenario_auth(ctx, client, gw, mode, auth_mode):
    """Through a gateway with `client_auth: <auth_mode>` in front of the htpasswd upstream:
    the right credentials (relay: robot's, the upstream's; local: alice's, the gateway's) pull
    AUTH_REPO with the right digests, its mirrored blobs from the mirror (gateway `307`, one
    mirror GET, no upstream GET), the others from the upstream; then no credentials, a wrong
    password, and (local) alice asking for AUTH_OTHER, not granted to her, must each fail,
    with no blob of that image answered by the gateway or served by the mirror or the
    upstream. The plain upstream (no auth) never hears from these gateways."""
    a = ctx.auth
    imgs = ctx.images
    img = next(i for i in imgs.images if i.repo == AUTH_REPO)
    user, pw = (ROBOT, a.robot_pw) if auth_mode == "relay" else (ALICE, a.alice_pw)
    where = f"({mode}, client_auth {auth_mode})"

    def blob_answers(gwl, b):
        return re.findall(r"GET /v2/[^ ]+/blobs/" + re.escape(b) + r" client=\S+ decision=(\S+) status=(\d+)", gwl)

    def plain_requests(text):
        return re.findall(r'"(?:GET|HEAD) /v2/\S* HTTP/1\.1" \d+ ', text)

    wins = [LogWindow(p) for p in (a.upstream.log, ctx.upstream.log, ctx.mirror.log, gw.log)]
    t = time.time()
    r = ctx.clients.pull(client, gw, img, creds=(user, pw))
    login = getattr(r, "login", None)
    if r.returncode != 0 or (login is not None and login.returncode != 0):
        gwl = wins[3].text()
        raise Failure(f"{client} could not pull {img.repo}:{img.tag} through the gateway {where} with {user}'s "
                      "credentials:\n" + (f"-- docker login ({login.returncode}):\n{login.stdout}\n-- docker pull:\n"
                                          if login is not None else "") + f"{r.stdout}\n-- gateway log:\n{gwl}")

    def check():
        up, plain, mi, gwl = (w.text() for w in wins)
        problems = []
        for b in img.blobs:
            answers = blob_answers(gwl, b)
            u, m = ctx.upstream.blob_gets(up, b), ctx.mirror.blob_gets(mi, b)
            if b in imgs.mirrored:
                if answers != [("blob/mirror", "307")]:
                    problems.append(f"mirrored blob {b}: gateway answered {answers or 'nothing'}, expected once "
                                    "('blob/mirror', '307')")
                if (m, u) != (1, 0):
                    problems.append(f"mirrored blob {b}: {m} GETs at the mirror, {u} at the upstream (expected 1 and 0)")
            else:  # proxied with credentials in either mode: a redirect would lose them
                if answers != [("blob/proxy", "200")]:
                    problems.append(f"unmirrored blob {b}: gateway answered {answers or 'nothing'}, expected once "
                                    "('blob/proxy', '200')")
                if (m, u) != (0, 1):
                    problems.append(f"unmirrored blob {b}: {m} successful GETs at the mirror, {u} at the upstream "
                                    "(expected 0 and 1)")
        # Manifests are proxied (with the client's credentials, or robot's) in either mode; the
        # local gateway may answer from its manifest cache. A client that asks without
        # credentials first (ctr) gets the challenge, a 401, then asks again with them.
        manifests = re.findall(r"(?:GET|HEAD) (/v2/[^ ]+/manifests/\S+) client=\S+ decision=(\S+) status=(\d+)", gwl)
        challenge = ("upstream/proxy", "401") if auth_mode == "relay" else ("unauthorized/-", "401")
        ok = [("upstream/proxy", "200"), ("upstream/cache", "200")]
        bad = [x for x in manifests if x[1:] not in ok + [challenge]]
        unanswered = {x[0] for x in manifests} - {x[0] for x in manifests if x[1:] in ok}
        if not manifests or bad or unanswered:
            problems.append(f"manifests: gateway answered {manifests or 'nothing'}, expected each 200 proxied or "
                            f"cached, after at most a {challenge} challenge")
        manifests = [x[1:] for x in manifests]
        proxied = manifests.count(("upstream/proxy", "200"))
        if ctx.upstream.manifest_requests(up) != proxied:
            problems.append(f"manifests: the upstream served {ctx.upstream.manifest_requests(up)}, the gateway "
                            f"proxied {proxied}")
        if plain_requests(plain):
            problems.append(f"the upstream without auth got requests: {plain_requests(plain)}")
        return problems, gwl

    problems, gwl = settle(check)
    if problems:
        raise Failure(f"{client} pull of {img.repo}:{img.tag} {where} with {user}'s credentials was misrouted:\n  "
                      + "\n  ".join(problems) + f"\n-- gateway log:\n{gwl}")
    log(f"   ok  {client:7} {mode:11} auth {auth_mode:5} {img.repo}:{img.tag} pulled as {user}  ({time.time() - t:.1f} s)")

    other = next(i for i in imgs.images if i.repo == AUTH_OTHER)
    refusals = [("no credentials", None, img), ("a wrong password", (user, pw + "-wrong"), img)]
    if auth_mode == "local":
        refusals.append((f"{user}'s credentials (not granted)", (user, pw), other))
    for what, creds, target in refusals:
        wins = [LogWindow(p) for p in (a.upstream.log, ctx.upstream.log, ctx.mirror.log, gw.log)]
        t = time.time()
        r = ctx.clients.pull(client, gw, target, expect_ok=False, creds=creds)
        login = getattr(r, "login", None)
        if r.returncode == 0:
            raise Failure(f"{client} pulled {target.repo}:{target.tag} through the gateway {where} with {what}:\n"
                          f"{r.stdout}\n-- gateway log:\n{wins[3].text()}")
        if login is not None and creds is not None and creds[1] != pw and login.returncode == 0:
            raise Failure(f"docker login to the gateway {where} accepted {what}:\n{login.stdout}")

        def check_refused():
            up, plain, mi, gwl = (w.text() for w in wins)
            problems = []
            for b in target.blobs + target.other_blobs:
                served = [x for x in blob_answers(gwl, b) if x[1] in ("200", "307")]
                if served:
                    problems.append(f"blob {b}: gateway answered {served}")
                if ctx.upstream.blob_gets(up, b) or ctx.mirror.blob_gets(mi, b):
                    problems.append(f"blob {b}: served by the upstream or the mirror")
            if target is other:  # the gateway refuses by itself: the upstream never hears of it
                asked = re.findall(r'"(?:GET|HEAD) /v2/' + re.escape(other.repo) + r'/\S* HTTP/1\.1" \d+ ', up)
                if asked:
                    problems.append(f"the upstream was asked for {other.repo}: {asked}")
            if plain_requests(plain):
                problems.append(f"the upstream without auth got requests: {plain_requests(plain)}")
            return problems, gwl

        problems, gwl = settle(check_refused)
        if problems:
            raise Failure(f"{client}'s refused pull of {target.repo}:{target.tag} {where} with {what} still "
                          "moved data:\n  " + "\n  ".join(problems) + f"\n-- gateway log:\n{gwl}")
        how = f"docker login refused ({last_line(login.stdout)}); " if login is not None and login.returncode else ""
        log(f"   ok  {client:7} {mode:11} auth {auth_mode:5} {target.repo}:{target.tag} with {what}: refused "
            f"({time.time() - t:.1f} s): {how}{last_line(r.stdout)}")


# --------------------------------------------------------------------------------------
# The tls scenario: the gateway's TLS listener, a CA made for the run, clients trusting it
# --------------------------------------------------------------------------------------

TLS_IMAGES = ["test/app", "test/multi"]  # what each client pulls over TLS: single- and multi-arch
TLS_DAYS = 3  # validity of the CA and the server certificate
DOCKER_CERTS_D = "/etc/docker/certs.d"  # dockerd reads <host:port>/ca.crt here at each pull
OPENSSL_CNF = """[req]
distinguished_name = dn
[dn]
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


class TestCA:
    """A CA and a server certificate for localhost and 127.0.0.1 it signed, made with the
    openssl CLI in `work/tls/` for this run (EC P-256, TLS_DAYS days): ca.key, ca.crt,
    server.key, server.csr, server.crt; `cert_dir` (`work/tls/certs/`) holds ca.crt alone, as
    containers/image's --cert-dir wants it (a *.key there would be taken for a client key)."""

    def __init__(self, work):
        self.dir = os.path.join(work, "tls")
        self.cert_dir = os.path.join(self.dir, "certs")
        os.makedirs(self.cert_dir)
        f = lambda name: os.path.join(self.dir, name)  # noqa: E731
        self.ca_key, self.ca_cert = f("ca.key"), f("ca.crt")
        self.key, self.csr, self.cert = f("server.key"), f("server.csr"), f("server.crt")
        cnf = f("openssl.cnf")
        with open(cnf, "w") as out:
            out.write(OPENSSL_CNF)
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
        run(["openssl", "req", "-x509", "-new", "-nodes"] + ec + ["-keyout", self.ca_key, "-out", self.ca_cert,
             "-days", str(TLS_DAYS), "-subj", "/CN=archeio e2e test CA", "-config", cnf, "-extensions", "ca_ext"])
        run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", self.key])
        run(["openssl", "req", "-new", "-key", self.key, "-out", self.csr, "-subj", "/CN=localhost", "-config", cnf])
        run(["openssl", "x509", "-req", "-in", self.csr, "-CA", self.ca_cert, "-CAkey", self.ca_key,
             "-set_serial", "0x" + os.urandom(8).hex(), "-days", str(TLS_DAYS), "-out", self.cert,
             "-extfile", cnf, "-extensions", "server_ext"])
        shutil.copy(self.ca_cert, os.path.join(self.cert_dir, "ca.crt"))
        verified = run(["openssl", "verify", "-CAfile", self.ca_cert, "-purpose", "sslserver", self.cert]).stdout.strip()
        san = run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", self.cert]).stdout
        san = " ".join(san.strip().splitlines()[1:]).strip() or "(none)"  # the line after the heading
        expect("DNS:localhost" in san and "IP Address:127.0.0.1" in san, f"server certificate's subjectAltName: {san}")
        log(f"== tls: test CA and server certificate made with openssl in {self.dir}: {verified}; SAN {san}; "
            f"{TLS_DAYS} days")

    def context(self):
        """An ssl context trusting this CA alone (the script's own readiness probes)."""
        return ssl.create_default_context(cafile=self.ca_cert)

    def ctr_hosts_dir(self, addr):
        """ctr's --hosts-dir for the gateway at `addr` (localhost:<port>): `<addr>/hosts.toml`
        naming `https://<addr>` as the server and its one host (containerd 1.6 refuses a file
        without a `host` table). Without it, containerd 1.6 sends a localhost registry plain
        HTTP (and would skip verification); trust in the CA comes from --tlscacert alone, the
        hosts.toml names no `ca`."""
        d = os.path.join(self.dir, "ctr-hosts")
        os.makedirs(os.path.join(d, addr), exist_ok=True)
        with open(os.path.join(d, addr, "hosts.toml"), "w") as f:
            f.write(f'server = "https://{addr}"\n\n[host."https://{addr}"]\n  capabilities = ["pull", "resolve"]\n')
        return d


def tls_gateway_config(d, port, admin, tls_port, ctx, mode):
    """The pull scenario's configuration (loopback blobs to the moto mirror), plus a TLS
    listener with the run's server certificate."""
    extra = f"""  tls:
    listen: ['127.0.0.1:{tls_port}']
    certificates: [{{cert_file: '{ctx.tls.cert}', key_file: '{ctx.tls.key}'}}]
"""
    return gateway_config(d, port, admin, ctx.upstream.url, ctx.mirror.base, mode, extra=extra)


def tls_control(gw, tls):
    """Handshakes of the script's own (Python ssl, trusting the CA) offering h2 and http/1.1,
    http/1.1 alone, and no ALPN: the gateway must agree h2, http/1.1 and none, and count each
    under that label; what calibrates the clients' `none` below (they offered no ALPN, the
    metric is not blind). Returns the text logged."""
    out = []
    for offer, want in ((["h2", "http/1.1"], "h2"), (["http/1.1"], "http/1.1"), (None, "none")):
        sslctx = tls.context()
        if offer:
            sslctx.set_alpn_protocols(offer)
        before = gw.tls_handshakes()
        with socket.create_connection(("127.0.0.1", gw.tls_port), timeout=10) as raw:
            with sslctx.wrap_socket(raw, server_hostname="localhost") as conn:
                got = conn.selected_alpn_protocol() or "none"
        deadline = time.time() + 5
        delta = handshake_delta(before, gw.tls_handshakes())
        while not delta and time.time() < deadline:
            time.sleep(0.1)
            delta = handshake_delta(before, gw.tls_handshakes())
        offered = ",".join(offer) if offer else "no ALPN"
        if got != want or delta != {want: 1}:
            raise Failure(f"a TLS client offering {offered}: the gateway agreed {got} and counted {delta or 'nothing'} "
                          f"(expected {want}, counted once)")
        out.append(f"{offered} -> {got}")
    return "; ".join(out)


def alpn_text(delta):
    """`{alpn: n}` as `http/1.1` (one label) or `h2 1 + http/1.1 2` (several); `none`: no ALPN."""
    seen = {k: int(v) for k, v in sorted(delta.items()) if v}
    if len(seen) == 1:
        return next(iter(seen))
    return " + ".join(f"{k} {v}" for k, v in seen.items()) or "no handshake completed"


def handshake_delta(before, after):
    return {k: after.get(k, 0) - before.get(k, 0) for k in set(before) | set(after) if after.get(k, 0) != before.get(k, 0)}


class DockerCA:
    """dockerd trusts `/etc/docker/certs.d/<host:port>/ca.crt` (a fixed path, read at each pull):
    written on entry, removed on exit with the directories this made (and only those)."""

    def __init__(self, tls, addr):
        self.tls, self.path = tls, os.path.join(DOCKER_CERTS_D, addr)
        self.made = []

    def __enter__(self):
        if os.path.exists(self.path):
            raise Failure(f"{self.path} exists already: not overwriting it")
        try:
            for d in (os.path.dirname(DOCKER_CERTS_D), DOCKER_CERTS_D, self.path):
                if not os.path.isdir(d):
                    os.mkdir(d)
                    self.made.append(d)
            shutil.copy(self.tls.ca_cert, os.path.join(self.path, "ca.crt"))
        except OSError as e:
            self.__exit__(None, None, None)
            raise Failure(f"cannot give dockerd the test CA in {self.path}: {e} (root needed)")
        return self

    def __exit__(self, *exc):
        try:
            os.remove(os.path.join(self.path, "ca.crt"))
        except FileNotFoundError:
            pass
        for d in reversed(self.made):
            try:
                os.rmdir(d)
            except OSError as e:
                log(f"   could not remove {d}: {e}")
        return False


def scenario_tls(ctx, client, gw, mode):
    """Over the gateway's TLS listener (`https://localhost:<tls_port>`), the client trusting
    the run's CA pulls TLS_IMAGES with the right digests and the blobs routed as in the pull
    scenario; the gateway's archeio_tls_handshakes_total grows by at least one during each pull,
    and its labels say which ALPN protocol the client agreed (printed, not asserted). skopeo,
    ctr and podman then pull without trusting the CA: refused with a certificate error
    (x509: certificate signed by unknown authority), no request reaching the gateway. docker:
    dockerd counts 127.0.0.0/8 as an insecure registry (TLS unverified) whatever certs.d
    holds, so it is first asked to pull without the CA, to show whether it verifies at all
    (printed as a NOTE, not a failure)."""
    imgs = ctx.images
    tls = ctx.tls
    agreed = ctx.tls_alpn.setdefault(client, set())
    notes = []
    if client == "docker":
        before, t = gw.tls_handshakes(), time.time()
        r = ctx.clients.pull(client, gw, imgs.images[0], expect_ok=False, tls=tls, trust=False)
        if r.returncode == 0:
            notes.append("dockerd does NOT verify the certificate here: it pulled with no CA in certs.d "
                         "(127.0.0.0/8 is an insecure registry to dockerd by default)")
        log(f"   ..  {client:7} {mode:11} tls    {imgs.images[0].repo}:v1 without the CA in certs.d: "
            f"{'pulled' if r.returncode == 0 else 'refused: ' + last_line(r.stdout, 110)} ({time.time() - t:.1f} s, "
            f"TLS {alpn_text(handshake_delta(before, gw.tls_handshakes()))})")
    with DockerCA(tls, gw.tls_addr) if client == "docker" else contextlib.nullcontext():
        for img in (i for i in imgs.images if i.repo in TLS_IMAGES):
            wins = [LogWindow(p) for p in (ctx.upstream.log, ctx.mirror.log, gw.log)]
            before = gw.tls_handshakes()
            t = time.time()
            r = ctx.clients.pull(client, gw, img, tls=tls)
            if r.returncode != 0:
                raise Failure(f"{client} trusting the test CA could not pull {img.repo}:{img.tag} over TLS from "
                              f"{gw.tls_addr} ({mode}):\n{r.stdout}\n-- gateway log:\n{wins[2].text()}")
            delta = handshake_delta(before, gw.tls_handshakes())

            def check():
                up, mi, gwl = (w.text() for w in wins)
                return pull_problems(ctx, img, mode, up, mi, gwl), gwl

            problems, gwl = settle(check)
            if sum(delta.values()) < 1:
                problems.append(f"archeio_tls_handshakes_total did not grow during the pull ({delta}): the client "
                                "did not come over TLS")
            # The access lines' protocol= (what HTTP version each request came in; absent from an
            # older binary) must agree with the handshakes: h2 requests only on h2 connections.
            spoke = sorted(set(re.findall(r" /v2/\S* client=\S+ decision=.* protocol=(\S+)", gwl)))
            if spoke and (("h2" in spoke) != ("h2" in delta) or (delta.keys() == {"h2"} and spoke != ["h2"])):
                problems.append(f"the access lines say the client spoke {spoke}, the handshakes agreed {delta}")
            if problems:
                raise Failure(f"{client} pull of {img.repo}:{img.tag} over TLS ({mode}) was misrouted:\n  "
                              + "\n  ".join(problems) + f"\n-- gateway log:\n{gwl}")
            agreed.update(k for k, v in delta.items() if v > 0)
            log(f"   ok  {client:7} {mode:11} tls    {img.repo}:{img.tag}  ALPN {alpn_text(delta)}, requests "
                f"{'/'.join(spoke) or '(no protocol= in the access lines)'}  ({time.time() - t:.1f} s)")
    if client != "docker":
        img = imgs.images[0]
        win, before, t = LogWindow(gw.log), gw.tls_handshakes(), time.time()
        r = ctx.clients.pull(client, gw, img, expect_ok=False, tls=tls, trust=False)
        delta = handshake_delta(before, gw.tls_handshakes())
        time.sleep(0.3)
        reached = re.findall(r"(?:GET|HEAD) /v2/\S* client=\S+ decision=\S+ status=\d+", win.text())
        if r.returncode == 0:
            raise Failure(f"{client} pulled {img.repo}:{img.tag} from {gw.tls_addr} without trusting the test CA:\n"
                          f"{r.stdout}")
        if not re.search(r"x509: certificate signed by unknown authority|certificate verify failed", r.stdout):
            raise Failure(f"{client} without the test CA failed, but not with a certificate error:\n{r.stdout}")
        if reached:
            raise Failure(f"{client} without the test CA failed, yet requests reached the gateway: {reached}")
        log(f"   ok  {client:7} {mode:11} tls    {img.repo}:{img.tag} without the CA refused "
            f"({time.time() - t:.1f} s, TLS: {alpn_text(delta)}): {last_line(r.stdout, 110)}")
    for n in notes:
        log(f"   NOTE {client} {mode} tls: {n}")
    ctx.tls_notes.extend(f"{client} {mode}: {n}" for n in notes)


# --------------------------------------------------------------------------------------
# The faults scenario: a mirror that goes dead, resets connections or turns slow
# --------------------------------------------------------------------------------------

FAULTS = [("blackhole", 3), ("reset", 3), ("delay", 10)]  # (fault, seconds before the pulls)
FAULT_PULLS_FOR = 10  # seconds of pulls per fault
FAULT_MARGIN = 2.0  # each pull under a fault: at most the baseline + this
FAULT_BACK_WITHIN = 5  # seconds for A to be in use again once the fault is off


class BlobServer:
    """A static public mirror in this process, on 127.0.0.1: every blob of the pushed images
    at BLOB_PATH, GET and HEAD (404 for anything else, such as the gateway's health check of
    an object no mirror holds), HTTP/1.1 keep-alive. Each request is logged, in memory and in
    `work/<scenario>/mirror-<name>.log` (the faults or the geo scenario's), when it arrives."""

    def __init__(self, work, name, blobs, scenario="faults"):
        self.name = name
        self.objects = {BLOB_PATH.replace("{digest}", d): data for d, data in blobs.items()}
        self.log = os.path.join(work, scenario, f"mirror-{name}.log")
        self.requests = []  # (method, path, status)
        self.lock = threading.Lock()
        self.conns = set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 30  # an idle keep-alive connection is closed after this

            def setup(self):
                super().setup()
                with outer.lock:
                    outer.conns.add(self.connection)

            def finish(self):
                with outer.lock:
                    outer.conns.discard(self.connection)
                super().finish()

            def do_GET(self):
                self.answer(body=True)

            def do_HEAD(self):
                self.answer(body=False)

            def answer(self, body):
                path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
                data = outer.objects.get(path)
                status = 200 if data is not None else 404
                outer.record(self.command, path, status)
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data) if data is not None else 0))
                self.end_headers()
                if body and data is not None:
                    self.wfile.write(data)

            def log_message(self, *_):
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # a client that went away mid-answer (the faults do that)

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                       name=f"mirror-{name}", daemon=True)
        self.thread.start()

    def record(self, method, path, status):
        with self.lock:
            self.requests.append((method, path, status))
            with open(self.log, "a") as f:
                f.write(f"{time.time():.3f} {method} {path} {status}\n")

    def mark(self):
        with self.lock:
            return len(self.requests)

    def blob_gets(self, since, digest):
        """GETs of the blob answered 200 since `mark()` said `since`."""
        key = BLOB_PATH.replace("{digest}", digest)
        with self.lock:
            return sum(1 for m, p, st in self.requests[since:] if m == "GET" and p == key and st == 200)

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        with self.lock:
            conns = list(self.conns)
        for c in conns:  # wakes the handler threads of open keep-alive connections
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        self.thread.join(timeout=5)


class FaultProxy:
    """A fault-injecting TCP proxy on 127.0.0.1 in front of `target_port`, one thread per
    connection (select over both ends, 0.2 s ticks), so that a switch applies to new and open
    connections alike:
      - pass: bytes pass both ways;
      - blackhole: connections are accepted, what arrives from either end is read and
        discarded, nothing is answered or forwarded (a connection that lost bytes so is reset
        once the fault is off: it cannot be resumed);
      - reset: connections are closed with SO_LINGER 0 (an RST) when opened, and open ones
        within a tick;
      - delay: each piece of data waits 1 s before it is forwarded, each way."""

    MODES = ("pass", "blackhole", "reset", "delay")

    def __init__(self, target_port, delay=1.0):
        self.target = ("127.0.0.1", target_port)
        self.delay = delay
        self.mode = "pass"
        self.lock = threading.Lock()
        self.stats = dict(connections=0, up=0, down=0, discarded=0, resets=0)
        self.stopping = threading.Event()
        self.threads = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.host = f"127.0.0.1:{self.port}"  # the gateway's metric label for this mirror host
        self.accepter = threading.Thread(target=self.accept, name="fault-proxy", daemon=True)
        self.accepter.start()

    def set(self, mode):
        assert mode in self.MODES, mode
        self.mode = mode

    def count(self, key, n=1):
        with self.lock:
            self.stats[key] += n

    def snapshot(self):
        with self.lock:
            return dict(self.stats)

    def accept(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.count("connections")
            t = threading.Thread(target=self.relay, args=(conn,), name="fault-proxy-conn", daemon=True)
            self.threads = [x for x in self.threads if x.is_alive()] + [t]
            t.start()

    def reset(self, sock):
        """Closes with an RST rather than a FIN."""
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        self.count("resets")

    def relay(self, client):
        client.settimeout(10)  # sendall's bound; reads wait in select
        server = None
        lost = False  # bytes were swallowed by a blackhole
        try:
            while not self.stopping.is_set():
                mode = self.mode
                if mode == "reset" or (lost and mode != "blackhole"):
                    self.reset(client)
                    return
                if server is None and mode in ("pass", "delay"):
                    server = socket.create_connection(self.target, timeout=5)
                    server.settimeout(10)
                ready, _, _ = select.select([client] + ([server] if server else []), [], [], 0.2)
                for src in ready:
                    data = src.recv(65536)
                    if not data:
                        return  # either end closed: both close
                    mode = self.mode
                    if mode == "blackhole":
                        lost = True
                        self.count("discarded", len(data))
                        continue
                    if mode == "reset":
                        self.reset(client)
                        return
                    if mode == "delay":
                        time.sleep(self.delay)
                    if src is client:
                        server.sendall(data)
                        self.count("up", len(data))
                    else:
                        client.sendall(data)
                        self.count("down", len(data))
        except OSError:
            pass
        finally:
            for s in (client, server):
                if s is not None:
                    s.close()  # no-op when reset() closed it

    def stop(self):
        self.stopping.set()
        self.listener.close()
        self.accepter.join(timeout=5)
        for t in self.threads:
            t.join(timeout=self.delay + 11)


def faults_gateway_config(d, port, admin, upstream_url, a_base, b_base):
    """Redirect mode; loopback blobs go to the chain [a, b] (a: the fault proxy in front of
    mirror A, b: mirror B); the shipped blob_check defaults (health checks every 1 s, 1 s
    timeout, one failure opens the breaker)."""
    named = f"""      a: {{url: '{a_base}'}}
      b: {{url: '{b_base}'}}
"""
    rule = "{match: {cidr: 127.0.0.0/8, kind: blob}, action: mirrors, mirrors: [a, b]}"
    return chain_gateway_config(d, port, admin, upstream_url, "redirect", named, rule)


def breaker_open(gw, host):
    """archeio_mirror_breaker_open for `host` (absent: 0, never opened) and the health checks
    counted for it, {result: n}."""
    status, _, body = http("GET", f"http://127.0.0.1:{gw.admin}/metrics", timeout=5)
    if status != 200:
        raise Failure(f"GET /metrics on the admin port: {status}")
    text = body.decode(errors="replace")
    m = re.search(r'^archeio_mirror_breaker_open\{host="' + re.escape(host) + r'"\} (\S+)$', text, re.M)
    probes = {r: float(n) for r, n in re.findall(
        r'^archeio_mirror_probes_total\{host="' + re.escape(host) + r'",result="([^"]*)"\} (\S+)$', text, re.M)}
    return (float(m.group(1)) if m else 0.0), probes


def faults_pull(ctx, gw, img, timeout):
    """skopeo copies `img` from the gateway into a fresh oci: layout; (seconds, problem or None).
    The manifest and blobs it wrote must have the right digests; the layout is removed."""
    d = ctx.clients.fresh("skopeo-faults")
    dest = os.path.join(d, "oci")
    t = time.time()
    try:
        r = run(["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                 f"docker://{gw.addr}/{img.repo}:{img.tag}", f"oci:{dest}:{img.tag}"], timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return time.time() - t, f"no end within {timeout:.0f} s (killed)"
    took = time.time() - t
    problem = None
    if r.returncode != 0:
        problem = f"exit {r.returncode}: {last_line(r.stdout)}"
    else:
        for b in [img.manifest_digest] + img.blobs:
            try:
                with open(os.path.join(dest, "blobs", "sha256", b[7:]), "rb") as f:
                    if sha256(f.read()) != b:
                        problem = f"{b} has other bytes"
            except OSError:
                problem = f"{b} not in the layout"
    shutil.rmtree(d, ignore_errors=True)
    return took, problem


def scenario_faults(ctx, work, binary):
    """Mirror A (behind a fault-injecting proxy) and mirror B both hold every blob; the
    gateway's chain for loopback blobs is [A, B]. A first pull warms the check cache (blobs at
    A). Then, for each fault, after a wait: skopeo pulls for FAULT_PULLS_FOR seconds, each of
    which must succeed, within the baseline + FAULT_MARGIN, with its blobs from B; then the
    fault goes off and A must be in use again within FAULT_BACK_WITHIN seconds (its breaker
    gauge 0, and the next pull's blobs from A). One summary line per fault goes to
    ctx.faults_summary, printed again before the suite's summary."""
    img = ctx.images.images[0]  # test/app: config, a 6 MiB layer, a small layer
    os.makedirs(os.path.join(work, "faults"), exist_ok=True)
    started = time.time()
    a = b = proxy = gw = None
    try:
        a = BlobServer(work, "a", ctx.images.blobs)
        b = BlobServer(work, "b", ctx.images.blobs)
        proxy = FaultProxy(a.port)
        gw = start("the gateway", lambda: Gateway(
            work, binary, "gateway-redirect-faults",
            lambda d, port, admin: faults_gateway_config(d, port, admin, ctx.upstream.url, proxy.base, b.base)))
        ready = time.time()
        log(f"== gateway {gw.addr} in redirect mode, blobs: chain [a {proxy.base} (fault proxy -> {a.base}), "
            f"b {b.base}]")

        def from_where(ma, mb):
            """(blob GETs at A, at B) of each blob of img, once the servers' logs show them."""
            return [(a.blob_gets(ma, x), b.blob_gets(mb, x)) for x in img.blobs]

        def pull_at(where, what):
            """One pull whose blobs must all come from `where` ('a' or 'b'); its time."""
            ma, mb, down = a.mark(), b.mark(), proxy.snapshot()["down"]
            took, problem = faults_pull(ctx, gw, img, timeout=60)
            if problem:
                raise Failure(f"{what}: skopeo pull of {img.repo}:{img.tag} failed ({took:.1f} s): {problem}\n"
                              f"-- gateway log:\n{tail(gw.log, 20)}")
            want = [(1, 0) if where == "a" else (0, 1)] * len(img.blobs)
            got = from_where(ma, mb)
            deadline = time.time() + 2
            while got != want and time.time() < deadline:
                time.sleep(0.1)
                got = from_where(ma, mb)
            if got != want:
                raise Failure(f"{what}: blob GETs (A, B) per blob {got}, expected {want}\n"
                              f"-- gateway log:\n{tail(gw.log, 20)}")
            return took, proxy.snapshot()["down"] - down

        age = time.time() - ready
        took, through = pull_at("a", "warm-up")
        size = sum(len(ctx.images.blobs[x]) for x in img.blobs)
        expect(through >= size, f"warm-up: the proxy passed {through} bytes from A, the blobs are {size}")
        log(f"   ok  skopeo  redirect    faults warm-up: {len(img.blobs)} blobs served by A "
            f"({through} bytes through the proxy), {took:.2f} s")
        baseline = max(pull_at("a", "baseline")[0] for _ in range(2))
        bound = baseline + FAULT_MARGIN
        log(f"   ok  skopeo  redirect    faults baseline {baseline:.2f} s (slowest of 2 pulls from A); "
            f"bound under a fault {bound:.2f} s")

        def checked(within):
            """Seconds until a passing health check of A is counted, or None."""
            t = time.time()
            while time.time() - t < within:
                if breaker_open(gw, proxy.host)[1].get("healthy", 0) >= 1:
                    return time.time() - t
                time.sleep(0.1)
            return None

        # The faults mean something only once the gateway checks A (a host "in use").
        notes = []
        if checked(3) is None:
            # Seen with this binary: a mirror used only within the gateway's first second is
            # not marked in use (the mark is skipped while less than 1 s from 0), so it gets
            # no health checks until a request after that second uses it again.
            notes.append(f"no health check of A within 3 s of the warm-up and baseline pulls, which began "
                         f"{age:.2f} s after the gateway was ready; one more pull from A")
            log(f"   NOTE faults: {notes[-1]}")
            pull_at("a", "second warm-up")
            if checked(3) is None:
                raise Failure(f"the gateway never checked A's health (archeio_mirror_probes_total for {proxy.host} "
                              f"absent 3 s after a pull used it)\n-- gateway log:\n{tail(gw.log, 20)}")
        log(f"   ok  skopeo  redirect    faults A under health checks: {breaker_open(gw, proxy.host)[1]}")

        summaries, problems = [], []
        for fault, wait in FAULTS:
            known = len(problems)
            proxy.set(fault)
            before = proxy.snapshot()
            time.sleep(wait)
            opened, probes = breaker_open(gw, proxy.host)
            if opened != 1:
                problems.append(f"{fault}: after {wait} s A's breaker gauge is {opened:g}, expected 1 "
                                f"(health checks: {probes})")
            ma, mb = a.mark(), b.mark()
            pulls, failures, slowest, first_problem = 0, 0, 0.0, None
            end = time.time() + FAULT_PULLS_FOR
            while time.time() < end:
                took, problem = faults_pull(ctx, gw, img, timeout=max(10, 3 * bound))
                pulls += 1
                slowest = max(slowest, took)
                if problem is None and took > bound:
                    problem = f"took {took:.2f} s, bound {bound:.2f} s"
                if problem:
                    failures += 1
                    first_problem = first_problem or problem
            ok = pulls - failures
            served = from_where(ma, mb)
            deadline = time.time() + 2
            while any(bb < ok for _, bb in served) and time.time() < deadline:
                time.sleep(0.1)
                served = from_where(ma, mb)
            if failures:
                problems.append(f"{fault}: {failures} of {pulls} pulls failed or were late; first: {first_problem}")
            if any(aa for aa, _ in served) or any(bb < ok for _, bb in served):
                problems.append(f"{fault}: blob GETs (A, B) per blob {served} over {pulls} pulls; "
                                "expected none at A, each at B once a pull")
            during = proxy.snapshot()
            # The fault off: A must be in use again (its breaker closed by a passing check).
            proxy.set("pass")
            off = time.time()
            back = None
            while time.time() - off < FAULT_BACK_WITHIN:
                if breaker_open(gw, proxy.host)[0] == 0:
                    back = time.time() - off
                    break
                time.sleep(0.05)
            if back is None:
                problems.append(f"{fault}: A's breaker still open {FAULT_BACK_WITHIN} s after the fault was off")
            try:
                pull_at("a", f"{fault}: first pull once A was back")
                confirmed = "next pull's blobs from A"
            except Failure as e:
                problems.append(str(e))
                confirmed = "next pull NOT from A"
            proxy_note = (f"proxy: {during['discarded'] - before['discarded']} bytes discarded" if fault == "blackhole"
                          else f"proxy: {during['resets'] - before['resets']} resets" if fault == "reset"
                          else f"proxy: {during['connections'] - before['connections']} connections opened, delayed")
            line = (f"faults {fault:9}: {pulls} pulls, {failures} failures, slowest {slowest:.2f} s, "
                    f"baseline {baseline:.2f} s (bound {bound:.2f} s), breaker open after {wait} s: "
                    f"{'yes' if opened == 1 else 'NO'}, A back in use "
                    + (f"{back:.2f} s" if back is not None else f"NOT within {FAULT_BACK_WITHIN} s")
                    + f" after the fault was off ({confirmed}); {proxy_note}")
            log(f"   {'ok ' if len(problems) == known else 'FAIL'} skopeo  redirect    {line}")
            summaries.append(line)
        _, probes = breaker_open(gw, proxy.host)
        log(f"   health checks of A counted: {probes}; scenario {time.time() - started:.1f} s")
        ctx.faults_summary = summaries + [f"faults NOTE: {n}" for n in notes] + [
            f"faults: scenario {time.time() - started:.1f} s"]
        if problems:
            raise Failure("faults:\n  " + "\n  ".join(problems) + f"\n-- gateway log:\n{tail(gw.log, 30)}")
        log(f"   ok  skopeo  redirect    faults ({time.time() - started:.1f} s)")
    finally:
        if gw is not None:
            gw.stop()
        for x in (proxy, b, a):
            if x is not None:
                x.stop()


# --------------------------------------------------------------------------------------
# The geo scenario: a blob pulled from "Asia" lands on the Asian mirror
# --------------------------------------------------------------------------------------

# (country, continent, the mirror its rule picks): one gateway each, its database placing
# 127.0.0.0/8 (every client here) in that country.
GEO_PLACES = [("JP", "AS", "asia"), ("DE", "EU", "europe")]
GEO_MIRRORS = ["default", "asia", "europe"]


def mmdb_value(v):
    """One value of a MaxMind DB data section (https://maxmind.github.io/MaxMind-DB/): a dict
    (map), a str (UTF-8 string), a list (array) or (type, n) an unsigned integer of type 5
    (uint16), 6 (uint32) or 9 (uint64), the types a GeoLite2-style record and the metadata
    need. No pointers: every value is written out where it is used."""

    def control(kind, size):
        # Type in the top 3 bits (types above 7: 0 there and a byte of type - 7 after), size in
        # the low 5 (sizes 29 to 284: 29 there and a byte of size - 29 after; no more needed).
        assert size < 285
        return (bytes([(kind if kind < 8 else 0) << 5 | min(size, 29)]) + (bytes([kind - 7]) if kind >= 8 else b"")
                + (bytes([size - 29]) if size >= 29 else b""))

    if isinstance(v, dict):  # size: the number of pairs; then key, value, key, value...
        return control(7, len(v)) + b"".join(mmdb_value(k) + mmdb_value(x) for k, x in v.items())
    if isinstance(v, str):
        return control(2, len(v.encode())) + v.encode()
    if isinstance(v, list):
        return control(11, len(v)) + b"".join(mmdb_value(x) for x in v)
    kind, n = v  # big-endian, leading zero bytes dropped (0: no bytes at all)
    data = n.to_bytes(8, "big").lstrip(b"\0")
    return control(kind, len(data)) + data


def mmdb_ipv4(cidr, record):
    """A MaxMind DB file (ip_version 4, 24-bit records) holding `record` for the one network
    `cidr` and nothing else. The search tree walks an address's bits from the top: node i
    (0-based) decides bit i, its left record for a 0, its right one for a 1. With a /n network
    the tree is n nodes along the network's bits: the record the network's bit takes points to
    node i + 1, the last one to the data; every other record is node_count, "no data". A
    record above node_count points into the data section, at record - node_count - 16 (the 16
    bytes of zeros between tree and data). Then the metadata marker and the metadata map."""
    net = ipaddress.ip_network(cidr)
    n = net.prefixlen
    assert n >= 1 and net.version == 4
    bits = int(net.network_address)
    tree = b""
    for i in range(n):
        records = [n, n]
        records[(bits >> (31 - i)) & 1] = i + 1 if i + 1 < n else n + 16 + 0  # the record: data offset 0
        tree += b"".join(r.to_bytes(3, "big") for r in records)
    metadata = {
        "node_count": (6, n), "record_size": (5, 24), "ip_version": (5, 4),
        "database_type": "archeio-e2e-Country", "languages": [], "description": {"en": "archeio e2e geo scenario"},
        "binary_format_major_version": (5, 2), "binary_format_minor_version": (5, 0),
        "build_epoch": (9, int(time.time())),
    }
    return tree + bytes(16) + mmdb_value(record) + b"\xab\xcd\xefMaxMind.com" + mmdb_value(metadata)


def geo_gateway_config(d, port, admin, upstream_url, database, mirrors):
    """Redirect mode; no ranges (no placement), one geo database; blobs of Asian clients go to
    the chain [asia], of European ones to [europe], of the rest to [default] (`mirrors`: the
    BlobServers by name)."""
    return pingora_config(d) + f"""archeio:
  listen: ['127.0.0.1:{port}']
  admin_listen: ['127.0.0.1:{admin}']
  mode: redirect
  upstream:
    endpoints: ['{upstream_url}']
    path: ''
  geo: {{databases: ['{database}'], check_interval: 60s}}
  policy:
    rules:
      - {{name: asia, match: {{continent: AS}}, action: mirrors, mirrors: [asia]}}
      - {{name: europe, match: {{continent: EU}}, action: mirrors, mirrors: [europe]}}
      - {{name: rest, match: {{kind: blob}}, action: mirrors, mirrors: [default]}}
  mirrors:
    default: '{mirrors["default"].base}'
    blob_path: '{BLOB_PATH}'
    named:
      asia: {{url: '{mirrors["asia"].base}'}}
      europe: {{url: '{mirrors["europe"].base}'}}
  ranges:
    embedded: false
  client_address:
    trusted_proxy_hops: 0
"""


def geo_gateway(work, binary, ctx, mirrors, place):
    """The gateway of one of GEO_PLACES, its database written first, in `work/geo/`."""
    country, continent, _ = place
    database = os.path.join(work, "geo", f"{country.lower()}.mmdb")
    with open(database, "wb") as f:
        f.write(mmdb_ipv4("127.0.0.0/8", {"continent": {"code": continent}, "country": {"iso_code": country}}))
    return start("the gateway", lambda: Gateway(
        work, binary, f"gateway-redirect-geo-{country.lower()}",
        lambda d, port, admin: geo_gateway_config(d, port, admin, ctx.upstream.url, database, mirrors)))


def geo_explain(ctx, binary, gw, place):
    """`archeio -t --explain 127.0.0.1 <a blob>` with the gateway's configuration must read the
    database as written and pick the place's mirror: this checks the .mmdb writer with the
    gateway's own reader before any client. Returns the facts line."""
    country, continent, want = place
    img = ctx.images.images[0]
    out = run([binary, "-t", "-c", gw.conf, "--explain", "127.0.0.1", f"/v2/{img.repo}/blobs/{img.layers[0]}"],
              timeout=30).stdout
    facts = [x.strip() for x in out.splitlines() if x.strip().startswith("country:")]
    expect(facts and facts[0].startswith(f"country: {country}, continent: {continent} ("),
           f"--explain 127.0.0.1: expected country {country}, continent {continent}:\n{out}")
    expect(f'mirror "{want}"' in out, f'--explain 127.0.0.1: expected the chain mirror "{want}":\n{out}')
    return facts[0]


def blob_bytes(gw):
    """archeio_blob_bytes_total from the gateway's admin /metrics: {(source, mirror, delivery): n}."""
    status, _, body = http("GET", f"http://127.0.0.1:{gw.admin}/metrics", timeout=5)
    if status != 200:
        raise Failure(f"GET /metrics on the admin port: {status}")
    out = {}
    for labels, n in re.findall(r"^archeio_blob_bytes_total\{([^}]*)\} (\S+)$", body.decode(errors="replace"), re.M):
        d = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        out[(d.get("source"), d.get("mirror"), d.get("delivery"))] = int(float(n))
    return out


def scenario_geo(ctx, client, gw, place, mirrors):
    """`client` pulls through the gateway of `place` (redirect mode), whose database puts the
    client (127.0.0.1) in that country: test/app, test/multi and test/docker for JP, test/app
    for DE. For each pull: the digests the client reports (as in pull); the gateway answered
    each blob once, a 307 to the place's mirror with the country and continent on its access
    line; that mirror served each blob's GET once, the other two mirrors got no request for any
    of the image's blobs; blobs of other platforms were fetched from nowhere; and
    archeio_blob_bytes_total grew by exactly the image's blob bytes (config + layers), all under
    {source="mirror", mirror=<place's>, delivery="redirect"}. Returns (bytes counted, bytes
    fetched) per pull."""
    country, continent, want = place
    imgs = ctx.images.images if country == "JP" else ctx.images.images[:1]
    measured = []
    for img in imgs:
        marks = {n: m.mark() for n, m in mirrors.items()}
        before = blob_bytes(gw)
        win = LogWindow(gw.log)
        t = time.time()
        r = ctx.clients.pull(client, gw, img)
        took = time.time() - t
        if r.returncode != 0:
            raise Failure(f"{client} could not pull {img.repo}:{img.tag} through the geo gateway ({country}):\n{r.stdout}")
        size = sum(len(ctx.images.blobs[b]) for b in img.blobs)

        def check():
            problems = []
            gwl = win.text()
            for b in img.blobs:
                answers = re.findall(r"GET /v2/[^ ]+/blobs/" + re.escape(b) + r" client=\S+ decision=(\S+) status=(\d+)(.*)",
                                     gwl)
                if [a[:2] for a in answers] != [("blob/mirror", "307")]:
                    problems.append(f"blob {b}: gateway answered {[a[:2] for a in answers] or 'nothing'}, "
                                    "expected once ('blob/mirror', '307')")
                elif not all(x in answers[0][2] for x in (f"country={country}", f"continent={continent}", f'rule="{want}"',
                                                           mirrors[want].base + BLOB_PATH.replace("{digest}", b))):
                    problems.append(f"blob {b}: access line lacks country={country}, continent={continent}, "
                                    f'rule="{want}" or the {want} mirror\'s URL:{answers[0][2]}')
                gets = {n: m.blob_gets(marks[n], b) for n, m in mirrors.items()}
                if gets != {n: int(n == want) for n in mirrors}:
                    problems.append(f"blob {b}: GETs per mirror {gets}, expected one at {want} and none elsewhere")
            keys = {BLOB_PATH.replace("{digest}", b) for b in img.blobs + img.other_blobs}
            for n, m in mirrors.items():
                with m.lock:
                    seen = [(meth, p, st) for meth, p, st in m.requests[marks[n]:] if p in keys]
                if n != want and seen:
                    problems.append(f"mirror {n} (not the {country} rule's) was asked for the image's blobs: {seen}")
            for b in img.other_blobs:
                if any(m.blob_gets(marks[n], b) for n, m in mirrors.items()):
                    problems.append(f"blob {b} of another platform was fetched")
            after = blob_bytes(gw)
            grew = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
            if grew != {("mirror", want, "redirect"): size}:
                problems.append(f"archeio_blob_bytes_total grew by {grew}, expected "
                                f"{{('mirror', '{want}', 'redirect'): {size}}} (the image's {len(img.blobs)} blobs)")
            return problems, (gwl, grew)

        problems, (gwl, grew) = settle(check)
        if problems:
            raise Failure(f"{client} geo pull of {img.repo}:{img.tag} ({country}) was misplaced:\n  " + "\n  ".join(problems)
                          + f"\n-- gateway log:\n{gwl}")
        counted = grew[("mirror", want, "redirect")]
        log(f"   ok  {client:7} redirect    geo    {img.repo}:{img.tag} from {country}/{continent}: {len(img.blobs)} "
            f"blob GETs at mirror {want} only; bytes counted for {want} {counted} = fetched {size} ({took:.1f} s)")
        measured.append((counted, size))
    return measured


def geo_runs(ctx, work, binary, clients, failures):
    """The geo scenario (redirect mode): the three mirrors, then for each of GEO_PLACES its
    gateway, the --explain check and each client's pulls, that gateway stopped before the
    next one starts (so no other gateway talks to the mirrors meanwhile). Appends what failed
    to `failures`; returns the number of runs (per place: the --explain check, one per
    client) and summary lines."""
    os.makedirs(os.path.join(work, "geo"), exist_ok=True)
    started = time.time()
    mirrors, runs, summary = {}, 0, []
    try:
        for name in GEO_MIRRORS:
            mirrors[name] = BlobServer(work, name, ctx.images.blobs, scenario="geo")
        log("== geo mirrors (every blob each): " + ", ".join(f"{n} {m.base}" for n, m in mirrors.items()))
        for place in GEO_PLACES:
            country, continent, want = place
            gw = geo_gateway(work, binary, ctx, mirrors, place)
            measured, known = [], len(failures)
            try:
                log(f"== gateway {gw.addr} in redirect mode, geo database: 127.0.0.0/8 in {country} ({continent})")
                runs += 1
                try:
                    facts = geo_explain(ctx, binary, gw, place)
                    log(f"   ok  geo --explain 127.0.0.1 ({country}): {facts}; chain [mirror \"{want}\"]")
                except (Failure, subprocess.TimeoutExpired) as e:
                    log(f"   FAIL geo --explain ({country}): {e}")
                    failures.append(f"redirect geo {country} --explain")
                for client in clients:
                    runs += 1
                    try:
                        measured += scenario_geo(ctx, client, gw, place, mirrors)
                    except (Failure, subprocess.TimeoutExpired) as e:
                        log(f"   FAIL {client} redirect geo {country}: {e}")
                        failures.append(f"{client} redirect geo {country}")
            finally:
                gw.stop()
            summary.append(f"geo {country}/{continent} -> mirror {want}: {len(measured)} pulls passed (blob GETs at {want} "
                           f"only), {len(failures) - known} runs failed; over the passed pulls "
                           f"archeio_blob_bytes_total{{mirror=\"{want}\"}} counted {sum(c for c, _ in measured)} bytes, "
                           f"the clients fetched {sum(f for _, f in measured)}")
    finally:
        for m in mirrors.values():
            m.stop()
    summary.append(f"geo: scenario {time.time() - started:.1f} s")
    return runs, summary


class Ctx:
    pass


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--client", action="append", choices=CLIENTS, help="client to run (repeatable; default: all)")
    ap.add_argument("--skip-client", action="append", choices=CLIENTS, default=[],
                    help="leave a client out on purpose (also ARCHEIO_E2E_SKIP_CLIENTS=a,b)")
    ap.add_argument("--mode", action="append", choices=MODES, help="gateway mode (repeatable; default: both)")
    ap.add_argument("--scenario", action="append", choices=SCENARIOS, help="scenario (repeatable; default: all)")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "archeio"),
                    help="gateway binary (default: target/release/archeio)")
    ap.add_argument("--build", action="store_true", help="run cargo build --release --locked first")
    ap.add_argument("--no-install", action="store_true", help="never install missing tools, only name them")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, stores)")
    args = ap.parse_args()

    skip = set(args.skip_client)
    skip |= {c.strip() for c in os.environ.get("ARCHEIO_E2E_SKIP_CLIENTS", "").split(",") if c.strip()}
    unknown = skip - set(CLIENTS)
    if unknown:
        ap.error(f"ARCHEIO_E2E_SKIP_CLIENTS: unknown client(s) {', '.join(sorted(unknown))}")
    clients = [c for c in (args.client or CLIENTS) if c not in skip]
    modes = args.mode or MODES
    scenarios = args.scenario or SCENARIOS
    base = [x for x in scenarios if x in ("pull", "tamper")]  # run with the moto gateway of each mode
    private = "private" in scenarios
    auth = "auth" in scenarios
    tls = "tls" in scenarios
    faults = "faults" in scenarios  # skopeo in redirect mode only
    geo = "geo" in scenarios  # redirect mode only
    if not clients:
        ap.error("no client left to run")

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, _on_signal)
    atexit.register(PROCS.shutdown)

    started = time.time()
    work = tempfile.mkdtemp(prefix="archeio-e2e-")
    if args.keep:
        PROCS.cleanups.append(lambda: log(f"== kept {work}"))
    else:
        PROCS.cleanups.append(lambda: shutil.rmtree(work, ignore_errors=True))
    try:
        if skip:
            log(f"== NOT testing client(s) {', '.join(sorted(skip))}: left out on request (--skip-client / ARCHEIO_E2E_SKIP_CLIENTS)")
        if HOST_ARCH is None:
            raise Failure(f"unknown machine {platform.machine()!r}: the test images are for amd64 or arm64")
        ensure_prerequisites(clients, install=not args.no_install, bcrypt=auth, tls=tls)
        if private:
            s3s_bin, azurite_bin = ensure_private_servers(install=not args.no_install)
        if args.build:
            log("== cargo build --release --locked")
            run(["cargo", "build", "--release", "--locked"], timeout=3600, capture=False)
        if not os.access(args.binary, os.X_OK):
            raise Failure(f"no gateway binary at {args.binary}: run cargo build --release --locked (or pass --build)")

        ctx = Ctx()
        log(f"== work directory {work}")
        ctx.upstream = start("docker-registry", lambda: Upstream(work))
        ctx.mirror = start("moto_server", lambda: Mirror(work))
        log(f"== upstream {ctx.upstream.url}, mirror {ctx.mirror.base}")
        ctx.images = Images(work)
        ctx.images.build()
        for img in ctx.images.images:
            src, extra = ctx.images.sources[img.repo]
            run(["skopeo", "copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false"] + extra
                + [src, f"docker://127.0.0.1:{ctx.upstream.port}/{img.repo}:{img.tag}"])
            status, _, body = http("GET", f"{ctx.upstream.url}/v2/{img.repo}/manifests/{img.tag}", headers={"Accept": ACCEPT})
            expect(status == 200 and sha256(body) == img.ref_digest,
                   f"pushed {img.repo}:{img.tag} but the upstream serves {sha256(body)} (status {status}), not {img.ref_digest}")
        for d in ctx.images.mirrored:
            ctx.mirror.put(d, ctx.images.blobs[d])
        log(f"== pushed {len(ctx.images.images)} images ({len(ctx.images.blobs)} blobs) to the upstream; "
            f"{len(ctx.images.mirrored)} blobs copied to the mirror")
        if private:
            ctx.s3 = start("s3s-fs", lambda: S3Private(work, s3s_bin))
            ctx.azure = start("azurite-blob", lambda: AzurePrivate(work, azurite_bin))
            log(f"== private stores: s3s-fs {ctx.s3.base}, Azurite {ctx.azure.base}")
            fill_private(ctx, args.binary)
        if auth:
            ctx.auth = AuthSetup(work, ctx.upstream)
        if tls:
            ctx.tls, ctx.tls_alpn, ctx.tls_notes = TestCA(work), {}, []
        ctx.clients = Clients(work, clients)
        ctx.faults_summary, geo_summary = [], []
        failures = []
        faults_runs = geo_count = 0
        for mode in modes:
            if base:
                gw = start("the gateway", lambda: Gateway(
                    work, args.binary, f"gateway-{mode}",
                    lambda d, port, admin: gateway_config(d, port, admin, ctx.upstream.url, ctx.mirror.base, mode)))
                log(f"== gateway {gw.addr} in {mode} mode")
                for client in clients:
                    for scenario in base:
                        fn = {"pull": scenario_pull, "tamper": scenario_tamper}[scenario]
                        try:
                            fn(ctx, client, gw, mode)
                        except (Failure, subprocess.TimeoutExpired) as e:
                            log(f"   FAIL {client} {mode} {scenario}: {e}")
                            failures.append(f"{client} {mode} {scenario}")
                gw.stop()
            if private:
                for store, other in ((ctx.s3, ctx.azure), (ctx.azure, ctx.s3)):
                    since = LogWindow(store.log)
                    gw = start("the gateway", lambda: Gateway(
                        work, args.binary, f"gateway-{mode}-{store.name}",
                        lambda d, port, admin: private_gateway_config(
                            d, port, admin, ctx.upstream.url, ctx.s3, ctx.azure, store.name, mode),
                        env=dict(ctx.s3.env(), **ctx.azure.env())))
                    delivery = "307 to presigned URLs" if mode == "redirect" else "delivery: proxy"
                    log(f"== gateway {gw.addr} in {mode} mode, blobs: chain [{store.name}], {delivery}")
                    for client in clients:
                        try:
                            scenario_private(ctx, client, gw, mode, store, other, since)
                        except (Failure, subprocess.TimeoutExpired) as e:
                            log(f"   FAIL {client} {mode} private {store.name}: {e}")
                            failures.append(f"{client} {mode} private {store.name}")
                    gw.stop()
            if auth:
                for auth_mode in AUTH_MODES:
                    gw = start("the gateway", lambda: Gateway(
                        work, args.binary, f"gateway-{mode}-{auth_mode}",
                        lambda d, port, admin: auth_gateway_config(d, port, admin, ctx, mode, auth_mode), v2=401))
                    log(f"== gateway {gw.addr} in {mode} mode, client_auth {auth_mode}, upstream {ctx.auth.upstream.url} "
                        "(htpasswd)")
                    for client in clients:
                        try:
                            scenario_auth(ctx, client, gw, mode, auth_mode)
                        except (Failure, subprocess.TimeoutExpired) as e:
                            log(f"   FAIL {client} {mode} auth {auth_mode}: {e}")
                            failures.append(f"{client} {mode} auth {auth_mode}")
                    gw.stop()
            if tls:
                gw = start("the gateway", lambda: Gateway(
                    work, args.binary, f"gateway-{mode}-tls",
                    lambda d, port, admin, tls_port: tls_gateway_config(d, port, admin, tls_port, ctx, mode),
                    tls=ctx.tls))
                log(f"== gateway https://{gw.tls_addr} (TLS, plain {gw.addr}) in {mode} mode, certificate of the "
                    "run's test CA")
                try:
                    log(f"== tls: control handshakes (Python ssl), agreed and counted: {tls_control(gw, ctx.tls)}")
                except (Failure, OSError) as e:
                    log(f"   FAIL tls control handshakes ({mode}): {e}")
                    failures.append(f"{mode} tls control handshakes")
                for client in clients:
                    try:
                        scenario_tls(ctx, client, gw, mode)
                    except (Failure, subprocess.TimeoutExpired) as e:
                        log(f"   FAIL {client} {mode} tls: {e}")
                        failures.append(f"{client} {mode} tls")
                gw.stop()
            if faults:
                # One run: the fault proxy and the health checks are the gateway's, not the
                # client's; skopeo in redirect mode (clients fetch blobs from the mirrors).
                for client in clients:
                    if client != "skopeo" or mode != "redirect":
                        log(f"   --  {client:7} {mode:11} faults: not run (skopeo in redirect mode only)")
                        continue
                    faults_runs += 1
                    try:
                        scenario_faults(ctx, work, args.binary)
                    except (Failure, subprocess.TimeoutExpired, OSError) as e:
                        log(f"   FAIL {client} {mode} faults: {e}")
                        failures.append(f"{client} {mode} faults")
            if geo:
                # Redirect mode only: where a blob goes is the same decision in both modes (a
                # mirror's blobs are 307s in pass-through too); one gateway per place.
                if mode != "redirect":
                    for client in clients:
                        log(f"   --  {client:7} {mode:11} geo: not run (redirect mode only)")
                else:
                    geo_count, geo_summary = geo_runs(ctx, work, args.binary, clients, failures)
        if tls:
            log("== tls: ALPN agreed (archeio_tls_handshakes_total): "
                + "; ".join(f"{c} {', '.join(sorted(a)) or '-'}" for c, a in ctx.tls_alpn.items())
                + f"; h2: {', '.join(c for c, a in ctx.tls_alpn.items() if 'h2' in a) or 'no client'}")
            for n in ctx.tls_notes:
                log(f"== tls NOTE {n}")
        total = len(modes) * len(clients) * (len(base) + (len(PRIVATE_STORES) if private else 0)
                                             + (len(AUTH_MODES) if auth else 0) + (1 if tls else 0))
        total += len(modes) if tls else 0  # the tls scenario's control handshakes, once per gateway
        total += faults_runs  # the faults scenario: skopeo in redirect mode, once
        total += geo_count  # the geo scenario: per place, the --explain check and each client
        for line in ctx.faults_summary + geo_summary:
            log(f"== {line}")
        log(f"== e2e: {total - len(failures)} passed, {len(failures)} failed in {time.time() - started:.0f} s"
            f" (clients: {', '.join(clients)}; modes: {', '.join(modes)}; scenarios: "
            + ", ".join(x + (f" [{', '.join(PRIVATE_STORES)}]" if x == "private" else "")
                        + (f" [{', '.join(AUTH_MODES)}]" if x == "auth" else "")
                        + (" [skopeo, redirect]" if x == "faults" else "")
                        + (" [redirect; " + ", ".join(f"{c}->{m}" for c, _, m in GEO_PLACES) + "]" if x == "geo" else "")
                        for x in scenarios) + ")"
            + (f"; NOT tested: {', '.join(sorted(skip))}" if skip else ""))
        log(f"e2e: {total - len(failures)} passed, {len(failures)} failed")
        if failures:
            log("failed: " + "; ".join(failures))
            return 1
        return 0
    except Failure as e:
        log(f"== e2e setup failed: {e}")
        return 1
    finally:
        PROCS.shutdown()


if __name__ == "__main__":
    sys.exit(main())
