# syntax=docker/dockerfile:1
# Herald's container image: a release build of the `herald` binary on Debian slim, run as an
# unprivileged user, with a health check on /healthz. See docs/deployment.md "Container image".
#
#   docker build -t herald .
#   docker run -p 8000:8000 -e HERALD_AUTH__HMAC_SECRET=... herald
#
# Not built by this repository's tests (no Docker engine there): crates/herald/tests/ops_kit.rs
# runs hadolint on this file, checks its essentials (stages, user, port, binary, health check) and
# runs the HEALTHCHECK command itself against a live server.

# ---- build ------------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src
# The whole workspace (.dockerignore keeps only what the build reads): cargo resolves every member.
COPY . .
# The release profile keeps line tables (debug = 1) for backtraces; the image strips nothing else.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p herald \
    && cp target/release/herald /usr/local/bin/herald

# ---- run --------------------------------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates only for `rediss://` and other TLS clients that read the system roots (Herald's
# own HTTPS clients carry the Mozilla roots). bash is in the base image (health check below).
# Not pinned (DL3008): bookworm's security updates replace the version.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin herald
COPY --from=builder /usr/local/bin/herald /usr/local/bin/herald
# The example single-node configuration (listen 0.0.0.0:8000); mount your own over it, or point
# HERALD_CONFIG elsewhere. Secrets come from the environment (HERALD_AUTH__HMAC_SECRET,
# HERALD_AUTH__API_KEYS), never from the image.
COPY deploy/config/single-node.toml /etc/herald/herald.toml
ENV HERALD_CONFIG=/etc/herald/herald.toml
# Numeric, so Kubernetes' runAsNonRoot can verify it (the user `herald` made above).
USER 10001:10001
EXPOSE 8000
# No curl in the image: bash's /dev/tcp sends the request. The Host header must be one the server
# answers to (server.allowed_hosts; the example config lists "localhost"): set HEALTHCHECK_HOST
# otherwise. With [tls] on the listener this plain-text probe fails: terminate TLS in front of the
# container, or replace the check.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8000 && printf 'GET /healthz HTTP/1.1\\r\\nHost: %s\\r\\nConnection: close\\r\\n\\r\\n' \"${HEALTHCHECK_HOST:-localhost}\" >&3 && IFS= read -r status <&3 && [[ $status == *' 200 '* ]]"]
# SIGTERM drains (docs/operations.md "Shutdown"): give `docker stop -t` more than
# server.shutdown_timeout (10 s by default).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/herald"]
CMD ["serve"]
