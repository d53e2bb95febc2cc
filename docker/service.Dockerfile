# The profiler service: migrations, then uvicorn with several workers (PostgreSQL behind it).
FROM python:3.11-slim
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
ENV DNAS_SERVICE_HOST=0.0.0.0 \
    DNAS_SERVICE_PORT=8321 \
    DNAS_SERVICE_ARTIFACT_DIR=/data/artifacts
VOLUME /data
EXPOSE 8321
HEALTHCHECK CMD python -c "import httpx,os; httpx.get(f'http://127.0.0.1:{os.environ[\"DNAS_SERVICE_PORT\"]}/v1/health').raise_for_status()"
CMD ["dnas", "serve"]
