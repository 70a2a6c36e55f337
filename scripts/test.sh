#!/usr/bin/env bash
# Runs every archeio test: formatting, lints, unit and integration tests, then the end-to-end
# suite (tests/e2e/run.py: real registry clients through the release binary).
# On a fresh Debian machine it first installs what the build and the tests need
# (as root, with apt-get); otherwise it says what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v cmake >/dev/null || missing+=(cmake)          # libz-ng-sys, a pingora dependency
command -v cc >/dev/null || missing+=(build-essential)
command -v pkg-config >/dev/null || missing+=(pkg-config)
# The pass-through tests run a real upstream registry and push images with skopeo.
command -v docker-registry >/dev/null || missing+=(docker-registry)
command -v skopeo >/dev/null || missing+=(skopeo)
# The end-to-end suite is a Python 3 script (stdlib only); it installs its own clients.
command -v python3 >/dev/null || missing+=(python3)
# deploy/prometheus/check.py checks the alert rules and the dashboard with promtool and a
# real Prometheus scraping the release binary.
command -v promtool >/dev/null || missing+=(prometheus)
# ... and the sync alerts with the Pushgateway that `archeio sync --push-gateway` feeds.
command -v prometheus-pushgateway >/dev/null || missing+=(prometheus-pushgateway)
# The rolling-restart test (tests/ops/rolling_restart.py) balances three gateways with HAProxy.
command -v haproxy >/dev/null || missing+=(haproxy)
# tests/client_identity.rs puts nginx and HAProxy in front of the gateway (forwarding headers,
# PROXY protocol v1/v2).
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
# The image test (tests/image/run.py) builds the Dockerfile with podman on stand-in base
# images that debootstrap makes (no registry is reachable).
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v podman >/dev/null || missing+=(podman)
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    echo "missing: ${missing[*]}; install them with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi
for component in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
    rustup component add "$component"
  fi
done
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# The sync tests write to moto_server, an S3-compatible server.
if ! python3 -c "import moto.server, flask, werkzeug" 2>/dev/null; then
  echo "== installing moto[server]"
  python3 -m pip install -q 'moto[server]'
fi
# deploy/kubernetes/check.py validates the manifests against the Kubernetes schemas this
# pinned kubernetes-validate bundles (it renders them itself, and compares with kubectl
# kustomize where kubectl is installed).
if ! python3 -c "import kubernetes_validate as k, sys; sys.exit(k.__version__ != '1.37.0')" 2>/dev/null; then
  echo "== installing kubernetes-validate"
  python3 -m pip install -q 'kubernetes-validate==1.37.0'
fi
# The signed-URL tests (tests/signing.rs) need servers that check signatures: s3s-fs for S3
# presigned URLs (moto_server does not check them) and Azurite for Azure SAS. Azurite is
# an npm package, installed into a cache directory that the test looks in.
if ! command -v s3s-fs >/dev/null && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs" ]; then
  echo "== installing s3s-fs"
  cargo install s3s-fs --version 0.14.1 --features binary --locked
fi
azurite_dir=${ARCHEIO_TEST_CACHE:-$HOME/.cache/archeio-test}/azurite
if [ ! -x "$azurite_dir/node_modules/.bin/azurite-blob" ]; then
  if ! command -v npm >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "== installing npm"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm
    else
      echo "missing: npm (for Azurite); install it with: sudo apt-get install -y nodejs npm" >&2
      exit 1
    fi
  fi
  echo "== installing Azurite into $azurite_dir"
  mkdir -p "$azurite_dir"
  npm install --prefix "$azurite_dir" --no-audit --no-fund --silent azurite@3.35.0
fi
export AZURITE_BLOB="$azurite_dir/node_modules/.bin/azurite-blob"
# tests/geo.rs places well-known addresses with a published country database: ip-location-db's
# geo-whois-asn-country (CC0, MaxMind DB format), pinned, from the npm registry.
geo_dir=${ARCHEIO_TEST_CACHE:-$HOME/.cache/archeio-test}/ip-location-db
geo_pkg=@ip-location-db/geo-whois-asn-country-mmdb@2.3.2026061719
if [ ! -f "$geo_dir/node_modules/@ip-location-db/geo-whois-asn-country-mmdb/geo-whois-asn-country.mmdb" ]; then
  echo "== installing $geo_pkg into $geo_dir"
  mkdir -p "$geo_dir"
  npm install --prefix "$geo_dir" --no-audit --no-fund --silent "$geo_pkg"
fi
# Every server is installed now: a test that cannot find one fails instead of skipping.
export ARCHEIO_TEST_REQUIRE_SERVERS=1
FUZZ_SECONDS=${FUZZ_SECONDS:-20}
SOAK_SECONDS=${SOAK_SECONDS:-60}

start=$(date +%s)
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== Kubernetes manifests (deploy/kubernetes/check.py)"
python3 deploy/kubernetes/check.py
echo "== cargo clippy (warnings are errors)"
cargo clippy --locked --all-targets -- -D warnings
echo "== cargo test"
cargo test --locked
echo "== cargo build --release --locked (the end-to-end suite runs the release binary)"
cargo build --release --locked
echo "== Prometheus rules and Grafana dashboard against the release binary (deploy/prometheus/check.py)"
python3 deploy/prometheus/check.py
echo "== end-to-end suite: skopeo, ctr, podman, docker through the gateway (tests/e2e/run.py)"
python3 tests/e2e/run.py
echo "== image test: the Dockerfile built twice on stand-in bases, run hardened with -c and ARCHEIO_CONFIG (tests/image/run.py)"
python3 tests/image/run.py
echo "== rolling restart: three release gateways behind HAProxy, SIGTERM one at a time under load (tests/ops/rolling_restart.py)"
# About 11 s; the script bounds its own load and waits, `timeout` bounds the whole.
timeout -k 10 60 python3 tests/ops/rolling_restart.py
echo "== fuzzing, ${FUZZ_SECONDS} s per target"
# cargo fuzz passes a few nightly-only compiler flags; RUSTC_BOOTSTRAP lets stable take them.
fuzz_log=$(mktemp)
for target in routing forwarded_for range_files config; do
  # Committed seeds and a dictionary (where there are) start the search at real paths.
  corpus=(corpus/"$target")
  [ -d fuzz/seeds/"$target" ] && corpus+=(seeds/"$target")
  dict=()
  [ -f fuzz/dicts/"$target".dict ] && dict=(-dict=dicts/"$target".dict)
  mkdir -p fuzz/corpus/"$target"
  if ! (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none --release "$target" \
      "${corpus[@]}" -- -max_total_time="$FUZZ_SECONDS" "${dict[@]}") >"$fuzz_log" 2>&1; then
    tail -n 60 "$fuzz_log"
    echo "fuzz target $target failed (crash input under fuzz/artifacts/$target)" >&2
    exit 1
  fi
  echo "$target: $(grep -E '^Done' "$fuzz_log")"
done
rm -f "$fuzz_log"
echo "== soak: ${SOAK_SECONDS} s at a fixed rate, with a graceful upgrade"
python3 benches/soak/run.py --duration "$SOAK_SECONDS"
echo "== all tests passed in $(( $(date +%s) - start )) s"
