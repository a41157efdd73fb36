"""Gateway plugin services for the MCP Gateway: token exchange and tool policy."""
