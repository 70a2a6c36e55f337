#!/usr/bin/env bash
# Local stand-ins for the Dockerfile's two base images, for a machine that cannot pull from a
# container registry (only a Debian mirror): a minimal Debian bookworm root made with
# debootstrap, tagged as the pinned debian tag, and the same plus build-essential and this
# machine's Rust toolchain (copied from rustup), tagged as the pinned rust tag.
#
# For testing the Dockerfile and scripts/build-image.sh only: these are not the official
# images (no slimming beyond removing docs, no rustup, the host's toolchain), never publish an
# image built on them. As root, with debootstrap and podman installed:
#   scripts/standin-base-images.sh            # then
#   PODMAN_FLAGS="..." scripts/build-image.sh --runtime podman
# Environment: PODMAN_FLAGS (podman's global flags, e.g. --root/--storage-driver), WORKDIR
# (where the roots are made and kept for the next run, default /tmp/archeio-standin), MIRROR (Debian mirror),
# TOOLCHAIN (rustup toolchain directory, default the one `rustc` runs from).
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "standin-base-images: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (debootstrap)"
command -v debootstrap >/dev/null || die "install debootstrap (apt-get install debootstrap)"
command -v podman >/dev/null || die "install podman (apt-get install podman)"
read -r -a pflags <<<"${PODMAN_FLAGS:-}"
pm() { podman "${pflags[@]}" "$@"; }

# The tags the Dockerfile pins, read from it so that the two never disagree.
rust_tag=$(sed -n 's/^ARG RUST_IMAGE=//p' Dockerfile)
runtime_tag=$(sed -n 's/^ARG RUNTIME_IMAGE=//p' Dockerfile)
[ -n "$rust_tag" ] && [ -n "$runtime_tag" ] || die "no ARG RUST_IMAGE / RUNTIME_IMAGE in Dockerfile"
want_rust=${rust_tag#rust:}; want_rust=${want_rust%%-*}

work=${WORKDIR:-/tmp/archeio-standin}
mirror=${MIRROR:-http://deb.debian.org/debian}
toolchain=${TOOLCHAIN:-$(rustc --print sysroot)}
have_rust=$("$toolchain/bin/rustc" --version | awk '{print $2}')
[ "$have_rust" = "$want_rust" ] || die "toolchain $toolchain is rustc $have_rust, $rust_tag wants $want_rust"
mkdir -p "$work"

slim() {  # what Debian's slim variant drops, roughly
  rm -rf "$1"/usr/share/doc/* "$1"/usr/share/man/* "$1"/usr/share/info/* \
    "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/cache/apt/archives/*.deb
}

if ! pm image exists "$runtime_tag"; then
  echo "== $runtime_tag: debootstrap minbase"
  [ -e "$work/runtime/etc/debian_version" ] ||
    debootstrap --variant=minbase bookworm "$work/runtime" "$mirror" >"$work/runtime.log"
  slim "$work/runtime"
  tar -C "$work/runtime" -c . | pm import --change 'CMD ["bash"]' - "$runtime_tag"
fi

if ! pm image exists "$rust_tag"; then
  echo "== $rust_tag: debootstrap minbase + build-essential, toolchain from $toolchain"
  [ -e "$work/rust/etc/debian_version" ] ||
    debootstrap --variant=minbase \
      --include=build-essential,ca-certificates,pkg-config,git,libssl-dev,netbase \
      bookworm "$work/rust" "$mirror" >"$work/rust.log"
  slim "$work/rust"
  # The CA certificates this machine adds to its trust store (e.g. a TLS-intercepting egress
  # proxy's), so that cargo can reach crates.io from the build stage as it does here.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$work/rust/usr/local/share/ca-certificates/"
    chroot "$work/rust" update-ca-certificates >/dev/null
  fi
  dest="$work/rust/usr/local/rustup/toolchains/$want_rust-x86_64-unknown-linux-gnu"
  mkdir -p "$dest" "$work/rust/usr/local/cargo/bin"
  cp -a "$toolchain/bin" "$toolchain/lib" "$dest/"
  [ -d "$toolchain/libexec" ] && cp -a "$toolchain/libexec" "$dest/"
  for b in cargo rustc rustdoc; do
    ln -sfn "/usr/local/rustup/toolchains/$want_rust-x86_64-unknown-linux-gnu/bin/$b" \
      "$work/rust/usr/local/cargo/bin/$b"
  done
  tar -C "$work/rust" -c . | pm import \
    --change 'ENV RUSTUP_HOME=/usr/local/rustup' \
    --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' - "$rust_tag"
fi
# FROM rust:... resolves to docker.io/library/rust:...; tag the stand-ins under that name too.
for t in "$rust_tag" "$runtime_tag"; do
  pm tag "localhost/$t" "docker.io/library/$t"
done
pm images
