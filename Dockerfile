# syntax=docker/dockerfile:1
# Tollgate gateway image: `docker build -t tollgate .` then
# `docker run -p 4000:4000 -v tollgate-data:/data tollgate` (see README.md, "Docker").

ARG PYTHON_IMAGE=python:3.11-slim

# -- builder: a self-contained virtualenv with tollgate and its [providers,postgres] extras (no dev tools) ----------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv
ENV PATH="/opt/venv/bin:${PATH}"

WORKDIR /src
# README.md is the package's long description (pyproject.toml `readme`), so the build needs it.
COPY pyproject.toml README.md ./
COPY gateway/ gateway/
COPY evaluators/ evaluators/
# A local project, not a registry name: its dependency ranges live in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir '.[providers,postgres]'

# -- runtime ----------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

RUN groupadd --system --gid 10001 tollgate \
    && useradd --system --uid 10001 --gid tollgate --create-home --home-dir /home/tollgate tollgate \
    && mkdir -p /data \
    && chown tollgate:tollgate /data

# Same base image and path as the builder, so the venv's interpreter links stay valid.
COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
COPY policies/ /app/policies/

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TOLLGATE_HOST=0.0.0.0 \
    TOLLGATE_DATA_DIR=/data

USER 10001:10001
VOLUME ["/data"]
EXPOSE 4000

# slim has no curl: probe with the standard library. /healthz needs no key.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('TOLLGATE_PORT', '4000'), timeout=4)"]

ENTRYPOINT ["tollgate"]
CMD ["serve", "--policy", "/app/policies/default.yaml"]
