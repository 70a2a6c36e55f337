# Build stage: Rust toolchain plus cmake (libz-ng-sys, a Pingora dependency, builds with it).
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin archeio

# Runtime stage: the binary, the default configuration, a non-root user.
FROM debian:bookworm-slim
# CA certificates: pass-through mode verifies TLS upstreams against the system's roots.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin archeio
COPY --from=build /src/target/release/archeio /usr/local/bin/archeio
COPY conf/archeio.yaml /etc/archeio/archeio.yaml
USER 10001
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/archeio"]
CMD ["-c", "/etc/archeio/archeio.yaml"]
