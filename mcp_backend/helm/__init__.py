"""Helm: the helm CLI runner, the loopback API guard helm talks through, the install's
post-renderer, and what a chart creates read without helm."""
