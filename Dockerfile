# syntax=docker/dockerfile:1
# qscheduler: the server and CLI in one small image.
#
# Build:  docker build --build-arg GIT_COMMIT=$(git rev-parse --short HEAD) -t qscheduler .
# Run:    docker run -p 8082:8082 -v qs-data:/var/lib/qscheduler qscheduler serve --insecure
#         (or mount a configuration with an [auth] section at /etc/qscheduler/qscheduler.toml
#          and set QSCHEDULER_CONFIG; see README "Securing qscheduler").
#
# `deploy/check` runs the build command below outside a container, so CI
# proves that it compiles with the locked dependencies.

# --- build: the release binary, from the locked dependency set -------------
FROM rust:1.95-slim-bookworm AS build
# `qscheduler --version` names the commit; .git is not in the build context.
ARG GIT_COMMIT=unknown
ENV QSCHEDULER_GIT_COMMIT=${GIT_COMMIT}
WORKDIR /src
COPY . .
# The registry and target caches survive between builds (BuildKit); the binary
# is copied out of the cache mount in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin qscheduler \
    && install -D -m 0755 target/release/qscheduler /out/qscheduler \
    && install -d -m 0750 /out/var/lib/qscheduler

# --- runtime: glibc and libgcc only, no shell, no package manager ---------
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/qscheduler /usr/local/bin/qscheduler
# The data directory belongs to the image's non-root user (65532), so an
# empty volume mounted there is writable; the root filesystem can be read-only.
COPY --from=build --chown=65532:65532 /out/var/lib/qscheduler /var/lib/qscheduler
USER 65532:65532
ENV QSCHEDULER_LISTEN=0.0.0.0:8082 \
    QSCHEDULER_DATA_DIR=/var/lib/qscheduler \
    QSCHEDULER_LOG_FORMAT=json
VOLUME ["/var/lib/qscheduler"]
EXPOSE 8082
ENTRYPOINT ["/usr/local/bin/qscheduler"]
CMD ["serve"]
