"""A local MCP Gateway for the testbed: a real Envoy plus a STAND-IN for the MCP Gateway's
router and broker.

The real router/broker (Go module ``github.com/Kuadrant/mcp-gateway``, ``cmd/mcp-broker-router``)
cannot be fetched here (the Go module proxy answers 403 for it), so this package emulates the two
parts our plugins depend on, following the upstream sources (``internal/mcp-router/
request_handlers.go``, ``internal/mcp-router/headers.go``, ``internal/broker/
filtered_tools_handler.go``):

* :mod:`.router`: an Envoy ext_authz HTTP service (``with_request_body``) that parses the JSON-RPC
  body and returns the ``x-mcp-method``, ``x-mcp-servername``, ``x-mcp-toolname`` and
  ``x-mcp-annotation-hints`` headers Envoy then sets upstream (the real router is an ext_proc
  gRPC filter; ext_authz can set headers but cannot rewrite the body, so tool prefixes are not
  supported: every server must have ``prefix: ""``).
* :mod:`.broker`: the ``/mcp`` default backend for every non-``tools/call`` request; it proxies
  to the MCP server and filters ``tools/list`` by the ES256-signed ``x-mcp-authorized`` (or
  legacy ``x-authorized-tools``) header exactly as the upstream broker does.

Both run in one process (as the upstream binary does) and share the tool catalogue the router
reads annotation hints from. :mod:`.stack` starts the whole local stack (testbed, our three
services, this stand-in, Envoy); ``envoy.yaml.tmpl`` is the gateway's Envoy configuration.
"""
