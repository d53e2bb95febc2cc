# The profiler service: migrations, then uvicorn with several workers (PostgreSQL behind it).
FROM python:3.11.14-slim-bookworm
WORKDIR /app
# The CPU build of torch, pinned; any other torch requirement would pull a multi-GB CUDA build.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir torch==2.13.0 --index-url "$TORCH_INDEX_URL"
COPY pyproject.toml README.md ./
COPY dnas ./dnas
COPY search ./search
COPY db ./db
COPY profiler_service ./profiler_service
COPY device_agents ./device_agents
RUN pip install --no-cache-dir .
# An unprivileged user (uid 10001, the same in the agent image, so the agent can read the 0600 token files the
# service writes). It owns only what it writes; a fresh named volume mounted on these folders takes their owner.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/dnas dnas \
    && mkdir -p /data /run/dnas/tokens /run/dnas/db \
    && chown -R dnas:dnas /data /run/dnas
USER 10001:10001
ENV DNAS_SERVICE_HOST=0.0.0.0 \
    DNAS_SERVICE_PORT=8321 \
    DNAS_SERVICE_ARTIFACT_DIR=/data/artifacts
VOLUME /data
EXPOSE 8321
# Healthy means this service answers and reaches its database (/v1/health runs SELECT 1).
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=5 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"DNAS_SERVICE_PORT\"]}/v1/health', timeout=4)"]
CMD ["dnas", "serve"]
