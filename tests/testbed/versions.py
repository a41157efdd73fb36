"""Pinned versions of every real component of the testbed. The cache is keyed by these."""

from __future__ import annotations

KUBERNETES = "v1.36.3"
ETCD = "v3.7.3"
KWOK = "v0.8.0"
OPA = "v1.22.0"
HELM = "v3.22.0"
KEYCLOAK = "26.7.3"
JAVA_MIN_MAJOR = 21
KUSTOMIZE = "v5.8.2"  # v5.8.3 needs Go 1.27
METRICS_SERVER = "v0.9.0"  # sigs.k8s.io/metrics-server, built on k8s v0.36 libraries
GATEWAY_API = "v1.6.3"  # v1.7 needs Go 1.27
ISTIO_API = "v1.31.1"  # istio.io/api: kubernetes/customresourcedefinitions.gen.yaml
AUTHORINO = "v0.20.0"  # github.com/kuadrant/authorino: the server binary and the AuthConfig CRD
KIND = "v0.30.0"
# The Kind flow (make kind-up kind-deploy kind-demo) installs Istio as the MCP Gateway's own local
# environment does (its build/istio.mk and config/istio/istio.yaml at MCP_GATEWAY): the Sail
# operator's chart, then an Istio resource of this version; and the Gateway API CRDs that
# environment installs (Istio <= 1.29 does not start with the Gateway API v1.5+ bundle).
KIND_SAIL_OPERATOR = "1.27.0"
KIND_ISTIO = "v1.26.3"
KIND_GATEWAY_API = "v1.4.1"
# github.com/containerd/containerd/v2: the CRI runtime of the testbed's real kubelet (kubelet
# v1.36 needs containerd >= 2.0, which implements the CRI RuntimeConfig call).
CONTAINERD = "v2.4.2"
# github.com/Kuadrant/mcp-gateway: the MCP Gateway's broker/router and controller. Fetched from the
# Go module proxy; where the proxy refuses it, from a source archive named by $KMG_MCP_GATEWAY_SRC
# (GitHub's tag tarball, checked against this sha256; see tests/testbed/build.py).
MCP_GATEWAY = "v0.9.0"
MCP_GATEWAY_ARCHIVE_SHA256 = "93a54c08d9b42475c0ccab3cf3f0cb6a43a014bb37679b849d91e2c7e7c6e233"
# github.com/jaegertracing/jaeger: Jaeger v2 (cmd/jaeger, an OpenTelemetry Collector build), the
# testbed's trace collector: OTLP in, in-memory storage, query API (tests/testbed/jaeger.py).
JAEGER = "v1.75.0"
