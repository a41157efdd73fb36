"""Pinned versions of every real component of the testbed. The cache is keyed by these."""

from __future__ import annotations

KUBERNETES = "v1.36.3"
ETCD = "v3.7.3"
KWOK = "v0.8.0"
OPA = "v1.22.0"
HELM = "v3.22.0"
KEYCLOAK = "26.7.3"
JAVA_MIN_MAJOR = 21
