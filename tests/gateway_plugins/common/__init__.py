"""Tests mirroring the `gateway_plugins.common` package."""
