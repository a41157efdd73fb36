"""Tests mirroring the `gateway_plugins.token_exchange` package."""
