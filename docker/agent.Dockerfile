# A device agent host: the local (this CPU) agent by default; `dnas agent android` for a phone over adb/TCP.
# Every setting comes from the environment (DNAS_AGENT_*), the token from a file: nothing secret in argv.
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
# The service image's uid: token files the service writes (mode 0600) are readable here and nowhere else.
# /var/lib/dnas keeps the adb key between restarts, so a phone's one "Allow" is remembered; ~/.cache holds the
# downloaded models. Each exists here, owned by dnas, so a fresh volume mounted on it takes that owner (the root
# file system is read-only under compose).
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/dnas dnas \
    && mkdir -p /run/dnas/tokens /var/lib/dnas /home/dnas/.cache \
    && chown -R dnas:dnas /run/dnas /var/lib/dnas /home/dnas/.cache
USER 10001:10001
CMD ["dnas", "agent", "local"]
