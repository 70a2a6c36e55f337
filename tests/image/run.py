#!/usr/bin/env python3
"""The image test (issue 29): the real Dockerfile, built on local stand-in bases, checked as an
operator runs it.

1. Stand-in bases (scripts/standin-base-images.sh: debootstrap; no registry is reachable here).
2. A cold build with scripts/build-image.sh (SOURCE_DATE_EPOCH from the commit), then the
   image's metadata: user 10001:10001, an exec-form HEALTHCHECK, labels with a revision and no
   local path as the source.
3. The image's filesystem (exported): no shell, no package manager, no setuid/setgid file; the
   binary, the shipped configuration, CA certificates, tzdata and the bill of materials there.
4. The bill of materials lists exactly the crates of Cargo.lock that the binary is built from
   (archeio's normal and build dependencies, every target; not the dev-dependencies), and is
   the same file as the one build-image.sh wrote beside the release (target/archeio.cdx.json).
5. Two containers, hardened (--read-only --tmpfs /tmp --cap-drop ALL --security-opt
   no-new-privileges, ports on 127.0.0.1 only): one given `-c /config/gw.yaml`, one given
   `-e ARCHEIO_CONFIG=/config/env.yaml`, each file with the admin listener on a port that is
   not the default; both must become `healthy` through the image's own HEALTHCHECK, answer
   /v2/ and /readyz, say their revision in archeio_build_info, and stop on SIGTERM with 0.
6. A second build of the same tree after removing from the build cache everything after the
   dependency layer: archeio is compiled again, the bill of materials written again and the
   runtime stage assembled again (cargo-cyclonedx and the dependencies come from the cache, to
   keep the test short). It must give the same image ID (the config digest, which names every
   layer).

As root on a fresh Debian machine it installs what it lacks with apt-get (debootstrap, and
podman, or docker.io and containerd). podman (default) runs with its own --root in the work
directory; docker (--runtime docker) runs on a dockerd and containerd this script starts, as
tests/e2e/run.py does (no iptables, no bridge: the containers use the host's network and
listen on 127.0.0.1). Heavy steps run under `nice -n 15`. Every container and daemon it
starts is stopped on exit, failed or not.

    python3 tests/image/run.py [--runtime podman|docker] [--work DIR] [--keep] [--no-install]
"""

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TAG = "archeio:image-test"
NICE = ["nice", "-n", "15"]
# The stand-in of the Dockerfile's digest-pinned runtime base is tagged without the digest.
RUNTIME_TAG = "gcr.io/distroless/cc-debian12:nonroot"
FORBIDDEN = [
    "bin/sh", "bin/bash", "bin/dash", "bin/busybox", "usr/bin/sh", "usr/bin/bash", "usr/bin/dash",
    "usr/bin/busybox", "usr/bin/apt", "usr/bin/apt-get", "usr/bin/dpkg", "bin/dpkg", "usr/bin/perl",
    "usr/bin/su", "bin/su", "usr/bin/passwd", "usr/bin/mount", "bin/mount",
]
REQUIRED = [
    "usr/local/bin/archeio", "etc/archeio/archeio.yaml", "etc/ssl/certs/ca-certificates.crt",
    "usr/share/zoneinfo/UTC", "usr/share/doc/archeio/sbom.cdx.json",
]
SBOM = "usr/share/doc/archeio/sbom.cdx.json"

FAILS = []
TIMES = {}


def log(msg):
    print(msg, flush=True)


def check(name, ok, detail=""):
    if ok:
        log(f"ok    {name}")
    else:
        log(f"FAIL  {name}{': ' + detail if detail else ''}")
        FAILS.append(name)
    return ok


def run(cmd, check=True, timeout=3600, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    return r


def free_port():
    while True:
        p = random.randint(20000, 40000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
                return p
            except OSError:
                continue


def http_status(url, timeout=2):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return None, ""


def ensure_packages(runtime, install):
    need = {"debootstrap": "debootstrap"}
    if runtime == "podman":
        need["podman"] = "podman"
    else:
        need.update({"dockerd": "docker.io", "containerd": "containerd"})
    missing = sorted({pkg for cmd, pkg in need.items() if shutil.which(cmd) is None})
    if not missing:
        return
    if not install or os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit(f"image test: missing {' '.join(missing)}; install them with apt-get install -y {' '.join(missing)}")
    log(f"== installing {' '.join(missing)} (apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-qq"], env=env, timeout=900)
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends"] + missing, env=env, timeout=1800)


class Podman:
    """podman with its own storage under the work directory (overlay when this kernel lets us
    mount it, else vfs), no systemd: health checks are run by `podman healthcheck run` (the
    image's HEALTHCHECK command, in the container) since nothing schedules them here."""

    name = "podman"

    def __init__(self, work):
        self.env = dict(os.environ, TMPDIR=os.path.join(work, "tmp"))
        os.makedirs(self.env["TMPDIR"], exist_ok=True)
        driver = "overlay" if self._overlay_works(work) else "vfs"
        # podman refuses a runroot path over 50 characters: a short one under the work directory.
        self.flags = ["--root", f"{work}/podman/root", "--runroot", f"{work}/rr",
                      "--storage-driver", driver, "--events-backend", "none", "--cgroup-manager", "cgroupfs"]
        # This sandbox lacks CAP_SYS_RESOURCE and podman's default limits are above its hard
        # limits ("error setting rlimit type 6/7: operation not permitted"): ask for less.
        hard_nofile = int(run(["sh", "-c", "ulimit -Hn"]).stdout.strip() or 1024)
        self.run_flags = ["--ulimit", f"nofile={min(hard_nofile, 65536)}:{min(hard_nofile, 65536)}",
                          "--ulimit", "nproc=4096:4096"]
        self.bind = "0.0.0.0"  # in the container's own network; published on 127.0.0.1
        self.build_flags = []

    @staticmethod
    def _overlay_works(work):
        d = tempfile.mkdtemp(dir=work)
        for sub in ("l", "u", "w", "m"):
            os.makedirs(os.path.join(d, sub))
        r = run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={d}/l,upperdir={d}/u,workdir={d}/w",
                 f"{d}/m"], check=False)
        if r.returncode == 0:
            run(["umount", f"{d}/m"], check=False)
        shutil.rmtree(d, ignore_errors=True)
        return r.returncode == 0

    def cli(self, *args):
        return ["podman"] + self.flags + list(args)

    def ports(self, port, admin):
        return ["-p", f"127.0.0.1:{port}:{port}", "-p", f"127.0.0.1:{admin}:{admin}"]

    def health(self, cid):
        run(self.cli("healthcheck", "run", cid), check=False, env=self.env, timeout=30)
        r = run(self.cli("inspect", "-f", "{{json .State}}", cid), check=False, env=self.env)
        state = json.loads(r.stdout or "{}")
        # "Healthcheck" before podman 4.3's docker-compatible "Health".
        return (state.get("Health") or state.get("Healthcheck") or {}).get("Status", "")

    def stop(self, remove_store):
        if remove_store:  # unmounts its layers, so that the work directory can go
            run(self.cli("system", "reset", "--force"), check=False, env=self.env, timeout=600)


class Docker:
    """dockerd on a containerd of its own (as tests/e2e/run.py starts them: no iptables, no
    bridge, so containers use the host network and the configuration binds 127.0.0.1). The
    legacy builder (DOCKER_BUILDKIT=0): Debian's docker.io has no buildx."""

    name = "docker"

    def __init__(self, work):
        self.procs = []
        d = os.path.join(work, "docker")
        os.makedirs(d)
        conf = os.path.join(d, "containerd.toml")
        with open(conf, "w") as f:
            f.write(f'version = 2\nroot = "{d}/containerd-root"\nstate = "{d}/containerd-state"\n'
                    f'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n[grpc]\n  address = "{d}/containerd.sock"\n'
                    f'[ttrpc]\n  address = "{d}/containerd.sock.ttrpc"\n')
        self._start(NICE + ["containerd", "--config", conf], f"{d}/containerd.log")
        self._wait(["ctr", "-a", f"{d}/containerd.sock", "version"], "containerd")
        with open(f"{d}/daemon.json", "w") as f:
            json.dump({}, f)
        self.host = f"unix://{d}/docker.sock"
        self._start(NICE + ["dockerd", "--config-file", f"{d}/daemon.json", "--data-root", f"{d}/data",
                            "--exec-root", f"{d}/exec", "--pidfile", f"{d}/docker.pid", "-H", self.host,
                            "--containerd", f"{d}/containerd.sock", "--iptables=false", "--ip-masq=false",
                            "--bridge=none"], f"{d}/dockerd.log")
        self.env = dict(os.environ, DOCKER_BUILDKIT="0")
        self.flags = ["-H", self.host]
        self._wait(self.cli("version"), "dockerd")
        self.run_flags = ["--network", "host"]
        self.bind = "127.0.0.1"
        self.build_flags = ["--network", "host"]  # no bridge: the build's RUN steps need apt and crates.io

    def _start(self, cmd, logfile):
        with open(logfile, "w") as out:
            self.procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))

    def _wait(self, cmd, what):
        for _ in range(60):
            if run(cmd, check=False, env=getattr(self, "env", None)).returncode == 0:
                return
            if self.procs[-1].poll() is not None:
                break
            time.sleep(0.5)
        raise RuntimeError(f"{what} did not start (see its log in the work directory)")

    def cli(self, *args):
        docker = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker"
        return [docker] + self.flags + list(args)

    def ports(self, port, admin):
        return []

    def health(self, cid):
        r = run(self.cli("inspect", "-f", "{{.State.Health.Status}}", cid), check=False, env=self.env)
        return r.stdout.strip()

    def stop(self, remove_store):
        if remove_store:
            run(self.cli("system", "prune", "-a", "-f"), check=False, env=self.env, timeout=600)
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def build(rt, work, tag):
    """scripts/build-image.sh: the build operators run (SOURCE_DATE_EPOCH, --timestamp), then the
    bill of materials copied to target/archeio.cdx.json. Returns the image ID."""
    env = dict(rt.env, RUNTIME_FLAGS=" ".join(rt.flags))
    cmd = NICE + [f"{ROOT}/scripts/build-image.sh", "--runtime", rt.name, "--tag", tag, "--no-smoke", "--",
                  "--build-arg", f"RUNTIME_IMAGE={RUNTIME_TAG}"] + rt.build_flags
    with open(os.path.join(work, f"build-{tag.replace(':', '_')}.log"), "w") as out:
        r = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, timeout=5400)
    if r.returncode != 0:
        with open(out.name) as f:
            tail = f.read()[-4000:]
        raise RuntimeError(f"the build of {tag} failed:\n{tail}")
    return run(rt.cli("image", "inspect", "-f", "{{.Id}}", tag), env=rt.env).stdout.strip()


def top_step(rt, image):
    """The instruction that made an image (its history's newest entry)."""
    r = run(rt.cli("history", "--no-trunc", "--format", "{{.CreatedBy}}", image), env=rt.env)
    return r.stdout.split("\n", 1)[0]


def parent(rt, image):
    return run(rt.cli("image", "inspect", "-f", "{{.Parent}}", image), env=rt.env).stdout.strip()


def forget_crate_and_runtime(rt):
    """Removes from the build cache every image after the dependency layer: the build stage's
    crate compile (with the bill of materials) and the steps that feed it, and every image of
    the runtime stage. A build after this recompiles archeio and assembles the runtime again;
    only cargo-cyclonedx and the dependencies (the costly part) come from the cache."""
    base = run(rt.cli("image", "inspect", "-f", "{{.Id}}", RUNTIME_TAG), env=rt.env).stdout.strip().removeprefix("sha256:")
    ids = run(rt.cli("images", "-a", "-q", "--no-trunc"), env=rt.env).stdout.split()
    ids = list(dict.fromkeys(i.removeprefix("sha256:") for i in ids))
    parents = {i: parent(rt, i).removeprefix("sha256:") for i in ids}

    def ancestry(i):
        out = []
        while i:
            out.append(i)
            i = parents.get(i) or parent(rt, i).removeprefix("sha256:")
        return out

    doomed = {}  # image: its depth, so that children go before their parents
    for i in ids:
        line = ancestry(i)
        if i != base and base in line:  # the runtime stage
            doomed[i] = len(line)
        elif "cargo cyclonedx" in top_step(rt, i):  # the crate build, down to the dependencies
            for k, a in enumerate(line):
                if "rm -rf src" in top_step(rt, a):
                    break
                doomed[a] = len(line) - k
            else:
                raise RuntimeError(f"the crate build {i[:12]} does not descend from the dependency layer")
    if not any("cargo cyclonedx" in top_step(rt, i) for i in doomed):
        raise RuntimeError("no cached crate build found")
    for i in sorted(doomed, key=doomed.get, reverse=True):
        run(rt.cli("rmi", "-f", "--no-prune", i), env=rt.env)  # keep the parents: the cache


def check_metadata(rt, tag):
    cfg = json.loads(run(rt.cli("image", "inspect", tag), env=rt.env).stdout)[0]
    c = cfg.get("Config") or {}
    check("image user is 10001:10001", c.get("User") == "10001:10001", repr(c.get("User")))
    # podman puts it beside Config, Docker in it.
    hc = (cfg.get("Healthcheck") or c.get("Healthcheck") or {}).get("Test") or []
    check("HEALTHCHECK is exec form: archeio health", hc == ["CMD", "/usr/local/bin/archeio", "health"], repr(hc))
    labels = c.get("Labels") or {}
    source = labels.get("org.opencontainers.image.source", "")
    check("label source is a URL or empty, never a local path",
          source == "" or source.startswith(("https://", "http://")), repr(source))
    revision = labels.get("org.opencontainers.image.revision", "")
    check("label revision is set", len(revision) >= 40, repr(revision))
    return revision


def export_members(rt, tag, work):
    """The image's filesystem as the runtime exports it (create + export: no shell needed)."""
    cid = run(rt.cli("create", tag), env=rt.env).stdout.strip()
    path = os.path.join(work, "rootfs.tar")
    try:
        with open(path, "wb") as out:
            subprocess.run(rt.cli("export", cid), stdout=out, check=True, env=rt.env, timeout=600)
    finally:
        run(rt.cli("rm", "-f", cid), check=False, env=rt.env)
    tar = tarfile.open(path)
    return tar, {m.name.lstrip("./"): m for m in tar.getmembers()}


def check_filesystem(members):
    present = [p for p in FORBIDDEN if p in members]
    check("no shell, package manager or setuid tool in the runtime", not present, ", ".join(present))
    setid = [n for n, m in members.items() if m.isfile() and m.mode & 0o6000]
    check("no setuid/setgid file", not setid, ", ".join(setid[:10]))
    absent = [p for p in REQUIRED if p not in members]
    check("binary, configuration, CA bundle, tzdata and bill of materials present", not absent, ", ".join(absent))
    size = sum(m.size for m in members.values() if m.isfile())
    log(f"      runtime filesystem: {len(members)} entries, {size / 1e6:.1f} MB of files")


def expected_crates():
    """(name, version) of every package archeio is built from: its normal and build
    dependencies, transitively, for every target, as Cargo.lock resolves them."""
    meta = json.loads(run(["cargo", "metadata", "--format-version", "1", "--locked",
                           "--manifest-path", f"{ROOT}/Cargo.toml"], timeout=900).stdout)
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    pkgs = {p["id"]: p for p in meta["packages"]}
    root = meta["resolve"]["root"]
    seen, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        for dep in nodes[pid]["deps"]:
            if any(k["kind"] in (None, "build") for k in dep["dep_kinds"]):
                todo.append(dep["pkg"])
    return {(pkgs[p]["name"], pkgs[p]["version"]) for p in seen}


def check_sbom(sbom_bytes):
    with open(f"{ROOT}/Cargo.lock", "rb") as f:
        lock = {(p["name"], p["version"]) for p in tomllib.load(f)["package"]}
    bom = json.loads(sbom_bytes)
    check("bill of materials is CycloneDX JSON", bom.get("bomFormat") == "CycloneDX", repr(bom.get("bomFormat")))
    main = bom.get("metadata", {}).get("component", {})
    listed = {(c["name"], c["version"]) for c in bom.get("components", [])} | {(main.get("name"), main.get("version"))}
    check("bill of materials lists only crates of Cargo.lock", listed <= lock, str(sorted(listed - lock)[:10]))
    want = expected_crates()
    check(f"bill of materials lists the {len(want)} crates of Cargo.lock archeio is built from",
          listed == want, f"missing {sorted(want - listed)[:10]}, extra {sorted(listed - want)[:10]}")
    with open(f"{ROOT}/target/archeio.cdx.json", "rb") as f:
        check("target/archeio.cdx.json is the image's bill of materials", f.read() == sbom_bytes)


def write_configs(work, bind):
    """Two configurations, each with the admin listener on a port that is not the default 9090.
    Short drains, so that the stops are quick."""
    d = os.path.join(work, "config")
    os.makedirs(d, mode=0o755, exist_ok=True)
    ports = {}
    for name in ("gw", "env"):
        port, admin = free_port(), free_port()
        while admin == port:
            admin = free_port()
        ports[name] = (port, admin)
        with open(os.path.join(d, f"{name}.yaml"), "w") as f:
            f.write(f"threads: 1\ngrace_period_seconds: 1\ngraceful_shutdown_timeout_seconds: 1\n"
                    f"archeio:\n  listen: ['{bind}:{port}']\n  admin_listen: ['{bind}:{admin}']\n")
        os.chmod(f.name, 0o644)
    return d, ports


def run_containers(rt, work, tag, revision):
    cdir, ports = write_configs(work, rt.bind)
    hardened = ["--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                "-v", f"{cdir}:/config:ro"] + rt.run_flags
    ways = {"gw": (["-c", "/config/gw.yaml"], []), "env": ([], ["-e", "ARCHEIO_CONFIG=/config/env.yaml"])}
    cids = {}
    try:
        for name, (args, env) in ways.items():
            port, admin = ports[name]
            cmd = rt.cli("run", "-d", *hardened, *rt.ports(port, admin), *env, tag, *args)
            cids[name] = run(cmd, env=rt.env).stdout.strip()[:12]
        labels = {"gw": "-c /config/gw.yaml", "env": "-e ARCHEIO_CONFIG=/config/env.yaml"}
        for name, cid in cids.items():
            port, admin = ports[name]
            start, status = time.monotonic(), ""
            while time.monotonic() - start < 60 and status != "healthy":
                time.sleep(2)
                status = rt.health(cid)
            waited = time.monotonic() - start
            if not check(f"{labels[name]} (admin on {admin}): healthy by its HEALTHCHECK ({waited:.0f} s)",
                         status == "healthy", f"status {status!r}"):
                logs = run(rt.cli("logs", cid), check=False, env=rt.env)
                log((logs.stdout + logs.stderr)[-2000:])
            code, _ = http_status(f"http://127.0.0.1:{port}/v2/")
            check(f"{labels[name]}: GET /v2/ on 127.0.0.1:{port} is 200", code == 200, str(code))
            code, _ = http_status(f"http://127.0.0.1:{admin}/readyz")
            check(f"{labels[name]}: /readyz is 200", code == 200, str(code))
            _, metrics = http_status(f"http://127.0.0.1:{admin}/metrics")
            want = f'archeio_build_info{{revision="{revision}",version='
            check(f"{labels[name]}: archeio_build_info has revision {revision[:12]}", want in metrics)
        for name, cid in cids.items():
            run(rt.cli("stop", "-t", "20", cid), check=False, env=rt.env, timeout=60)
            code = run(rt.cli("inspect", "-f", "{{.State.ExitCode}}", cid), check=False, env=rt.env).stdout.strip()
            check(f"{labels[name]}: stops on SIGTERM with exit code 0", code == "0", code)
    finally:
        for cid in cids.values():
            run(rt.cli("rm", "-f", cid), check=False, env=rt.env)


def timed(name, fn, *args, **kw):
    start = time.monotonic()
    try:
        return fn(*args, **kw)
    finally:
        TIMES[name] = time.monotonic() - start
        log(f"== {name}: {TIMES[name]:.0f} s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runtime", choices=["podman", "docker"], default=os.environ.get("CONTAINER_RUNTIME", "podman"))
    ap.add_argument("--work", help="work directory (default: a new one under /var/tmp, removed at the end)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (stand-in roots, image store)")
    ap.add_argument("--no-install", action="store_true", help="never install missing packages, only name them")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("image test: run as root (debootstrap, the container engines)")
    ensure_packages(args.runtime, not args.no_install)
    work = args.work or tempfile.mkdtemp(prefix="archeio-image-test-", dir="/var/tmp")
    os.makedirs(work, exist_ok=True)
    # A signal ends the run through the finally below, which stops what was started.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: sys.exit(128 + s))
    started = time.monotonic()
    rt = None
    try:
        rt = Podman(work) if args.runtime == "podman" else Docker(work)
        log(f"== image test with {rt.name}, work directory {work}")
        env = dict(rt.env, RUNTIME_FLAGS=" ".join(rt.flags), WORKDIR=os.path.join(work, "standin"))
        timed("stand-in bases", run, NICE + [f"{ROOT}/scripts/standin-base-images.sh", "--runtime", rt.name],
              True, 3600, env=env, cwd=ROOT)
        first = timed("first build", build, rt, work, TAG)
        log(f"      image ID {first}")
        revision = check_metadata(rt, TAG)
        tar, members = export_members(rt, TAG, work)
        check_filesystem(members)
        check_sbom(tar.extractfile(members[SBOM]).read() if SBOM in members else b"{}")
        timed("hardened runs", run_containers, rt, work, TAG, revision)
        forget_crate_and_runtime(rt)
        second = timed("second build (crate and runtime stage rebuilt)", build, rt, work, f"{TAG}-again")
        check(f"two builds of the same tree give the same image ID ({first[:19]})", first == second,
              f"{first} then {second}")
    except Exception as e:  # a step that could not run at all
        check("the image test ran to its end", False, str(e))
    finally:
        remove = not args.keep and not args.work
        if rt is not None:
            rt.stop(remove)
        if remove:
            shutil.rmtree(work, ignore_errors=True)
    log("== timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in TIMES.items())
        + f"; whole test {time.monotonic() - started:.0f} s")
    if FAILS:
        log(f"image test: {len(FAILS)} check(s) failed:\n  - " + "\n  - ".join(FAILS))
        sys.exit(1)
    log("== image test passed")


if __name__ == "__main__":
    main()
