# Images of mcp-edge (target `proxy`), mcp-docs (target `backend`) and, for the ACME demo
# profile, pebble (target `pebble`). Built by `docker compose build`; see compose.yaml.

# The rustc the committed profiles were recorded with (pgo/rustc-version): another one builds
# without their effect (scripts/pgo-use says so).
ARG RUST_IMAGE=rust:1.95.0-slim-bookworm
ARG BASE_IMAGE=debian:bookworm-slim
# Where the binaries come from: the `build` stage compiles them. The repository's compose test,
# on a machine without an image registry, sets this to `prebuilt` (binaries built on the host).
ARG BINARIES=build

# ---- build: mcp-docs (release), mcp-edge static on musl with its dependency list and SBOM ---
FROM ${RUST_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake musl-tools python3 binutils \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && rustup target add "$(uname -m)-unknown-linux-musl" \
 && cargo install --locked --quiet cargo-auditable@0.7.7 cargo-cyclonedx@0.5.9
WORKDIR /src
# Dependencies first: this layer is reused while only the sources change.
COPY Cargo.toml Cargo.lock ./
COPY proxy/Cargo.toml proxy/
COPY backend/Cargo.toml backend/
COPY tests/Cargo.toml tests/
COPY bench/Cargo.toml bench/
# pingora-core, patched (vendor/README.md)
COPY vendor vendor
# The profile the release build is optimised with (scripts/pgo-use), and the one way the musl
# build is made (scripts/musl-build): the layer below builds the dependencies as the real build
# will, so it reuses them.
COPY pgo pgo
COPY scripts/pgo-use scripts/musl-build scripts/
RUN mkdir -p proxy/src backend/src backend/benches tests/src bench/src \
 && echo 'fn main() {}' > proxy/src/main.rs && touch proxy/src/lib.rs \
 && echo 'fn main() {}' > backend/src/main.rs && touch backend/src/lib.rs \
 && echo 'fn main() {}' > backend/benches/search.rs && touch tests/src/lib.rs bench/src/lib.rs \
 && cargo build --release --locked -p mcp-docs \
 && scripts/musl-build
COPY proxy proxy
COPY backend backend
COPY scripts/static-build scripts/
RUN touch proxy/src/*.rs backend/src/*.rs \
 && cargo build --release --locked -p mcp-docs \
 && scripts/static-build \
 && mkdir /out && cp target/static/mcp-edge target/static/mcp-edge.cdx.json target/release/mcp-docs /out/ \
 && strip /out/mcp-docs

# ---- prebuilt: binaries built outside Docker (target/docker-bins/) ---------------------------
# (The wildcard keeps this unused stage harmless for builders that build every stage.)
FROM scratch AS prebuilt
COPY Cargo.toml target/docker-bins* /out/

FROM ${BINARIES} AS binaries

# ---- runtime: slim Debian, CA roots, an unprivileged user ------------------------------------
FROM ${BASE_IMAGE} AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /nonexistent --shell /usr/sbin/nologin mcp

# ---- proxy: nothing but the static binary, CA roots and its SBOM (no shell, no libc) ---------
# The health check is the binary itself, asking the admin listener at its default address
# without reading the configuration (override it when listen.metrics is elsewhere or speaks
# TLS: `mcp-edge health --address ADDR [--tls-cert FILE]`); user 10001 needs no /etc/passwd.
FROM runtime AS proxy-files
RUN mkdir -p /var/lib/mcp-edge/certs /etc/mcp-edge /run/mcp-edge \
 && chown 10001:10001 /var/lib/mcp-edge/certs /run/mcp-edge \
 && chmod 0700 /var/lib/mcp-edge/certs /run/mcp-edge

FROM scratch AS proxy
COPY --from=proxy-files /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=proxy-files /var/lib/mcp-edge /var/lib/mcp-edge
COPY --from=proxy-files /etc/mcp-edge /etc/mcp-edge
COPY --from=proxy-files /run/mcp-edge /run/mcp-edge
COPY --from=binaries /out/mcp-edge /usr/local/bin/mcp-edge
COPY --from=binaries /out/mcp-edge.cdx.json /usr/share/mcp-edge/sbom.cdx.json
USER 10001:10001
ENV MCP_EDGE_CONFIG=/etc/mcp-edge/compose.yaml
EXPOSE 80 443
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/mcp-edge", "health", "--address", "127.0.0.1:9100"]
ENTRYPOINT ["/usr/local/bin/mcp-edge"]
CMD ["run"]

# ---- backend: the docs MCP server with this project's documentation as its corpus ------------
FROM runtime AS backend
COPY --from=binaries /out/mcp-docs /usr/local/bin/mcp-docs
COPY README.md /usr/share/mcp-docs/README.md
COPY docs /usr/share/mcp-docs/docs
USER mcp
ENV MCP_DOCS_LISTEN=0.0.0.0:8080 MCP_DOCS_DIR=/usr/share/mcp-docs
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/mcp-docs"]

# ---- pebble: Let's Encrypt's test CA, for `docker compose --profile acme-demo up` -------------
FROM runtime AS pebble
RUN apt-get update \
 && apt-get install -y --no-install-recommends pebble openssl \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
COPY config/acme-demo/pebble-start.sh /usr/local/bin/pebble-start
RUN mkdir /pebble-ca && chown mcp:mcp /pebble-ca
USER mcp
ENTRYPOINT ["/usr/local/bin/pebble-start"]

# ---- ha-tools: Redis and HAProxy from Debian, for `docker compose --profile ha up` -----------
FROM ${BASE_IMAGE} AS ha-tools
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server haproxy \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && mkdir /data && chown 10001:10001 /data
USER 10001:10001

# ---- prometheus: scrapes mcp-edge with the shipped alert rules, `--profile monitoring` --------
FROM ${BASE_IMAGE} AS prometheus
RUN apt-get update \
 && apt-get install -y --no-install-recommends prometheus \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
USER 10001:10001
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus", "--config.file=/etc/prometheus/prometheus.yml", \
            "--storage.tsdb.path=/tmp/prometheus", "--web.listen-address=:9090"]
