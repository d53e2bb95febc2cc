# A device agent host: the local (this CPU) agent by default; `dnas agent android ...` for phones over adb/TCP.
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
CMD ["sh", "-c", "dnas agent local --server \"$DNAS_AGENT_SERVER\" --token \"$DNAS_AGENT_TOKEN\""]
