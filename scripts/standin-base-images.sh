#!/usr/bin/env bash
# Local stand-ins for the Dockerfile's two base images, for a machine that cannot pull from a
# container registry (only a Debian mirror), loaded into podman or Docker:
# - the Rust build image: a minimal Debian bookworm root made with debootstrap, with
#   build-essential and this machine's Rust toolchain (copied from rustup), tagged as the
#   Dockerfile's RUST_IMAGE;
# - the distroless runtime: a root holding only what gcr.io/distroless/cc-debian12:nonroot
#   holds (the files of base-files, netbase, tzdata, libc6, libgcc-s1, libgomp1, libstdc++6,
#   libssl3 and ca-certificates' bundle, /etc/passwd and /etc/group with nonroot 65532, a
#   status.d entry per package for scanners; no shell, no package manager, nothing under
#   bin/ or sbin/), tagged as the Dockerfile's RUNTIME_IMAGE without its digest. A tag cannot
#   carry a digest, so builds on it pass the tag:
#     --build-arg RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
#
# For testing the Dockerfile only: these are not the official images (never publish an image
# built on them). As root, with debootstrap and podman or docker (a running engine):
#   scripts/standin-base-images.sh [--runtime podman|docker]
# Environment: CONTAINER_RUNTIME (as --runtime; default podman when installed, else docker),
# RUNTIME_FLAGS (the runtime's global flags, e.g. podman's --root/--storage-driver or docker's
# -H; the same variable scripts/build-image.sh reads), WORKDIR (where the roots are made and
# kept for the next run, default /tmp/archeio-standin), MIRROR (Debian mirror), TOOLCHAIN
# (rustup toolchain directory, default the one `rustc` runs from).
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "standin-base-images: $*" >&2; exit 1; }
runtime=${CONTAINER_RUNTIME:-}
while (($#)); do
  case $1 in
    --runtime) [ $# -ge 2 ] || die "--runtime needs a value"; runtime=$2; shift 2 ;;
    --runtime=*) runtime=${1#*=}; shift ;;
    -h | --help) sed -n '2,24s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
if [ -z "$runtime" ]; then
  if command -v podman >/dev/null; then runtime=podman; else runtime=docker; fi
fi
case $runtime in docker | podman) ;; *) die "--runtime must be podman or docker, not $runtime" ;; esac
[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot)"
command -v debootstrap >/dev/null || die "install debootstrap (apt-get install debootstrap)"
command -v "$runtime" >/dev/null || die "install $runtime"
read -r -a rtflags <<<"${RUNTIME_FLAGS:-}"
rt() { "$runtime" "${rtflags[@]}" "$@"; }
info_err=$(rt info 2>&1 >/dev/null) ||
  die "$runtime info fails (is the engine running, are RUNTIME_FLAGS right?): $info_err"

# The references the Dockerfile pins, read from it so that the two never disagree.
rust_tag=$(sed -n 's/^ARG RUST_IMAGE=//p' Dockerfile)
runtime_ref=$(sed -n 's/^ARG RUNTIME_IMAGE=//p' Dockerfile)
[ -n "$rust_tag" ] && [ -n "$runtime_ref" ] || die "no ARG RUST_IMAGE / RUNTIME_IMAGE in Dockerfile"
runtime_tag=${runtime_ref%@*}
want_rust=${rust_tag#rust:}; want_rust=${want_rust%%-*}

work=${WORKDIR:-/tmp/archeio-standin}
mirror=${MIRROR:-http://deb.debian.org/debian}
toolchain=${TOOLCHAIN:-$(rustc --print sysroot)}
have_rust=$("$toolchain/bin/rustc" --version | awk '{print $2}')
[ "$have_rust" = "$want_rust" ] || die "toolchain $toolchain is rustc $have_rust, $rust_tag wants $want_rust"
mkdir -p "$work"

exists() { rt image inspect "$1" >/dev/null 2>&1; }
# The same bytes for the same root: sorted, numeric owners, no access times.
pack() { tar -C "$1" --sort=name --numeric-owner --format=posix \
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime -c .; }

runtime_pkgs=(base-files netbase tzdata libc6 libgcc-s1 libgomp1 libstdc++6 libssl3 ca-certificates)
if ! exists "$runtime_tag"; then
  echo "== $runtime_tag: debootstrap, then only the files of ${runtime_pkgs[*]}"
  full=$work/runtime-full
  [ -e "$full/etc/debian_version" ] ||
    debootstrap --variant=minbase --include=ca-certificates,tzdata,netbase,libssl3,libgomp1 \
      bookworm "$full" "$mirror" >"$work/runtime-full.log"
  root=$work/distroless
  rm -rf "$root"
  mkdir -p "$root/var/lib/dpkg/status.d"
  for p in "${runtime_pkgs[@]}"; do
    deb=$(compgen -G "$full/var/cache/apt/archives/${p}_*.deb" | head -1) ||
      die "no .deb of $p in $full/var/cache/apt/archives (remove $full and run again)"
    dpkg-deb -x "$deb" "$root"
    env -u TMPDIR chroot "$full" dpkg-query -s "$p" >"$root/var/lib/dpkg/status.d/$p"
  done
  # The bundle is made by ca-certificates' maintainer script: take it from the full root.
  mkdir -p "$root/etc/ssl"
  rm -rf "$root/etc/ssl/certs"
  cp -a "$full/etc/ssl/certs" "$root/etc/ssl/certs"
  # No programs (ldd, update-ca-certificates, zdump and the like are scripts or tools);
  # docs but the copyright files.
  rm -rf "$root"/bin "$root"/sbin "$root"/usr/bin "$root"/usr/sbin "$root"/usr/libexec \
    "$root"/usr/share/man "$root"/usr/share/info "$root"/usr/share/lintian "$root"/etc/update-motd.d
  find "$root/usr/share/doc" -type f ! -name copyright -delete
  find "$root/usr/share/doc" -type d -empty -delete
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
    'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
    'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$root/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'tty:x:5:' 'staff:x:50:' \
    'nonroot:x:65532:' >"$root/etc/group"
  printf '%s\n' 'passwd: files' 'group: files' 'hosts: files dns' >"$root/etc/nsswitch.conf"
  install -d -m 1777 "$root/tmp"
  install -d -m 0700 "$root/root"
  install -d -m 0700 -o 65532 -g 65532 "$root/home/nonroot"
  if find "$root" -perm /6000 -type f | grep -q .; then die "setuid/setgid files in $root"; fi
  pack "$root" | rt import \
    --change 'USER 65532:65532' \
    --change 'WORKDIR /home/nonroot' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    - "$runtime_tag" >/dev/null
fi

if ! exists "$rust_tag"; then
  echo "== $rust_tag: debootstrap minbase + build-essential, toolchain from $toolchain"
  rust=$work/rust
  [ -e "$rust/etc/debian_version" ] ||
    debootstrap --variant=minbase \
      --include=build-essential,ca-certificates,pkg-config,git,libssl-dev,netbase \
      bookworm "$rust" "$mirror" >"$work/rust.log"
  # What Debian's slim variant drops, roughly.
  rm -rf "$rust"/usr/share/doc/* "$rust"/usr/share/man/* "$rust"/usr/share/info/* \
    "$rust"/var/lib/apt/lists/* "$rust"/var/cache/apt/*.bin "$rust"/var/cache/apt/archives/*.deb
  # The CA certificates this machine adds to its trust store (e.g. a TLS-intercepting egress
  # proxy's), so that cargo can reach crates.io from the build stage as it does here.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rust/usr/local/share/ca-certificates/"
    env -u TMPDIR chroot "$rust" update-ca-certificates >/dev/null
  fi
  dest="$rust/usr/local/rustup/toolchains/$want_rust-x86_64-unknown-linux-gnu"
  mkdir -p "$dest" "$rust/usr/local/cargo/bin"
  cp -a "$toolchain/bin" "$toolchain/lib" "$dest/"
  [ -d "$toolchain/libexec" ] && cp -a "$toolchain/libexec" "$dest/"
  for b in cargo rustc rustdoc; do
    ln -sfn "/usr/local/rustup/toolchains/$want_rust-x86_64-unknown-linux-gnu/bin/$b" \
      "$rust/usr/local/cargo/bin/$b"
  done
  pack "$rust" | rt import \
    --change 'ENV RUSTUP_HOME=/usr/local/rustup' \
    --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' - "$rust_tag" >/dev/null
fi
# podman names an imported rust:... localhost/rust:..., while FROM rust:... looks for
# docker.io/library/rust:...; Docker names it that already.
if [ "$runtime" = podman ]; then
  rt tag "localhost/$rust_tag" "docker.io/library/$rust_tag"
fi
rt images
echo "== stand-ins ready; build on them with --build-arg RUNTIME_IMAGE=$runtime_tag"
