//go:build tools

// Package tools pins the commands this wrapper module builds: the MCP Gateway's broker/router
// (Envoy ext_proc router + MCP broker in one binary) and its controller.
package tools

import (
	_ "github.com/Kuadrant/mcp-gateway/cmd"
	_ "github.com/Kuadrant/mcp-gateway/cmd/mcp-broker-router"
)
