# syntax=docker/dockerfile:1
# The atticd container image: atticd, atticadm and attic on Debian, run as
# the user atticd, SQLite and blobs on the /data volume, config in
# /etc/atticd/server.toml taking its secrets from the environment.
#
#   docker build -t atticd .
#   docker run -d -p 8080:8080 -v attic-data:/data \
#       -e ATTIC_API_ENDPOINT=http://localhost:8080/ \
#       -e ATTIC_TOKEN_ROOT_KEY="ed25519-private/$(openssl rand -hex 32)" atticd
#
# Build arguments:
#   RUST_IMAGE  the toolchain image of the build stage
#   BASE_IMAGE  the runtime image (Debian bookworm or a derivative)
#   BINARIES    `build` (default) compiles the binaries in the build stage;
#               `prebuilt` takes them from a build context named
#               `prebuilt-binaries` holding atticd, atticadm and attic
#               (`--build-context prebuilt-binaries=DIR`), built on a host
#               whose glibc is no newer than the runtime image's
ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim
ARG BINARIES=build

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# Name the packages: a build of the whole workspace would give the server
# the test suite's features (`fault-injection`).
RUN cargo build --release --locked -p server -p client \
    && install -D -m 0755 -t /out target/release/atticd target/release/atticadm target/release/attic

FROM scratch AS prebuilt
COPY --from=prebuilt-binaries atticd atticadm attic /out/

FROM ${BINARIES} AS binaries
# An instruction of its own, so this stage is an image of its own: buildah
# 1.28 without --layers fails removing a stage that merely renames another.
LABEL org.opencontainers.image.title="atticd binaries"

FROM ${BASE_IMAGE}
# ca-certificates for S3 and PostgreSQL over TLS; curl for the health check.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --user-group --home-dir /data --no-create-home --shell /usr/sbin/nologin atticd \
    && install -d -o atticd -g atticd -m 0700 /data
COPY deploy/server.toml deploy/server-s3.toml /etc/atticd/
COPY deploy/entrypoint.sh /usr/local/bin/atticd-entrypoint
COPY --from=binaries /out/ /usr/local/bin/
ENV HOME=/data
VOLUME /data
EXPOSE 8080
# On loopback, at the port of ATTIC_LISTEN (8080 unless it says otherwise).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD listen="${ATTIC_LISTEN:-0.0.0.0:8080}"; \
        curl -fsS -o /dev/null "http://127.0.0.1:${listen##*:}/_health" || exit 1
ENTRYPOINT ["/usr/local/bin/atticd-entrypoint"]
CMD ["atticd", "-f", "/etc/atticd/server.toml", "--data-dir", "/data"]
