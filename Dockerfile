# stream-logreg: the `stream-logreg` command line; by default the Kafka learner service (`consume`).
#
#   docker build -t stream-logreg .
#   docker run --rm stream-logreg demo                                  # no broker needed
#   docker run --rm -e STREAM_LOGREG_BOOTSTRAP_SERVERS=kafka:9092 -e STREAM_LOGREG_TOPICS=events \
#       -v stream-logreg-checkpoints:/var/lib/stream-logreg -p 9108:9108 stream-logreg
#
# Settings of `consume` come from STREAM_LOGREG_* environment variables (`stream-logreg consume --help`).
# Checkpoints (model + offsets) are written to /var/lib/stream-logreg: mount a volume there; or keep them in
# Kafka with STREAM_LOGREG_STATE_STORE=kafka (no volume; see docker-compose.yml).

# ---- build: compile the Cython extension into a wheel (and collect the dependencies' wheels)
FROM python:3.11-slim AS build

RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc g++ libc6-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# Only the sources: no host-built extension (.so/.c), build/ or checkpoints/ from the working tree.
COPY pyproject.toml setup.py README.md ./
COPY stream_logreg/*.py stream_logreg/*.pyx stream_logreg/*.pxd stream_logreg/*.h stream_logreg/
COPY vendor/ vendor/
COPY consumers/ consumers/
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# ---- runtime: no compiler, a non-root user
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links=/wheels stream-logreg \
    && rm -rf /wheels \
    && groupadd --system --gid 10001 stream-logreg \
    && useradd --system --uid 10001 --gid stream-logreg --home-dir /var/lib/stream-logreg \
        --no-create-home --shell /usr/sbin/nologin stream-logreg \
    && install -d -o stream-logreg -g stream-logreg -m 0750 /var/lib/stream-logreg

# The directory exists (owned by the user) before the volume is declared, so a new named volume mounted
# here starts with that ownership.
ENV STREAM_LOGREG_CHECKPOINT_DIR=/var/lib/stream-logreg
VOLUME ["/var/lib/stream-logreg"]
WORKDIR /var/lib/stream-logreg
USER stream-logreg:stream-logreg

# Prometheus metrics and health endpoints of `consume` (STREAM_LOGREG_METRICS_PORT), on every interface of
# the container (outside a container the default is 127.0.0.1).
ENV STREAM_LOGREG_METRICS_HOST=0.0.0.0
EXPOSE 9108

# Healthy while the service is alive (/live: the loop polls); no curl in a slim image. The port is the
# metrics port (STREAM_LOGREG_METRICS_PORT); other commands (demo, replay) serve none.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=6 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/live' % os.environ.get('STREAM_LOGREG_METRICS_PORT', '9108'), timeout=3)"]

# SIGTERM (docker stop) makes `consume` checkpoint, commit its offsets and leave the group; allow it
# time (`docker stop -t`, compose `stop_grace_period`).
STOPSIGNAL SIGTERM
ENTRYPOINT ["stream-logreg"]
CMD ["consume"]
