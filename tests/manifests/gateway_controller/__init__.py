"""Our ``manifests/gateway`` on the real MCP Gateway controller and the broker it configures."""
