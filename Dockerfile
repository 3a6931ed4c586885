# celeriac in a small runtime image: the `celeriac` binary only, run as a
# non-root user, with a healthcheck that asks the worker itself over the
# broker (`celeriac inspect ping` to its own node name).
#
#   docker build -t celeriac .
#   docker run --rm celeriac worker -b redis://redis:6379/0 -Q celery
#
# Stage 1 builds a release binary; stage 2 copies it alone onto Debian slim
# (glibc, CA certificates for rediss:// and amqps://).

# The newest stable Rust 1.x (the workspace needs at least its rust-version).
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p celeriac --bin celeriac \
 && install -D -m 0755 target/release/celeriac /out/celeriac

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 celeriac \
 && useradd --system --uid 10001 --gid celeriac --home-dir /var/lib/celeriac --create-home celeriac
COPY --from=build /out/celeriac /usr/local/bin/celeriac
USER celeriac:celeriac
WORKDIR /var/lib/celeriac
# The node name the healthcheck asks; `worker -n "$CELERIAC_NODE"` in the command.
ENV CELERIAC_NODE=celeriac@localhost
# A worker is healthy while it answers a ping over the broker
# (CELERY_BROKER_URL); docker-compose.yml gives `celeriac beat` its own check.
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
  CMD celeriac inspect ping -d "$CELERIAC_NODE" -t 5 >/dev/null || exit 1
ENTRYPOINT ["tini", "--", "celeriac"]
CMD ["--help"]
