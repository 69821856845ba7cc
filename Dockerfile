# syntax=docker/dockerfile:1
# One image for every flowmesh app ID: `flowmesh worker --app-id <id>` picks the app at run time.
#
#   docker build -t flowmesh:0.1.0 .
#   docker run --rm -e FLOWMESH_AMQP_URL=amqp://... flowmesh:0.1.0 worker --app-id app2
#
# The example apps in workers/ are copied to /app (the working directory), where the CLI finds
# them by convention (workers/<app id with - as _>.py). For your own apps, copy your package
# in the same way or install it, and pass --module.
#
# EXTRAS selects optional dependencies: "gpu" (the default) adds numpy for the gpu-trainer
# example. For CUDA training, build an image that also installs torch (see deploy/README.md).

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=gpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY flowmesh ./flowmesh
# Wheels for flowmesh and every dependency, so the runtime stage needs no build tools.
RUN pip wheel --wheel-dir /wheels ".[${EXTRAS}]"

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels /wheels/*.whl
RUN groupadd --system --gid 10001 flowmesh \
    && useradd --system --uid 10001 --gid flowmesh --home-dir /app --shell /usr/sbin/nologin flowmesh
WORKDIR /app
COPY --chown=root:root workers ./workers
# A numeric user, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
# SIGTERM (Docker's and Kubernetes' stop signal) makes a worker drain in-flight work.
STOPSIGNAL SIGTERM
ENTRYPOINT ["flowmesh"]
CMD ["--help"]
