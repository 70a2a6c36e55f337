#!/usr/bin/env bash
# Builds the archeio image with docker or podman, writes its bill of materials beside the
# release (target/archeio.cdx.json), then smoke-tests it the way an operator runs it: read-only
# root filesystem with a tmpfs /tmp, every capability dropped, no new privileges, user
# 10001:10001, ports published on 127.0.0.1 only.
#
#   scripts/build-image.sh [--runtime docker|podman] [--tag IMAGE] [--no-build] [--no-smoke]
#                          [-- BUILD-ARGS...]
#
# --runtime (or CONTAINER_RUNTIME): default docker when its engine answers, else podman.
# --tag (or IMAGE): default archeio:dev. --no-build: smoke-test an existing image.
# --no-smoke: build only. Arguments after -- go to `build`, e.g. -- --build-arg
# RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot (the stand-ins' tag).
# RUNTIME_FLAGS: global flags for the runtime, e.g. podman's --root/--storage-driver.
# Reproducible: SOURCE_DATE_EPOCH (default: the commit's time) is the bill of materials' and
# every added file's time; podman also gets --timestamp (image and layer times). BuildKit
# 0.13+ needs -- --output type=image,name=TAG,rewrite-timestamp=true for the same.
# SOURCE_URL: the org.opencontainers.image.source label (default: the git remote when it is a
# network URL, without credentials; else empty, never a local path). Needs python3 (the config
# rewrite) and, for the smoke test, curl on the host.
# Exits non-zero, naming each failed check.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "build-image: $*" >&2; exit 1; }
usage() { sed -n '2,22s/^# \{0,1\}//p' "$0"; }

runtime=${CONTAINER_RUNTIME:-}
tag=${IMAGE:-archeio:dev}
build=1
smoke=1
build_args=()
while (($#)); do
  case $1 in
    --runtime) [ $# -ge 2 ] || die "--runtime needs a value"; runtime=$2; shift 2 ;;
    --runtime=*) runtime=${1#*=}; shift ;;
    --tag) [ $# -ge 2 ] || die "--tag needs a value"; tag=$2; shift 2 ;;
    --tag=*) tag=${1#*=}; shift ;;
    --no-build) build=0; shift ;;
    --no-smoke) smoke=0; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; build_args=("$@"); break ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

read -r -a rtflags <<<"${RUNTIME_FLAGS:-}"
if [ -z "$runtime" ]; then
  for candidate in docker podman; do
    if command -v "$candidate" >/dev/null && "$candidate" "${rtflags[@]}" info >/dev/null 2>&1; then
      runtime=$candidate
      break
    fi
  done
  [ -n "$runtime" ] || die "neither docker (with a running engine) nor podman works here; pass --runtime"
fi
case $runtime in docker | podman) ;; *) die "--runtime must be docker or podman, not $runtime" ;; esac
command -v "$runtime" >/dev/null || die "$runtime is not installed"
rt() { "$runtime" "${rtflags[@]}" "$@"; }
info_err=$(rt info 2>&1 >/dev/null) ||
  die "$runtime info fails (is the engine running, are RUNTIME_FLAGS right?): $info_err"
((!smoke)) || command -v curl >/dev/null || die "the smoke test needs curl on the host"
echo "== runtime: $runtime $(rt --version 2>/dev/null | head -1)"

# A URL anyone can open: https as is, git@host:path and ssh:// as https, credentials cut;
# anything else (a local path, file://) gives nothing.
public_url() {
  local u
  u=$(printf '%s' "$1" | sed -e 's#//[^/@]*@#//#' -e 's#^ssh://\([^@/]*@\)\{0,1\}\([^/:]*\)\(:[0-9]*\)\{0,1\}/#https://\2/#' \
    -e 's#^[^@/:]*@\([^/:]*\):#https://\1/#' -e 's#^git://#https://#')
  case $u in https://* | http://*) printf '%s' "$u" ;; esac
}

# The same image ID for the same commit: buildah 1.28 (podman 4.3) writes into the docker-format
# config the random ID and host name of each step's working container and the IDs of the
# intermediate images; Docker's legacy builder writes those and each step's time. Rewrite the
# config without them (layers untouched, times clamped to SOURCE_DATE_EPOCH) and load it back.
# (podman --format oci would need none of this, but OCI configs have no HEALTHCHECK.)
normalize() {
  local dir
  dir=$(mktemp -d)
  rt save -o "$dir/in.tar" "$1" >/dev/null 2>&1 || { rm -rf "$dir"; return 1; }
  python3 - "$dir/in.tar" "$dir/out.tar" "$1" "$2" "$3" <<'PY' || { rm -rf "$dir"; return 1; }
import hashlib, io, json, re, sys, tarfile, time
src, dst, tag, epoch, started = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
with tarfile.open(src) as t:
    files = {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}
manifest = json.loads(files["manifest.json"])
cfg = json.loads(files.pop(manifest[0]["Config"]))
cfg.pop("container", None)
cfg.pop("parent", None)
for key in ("config", "container_config"):
    if isinstance(cfg.get(key), dict) and "Hostname" in cfg[key]:
        cfg[key]["Hostname"] = ""
stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
def made_now(created):  # a time of this build (not of a base image's steps)
    return created and time.mktime(time.strptime(created[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone >= started
if made_now(cfg.get("created")):
    cfg["created"] = stamp
for h in cfg.get("history", []):
    if re.fullmatch(r"FROM [0-9a-f]{12,64}", h.get("comment", "")):
        del h["comment"]
    if made_now(h.get("created")):
        h["created"] = stamp
blob = json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()
name = hashlib.sha256(blob).hexdigest() + ".json"
files[name] = blob
manifest[0]["Config"] = name
manifest[0]["RepoTags"] = [tag if ":" in tag.rsplit("/", 1)[-1] else tag + ":latest"]
files["manifest.json"] = json.dumps(manifest).encode()
files.pop("repositories", None)
with tarfile.open(dst, "w") as t:
    for n in sorted(files):
        info = tarfile.TarInfo(n)
        info.size = len(files[n])
        t.addfile(info, io.BytesIO(files[n]))
PY
  rt load -i "$dir/out.tar" >/dev/null 2>&1 || { rm -rf "$dir"; return 1; }
  rm -rf "$dir"
}

if ((build)); then
  command -v python3 >/dev/null || die "the build needs python3 on the host (the image config's rewrite)"
  version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
  revision=$(git rev-parse HEAD 2>/dev/null || true)
  if [ -n "$revision" ] && [ -n "$(git status --porcelain 2>/dev/null)" ]; then
    revision="$revision-dirty"
  fi
  epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
  source_url=$(public_url "${SOURCE_URL-$(git config --get remote.origin.url 2>/dev/null || true)}")
  extra=()
  # Podman's default OCI format has no HEALTHCHECK; the docker format keeps it. --timestamp:
  # the image's and every layer file's time, for the same digest from the same commit.
  [ "$runtime" = podman ] && extra=(--format docker --timestamp "$epoch")
  echo "== building $tag (version $version, revision ${revision:-unknown}, SOURCE_DATE_EPOCH $epoch)"
  start=$SECONDS
  started=$(date +%s)
  rt build "${extra[@]}" -t "$tag" \
    --build-arg "VERSION=$version" \
    --build-arg "REVISION=$revision" \
    --build-arg "SOURCE=$source_url" \
    --build-arg "SOURCE_DATE_EPOCH=$epoch" \
    "${build_args[@]}" . || die "the image build failed"
  normalize "$tag" "$epoch" "$started" || die "the image config's rewrite failed"
  echo "== built in $((SECONDS - start)) s: $(rt image inspect -f '{{.Id}}' "$tag")"
  # The bill of materials beside the release. create + cp: the image has no shell to cat with.
  mkdir -p target
  sbom_cid=$(rt create "$tag") || die "cannot create a container of $tag"
  rt cp "$sbom_cid:/usr/share/doc/archeio/sbom.cdx.json" target/archeio.cdx.json ||
    { rt rm "$sbom_cid" >/dev/null; die "no /usr/share/doc/archeio/sbom.cdx.json in $tag"; }
  rt rm "$sbom_cid" >/dev/null
  echo "== bill of materials: target/archeio.cdx.json"
fi
rt image inspect "$tag" >/dev/null 2>&1 || die "no image $tag (build it, or drop --no-build)"
((smoke)) || exit 0

fails=()
pass() { echo "ok    $1"; }
fail() { echo "FAIL  $1" >&2; fails+=("$1"); }
check() { local name=$1; shift; if "$@"; then pass "$name"; else fail "$name"; fi; }

# The flags an operator runs the image with (docs/operations.md, "Docker").
hardening=(--read-only --cap-drop ALL --security-opt no-new-privileges --user 10001:10001)

user=$(rt image inspect -f '{{.Config.User}}' "$tag")
check "image user is 10001:10001 (got '$user')" test "$user" = 10001:10001
healthcheck=$(rt image inspect -f '{{json .Config.Healthcheck}}' "$tag" 2>/dev/null || true)
check "image has a HEALTHCHECK (archeio health)" grep -q 'archeio' <<<"$healthcheck"

echo "== $runtime run IMAGE -t (the shipped configuration, ARCHEIO_CONFIG)"
if out=$(rt run --rm "${hardening[@]}" "$tag" -t 2>&1); then
  pass "config test: run IMAGE -t exits 0"
else
  printf '%s\n' "$out" >&2
  fail "config test: run IMAGE -t exits 0"
fi
# The start-up line names the configuration's source: the shipped file, not built-in defaults.
if grep -q 'from /etc/archeio/archeio.yaml' <<<"$out"; then
  pass "config test: run IMAGE -t reads /etc/archeio/archeio.yaml"
else
  grep -o 'archeio [0-9.]* from [^:]*' <<<"$out" | head -1 >&2 || true
  fail "config test: run IMAGE -t reads /etc/archeio/archeio.yaml"
fi

free_port() {
  local p
  for _ in $(seq 1 50); do
    p=$((20000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return
    fi
  done
  die "no free port found on 127.0.0.1"
}
port=$(free_port)
aport=$(free_port)
while [ "$aport" = "$port" ]; do aport=$(free_port); done

cid=""
cleanup() {
  if [ -n "$cid" ]; then
    rt rm -f "$cid" >/dev/null 2>&1 || echo "build-image: could not remove container $cid" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== $runtime run -d ${hardening[*]} --tmpfs /tmp -p 127.0.0.1:$port:8080 -p 127.0.0.1:$aport:9090"
cid=$(rt run -d "${hardening[@]}" --tmpfs /tmp \
  -p "127.0.0.1:$port:8080" -p "127.0.0.1:$aport:9090" "$tag") ||
  die "the container did not start"
cid=${cid:0:12}

status() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" || true; }
logs() { echo "--- container logs:" >&2; rt logs "$cid" 2>&1 | tail -n 30 >&2; }

ready=0
for _ in $(seq 1 60); do
  if [ "$(rt inspect -f '{{.State.Running}}' "$cid" 2>/dev/null)" != true ]; then
    logs
    die "the container exited before /readyz answered (exit code $(rt inspect -f '{{.State.ExitCode}}' "$cid" 2>/dev/null))"
  fi
  [ "$(status "http://127.0.0.1:$aport/readyz")" = 200 ] && { ready=1; break; }
  sleep 0.5
done
if ((!ready)); then
  logs
  die "/readyz on 127.0.0.1:$aport did not answer 200 within 30 s"
fi
pass "/readyz 200"

code=$(status "http://127.0.0.1:$port/v2/")
check "GET /v2/ is 200 (got $code)" test "$code" = 200

# The shipped configuration: redirect mode, upstream us-central1-docker.pkg.dev, path
# k8s-artifacts-prod/images.
want="307 https://us-central1-docker.pkg.dev/v2/k8s-artifacts-prod/images/pause/manifests/3.10"
got=$(curl -s -o /dev/null -w '%{http_code} %{redirect_url}' --max-time 5 \
  "http://127.0.0.1:$port/v2/pause/manifests/3.10" || true)
check "GET /v2/pause/manifests/3.10 is '$want' (got '$got')" test "$got" = "$want"

metrics=$(curl -s --max-time 5 "http://127.0.0.1:$aport/metrics" || true)
check "/metrics has archeio_build_info" grep -q '^archeio_build_info' <<<"$metrics"

for sub in "health" "health --ready"; do
  # shellcheck disable=SC2086 # $sub is two words on purpose
  if out=$(rt exec "$cid" /usr/local/bin/archeio $sub 2>&1); then
    pass "exec archeio $sub exits 0"
  else
    printf '%s\n' "$out" | tail -n 5 >&2
    fail "exec archeio $sub exits 0"
  fi
done

# docker stop: SIGTERM, then SIGKILL after the timeout. The shipped configuration drains for up
# to grace_period_seconds + graceful_shutdown_timeout_seconds (5 + 5 s); Pingora's built-in
# default grace period is 300 s, so this also fails when the shipped file is not in use.
start=$SECONDS
rt stop -t 20 "$cid" >/dev/null 2>&1 || true
exit_code=$(rt inspect -f '{{.State.ExitCode}}' "$cid" 2>/dev/null || echo unknown)
check "stops on SIGTERM with exit code 0 (got $exit_code after $((SECONDS - start)) s)" \
  test "$exit_code" = 0
((${#fails[@]} == 0)) || logs

size=$(rt image inspect -f '{{.Size}}' "$tag")
echo "== image $tag: $((size / 1000000)) MB ($size bytes)"
if ((${#fails[@]})); then
  echo "build-image: ${#fails[@]} check(s) failed:" >&2
  printf '  - %s\n' "${fails[@]}" >&2
  exit 1
fi
echo "== all checks passed"
