# syntax=docker/dockerfile:1.7
# One image per service, all non-root (uid 10001) and read-only-root-filesystem friendly:
#   docker build --target mcp-backend    -t kube-mcp-gateway/mcp-backend:dev .
#   docker build --target token-exchange -t kube-mcp-gateway/token-exchange:dev .
#   docker build --target policy         -t kube-mcp-gateway/policy:dev .
# The backend image carries the helm CLI, built from the same pinned wrapper module as the
# testbed's (tests/testbed/go/helm), so tests and images run one helm version.
ARG PYTHON_IMAGE=python:3.12-slim-bookworm
ARG GO_IMAGE=golang:1.26-bookworm

# ---- helm CLI (Go module proxy, pinned go.mod + go.sum) --------------------------------------
FROM ${GO_IMAGE} AS helm
WORKDIR /src
COPY tests/testbed/go/helm/ ./
RUN --mount=type=cache,target=/root/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" \
    go build -trimpath -ldflags="-s -w" -o /out/helm helm.sh/helm/v3/cmd/helm \
 && /out/helm version --short

# ---- Python package into a virtualenv ---------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kmg_common/ kmg_common/
COPY mcp_backend/ mcp_backend/
COPY gateway_plugins/ gateway_plugins/
RUN pip install . && python -m compileall -q /opt/venv

# ---- common runtime ---------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 kmg \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
      --shell /usr/sbin/nologin kmg
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
WORKDIR /app
USER 10001:10001
EXPOSE 8080

# ---- mcp-backend ------------------------------------------------------------------------------
FROM runtime AS mcp-backend
COPY --from=helm /out/helm /usr/local/bin/helm
ENTRYPOINT ["mcp-backend"]
CMD ["serve", "--config", "/etc/kmg/config/config.yaml"]

# ---- token-exchange ---------------------------------------------------------------------------
FROM runtime AS token-exchange
ENTRYPOINT ["mcp-token-exchange"]
CMD ["serve", "--config", "/etc/kmg/config/config.yaml"]

# ---- policy (pushes /app/policies into its OPA sidecar, see manifests/base/policy) ------------
FROM runtime AS policy
COPY policies/ /app/policies/
ENTRYPOINT ["mcp-policy"]
CMD ["serve", "--config", "/etc/kmg/config/config.yaml"]
