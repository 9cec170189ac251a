# syntax=docker/dockerfile:1
# segd and segctl in a small non-root image. Build: docker build -t segd .
# Run:   docker run -p 7400:7400 -v segd-data:/data segd
# See README.md, "Container image", for the admin port and the watched directory.

FROM rust:1-bookworm AS builder
WORKDIR /src
# Manifests first: the dependency download is its own layer, redone only when
# Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
COPY loadtest/Cargo.toml loadtest/Cargo.toml
COPY benches benches
# Stub sources so the manifests parse; only the download is kept.
RUN mkdir -p loadtest/src src/bin \
    && touch loadtest/src/main.rs src/lib.rs src/bin/segd.rs \
    && cargo fetch --locked \
    && rm -rf src loadtest/src
COPY build.rs ./
COPY proto proto
COPY loadtest loadtest
COPY src src
# The target directory lives in a BuildKit cache, so a code change recompiles
# segd only, not its dependencies (the registry is in the layer above).
RUN --mount=type=cache,target=/src/target \
    cargo build --release --locked --offline --bins \
    && install -D -m 0755 target/release/segd target/release/segctl -t /out/

FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 segd \
    && useradd --system --uid 10001 --gid segd --home-dir /data --no-create-home --shell /usr/sbin/nologin segd \
    && mkdir -p /data \
    && chown segd:segd /data
COPY --from=builder /out/segd /out/segctl /usr/local/bin/
USER 10001:10001
# The query port listens on every interface. The admin port (pushes,
# rollbacks) stays on loopback unless a token is set: to expose it, run with
# SEGD_ADMIN_TOKEN=... and SEGD_ADMIN_LISTEN=0.0.0.0:7401 (segd refuses a
# non-loopback admin address without a token). Metrics (Prometheus, plain
# HTTP) listen on every interface for the scraper.
ENV SEGD_LISTEN=0.0.0.0:7400 \
    SEGD_ADMIN_LISTEN=127.0.0.1:7401 \
    SEGD_METRICS_LISTEN=0.0.0.0:9400 \
    SEGD_DATA_DIR=/data
EXPOSE 7400 7401 9400
VOLUME /data
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["segctl", "health", "--addr", "http://127.0.0.1:7400"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["segd"]
CMD ["serve", "--data-dir", "/data"]
