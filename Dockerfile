# syntax=docker/dockerfile:1
# Gatehouse container image: a static (musl) binary on distroless, running as non-root.
#   docker build -t gatehouse:0.1.0 .
# The image holds the binary and the default policies (also embedded in the binary), nothing
# else: no shell, no package manager. Configure it with GATEHOUSE_* or a mounted config file.

ARG RUST_VERSION=1.95
ARG ALPINE_VERSION=3.22

FROM rust:${RUST_VERSION}-alpine${ALPINE_VERSION} AS build
# ring compiles a little C and assembly; musl-dev provides the static C runtime.
RUN apk add --no-cache musl-dev
WORKDIR /src
# The whole crate (see .dockerignore for what stays out).
COPY . .
# On Alpine the host target is *-linux-musl, whose default is a static C runtime: the binary
# needs no libc at run time (distroless/static has none).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin gatehouse \
    && cp target/release/gatehouse /gatehouse \
    && mkdir -p /rootfs/var/lib/gatehouse

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /gatehouse /usr/local/bin/gatehouse
COPY policies/default.yaml /etc/gatehouse/policies/default.yaml
# The data directory (development certificates when none are configured); in Kubernetes an
# emptyDir is mounted here because the root filesystem is read-only.
COPY --from=build --chown=65532:65532 /rootfs/var/lib/gatehouse /var/lib/gatehouse
# Container defaults as a config file rather than GATEHOUSE_* variables, so that a config file
# given on the command line (as the Helm chart does) replaces them instead of being overridden.
COPY <<EOF /etc/gatehouse/gatehouse.yaml
listen: 0.0.0.0:8443
health_listen: 0.0.0.0:8080
policies: /etc/gatehouse/policies
data_dir: /var/lib/gatehouse
log_format: json
EOF
USER 65532:65532
EXPOSE 8443 8080
ENTRYPOINT ["/usr/local/bin/gatehouse"]
CMD ["--config", "/etc/gatehouse/gatehouse.yaml", "serve"]
