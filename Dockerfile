# Multi-stage build: the same `cargo build --release --locked --bin herald` that CI runs.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin herald

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/herald --create-home herald
COPY --from=build /src/target/release/herald /usr/local/bin/herald
USER herald
WORKDIR /var/lib/herald
# Listen on all interfaces inside the container; set HERALD_API__KEY and
# HERALD_AUTH__HMAC_SECRET when running it.
ENV HERALD_HTTP__ADDR=0.0.0.0:8000
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD curl -fsS http://127.0.0.1:8000/health || exit 1
ENTRYPOINT ["herald"]
CMD ["serve"]
