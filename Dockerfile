# syntax=docker/dockerfile:1
# mnemo-server on the CPU (docs/deploy.md#image):
#   docker build -t mnemo:cpu .
#   docker run --rm -p 50051:50051 -p 9464:9464 -v mnemo-store:/var/lib/mnemo/store mnemo:cpu
# The GPU image: deploy/docker/Dockerfile.cuda. tools/check_image.sh proves this recipe in CI
# without a Docker engine: it reads the runtime stage below (ENV, USER, VOLUME, EXPOSE,
# ENTRYPOINT) and runs the same setup and staging scripts in a debootstrap root.

# --- build: the release preset, as tools/run.sh and CI build it -------------------------------
FROM debian:bookworm AS build
WORKDIR /src
COPY tools/setup.sh tools/setup.sh
RUN tools/setup.sh build
COPY . .
RUN --mount=type=cache,target=/root/.cache/ccache \
    cmake --preset release -DMNEMO_BUILD_TESTS=OFF -DMNEMO_CUDA=OFF \
 && cmake --build --preset release --target mnemo-server mnemo-client \
 && deploy/docker/stage.sh build/release /stage

# --- runtime: Debian's shared libraries, the binaries, the default models ---------------------
FROM debian:bookworm-slim
RUN --mount=type=bind,source=deploy/docker,target=/tmp/mnemo-docker \
    sh /tmp/mnemo-docker/runtime-setup.sh
COPY --from=build /stage/ /
# Flags from the environment (MNEMO_<FLAG>; a command-line flag wins). One per line: read by
# tools/check_image.sh.
ENV MNEMO_LISTEN=0.0.0.0:50051
ENV MNEMO_METRICS_LISTEN=0.0.0.0:9464
ENV MNEMO_MODEL=default=/opt/mnemo/models/teacher
ENV MNEMO_DEVICE=cpu
ENV MNEMO_SESSION_STORE=/var/lib/mnemo/store
VOLUME /var/lib/mnemo/store
EXPOSE 50051 9464
USER 10001:10001
# No HEALTHCHECK: the image has no gRPC health client; Kubernetes probes grpc.health.v1 itself.
ENTRYPOINT ["/opt/mnemo/bin/mnemo-server"]
