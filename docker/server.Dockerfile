# The team tracking server's image: MLflow + psycopg2 from requirements-host.txt (no TensorFlow), about
# a fifth of the training image. docker/compose.yaml builds and runs it (`make team-server`).
ARG BASE_IMAGE
FROM ${BASE_IMAGE:-python:3.11.14-slim-bookworm}

# Optional pip settings for builds behind a mirror or proxy (unset: PyPI and the image's certificates).
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_CERT
COPY requirements-host.txt /tmp/lock/requirements-host.txt
# (an empty pip setting is dropped: pip would read PIP_INDEX_URL="" as an empty index)
RUN for v in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_CERT; do [ -n "$(printenv "$v")" ] || unset "$v"; done \
 && python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --quiet -r /tmp/lock/requirements-host.txt \
 && rm -rf /tmp/lock \
 && useradd --create-home --uid 10001 mlflow \
 && mkdir -p /artifacts \
 && chown mlflow /artifacts

USER 10001
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
EXPOSE 5000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"]
ENTRYPOINT ["mlflow", "server"]
