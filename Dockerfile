# syntax=docker/dockerfile:1
#
# The servicedb operator image: the statically linked `servicedb` binary at
# /usr/local/bin/servicedb on distroless/static, running as uid 65532.
#
# Database pods copy this same binary out of the image (the init container
# runs `servicedb copy-binary`) and run it inside the engine's official image
# as the engine's uid, so it must be statically linked (crt-static, exactly
# what `make static` builds) and executable by any uid.
#
#   docker build -t ghcr.io/servicedb/servicedb:0.1.0 .
#
# NOT BUILT HERE: the development machine has no Docker engine (nor any other
# OCI image builder), so this file has not been built. What it runs has been:
# the build stage's cargo command is `make static`, which produces a
# static-pie binary on Debian 12 with this Rust version.
# A .dockerignore with `target/` keeps the build context small (only
# Cargo.toml, Cargo.lock and src/ are copied in).

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Cache mounts keep the registry and the build outputs between builds; the
# binary is copied out of the mounted target dir before the step ends. A
# dynamically linked binary would build fine and then fail in every database
# pod, so a program interpreter or a NEEDED library fails the build.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    RUSTFLAGS="-C target-feature=+crt-static" \
      cargo build --locked --release --target x86_64-unknown-linux-gnu \
 && cp target/x86_64-unknown-linux-gnu/release/servicedb /servicedb \
 && strip /servicedb \
 && if readelf -l /servicedb | grep -q INTERP || readelf -d /servicedb | grep -q NEEDED; then \
      echo "servicedb is not statically linked" >&2; exit 1; \
    fi \
 && /servicedb --version

# distroless/static: no shell, no package manager, no libc; CA certificates
# and the `nonroot` user (65532) only.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build --chmod=0555 /servicedb /usr/local/bin/servicedb
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/servicedb"]
CMD ["operator"]
