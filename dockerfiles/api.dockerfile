# The serving image: the evaluated ONNX artifact behind FastAPI + onnxruntime.
# No torch, no dvc, no credentials: fetch the model *before* the build, e.g.
#   dvc pull models/model.onnx models/model.json models/reference.json models/ood.json \
#     models/golden.json
#   (or: dvc repro)
#   docker build -f dockerfiles/api.dockerfile \
#     --build-arg GIT_REVISION="$(git rev-parse HEAD)" -t imgclf-api .
#   docker run --rm -p 8000:8000 imgclf-api
# The build fails if model.onnx does not hash to its card's model_sha256, or if the card
# is not the model that metrics/evaluate.json evaluated (python -m imgclf.artifact.integrity).
#
# Base image pinned by digest: python:3.11-slim (the multi-arch index digest; refresh with
# `make pin-images`). PYTHON_IMAGE overrides it, e.g. for a local mirror.
ARG PYTHON_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7
FROM ${PYTHON_IMAGE}

ARG GIT_REVISION=""
# The registry version and stage this image is built for (the release workflow sets them;
# GET /model reports them, and the live check compares them with the registry).
ARG MODEL_VERSION=""
ARG MODEL_STAGE=""
LABEL org.opencontainers.image.title="imgclf-api" \
      org.opencontainers.image.description="imgclf image classifier API (FastAPI + onnxruntime)" \
      org.opencontainers.image.revision="${GIT_REVISION}"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    IMGCLF_MODEL_DIR=/app/models \
    IMGCLF_GIT_REVISION=${GIT_REVISION} \
    IMGCLF_MODEL_VERSION=${MODEL_VERSION} \
    IMGCLF_MODEL_STAGE=${MODEL_STAGE}

# Dependencies first: this layer is reused until requirements-serve.txt changes. The venv
# gets no pip/setuptools of its own (the base image's pip installs into it): 24 MB less,
# which keeps /opt/venv under 300 MB with gcsfs (fleet monitoring, docs/monitoring.md).
COPY requirements-serve.txt /tmp/requirements-serve.txt
RUN python -m venv --without-pip /opt/venv \
 && pip --python /opt/venv/bin/python install --no-cache-dir -r /tmp/requirements-serve.txt \
 && rm /tmp/requirements-serve.txt \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin imgclf \
 && install -d -o 10001 -m 0750 /var/lib/imgclf

WORKDIR /app
# Code and artifact stay root-owned and read-only for the service user.
COPY src/imgclf /app/imgclf
# reference.json: the evaluated data's profile (evaluate writes it next to the model),
# for the drift report; ood.json: the out-of-distribution flag's calibrated statistics.
COPY models/model.onnx models/model.json models/reference.json models/ood.json models/golden.json /app/models/
# The evaluate stage's metrics for this artifact, served by GET /model.
COPY metrics/evaluate.json /app/models/evaluate.json
# A model that is not the evaluated one stops the build here, with the reason.
RUN python -m imgclf.artifact.integrity /app/models --evaluated /app/models/evaluate.json

# Monitoring (docs/monitoring.md): every answer is recorded (features, class, confidence;
# never the image unless IMGCLF_SAMPLE_DIR is set) in SQLite on this volume. Mount one to
# keep it (-v imgclf-monitor:/var/lib/imgclf); IMGCLF_MONITOR_DB= (empty) turns it off.
ENV IMGCLF_MONITOR_DB=/var/lib/imgclf/monitor.db
VOLUME ["/var/lib/imgclf"]

USER 10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=4)"]
# The same server configuration as `imgclf serve` (docs/serving-edge.md): uvicorn behind
# imgclf.serving.edge (request-head deadline, head size cap, socket ceiling), tuned by
# IMGCLF_* variables only. A plain `uvicorn` command would skip the edge.
CMD ["python", "-m", "imgclf.serving", "--host", "0.0.0.0", "--port", "8000"]
