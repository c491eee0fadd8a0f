# syntax=docker/dockerfile:1
# MicroClaw: one image, one binary; the role is the first argument
# (receiver, worker, admin, discord-gateway, migrate).
#
#   docker build -t microclaw .
#   docker run --rm microclaw --help
#
# Builder and runtime are both Debian 12 (bookworm), so the binary's glibc matches.

ARG RUST_VERSION=1.94

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# The whole workspace: src/, jobs/, migrations/ and microclaw.example.toml are
# compiled in; benches/ and tests/ are declared targets the manifest must find.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin microclaw \
    && install -D -m 0755 target/release/microclaw /out/microclaw

# glibc, libgcc and CA certificates, no shell; user nonroot = 65532:65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/microclaw /usr/local/bin/microclaw
# The same numeric user as the Helm chart's securityContext (runAsNonRoot needs a number).
USER 65532:65532
# receiver, worker (and discord-gateway) health/metrics, admin
EXPOSE 8080 8081 8082
ENTRYPOINT ["microclaw"]
CMD ["--help"]
