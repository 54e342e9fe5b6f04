# syntax=docker/dockerfile:1.7
# The workflow service. Build from the repository root (the context needs the workspace
# manifests, uv.lock and libs/collections-kit):
#   docker build -f deploy/docker/workflow.Dockerfile -t collections/workflow:dev .
# Two stages: "builder" resolves the locked dependencies with uv into /app/.venv and installs
# the kit and the service as wheels (no editable links to the sources); "runtime" is the same
# slim Python with only that virtualenv, no pip, no uv, no compiler, running as uid 10001.
# Checked offline by `make deploy-check` (scripts/deploy_check.py).

# Both stages must use the same image: the virtualenv's python links to its interpreter.
# Pin by digest in your registry mirror (e.g. python:3.11-slim-bookworm@sha256:...).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ARG UV_VERSION=0.13.9
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m pip install --disable-pip-version-check "uv==${UV_VERSION}"
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_FROZEN=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
# Dependencies first, from the manifests and the lock only: this layer survives code changes.
COPY pyproject.toml uv.lock ./
COPY libs/collections-kit/pyproject.toml libs/collections-kit/
COPY services/workflow/pyproject.toml services/workflow/
COPY services/ledger-sync/pyproject.toml services/ledger-sync/
COPY services/notifier/pyproject.toml services/notifier/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --no-dev --no-install-workspace --package workflow
# Then the kit and this service, installed as wheels (their Alembic trees included).
COPY libs/collections-kit/ libs/collections-kit/
COPY services/workflow/ services/workflow/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --no-dev --no-editable --package workflow

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="collections-workflow" \
      org.opencontainers.image.description="Drives each delinquent loan through its collection stages"
# No installer in the final image; a fixed numeric uid so Kubernetes can verify runAsNonRoot.
RUN python -m pip uninstall --yes --disable-pip-version-check pip setuptools wheel \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin app
COPY --from=builder /app/.venv /app/.venv
ENV PATH="/app/.venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    WORKFLOW_HTTP_HOST=0.0.0.0 \
    WORKFLOW_HTTP_PORT=8080
WORKDIR /app
USER 10001:10001
EXPOSE 8080
STOPSIGNAL SIGTERM
# `migrate` runs the Alembic migrations of the service's own schema; `serve` is the default.
ENTRYPOINT ["python", "-m", "workflow"]
CMD ["serve"]
