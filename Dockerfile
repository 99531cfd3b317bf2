# One image for every Baton service; compose.yaml picks the command per service:
#   python -m baton.runner.main     run router (+ event relay)
#   python -m baton.runner.worker   worker runtime (scale it out)
#   python -m baton.api.main        HTTP API (+ projector)
#
# The base image is a build argument so air-gapped or mirrored registries work
# (compose passes ${BATON_PYTHON_IMAGE:-python:3.11-slim}). Any Debian-based image
# with python >= 3.11, venv and pip will do.
ARG BASE_IMAGE=python:3.11-slim

# --- build stage: a self-contained virtualenv under /opt/baton --------------------------
FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/baton
ENV PATH=/opt/baton/bin:$PATH
WORKDIR /src
# Dependencies first, from pyproject.toml alone: this layer is reused until they change.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
# Then the project itself (non-editable). pyproject maps each baton.* package from
# libs/ and services/ explicitly, so both trees are needed.
COPY libs/ libs/
COPY services/ services/
RUN pip install . \
    && python -c "import baton.api.main, baton.runner.main, baton.runner.worker, baton.events"

# --- runtime stage ------------------------------------------------------------------------
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="baton" \
      org.opencontainers.image.description="Baton services: runner, worker, API (one image, command per service)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/baton/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY --from=build /opt/baton /opt/baton
# Non-root: a fixed uid so volume permissions are predictable; a real home for shell steps.
RUN groupadd --gid 10001 baton \
    && useradd --uid 10001 --gid baton --create-home --home-dir /home/baton --shell /bin/sh baton
USER baton:baton
WORKDIR /home/baton
EXPOSE 8080
CMD ["python", "-m", "baton.api.main"]
