# The pipeline's environment: run `dvc repro` / `dvc exp run` on a mounted checkout.
# The image holds the pinned dependencies; code, params, data, models and the DVC
# cache come from the mounted repository, so a run reproduces *that* commit.
#   docker build -f dockerfiles/train.dockerfile -t imgclf-train .
#   docker run --rm -u "$(id -u):$(id -g)" -v "$PWD":/workspace imgclf-train            # dvc repro
#   docker run --rm -u "$(id -u):$(id -g)" -v "$PWD":/workspace imgclf-train exp run -S lr=1e-3
# torch comes from the CPU wheel index by default (a few hundred MB instead of CUDA's GBs);
# pass --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 for a GPU image.
# Base image pinned by digest: python:3.11-slim (refresh with `make pin-images`).
ARG PYTHON_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7
FROM ${PYTHON_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/workspace/src \
    DVC_NO_ANALYTICS=1 \
    GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false \
    HOME=/tmp

# git: DVC needs it for `exp run`; safe.directory for the mount point only (it belongs to
# the host user), not '*': any other repository's config (hooks) stays untrusted.
RUN apt-get update \
 && apt-get install -y --no-install-recommends git \
 && rm -rf /var/lib/apt/lists/* \
 && git config --system --add safe.directory /workspace

COPY requirements.txt requirements-serve.txt /tmp/req/
# torch and torchvision come from the torch index ALONE (--index-url), everything else from
# PyPI alone: with --extra-index-url pip takes the highest version from either index, so
# a package name planted on the other index would win (dependency confusion).
RUN python -m venv /opt/venv \
 && pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" \
      "$(grep -E '^torch==' /tmp/req/requirements.txt)" \
      "$(grep -E '^torchvision==' /tmp/req/requirements.txt)" \
 && pip install --no-cache-dir --index-url https://pypi.org/simple -r /tmp/req/requirements.txt \
 && rm -rf /tmp/req \
 && useradd --create-home --uid 1000 trainer

USER 1000
WORKDIR /workspace
VOLUME ["/workspace"]
ENTRYPOINT ["dvc"]
CMD ["repro"]
