"""Tests and helpers for the Kubernetes manifests under ``manifests/``."""
