# syntax=docker/dockerfile:1
# shopflow's image: the release binary, built in a full Rust image, on a slim Debian runtime.
#
#   docker build -t shopflow .          (docker compose builds it as shopflow:local)
#   docker run --rm shopflow check-config
#
# The entrypoint is the binary: the command is a subcommand and its flags (default `run`).
# Configuration comes from SHOPFLOW__SECTION__KEY environment variables (see config/shopflow.toml).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
# librdkafka is built from source by rdkafka-sys (make, a C/C++ compiler: in the image); OpenSSL
# and zlib are linked dynamically.
RUN apt-get update \
    && apt-get install -y --no-install-recommends pkg-config libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The release profile keeps line tables for profiling (debug = 1); the image does not need them.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin shopflow \
    && cp target/release/shopflow /usr/local/bin/shopflow

FROM debian:${DEBIAN_RELEASE}-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/shopflow --shell /usr/sbin/nologin shopflow \
    && mkdir -p /var/lib/shopflow/state \
    && chown -R shopflow:shopflow /var/lib/shopflow
COPY --from=build /usr/local/bin/shopflow /usr/local/bin/shopflow
USER shopflow
WORKDIR /var/lib/shopflow
# The HTTP server (docs/http.md) on every interface of the container: the dashboard, /metrics,
# /health and /ready. The health check is `run`'s (and `demo`'s); other subcommands have no server,
# so compose disables it for them.
ENV SHOPFLOW__HTTP__LISTEN=0.0.0.0:8080
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/health >/dev/null || exit 1
# shopflow stops cleanly on Ctrl-C: offsets committed, the sink drained.
STOPSIGNAL SIGINT
ENTRYPOINT ["shopflow"]
CMD ["run"]
