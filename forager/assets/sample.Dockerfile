# The sample repository (forager/assets/sample-repo) as an executable task image.
# Build context (assembled by `forager images sample`): repo/ (a git repository), wheelhouse/.
ARG BASE=forager/base:latest
FROM ${BASE}
RUN useradd --create-home --uid 1000 --shell /bin/bash forager
COPY wheelhouse /tmp/wheelhouse
# Offline: every package comes from the host's wheelhouse, none from an index.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-index --find-links /tmp/wheelhouse -r /tmp/wheelhouse/requirements.txt \
    && rm -rf /tmp/wheelhouse
ENV PATH=/opt/venv/bin:$PATH VIRTUAL_ENV=/opt/venv
COPY --chown=forager:forager repo /repo
USER forager
WORKDIR /repo
RUN git config --global user.name forager && git config --global user.email forager@localhost \
    && python -m pytest -q -p no:cacheprovider >/dev/null
