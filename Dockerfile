# syntax=docker/dockerfile:1
#
# pgtenant image: `docker build -t pgtenant .` at the repository root.
# The default command serves with /etc/pgtenant/pgtenant.toml (mount your
# own); any other subcommand runs with `docker run --rm pgtenant tenant list`.

# The oldest Rust that builds the locked dependencies (sha2 0.11 needs 1.88).
ARG RUST_VERSION=1.88

# --- builder: compiles the release binary ------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /build
# No debug info in the image's binary (the release profile keeps some for profiling).
ENV CARGO_PROFILE_RELEASE_DEBUG=0

# Dependencies first, against stub sources: this layer is rebuilt only when
# Cargo.toml or Cargo.lock change, not on every source edit.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > benches/pgbench.rs \
    && echo 'fn main() {}' > benches/idle_memory.rs \
    && echo 'fn main() {}' > benches/tenants.rs \
    && cargo build --release --locked --bin pgtenant \
    && rm -rf src target/release/pgtenant* target/release/deps/pgtenant* \
        target/release/.fingerprint/pgtenant-*

# The real sources; sql/ is compiled in (include_str!) and shipped too.
COPY src ./src
COPY sql ./sql
RUN cargo build --release --locked --bin pgtenant \
    && install -D -m 0755 target/release/pgtenant /out/pgtenant

# --- runtime: the binary, pg_dump for backups, a non-root user ----------------
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates postgresql-client \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system pgtenant \
    && useradd --system --gid pgtenant --home-dir /var/lib/pgtenant --create-home \
        --shell /usr/sbin/nologin pgtenant

COPY --from=builder /out/pgtenant /usr/local/bin/pgtenant
COPY sql /usr/share/pgtenant/sql
COPY deploy/pgtenant.toml /etc/pgtenant/pgtenant.toml

# Subcommands other than serve find the same file.
ENV PGTENANT_CONFIG=/etc/pgtenant/pgtenant.toml
USER pgtenant
WORKDIR /var/lib/pgtenant

# 6432: PostgreSQL clients; 9930: HTTP (/metrics, /healthz, /readyz).
EXPOSE 6432 9930
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["pgtenant", "healthcheck", "--addr", "127.0.0.1:9930"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["pgtenant"]
CMD ["serve", "--config", "/etc/pgtenant/pgtenant.toml"]
