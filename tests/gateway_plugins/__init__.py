"""Tests mirroring the `gateway_plugins` package."""
