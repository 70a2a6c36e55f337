# archeio image: a Rust build stage, then Debian slim with the stripped binary, the shipped
# configuration and a fixed non-root user (10001:10001). Made to run with a read-only root
# filesystem and no capabilities:
#   docker run --read-only --tmpfs /tmp --cap-drop ALL -p 8080:8080 -p 9090:9090 archeio
# scripts/build-image.sh builds it and smoke-tests it that way.
#
# Base images are pinned to exact tags. For a byte-for-byte reproducible base, append the
# digest the registry gives for the tag (docker buildx imagetools inspect TAG), e.g.
# --build-arg RUNTIME_IMAGE=debian:bookworm-20260824-slim@sha256:<digest>.
# No "# syntax=" line on purpose: it makes BuildKit pull a frontend image from a registry.
ARG RUST_IMAGE=rust:1.95.0-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-20260824-slim

FROM ${RUST_IMAGE} AS build
# cmake: libz-ng-sys, a Pingora dependency, builds with it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Strip here rather than in [profile.release]: benchmarks and profilers need the symbols.
# Set once, before both builds: a profile change would rebuild every dependency.
ENV CARGO_PROFILE_RELEASE_STRIP=symbols \
    CARGO_TERM_COLOR=never

# Dependencies in their own layer, rebuilt only when Cargo.toml or Cargo.lock change: build
# them against stub sources. benches/decision.rs is a stub too: cargo refuses a manifest
# whose [[bench]] file is missing, and the benches are not part of the build context.
COPY Cargo.toml Cargo.lock ./
# Pingora's proxy with our change (vendor/PATCHES.md), a dependency like the others.
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
RUN cargo build --release --locked --bin archeio \
 && cp target/release/archeio /archeio

FROM ${RUNTIME_IMAGE}
# CA certificates: pass-through mode, mirror checks and range URLs verify TLS against the
# system's roots.
# apt-get clean: the official image's docker-clean hook does it too, but not every base has it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/*
# A fixed user and group, the same in every build, for runAsUser/runAsGroup, file ownership
# of mounted secrets and --user 10001:10001.
RUN groupadd --gid 10001 archeio \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin archeio
COPY --from=build /archeio /usr/local/bin/archeio
COPY conf/archeio.yaml /etc/archeio/archeio.yaml
USER 10001:10001
# The shipped file is what a bare `docker run IMAGE` serves and `docker run IMAGE -t` tests
# (the binary reads ARCHEIO_CONFIG when no -c is given). The build fails if it is invalid.
ENV ARCHEIO_CONFIG=/etc/archeio/archeio.yaml
RUN ["/usr/local/bin/archeio", "-t", "-c", "/etc/archeio/archeio.yaml"]
# The gateway writes no file while it serves: Pingora writes pid_file only with -d and uses
# upgrade_sock only with -u and SIGQUIT, neither of which a container uses, so a read-only
# root filesystem works as it is. The shipped pid_file and upgrade_sock are under /tmp: mount
# a tmpfs there (--tmpfs /tmp, a Kubernetes emptyDir) if you ever use them. No VOLUME /tmp: it
# would leave an anonymous volume behind on every `docker run`, and Kubernetes ignores it.
EXPOSE 8080 9090
# Exit 0 when the admin listener's /healthz answers 200 (the address comes from
# ARCHEIO_CONFIG). Kubernetes ignores HEALTHCHECK: use httpGet probes on /healthz and /readyz.
# Podman keeps it only in the docker image format (podman build --format docker).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/archeio", "health"]
ENTRYPOINT ["/usr/local/bin/archeio"]
CMD []

# Last, so that a new version or revision only changes the image's metadata.
ARG VERSION=0.1.0
ARG REVISION=""
ARG SOURCE=""
LABEL org.opencontainers.image.title="archeio" \
      org.opencontainers.image.description="Container-registry redirect gateway on Pingora: manifests to the upstream, blobs to the closest mirror" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"
