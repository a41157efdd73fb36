"""The MCP side of the backend: Streamable HTTP in front of the request handlers.

The bearer token parsed once per request (``auth``), the Host/Origin checks (``host_origin_guard``),
the protocol eras ``/mcp`` serves (``protocol_eras``), one JSON-RPC request answered in its own
task (``direct_json_response``) and the per-user call limit (``caller_limits``).
"""
