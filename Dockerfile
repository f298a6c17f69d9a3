# syntax=docker/dockerfile:1
# The gateway image: `docker build -t ogelkit .` then
#   docker run -p 8080:8080 -p 6543:6543 --env-file railway.env ogelkit
# Two stages: uv installs exactly uv.lock (no dev tools) into /app/.venv, and the runtime
# stage copies only that environment and the example configs, running as a non-root user.
# scripts/container-check.sh runs these same steps without a container engine.

FROM python:3.11-slim-bookworm AS build
ENV UV_VERSION=0.13.9 UV_LINK_MODE=copy UV_COMPILE_BYTECODE=1 UV_PYTHON_DOWNLOADS=never \
    RUST_VERSION=1.95.0 PATH=/root/.cargo/bin:$PATH
# ogelkit-native (Rust) is built from source by maturin during the sync: a C linker and a
# Rust toolchain in the build stage only; the runtime stage gets just the built extension.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential ca-certificates curl \
 && curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
    | sh -s -- -y --profile minimal --default-toolchain "${RUST_VERSION}" \
 && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir "uv==${UV_VERSION}"
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
COPY ogelkit ./ogelkit
COPY examples ./examples
RUN uv sync --all-packages --locked --no-dev --no-editable

FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin ogelkit
WORKDIR /app
COPY --from=build --chown=ogelkit:ogelkit /app/.venv /app/.venv
COPY --from=build --chown=ogelkit:ogelkit /app/examples /app/examples
USER ogelkit
ENV PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1 PORT=8080
# HTTP (health, metrics, admin, Convex), the one database port, the per-protocol ports.
EXPOSE 8080 6543 5432 6379 27017
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('PORT', '8080'), timeout=2)"]
# Exec form: `ogelkit run` is PID 1 and handles SIGTERM itself (drain, flush usage, exit 0).
ENTRYPOINT ["ogelkit", "run"]
CMD ["examples/railway.toml"]
