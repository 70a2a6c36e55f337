# archeio image: a Rust build stage, then distroless (glibc, libgcc, CA certificates, tzdata;
# no shell, no package manager) with the stripped binary, the shipped configuration and a
# CycloneDX bill of materials, run as the fixed non-root user 10001:10001. Made to run with a
# read-only root filesystem and no capabilities:
#   docker run --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges \
#     -p 127.0.0.1:8080:8080 -p 127.0.0.1:9090:9090 archeio
# scripts/build-image.sh builds it (reproducibly: SOURCE_DATE_EPOCH from the commit) and
# smoke-tests it; tests/image/run.py is the test command's image test.
#
# The runtime base is pinned by the digest of gcr.io/distroless/cc-debian12:nonroot's
# multi-platform index (amd64 and arm64). That digest was not read from gcr.io (this machine
# reaches no registry): it was seen on 2026-12-04, through a code search, pinned to this tag in
# public Dockerfiles, e.g. github.com/SIIR3X/auth-api and
# github.com/IggyGG/llm-multiaccount-proxy. Check or refresh it where gcr.io is reachable:
#   docker buildx imagetools inspect gcr.io/distroless/cc-debian12:nonroot
# The build image is pinned by tag only: nothing of it reaches the runtime but the binary.
# Without registry access, scripts/standin-base-images.sh makes local stand-ins; a tag cannot
# carry a digest, so build on them with --build-arg RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot.
# arm64: both bases are multi-platform, and nothing here names an architecture; build with
# --platform linux/arm64 (natively on arm64, or under QEMU emulation: slow).
# No "# syntax=" line on purpose: it makes BuildKit pull a frontend image from a registry.
ARG RUST_IMAGE=rust:1.95.0-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f

FROM ${RUST_IMAGE} AS build
# cmake: libz-ng-sys, a Pingora dependency, builds with it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
# The bill of materials' tool, pinned, in its own layer.
RUN cargo install cargo-cyclonedx --version 0.5.9 --locked \
 && rm -rf /usr/local/cargo/registry
WORKDIR /src
# Strip here rather than in [profile.release]: benchmarks and profilers need the symbols.
# Set once, before both builds: a profile change would rebuild every dependency.
ENV CARGO_PROFILE_RELEASE_STRIP=symbols \
    CARGO_TERM_COLOR=never

# Dependencies in their own layer, rebuilt only when Cargo.toml or Cargo.lock change: build
# them against stub sources. benches/decision.rs is a stub too: cargo refuses a manifest
# whose [[bench]] file is missing, and the benches are not part of the build context.
COPY Cargo.toml Cargo.lock ./
# Pingora's core, HTTP types and proxy with our changes (vendor/PATCHES.md), dependencies
# like the others.
COPY vendor/ vendor/
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && : > src/lib.rs \
 && echo 'fn main() {}' > benches/decision.rs \
 && cargo build --release --locked --bin archeio \
 && rm -rf src \
    target/release/archeio target/release/archeio.d \
    target/release/deps/archeio-* target/release/deps/libarcheio-* \
    target/release/.fingerprint/archeio-*

# The crate itself. The stub's fingerprints are gone (above), so cargo builds the real
# sources whatever their timestamps; a src/ change rebuilds this crate only.
COPY data/ data/
COPY src/ src/
COPY conf/archeio.yaml conf/archeio.yaml
# Declared here, after the dependency layer: a new commit rebuilds only the crate.
# REVISION: archeio_build_info's revision label (compiled in). SOURCE_DATE_EPOCH: the bill of
# materials' timestamp (and no random serial number), and every file's time in /out.
ARG REVISION=""
ARG SOURCE_DATE_EPOCH
# /out is the runtime's whole addition. The shipped file is tested here with the binary that
# will serve it (the runtime has no shell to run a check in); the build fails if it is invalid.
# The bill of materials covers every target (--target all), as Cargo.lock does, so that it
# is the same for an arm64 build.
RUN ARCHEIO_REVISION="$REVISION" cargo build --release --locked --bin archeio \
 && install -D -m 0755 target/release/archeio /out/usr/local/bin/archeio \
 && /out/usr/local/bin/archeio -t -c conf/archeio.yaml \
 && install -D -m 0644 conf/archeio.yaml /out/etc/archeio/archeio.yaml \
 && cargo cyclonedx --all --target all --format json --spec-version 1.5 \
      --override-filename archeio.cdx -q \
 && install -D -m 0644 archeio.cdx.json /out/usr/share/doc/archeio/sbom.cdx.json \
 && if [ -n "$SOURCE_DATE_EPOCH" ]; then \
      find /out -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +; \
    fi

FROM ${RUNTIME_IMAGE}
COPY --from=build /out/ /
# A fixed user and group, the same in every build, for runAsUser/runAsGroup, file ownership
# of mounted secrets and --user 10001:10001 (deploy/kubernetes uses it). Not distroless's
# nonroot (65532): a numeric user needs no /etc/passwd entry, and keeping 10001 keeps every
# manifest and mounted-secret mode as it was. WORKDIR /: nonroot's home is 0700, closed to
# 10001.
USER 10001:10001
WORKDIR /
# The shipped file is what a bare `docker run IMAGE` serves and `docker run IMAGE -t` tests
# (the binary reads ARCHEIO_CONFIG when no -c is given).
ENV ARCHEIO_CONFIG=/etc/archeio/archeio.yaml
# The gateway writes no file while it serves: Pingora writes pid_file only with -d and uses
# upgrade_sock only with -u and SIGQUIT, neither of which a container uses, so a read-only
# root filesystem works as it is. The shipped pid_file and upgrade_sock are under /tmp: mount
# a tmpfs there (--tmpfs /tmp, a Kubernetes emptyDir) if you ever use them. No VOLUME /tmp: it
# would leave an anonymous volume behind on every `docker run`, and Kubernetes ignores it.
EXPOSE 8080 9090
# Exit 0 when the admin listener's /healthz answers 200. Exec form: there is no shell. The
# address is the running gateway's: `archeio health` reads PID 1's command line and
# environment (its -c, else its ARCHEIO_CONFIG, ARCHEIO_ADMIN_PORT), so `IMAGE -c FILE` and
# `-e ARCHEIO_CONFIG=...` are both followed. Kubernetes ignores HEALTHCHECK: use httpGet
# probes on /healthz and /readyz. Podman keeps it only in the docker image format (podman
# build --format docker).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/archeio", "health"]
ENTRYPOINT ["/usr/local/bin/archeio"]
CMD []

# Last, so that a new version or revision only changes the image's metadata.
# SOURCE: where the source is, a URL (scripts/build-image.sh never puts a local path here).
ARG VERSION=0.1.0
ARG REVISION=""
ARG SOURCE=""
LABEL org.opencontainers.image.title="archeio" \
      org.opencontainers.image.description="Container-registry redirect gateway on Pingora: manifests to the upstream, blobs to the closest mirror" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"
