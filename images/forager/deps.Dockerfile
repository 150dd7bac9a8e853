# Forager's dependencies (and Ray; with --train also torch, transformers, gguf, accelerate, tensorboard) over the
# base image, offline: `forager images forager` assembles the context (wheelhouse/: the host's `pip download`).
# The wheels are installed in a first stage and only the environment is copied on, so no layer keeps them
# (torch's CUDA wheels alone are ~3 GB).
ARG BASE=forager/base:latest
FROM ${BASE} AS install
COPY wheelhouse /tmp/wheelhouse
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-index --no-cache-dir --disable-pip-version-check \
         --find-links /tmp/wheelhouse -r /tmp/wheelhouse/requirements.txt

FROM ${BASE}
COPY --from=install /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH VIRTUAL_ENV=/opt/venv PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
